"""Voxel geometry: voxel sizes, B0 direction in voxel axes, obliquity, affines.

Algorithms never see an affine: they take ``voxel_size`` (mm, one per array axis) and
``b0_direction`` (unit vector in voxel axes). This module derives both from a NIfTI affine.

Convention (design.md section 3): B0 is world +z of the scanner-space affine ``A``. With
``R = A[:3, :3] / voxel_sizes`` (columns divided by their lengths),
``b0_direction = normalize(R.T @ (0, 0, 1))``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "voxel_sizes",
    "rotation_part",
    "b0_direction_from_affine",
    "obliquity_deg",
    "affine_with_b0_direction",
    "b0_direction_from_tilt",
    "rotation_from_to",
    "check_voxel_size",
    "check_b0_direction",
    "parse_phase_encoding",
]


def check_voxel_size(voxel_size, ndim: int = 3) -> np.ndarray:
    """Validate voxel sizes in mm and return a float64 array of shape (ndim,).

    A scalar is broadcast to all axes. Raises ``ValueError`` for non-positive, non-finite or
    implausible values (metres or micrometres).
    """
    vs = np.asarray(voxel_size, dtype=np.float64).ravel()
    if vs.size == 1:
        vs = np.repeat(vs, ndim)
    if vs.size != ndim:
        raise ValueError(f"voxel_size needs {ndim} values (mm), got {vs.size}: {vs.tolist()}")
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise ValueError(f"voxel sizes must be positive and finite (mm), got {vs.tolist()}")
    if np.any(vs < 0.01) or np.any(vs > 50):
        raise ValueError(
            f"voxel sizes {vs.tolist()} are implausible: chimap takes voxel sizes in millimetres"
        )
    return vs


def check_b0_direction(b0_direction) -> np.ndarray:
    """Validate a B0 direction (3 components, voxel axes) and return it normalised (float64)."""
    b = np.asarray(b0_direction, dtype=np.float64).ravel()
    if b.size != 3 or not np.all(np.isfinite(b)):
        raise ValueError(f"b0_direction needs 3 finite components, got {b.tolist()}")
    n = np.linalg.norm(b)
    if n < 1e-8:
        raise ValueError("b0_direction must not be the zero vector")
    if abs(n - 1.0) <= 4 * np.finfo(np.float64).eps:
        return b.copy()  # already a unit vector: dividing again can move it by an ulp (not idempotent)
    return b / n


def voxel_sizes(affine) -> np.ndarray:
    """Voxel sizes in mm: the lengths of the first three columns of ``affine[:3, :3]``."""
    a = np.asarray(affine, dtype=np.float64)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def rotation_part(affine) -> np.ndarray:
    """The direction-cosine matrix ``R = A[:3, :3] / voxel_sizes`` (may include a reflection)."""
    a = np.asarray(affine, dtype=np.float64)
    vs = voxel_sizes(a)
    if np.any(vs <= 0):
        raise ValueError("affine has a zero-length voxel axis")
    return a[:3, :3] / vs


def b0_direction_from_affine(affine) -> np.ndarray:
    """Unit B0 direction in voxel axes, for B0 along world +z.

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        Voxel-to-world (scanner RAS+ mm) affine.

    Returns
    -------
    numpy.ndarray, shape (3,)
        ``normalize(R.T @ (0, 0, 1))``; (0, 0, 1) for an axial, unrotated acquisition.
    """
    r = rotation_part(affine)
    b = r.T @ np.array([0.0, 0.0, 1.0])
    return b / np.linalg.norm(b)


def obliquity_deg(affine) -> float:
    """Angle in degrees between B0 and the closest voxel axis (0 for a straight acquisition)."""
    b = b0_direction_from_affine(affine)
    return float(np.degrees(np.arccos(np.clip(np.max(np.abs(b)), -1.0, 1.0))))


def rotation_from_to(a, b) -> np.ndarray:
    """Proper rotation matrix (3x3) that maps unit vector ``a`` onto unit vector ``b`` (Rodrigues)."""
    a = check_b0_direction(a)
    b = check_b0_direction(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1 + 1e-12:  # opposite: rotate by pi about any axis orthogonal to a
        axis = np.eye(3)[np.argmin(np.abs(a))]
        axis = np.cross(a, axis)
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def b0_direction_from_tilt(tilt_deg: float) -> np.ndarray:
    """B0 in voxel axes for a head pitched by ``tilt_deg`` degrees about voxel axis I.

    ``(0, sin t, cos t)``: 0 degrees is B0 along axis K.
    """
    t = np.radians(float(tilt_deg))
    return np.array([0.0, np.sin(t), np.cos(t)])


def affine_with_b0_direction(voxel_size, b0_direction, *, shape=None, center_world=(0.0, 0.0, 0.0)):
    """An affine whose voxel axes see B0 (world +z) along ``b0_direction``.

    The rotation is the smallest one that tilts voxel axis K away from world z, so the affine of
    an axial acquisition with ``b0_direction = (0, 0, 1)`` is diagonal.

    Parameters
    ----------
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    b0_direction : array_like, shape (3,)
        Desired B0 direction in voxel axes.
    shape : tuple of int, optional
        Array shape; when given, the volume centre is placed at ``center_world``.
    center_world : array_like, shape (3,)
        World position (mm) of the volume centre.

    Returns
    -------
    numpy.ndarray, shape (4, 4)
    """
    vs = check_voxel_size(voxel_size)
    b = check_b0_direction(b0_direction)
    # R.T @ z = b  <=>  R @ b = z: rotate b onto z.
    r = rotation_from_to(b, (0.0, 0.0, 1.0))
    a = np.eye(4)
    a[:3, :3] = r * vs
    if shape is not None:
        centre_vox = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
        a[:3, 3] = np.asarray(center_world, dtype=np.float64) - a[:3, :3] @ centre_vox
    return a


def parse_phase_encoding(direction):
    """``(axis, polarity)`` from a BIDS ``PhaseEncodingDirection`` (``"i"``, ``"j-"``, ...) or an int axis.

    Raises
    ------
    ValueError
        For anything else, with the accepted forms.
    """
    if isinstance(direction, (int, np.integer)) and not isinstance(direction, bool):
        if int(direction) not in (0, 1, 2):
            raise ValueError(f"phase-encoding axis must be 0, 1 or 2, got {direction}")
        return int(direction), 1
    text = str(direction).strip().lower()
    axes = {"i": 0, "j": 1, "k": 2, "x": 0, "y": 1, "z": 2}
    if text[:1] in axes and text[1:] in ("", "-", "+"):
        return axes[text[0]], (-1 if text.endswith("-") else 1)
    raise ValueError(f"phase-encoding direction must be one of i, j, k, i-, j-, k- (BIDS), got {direction!r}")
