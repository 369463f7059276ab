"""Fused pointwise loops of the MEDI Gauss-Newton / conjugate-gradient solver (numba, private).

Differences are the periodic forward differences of :mod:`chimap.invert._admm_kernels`,
``(G x)_a[i] = (x[i + e_a] - x[i]) / h_a``, with the adjoint
``(G^T s)[i] = sum_a (s_a[i - e_a] - s_a[i]) / h_a``; the grid is padded with zeros far beyond
the mask, so the periodic wrap only joins zeros. Reductions accumulate in float64 whatever the
array dtype.

The ``spectral_*`` kernels act on half spectra of ``scipy.fft.rfftn`` (last axis
``n2 // 2 + 1``). The image-space inner product of two real arrays is, by Parseval,
``<a, b> = (1/N) sum_half w_k Re(conj(A_k) B_k)`` with ``w_k = 1`` on the last-axis planes
``k2 = 0`` and ``k2 = n2 / 2`` (even ``n2``), which stand for themselves only, and ``w_k = 2``
elsewhere (each sample also stands for its conjugate mirror). The kernels drop the constant
``1/N``, which cancels in every ratio the solver forms.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["lagged_weights", "spectral_cg_step", "spectral_combine_dot", "spectral_direction_split",
           "weighted_gradient_normal"]


@njit(parallel=True, cache=True)
def lagged_weights(x, penalised, inv_h, eps, c):
    """IRLS weights of the smoothed L1 norm of the masked gradient, lagged at ``x``.

    ``c[a] <- M_a / sqrt((M_a (G x)_a)^2 + eps)`` with ``M`` the binary (uint8) map of the
    penalised gradient components (``M^2 = M``), so that ``G^T (c * G dx)`` is the Hessian of
    ``sum sqrt((M G x)^2 + eps)`` with its weight frozen at ``x``.
    """
    n0, n1, n2 = x.shape
    h0 = inv_h[0]
    h1 = inv_h[1]
    h2 = inv_h[2]
    for i in prange(n0):
        ip = i + 1 if i + 1 < n0 else 0
        for j in range(n1):
            jp = j + 1 if j + 1 < n1 else 0
            for k in range(n2):
                kp = k + 1 if k + 1 < n2 else 0
                v = x[i, j, k]
                if penalised[0, i, j, k]:
                    g = (x[ip, j, k] - v) * h0
                    c[0, i, j, k] = 1.0 / np.sqrt(g * g + eps)
                else:
                    c[0, i, j, k] = 0.0
                if penalised[1, i, j, k]:
                    g = (x[i, jp, k] - v) * h1
                    c[1, i, j, k] = 1.0 / np.sqrt(g * g + eps)
                else:
                    c[1, i, j, k] = 0.0
                if penalised[2, i, j, k]:
                    g = (x[i, j, kp] - v) * h2
                    c[2, i, j, k] = 1.0 / np.sqrt(g * g + eps)
                else:
                    c[2, i, j, k] = 0.0


@njit(parallel=True, cache=True)
def weighted_gradient_normal(p, c, inv_h, out):
    """``out <- G^T (c * G p)`` (``c``: (3, n0, n1, n2) weights of the three components)."""
    n0, n1, n2 = p.shape
    h0 = inv_h[0]
    h1 = inv_h[1]
    h2 = inv_h[2]
    for i in prange(n0):
        ip = i + 1 if i + 1 < n0 else 0
        im = i - 1 if i > 0 else n0 - 1
        for j in range(n1):
            jp = j + 1 if j + 1 < n1 else 0
            jm = j - 1 if j > 0 else n1 - 1
            for k in range(n2):
                kp = k + 1 if k + 1 < n2 else 0
                km = k - 1 if k > 0 else n2 - 1
                v = p[i, j, k]
                s = (c[0, im, j, k] * (v - p[im, j, k]) - c[0, i, j, k] * (p[ip, j, k] - v)) * (h0 * h0)
                s += (c[1, i, jm, k] * (v - p[i, jm, k]) - c[1, i, j, k] * (p[i, jp, k] - v)) * (h1 * h1)
                s += (c[2, i, j, km] * (v - p[i, j, km]) - c[2, i, j, k] * (p[i, j, kp] - v)) * (h2 * h2)
                out[i, j, k] = s


@njit(cache=True)
def _half_weight(k, m2, even):
    if k == 0 or (even and k == m2 - 1):
        return 1.0
    return 2.0


@njit(parallel=True, cache=True)
def spectral_cg_step(y, r, p, bp, alpha, inv_ks2, even):
    """``y += alpha p``; ``r -= alpha bp``; returns ``(r.r, r.r / ks^2)`` (weighted sums)."""
    n0, n1, m2 = y.shape
    rr = 0.0
    rt = 0.0
    for i in prange(n0):
        a = 0.0
        b = 0.0
        for j in range(n1):
            for k in range(m2):
                y[i, j, k] += alpha * p[i, j, k]
                v = r[i, j, k] - alpha * bp[i, j, k]
                r[i, j, k] = v
                t = _half_weight(k, m2, even) * (np.float64(v.real) ** 2 + np.float64(v.imag) ** 2)
                a += t
                b += t * inv_ks2[i, j, k]
        rr += a
        rt += b
    return rr, rt


@njit(parallel=True, cache=True)
def spectral_direction_split(p, r, beta, ks, d, u, du):
    """``p <- r + beta p``; ``u <- ks p``; ``du <- d ks p`` (half spectra; ``ks``, ``d`` real)."""
    n0, n1, m2 = p.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(m2):
                v = r[i, j, k] + beta * p[i, j, k]
                p[i, j, k] = v
                w = v * ks[i, j, k]
                u[i, j, k] = w
                du[i, j, k] = w * d[i, j, k]


@njit(parallel=True, cache=True)
def spectral_combine_dot(a, b, ks, d, scale, p, even):
    """``a <- ks (a + scale d b)`` in place; returns ``<p, a>`` (Parseval-weighted, float64)."""
    n0, n1, m2 = a.shape
    total = 0.0
    for i in prange(n0):
        acc = 0.0
        for j in range(n1):
            for k in range(m2):
                v = ks[i, j, k] * (a[i, j, k] + scale * d[i, j, k] * b[i, j, k])
                a[i, j, k] = v
                q = p[i, j, k]
                acc += _half_weight(k, m2, even) * (np.float64(q.real) * np.float64(v.real)
                                                    + np.float64(q.imag) * np.float64(v.imag))
        total += acc
    return total
