"""PDF: projection onto dipole fields (Liu et al., NMR Biomed 2011;24:1129-1136).

The background field is modelled as the field of susceptibility sources outside the mask:

    chi_B = argmin || W M (f - D P chi) ||_2^2

with ``M`` the mask, ``W`` optional noise weights, ``P`` the restriction to voxels outside the
mask and ``D`` the dipole convolution (kernel of :mod:`chimap.kernels`, ``D(0) = 0``). The
normal equations are solved by conjugate gradient (CGNR); ``local = f - D P chi_B`` inside the
mask. The FFT grid is the array zero padded by ``pad_factor`` (to fast FFT sizes); sources
may sit anywhere outside the mask on that grid, including the padding (sources beyond the
field of view, e.g. the neck and shoulders). Because the fit stops at a finite tolerance, it
acts as a regularised projection (the field of the smallest sources that explain the
background), as in the original paper.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..geometry import check_b0_direction
from ..kernels import dipole_kernel, fft_workers
from ._common import check_inputs, conjugate_gradient, finish

__all__ = ["pdf"]


def _check_weight(weight, mask):
    w = np.asarray(weight)
    if w.shape != mask.shape:
        raise ValueError(f"weight shape {w.shape} does not match the field shape {mask.shape}")
    if np.iscomplexobj(w) or not np.issubdtype(w.dtype, np.number):
        raise ValueError(f"weight must be a real array, got dtype {w.dtype}")
    wm = w[mask].astype(np.float64)
    if not np.all(np.isfinite(wm)) or np.any(wm < 0):
        raise ValueError("weight must be finite and non-negative inside the mask")
    if not np.any(wm > 0):
        raise ValueError("weight is zero everywhere inside the mask")
    return np.where(mask, w, 0).astype(np.float64) / float(wm.max())


def pdf(total_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), weight=None,
        tol=1e-3, max_iter=100, pad_factor=1.0):
    """PDF background field removal (Liu et al. 2011).

    Parameters
    ----------
    total_field : numpy.ndarray, shape (I, J, K)
        Total (unwrapped) field in ppm; only values inside ``mask`` are read.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Region of interest (brain mask); background sources are fitted outside it.
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes (default (0, 0, 1)).
    weight : numpy.ndarray, shape (I, J, K), optional
        Data weights inside the mask, proportional to the inverse noise standard deviation of
        the field (e.g. the magnitude image); None weighs every voxel equally. Only relative
        values matter.
    tol : float
        CG stops when the normal-equation residual falls below ``tol`` times its initial value
        (default 1e-3).
    max_iter : int
        Maximum number of CG iterations (default 100).
    pad_factor : float or sequence of 3 float
        Each axis of the FFT grid is at least ``pad_factor`` times the array length (>= 1;
        default 1: the array, rounded up to a fast FFT size).

    Returns
    -------
    local_field : numpy.ndarray, shape (I, J, K)
        ``total - D * chi_B`` in ppm inside the mask, 0 outside; dtype of ``total_field``.
    valid_mask : numpy.ndarray of bool, shape (I, J, K)
        The input mask (PDF does not erode).

    Raises
    ------
    ValueError
        Bad shapes or dtypes, empty mask, non-finite values inside the mask, bad weights, or
        a mask that covers the whole FFT grid (no room for background sources).
    """
    f, m, vs = check_inputs(total_field, mask, voxel_size)
    b = check_b0_direction(b0_direction)
    if not (0 < float(tol) < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter!r}")
    pf = np.broadcast_to(np.asarray(pad_factor, dtype=np.float64), (3,))
    if not np.all(np.isfinite(pf)) or np.any(pf < 1):
        raise ValueError(f"pad_factor must be >= 1 on every axis, got {pf.tolist()}")
    w2 = None if weight is None else _check_weight(weight, m) ** 2

    work = np.float32 if f.dtype == np.float32 else np.float64
    shape = f.shape
    pshape = tuple(int(sfft.next_fast_len(int(np.ceil(n * p)), real=True))
                   for n, p in zip(shape, pf))
    crop = tuple(slice(0, n) for n in shape)
    mp = np.zeros(pshape, dtype=bool)
    mp[crop] = m
    outside = ~mp
    if not outside.any():
        raise ValueError("the mask covers the whole FFT grid: no room for background sources")
    workers = fft_workers()
    kernel = dipole_kernel(pshape, vs, b0_direction=b, real_fft=True, dtype=work)

    def conv(x):  # D * x on the padded grid, computed in the working precision
        spec = sfft.rfftn(x.astype(work, copy=False), workers=workers)
        spec *= kernel
        return sfft.irfftn(spec, s=pshape, workers=workers).astype(np.float64, copy=False)

    mw2 = mp.astype(np.float64)
    if w2 is not None:
        mw2[crop] *= w2

    def normal(x):  # P D M W^2 M D P x
        y = conv(np.where(outside, x, 0)) * mw2
        return np.where(outside, conv(y), 0)

    fp = np.zeros(pshape, dtype=np.float64)
    fp[crop] = np.where(m, f, 0)
    rhs = np.where(outside, conv(fp * mw2), 0)
    chi_b, _ = conjugate_gradient(normal, rhs, tol=float(tol), max_iter=int(max_iter))
    background = conv(chi_b)[crop]
    return finish(f - background, m, f.dtype)
