"""Shared pieces of the background-field removal methods.

Input validation, the cropped and padded FFT box the spherical-mean-value (SMV) methods work
in, the sampled ball kernel and the erosions that go with it, and a plain conjugate-gradient
solver.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..geometry import check_voxel_size
from ..kernels import fft_workers

__all__ = [
    "FFTBox",
    "check_inputs",
    "check_radius",
    "conjugate_gradient",
    "empty_erosion_error",
    "finish",
    "sphere_fits",
]


def check_inputs(total_field, mask, voxel_size, *, name="total_field"):
    """Validate ``(field, mask, voxel_size)`` and return ``(field, mask_bool, voxel_size)``.

    The field must be a real 3-D array, finite inside the mask (values outside the mask are
    never read: NaN there is allowed); integer fields are promoted to float64. The mask must
    have the field's shape, hold only 0/1 (or booleans) and select at least one voxel.
    """
    f = np.asarray(total_field)
    if f.ndim != 3:
        raise ValueError(f"{name} must be a 3-D array (I, J, K), got shape {f.shape}")
    if np.iscomplexobj(f):
        raise ValueError(f"{name} must be real (a field in ppm), got dtype {f.dtype}")
    if not np.issubdtype(f.dtype, np.floating):
        if not (np.issubdtype(f.dtype, np.integer) or f.dtype == bool):
            raise ValueError(f"{name} must be a real numeric array, got dtype {f.dtype}")
        f = f.astype(np.float64)
    m = np.asarray(mask)
    if m.shape != f.shape:
        raise ValueError(f"mask shape {m.shape} does not match {name} shape {f.shape}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
            raise ValueError(f"mask must be boolean (or 0/1), got dtype {m.dtype}")
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("mask must hold only 0 and 1 (or booleans)")
        m = m != 0
    if not m.any():
        raise ValueError("mask is empty: no voxel to process")
    vs = check_voxel_size(voxel_size)
    bad = int(np.count_nonzero(~np.isfinite(f[m])))
    if bad:
        raise ValueError(
            f"{name} has {bad} NaN or infinite values inside the mask; fix them or shrink the mask"
        )
    return f, m, vs


def check_radius(radius, voxel_size, *, name="radius") -> float:
    """Validate an SMV radius in mm: finite and at least the largest voxel size.

    A smaller sphere would not reach the neighbouring voxel on every axis (below the smallest
    voxel size it is the centre voxel alone and the SMV filter is the identity).
    """
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in mm, got {radius!r}") from None
    vs = np.asarray(voxel_size, dtype=np.float64)
    if not np.isfinite(r) or r <= 0:
        raise ValueError(f"{name} must be positive and finite (mm), got {r}")
    if r < vs.max() * (1 - 1e-9):
        raise ValueError(
            f"{name} {r} mm is smaller than the largest voxel size ({vs.max()} mm): the sphere "
            "must reach at least one neighbouring voxel along every axis (radii are in mm)"
        )
    return r


def sphere_fits(mask, voxel_size, radius) -> bool:
    """Whether a sphere of ``radius`` mm fits in the bounding box of ``mask``.

    A cheap necessary condition for a non-empty erosion, checked before any large array is
    built for a (mistakenly) huge radius.
    """
    vs = np.asarray(voxel_size, dtype=np.float64)
    for ax in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        if 2 * int(np.floor(radius / vs[ax] + 1e-9)) + 1 > idx[-1] - idx[0] + 1:
            return False
    return True


def empty_erosion_error(radius):
    return ValueError(f"the mask is empty after erosion by {radius} mm; use a smaller radius")


def finish(local, valid, dtype):
    """Zero ``local`` outside ``valid`` and cast it to ``dtype``."""
    out = np.where(valid, local, 0).astype(dtype, copy=False)
    return out, valid


class FFTBox:
    """The mask's bounding box, grown by ``margin`` voxels per side, padded to fast FFT sizes.

    SMV methods only read the field inside the mask, so they work in this smaller box; the
    margin keeps spheres around mask voxels from wrapping around the periodic FFT grid.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (I, J, K)
    margin : sequence of 3 int
        Extra voxels on each side of the bounding box (may extend beyond the array: the
        extension is zero).
    """

    def __init__(self, mask, margin):
        idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
               for ax in range(3)]
        self.lo = tuple(int(i[0]) for i in idx)
        self.hi = tuple(int(i[-1]) + 1 for i in idx)
        self.margin = tuple(int(m) for m in margin)
        self.array_shape = mask.shape
        self.shape = tuple(
            int(sfft.next_fast_len(h - lo + 2 * m, real=True))
            for lo, h, m in zip(self.lo, self.hi, self.margin)
        )
        self.src = tuple(slice(lo, h) for lo, h in zip(self.lo, self.hi))
        self.dst = tuple(slice(m, m + h - lo) for lo, h, m in zip(self.lo, self.hi, self.margin))
        self.workers = fft_workers()

    def crop(self, x, dtype):
        """``x`` on the box (zero outside the bounding box), as ``dtype``."""
        out = np.zeros(self.shape, dtype=dtype)
        out[self.dst] = x[self.src]
        return out

    def uncrop(self, y, fill=0):
        """``y`` (box) back on the array grid; outside the bounding box ``fill``."""
        out = np.full(self.array_shape, fill, dtype=y.dtype)
        out[self.src] = y[self.dst]
        return out

    def rfft(self, x):
        return sfft.rfftn(x, workers=self.workers)

    def irfft(self, x):
        return sfft.irfftn(x, s=self.shape, workers=self.workers)

    def ball(self, voxel_size, radius, dtype):
        """Spectrum of the spherical-mean kernel of ``radius`` mm, and its smallest weight.

        The kernel's support is the set of voxels whose centre lies within ``radius`` of the
        centre voxel (``r^2 <= radius^2``, as :func:`chimap.kernels.smv_kernel`), centred at
        voxel (0, 0, 0) with periodic wrap; see :func:`ball_weights` for the weights.

        Returns
        -------
        spectrum : numpy.ndarray
            Real array of the rfft half-spectrum shape, ``S(0) = 1``.
        min_weight : float
            Smallest kernel weight (weights sum to 1), for :meth:`erode`.
        """
        offsets, weights = ball_weights(voxel_size, radius)
        if np.any(np.abs(offsets).max(axis=0) * 2 + 1 > np.asarray(self.shape)):
            raise ValueError(f"a sphere of radius {radius} mm does not fit in the FFT box")
        ball = np.zeros(self.shape, dtype=np.float64)
        ball[tuple((offsets % np.asarray(self.shape)).T)] = weights
        spec = sfft.rfftn(ball, workers=self.workers).real
        return spec.astype(dtype, copy=False), float(weights.min())

    def erode(self, mask_spectrum, ball_spectrum, min_weight):
        """Voxels (box grid) whose whole sphere lies inside the mask, from ``rfft(mask)``."""
        mean = self.irfft(mask_spectrum * ball_spectrum)
        return mean > 1.0 - 0.5 * min_weight


def ball_weights(voxel_size, radius):
    """Voxel offsets and weights of the spherical mean value kernel (anisotropic grids).

    The support holds the voxels whose centre is within ``radius`` mm of the centre. With
    equal weights the sampled ball of an anisotropic grid has unequal second moments
    (``sum w x_a^2`` differs between axes), so its mean of a harmonic quadratic such as
    ``x^2 - z^2`` is not the centre value and harmonic background fields leak through at the
    percent level. The weights are therefore ``1 + c . (x^2, y^2, z^2)``, with ``c`` the
    correction that makes the three second moments equal without changing the sum, then
    normalised to sum 1 (on isotropic grids ``c = 0``: the plain ball). The weights stay
    positive for the radii chimap accepts (a radius of at least the largest voxel size).

    Returns
    -------
    offsets : numpy.ndarray of int, shape (N, 3)
        Voxel offsets from the centre.
    weights : numpy.ndarray of float64, shape (N,)
        Positive weights summing to 1.
    """
    vs = np.asarray(voxel_size, dtype=np.float64)
    ext = [int(np.floor(radius / d + 1e-9)) for d in vs]
    grids = np.meshgrid(*[np.arange(-e, e + 1) for e in ext], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    pos = offsets * vs
    inside = (pos * pos).sum(axis=1) <= radius * radius
    offsets, pos = offsets[inside], pos[inside]
    q = pos * pos
    a = np.zeros((4, 4))
    a[:3, :3] = q.T @ q
    a[:3, 3] = -1.0
    a[3, :3] = q.sum(axis=0)
    try:
        c = np.linalg.solve(a, np.concatenate([-q.sum(axis=0), [0.0]]))[:3]
    except np.linalg.LinAlgError:  # degenerate (a single voxel): no correction
        c = np.zeros(3)
    weights = 1.0 + q @ c
    if weights.min() <= 0.1:  # keep every weight clearly positive (never reached in practice)
        weights = np.ones(len(q))
    return offsets, weights / weights.sum()


def _dot(u, v):
    """Real inner product without BLAS (threaded BLAS level-1 calls are slow on few cores)."""
    return float(np.einsum("i,i->", u.ravel(), v.ravel()))


def conjugate_gradient(apply_a, b, *, x0=None, tol=1e-6, max_iter=100, precondition=None,
                       inner=None):
    """Preconditioned conjugate gradient for a symmetric positive (semi)definite operator.

    Parameters
    ----------
    apply_a : callable
        ``x -> A x`` on arrays shaped like ``b``.
    b : numpy.ndarray
        Right-hand side.
    x0 : numpy.ndarray, optional
        Initial guess (default zero).
    tol : float
        Stop when the residual ``||b - A x|| <= tol * ||b||``.
    max_iter : int
        Maximum number of iterations.
    precondition : callable, optional
        ``r -> M^-1 r`` (symmetric positive definite).
    inner : callable, optional
        Inner product (default ``np.vdot`` on the flattened arrays).

    Returns
    -------
    x : numpy.ndarray
    info : dict
        ``iterations``, ``residual`` (relative, ``||r|| / ||b||``) and ``converged``.
    """
    dot = inner or _dot
    bnorm = np.sqrt(dot(b, b))
    if x0 is None:
        x = np.zeros_like(b)
        r = b.copy()
    else:
        x = x0.copy()
        r = b - apply_a(x)
    if bnorm == 0:
        return np.zeros_like(b), {"iterations": 0, "residual": 0.0, "converged": True}
    z = precondition(r) if precondition else r
    p = z.copy()
    rz = dot(r, z)
    rel = np.sqrt(dot(r, r)) / bnorm
    it = 0
    while rel > tol and it < max_iter:
        ap = apply_a(p)
        pap = dot(p, ap)
        if pap <= 0:
            break
        step = rz / pap
        x += step * p
        r -= step * ap
        it += 1
        rel = np.sqrt(dot(r, r)) / bnorm
        if rel <= tol:
            break
        z = precondition(r) if precondition else r
        rz_new = dot(r, z)
        p *= rz_new / rz
        p += z
        rz = rz_new
    return x, {"iterations": it, "residual": float(rel), "converged": bool(rel <= tol)}
