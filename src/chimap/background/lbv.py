"""LBV: Laplacian boundary value background field removal (Zhou et al., NMR Biomed 2014;27:312).

The background field is harmonic inside the mask. LBV takes the total field on the mask's
boundary as a Dirichlet condition (assuming the local field is negligible there), solves
Laplace's equation for the background inside, and subtracts it. The Laplacian is the 7-point
stencil with the voxel sizes of each axis; the sparse system is solved by conjugate gradient
with a multigrid V-cycle preconditioner (:mod:`chimap.background._multigrid`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from ._common import check_inputs, finish
from ._multigrid import solve_spd

__all__ = ["laplace_dirichlet", "lbv"]

_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def _interior(mask):
    """Mask voxels whose 6 neighbours are all in the mask (outside the array counts as out)."""
    return ndimage.binary_erosion(mask, structure=_NEIGHBOURS, border_value=0)


def laplace_dirichlet(values, mask, voxel_size, *, tol=1e-6, max_iter=200):
    """Harmonic function inside ``mask`` equal to ``values`` on the mask's boundary layer.

    Solves ``lap u = 0`` (7-point anisotropic Laplacian) on the interior voxels (all 6
    neighbours in the mask) with ``u = values`` on the boundary voxels (mask voxels with a
    neighbour outside the mask).

    Parameters
    ----------
    values : numpy.ndarray, shape (I, J, K)
        Dirichlet values; only boundary voxels are read.
    mask : numpy.ndarray of bool, shape (I, J, K)
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    tol : float
        Relative residual ``||b - A u|| / ||b||`` at which CG stops.
    max_iter : int
        Maximum number of preconditioned CG iterations.

    Returns
    -------
    u : numpy.ndarray of float64, shape (I, J, K)
        The harmonic function on the mask (boundary voxels hold ``values``), 0 outside.
    interior : numpy.ndarray of bool
        The interior voxels where ``u`` was solved for.
    info : dict
        CG ``iterations``, relative ``residual`` and ``converged``.
    """
    f, m, vs = check_inputs(values, mask, voxel_size, name="values")
    interior = _interior(m)
    u = np.where(m, f, 0).astype(np.float64)
    n = int(interior.sum())
    if n == 0:
        return u, interior, {"iterations": 0, "residual": 0.0, "converged": True}
    # work on the bounding box of the mask, padded by one voxel so that every neighbour exists
    lo = np.argwhere(m).min(axis=0)
    hi = np.argwhere(m).max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    mi = np.pad(interior[box], 1)
    uf = np.pad(u[box], 1)
    shape = mi.shape
    flat = np.flatnonzero(mi)
    index = np.full(mi.size, -1, dtype=np.int64)
    index[flat] = np.arange(n)
    strides = (shape[1] * shape[2], shape[2], 1)
    inv_h2 = 1.0 / vs**2
    diag = np.full(n, 2.0 * inv_h2.sum())
    rhs = np.zeros(n)
    rows, cols, vals = [], [], []
    ufl = uf.ravel()
    for ax in range(3):
        for sign in (-1, 1):
            nb = flat + sign * strides[ax]
            j = index[nb]
            inside = j >= 0
            rows.append(np.flatnonzero(inside))
            cols.append(j[inside])
            vals.append(np.full(int(inside.sum()), -inv_h2[ax]))
            # boundary neighbour: known Dirichlet value moves to the right-hand side
            rhs[~inside] += inv_h2[ax] * ufl[nb[~inside]]
    rows = np.concatenate(rows + [np.arange(n)])
    cols = np.concatenate(cols + [np.arange(n)])
    vals = np.concatenate(vals + [diag])
    a = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    coords = np.stack(np.unravel_index(flat, shape), axis=1)
    x, info = solve_spd(a, rhs, coords, vs, tol=tol, max_iter=max_iter)
    ufl[flat] = x
    u[box] = uf[1:-1, 1:-1, 1:-1]
    return u, interior, info


def lbv(total_field, mask, voxel_size, *, peel=0, tol=1e-6, max_iter=200):
    """LBV background field removal (Zhou et al. 2014).

    The background is the solution of Laplace's equation inside the mask that equals the total
    field on the mask's boundary voxels; ``local = total - background`` on the interior.

    Parameters
    ----------
    total_field : numpy.ndarray, shape (I, J, K)
        Total (unwrapped) field in ppm; only values inside ``mask`` are read.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Region of interest (brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm (the Laplacian uses ``1/h^2`` per axis).
    peel : int
        Extra voxel layers removed from the valid mask (6-connected erosions), where the
        assumption that the local field vanishes on the boundary hurts most. Default 0.
    tol : float
        Relative residual at which the multigrid-preconditioned CG stops (default 1e-6).
    max_iter : int
        Maximum number of CG iterations.

    Returns
    -------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm inside ``valid_mask``, 0 outside; dtype of ``total_field``.
    valid_mask : numpy.ndarray of bool, shape (I, J, K)
        The interior of the mask (its boundary layer removed, where the local field is 0 by
        construction), eroded by ``peel`` more voxel layers.

    Raises
    ------
    ValueError
        Bad shapes or dtypes, empty mask, non-finite values inside the mask, negative
        ``peel``, or a mask with no interior left.
    """
    f, m, vs = check_inputs(total_field, mask, voxel_size)
    if int(peel) != peel or peel < 0:
        raise ValueError(f"peel must be a non-negative number of voxel layers, got {peel!r}")
    if not (0 < float(tol) < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    background, interior, _ = laplace_dirichlet(f, m, vs, tol=tol, max_iter=max_iter)
    valid = interior
    if peel:
        valid = ndimage.binary_erosion(interior, structure=_NEIGHBOURS, iterations=int(peel),
                                       border_value=0)
    if not valid.any():
        raise ValueError("the mask has no interior voxels left; it is too thin for LBV")
    return finish(f - background, valid, f.dtype)
