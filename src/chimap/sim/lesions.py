"""Multiple-sclerosis lesions of known kind for the simulated head.

Kinds (Gkotsoulias et al. 2025, Front. Neurosci. 19:1544376; Absinta et al. 2016/2019 for rims;
Sati et al. 2016 for the central vein sign):

``paramagnetic_rim``
    Iron-laden microglia at the edge: a 1-1.5 mm shell of raised susceptibility around a core that
    is near white matter (slightly diamagnetic from demyelination is not modelled separately).
``hyperintense``
    Diffusely raised susceptibility over the whole lesion (myelin loss, iron in the core).
``isointense``
    Susceptibility close to the surrounding white matter (hyperintense on FLAIR only).

Each lesion may contain a central vein: a thin vein through its centre along its long axis,
oriented radially from the lateral ventricles as in periventricular lesions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..geometry import rotation_from_to
from .shapes import Ellipsoid, EllipsoidShell, Grid, Tube
from .tissues import LABELS

__all__ = ["Lesion", "LESION_KINDS", "place_lesions", "paint_lesions"]

LESION_KINDS = ("paramagnetic_rim", "hyperintense", "isointense")

#: Susceptibility of each lesion part relative to the surrounding white matter (ppm).
_CORE_DELTA = {"paramagnetic_rim": 0.005, "hyperintense": 0.040, "isointense": 0.0}
_RIM_DELTA = 0.060
_RIM_THICKNESS_MM = 1.2
_CENTRAL_VEIN_RADIUS_MM = 0.45

#: Centre of the lateral ventricles in MNI mm; central veins run radially from it.
_VENTRICLE_CENTRE = np.array([0.0, -5.0, 15.0])


@dataclass(frozen=True)
class Lesion:
    """One simulated lesion (positions in MNI head space, mm)."""

    lesion_id: int
    kind: str
    central_vein: bool
    center_mm: tuple
    radii_mm: tuple
    axis: tuple  # unit vector of the long axis
    chi_core: float  # ppm, absolute (relative to water)
    chi_rim: float | None

    def rotation(self) -> np.ndarray:
        return rotation_from_to((0.0, 0.0, 1.0), self.axis)

    def to_record(self) -> dict:
        d = asdict(self)
        d["center_mm"] = [round(float(v), 3) for v in self.center_mm]
        d["radii_mm"] = [round(float(v), 3) for v in self.radii_mm]
        d["axis"] = [round(float(v), 4) for v in self.axis]
        return d


def place_lesions(n, anatomy, *, rng=None, kinds=None, central_vein_fraction=0.5, chi_wm=-0.030):
    """Draw ``n`` lesions in deep and periventricular white matter without overlaps.

    Parameters
    ----------
    n : int
        Number of lesions.
    anatomy : HeadAnatomy
        Used to test candidate centres for white matter on a coarse grid.
    rng : None, int or numpy.random.Generator
    kinds : sequence of str, optional
        Kind per lesion; default cycles through :data:`LESION_KINDS` in random order.
    central_vein_fraction : float
        Probability that a lesion has a central vein.
    chi_wm : float
        White-matter susceptibility (ppm) the lesion contrasts are added to.

    Returns
    -------
    list of Lesion
    """
    if n < 0:
        raise ValueError(f"number of lesions must be >= 0, got {n}")
    rng = np.random.default_rng(rng)
    if kinds is None:
        kinds = [LESION_KINDS[i % len(LESION_KINDS)] for i in range(n)]
        rng.shuffle(kinds)
    kinds = list(kinds)
    bad = sorted(set(kinds) - set(LESION_KINDS))
    if bad:
        raise ValueError(f"unknown lesion kind(s) {bad}; choose from {list(LESION_KINDS)}")
    # Candidate centres: white matter at 2 mm, in the cerebrum, away from the grey matter.
    grid = Grid((72, 90, 50), (2.0, 2.0, 2.0), (-71.0, -105.0, -10.0))
    labels, _, (gm, wm) = anatomy.render(grid)
    from scipy import ndimage

    deep_wm = ndimage.binary_erosion(labels == LABELS["white_matter"], iterations=3)
    cand = np.argwhere(deep_wm)
    if n and cand.size == 0:
        raise RuntimeError("no white matter found to place lesions in")
    lesions: list[Lesion] = []
    tries = 0
    while len(lesions) < n:
        tries += 1
        if tries > 200 * max(n, 1):
            raise RuntimeError(f"could place only {len(lesions)} of {n} lesions without overlap")
        c = np.asarray(grid.origin) + cand[rng.integers(len(cand))] * 2.0 + rng.uniform(-1, 1, 3)
        long_r = rng.uniform(2.5, 6.0)
        radii = (long_r * rng.uniform(0.55, 0.85), long_r * rng.uniform(0.55, 0.85), long_r)
        if any(np.linalg.norm(c - np.asarray(l.center_mm)) < long_r + max(l.radii_mm) + 2.0 for l in lesions):
            continue
        axis = c - _VENTRICLE_CENTRE
        axis = axis / (np.linalg.norm(axis) or 1.0)
        kind = kinds[len(lesions)]
        lesions.append(
            Lesion(
                lesion_id=len(lesions) + 1,
                kind=kind,
                central_vein=bool(rng.random() < central_vein_fraction),
                center_mm=tuple(c),
                radii_mm=tuple(radii),
                axis=tuple(axis),
                chi_core=chi_wm + _CORE_DELTA[kind],
                chi_rim=chi_wm + _RIM_DELTA if kind == "paramagnetic_rim" else None,
            )
        )
    return lesions


def _lesion_parts(lesion: Lesion):
    """(shape, chi) parts of one lesion in painting order."""
    rot = lesion.rotation()
    parts = [(Ellipsoid(lesion.center_mm, lesion.radii_mm, rot), lesion.chi_core)]
    if lesion.chi_rim is not None:
        inner = 1.0 - _RIM_THICKNESS_MM / min(lesion.radii_mm)
        parts.append((EllipsoidShell(lesion.center_mm, lesion.radii_mm, max(inner, 0.3), rot), lesion.chi_rim))
    return parts


def central_vein(lesion: Lesion) -> Tube:
    """The central vein: through the centre along the long axis, reaching beyond the lesion."""
    c = np.asarray(lesion.center_mm)
    half = 1.6 * max(lesion.radii_mm)
    a = np.asarray(lesion.axis)
    return Tube((tuple(c - half * a), tuple(c + half * a)), (_CENTRAL_VEIN_RADIUS_MM,))


def paint_lesions(lesions, grid: Grid, anatomy, labels, lesion_map=None, chi=None, *, chi_vein=0.33):
    """Paint lesions onto a label map (and optionally their ids and susceptibilities).

    Lesions replace white matter only; central veins replace lesion and white-matter voxels.

    Parameters
    ----------
    lesions : list of Lesion
    grid : Grid
    anatomy : HeadAnatomy
        Supplies the head-to-MNI scaling.
    labels : numpy.ndarray of uint8
        Modified in place.
    lesion_map : numpy.ndarray of uint16, optional
        Lesion ids, modified in place.
    chi : numpy.ndarray of float32, optional
        Susceptibility (ppm), modified in place.
    chi_vein : float
        Susceptibility (ppm) of the central veins.
    """
    mgrid = anatomy.mni_grid(grid)
    wm, les, vein = LABELS["white_matter"], LABELS["ms_lesion"], LABELS["vein"]
    for lesion in lesions:
        for k, (shape, value) in enumerate(_lesion_parts(lesion)):
            sl, m = shape.rasterize(mgrid)
            if sl is None:
                continue
            sub = labels[sl]
            m &= (sub == wm) | (sub == les)
            sub[m] = les
            if lesion_map is not None:
                lesion_map[sl][m] = lesion.lesion_id
            if chi is not None:
                chi[sl][m] = value
        if lesion.central_vein:
            sl, m = central_vein(lesion).rasterize(mgrid)
            if sl is None:
                continue
            sub = labels[sl]
            m &= (sub == wm) | (sub == les)
            sub[m] = vein
            if chi is not None:
                chi[sl][m] = chi_vein
