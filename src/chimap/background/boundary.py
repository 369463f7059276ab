"""The part of a local field that LBV removes as background, for an iterative correction.

LBV (Zhou et al. 2014) takes the total field on the mask boundary as the background there,
i.e. it assumes the local field vanishes on the boundary. It does not: the local field of the
tissue, ``D chi``, has boundary values, and LBV removes their harmonic extension
``H(D chi | boundary)`` from the interior together with the true background. Given an estimate
of chi, that loss is computed and added back::

    local_corrected = local_LBV + H((D chi) | boundary)

Exact for the true chi (the background is harmonic, so LBV removes it exactly; what remains
is ``D chi - H(D chi | boundary)``). With chi from a regularised inversion the correction is
partial and is iterated inside the inversion (``refine_field`` of
:func:`chimap.invert.tv_admm_wh`). This refinement is chimap's own extension of LBV, not part
of the published method; on the simulated 1 mm head it lowered the default pipeline's NRMSE
(benchmarks/bench_pipeline.py, numbers in the preset).
"""

from __future__ import annotations

import numpy as np

from ..forward import dipole_field
from ._common import check_inputs
from .lbv import laplace_dirichlet

__all__ = ["lbv_boundary_loss"]


def lbv_boundary_loss(chi, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), tol=1e-4):
    """``H((D chi)|boundary)``: the harmonic extension of chi's field from the mask boundary.

    Parameters
    ----------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility estimate (ppm), zero outside ``mask``.
    mask : numpy.ndarray of bool, shape (I, J, K)
        The mask LBV was run on.
    voxel_size : array_like, shape (3,)
        mm.
    b0_direction : array_like, shape (3,)
        B0 in voxel axes.
    tol : float
        Relative residual of the Laplace solve (a correction need not be solved to 1e-6).

    Returns
    -------
    numpy.ndarray of float32, shape (I, J, K)
        The field (ppm) LBV removes from ``D chi`` on the mask's interior; 0 elsewhere.
    """
    c, m, vs = check_inputs(chi, mask, voxel_size, name="chi")
    field = dipole_field(np.where(m, c, 0).astype(np.float32), None, vs, b0_direction=b0_direction,
                         pad_factor=1.5)
    u, interior, _ = laplace_dirichlet(field, m, vs, tol=tol)
    return np.where(interior, u, 0).astype(np.float32)
