"""Weak-harmonic TV dipole inversion: chi and a residual harmonic field fitted jointly.

Background field removal leaves a residual background field near the mask boundary, where
spheres do not fit (SHARP family) or where the decomposition is ill-conditioned (PDF, LBV).
That residual is harmonic inside the mask. Weak-harmonic QSM (Milovic et al., "Weak-harmonic
regularization for quantitative susceptibility mapping", MRM 2019;81:1399-1411) fits it
together with chi (linear data term here; the paper also has a nonlinear one)::

    chi, phi = argmin  1/2 || W (D chi + phi - f) ||_2^2  +  alpha * TV(chi)
                       +  beta/2 || M_h L phi ||_2^2

with ``L`` the 7-point Laplacian (1/mm^2), ``M_h`` the region where ``phi`` must be harmonic
(default: the mask), ``W`` the data weight (zero outside the mask). ADMM with three splits
(``z = G chi``, ``y = D chi + phi``, ``q = L phi``): the ``z``, ``y`` and ``q`` updates are
pointwise, and the joint ``(chi, phi)`` update is an exact 2 x 2 solve per frequency (the
operators ``D``, ``G^T G`` and ``L`` are all diagonal in k-space); 3 forward and 3 inverse
real FFTs per iteration (tv_admm: 2 + 2).
"""

from __future__ import annotations

import numpy as np

from ..kernels import dipole_kernel, laplacian_kernel
from . import _admm_kernels as K
from ._common import check_inversion_inputs, check_positive, check_weight, real_fft_pair
from .tv import DEFAULT_ALPHA

__all__ = ["DEFAULT_WH_BETA", "tv_admm_wh"]

#: Default harmonic penalty ``beta`` (field in ppm, Laplacian in ppm/mm^2); see :func:`tv_admm_wh`.
DEFAULT_WH_BETA = 100.0


