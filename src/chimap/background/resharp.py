"""RESHARP: regularisation-enabled SHARP (Sun & Wilman, MRM 2014;71:1151-1157).

SHARP's truncated deconvolution is replaced by Tikhonov regularisation:

    f_L = argmin_x || M_r C (x - f) ||_2^2 + alpha || x ||_2^2,    C = 1 - S

with ``S`` the SMV filter of a sphere of ``radius`` mm and ``M_r`` the mask eroded by it. The
normal equations ``(C M_r C + alpha) x = C M_r C f`` are solved by conjugate gradient with
FFT convolutions on the cropped, padded grid of the mask (iterating on the half spectrum).
"""

from __future__ import annotations

import numpy as np

from ._common import (
    FFTBox,
    check_inputs,
    check_radius,
    conjugate_gradient,
    empty_erosion_error,
    finish,
    sphere_fits,
)
from .sharp import SHARP_RADIUS_MM, _margin

__all__ = ["resharp"]


def resharp(total_field, mask, voxel_size, *, radius=SHARP_RADIUS_MM, alpha=1e-3, tol=1e-4,
            max_iter=200):
    """RESHARP background field removal (Sun & Wilman 2014).

    Parameters
    ----------
    total_field : numpy.ndarray, shape (I, J, K)
        Total (unwrapped) field in ppm; only values inside ``mask`` are read.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Region of interest (brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    radius : float
        Sphere radius in mm (default 5 mm; at least the largest voxel size).
    alpha : float
        Tikhonov weight (> 0, dimensionless: ``|1 - S|`` is at most about 1.1). The filter
        applied to ``(1 - S) f`` is ``c / (c^2 + alpha)`` with ``c = 1 - S(k)``: frequencies
        with ``c^2`` well below ``alpha`` are suppressed, as SHARP's TSVD threshold does, and
        the largest gain is ``1 / (2 sqrt(alpha))``. The default 1e-3 (gain at most 16)
        matches SHARP's default threshold 0.05 (gain at most 20) in noise amplification.
    tol : float
        CG stops at a relative residual of the normal equations below ``tol`` (default 1e-4).
    max_iter : int
        Maximum number of CG iterations (default 200).

    Returns
    -------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm inside ``valid_mask``, 0 outside; dtype of ``total_field``.
    valid_mask : numpy.ndarray of bool, shape (I, J, K)
        ``mask`` eroded by the sphere.

    Raises
    ------
    ValueError
        As :func:`chimap.background.sharp`; also for ``alpha <= 0``.
    """
    f, m, vs = check_inputs(total_field, mask, voxel_size)
    radius = check_radius(radius, vs)
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    if not (0 < float(tol) < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    work = np.float32 if f.dtype == np.float32 else np.float64
    if not sphere_fits(m, vs, radius):
        raise empty_erosion_error(radius)
    box = FFTBox(m, _margin(vs, radius))
    s, wmin = box.ball(vs, radius, np.float64)
    valid = box.erode(box.rfft(box.crop(m, np.float64)), s, wmin)
    if not valid.any():
        raise empty_erosion_error(radius)
    kernel = (1 - s).astype(work)
    valid_w = valid.astype(work)

    # CG runs on the rfft half spectrum X = FFT(x): the normal operator
    # X -> K FFT(M_r IFFT(K X)) + alpha X then costs one FFT pair per iteration instead of two.
    def normal(xh):
        return box.rfft(box.irfft(kernel * xh) * valid_w) * kernel + alpha * xh

    fh = box.rfft(box.crop(np.where(m, f, 0), work))
    rhs = box.rfft(box.irfft(kernel * fh) * valid_w) * kernel
    n_last = box.shape[2]
    w = np.full(rhs.shape[2], 2.0)
    w[0] = 1.0
    if n_last % 2 == 0:
        w[-1] = 1.0

    def inner(u, v):  # real inner product of the full spectra (Hermitian symmetry)
        return float(np.einsum("ijk,k->", u.real * v.real + u.imag * v.imag, w))

    xh, _ = conjugate_gradient(normal, rhs, tol=float(tol), max_iter=int(max_iter), inner=inner)
    local = box.irfft(xh)
    return finish(box.uncrop(local), box.uncrop(valid, False), f.dtype)
