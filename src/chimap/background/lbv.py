"""LBV: Laplacian boundary value background field removal (Zhou et al., NMR Biomed 2014;27:312).

The background field is harmonic inside the mask. LBV takes the total field on the mask's
boundary as a Dirichlet condition (assuming the local field is negligible there), solves
Laplace's equation for the background inside, and subtracts it. The Laplacian is the 7-point
stencil with the voxel sizes of each axis; the sparse system is solved by conjugate gradient
with a multigrid V-cycle preconditioner (:mod:`chimap.background._multigrid`).
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from ._common import check_inputs, conjugate_gradient, finish
from ._multigrid import MultigridPreconditioner

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
    op = _dirichlet_operator(m, vs)
    u = np.where(m, f, 0).astype(np.float64)
    if op.n == 0:
        return u, op.interior, {"iterations": 0, "residual": 0.0, "converged": True}
    uf = np.pad(u[op.box], 1)
    ufl = uf.ravel()
    rhs = np.zeros(op.n)
    # boundary neighbours: their known Dirichlet values move to the right-hand side
    for nb, outside, w in op.boundary:
        rhs[outside] += w * ufl[nb]
    x, info = conjugate_gradient(lambda v: op.matrix @ v, rhs, tol=tol, max_iter=max_iter,
                                 precondition=op.multigrid)
    ufl[op.flat] = x
    u[op.box] = uf[1:-1, 1:-1, 1:-1]
    return u, op.interior, info


class _DirichletOperator:
    """The 7-point Laplacian on the interior voxels of one mask and its multigrid hierarchy."""

    def __init__(self, m, vs):
        self.interior = _interior(m)
        self.n = n = int(self.interior.sum())
        if n == 0:
            return
        # work on the bounding box of the mask, padded by one voxel so that every neighbour exists
        idx = np.argwhere(m)
        lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
        self.box = tuple(slice(a, b) for a, b in zip(lo, hi))
        mi = np.pad(self.interior[self.box], 1)
        shape = mi.shape
        self.flat = flat = np.flatnonzero(mi)
        index = np.full(mi.size, -1, dtype=np.int64)
        index[flat] = np.arange(n)
        strides = (shape[1] * shape[2], shape[2], 1)
        inv_h2 = 1.0 / vs**2
        rows, cols, vals = [], [], []
        self.boundary = []
        for ax in range(3):
            for sign in (-1, 1):
                nb = flat + sign * strides[ax]
                j = index[nb]
                inside = j >= 0
                rows.append(np.flatnonzero(inside))
                cols.append(j[inside])
                vals.append(np.full(int(inside.sum()), -inv_h2[ax]))
                self.boundary.append((nb[~inside], np.flatnonzero(~inside), float(inv_h2[ax])))
        rows = np.concatenate(rows + [np.arange(n)])
        cols = np.concatenate(cols + [np.arange(n)])
        vals = np.concatenate(vals + [np.full(n, 2.0 * inv_h2.sum())])
        self.matrix = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
        coords = np.stack(np.unravel_index(flat, shape), axis=1)
        self.multigrid = MultigridPreconditioner(self.matrix, coords, vs)


# The pipeline solves on the same mask several times (LBV, then its boundary refinement); the
# operator and its multigrid hierarchy (about 1.5 s at 1 mm) are kept for the last mask seen.
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _dirichlet_operator(m, vs):
    key = (m.shape, tuple(float(v) for v in vs), hashlib.blake2b(np.packbits(m).tobytes(), digest_size=16).digest())
    with _CACHE_LOCK:
        op = _CACHE.get(key)
    if op is None:
        op = _DirichletOperator(m, vs)
        with _CACHE_LOCK:
            _CACHE.clear()
            _CACHE[key] = op
    return op


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
