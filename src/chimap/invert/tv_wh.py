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
real FFTs per iteration (tv_admm: 2 + 2), four of them pruned to the mask's box, where the
``y`` and ``q`` splits are computed (:class:`chimap.invert._common.DataSplitRegion`; ``M_h``
lies in the box). ``benchmarks/bench_box_split.py`` times it against the whole-grid splits.

What the field cannot tell
--------------------------
A susceptibility whose field is harmonic inside the mask cannot be told from a background field
there: every ``chi`` with ``lap(chi) / 3 = (b . grad)^2 chi`` inside the mask, such as linear
ramps and the bowl ``r^2`` (``tests/test_forward.py``). Background removal takes its field out,
and ``phi`` absorbs it at no cost whatever ``beta``, so the data leave these components of chi
free and the prior sets them; TV flattens them (on the simulated head, the TV of the true chi
falls steadily as a bowl ``-c r^2`` is added, up to 12 ppb at 70 mm, the most tried). Measured on the simulated 3D-EPI head (1 x 1
x 2 mm, noise-free fields, the ``chimap invert`` defaults; true white/grey matter -19.5/9.5 ppb;
the least-squares ``r^2`` component of the error, from the mask's centre to 70 mm;
``benchmarks/harmonic_components.py``):

============================================  ==================  =============
input, inversion                              white/grey (ppb)    bowl (ppb)
============================================  ==================  =============
true local field, TV (``tv_admm``)            -17.9 / 8.6         -2.3
true local field, this function               -14.4 / 6.5         -7.3
LBV of the true total field, TV               -11.8 / 5.2         -11.2
LBV of the true total field, this function    -11.8 / 5.4         -7.2
============================================  ==================  =============

