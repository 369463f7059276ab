"""Image metrics for susceptibility maps: estimate against a reference (ground truth).

Every metric is a plain function ``f(estimate, reference, mask=None, *, ...)`` returning a
Python float (or a dict for metric sets). ``mask`` selects the evaluated voxels (None: all);
shapes must agree and NaN/inf inside the mask is a ``ValueError``. Computations run in float64.
Each docstring states the formula and its reference.

========================  =====================================================================
:func:`rmse`, :func:`mae`  errors in ppm
:func:`nrmse`              ``||x - r|| / ||r||`` as a fraction (``percent=True``: percent)
:func:`nrmse_detrended`    challenge 2.0 NRMSE after removing a fitted slope and offset
:func:`psnr`               dB, peak = range of the reference in the mask
:func:`correlation`        Pearson correlation in the mask
:func:`hfen`               high-frequency error norm (LoG, sigma 1.5 voxels, 15^3)
:func:`ssim`               3-D SSIM, Gaussian window sigma 1.5 voxels (11^3)
:func:`xsim`               susceptibility-optimised SSIM (L = 1 ppm, K2 = 0.001)
:func:`challenge_metrics`  the QSM challenge 2.0 set (needs a segmentation)
:func:`compute_all`        all of the above that apply
========================  =====================================================================
"""

from __future__ import annotations

from ._common import check_labels, check_pair
from .basic import correlation, linear_fit, mae, nrmse, nrmse_detrended, psnr, rmse
from .challenge import (
    DEFAULT_LABEL_MAP,
    SIMULATOR_LABELS,
    calcification_metrics,
    challenge_metrics,
    deep_grey_slope,
)
from .structural import hfen, log_kernel, ssim, ssim_map, xsim

__all__ = [
    "rmse",
    "mae",
    "nrmse",
    "nrmse_detrended",
    "psnr",
    "correlation",
    "linear_fit",
    "hfen",
    "log_kernel",
    "ssim",
    "ssim_map",
    "xsim",
    "challenge_metrics",
    "deep_grey_slope",
    "calcification_metrics",
    "compute_all",
    "SIMULATOR_LABELS",
    "DEFAULT_LABEL_MAP",
]


def compute_all(estimate, reference, mask=None, *, labels=None, voxel_size=None,
                label_map=None) -> dict:
    """Compute every applicable metric of this module.

    Keys: ``rmse``, ``mae`` (ppm), ``nrmse`` (fraction), ``psnr`` (dB), ``correlation``, and for
    2-D/3-D images ``hfen`` (fraction), ``ssim``, ``xsim``; with ``labels`` (3-D only) also the
    keys of :func:`challenge_metrics`. A metric that is undefined for these inputs (e.g. PSNR
    of a constant reference) is NaN; invalid inputs raise.

    Parameters
    ----------
    estimate, reference : array_like
        Susceptibility maps (ppm) of equal shape.
    mask : array_like of bool, optional
        Evaluation mask; default all voxels (``labels > 0`` for the challenge set).
    labels : array_like of int, optional
        Segmentation for :func:`challenge_metrics`.
    voxel_size : sequence of 3 float, optional
        mm; used for the calcification moment.
    label_map : dict, optional
        Passed to :func:`challenge_metrics`.

    Returns
    -------
    dict of str -> float
    """
    x, r, m = check_pair(estimate, reference, mask)
    if labels is not None:
        check_labels(labels, x.shape)

    def safe(func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ValueError:
            return float("nan")

    out = {
        "rmse": rmse(x, r, m),
        "mae": mae(x, r, m),
        "nrmse": safe(nrmse, x, r, m),
        "psnr": safe(psnr, x, r, m),
        "correlation": correlation(x, r, m),
    }
    if x.ndim in (2, 3):
        out["hfen"] = safe(hfen, x, r, m)
        out["ssim"] = safe(ssim, x, r, m)
        out["xsim"] = xsim(x, r, m)
    if labels is not None:
        if x.ndim != 3:
            raise ValueError(f"the challenge metrics need 3-D images, got shape {x.shape}")
        out.update(challenge_metrics(x, r, labels, None if mask is None else m,
                                     label_map=label_map, voxel_size=voxel_size))
    return {k: float(v) for k, v in out.items()}
