"""Field simulation on a fine grid without wrap-around, and grid-to-grid resampling.

A whole head on a 0.5 mm grid is too large to zero pad to twice its size. The simulator therefore
splits the dipole convolution into two scales:

``field_fine = P_fine(chi) + U[L_coarse(chi_c) - P_coarse(chi_c)]``

where ``P`` is the periodic (unpadded) FFT convolution, ``L`` the zero-padded (linear, no
wrap-around) one of :func:`chimap.forward.dipole_field`, ``chi_c`` the block mean of ``chi`` on
the output grid and ``U`` trilinear upsampling. The bracket is the field of the periodic images
of the sources, which lie a field of view away and are therefore smooth inside the volume, so the
coarse grid represents it accurately while all fine structure comes from the fine grid.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..forward import dipole_field
from ..kernels import dipole_kernel, fft_workers
from .anatomy import sample_separable
from .shapes import Grid

__all__ = ["periodic_dipole_field", "two_scale_dipole_field", "block_mean", "fourier_downsample"]


def periodic_dipole_field(chi, voxel_size, *, b0_direction):
    """Field (ppm) of ``chi`` (ppm) by unpadded, periodic FFT convolution; float32 in, float32 out."""
    workers = fft_workers()
    spec = sfft.rfftn(chi, workers=workers)
    spec *= dipole_kernel(chi.shape, voxel_size, b0_direction=b0_direction, real_fft=True, dtype=chi.dtype)
    out = sfft.irfftn(spec, s=chi.shape, workers=workers)
    return out.astype(chi.dtype, copy=False)


def block_mean(x, factor):
    """Mean over non-overlapping blocks of ``factor`` voxels per axis (shape divisible by factor)."""
    f = tuple(int(v) for v in np.broadcast_to(np.asarray(factor), (3,)))
    n = tuple(s // fi for s, fi in zip(x.shape[:3], f))
    if any(s != ni * fi for s, ni, fi in zip(x.shape[:3], n, f)):
        raise ValueError(f"shape {x.shape[:3]} is not divisible by factor {f}")
    acc_dtype = np.complex128 if np.iscomplexobj(x) else np.float64
    out = x.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5), dtype=acc_dtype)
    return out.astype(x.dtype, copy=False)


def two_scale_dipole_field(chi_fine, fine_voxel_size, factor, *, b0_direction, margin_mm=16.0):
    """Field (ppm) of ``chi_fine`` on its fine grid with the two-scale wrap-around correction.

    Parameters
    ----------
    chi_fine : numpy.ndarray of float32, shape (f0*n0, f1*n1, f2*n2)
        Susceptibility (ppm) relative to the medium outside the volume.
    fine_voxel_size : sequence of 3 float
        Fine voxel sizes (mm).
    factor : int or sequence of 3 int
        Fine voxels per coarse voxel along each axis.
    b0_direction : sequence of 3 float
    margin_mm : float
        Zero padding (air) added on every side before the periodic convolutions, rounded up to
        whole coarse voxels. It moves the periodic images away from the faces of the volume, so
        that the coarse correction stays accurate for sources that touch a face (a neck cut by
        the field of view).

    Returns
    -------
    field_fine : numpy.ndarray of float32, shape of ``chi_fine``
    """
    f = np.broadcast_to(np.asarray(factor, dtype=int), (3,))
    vs_f = np.asarray(fine_voxel_size, dtype=np.float64)
    vs_c = vs_f * f
    shape = chi_fine.shape
    pad_c = [int(np.ceil(margin_mm / v)) for v in vs_c]
    if any(pad_c):
        chi_fine = np.pad(chi_fine, [(p * fi, p * fi) for p, fi in zip(pad_c, f)])
    chi_c = block_mean(chi_fine, f)
    correction = dipole_field(chi_c, None, vs_c, b0_direction=b0_direction, pad_factor=2.0)
    correction -= periodic_dipole_field(chi_c, vs_c, b0_direction=b0_direction)
    del chi_c
    field = periodic_dipole_field(chi_fine, vs_f, b0_direction=b0_direction)
    # coarse voxel centres sit at fine index f*c + (f-1)/2
    fine = Grid(chi_fine.shape, tuple(vs_f), (0.0, 0.0, 0.0))
    origin_c = tuple((fi - 1) / 2.0 * v for fi, v in zip(f, vs_f))
    field += sample_separable(correction, origin_c, tuple(vs_c), fine, fill=None)
    del correction
    crop = tuple(slice(p * fi, p * fi + n) for p, fi, n in zip(pad_c, f, shape))
    return np.ascontiguousarray(field[crop])


def fourier_downsample(x, factor):
    """Band-limited downsampling of a complex image by cropping its k-space, axis by axis.

    Models the acquisition of a finite k-space: the output samples the continuous object
    (represented on the fine grid) at the coarse voxel centres, i.e. the centres of the
    ``factor``-sized blocks, with the ringing that a sharp k-space cut-off brings.

    Parameters
    ----------
    x : numpy.ndarray, complex, shape (f0*n0, f1*n1, f2*n2)
    factor : int or sequence of 3 int

    Returns
    -------
    numpy.ndarray, complex, shape (n0, n1, n2)
    """
    f = tuple(int(v) for v in np.broadcast_to(np.asarray(factor), (3,)))
    workers = fft_workers()
    out = x
    for ax in range(3):
        if f[ax] == 1:
            continue
        n_f = out.shape[ax]
        n_c = n_f // f[ax]
        spec = sfft.fft(out, axis=ax, workers=workers)
        keep = np.fft.fftfreq(n_c, d=1.0 / n_c).astype(np.int64)  # integer frequencies in fft order
        spec = np.take(spec, np.mod(keep, n_f), axis=ax)
        # shift by (f-1)/2 fine voxels so coarse samples sit at block centres
        shift = np.exp(2j * np.pi * keep * ((f[ax] - 1) / 2.0) / n_f).astype(spec.dtype)
        view = [1] * out.ndim
        view[ax] = n_c
        spec *= shift.reshape(view)
        out = sfft.ifft(spec, axis=ax, workers=workers)
        out /= f[ax]
        del spec
    return out.astype(x.dtype, copy=False)