So about 40 % of the white/grey contrast is lost with the harmonic part of the local field,
by any background removal, and ``beta`` cannot bring it back (``beta`` = 1e4: -16.1 / 7.2 on
the true local field, bowl about the same). Nor can the data choose ``beta``: on each of the
nine 2 mm heads of ``benchmarks/bench_pipeline.py --cases robustness``, the held-out field error
of the automatic ``alpha`` was smallest at the freest ``phi`` (``beta`` = 100, against 1e6 and
3e6 times ``alpha``), whatever the accuracy of chi.
"""

from __future__ import annotations

import numpy as np

from ..kernels import dipole_kernel, laplacian_kernel
from . import _admm_kernels as K
from ._common import (DataSplitRegion, check_inversion_inputs, check_positive, check_weight,
                      padded_gradient_weight, real_fft_pair)
from .autoreg import parse_alpha, warm_sweep
from .tv import DEFAULT_ALPHA, DEFAULT_CRITERION

__all__ = ["DEFAULT_WH_BETA", "tv_admm_wh"]

#: Default harmonic penalty ``beta`` (field in ppm, Laplacian in ppm/mm^2); see :func:`tv_admm_wh`.
DEFAULT_WH_BETA = 100.0


def tv_admm_wh(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0),
               alpha=DEFAULT_ALPHA, beta=DEFAULT_WH_BETA, weight=None, gradient_weight=None, harmonic_mask=None,
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
    alpha : float or str
        TV weight (> 0), or ``"auto"`` / ``"auto:<criterion>"``, as in
        :func:`chimap.invert.tv_admm`. The automatic sweep fits the given field (no
        ``refine_field`` refinement); the cross-validated prediction includes the fitted
        harmonic field.
    beta : float
        Weight (> 0) of the harmonicity penalty ``beta/2 ||M_h L phi||^2`` (field in ppm,
        Laplacian in ppm/mm^2). Large ``beta``: ``phi`` is strictly harmonic in ``M_h``.
    weight : numpy.ndarray, shape (I, J, K), optional
        Data-fidelity weight, normalised to unit RMS in the mask (as in ``tv_admm``).
    gradient_weight : numpy.ndarray, shape (I, J, K), optional
        Per-voxel weight (>= 0) of the TV term, ``alpha * sum_i g_i |(G x)_i|``: e.g. the
        morphology prior :func:`chimap.invert.edges.magnitude_edge_weight` (MEDI's edge mask,
        0 on the magnitude's edges). Used inside the mask; 1 outside it. None: uniform.
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
        See ``refine_field``. After an automatic ``alpha`` the final solve starts from the
        sweep's solution at the best weight and refines every ``min(refine_every,
        WARM_REFINE_EVERY)`` iterations (chi is already close to its final value).
    return_harmonic : bool
        Also return ``phi``, the fitted residual harmonic field (ppm, zero outside ``mask``).
    return_info : bool
        Also return a dict with ``iterations``, ``converged`` and ``relative_change``; with an
        automatic ``alpha`` also ``alpha`` and ``alpha_selection`` (as in ``tv_admm``).

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
    alpha, criterion = parse_alpha(alpha)
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
    w = check_weight(mask if weight is None else weight, mask, dom.dtype)
    refine_every = check_positive(refine_every, "refine_every", integer=True)
    refine_times = int(refine_times) if refine_field is not None else 0
    if refine_field is not None and not callable(refine_field):
        raise ValueError("refine_field must be a callable chi -> local field")

    state = _TVWH(field, mask, vs, b, dom, w, beta=beta, hmask=hmask, mu=mu, nu=nu,
                  isotropic=isotropic, relax=relax, tv_weight=padded_gradient_weight(gradient_weight, mask, dom))
    selection = None
    if criterion is not None:
        # the sweep fits the given field (no boundary refinement)
        alpha, selection = warm_sweep(state, field, mask, vs, b0_direction=b, weight=w, rho=rho, tol=tol,
                                      pad_factor=pad_factor,
                                      criterion=DEFAULT_CRITERION if criterion == "default" else criterion)
    state.set_alpha(alpha, 100.0 * alpha if rho is None else rho)
    if selection is not None:
        refine_every = min(refine_every, WARM_REFINE_EVERY)
    it, converged, change = state.run(max_iter, tol, refine_field=refine_field,
                                      refine_every=refine_every, refine_times=refine_times)
    out = state.chi_out()
    extra = []
    if return_harmonic:
        extra.append(state.phi_out())
    if return_info:
        info = {"iterations": it, "converged": converged, "relative_change": float(change)}
        if selection is not None:
            info["alpha"] = alpha
            info["alpha_selection"] = selection
        extra.append(info)
    return (out, *extra) if extra else out


#: Refinement interval of the final solve after a warm-started sweep (``alpha="auto"``).
WARM_REFINE_EVERY = 5


class _TVWH:
    """The weak-harmonic TV-ADMM iteration state on the padded grid (private); like
    :class:`chimap.invert.tv._TVADMM`, :meth:`set_alpha` changes the TV weight and its ADMM
    penalty and keeps the iterates, for warm-started sweeps over ``alpha``."""

    #: The iterates that define the state (copied by :func:`.autoreg.snapshot_state`).
    ITERATES = ("chi", "prev", "u", "s", "u2", "t", "u3", "cq", "phi_spec", "model", "model_spec", "lap_model",
                "lap_spec")

    def __init__(self, field, mask, vs, b, dom, w, *, beta, hmask, mu, nu, isotropic, relax, tv_weight=K.UNIFORM):
        self.mask, self.vs, self.dom = mask, vs, dom
        self.tv_weight = tv_weight
        self.mu, self.nu = mu, beta if nu is None else nu
        self.isotropic, self.relax = bool(isotropic), relax
        dt = dom.dtype.type
        shape = dom.padded
        self.fft, self.ifft = real_fft_pair(shape, dom.dtype)
        self.d64 = dipole_kernel(shape, vs, b0_direction=b, real_fft=True, dtype=np.float64)
        self.lap64 = laplacian_kernel(shape, vs, real_fft=True, dtype=np.float64)  # <= 0
        self.d = self.d64.astype(dom.dtype)
        self.lap = self.lap64.astype(dom.dtype)
        self.inv_h = (1.0 / vs).astype(np.float64)
        # both splits (y = D chi + phi, q = L phi) live on the mask's box (DataSplitRegion)
        self.split = split = DataSplitRegion(dom, relax)
        self.w2 = dom.pad(w * w)
        self.set_field(dom.pad(field))
        self.hb = split.crop(dom.pad(hmask.astype(dom.dtype))) * dt(beta)
        self.zero = split.zeros()
        self.chi = np.zeros(shape, dtype=dom.dtype)
        self.prev = np.zeros(shape, dtype=dom.dtype)
        self.u = np.zeros((3,) + shape, dtype=dom.dtype)
        self.s = np.zeros((3,) + shape, dtype=dom.dtype)
        self.ets = np.zeros(shape, dtype=dom.dtype)
        self.u2 = split.zeros()
        self.t = np.where(self.w2_fid > 0, self.f_fid, dt(0))
        self.u3 = split.zeros()
        self.cq = split.zeros()
        self.phi_spec = None
        # D chi + phi and L phi of the last split update: on the region and their spectra
        self.model, self.model_spec = split.zeros(), None
        self.lap_model, self.lap_spec = split.zeros(), None
        # per-frequency coefficients of the joint (chi, phi) update, filled by set_alpha
        self.c = {k: np.empty(self.d64.shape, dtype=dom.dtype) for k in ("xt", "xs", "xc", "pt", "ps", "pc")}
        self.alpha = self.rho = None

    def set_field(self, f_pad):
        """Replace the local field (padded grid)."""
        self.f_pad = f_pad
        self.f_fid, self.w2_fid, self.w2f_fid = self.split.crop_data(f_pad, self.w2)

    def set_weight(self, w):
        """Replace the data weight (input grid, zero outside the mask)."""
        self.w2 = self.dom.pad(np.where(self.mask, w, 0) ** 2)
        self.set_field(self.f_pad)

    def set_alpha(self, alpha, rho):
        """Set the TV weight and the ADMM penalty of the gradient split; rebuilds the 2 x 2
        per-frequency inverse of the joint (chi, phi) update, keeps the iterates."""
        # joint (chi, phi) update: [[mu D^2 + rho E2, mu D], [mu D, mu + nu L^2]] [X, P] = [R1, R2]
        # with R1 = mu D T + rho S, R2 = mu T + nu L C (T = F(y - u2), S = F(G^T(z - u)),
        # C = F(q - u3)); closed-form 2 x 2 inverse, coefficients per frequency (numba, float64)
        c = self.c
        K.wh_coefficients(self.d64, -self.lap64, float(self.mu), float(self.nu), float(rho),
                          c["xt"], c["xs"], c["xc"], c["pt"], c["ps"], c["pc"])
        self.alpha, self.rho = float(alpha), float(rho)

    def run(self, max_iter, tol, *, refine_field=None, refine_every=15, refine_times=0):
        """At most ``max_iter`` iterations (see :func:`tv_admm_wh` for the refinement);
        returns ``(iterations, converged, relative_change)``."""
        dt = self.dom.dtype.type
        fft, ifft, c, dom, mask = self.fft, self.ifft, self.c, self.dom, self.mask
        thr = self.alpha / self.rho
        converged = False
        change = np.inf
        it = 0
        refined = 0
        for it in range(1, max_iter + 1):
            K.grad_adjoint(self.s, self.ets, self.inv_h)
            ss = fft(self.ets)
            ts = self.split.spectrum(self.t, self.model, self.model_spec)
            cs = self.split.spectrum(self.cq, self.lap_model, self.lap_spec)
            xs = np.empty_like(ts)
            if self.phi_spec is None or self.phi_spec.shape != ts.shape:
                self.phi_spec = np.empty_like(ts)
            phi_spec = self.phi_spec
            K.wh_joint_update(ts, ss, cs, c["xt"], c["xs"], c["xc"], c["pt"], c["ps"], c["pc"], xs, phi_spec)
            del ts, ss
            self.chi = ifft(xs)
            change = K.relative_change(self.chi, self.prev)
            if refined < refine_times and (it % refine_every == 0 or change < tol):
                new_field = np.asarray(refine_field(dom.unpad(self.chi, mask)))
                if new_field.shape != mask.shape or not np.all(np.isfinite(new_field[mask])):
                    raise ValueError("refine_field must return a finite field of the input shape")
                self.set_field(dom.pad(np.where(mask, new_field, 0).astype(dom.dtype)))
                refined += 1
            elif change < tol:
                converged = True
                break
            K.grad_shrink_update(self.chi, self.u, self.s, self.inv_h, thr, self.isotropic, self.relax,
                                 self.tv_weight)
            K.wh_field_spectra(xs, phi_spec, self.d, self.lap, xs, cs)  # xs <- D chi + phi, cs <- L phi
            self.model_spec, self.lap_spec = xs, cs
            self.model, self.lap_model = self.split.field(xs), self.split.field(cs)
            K.fidelity_update(self.model, self.w2f_fid, self.w2_fid, dt(self.mu), self.u2, self.t, self.relax)
            # q = nu (L phi + u3) / (beta M_h + nu): the same pointwise form with zero "data"
            K.fidelity_update(self.lap_model, self.zero, self.hb, dt(self.nu), self.u3, self.cq, self.relax)
            del xs, cs
        return it, converged, change

    def chi_out(self):
        """The current chi on the input grid, zero outside the mask."""
        return self.dom.unpad(self.chi, self.mask)

    def phi_out(self):
        """The current residual harmonic field on the input grid, zero outside the mask."""
        return self.dom.unpad(self.ifft(self.phi_spec), self.mask)

    def measures(self):
        """``(data, regulariser, predicted_field)``: ``sum W^2 (D chi + phi - f)^2`` and
        ``TV(chi)`` on the padded grid (the harmonic penalty is not counted), and the model's
        field ``D chi + phi`` on the input grid, zero outside the mask (ppm)."""
        from .autoreg import solver_costs

        spec = self.fft(self.chi)
        spec *= self.d
        if self.phi_spec is not None:
            spec += self.phi_spec
        pred = self.ifft(spec)
        data, reg = solver_costs(self.chi, self.f_pad, None, self.vs, w2=self.w2,
                                 isotropic=self.isotropic, predicted_pad=pred,
                                 gradient_weight_pad=self.tv_weight)
        return data, reg, self.dom.unpad(pred, self.mask)


def dom_box_mask(dom):
    """Boolean array of the input shape, True inside the computation box of ``dom``."""
    box = np.zeros(dom.shape, dtype=bool)
    box[dom.box] = True
    return box
