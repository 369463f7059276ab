"""iSMV: iterative spherical mean value method (Wen et al., MRM 2014;72:1065-1071).

Inside the mask eroded by a sphere (``M_r``) the background equals its own spherical mean,
``f_B = S f_B``; on the boundary layer ``mask - M_r`` it is taken equal to the total field
(the local field is assumed negligible there). The background is the fixed point of

    f_B <- M_r S f_B + (mask - M_r) f,        starting from f_B = f,

and ``local = f - f_B`` on ``M_r``; there is no deconvolution and no threshold. The original
fixed-point iteration converges slowly (the lowest spatial frequencies decay by
``S(k) ~ 1 - (2 pi k r)^2 / 10`` per step), so by default the same fixed point, the solution of
the symmetric positive definite system ``(1 - M_r S M_r) u = M_r S (mask - M_r) f``, is
reached by conjugate gradient; ``method="fixed_point"`` runs the original iteration.
"""

from __future__ import annotations

import numpy as np

from ._common import (
    FFTBox,
    check_inputs,
    check_radius,
    conjugate_gradient,
    empty_erosion_error,
    finish,
    sphere_fits,
)
from .sharp import _margin

__all__ = ["ismv"]

#: Default iSMV radius (mm).
ISMV_RADIUS_MM = 5.0


def ismv(total_field, mask, voxel_size, *, radius=ISMV_RADIUS_MM, tol=1e-4, max_iter=500,
         method="cg"):
    """iSMV background field removal (Wen et al. 2014).

    Parameters
    ----------
    total_field : numpy.ndarray, shape (I, J, K)
        Total (unwrapped) field in ppm; only values inside ``mask`` are read.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Region of interest (brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    radius : float
        Sphere radius in mm (default 5 mm; at least the largest voxel size). It is also the
        thickness of the boundary layer where the background is taken from the total field.
    tol : float
        Stopping tolerance, relative to the norm of the field on ``M_r``: the residual of the
        fixed-point equation (``method="cg"``) or the change between two iterates
        (``method="fixed_point"``, the original criterion). Default 1e-4.
    max_iter : int
        Maximum number of iterations (default 500).
    method : {"cg", "fixed_point"}
        How the fixed point is reached (see the module docstring).

    Returns
    -------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm inside ``valid_mask``, 0 outside; dtype of ``total_field``.
    valid_mask : numpy.ndarray of bool, shape (I, J, K)
        ``mask`` eroded by the sphere.

    Raises
    ------
    ValueError
        As :func:`chimap.background.sharp`; also for an unknown ``method``.
    """
    f, m, vs = check_inputs(total_field, mask, voxel_size)
    radius = check_radius(radius, vs)
    if method not in ("cg", "fixed_point"):
        raise ValueError(f"method must be 'cg' or 'fixed_point', got {method!r}")
    if not (0 < float(tol) < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter!r}")
    work = np.float32 if f.dtype == np.float32 else np.float64
    if not sphere_fits(m, vs, radius):
        raise empty_erosion_error(radius)
    box = FFTBox(m, _margin(vs, radius))
    s, wmin = box.ball(vs, radius, np.float64)
    mb = box.crop(m, bool)
    inner = box.erode(box.rfft(mb.astype(np.float64)), s, wmin)
    if not inner.any():
        raise empty_erosion_error(radius)
    s = s.astype(work)
    fb = box.crop(np.where(m, f, 0), np.float64)
    boundary = np.where(mb & ~inner, fb, 0)

    def smv(x):
        return box.irfft(box.rfft(x.astype(work, copy=False)) * s).astype(np.float64, copy=False)

    scale = float(np.linalg.norm(fb[inner]))
    if method == "cg":
        rhs = np.where(inner, smv(boundary), 0)

        def op(u):
            return u - np.where(inner, smv(u), 0)

        u0 = np.where(inner, fb, 0)
        # stop on ||r|| <= tol * ||f on M_r||, expressed relative to ||rhs|| for the solver
        rel = float(tol) * scale / max(float(np.linalg.norm(rhs)), 1e-300)
        u, _ = conjugate_gradient(op, rhs, x0=u0, tol=min(rel, 0.5), max_iter=int(max_iter))
        background = u + boundary
    else:
        background = fb.copy()
        for _ in range(int(max_iter)):
            new = np.where(inner, smv(background), 0) + boundary
            change = float(np.linalg.norm((new - background)[inner]))
            background = new
            if change <= float(tol) * scale:
                break
    local = np.where(inner, fb - background, 0)
    return finish(box.uncrop(local), box.uncrop(inner, False), f.dtype)
