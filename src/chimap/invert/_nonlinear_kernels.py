"""Fused pointwise loops of the nonlinear-fidelity inversions (nlTV, NDI), compiled with numba
(private).

The nonlinear data term of :mod:`chimap.invert.nonlinear`, per voxel and in ppm units, is

    (W^2 / s^2) * (1 - cos(s (z - f)))   ==   (1 / (2 s^2)) |W (exp(i s z) - exp(i s f))|^2

with ``s`` the phase scale (rad/ppm), ``f`` the field (ppm) and ``z`` the modelled field ``D chi``;
for ``s -> 0`` it tends to ``W^2 (z - f)^2 / 2``. Arithmetic inside the loops is float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["ndi_step", "nonlinear_fidelity_update", "sine_residual"]


@njit(parallel=True, cache=True)
def nonlinear_fidelity_update(dchi, f, w2, mu, scale, u2, t, max_newton, tol_rad):
    """z2/u2 update of ADMM for the split ``z2 = D chi`` with the nonlinear data term.

    Per voxel ``z2 = argmin_z (W^2/s^2)(1 - cos(s (z - f))) + mu/2 (z - v)^2`` with
    ``v = D chi + u2``, by Newton's method started at ``z = v`` (Milovic et al. 2018):
    ``z <- z - g / h`` with ``g = (W^2/s) sin(s (z - f)) + mu (z - v)`` and
    ``h = max(W^2 cos(s (z - f)) + mu, mu)``. The curvature is floored at ``mu`` so that the
    step stays a descent step where the data term is locally concave (phase residual beyond
    pi/2, only possible when ``W^2 > mu``); elsewhere it is the plain Newton step. A voxel stops
    when its step is below ``tol_rad`` in phase (rad) or after ``max_newton`` steps. Where
    ``W = 0`` the minimiser is ``z = v``. Then ``u2 <- v - z`` and ``t <- z - u2``, the argument
    of the next chi update. ``u2`` and ``t`` are updated in place.
    """
    n0, n1, n2 = dchi.shape
    inv_s = 1.0 / scale
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                v = np.float64(dchi[i, j, k]) + u2[i, j, k]
                ww = np.float64(w2[i, j, k])
                z = v
                if ww > 0.0:
                    fi = np.float64(f[i, j, k])
                    for _ in range(max_newton):
                        r = scale * (z - fi)
                        g = ww * np.sin(r) * inv_s + mu * (z - v)
                        h = max(ww * np.cos(r) + mu, mu)
                        step = g / h
                        z -= step
                        if abs(step) * scale < tol_rad:
                            break
                u2[i, j, k] = v - z
                t[i, j, k] = 2.0 * z - v


@njit(parallel=True, cache=True)
def sine_residual(dchi, f, w2, scale, out):
    """``out <- (W^2 / s) sin(s (D chi - f))``: the data part of the NDI gradient before ``D^T``
    (``W^2 (D chi - f)`` in the limit ``s -> 0``)."""
    n0, n1, n2 = dchi.shape
    inv_s = 1.0 / scale
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                ww = np.float64(w2[i, j, k])
                if ww > 0.0:
                    out[i, j, k] = ww * np.sin(scale * (np.float64(dchi[i, j, k]) - f[i, j, k])) * inv_s
                else:
                    out[i, j, k] = 0.0


@njit(parallel=True, cache=True)
def ndi_step(x, q, d, alpha, step, g_prev, nyquist_last, xd, track_change=True):
    """One NDI gradient step in k-space (real-FFT half spectra), in place.

    ``g = 2 D Q + 2 alpha X`` (``Q`` the FFT of :func:`sine_residual`), ``X <- X - step * g``;
    ``g`` is stored in ``g_prev`` and ``D X`` (the spectrum of the next ``D chi``) in ``xd``.
    Returns ``||g - g_prev_old|| / ||g||`` (Parseval weights: planes of the last axis standing
    for two conjugate frequencies count twice; the zero plane, and the Nyquist plane when
    ``nyquist_last``, count once). With ``track_change=False`` ``g_prev`` is neither read nor
    written and 0 is returned (a run without a tolerance stop saves that memory traffic).
    """
    n0, n1, n2 = x.shape
    num = 0.0
    den = 0.0
    for i in prange(n0):
        a = 0.0
        b = 0.0
        for j in range(n1):
            for k in range(n2):
                wk = 2.0
                if k == 0 or (nyquist_last and k == n2 - 1):
                    wk = 1.0
                dk = np.float64(d[i, j, k])
                xr = np.float64(x[i, j, k].real)
                xi = np.float64(x[i, j, k].imag)
                gr = 2.0 * dk * q[i, j, k].real + 2.0 * alpha * xr
                gi = 2.0 * dk * q[i, j, k].imag + 2.0 * alpha * xi
                if track_change:
                    dr = gr - g_prev[i, j, k].real
                    di = gi - g_prev[i, j, k].imag
                    a += wk * (dr * dr + di * di)
                    b += wk * (gr * gr + gi * gi)
                    g_prev[i, j, k] = gr + 1j * gi
                xr -= step * gr
                xi -= step * gi
                x[i, j, k] = xr + 1j * xi
                xd[i, j, k] = dk * xr + 1j * (dk * xi)
        num += a
        den += b
    if not track_change or den == 0.0:
        return 0.0 if num == 0.0 else np.inf
    return np.sqrt(num / den)
