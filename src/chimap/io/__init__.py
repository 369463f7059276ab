"""Input and output: NIfTI images, JSON sidecars, acquisition parameters, phase scaling.

All unit checks on input happen here; algorithms receive plain numpy arrays.
"""

from .nifti import load_nifti, save_nifti, write_json, atomic_path
from .phase import PHASE_UNITS, PhaseScalingWarning, detect_phase_units, scale_phase_to_radians
from .sidecar import SidecarInfo, parse_sidecar, read_sidecar, sidecar_path_for, write_sidecar
from .acquisition import Acquisition
from .multiecho import NAN_POLICIES, load_multiecho

__all__ = [
    "load_nifti",
    "save_nifti",
    "write_json",
    "atomic_path",
    "PHASE_UNITS",
    "PhaseScalingWarning",
    "detect_phase_units",
    "scale_phase_to_radians",
    "SidecarInfo",
    "parse_sidecar",
    "read_sidecar",
    "sidecar_path_for",
    "write_sidecar",
    "Acquisition",
    "NAN_POLICIES",
    "load_multiecho",
]
