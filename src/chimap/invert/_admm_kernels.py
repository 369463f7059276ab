"""Fused pointwise loops of the TV-ADMM iterations, compiled with numba (private).

The finite differences are periodic forward differences on the padded FFT grid,
``(G x)_a[i] = (x[i + e_a] - x[i]) / h_a`` (index ``i + e_a`` taken modulo the grid length), so
that ``G^T G`` is diagonalised by the FFT with the symbol ``-laplacian_kernel`` of
:mod:`chimap.kernels` (``sum_a (2 - 2 cos(2 pi m_a / n_a)) / h_a^2``). The adjoint is
``(G^T s)[i] = sum_a (s_a[i - e_a] - s_a[i]) / h_a``. The grid is padded with zeros far beyond
the mask, so the periodic wrap only joins zeros (it is invisible in the result).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["UNIFORM", "fidelity_update", "grad_adjoint", "grad_shrink_update", "relative_change", "wh_coefficients",
           "tv_chi_spectrum", "wh_field_spectra", "wh_joint_update"]

#: The ``thr_weight`` of :func:`grad_shrink_update` for a uniform TV weight.
UNIFORM = np.ones((1, 1, 1), dtype=np.float32)


@njit(parallel=True, cache=True)
def grad_shrink_update(chi, u, s, inv_h, thr, isotropic, relax, thr_weight):
    """One z/u update of ADMM for the constraint ``z = G chi`` with the TV prox.

    ``w = G chi + u``; ``z = shrink(w, thr * thr_weight)``; ``u <- w - z``; ``s <- z - u`` (the
    argument of the next chi update). ``isotropic``: vector soft-thresholding of the 3-vector
    ``w`` at each voxel (isotropic TV); else component-wise (anisotropic TV, L1 of each
    difference). ``thr_weight``: the per-voxel weight of the TV term, shape (n0, n1, n2), or
    any array of another size for a uniform weight 1. ``u`` and ``s`` have shape
    (3, n0, n1, n2) and are updated in place.
    """
    n0, n1, n2 = chi.shape
    weighted = thr_weight.size == chi.size
    h0 = inv_h[0]
    h1 = inv_h[1]
    h2 = inv_h[2]
    for i in prange(n0):
        ip = i + 1 if i + 1 < n0 else 0
        for j in range(n1):
            jp = j + 1 if j + 1 < n1 else 0
            for k in range(n2):
                kp = k + 1 if k + 1 < n2 else 0
                c = chi[i, j, k]
                u0 = u[0, i, j, k]
                u1 = u[1, i, j, k]
                u2 = u[2, i, j, k]
                # over-relaxed G chi: relax * G chi + (1 - relax) * z_old, z_old = s + u
                w0 = relax * (chi[ip, j, k] - c) * h0 + (1.0 - relax) * (s[0, i, j, k] + u0) + u0
                w1 = relax * (chi[i, jp, k] - c) * h1 + (1.0 - relax) * (s[1, i, j, k] + u1) + u1
                w2 = relax * (chi[i, j, kp] - c) * h2 + (1.0 - relax) * (s[2, i, j, k] + u2) + u2
                t = thr * thr_weight[i, j, k] if weighted else thr
                if isotropic:
                    nrm = np.sqrt(w0 * w0 + w1 * w1 + w2 * w2)
                    f = 1.0 - t / nrm if nrm > t else 0.0
                    z0 = w0 * f
                    z1 = w1 * f
                    z2 = w2 * f
                else:
                    z0 = w0 - t if w0 > t else (w0 + t if w0 < -t else 0.0)
                    z1 = w1 - t if w1 > t else (w1 + t if w1 < -t else 0.0)
                    z2 = w2 - t if w2 > t else (w2 + t if w2 < -t else 0.0)
                u[0, i, j, k] = w0 - z0
                u[1, i, j, k] = w1 - z1
                u[2, i, j, k] = w2 - z2
                s[0, i, j, k] = 2.0 * z0 - w0
                s[1, i, j, k] = 2.0 * z1 - w1
                s[2, i, j, k] = 2.0 * z2 - w2


@njit(parallel=True, cache=True)
def grad_adjoint(s, out, inv_h):
    """``out <- G^T s``, the adjoint of the periodic forward differences (minus a divergence)."""
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
                out[i, j, k] = ((s[0, im, j, k] - s[0, i, j, k]) * h0
                                + (s[1, i, jm, k] - s[1, i, j, k]) * h1
                                + (s[2, i, j, km] - s[2, i, j, k]) * h2)


@njit(parallel=True, cache=True)
def fidelity_update(dchi, w2f, w2, mu, u2, t, relax):
    """z2/u2 update of the weighted data term ``1/2 ||W (z2 - f)||^2`` with ``z2 = D chi``.

    ``z2 = (W^2 f + mu (D chi + u2)) / (W^2 + mu)``; ``u2 <- u2 + D chi - z2``;
    ``t <- z2 - u2``. All arrays (n0, n1, n2); ``u2`` and ``t`` updated in place.
    """
    n0, n1, n2 = dchi.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                uu = u2[i, j, k]
                v = relax * dchi[i, j, k] + (1.0 - relax) * (t[i, j, k] + uu) + uu
                z = (w2f[i, j, k] + mu * v) / (w2[i, j, k] + mu)
                u2[i, j, k] = v - z
                t[i, j, k] = 2.0 * z - v


@njit(parallel=True, cache=True)
def relative_change(x, prev):
    """``||x - prev|| / ||x||`` (0 when both vanish); copies ``x`` into ``prev``."""
    n0, n1, n2 = x.shape
    num = 0.0
    den = 0.0
    for i in prange(n0):
        a = 0.0
        b = 0.0
        for j in range(n1):
            for k in range(n2):
                v = np.float64(x[i, j, k])
                d = v - prev[i, j, k]
                a += d * d
                b += v * v
                prev[i, j, k] = x[i, j, k]
        num += a
        den += b
    if den == 0.0:
        return 0.0 if num == 0.0 else np.inf
    return np.sqrt(num / den)


@njit(parallel=True, cache=True)
def wh_joint_update(ts, ss, cs, cxt, cxs, cxc, cpt, cps, cpc, xs, ps):
    """Joint (chi, phi) update of weak-harmonic TV in k-space, one pass over the spectrum:
    ``xs = cxt ts + cxs ss + cxc cs`` and ``ps = cpt ts + cps ss + cpc cs`` (real coefficients,
    complex spectra, all of the real-FFT half-spectrum shape); ``xs`` and ``ps`` are written."""
    n0, n1, n2 = ts.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                t = ts[i, j, k]
                s = ss[i, j, k]
                c = cs[i, j, k]
                xs[i, j, k] = cxt[i, j, k] * t + cxs[i, j, k] * s + cxc[i, j, k] * c
                ps[i, j, k] = cpt[i, j, k] * t + cps[i, j, k] * s + cpc[i, j, k] * c


@njit(parallel=True, cache=True)
def wh_field_spectra(xs, ps, d, lap, field_spec, lap_phi_spec):
    """``field_spec = d xs + ps`` (the model field ``D chi + phi``) and ``lap_phi_spec = lap ps``
    in one pass (half spectra)."""
    n0, n1, n2 = xs.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                p = ps[i, j, k]
                field_spec[i, j, k] = d[i, j, k] * xs[i, j, k] + p
                lap_phi_spec[i, j, k] = lap[i, j, k] * p


@njit(parallel=True, cache=True)
def wh_coefficients(d, e2, mu, nu, rho, cxt, cxs, cxc, cpt, cps, cpc):
    """Per-frequency 2 x 2 inverse of the joint (chi, phi) system of weak-harmonic TV,
    ``[[mu D^2 + rho E2, mu D], [mu D, mu + nu E2^2]]``, as the six coefficients of
    :func:`wh_joint_update` (computed in float64, stored in the outputs' dtype). At ``k = 0``
    chi's mean is undetermined (kept 0) and phi's mean follows the data (``cpt = 1``)."""
    n0, n1, n2 = d.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                dd = np.float64(d[i, j, k])
                e = np.float64(e2[i, j, k])
                if i == 0 and j == 0 and k == 0:
                    cxt[i, j, k] = 0.0
                    cxs[i, j, k] = 0.0
                    cxc[i, j, k] = 0.0
                    cpt[i, j, k] = 1.0
                    cps[i, j, k] = 0.0
                    cpc[i, j, k] = 0.0
                    continue
                a11 = mu * dd * dd + rho * e
                a22 = mu + nu * e * e
                inv = 1.0 / (mu * nu * dd * dd * e * e + rho * mu * e + rho * nu * e * e * e)
                cxt[i, j, k] = mu * nu * dd * e * e * inv
                cxs[i, j, k] = rho * a22 * inv
                cxc[i, j, k] = mu * nu * dd * e * inv
                cpt[i, j, k] = mu * rho * e * inv
                cps[i, j, k] = -mu * rho * dd * inv
                cpc[i, j, k] = -a11 * nu * e * inv


@njit(parallel=True, cache=True)
def tv_chi_spectrum(ss, ts, rho_inv, mu_d_inv):
    """chi update of weighted TV-ADMM in k-space, in place: ``ss <- rho_inv ss + mu_d_inv ts``
    (``ss`` the spectrum of ``G^T(z - u)``, ``ts`` that of ``z2 - u2``; half spectra)."""
    n0, n1, n2 = ss.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                ss[i, j, k] = rho_inv[i, j, k] * ss[i, j, k] + mu_d_inv[i, j, k] * ts[i, j, k]
