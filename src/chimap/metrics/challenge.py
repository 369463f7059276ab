"""The QSM reconstruction challenge 2.0 metric set.

References
----------
Bilgic B, Langkammer C, Marques JP, et al. QSM reconstruction challenge 2.0: design and report
of results. MRM 2021;86:1241-1255.
Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0: a realistic in silico
head phantom for MRI data simulation and evaluation of susceptibility mapping procedures.
MRM 2021;86:526-542.

The formulas follow the challenge's evaluation code (``compute_rmse_detrend``,
``compute_linearityDeepGM``, ``compute_calcification_metrics``), as ported in QSM.rs and
QSM-CI's ``qsm_eval.py``. Differences, all documented where they occur: the labels are this
package's simulator labels (:data:`DEFAULT_LABEL_MAP`), the dilated blood mask is kept inside
the evaluation mask, and moments are multiplied by the voxel volume when ``voxel_size`` is given.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion

from ._common import check_labels, check_pair
from .basic import linear_fit, nrmse, nrmse_detrended

__all__ = [
    "SIMULATOR_LABELS",
    "DEFAULT_LABEL_MAP",
    "challenge_metrics",
    "deep_grey_slope",
    "calcification_metrics",
]

#: Label values of ``chimap.sim`` segmentations.
SIMULATOR_LABELS = {
    1: "white matter",
    2: "cortical grey matter",
    3: "CSF",
    4: "caudate",
    5: "putamen",
    6: "globus pallidus",
    7: "thalamus",
    8: "red nucleus",
    9: "substantia nigra",
    10: "dentate nucleus",
    11: "veins",
    12: "calcification",
}

#: Role -> labels for :func:`challenge_metrics`, matching :data:`SIMULATOR_LABELS`.
#: ``deep_grey``: deep grey nuclei (4-10), one ROI per label for the slope; ``blood``: veins (11);
#: ``calcification``: 12; ``tissue``: None means every mask voxel that is neither blood nor
#: calcification (brain minus blood minus calcification); give a list to restrict it.
DEFAULT_LABEL_MAP = {
    "deep_grey": (4, 5, 6, 7, 8, 9, 10),
    "blood": (11,),
    "calcification": (12,),
    "tissue": None,
}

_CUBE = np.ones((3, 3, 3), dtype=bool)  # 1-voxel dilation/erosion element (challenge dilatemask)


def _resolve_label_map(label_map):
    roles = dict(DEFAULT_LABEL_MAP)
    if label_map is None:
        return roles
    unknown = set(label_map) - set(roles)
    if unknown:
        raise ValueError(
            f"unknown label role(s) {sorted(unknown)}; valid roles: {sorted(roles)}"
        )
    for role, labs in label_map.items():
        if labs is None:
            if role != "tissue":
                raise ValueError(f"label role {role!r} needs a list of labels, got None")
            roles[role] = None
        else:
            roles[role] = tuple(int(v) for v in np.atleast_1d(labs))
    return roles


def _nan_if_undefined(func, *args, **kwargs) -> float:
    try:
        return func(*args, **kwargs)
    except ValueError:  # region empty, too small or constant: the metric is undefined
        return float("nan")


def _voxel_volume(voxel_size) -> float:
    if voxel_size is None:
        return 1.0
    from ..geometry import check_voxel_size

    return float(np.prod(check_voxel_size(voxel_size, 3)))


def deep_grey_slope(estimate, reference, labels, mask=None, *, rois=DEFAULT_LABEL_MAP["deep_grey"]
                    ) -> float:
    """Slope of the ROI means of the estimate against those of the reference.

    For each label ``l`` in ``rois`` present in ``labels`` (within ``mask``), the mean of the
    estimate ``X_l`` and of the reference ``R_l`` over that ROI; the least-squares line
    ``X_l = a * R_l + b`` gives the slope ``a`` (challenge 2.0 ``compute_linearityDeepGM``; the
    challenge reports ``|1 - a|``). 1 for a perfect or offset estimate; ``s`` for
    ``estimate = s * reference``.

    Parameters
    ----------
    estimate, reference : array_like
        Susceptibility maps (ppm).
    labels : array_like of int
        Segmentation of the same shape.
    mask : array_like of bool, optional
        Default all voxels.
    rois : sequence of int
        Labels of the deep grey nuclei; default 4-10 (:data:`DEFAULT_LABEL_MAP`).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        Fewer than 2 ROIs present, or all ROI reference means equal.
    """
    x, r, m = check_pair(estimate, reference, mask)
    lab = check_labels(labels, x.shape)
    xs, rs = [], []
    for label in rois:
        sel = (lab == int(label)) & m
        if sel.any():
            xs.append(x[sel].mean())
            rs.append(r[sel].mean())
    if len(rs) < 2:
        raise ValueError(
            f"deep grey slope needs at least 2 ROIs present; found {len(rs)} of {list(rois)}"
        )
    return linear_fit(rs, xs)[0]


def _box(shape, lo, hi):
    """Boolean box ``lo[ax] <= index < hi[ax]``, bounds clipped to the array."""
    out = np.zeros(shape, dtype=bool)
    sl = tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, shape))
    out[sl] = True
    return out


def _segment_calcification(x, cube, outer, threshold_step, threshold_min):
    """Values of ``x`` in ``cube`` below the highest grid threshold that no voxel of ``outer``
    falls below (the challenge's thresholding); None when no threshold of the grid isolates it."""
    n_steps = int(np.floor(-threshold_min / threshold_step + 1e-9)) + 1
    grid = -threshold_step * np.arange(n_steps)
    x_out = x[outer]
    vmin = x_out.min() if x_out.size else np.inf
    ok = np.nonzero(grid <= vmin)[0]
    if ok.size == 0:
        return None
    inside = x[cube]
    return inside[inside < grid[ok[0]]]


def calcification_metrics(estimate, reference, labels, mask=None, *,
                          calcification=DEFAULT_LABEL_MAP["calcification"], voxel_size=None,
                          threshold_step: float = 0.01, threshold_min: float = -1.5,
                          reference_moment: str = "segment") -> dict:
    """Calcification moment and streaking of the QSM challenge 2.0.

    Following ``compute_calcification_metrics`` of the challenge (Marques et al. 2021), with
    ``C`` the bounding box of the calcification label grown by 3 voxels per side, ``R`` the box
    ``C`` grown by 4 more voxels, ``U`` the box ``R`` grown by 4 more (all clipped to the array):

    * threshold ``t``: the largest of ``0, -0.01, -0.02, ..., threshold_min`` ppm such that no
      estimate voxel in ``U \\ C`` lies below ``t``;
    * the estimate's calcification is ``S = {v in C : x_v < t}``; its moment is
      ``M_x = sum_{v in S} x_v * V`` (``|S| * mean``), ``V`` the voxel volume in mm^3
      (1, i.e. ppm * voxel, when ``voxel_size`` is None, which equals the challenge's value
      for its 1 mm data);
    * the reference moment ``M_r`` is, by default (``reference_moment="segment"``), the same
      thresholded sum applied to the reference, so that a perfect estimate scores a deviation
      of 0 also when the reference carries partial volume around the calcification (a ground
      truth averaged to the output grid). ``reference_moment="label"`` sums the reference over
      the labelled voxels instead, as QSM.rs and QSM-CI do. The moment deviation is
      ``|M_x - M_r|``;
    * streaking: in the rim ``R \\ C`` the line ``x = a r + b`` is fitted; the streaking level is
      ``std(x - (a r + b))`` (N - 1 normalisation, as MATLAB's ``std``) divided by
      ``|mean_{v in S} x_v|``. It measures the residual (non-susceptibility) variation around
      the calcification relative to its recovered strength. If the reference is constant in
      the rim, only the mean is removed.

    The challenge's calcification is diamagnetic; when the reference mean over the label is
    positive, both maps are negated first so that the same thresholds apply, and the moments
    are returned with the original sign.

    Parameters
    ----------
    estimate, reference : array_like
        3-D susceptibility maps (ppm).
    labels : array_like of int
        Segmentation of the same shape.
    mask : array_like of bool, optional
        Voxels considered part of the labelled calcification (default all); the boxes
        themselves ignore the mask, as in the challenge.
    calcification : sequence of int
        Labels of the calcification; default (12,).
    voxel_size : sequence of 3 float, optional
        mm; scales the moments to ppm * mm^3.
    threshold_step, threshold_min : float
        Threshold grid in ppm (challenge: 0.01 and -1.5).
    reference_moment : {"segment", "label"}
        How the reference moment is measured (see above).

    Returns
    -------
    dict
        ``calc_moment``, ``calc_moment_reference``, ``calc_moment_deviation``,
        ``calc_streaking``; NaN values where there is no calcification label or no threshold
        in the grid isolates the calcification.
    """
    x, r, m = check_pair(estimate, reference, mask, need_3d=True)
    lab = check_labels(labels, x.shape)
    nan = float("nan")
    out = dict(calc_moment=nan, calc_moment_reference=nan, calc_moment_deviation=nan,
               calc_streaking=nan)
    calc = np.isin(lab, np.asarray(calcification, dtype=np.int64)) & m
    if not calc.any():
        return out
    if reference_moment not in ("segment", "label"):
        raise ValueError(f"reference_moment must be 'segment' or 'label', got {reference_moment!r}")
    vol = _voxel_volume(voxel_size)
    sign = -1.0 if r[calc].mean() > 0 else 1.0
    x = sign * x
    r = sign * r
    out["calc_moment_reference"] = sign * float(r[calc].sum()) * vol

    idx = np.nonzero(calc)
    lo = np.array([i.min() for i in idx])
    hi = np.array([i.max() for i in idx]) + 1
    cube = _box(x.shape, lo - 3, hi + 3)
    rim = _box(x.shape, lo - 7, hi + 7) & ~cube
    outer = _box(x.shape, lo - 11, hi + 11) & ~cube

    seg = _segment_calcification(x, cube, outer, threshold_step, threshold_min)
    if seg is None:
        return out
    out["calc_moment"] = sign * float(seg.sum()) * vol
    if reference_moment == "segment":
        ref_seg = _segment_calcification(r, cube, outer, threshold_step, threshold_min)
        if ref_seg is None:
            return out
        out["calc_moment_reference"] = sign * float(ref_seg.sum()) * vol
    out["calc_moment_deviation"] = abs(out["calc_moment"] - out["calc_moment_reference"])
    if seg.size == 0 or np.count_nonzero(rim) < 3:
        return out
    xr, rr = x[rim], r[rim]
    if np.ptp(rr) > 0:
        a, b = linear_fit(rr, xr)
        res = xr - (a * rr + b)
    else:
        res = xr - xr.mean()
    level = abs(seg.mean())
    out["calc_streaking"] = float(np.std(res, ddof=1) / level) if level > 0 else nan
    return out


def challenge_metrics(estimate, reference, labels, mask=None, *, label_map=None, voxel_size=None,
                      morphology: bool = True) -> dict:
    """The QSM challenge 2.0 metrics (Bilgic et al. MRM 2021; Marques et al. MRM 2021).

    All NRMSEs are in percent and computed on maps demeaned within their region
    (see :func:`chimap.metrics.nrmse` and :func:`chimap.metrics.nrmse_detrended`):

    * ``nrmse_pct``: demeaned NRMSE in the whole mask, ``100 ||x0 - r0|| / ||r0||``;
    * ``nrmse_detrend_pct``: the same after removing a fitted slope and offset;
    * ``nrmse_detrend_tissue_pct``: detrended NRMSE in the tissue region (default: mask minus
      blood minus calcification), eroded by one voxel (3x3x3) when ``morphology``;
    * ``nrmse_detrend_blood_pct``: detrended NRMSE in the veins, dilated by one voxel (3x3x3)
      when ``morphology`` and kept inside the mask (the challenge does not re-mask);
    * ``nrmse_detrend_deep_grey_pct``: detrended NRMSE in the union of the deep grey nuclei,
      eroded by one voxel when ``morphology``;
    * ``deep_grey_slope`` (:func:`deep_grey_slope`, one ROI per deep grey label, not eroded) and
      ``deep_grey_slope_deviation = |1 - slope|`` (the challenge's score);
    * ``calc_moment``, ``calc_moment_reference``, ``calc_moment_deviation``, ``calc_streaking``
      (:func:`calcification_metrics`).

    A metric whose region is absent, too small or constant in the reference is NaN.

    Parameters
    ----------
    estimate, reference : array_like
        3-D susceptibility maps (ppm), shape (I, J, K).
    labels : array_like of int
        Segmentation of the same shape (values as :data:`SIMULATOR_LABELS` by default).
    mask : array_like of bool, optional
        Evaluation (brain) mask; default ``labels > 0``.
    label_map : dict, optional
        Role -> list of labels overriding :data:`DEFAULT_LABEL_MAP` (roles ``deep_grey``,
        ``blood``, ``calcification``, ``tissue``).
    voxel_size : sequence of 3 float, optional
        mm; moments are in ppm * mm^3 when given, else ppm * voxel.
    morphology : bool, default True
        Apply the challenge's one-voxel erosion (tissue, deep grey) and dilation (blood).

    Returns
    -------
    dict of str -> float
    """
    lab_arr = np.asarray(labels)
    if mask is None:
        x, r, m = check_pair(estimate, reference, None, need_3d=True)
        lab = check_labels(lab_arr, x.shape)
        m = lab > 0
        if not m.any():
            raise ValueError("labels are all zero: no brain voxel to evaluate (give a mask)")
    else:
        x, r, m = check_pair(estimate, reference, mask, need_3d=True)
        lab = check_labels(lab_arr, x.shape)
    roles = _resolve_label_map(label_map)
    blood_l = np.isin(lab, np.asarray(roles["blood"], dtype=np.int64)) & m
    calc_l = np.isin(lab, np.asarray(roles["calcification"], dtype=np.int64)) & m
    dgm = np.isin(lab, np.asarray(roles["deep_grey"], dtype=np.int64)) & m
    if roles["tissue"] is None:
        tissue = m & ~blood_l & ~calc_l
    else:
        tissue = np.isin(lab, np.asarray(roles["tissue"], dtype=np.int64)) & m
    blood = blood_l
    if morphology:
        tissue = binary_erosion(tissue, _CUBE)
        dgm = binary_erosion(dgm, _CUBE)
        blood = binary_dilation(blood_l, _CUBE) & m

    def region_nrmse(region):
        if np.count_nonzero(region) < 3:
            return float("nan")
        return _nan_if_undefined(nrmse_detrended, x, r, region, percent=True)

    out = {
        "nrmse_pct": _nan_if_undefined(nrmse, x, r, m, demean=True, percent=True),
        "nrmse_detrend_pct": region_nrmse(m),
        "nrmse_detrend_tissue_pct": region_nrmse(tissue),
        "nrmse_detrend_blood_pct": region_nrmse(blood),
        "nrmse_detrend_deep_grey_pct": region_nrmse(dgm),
    }
    slope = _nan_if_undefined(deep_grey_slope, x, r, lab, m, rois=roles["deep_grey"])
    out["deep_grey_slope"] = slope
    out["deep_grey_slope_deviation"] = abs(1.0 - slope)
    out.update(calcification_metrics(x, r, lab, m, calcification=roles["calcification"],
                                     voxel_size=voxel_size))
    return out