def tv_admm_wh(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0),
               alpha=DEFAULT_ALPHA, beta=DEFAULT_WH_BETA, weight=None, harmonic_mask=None,
               max_iter=300, tol=5e-3, rho=None, mu=0.3, nu=None, pad_factor=1.5,
               isotropic=True, relax=1.0, refine_field=None, refine_every=15, refine_times=2,
               return_harmonic=False, return_info=False):
    """Weak-harmonic TV dipole inversion (Milovic et al. MRM 2019), linear data term, ADMM.

    Parameters
    ----------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm after (possibly incomplete) background removal. Values outside
        ``mask`` are ignored.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels where the field is fitted.
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes.
    alpha : float
        TV weight (> 0), as in :func:`chimap.invert.tv_admm`.
    beta : float
        Weight (> 0) of the harmonicity penalty ``beta/2 ||M_h L phi||^2`` (field in ppm,
        Laplacian in ppm/mm^2). Large ``beta``: ``phi`` is strictly harmonic in ``M_h``.
    weight : numpy.ndarray, shape (I, J, K), optional
        Data-fidelity weight, normalised to unit RMS in the mask (as in ``tv_admm``).
    harmonic_mask : numpy.ndarray of bool, shape (I, J, K), optional
        Where ``phi`` must be harmonic; default ``mask``. ``phi`` is free elsewhere.
    max_iter, tol, rho, mu, pad_factor, isotropic, relax
        As in :func:`chimap.invert.tv_admm` (``rho`` default ``100 * alpha``).
    nu : float, optional
        ADMM penalty of the split ``q = L phi``; default ``beta`` (it changes the speed of
        convergence, not the solution).
    refine_field : callable, optional
        ``refine_field(chi) -> local_field``: called with the current chi (input grid, ppm)
        every ``refine_every`` iterations, at most ``refine_times`` times, to replace the
        fitted field (same shape, ppm) while the ADMM state is kept, e.g. the boundary
        correction of LBV (:mod:`chimap.background.boundary`). The stopping test is suspended
        until the last refinement.
    refine_every, refine_times : int
        See ``refine_field``.
    return_harmonic : bool
        Also return ``phi``, the fitted residual harmonic field (ppm, zero outside ``mask``).
    return_info : bool
        Also return a dict with ``iterations``, ``converged`` and ``relative_change``.

    Returns
    -------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm, zero outside ``mask``, dtype of ``local_field`` (float64 for
        integer input); arbitrary mean.
    phi : numpy.ndarray, shape (I, J, K)
        Only with ``return_harmonic=True``.
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        As :func:`chimap.invert.tv_admm`; also for a non-positive ``beta`` or ``nu`` or a bad
        ``harmonic_mask``.
    """
    alpha = check_positive(alpha, "alpha")
    beta = check_positive(beta, "beta")
    rho = check_positive(rho, "rho", allow_none=True)
    nu = check_positive(nu, "nu", allow_none=True)
    mu = check_positive(mu, "mu")
    tol = check_positive(tol, "tol")
    max_iter = check_positive(max_iter, "max_iter", integer=True)
    field, mask, vs, b, dom = check_inversion_inputs(local_field, mask, voxel_size,
                                                     b0_direction, pad_factor)
    relax = float(relax)
    if not 0.0 < relax < 2.0:
        raise ValueError(f"relax must be in (0, 2), got {relax!r}")
    if harmonic_mask is None:
        hmask = mask
    else:
        hmask = np.asarray(harmonic_mask)
        if hmask.shape != mask.shape:
            raise ValueError(f"harmonic_mask shape {hmask.shape} does not match local_field "
                             f"shape {mask.shape}")
        if hmask.dtype != bool:
            if not np.issubdtype(hmask.dtype, np.number):
                raise ValueError("harmonic_mask must be boolean or numeric")
            hmask = hmask != 0
        if not hmask.any():
            raise ValueError("harmonic_mask is empty")
        if np.any(hmask & ~dom_box_mask(dom)):
            raise ValueError("harmonic_mask must lie inside the bounding box of mask")
    rho = 100.0 * alpha if rho is None else rho
    nu = beta if nu is None else nu
    w = check_weight(mask if weight is None else weight, mask, dom.dtype)

    dt = dom.dtype.type
    shape = dom.padded
    fft, ifft = real_fft_pair(shape, dom.dtype)

    d = dipole_kernel(shape, vs, b0_direction=b, real_fft=True, dtype=np.float64)
    lap = laplacian_kernel(shape, vs, real_fft=True, dtype=np.float64)  # <= 0
    e2 = -lap
    # joint (chi, phi) update: [[mu D^2 + rho E2, mu D], [mu D, mu + nu L^2]] [X, P] = [R1, R2]
    # with R1 = mu D T + rho S, R2 = mu T + nu L C (T = F(y - u2), S = F(G^T(z - u)),
    # C = F(q - u3)); closed-form 2 x 2 inverse, coefficients precomputed per frequency.
    a11 = mu * d * d + rho * e2
    a22 = mu + nu * e2 * e2
    det = mu * nu * d * d * e2 * e2 + rho * mu * e2 + rho * nu * e2 * e2 * e2
    det[0, 0, 0] = 1.0
    inv = 1.0 / det
    del det
    c = {
        "xt": mu * nu * d * e2 * e2 * inv,
        "xs": rho * a22 * inv,
        "xc": mu * nu * d * e2 * inv,
        "pt": mu * rho * e2 * inv,
        "ps": -mu * rho * d * inv,
        "pc": -a11 * nu * e2 * inv,
    }
    del a11, a22, inv
    for value in c.values():
        value[0, 0, 0] = 0.0
    c["pt"][0, 0, 0] = 1.0  # k = 0: chi mean undetermined (0); phi mean fitted to the data
    c = {k: v.astype(dom.dtype) for k, v in c.items()}
    d = d.astype(dom.dtype)
    lap = lap.astype(dom.dtype)
    del e2
    inv_h = (1.0 / vs).astype(np.float64)
    thr = alpha / rho

    f_pad = dom.pad(field)
    w2 = dom.pad(w * w)
    w2f = w2 * f_pad
    hb = dom.pad(hmask.astype(dom.dtype)) * dt(beta)
    zero = np.zeros(shape, dtype=dom.dtype)
    chi = np.zeros(shape, dtype=dom.dtype)
    prev = np.zeros(shape, dtype=dom.dtype)
    u = np.zeros((3,) + shape, dtype=dom.dtype)
    s = np.zeros((3,) + shape, dtype=dom.dtype)
    ets = np.zeros(shape, dtype=dom.dtype)
    u2 = np.zeros(shape, dtype=dom.dtype)
    t = np.where(w2 > 0, f_pad, dt(0))
    u3 = np.zeros(shape, dtype=dom.dtype)
    cq = np.zeros(shape, dtype=dom.dtype)
    del f_pad

    refine_every = check_positive(refine_every, "refine_every", integer=True)
    refine_times = int(refine_times) if refine_field is not None else 0
    if refine_field is not None and not callable(refine_field):
        raise ValueError("refine_field must be a callable chi -> local field")
    converged = False
    change = np.inf
    it = 0
    refined = 0
    phi_spec = None
    for it in range(1, max_iter + 1):
        K.grad_adjoint(s, ets, inv_h)
        ts, ss, cs = fft(t), fft(ets), fft(cq)
        xs = c["xt"] * ts
        xs += c["xs"] * ss
        xs += c["xc"] * cs
        phi_spec = c["pt"] * ts
        phi_spec += c["ps"] * ss
        phi_spec += c["pc"] * cs
        del ts, ss, cs
        chi = ifft(xs)
        change = K.relative_change(chi, prev)
        if refined < refine_times and (it % refine_every == 0 or change < tol):
            new_field = np.asarray(refine_field(dom.unpad(chi, mask)))
            if new_field.shape != mask.shape or not np.all(np.isfinite(new_field[mask])):
                raise ValueError("refine_field must return a finite field of the input shape")
            w2f = w2 * dom.pad(np.where(mask, new_field, 0).astype(dom.dtype))
            refined += 1
        elif change < tol:
            converged = True
            break
        K.grad_shrink_update(chi, u, s, inv_h, thr, bool(isotropic), relax)
        xs *= d
        xs += phi_spec
        K.fidelity_update(ifft(xs), w2f, w2, dt(mu), u2, t, relax)
        # q = nu (L phi + u3) / (beta M_h + nu): the same pointwise form with zero "data"
        K.fidelity_update(ifft(phi_spec * lap), zero, hb, dt(nu), u3, cq, relax)
    out = dom.unpad(chi, mask)
    extra = []
    if return_harmonic:
        extra.append(dom.unpad(ifft(phi_spec), mask))
    if return_info:
        extra.append({"iterations": it, "converged": converged, "relative_change": float(change)})
    return (out, *extra) if extra else out


def dom_box_mask(dom):
    """Boolean array of the input shape, True inside the computation box of ``dom``."""
    box = np.zeros(dom.shape, dtype=bool)
    box[dom.box] = True
    return box
