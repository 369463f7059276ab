"""Forward model: the field (ppm) produced by a susceptibility distribution (ppm).

``field = IFFT(D * FFT(chi))`` with the dipole kernel of :mod:`chimap.kernels`. The volume is
zero padded before the FFT so that the periodic images of the sources do not wrap back into the
volume: by default every axis is padded to at least twice its length, which puts every periodic
image at least one volume length away from every voxel.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .geometry import check_b0_direction, check_voxel_size
from .kernels import dipole_kernel, fft_workers

__all__ = ["dipole_field", "padded_shape"]


def padded_shape(shape, pad_factor=2.0) -> tuple[int, int, int]:
    """FFT-friendly shape of at least ``pad_factor * n`` per axis (``pad_factor`` scalar or 3)."""
    f = np.broadcast_to(np.asarray(pad_factor, dtype=np.float64), (3,))
    if np.any(f < 1.0):
        raise ValueError(f"pad_factor must be >= 1 on every axis, got {f.tolist()}")
    return tuple(
        int(sfft.next_fast_len(int(np.ceil(n * fi)), real=True)) if fi > 1 else int(n)
        for n, fi in zip(shape, f)
    )


def dipole_field(chi, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), pad_factor=2.0):
    """Field in ppm of B0 created by ``chi`` (ppm), without wrap-around.

    Parameters
    ----------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm (relative to the medium outside the volume, which is taken as
        chi = 0 everywhere beyond the array).
    mask : numpy.ndarray of bool, shape (I, J, K), or None
        Sources outside the mask are set to zero; None keeps every voxel.
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes.
    pad_factor : float or sequence of 3 float
        Each axis is zero padded to at least ``pad_factor`` times its length (1 = no padding:
        periodic, e.g. along the axis of an infinite cylinder).

    Returns
    -------
    numpy.ndarray, shape (I, J, K)
        Field in ppm, same floating dtype as ``chi`` (float64 for integer input).
    """
    chi = np.asarray(chi)
    if chi.ndim != 3:
        raise ValueError(f"chi must be a 3-D array, got shape {chi.shape}")
    if not np.issubdtype(chi.dtype, np.floating):
        chi = chi.astype(np.float64)
    if not np.all(np.isfinite(chi)):
        raise ValueError("chi contains NaN or infinite values; replace them (e.g. with 0) first")
    vs = check_voxel_size(voxel_size)
    b = check_b0_direction(b0_direction)
    src = chi
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != chi.shape:
            raise ValueError(f"mask shape {mask.shape} does not match chi shape {chi.shape}")
        src = np.where(mask.astype(bool), chi, chi.dtype.type(0))
    pshape = padded_shape(chi.shape, pad_factor)
    workers = fft_workers()
    spec = sfft.rfftn(src, s=pshape, workers=workers)
    spec *= dipole_kernel(pshape, vs, b0_direction=b, real_fft=True, dtype=chi.dtype)
    field = sfft.irfftn(spec, s=pshape, workers=workers)
    del spec
    return np.ascontiguousarray(field[: chi.shape[0], : chi.shape[1], : chi.shape[2]]).astype(
        chi.dtype, copy=False
    )
