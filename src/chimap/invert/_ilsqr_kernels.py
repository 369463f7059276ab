"""Numba loops of the iLSQR and STAR-QSM iterations (private).

Finite differences are the periodic forward differences of :mod:`chimap.invert._admm_kernels`,
``(G x)_a[i] = (x[i + e_a] - x[i]) / h_a`` on the zero-padded FFT grid, with the adjoint
``(G^T s)[i] = sum_a (s_a[i - e_a] - s_a[i]) / h_a``. The gradient loops are parallel; the
pointwise soft thresholding is serial (memory bound: threads add start-up latency, not speed),
and the gradients run serially on small grids for the same reason.
"""

from __future__ import annotations

import types

from numba import njit, prange

__all__ = ["soft_in_mask", "weighted_gradient", "weighted_gradient_adjoint"]


def _weighted_gradient(x, w, out, inv_h):
    """``out[a] = w[a] * (G x)_a``; ``x`` (n0, n1, n2), ``w`` and ``out`` (3, n0, n1, n2)."""
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
                c = x[i, j, k]
                out[0, i, j, k] = w[0, i, j, k] * (x[ip, j, k] - c) * h0
                out[1, i, j, k] = w[1, i, j, k] * (x[i, jp, k] - c) * h1
                out[2, i, j, k] = w[2, i, j, k] * (x[i, j, kp] - c) * h2


def _weighted_gradient_adjoint(s, w, out, inv_h):
    """``out = G^T (w * s)``, the adjoint of :func:`weighted_gradient`."""
    _, n0, n1, n2 = s.shape
    h0 = inv_h[0]
    h1 = inv_h[1]
    h2 = inv_h[2]
    for i in prange(n0):
        im = i - 1 if i > 0 else n0 - 1
        for j in range(n1):
            jm = j - 1 if j > 0 else n1 - 1
            for k in range(n2):
                km = k - 1 if k > 0 else n2 - 1
                out[i, j, k] = ((w[0, im, j, k] * s[0, im, j, k] - w[0, i, j, k] * s[0, i, j, k]) * h0
                                + (w[1, i, jm, k] * s[1, i, jm, k] - w[1, i, j, k] * s[1, i, j, k]) * h1
                                + (w[2, i, j, km] * s[2, i, j, km] - w[2, i, j, k] * s[2, i, j, k]) * h2)


def _renamed(func, suffix):
    """A copy of ``func`` under another qualified name: numba's on-disk cache is keyed by that
    name, not by the compile flags, so the serial and parallel builds need distinct names."""
    g = types.FunctionType(func.__code__, func.__globals__, func.__name__ + suffix, func.__defaults__,
                           func.__closure__)
    g.__qualname__ = func.__qualname__ + suffix
    return g


_PARALLEL_MIN_SIZE = 1 << 21  # below ~2M voxels thread start-up costs more than it saves
_grad_serial = njit(cache=True)(_renamed(_weighted_gradient, "_serial"))
_grad_parallel = njit(parallel=True, cache=True)(_renamed(_weighted_gradient, "_parallel"))
_grad_adj_serial = njit(cache=True)(_renamed(_weighted_gradient_adjoint, "_serial"))
_grad_adj_parallel = njit(parallel=True, cache=True)(_renamed(_weighted_gradient_adjoint, "_parallel"))


def weighted_gradient(x, w, out, inv_h):
    """``out[a] = w[a] * (G x)_a``; ``x`` (n0, n1, n2), ``w`` and ``out`` (3, n0, n1, n2)."""
    (_grad_parallel if x.size >= _PARALLEL_MIN_SIZE else _grad_serial)(x, w, out, inv_h)


def weighted_gradient_adjoint(s, w, out, inv_h):
    """``out = G^T (w * s)``, the adjoint of :func:`weighted_gradient`."""
    (_grad_adj_parallel if out.size >= _PARALLEL_MIN_SIZE else _grad_adj_serial)(s, w, out, inv_h)


@njit(cache=True)
def soft_in_mask(x, u, s, z, mask, thr):
    """ADMM z/u update of ``thr * ||z||_1`` with ``z`` zero outside ``mask``, split ``z = x``.

    ``t = x + u``; ``z = soft(t, thr)`` inside ``mask`` and 0 outside; ``u <- t - z``;
    ``s <- z - u`` (the argument of the next x update). All arrays of one shape; ``u``, ``s``
    and ``z`` are updated in place.
    """
    fx = x.ravel()
    fu = u.ravel()
    fs = s.ravel()
    fz = z.ravel()
    fm = mask.ravel()
    for i in range(fx.size):
        t = fx[i] + fu[i]
        zi = 0.0
        if fm[i]:
            if t > thr:
                zi = t - thr
            elif t < -thr:
                zi = t + thr
        fz[i] = zi
        fu[i] = t - zi
        fs[i] = zi - (t - zi)

