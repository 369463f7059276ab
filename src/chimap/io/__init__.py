"""Input and output: NIfTI images, JSON sidecars, acquisition parameters, phase scaling.

All unit checks on input happen here; algorithms receive plain numpy arrays.
"""

from .nifti import load_nifti, save_nifti, write_json, atomic_path

__all__ = ["load_nifti", "save_nifti", "write_json", "atomic_path"]
