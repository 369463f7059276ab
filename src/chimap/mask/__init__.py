"""Brain and quality masks for QSM.

The 2024 consensus asks for brain extraction plus phase-quality masking (QSM consensus MRM
2024;91:1834). This package provides:

* :func:`brain_mask` -- magnitude threshold (Otsu, Gaussian fit or percentile, after a bias
  correction), opening in mm to detach the scalp, hole filling, removal of the outer CSF shell,
  optional phase-quality exclusion; or validation of an external mask;
* :func:`artefact_reduction_masks` and :func:`combine_two_pass` -- the two-pass artefact
  reduction of QSMxT (Stewart et al. MRM 2022;87:1289, doi:10.1002/mrm.29048);
* quality maps (:func:`phase_quality`, :func:`quality_from_noise`) and thresholds
  (:func:`otsu_threshold`, :func:`gaussian_threshold`, :func:`compute_threshold`);
* morphology in mm on anisotropic voxels (:func:`erode_mm`, :func:`dilate_mm`,
  :func:`open_mm`), :func:`largest_component`, :func:`fill_holes` and :func:`dice`.

Masks are returned as new bool arrays; inputs are never modified.
"""

from .brain import brain_mask, combine_echoes, homogenize
from .morphology import (
    ball,
    dice,
    dilate_mm,
    erode_mm,
    fill_holes,
    largest_component,
    open_mm,
)
from .quality import phase_quality, quality_from_noise, quality_threshold_mask
from .threshold import (
    compute_threshold,
    gaussian_threshold,
    otsu_threshold,
    percentile_threshold,
)
from .twopass import artefact_reduction_masks, combine_two_pass

__all__ = [
    "artefact_reduction_masks",
    "ball",
    "brain_mask",
    "combine_echoes",
    "combine_two_pass",
    "compute_threshold",
    "dice",
    "dilate_mm",
    "erode_mm",
    "fill_holes",
    "gaussian_threshold",
    "homogenize",
    "largest_component",
    "open_mm",
    "otsu_threshold",
    "percentile_threshold",
    "phase_quality",
    "quality_from_noise",
    "quality_threshold_mask",
]
