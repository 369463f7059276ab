"""Field mapping: phase-offset removal, unwrapping and echo combination (phase in rad -> field).

- :mod:`chimap.field.offsets`: MCPC-3D-S phase offsets.
- :mod:`chimap.field.unwrap`: Laplacian, region-growing and temporal unwrapping.
- :mod:`chimap.field.combine`: weighted linear fit, weighted echo average and nonlinear complex fit.
- :mod:`chimap.field.distortion`: EPI phase-encode distortion correction with the measured field.
"""

from .combine import fit_field_complex, fit_field_linear, weighted_echo_average
from .distortion import epi_displacement, unwarp_epi
from .offsets import mcpc3ds, remove_phase_offset
from .unwrap import unalias_field, unwrap_complex_guided, unwrap_laplacian, unwrap_region_growing, unwrap_temporal, wrap

__all__ = [
    "mcpc3ds", "remove_phase_offset", "wrap",
    "unalias_field", "unwrap_complex_guided", "unwrap_laplacian", "unwrap_region_growing", "unwrap_temporal",
    "fit_field_linear", "weighted_echo_average", "fit_field_complex",
    "epi_displacement", "unwarp_epi",
]
