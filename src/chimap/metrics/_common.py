"""Input validation shared by the metric functions (private)."""

from __future__ import annotations

import numpy as np

__all__ = ["check_pair", "check_labels", "masked_values", "to_percent"]


def _as_float64(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} is not array-like: {exc}") from None
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def check_pair(estimate, reference, mask=None, *, min_ndim: int = 1, need_3d: bool = False):
    """Validate an (estimate, reference[, mask]) triple and return float64 copies.

    Returns
    -------
    estimate, reference : numpy.ndarray, float64
        Values outside ``mask`` that are not finite are replaced by 0 (they never enter a
        metric). They may share memory with the inputs; never modify them in place.
    mask : numpy.ndarray of bool
        All ``True`` where ``mask`` is None.

    Raises
    ------
    ValueError
        Shapes differ, the mask is empty, or an array holds NaN/inf inside the mask.
    """
    est = _as_float64(estimate, "estimate")
    ref = _as_float64(reference, "reference")
    if est.shape != ref.shape:
        raise ValueError(
            f"estimate and reference must have the same shape, got {est.shape} and {ref.shape}"
        )
    if est.ndim < min_ndim:
        raise ValueError(f"arrays need at least {min_ndim} dimension(s), got shape {est.shape}")
    if need_3d and est.ndim != 3:
        raise ValueError(f"this metric takes 3-D arrays (I, J, K), got shape {est.shape}")
    if est.size == 0:
        raise ValueError("estimate and reference are empty")
    if mask is None:
        m = np.ones(est.shape, dtype=bool)
    else:
        m = np.asarray(mask)
        if m.shape != est.shape:
            raise ValueError(f"mask shape {m.shape} does not match the image shape {est.shape}")
        if m.dtype != bool:
            if not np.all(np.isfinite(m)):
                raise ValueError("mask contains NaN or inf")
            m = m != 0
    if not m.any():
        raise ValueError("mask is empty: no voxel to evaluate")
    for name, arr in (("estimate", est), ("reference", ref)):
        finite = np.isfinite(arr)
        bad = int(np.count_nonzero(~finite & m))
        if bad:
            raise ValueError(f"{name} contains {bad} NaN or inf value(s) inside the mask")
    # Replace non-finite values outside the mask by 0 so that filters stay finite. The returned
    # arrays may share memory with the inputs: callers never modify them in place.
    if not np.all(np.isfinite(est)):
        est = np.where(np.isfinite(est), est, 0.0)
    if not np.all(np.isfinite(ref)):
        ref = np.where(np.isfinite(ref), ref, 0.0)
    return est, ref, m


def check_labels(labels, shape) -> np.ndarray:
    """Validate an integer label image of the given shape and return it as int64."""
    lab = np.asarray(labels)
    if lab.shape != tuple(shape):
        raise ValueError(f"labels shape {lab.shape} does not match the image shape {tuple(shape)}")
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)):
            raise ValueError("labels contain NaN or inf")
        rounded = np.rint(lab)
        if np.any(np.abs(lab - rounded) > 1e-3):
            raise ValueError("labels must hold integer values (a segmentation), got fractions")
        lab = rounded
    elif not np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool:
        raise ValueError(f"labels must be an integer image, got dtype {lab.dtype}")
    return lab.astype(np.int64)


def masked_values(estimate, reference, mask):
    """Validate and return the 1-D float64 values of both images inside the mask."""
    est, ref, m = check_pair(estimate, reference, mask)
    return est[m], ref[m]


def to_percent(value: float, percent: bool) -> float:
    return float(value) * 100.0 if percent else float(value)
