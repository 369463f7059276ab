"""Tissue properties of the simulated head: susceptibility, proton density and R2*.

Susceptibility is in ppm relative to water (CSF = 0). R2* values are given at 3 T and scaled
linearly with field strength for tissue (a common approximation for iron- and
myelin-dominated R2*, Yablonskiy & Haacke MRM 1994; Peran et al. 2007); CSF, fluid and air do not
scale. Values are literature-typical mid-range figures for healthy adults at 3 T, e.g.
Deistung et al. NeuroImage 2013;65:299 (deep-grey chi), Marques et al. MRM 2021;86:526 (challenge
2.0 head model), Li et al. NeuroImage 2014 (age and iron), Peran et al. 2007 and Gelman et al.
Radiology 1999 (R2*), Lee et al. 2012 / Buch et al. 2015 (venous blood chi ~ 0.3-0.4 ppm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import CHI_AIR_REL_WATER_PPM

__all__ = ["Tissue", "TISSUES", "LABELS", "label_names", "lookup_tables", "BRAIN_LABELS"]


@dataclass(frozen=True)
class Tissue:
    """One tissue class of the head model.

    Attributes
    ----------
    label : int
        Integer label in the label map (0 = air outside the head).
    name : str
    chi : float
        Susceptibility in ppm relative to water.
    m0 : float
        Proton density (relative, CSF = 1).
    r2star_3t : float
        R2* in 1/s at 3 T.
    scales_with_b0 : bool
        Whether R2* grows linearly with the field strength.
    """

    label: int
    name: str
    chi: float
    m0: float
    r2star_3t: float
    scales_with_b0: bool = True


TISSUES: tuple[Tissue, ...] = (
    Tissue(0, "air", CHI_AIR_REL_WATER_PPM, 0.0, 0.0, False),
    Tissue(1, "white_matter", -0.030, 0.69, 21.0),
    Tissue(2, "cortical_grey_matter", 0.015, 0.80, 15.0),
    Tissue(3, "csf", 0.0, 1.00, 1.0, False),
    Tissue(4, "caudate", 0.060, 0.82, 19.0),
    Tissue(5, "putamen", 0.050, 0.80, 22.0),
    Tissue(6, "globus_pallidus", 0.150, 0.75, 38.0),
    Tissue(7, "thalamus", 0.010, 0.76, 19.0),
    Tissue(8, "red_nucleus", 0.120, 0.76, 30.0),
    Tissue(9, "substantia_nigra", 0.140, 0.76, 34.0),
    Tissue(10, "dentate_nucleus", 0.110, 0.76, 28.0),
    Tissue(11, "vein", 0.330, 0.70, 45.0),
    Tissue(12, "calcification", -1.500, 0.30, 80.0),
    Tissue(13, "skull", -2.100, 0.10, 150.0),
    Tissue(14, "soft_tissue", -0.020, 0.75, 25.0),
    Tissue(15, "air_cavity", CHI_AIR_REL_WATER_PPM, 0.0, 0.0, False),
    Tissue(16, "ms_lesion", -0.015, 0.80, 16.0),
    Tissue(17, "eye", 0.0, 0.95, 3.0, False),
)

LABELS: dict[str, int] = {t.name: t.label for t in TISSUES}

#: Labels that belong to the brain (inside the brain mask by construction).
BRAIN_LABELS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16)


def label_names() -> dict[int, str]:
    """Mapping label -> tissue name."""
    return {t.label: t.name for t in TISSUES}


def lookup_tables(*, field_strength: float = 3.0, chi_overrides=None):
    """Per-label value tables (index = label) for chi (ppm), M0 and R2* (1/s) at ``field_strength``.

    Parameters
    ----------
    field_strength : float
        Tesla; tissue R2* scales linearly from its 3 T value.
    chi_overrides : dict[int, float], optional
        Replace the susceptibility of given labels (e.g. randomised per subject).

    Returns
    -------
    chi, m0, r2star : numpy.ndarray of float32, shape (max_label + 1,)
    """
    n = max(t.label for t in TISSUES) + 1
    chi = np.zeros(n, np.float32)
    m0 = np.zeros(n, np.float32)
    r2 = np.zeros(n, np.float32)
    for t in TISSUES:
        chi[t.label] = t.chi
        m0[t.label] = t.m0
        r2[t.label] = t.r2star_3t * (field_strength / 3.0 if t.scales_with_b0 else 1.0)
    for label, value in (chi_overrides or {}).items():
        chi[int(label)] = value
    return chi, m0, r2
