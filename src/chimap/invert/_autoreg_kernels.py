"""Numba reductions for the automatic choice of ``alpha`` (private).

The gradient is the periodic forward difference of :mod:`chimap.invert._admm_kernels`,
``(G x)_a[i] = (x[i + e_a] - x[i]) / h_a``, so that the TV value is that of the ADMM solvers.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["gradient_norms"]


@njit(parallel=True, cache=True)
def gradient_norms(x, inv_h, weight):
    """``(sum g |G x|_2, sum g |G x|_1, sum g |G x|_2^2)`` over the grid, accumulated in
    float64: isotropic TV, anisotropic TV and the squared L2 norm of the gradient, each voxel's
    term weighted by ``g = weight[i, j, k]`` (an array of x's shape), or unweighted (``g = 1``)
    when ``weight`` has another size."""
    n0, n1, n2 = x.shape
    weighted = weight.size == x.size
    h0 = inv_h[0]
    h1 = inv_h[1]
    h2 = inv_h[2]
    iso = np.zeros(n0)
    aniso = np.zeros(n0)
    sq = np.zeros(n0)
    for i in prange(n0):
        ip = i + 1 if i + 1 < n0 else 0
        a = 0.0
        b = 0.0
        c = 0.0
        for j in range(n1):
            jp = j + 1 if j + 1 < n1 else 0
            for k in range(n2):
                kp = k + 1 if k + 1 < n2 else 0
                v = np.float64(x[i, j, k])
                g0 = (x[ip, j, k] - v) * h0
                g1 = (x[i, jp, k] - v) * h1
                g2 = (x[i, j, kp] - v) * h2
                s = g0 * g0 + g1 * g1 + g2 * g2
                g = np.float64(weight[i, j, k]) if weighted else 1.0
                a += g * np.sqrt(s)
                b += g * (abs(g0) + abs(g1) + abs(g2))
                c += g * s
        iso[i] = a
        aniso[i] = b
        sq[i] = c
    return iso.sum(), aniso.sum(), sq.sum()
