"""Two-pass artefact reduction (Stewart et al. MRM 2022;87:1289, doi:10.1002/mrm.29048).

Strong susceptibility sources (haemorrhages, large veins, calcifications) corrupt the phase
around them: the field there is unreliable, and a dipole inversion that trusts it spreads
streaking artefacts over the brain. QSMxT's remedy, which this module follows:

1. **Pass 1 -- reliable mask.** Threshold a phase-quality map (Stewart et al. use a ROMEO
   phase quality; here any map with higher = more reliable, e.g.
   :func:`chimap.mask.quality.phase_quality` or :func:`chimap.mask.quality.quality_from_noise`
   of a field-fit standard error) and do **not** fill its holes: the unreliable sources are
   left out, so the pass-1 chi has no streaks from them.
2. **Pass 2 -- filled mask.** Fill the holes of the pass-1 mask (QSMxT: Gaussian smoothing
   then morphological hole filling), so the sources are inside and get a value.
3. **Combination.** The final chi takes the pass-1 value in the reliable voxels and the pass-2
   value elsewhere: ``chi = chi_1 + chi_2 * (1 - reliable)`` in QSMxT
   (``QSMxT/QSMxT@598cc6e:qsmxt/interfaces/nipype_interface_twopass.py``), i.e.
   :func:`combine_two_pass`.

The pipeline runs background removal and inversion once per mask (twice the runtime) and calls
:func:`artefact_reduction_masks` and :func:`combine_two_pass`. Differences from QSMxT: radii
are in mm; a brain mask (e.g. :func:`chimap.mask.brain.brain_mask`) bounds both masks when
given; the Gaussian fill has sigma ``smooth_fill_mm`` and level 0.5 (QSMxT: sigma 5 voxels,
level 0.4, which also grows convex outlines outward by about a quarter sigma).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._checks import as_image, as_mask, check_radius, check_voxel_size
from .morphology import fill_holes as _fill
from .morphology import largest_component
from .morphology import open_mm as _open
from .quality import quality_threshold_mask

__all__ = ["artefact_reduction_masks", "combine_two_pass"]

_SMOOTH_FILL_LEVEL = 0.5   # QSMxT uses 0.4, which also grows convex outlines by ~sigma/4


def artefact_reduction_masks(quality, mask, voxel_size, *, threshold="otsu", percentile: float = 10.0,
                             factor: float = 1.0, open_mm: float = 0.0, max_hole_mm3: float = 0.0,
                             fill_holes="both", smooth_fill_mm=5.0, keep_largest: bool = False):
    """Pass-1 (reliable) and pass-2 (filled) masks of the two-pass artefact reduction.

    Parameters
    ----------
    quality : array_like, shape (I, J, K)
        Phase-quality map, higher = more reliable; NaN = unreliable (not modified).
    mask : array_like or None
        Brain mask bounding both masks (recommended). None: the masks come from the quality
        map alone (QSMxT's threshold masking of the quality map), keeping its largest
        component.
    voxel_size : float or sequence of 3 float
        mm.
    threshold : float or {"otsu", "gaussian", "percentile"}
        Quality threshold (:func:`chimap.mask.quality.quality_threshold_mask`: Otsu and
        Gaussian over the whole volume, percentile inside ``mask``).
    percentile, factor : float
        For the automatic thresholds.
    open_mm : float
        Opening radius (mm) that cleans the reliable mask of spurs and single voxels (QSMxT
        opens with a 3x3x3 cross); 0 disables it.
    max_hole_mm3 : float
        Holes of the reliable mask up to this volume (mm^3) are filled in pass 1 already
        (noise specks; QSMxT fills voxels with >= 25 of 26 neighbours inside).
    fill_holes : bool or {"both", "3d", "slices"}
        Morphological hole filling of the pass-2 mask (:func:`chimap.mask.morphology.fill_holes`).
    smooth_fill_mm : float or None
        Gaussian smoothing (sigma, mm) of the reliable mask thresholded at 0.5 before the
        morphological fill; closes gaps that are not fully enclosed. None or 0 disables it.
    keep_largest : bool
        Keep only the largest component of the reliable mask.

    Returns
    -------
    reliable : numpy.ndarray of bool
        Pass-1 mask (holes at unreliable voxels).
    filled : numpy.ndarray of bool
        Pass-2 mask, a superset of ``reliable`` (within ``mask`` when given).
    """
    q = as_image(quality, "quality", ndims=(3,), allow_nonfinite=True)
    vs = check_voxel_size(voxel_size)
    bound = None if mask is None else as_mask(mask, shape=q.shape, allow_empty=False)
    r_open = check_radius(open_mm, "open_mm")
    hole_max = check_radius(max_hole_mm3, "max_hole_mm3")
    s_mm = 0.0 if smooth_fill_mm is None else check_radius(smooth_fill_mm, "smooth_fill_mm")
    fill_mode = {True: "both", "both": "both", "3d": "3d", "slices": "slices"}.get(fill_holes, None)
    if fill_holes is not False and fill_mode is None:
        raise ValueError(f"fill_holes must be True, False, 'both', '3d' or 'slices', got {fill_holes!r}")

    keep, level = quality_threshold_mask(q, bound, threshold=threshold, percentile=percentile, factor=factor)
    reliable = keep if bound is None else keep & bound
    if r_open > 0:
        reliable = _open(reliable, vs, radius_mm=r_open)
    if keep_largest or bound is None:
        reliable = largest_component(reliable)
    if not reliable.any():
        raise ValueError(f"no voxel has quality >= {level:.4g}: lower the threshold")
    if hole_max > 0:
        reliable = _fill_small_holes(reliable, vs, hole_max)

    filled = reliable
    if s_mm > 0:
        smooth = ndimage.gaussian_filter(reliable.astype(np.float32), s_mm / vs, mode="constant")
        filled = filled | (smooth > _SMOOTH_FILL_LEVEL)
    if fill_mode is not None:
        filled = _fill(filled, mode=fill_mode)
    if bound is not None:
        filled &= _fill(bound, mode="3d")
    return reliable, filled | reliable


def _fill_small_holes(m, vs, max_mm3):
    holes = ndimage.binary_fill_holes(m) & ~m
    if not holes.any():
        return m
    labels, _ = ndimage.label(holes)
    sizes = np.bincount(labels.ravel()) * float(np.prod(vs))
    small = sizes <= max_mm3
    small[0] = False
    return m | small[labels]


def combine_two_pass(chi_reliable, chi_filled, reliable_mask, *, filled_mask=None):
    """Final chi of the two-pass method: pass 1 where reliable, pass 2 elsewhere.

    Parameters
    ----------
    chi_reliable : array_like, shape (I, J, K)
        Susceptibility (ppm) from the pass-1 (reliable) mask (not modified).
    chi_filled : array_like, shape (I, J, K)
        Susceptibility (ppm) from the pass-2 (filled) mask.
    reliable_mask : array_like, shape (I, J, K)
        The pass-1 mask.
    filled_mask : array_like, optional
        The pass-2 mask; when given, the result is 0 outside ``reliable | filled``.

    Returns
    -------
    numpy.ndarray
        dtype of ``chi_reliable`` and ``chi_filled`` combined (float32 stays float32).

    Raises
    ------
    ValueError
        Shapes differ, non-real input, or NaN/inf among the values taken.
    """
    c1 = as_image(chi_reliable, "chi_reliable", ndims=(3,), allow_nonfinite=True)
    c2 = as_image(chi_filled, "chi_filled", ndims=(3,), allow_nonfinite=True)
    if c1.shape != c2.shape:
        raise ValueError(f"chi_reliable and chi_filled must have the same shape, got {c1.shape} and {c2.shape}")
    rel = as_mask(reliable_mask, "reliable_mask", shape=c1.shape)
    dtype = np.result_type(c1.dtype, c2.dtype, np.float32)
    out = np.where(rel, c1, c2).astype(dtype, copy=False)
    used = np.ones(c1.shape, bool)
    if filled_mask is not None:
        used = rel | as_mask(filled_mask, "filled_mask", shape=c1.shape)
        out[~used] = 0
    bad = used & ~np.isfinite(out)
    if bad.any():
        n1 = int(np.count_nonzero(bad & rel))
        raise ValueError(f"{int(bad.sum())} combined voxel(s) are NaN or infinite "
                         f"({n1} from chi_reliable, {int(bad.sum()) - n1} from chi_filled)")
    return out
