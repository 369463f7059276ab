"""Binary morphology in millimetres on anisotropic voxels, components, hole filling, Dice.

Radii are in mm and the structuring element is the ellipsoid of voxel *centres* within the
radius: the offset ``(a, b, c)`` (in voxels) belongs to it when
``(a*vs0)**2 + (b*vs1)**2 + (c*vs2)**2 <= radius_mm**2`` (a relative tolerance of 1e-9 keeps
exact ties inside). Along axis ``k`` an erosion therefore removes ``floor(radius_mm / vs_k)``
voxels: 2 mm on 1.5 mm voxels removes one, on 1 mm voxels two, and 1 mm on 3 mm slices none.
Outside the array counts as outside the mask (as ``scipy.ndimage.binary_erosion`` with its
default ``border_value=0``): a mask that touches the edge of the field of view is eroded from
there too.

Erosion and dilation are exact for this structuring element. Small radii use separable
min-plus passes of the squared distance (a few shifted copies per axis); large radii use
``scipy.ndimage.distance_transform_edt``; both give the same result.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._checks import as_mask, check_radius, check_voxel_size

__all__ = ["ball", "dice", "dilate_mm", "erode_mm", "fill_holes", "largest_component", "open_mm"]

_TIE = 1e-9          # relative tolerance on r**2: offsets exactly at the radius are inside
_MAX_SHIFTS = 36     # above this many shifted copies the EDT is cheaper


def ball(radius_mm, voxel_size) -> np.ndarray:
    """The structuring element: voxel offsets whose centres lie within ``radius_mm``.

    Parameters
    ----------
    radius_mm : float
    voxel_size : float or sequence of 3 float
        mm.

    Returns
    -------
    numpy.ndarray of bool, shape (2*n0+1, 2*n1+1, 2*n2+1) with ``n_k = floor(radius_mm / vs_k)``.
    """
    r = check_radius(radius_mm)
    vs = check_voxel_size(voxel_size)
    n = _half_widths(r, vs)
    g = np.meshgrid(*[np.arange(-k, k + 1) * v for k, v in zip(n, vs)], indexing="ij")
    return (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) <= r * r * (1 + _TIE)


def _half_widths(r, vs):
    return [int(np.floor(r / v * (1 + _TIE))) for v in vs]


def _within(source, vs, r, *, outside_is_source):
    """Voxels whose centre lies within ``r`` mm of a centre in ``source`` (itself included).

    ``outside_is_source``: positions beyond the array edge belong to ``source`` (erosion of
    the complement) or not (dilation).
    """
    r2 = r * r * (1 + _TIE)
    widths = _half_widths(r, vs)
    n_shifts = 2 * sum(min(w, s) for w, s in zip(widths, source.shape))
    if n_shifts == 0:
        return source.copy()
    if n_shifts > _MAX_SHIFTS:
        src = source
        if outside_is_source:
            pad = [(min(w, s), min(w, s)) for w, s in zip(widths, source.shape)]
            src = np.pad(source, pad, constant_values=True)
        if not src.any():
            return np.zeros(source.shape, bool)
        d = ndimage.distance_transform_edt(~src, sampling=vs)
        if outside_is_source:
            d = d[tuple(slice(p[0], p[0] + s) for p, s in zip(pad, source.shape))]
        return d * d <= r2
    # separable min-plus passes of the squared distance, capped just above r**2
    big = np.float32(2.0 * r2 + 1.0)
    dist = np.where(source, np.float32(0.0), big)
    for ax, (w, v) in enumerate(zip(widths, vs)):
        if w == 0:
            continue
        n_ax = dist.shape[ax]
        out = dist.copy()
        for k in range(1, w + 1):
            cost = np.float32((k * v) ** 2)
            if k < n_ax:
                lo = [slice(None)] * 3
                hi = [slice(None)] * 3
                lo[ax] = slice(None, n_ax - k)
                hi[ax] = slice(k, None)
                lo, hi = tuple(lo), tuple(hi)
                np.minimum(out[hi], dist[lo] + cost, out=out[hi])
                np.minimum(out[lo], dist[hi] + cost, out=out[lo])
            if outside_is_source:
                first = [slice(None)] * 3
                last = [slice(None)] * 3
                first[ax] = slice(0, min(k, n_ax))
                last[ax] = slice(max(n_ax - k, 0), None)
                np.minimum(out[tuple(first)], cost, out=out[tuple(first)])
                np.minimum(out[tuple(last)], cost, out=out[tuple(last)])
        dist = out
    return dist <= np.float32(r2)


def erode_mm(mask, voxel_size, *, radius_mm):
    """Erode a mask by a ball of ``radius_mm`` (mm) on (anisotropic) voxels.

    A voxel stays when no voxel outside the mask (or outside the array) has its centre within
    ``radius_mm`` of this voxel's centre; see the module docstring for the exact convention.

    Parameters
    ----------
    mask : array_like, shape (I, J, K)
        Boolean or 0/1 mask (not modified).
    voxel_size : float or sequence of 3 float
        mm.
    radius_mm : float
        Erosion radius in mm (>= 0; 0 returns a copy).

    Returns
    -------
    numpy.ndarray of bool
    """
    m = as_mask(mask)
    vs = check_voxel_size(voxel_size)
    r = check_radius(radius_mm)
    if r == 0 or not m.any():
        return m
    return m & ~_within(~m, vs, r, outside_is_source=True)


def dilate_mm(mask, voxel_size, *, radius_mm):
    """Dilate a mask by a ball of ``radius_mm`` (mm) on (anisotropic) voxels.

    Adds every voxel whose centre lies within ``radius_mm`` of a mask voxel's centre.

    Parameters
    ----------
    mask : array_like, shape (I, J, K)
    voxel_size : float or sequence of 3 float
        mm.
    radius_mm : float
        Dilation radius in mm (>= 0).

    Returns
    -------
    numpy.ndarray of bool
    """
    m = as_mask(mask)
    vs = check_voxel_size(voxel_size)
    r = check_radius(radius_mm)
    if r == 0 or not m.any():
        return m
    return _within(m, vs, r, outside_is_source=False)


def open_mm(mask, voxel_size, *, radius_mm, keep_largest: bool = False):
    """Morphological opening in mm: erosion, optionally the largest component, then dilation.

    The result is limited to the input mask, so the opening only removes voxels (thin bridges,
    protrusions and islands narrower than about ``2 * radius_mm``).

    Parameters
    ----------
    mask : array_like, shape (I, J, K)
    voxel_size : float or sequence of 3 float
        mm.
    radius_mm : float
        mm.
    keep_largest : bool
        Keep only the largest component of the eroded mask before dilating it back (detaches
        e.g. the scalp from the brain through the dark skull).

    Returns
    -------
    numpy.ndarray of bool
    """
    m = as_mask(mask)
    core = erode_mm(m, voxel_size, radius_mm=radius_mm)
    if keep_largest:
        core = largest_component(core)
    return dilate_mm(core, voxel_size, radius_mm=radius_mm) & m


def largest_component(mask, *, connectivity: int = 1):
    """Keep the largest connected component of a mask.

    Parameters
    ----------
    mask : array_like, shape (I, J, K)
    connectivity : {1, 2, 3}
        Neighbourhood: 1 = faces (6-connected), 2 = faces and edges (18), 3 = all 26.

    Returns
    -------
    numpy.ndarray of bool
        The largest component (the one with the lowest label among equally large ones, so the
        result is deterministic); an empty mask stays empty.
    """
    m = as_mask(mask)
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, n = ndimage.label(m, structure=structure)
    if n <= 1:
        return m
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask, *, mode: str = "both", axes=(0, 1, 2)):
    """Fill holes: background regions not connected to the edge of the array.

    Parameters
    ----------
    mask : array_like, shape (I, J, K)
    mode : {"both", "3d", "slices"}
        ``"3d"`` fills cavities enclosed in 3-D (6-connected background); ``"slices"`` fills,
        in every 2-D slice perpendicular to each axis of ``axes``, the holes enclosed within
        that slice (a hole open in 3-D through one channel is still closed in most slices);
        ``"both"`` does the 3-D pass, then the slice passes, then a final 3-D pass.
    axes : sequence of int
        Slice normals for the slice-wise passes.

    Returns
    -------
    numpy.ndarray of bool
    """
    m = as_mask(mask)
    if mode not in ("both", "3d", "slices"):
        raise ValueError(f"mode must be 'both', '3d' or 'slices', got {mode!r}")
    axes = tuple(axes)
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"axes must be among 0, 1, 2, got {axes}")
    if not m.any():
        return m
    if mode in ("both", "3d"):
        m = _fill_3d(m)
    if mode in ("both", "slices"):
        for ax in axes:
            m = _fill_slices(m, ax)
        if mode == "both":
            m = _fill_3d(m)
    return m


def _fill_labelled(m, structure, border_axes):
    """Fill the background components of ``m`` that touch no array face normal to ``border_axes``."""
    labels, n = ndimage.label(~m, structure=structure)
    if n == 0:
        return m
    outside = np.zeros(n + 1, bool)
    for ax in border_axes:
        for idx in (0, -1):
            face = labels[tuple(idx if a == ax else slice(None) for a in range(3))]
            outside[np.unique(face)] = True
    outside[0] = True   # label 0 = mask voxels
    return m | ~outside[labels]


def _fill_3d(m):
    return _fill_labelled(m, ndimage.generate_binary_structure(3, 1), (0, 1, 2))


def _fill_slices(m, ax):
    """Fill the 2-D holes of every slice perpendicular to ``ax`` (one labelling pass)."""
    structure = ndimage.generate_binary_structure(3, 1)
    for off in (0, 2):
        structure[tuple(off if a == ax else 1 for a in range(3))] = False   # no link across slices
    return _fill_labelled(m, structure, tuple(a for a in range(3) if a != ax))


def dice(a, b) -> float:
    """Dice similarity coefficient ``2 |A & B| / (|A| + |B|)`` of two masks.

    Parameters
    ----------
    a, b : array_like
        Masks of the same shape (any number of dimensions; nonzero = inside).

    Returns
    -------
    float
        In [0, 1]; 1.0 when both masks are empty (they are identical).
    """
    x = np.asarray(a)
    y = np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"masks must have the same shape, got {x.shape} and {y.shape}")
    for arr, name in ((x, "a"), (y, "b")):
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(f"mask {name} contains NaN or inf")
    x = x.astype(bool)
    y = y.astype(bool)
    total = int(np.count_nonzero(x)) + int(np.count_nonzero(y))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(x & y)) / total
