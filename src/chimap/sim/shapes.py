"""Geometric primitives rasterised on axis-aligned grids in head space (mm).

A :class:`Grid` places voxel centres at ``origin + index * spacing`` (mm, per array axis).
Every shape rasterises only inside its bounding box, so painting many small structures on a
large (fine) grid stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Grid", "Ellipsoid", "EllipsoidShell", "Tube", "rotation_matrix"]


@dataclass(frozen=True)
class Grid:
    """Axis-aligned voxel grid in head space.

    Attributes
    ----------
    shape : tuple of 3 int
    spacing : tuple of 3 float
        Voxel sizes in mm.
    origin : tuple of 3 float
        Head-space position (mm) of the centre of voxel (0, 0, 0).
    """

    shape: tuple
    spacing: tuple
    origin: tuple

    def axis_coords(self, ax: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.shape[ax] if stop is None else stop
        return self.origin[ax] + np.arange(start, stop, dtype=np.float64) * self.spacing[ax]

    def bbox(self, lo, hi):
        """Slices of the voxels whose centres fall in the box ``[lo, hi]`` (mm); None if empty."""
        out = []
        for ax in range(3):
            i0 = int(np.ceil((lo[ax] - self.origin[ax]) / self.spacing[ax]))
            i1 = int(np.floor((hi[ax] - self.origin[ax]) / self.spacing[ax])) + 1
            i0, i1 = max(i0, 0), min(i1, self.shape[ax])
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def coords(self, slices):
        """Broadcastable coordinate arrays (mm) of the voxels in ``slices``."""
        c = []
        for ax, sl in enumerate(slices):
            v = self.axis_coords(ax, sl.start, sl.stop)
            view = [1, 1, 1]
            view[ax] = v.size
            c.append(v.reshape(view))
        return c

    def refined(self, factor) -> "Grid":
        """The grid with each voxel split into ``factor`` sub-voxels per axis (same extent)."""
        f = np.broadcast_to(np.asarray(factor, dtype=int), (3,))
        spacing = tuple(s / fi for s, fi in zip(self.spacing, f))
        origin = tuple(o - s / 2 + sf / 2 for o, s, sf in zip(self.origin, self.spacing, spacing))
        shape = tuple(int(n * fi) for n, fi in zip(self.shape, f))
        return Grid(shape, spacing, origin)


def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation about the first, second and third axis (degrees), applied in that order."""
    a, b, c = np.radians(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Ellipsoid:
    """Solid ellipsoid: centre (mm), semi-axes (mm) and orientation (3x3 rotation, columns = axes)."""

    center: tuple
    radii: tuple
    rotation: np.ndarray | None = None

    def _normalised_r2(self, grid: Grid):
        r = max(self.radii)
        c = np.asarray(self.center, dtype=np.float64)
        sl = grid.bbox(c - r, c + r)
        if sl is None:
            return None, None
        x, y, z = (g - ci for g, ci in zip(grid.coords(sl), c))
        rot = np.eye(3) if self.rotation is None else np.asarray(self.rotation)
        r2 = 0.0
        for ax in range(3):
            u = rot[0, ax] * x + rot[1, ax] * y + rot[2, ax] * z  # coordinate along semi-axis ax
            r2 = r2 + (u / self.radii[ax]) ** 2
        return sl, r2

    def rasterize(self, grid: Grid):
        """Return ``(slices, mask)`` of the voxels inside, or ``(None, None)``."""
        sl, r2 = self._normalised_r2(grid)
        if sl is None:
            return None, None
        return sl, r2 <= 1.0


@dataclass(frozen=True)
class EllipsoidShell:
    """Ellipsoid minus a concentric copy scaled by ``inner_fraction`` (e.g. a folded nucleus)."""

    center: tuple
    radii: tuple
    inner_fraction: float = 0.5
    rotation: np.ndarray | None = None

    def rasterize(self, grid: Grid):
        sl, r2 = Ellipsoid(self.center, self.radii, self.rotation)._normalised_r2(grid)
        if sl is None:
            return None, None
        return sl, (r2 <= 1.0) & (r2 > self.inner_fraction**2)


@dataclass(frozen=True)
class Tube:
    """Union of capsules along a polyline with linearly varying radius (vessels, curved nuclei).

    Attributes
    ----------
    points : sequence of (x, y, z)
        Polyline vertices in mm.
    radii : float or sequence of float
        Radius (mm) at each vertex.
    """

    points: tuple
    radii: tuple

    def rasterize(self, grid: Grid):
        p = np.asarray(self.points, dtype=np.float64)
        r = np.broadcast_to(np.asarray(self.radii, dtype=np.float64), (len(p),))
        lo = (p - r[:, None]).min(axis=0)
        hi = (p + r[:, None]).max(axis=0)
        sl = grid.bbox(lo, hi)
        if sl is None:
            return None, None
        x, y, z = grid.coords(sl)
        inside = np.zeros(tuple(s.stop - s.start for s in sl), dtype=bool)
        for a, b, ra, rb in zip(p[:-1], p[1:], r[:-1], r[1:]):
            seg = b - a
            length2 = float(seg @ seg) or 1e-12
            t = ((x - a[0]) * seg[0] + (y - a[1]) * seg[1] + (z - a[2]) * seg[2]) / length2
            t = np.clip(t, 0.0, 1.0)
            d2 = (x - a[0] - t * seg[0]) ** 2 + (y - a[1] - t * seg[1]) ** 2 + (z - a[2] - t * seg[2]) ** 2
            inside |= d2 <= (ra + t * (rb - ra)) ** 2
        return sl, inside

