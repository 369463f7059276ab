"""Multigrid-preconditioned conjugate gradient for Laplace problems on a masked voxel grid.

The fine operator is any symmetric positive definite sparse matrix whose unknowns are voxels
of a 3-D grid (given by their integer coordinates). Coarse levels are built geometrically:
voxels are grouped 2:1 along every axis whose spacing is at most 1.5 times the finest
spacing of that level (semi-coarsening keeps anisotropic grids well conditioned), the
prolongation ``P`` is trilinear interpolation restricted to the active voxels, and the coarse
operator is the Galerkin product ``P^T A P``. Every level is smoothed by l1-Jacobi (the
diagonal replaced by the row sums of ``|A|``, convergent for any SPD matrix; Baker, Falgout,
Kolev and Yang, SIAM J Sci Comput 2011;33:2864); the coarsest level is solved exactly (sparse LU). With equal numbers of pre- and post-smoothing sweeps the
V-cycle is a symmetric positive definite preconditioner for CG.

Everything is vectorised scipy.sparse; no external multigrid package is needed.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["MultigridPreconditioner"]


def _prolongation(coords, shape, factors):
    """Trilinear prolongation from the coarse grid to the active fine voxels ``coords``.

    Returns ``(P, coarse_coords, coarse_shape)``; ``P`` has shape ``(n_fine, n_coarse)`` and
    only coarse voxels that receive a weight are kept.
    """
    n = coords.shape[0]
    choices = []
    cshape = []
    for ax in range(3):
        c = coords[:, ax]
        if factors[ax] == 2:
            odd = (c & 1).astype(bool)
            lo = c >> 1
            w_lo = np.where(odd, 0.5, 1.0)
            w_hi = np.where(odd, 0.5, 0.0)
            choices.append(((lo, w_lo), (lo + 1, w_hi)))
            cshape.append(shape[ax] // 2 + 1)
        else:
            choices.append(((c, np.ones(n)), (c, np.zeros(n))))
            cshape.append(shape[ax])
    rows, keys, vals = [], [], []
    ar = np.arange(n)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                (i0, w0), (i1, w1), (i2, w2) = choices[0][a], choices[1][b], choices[2][c]
                w = w0 * w1 * w2
                keep = w > 0
                rows.append(ar[keep])
                keys.append((i0[keep] * cshape[1] + i1[keep]) * cshape[2] + i2[keep])
                vals.append(w[keep])
    rows = np.concatenate(rows)
    keys = np.concatenate(keys)
    vals = np.concatenate(vals)
    # keep only coarse voxels that carry a fair share of a full trilinear stencil: a coarse
    # voxel reached by a single fine corner has a tiny Galerkin diagonal, which makes the
    # coarse operator nearly singular and the V-cycle numerically non-symmetric
    weight = np.bincount(keys, weights=vals, minlength=int(np.prod(cshape)))
    full = float(np.prod([2.0 if f == 2 else 1.0 for f in factors]))
    present = weight >= full / 8.0
    drop = ~present[keys]
    if drop.any():
        rows, keys, vals = rows[~drop], keys[~drop], vals[~drop]
    ukeys = np.flatnonzero(present)
    lookup = np.zeros(present.size, dtype=np.int64)
    lookup[ukeys] = np.arange(ukeys.size)
    p = sp.csr_matrix((vals, (rows, lookup[keys])), shape=(n, ukeys.size))
    ccoords = np.stack(np.unravel_index(ukeys, cshape), axis=1).astype(np.int64)
    return p, ccoords, tuple(cshape)


class MultigridPreconditioner:
    """V-cycle preconditioner for a symmetric positive definite voxel-grid operator.

    Parameters
    ----------
    a : scipy.sparse matrix, shape (n, n)
        Symmetric positive definite operator on the active voxels.
    coords : numpy.ndarray of int, shape (n, 3)
        Integer voxel coordinates of the unknowns (non-negative).
    spacing : sequence of 3 float
        Voxel sizes (mm) of the fine grid, used to choose the axes to coarsen.
    sweeps : int
        Jacobi sweeps before and after the coarse correction.
    coarse_size : int
        Stop coarsening below this many unknowns (sparse LU there).
    """

    def __init__(self, a, coords, spacing, *, sweeps=2, coarse_size=1500):
        self.sweeps = int(sweeps)
        a = sp.csr_matrix(a)
        coords = np.asarray(coords, dtype=np.int64)
        shape = tuple(int(v) for v in coords.max(axis=0) + 1)
        h = np.asarray(spacing, dtype=np.float64).copy()
        self.levels = []
        while a.shape[0] > coarse_size:
            factors = [2 if h[ax] <= 1.5 * h.min() + 1e-12 else 1 for ax in range(3)]
            p, ccoords, cshape = _prolongation(coords, shape, factors)
            if p.shape[1] >= 0.9 * a.shape[0]:  # not coarsening any more
                break
            # l1-Jacobi smoothing, D_l1 = diag(sum_j |a_ij|): convergent for any SPD operator
            # without a spectral estimate (a power iteration can miss the large eigenvalues of
            # weakly coupled coarse voxels at a fragmented mask edge, and a too-large damping
            # makes the V-cycle indefinite)
            self.levels.append((a, p, 1.0 / np.asarray(abs(a).sum(axis=1)).ravel()))
            a = sp.csr_matrix(p.T @ a @ p)
            coords, shape = ccoords, cshape
            h = h * np.asarray(factors)
        try:
            self.coarse = spla.splu(sp.csc_matrix(a))
        except RuntimeError:
            # a Galerkin coarse operator can be numerically singular on tiny or fragmented masks;
            # a small diagonal shift keeps it a good preconditioner (CG still solves the exact system)
            shift = 1e-8 * float(np.abs(a.diagonal()).mean() or 1.0)
            self.coarse = spla.splu(sp.csc_matrix(a + shift * sp.identity(a.shape[0], format="csr")))

    def _vcycle(self, level, b):
        if level == len(self.levels):
            return self.coarse.solve(b)
        a, p, wdinv = self.levels[level]
        x = wdinv * b
        for _ in range(self.sweeps - 1):
            x += wdinv * (b - a @ x)
        r = b - a @ x
        x += p @ self._vcycle(level + 1, p.T @ r)
        for _ in range(self.sweeps):
            x += wdinv * (b - a @ x)
        return x

    def __call__(self, r):
        return self._vcycle(0, r)
