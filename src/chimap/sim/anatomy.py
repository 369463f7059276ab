"""Anatomy of the built-in head: brain from the MNI152 2009 templates, the rest from shapes.

The cortex, white matter, CSF and the brain outline come from the MNI152 ICBM 2009a symmetric
grey/white-matter probability maps and brain mask that nilearn ships inside its package (no
download). Deep-grey nuclei, veins, a calcification, skull, scalp, face, neck, eyes and air
cavities (frontal, sphenoid and maxillary sinuses, nasal cavity, mastoid air cells) are analytic
shapes placed at typical MNI coordinates (mm, x = right, y = anterior, z = superior), so the head
is a continuous function of position and can be rendered on any grid: on a fine grid for the
physics and on the output grid for labels and masks.

A :class:`HeadAnatomy` can be varied per subject (``scale`` stretches the head,
``rng`` jitters nucleus positions and sizes), so simulated cohorts do not share one anatomy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .shapes import Ellipsoid, EllipsoidShell, Grid, Tube, rotation_matrix
from .tissues import LABELS

__all__ = ["HeadAnatomy", "load_mni_maps", "sample_separable", "HEAD_EXTENT_MM"]

#: Head-space box (mm) covered by the default field of view: (lo, hi) per axis.
HEAD_EXTENT_MM = ((-96.0, 96.0), (-128.0, 100.0), (-100.0, 104.0))

#: Distance (mm) outside the brain where each shell ends.
CSF_SHELL_MM = 2.5
SKULL_SHELL_MM = 9.0
SCALP_SHELL_MM = 15.0
#: Minimum bone (mm) kept between air cavities and the CSF around the brain.
CAVITY_BONE_MM = 2.0

_MNI_PAD_MM = 48  # padding around the MNI box so distances cover the whole head

#: Brain stem and spinal cord continued below the template's lower edge (MNI mm).
_BRAIN_STEM = Tube(((0.0, -36.0, -60.0), (0.0, -40.0, -90.0), (0.0, -42.0, -130.0)), (11.0, 9.0, 8.0))


@dataclass(frozen=True)
class MniMaps:
    """MNI maps on a padded 1 mm lattice: brain probability, GM, WM, distance outside the brain."""

    origin: tuple
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    dist_outside: np.ndarray


@functools.lru_cache(maxsize=1)
def load_mni_maps() -> MniMaps:
    """Load nilearn's bundled MNI152 2009a maps (1 mm) and derive the distance outside the brain.

    Raises
    ------
    ImportError
        If nilearn is not installed (``pip install "chimap[sim]"``).
    """
    try:
        from nilearn import datasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the built-in head needs nilearn's bundled MNI152 templates: pip install 'chimap[sim]'"
        ) from exc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask_img = datasets.load_mni152_brain_mask(resolution=1)
        gm_img = datasets.load_mni152_gm_template(resolution=1)
        wm_img = datasets.load_mni152_wm_template(resolution=1)
    aff = mask_img.affine
    if not np.allclose(np.abs(np.diag(aff)[:3]), 1.0) or not np.allclose(aff[:3, :3], np.diag(np.diag(aff)[:3])):
        raise RuntimeError("unexpected MNI template affine; expected 1 mm RAS diagonal")
    pad = _MNI_PAD_MM

    def padded(img):
        return np.pad(np.asarray(img.get_fdata(), dtype=np.float32), pad)

    brain = padded(mask_img)
    gm = padded(gm_img)
    wm = padded(wm_img)
    origin = tuple(float(o) - pad for o in aff[:3, 3])
    inside = brain > 0.5
    # Extend the brain stem below the template's lower edge so shells wrap a continuous neck.
    lattice = Grid(brain.shape, (1.0, 1.0, 1.0), origin)
    sl, m = _BRAIN_STEM.rasterize(lattice)
    inside[sl] |= m
    dist = ndimage.distance_transform_edt(~inside).astype(np.float32)
    return MniMaps(origin, brain, gm, wm, dist)


def sample_separable(volume, origin, spacing, grid: Grid, *, fill=0.0, out_dtype=np.float32):
    """Trilinear interpolation of a lattice volume at the voxel centres of an axis-aligned grid.

    Interpolates one axis at a time (three 1-D passes), which is exact trilinear interpolation for
    axis-aligned grids and far cheaper than ``map_coordinates`` on large targets.

    Parameters
    ----------
    volume : numpy.ndarray, shape (n0, n1, n2)
    origin, spacing : sequence of 3 float
        Lattice position (mm) of ``volume[0, 0, 0]`` and its spacing (mm).
    grid : Grid
        Target grid.
    fill : float or None
        Value outside the lattice; None clamps to the nearest edge value.
    """
    out = np.asarray(volume, dtype=out_dtype)
    for ax in range(3):
        pos = (grid.axis_coords(ax) - origin[ax]) / spacing[ax]
        n = out.shape[ax]
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
        w = np.clip(pos - i0, 0.0, 1.0).astype(out_dtype)
        view = [1, 1, 1]
        view[ax] = w.size
        a = np.take(out, i0, axis=ax)
        b = np.take(out, i0 + 1, axis=ax)
        b -= a
        b *= w.reshape(view)
        a += b
        del b
        if fill is not None:
            outside = ((pos < 0) | (pos > n - 1)).reshape(view)
            a = np.where(outside, out_dtype(fill), a)
        out = a
    return out


def _mirror(x, y, z):
    return [(x, y, z), (-x, y, z)]


@dataclass
class HeadAnatomy:
    """A continuous head model that renders labels and tissue fractions on any axis-aligned grid.

    Parameters
    ----------
    scale : sequence of 3 float
        Stretch of head space relative to MNI (1 = MNI size).
    rng : numpy.random.Generator, int or None
        Randomness for the subject-specific jitter of nuclei (positions +-2 mm, sizes +-10 %)
        and the random medullary veins; ``jitter=False`` keeps the canonical anatomy.
    jitter : bool
    n_medullary_veins : int
        Number of small random veins in deep white matter.
    """

    scale: tuple = (1.0, 1.0, 1.0)
    rng: object = 0
    jitter: bool = False
    n_medullary_veins: int = 12
    structures: list = field(default_factory=list, init=False)

    def __post_init__(self):
        self.scale = tuple(float(s) for s in np.broadcast_to(np.asarray(self.scale, float), (3,)))
        if any(s <= 0.5 or s > 2 for s in self.scale):
            raise ValueError(f"head scale must be within (0.5, 2], got {self.scale}")
        self._rng = np.random.default_rng(self.rng)
        self.structures = self._build_structures()

    # -- structures ---------------------------------------------------------------------------
    def _place(self, center, radii):
        c = np.asarray(center, float)
        r = np.asarray(radii, float)
        if self.jitter:
            c = c + self._rng.uniform(-2.0, 2.0, 3)
            r = r * self._rng.uniform(0.9, 1.1)
        return tuple(c), tuple(r)

    def _build_structures(self):
        """List of (label, shape, paint_over) in painting order; paint_over limits what is replaced."""
        L = LABELS
        brain_tissue = {L["white_matter"], L["cortical_grey_matter"], L["csf"]}
        outside_brain = {L["skull"], L["soft_tissue"], L["air"]}
        s = []
        for side in (1, -1):
            # Caudate: head, body and tail as a tapering curved tube.
            pts = [(13, 15, 8), (15, 4, 15), (17, -8, 20), (21, -22, 20), (27, -32, 12), (31, -30, 0)]
            pts = [(side * x, y, z) for x, y, z in pts]
            radii = (6.0, 4.5, 3.5, 2.5, 2.0, 1.5)
            if self.jitter:
                d = self._rng.uniform(-1.5, 1.5, 3)
                pts = [tuple(np.add(p, d)) for p in pts]
            s.append((L["caudate"], Tube(tuple(pts), radii), brain_tissue))
            c, r = self._place((side * 25, 2, 1), (5.5, 15.0, 9.0))
            s.append((L["putamen"], Ellipsoid(c, r, rotation_matrix((0, 0, side * 10))), brain_tissue))
            c, r = self._place((side * 19, -4, -1), (3.5, 9.0, 5.0))
            s.append((L["globus_pallidus"], Ellipsoid(c, r, rotation_matrix((0, 0, side * 15))),
                      brain_tissue | {L["putamen"]}))
            c, r = self._place((side * 11, -18, 7), (7.0, 15.0, 8.0))
            s.append((L["thalamus"], Ellipsoid(c, r, rotation_matrix((0, 0, side * 10))), brain_tissue))
            c, r = self._place((side * 5, -20, -9), (3.2, 3.8, 3.5))
            s.append((L["red_nucleus"], Ellipsoid(c, r), brain_tissue))
            c, r = self._place((side * 11, -17, -12), (3.0, 9.0, 2.5))
            s.append((L["substantia_nigra"], Ellipsoid(c, r, rotation_matrix((-20, 0, side * 25))),
                      brain_tissue))
            c, r = self._place((side * 15, -57, -34), (7.0, 9.0, 6.0))
            s.append((L["dentate_nucleus"], EllipsoidShell(c, r, 0.55, rotation_matrix((0, 0, side * 20))),
                      brain_tissue))
        veins = [
            # superior sagittal sinus along the dorsal midline, into the confluence
            Tube(((0, 62, 30), (0, 48, 62), (0, 15, 80), (0, -25, 80), (0, -62, 66), (0, -88, 40),
                  (0, -100, 12), (0, -102, -4)), (2.0, 2.8, 3.2, 3.5, 3.8, 4.0, 4.0, 4.0)),
            # straight sinus from the vein of Galen to the confluence
            Tube(((0, -38, 8), (0, -60, 10), (0, -85, 4), (0, -100, -2)), (2.0, 2.5, 3.0, 3.0)),
            # internal cerebral veins
            Tube(((2.5, 0, 14), (2.5, -20, 14), (1, -34, 9), (0, -38, 8)), (1.0, 1.2, 1.5, 1.8)),
            Tube(((-2.5, 0, 14), (-2.5, -20, 14), (-1, -34, 9), (0, -38, 8)), (1.0, 1.2, 1.5, 1.8)),
        ]
        for side in (1, -1):  # transverse and sigmoid sinuses
            veins.append(Tube(((0, -102, -4), (side * 30, -98, -12), (side * 50, -78, -22),
                               (side * 56, -55, -32), (side * 50, -40, -50)), (3.8, 3.5, 3.2, 3.0, 3.0)))
        veins += self._medullary_veins()
        vein_over = brain_tissue | {L["skull"], L["soft_tissue"]}
        s += [(L["vein"], v, vein_over) for v in veins]
        s.append((L["calcification"], Ellipsoid((-22.0, 4.0, 2.0), (2.2, 2.6, 2.2)),
                  brain_tissue | {L["putamen"], L["globus_pallidus"]}))
        # eyes and air cavities (never inside the brain)
        for x in (32, -32):
            s.append((L["eye"], Ellipsoid((x, 58, -38), (12.0, 12.0, 12.0)), outside_brain))
        cavities = [
            Ellipsoid((0, 72, 12), (14.0, 7.0, 10.0)),                                # frontal sinus
            Ellipsoid((0, 18, -42), (11.0, 12.0, 9.0)),                               # sphenoid sinus
            Ellipsoid((0, 62, -52), (9.0, 22.0, 18.0)),                               # nasal cavity
            *[Ellipsoid(p, (12.0, 15.0, 14.0)) for p in _mirror(28, 45, -62)],       # maxillary sinuses
            *[Ellipsoid(p, (9.0, 10.0, 9.0)) for p in _mirror(56, -24, -44)],        # mastoid air cells
        ]
        s += [(L["air_cavity"], c, {L["skull"], L["soft_tissue"]}) for c in cavities]
        return s

    def _medullary_veins(self):
        rng = np.random.default_rng(self._rng.integers(2**32))
        out = []
        for _ in range(self.n_medullary_veins):
            side = rng.choice((-1, 1))
            start = np.array([side * rng.uniform(18, 30), rng.uniform(-40, 25), rng.uniform(15, 32)])
            direction = np.array([side * rng.uniform(0.4, 1.0), rng.uniform(-0.3, 0.3), rng.uniform(0.2, 0.8)])
            direction /= np.linalg.norm(direction)
            end = start + direction * rng.uniform(12, 22)
            out.append(Tube((tuple(start), tuple(end)), (0.6, 0.5)))
        return out

    # -- rendering ----------------------------------------------------------------------------
    def mni_grid(self, grid: Grid) -> Grid:
        """The grid expressed in MNI coordinates (head space divided by ``scale``)."""
        sc = np.asarray(self.scale)
        return Grid(grid.shape, tuple(np.asarray(grid.spacing) / sc), tuple(np.asarray(grid.origin) / sc))

    def render(self, grid: Grid):
        """Render labels and brain tissue fractions on ``grid``.

        Returns
        -------
        labels : numpy.ndarray of uint8, shape grid.shape
            Tissue labels of :mod:`chimap.sim.tissues`.
        brain_mask : numpy.ndarray of bool
            Brain parenchyma plus internal CSF, deep nuclei and intracerebral veins (the template
            brain mask, probability > 0.5).
        fractions : tuple (gm, wm) of float32 arrays
            Grey- and white-matter fractions inside the brain (CSF = 1 - gm - wm).
        """
        maps = load_mni_maps()
        mgrid = self.mni_grid(grid)
        L = LABELS
        p_brain = sample_separable(maps.brain, maps.origin, (1, 1, 1), mgrid)
        brain = p_brain > 0.5
        del p_brain
        gm = sample_separable(maps.gm, maps.origin, (1, 1, 1), mgrid)
        wm = sample_separable(maps.wm, maps.origin, (1, 1, 1), mgrid)
        dist = sample_separable(maps.dist_outside, maps.origin, (1, 1, 1), mgrid, fill=None)
        dist *= float(np.cbrt(np.prod(self.scale)))  # distances in head-space mm
        labels = np.full(grid.shape, L["air"], dtype=np.uint8)
        labels[dist <= SCALP_SHELL_MM] = L["soft_tissue"]
        labels[dist <= SKULL_SHELL_MM] = L["skull"]
        labels[dist <= CSF_SHELL_MM] = L["csf"]
        near_brain = dist <= CSF_SHELL_MM + CAVITY_BONE_MM  # air cavities stay out of this shell
        del dist
        self._paint_body(labels, grid)
        # brain: GM / WM / CSF by the largest fraction
        total = gm + wm
        csf = 1.0 - total
        np.clip(csf, 0.0, 1.0, out=csf)
        tissue = np.where(gm >= wm, np.uint8(L["cortical_grey_matter"]), np.uint8(L["white_matter"]))
        tissue = np.where(csf > np.maximum(gm, wm), np.uint8(L["csf"]), tissue)
        labels[brain] = tissue[brain]
        del tissue, csf, total
        # brain stem / spinal cord below the template
        stem = self._paint(labels, grid, L["white_matter"], _BRAIN_STEM,
                           {L["skull"], L["soft_tissue"], L["csf"], L["air"]})
        if stem is not None:
            brain[stem[0]] |= stem[1]
        for label, shape, over in self.structures:
            self._paint(labels, grid, label, shape, over,
                        exclude=near_brain if label == L["air_cavity"] else None)
        return labels, brain, (gm, wm)

    def _paint_body(self, labels, grid):
        """Face, neck soft tissue: fill air below/in front of the skull shell."""
        L = LABELS
        body = [
            Ellipsoid((0, 40, -50), (58.0, 50.0, 42.0)),            # face and jaw
            Tube(((0, -12, -40), (0, -16, -110), (0, -18, -200)), (52.0, 50.0, 50.0)),  # neck
        ]
        for shape in body:
            self._paint(labels, grid, L["soft_tissue"], shape, {L["air"]})

    def _paint(self, labels, grid, label, shape, over, exclude=None):
        """Set ``label`` inside ``shape`` where the current label is in ``over`` (and ``exclude`` is
        False); return (slices, mask)."""
        sl, m = shape.rasterize(self.mni_grid(grid))
        if sl is None:
            return None
        sub = labels[sl]
        if over is not None:
            m &= np.isin(sub, tuple(over))
        if exclude is not None:
            m &= ~exclude[sl]
        sub[m] = label
        return sl, m
