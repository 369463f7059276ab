"""SHARP and V-SHARP: spherical mean value filtering and deconvolution.

A background field ``f_B`` is harmonic inside the mask, so it equals its mean over any sphere
that lies inside the mask (the mean value property). With ``S`` the spherical mean value (SMV)
filter, ``(1 - S) f = (1 - S) f_L`` on the mask eroded by the sphere: the background is gone
and the local field is blurred by ``1 - S``. SHARP (Schweser et al., NeuroImage
2011;54:2789-2807) undoes that blur by a truncated (TSVD) deconvolution; V-SHARP (Li et al.,
NeuroImage 2011;55:1645-1656; Wu et al., MRM 2012;67:137-147) uses, at every voxel, the
largest sphere that fits in the mask, so the mask shrinks only by the smallest radius.

Spheres hold the voxels whose centre is within ``radius`` mm (anisotropic voxels give
ellipsoids in voxel units); on anisotropic grids their weights are corrected so that the three
second moments are equal, which keeps harmonic fields harmonic to about 1e-4 instead of 1e-2
(:func:`chimap.background._common.ball_weights`). They are built on the FFT grid of the
mask's bounding box, padded by the largest radius so that no sphere wraps around. Float32
input is filtered in float32 arithmetic, anything else in float64.
"""

from __future__ import annotations

import numpy as np

from ._common import (
    FFTBox,
    check_inputs,
    check_radius,
    empty_erosion_error,
    finish,
    sphere_fits,
)

__all__ = ["default_vsharp_radii", "sharp", "smv_filter", "vsharp"]

#: Default SHARP radius (mm).
SHARP_RADIUS_MM = 5.0
#: Default largest V-SHARP radius (mm).
VSHARP_MAX_RADIUS_MM = 12.0


def _margin(voxel_size, radius):
    return [int(np.ceil(radius / d)) + 1 for d in voxel_size]


def _work_dtype(dtype):
    return np.float32 if dtype == np.float32 else np.float64


def _check_threshold(threshold):
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}") from None
    if not np.isfinite(t) or not 0 < t < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    return t


def _tsvd_deconvolve(box, g, kernel, threshold):
    """``IFFT(FFT(g) / kernel)`` where ``|kernel| > threshold``, 0 elsewhere (TSVD)."""
    inv = np.where(np.abs(kernel) > threshold, 1.0 / np.where(kernel == 0, 1, kernel), 0)
    return box.irfft(box.rfft(g) * inv.astype(kernel.dtype, copy=False))


def smv_filter(total_field, mask, voxel_size, *, radius=SHARP_RADIUS_MM):
    """High-pass SMV filtered field ``f - S*f`` on the mask eroded by ``radius`` (no deconvolution).

    This is the first step of SHARP: the background is removed but the local field is blurred
    by ``1 - S``.

    Parameters
    ----------
    total_field : numpy.ndarray, shape (I, J, K)
        Total field in ppm (only values inside ``mask`` are used).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Region of interest (brain).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    radius : float
        Sphere radius in mm (at least the largest voxel size).

    Returns
    -------
    filtered : numpy.ndarray, shape (I, J, K)
        ``f - S*f`` in ppm inside the eroded mask, 0 elsewhere; dtype of ``total_field``.
    valid_mask : numpy.ndarray of bool, shape (I, J, K)
        ``mask`` eroded by the sphere.
    """
    f, m, vs = check_inputs(total_field, mask, voxel_size)
    radius = check_radius(radius, vs)
    work = _work_dtype(f.dtype)
    if not sphere_fits(m, vs, radius):
        raise empty_erosion_error(radius)
    box = FFTBox(m, _margin(vs, radius))
    s, wmin = box.ball(vs, radius, np.float64)
    valid = box.erode(box.rfft(box.crop(m, np.float64)), s, wmin)
    g = box.irfft(box.rfft(box.crop(np.where(m, f, 0), work)) * (1 - s).astype(work))
    valid = box.uncrop(valid, False)
    if not valid.any():
        raise empty_erosion_error(radius)
    return finish(box.uncrop(g), valid, f.dtype)


def sharp(total_field, mask, voxel_size, *, radius=SHARP_RADIUS_MM, threshold=0.05):
    """SHARP background field removal (Schweser et al. 2011).

    ``f_L = M_r * TSVD^-1(1 - S) [M_r * ((1 - S) f)]`` with ``S`` the SMV filter of a sphere
    of ``radius`` mm and ``M_r`` the mask eroded by that sphere. Spatial frequencies where
    ``|1 - S| <= threshold`` are set to zero by the truncated deconvolution, so the very
    lowest frequencies of the local field are lost (they cannot be told apart from the
    background).

    Parameters
    ----------
    total_field : numpy.ndarray, shape (I, J, K)
        Total (unwrapped) field in ppm; only values inside ``mask`` are read.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Region of interest (brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm (anisotropic allowed).
    radius : float
        Sphere radius in mm, default 5 mm; at least the largest voxel size.
    threshold : float
        TSVD truncation level on ``|1 - S(k)|``, in (0, 1); default 0.05.

    Returns
    -------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm inside ``valid_mask``, 0 outside; dtype of ``total_field``.
    valid_mask : numpy.ndarray of bool, shape (I, J, K)
        ``mask`` eroded by the sphere (every voxel whose whole sphere lies in ``mask``).

    Raises
    ------
    ValueError
        Bad shapes or dtypes, empty mask, non-finite values inside the mask, a radius below
        the largest voxel size, or a mask that is empty after erosion.
    """
    f, m, vs = check_inputs(total_field, mask, voxel_size)
    radius = check_radius(radius, vs)
    threshold = _check_threshold(threshold)
    work = _work_dtype(f.dtype)
    if not sphere_fits(m, vs, radius):
        raise empty_erosion_error(radius)
    box = FFTBox(m, _margin(vs, radius))
    s, wmin = box.ball(vs, radius, np.float64)
    valid = box.erode(box.rfft(box.crop(m, np.float64)), s, wmin)
    if not valid.any():
        raise empty_erosion_error(radius)
    kernel = (1 - s).astype(work)
    g = box.irfft(box.rfft(box.crop(np.where(m, f, 0), work)) * kernel)
    g *= valid
    local = _tsvd_deconvolve(box, g, kernel, threshold)
    return finish(box.uncrop(local), box.uncrop(valid, False), f.dtype)


