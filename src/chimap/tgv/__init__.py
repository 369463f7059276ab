"""Single-step TGV-QSM (Langkammer et al. 2015): wrapped phase and mask in, chi out.

:func:`tgv_qsm` solves unwrapping (through the Laplacian of the phase), background removal and
dipole inversion as one convex problem by a primal-dual iteration with fused numba kernels;
:mod:`chimap.tgv.operators` holds the discrete operators as plain numpy (tests, step sizes).
"""

from .solver import PRESETS, iterations_heuristic, laplacian_of_phase, tgv_qsm

__all__ = ["PRESETS", "iterations_heuristic", "laplacian_of_phase", "tgv_qsm"]
