"""chimap: quantitative susceptibility mapping (QSM) of MRI.

Conventions (see ``docs`` and the README): phase in radians, echo times in seconds, field
strength in tesla, voxel sizes in mm, fields and susceptibility in ppm. Arrays keep NIfTI storage
order ``(I, J, K)`` with echoes last. The main field B0 is world +z of the scanner affine.

``import chimap`` stays light: it never imports torch or other optional extras.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("chimap")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