def default_vsharp_radii(voxel_size, *, max_radius=VSHARP_MAX_RADIUS_MM):
    """Default V-SHARP radii (mm), decreasing: ``max_radius`` down to the largest voxel size.

    Steps are one smallest voxel size (each radius adds a shell of voxels along the finest
    axis), but at least 1 mm (finer steps cost time and change little), and the last radius is
    the largest voxel size: 12, 11, ..., 1 mm for 1 mm voxels, 12, 9, 6, 3 mm for 3 mm voxels,
    12, 10, 8, 6, 4, 2.5 mm for 2 x 2 x 2.5 mm voxels, 12, 11, ..., 1, 0.5 mm for 0.5 mm voxels.
    """
    vs = np.asarray(voxel_size, dtype=np.float64)
    lo, step = float(vs.max()), max(float(vs.min()), 1.0)
    radii = [float(max_radius) - step * k
             for k in range(int(np.floor((max_radius - lo) / step + 1e-9)) + 1)]
    radii = [r for r in radii if r > lo * (1 + 1e-9)]
    return np.array(radii + [lo])


def vsharp(total_field, mask, voxel_size, *, radii=None, threshold=0.05):
    """V-SHARP background field removal (Li et al. 2011; Wu et al. 2012).

    Radii go from large to small. Every voxel takes the SMV high-pass ``(1 - S_r) f`` of the
    largest sphere ``r`` that lies entirely inside the mask; the combined map is deconvolved
    with the kernel of the largest sphere used, ``1 - S_max``, truncated where
    ``|1 - S_max| <= threshold`` (TSVD), and masked with the mask eroded by the smallest sphere.

    Parameters
    ----------
    total_field : numpy.ndarray, shape (I, J, K)
        Total (unwrapped) field in ppm; only values inside ``mask`` are read.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Region of interest (brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    radii : sequence of float, optional
        Sphere radii in mm (any order; used largest first). Default
        :func:`default_vsharp_radii`: 12 mm down to the largest voxel size in steps of the
        smallest voxel size (12, 11, ..., 1 mm at 1 mm; 12, 9, 6, 3 mm at 3 mm). Every radius
        must be at least the largest voxel size; radii whose sphere fits nowhere in the mask
        are skipped (the largest sphere that fits makes the deconvolution kernel).
    threshold : float
        TSVD truncation level on ``|1 - S_max(k)|``, in (0, 1); default 0.05.

    Returns
    -------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm inside ``valid_mask``, 0 outside; dtype of ``total_field``.
    valid_mask : numpy.ndarray of bool, shape (I, J, K)
        ``mask`` eroded by the smallest sphere.

    Raises
    ------
    ValueError
        As :func:`sharp`; also for an empty list of radii.
    """
    f, m, vs = check_inputs(total_field, mask, voxel_size)
    if radii is None:
        radii = default_vsharp_radii(vs)
    radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if radii.ndim != 1 or radii.size == 0:
        raise ValueError("radii must be a non-empty sequence of radii in mm")
    radii = sorted({check_radius(r, vs, name="every radius") for r in radii}, reverse=True)
    threshold = _check_threshold(threshold)
    fitting = [r for r in radii if sphere_fits(m, vs, r)]  # larger ones could never be used
    if not fitting:
        raise empty_erosion_error(radii[-1])
    radii = fitting
    work = _work_dtype(f.dtype)
    box = FFTBox(m, _margin(vs, radii[0]))
    spec_f = box.rfft(box.crop(np.where(m, f, 0), work))
    spec_m = box.rfft(box.crop(m, np.float64))
    g = np.zeros(box.shape, dtype=work)
    done = np.zeros(box.shape, dtype=bool)
    kernel_max = None
    for r in radii:
        s, wmin = box.ball(vs, r, np.float64)
        eroded = box.erode(spec_m, s, wmin)
        new = eroded & ~done
        if new.any():
            if kernel_max is None:  # the largest sphere that fits somewhere in the mask
                kernel_max = (1 - s).astype(work)
            hp = box.irfft(spec_f * (1 - s).astype(work))
            g[new] = hp[new]
            done |= new
    valid = done  # = mask eroded by the smallest sphere
    if not valid.any():
        raise empty_erosion_error(radii[-1])
    local = _tsvd_deconvolve(box, g, kernel_max, threshold)
    return finish(box.uncrop(local), box.uncrop(valid, False), f.dtype)
