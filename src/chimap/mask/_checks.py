"""Input validation shared by the masking functions (private)."""

from __future__ import annotations

import numpy as np

from ..geometry import check_voxel_size

__all__ = ["as_image", "as_mask", "check_radius", "check_voxel_size"]


def as_mask(mask, name: str = "mask", *, shape=None, allow_empty: bool = True) -> np.ndarray:
    """Validate a 3-D mask and return it as a new bool array (nonzero = inside).

    Raises
    ------
    ValueError
        Not 3-D, wrong shape, complex, non-numeric, NaN/inf values, or empty when
        ``allow_empty`` is False.
    """
    try:
        m = np.asarray(mask)
    except (TypeError, ValueError) as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} is not array-like: {exc}") from None
    if m.dtype != bool and (np.issubdtype(m.dtype, np.complexfloating) or not np.issubdtype(m.dtype, np.number)):
        raise ValueError(f"{name} must be a boolean or numeric 0/1 array, got dtype {m.dtype}")
    if m.ndim != 3:
        raise ValueError(f"{name} must be 3-D (I, J, K), got shape {m.shape}")
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"{name} shape {m.shape} does not match the image shape {tuple(shape)}")
    if m.dtype != bool:
        if np.issubdtype(m.dtype, np.floating) and not np.all(np.isfinite(m)):
            raise ValueError(f"{name} contains NaN or inf")
        m = m != 0
    else:
        m = m.copy()
    if not allow_empty and not m.any():
        raise ValueError(f"{name} is empty (no voxel inside)")
    return m


def as_image(x, name: str, *, ndims=(3,), allow_nonfinite: bool = False, nonnegative: bool = False):
    """Validate a real image (not modified, possibly not copied).

    Raises
    ------
    ValueError
        Complex, boolean or non-numeric dtype, wrong number of dimensions, an empty array,
        NaN/inf values (unless allowed) or negative values (when ``nonnegative``).
    """
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} is not array-like: {exc}") from None
    if np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real; for complex data pass np.abs(...) (magnitude) or np.angle(...)")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be a real-valued numeric array, got dtype {a.dtype}")
    if a.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want} ((I, J, K) or (I, J, K, E)), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not allow_nonfinite and np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        n_bad = int(np.count_nonzero(~np.isfinite(a)))
        raise ValueError(f"{name} contains {n_bad} NaN or infinite value(s); replace them (e.g. with 0) first")
    if nonnegative and a.min() < 0:
        raise ValueError(f"{name} must be non-negative (a magnitude image), but its minimum is {a.min()}; "
                         "did you pass phase or a real part?")
    return a


def check_radius(radius_mm, name: str = "radius_mm") -> float:
    """A non-negative finite radius in mm."""
    try:
        r = float(radius_mm)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (mm), got {radius_mm!r}") from None
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"{name} must be finite and >= 0 (mm), got {radius_mm!r}")
    return r
