"""Dipole inversions with a nonlinear (complex-exponential) data term: FANSI nlTV and NDI.

References
----------
Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear susceptibility
inversion with variational regularization. MRM 2018;80:814-821 (FANSI nonlinear TV, "nlTV").
Polak D, Chatnuntawech I, Yoon J, et al. Nonlinear dipole inversion (NDI) enables robust
quantitative susceptibility mapping (QSM). NMR Biomed 2020;33:e4271.

Data term and phase scale
-------------------------
Both methods fit the complex signal phase rather than the field: with ``s`` the phase scale
(rad per ppm of field, ``s = 2 pi gamma_bar B0 TE``), ``f`` the local field (ppm) and ``W`` the
data weight, the data term in chimap's units (field in ppm) is::

    F(chi) = 1/(2 s^2) || W (exp(i s D chi) - exp(i s f)) ||_2^2
           = sum  W^2 (1 - cos(s (D chi - f))) / s^2

The ``1/s^2`` keeps the meaning of the weights of the linear methods: as ``s -> 0``,
``F -> 1/2 || W (D chi - f) ||^2``, the data term of :func:`chimap.invert.tv_admm`, so the
linear methods are recovered exactly in that limit, and ``alpha`` means the same thing in both.
For ``s > 0`` a voxel whose phase residual ``s (D chi - f)`` is large (noise, a vein, an error
of the local field) weighs less than in the quadratic term, and phase differences of ``2 pi``
cost nothing. Default ``s``: :data:`DEFAULT_PHASE_SCALE`, 3 T and TE 20 ms (16.05 rad/ppm);
:func:`rad_per_ppm` gives it for other protocols (for a multi-echo field, a representative
echo time, e.g. the mean). Where ``W = 0`` (outside the mask, in the padding) the field is not
fitted and chi is free; it is set to 0 on output.

nlTV (FANSI, Milovic 2018)
--------------------------
``chi = argmin F(chi) + alpha TV(chi)`` (TV of the physical gradient, ppm/mm; isotropic by
default). ADMM with the splits ``z = G chi`` (soft thresholding) and ``z2 = D chi``; the
``z2`` update is the pointwise problem ``min (W^2/s^2)(1 - cos(s (z2 - f))) +
mu/2 (z2 - D chi - u2)^2`` solved by Newton's method as in the paper, and the chi update is a
k-space division as in the linear weighted TV (4 real FFTs per iteration). ``alpha`` defaults to
chimap's linear-TV weight :data:`chimap.invert.DEFAULT_ALPHA` (3e-4), which means the same thing
here (see above); the FANSI toolbox gives no default (its ``alpha1`` refers to a phase in rad
and per-voxel differences: ``alpha1 = alpha * s / h`` for isotropic voxels of ``h`` mm and a
weight of unit RMS). ``rho = 100 alpha`` is FANSI's rule (mu1 = 100 alpha1).

Deviations from the paper / FANSI toolbox, and the defaults chosen here (simulated head,
``simulate_head(voxel_size=1.5, snr=None, rng=0)``, true local field + 1 ppb white noise,
brain mask eroded by 2 voxels, NRMSE in %):

- the data term is divided by ``s^2`` (above), so ``alpha`` and ``mu`` are in field units;
- ``mu = 1`` is FANSI's mu2; chimap's linear ``tv_admm`` uses 0.3, which converges faster
  in the linear regime (NRMSE 21.4 / 21.9 / 21.1 after 30 / 100 / 200 iterations, against
  23.8 / 22.3 / 21.6 with ``mu = 1``) but repairs wrong-branch voxels slowly: with 1 % of the
  voxels of a test field offset by ``2 pi / s`` (phase wraps), chi after the default
  iterations was 19 % (NRMSE) away from the unwrapped result with 0.3 and 0.5 % with 1;
- ``max_iter = 100`` (FANSI: 150) and ``tol = 5e-3`` (FANSI: 0.1 %): the relative change of
  the nonlinear ADMM oscillates (9e-3 after 100 iterations, 5e-3 after about 190) while the
  NRMSE moves by less than one point after 50 iterations; 100 iterations take 70 s of CPU
  time for a 1 mm head (about 40 s on 2 free cores);
- isotropic TV by default (FANSI's nlTV shrinks each difference separately:
  ``isotropic=False``); the weight is normalised to unit RMS in the mask (as in ``tv_admm``;
  FANSI: the magnitude divided by its maximum);
- the Newton iteration runs per voxel until its own step is below 1e-6 rad or
  ``newton_iter`` steps (FANSI: a global relative norm, at most 50 steps), with its curvature
  floored at ``mu`` (a descent step where the data term is locally concave, which only happens
  where ``W^2 > mu`` and the phase residual exceeds ``acos(-mu / W^2)``);
- the ADMM starts from ``z2 = f``, ``u2 = 0`` (as ``tv_admm``, whose iterates are recovered
  for ``s -> 0``; FANSI: ``z2 = W^2 f / (W^2 + mu)``). The problem is not convex, and the start
  selects the phase branch: ``z2 = f`` starts on the branch of the given (unwrapped) field
  (isolated voxels off by ``2 pi / s`` are then pulled back by the regularised fit), whereas starting from the data prox at ``z2 = 0`` (which sees the field
  only through ``exp(i s f)``) re-wraps fields beyond ``pi / s`` (veins) and, with ``mu = 1``,
  ended at 36 % NRMSE on the 1.5 mm head.

NDI (Polak 2020)
----------------
Gradient descent on ``E(chi) = 2 F(chi) + alpha ||chi||^2``, i.e.
``(1/s^2) ||W (exp(i s D chi) - exp(i s f))||^2 + alpha ||chi||^2`` (the paper's functional
divided by ``s^2``; Tikhonov on chi as in the paper)::

    chi <- chi - step * (2/s D^T (W^2 sin(s (D chi - f))) + 2 alpha chi)

from ``chi = 0``. In rad units (``chi_rad = s chi``) this is exactly the paper's iteration
with the same ``step`` and ``alpha``, for any ``s``; for ``s -> 0`` it is the Landweber
iteration of the linear problem. The regulariser is mostly early stopping (the paper's point).
Defaults: ``step = 1`` and a stop when the relative change of the gradient
``||g_k - g_(k-1)|| / ||g_k||`` falls below ``tol = 0.5 %`` (the authors' script for
single-orientation data, NDI_Toolbox ``script_ndi.m``); ``alpha = 1e-5`` and at most
``max_iter = 100`` iterations (FANSI toolbox ``ndi.m`` by co-author Milovic: 100 iterations of
its step 2 on half the gradient, the same iteration; the authors' script allows 200). The
weight is normalised to a maximum of 1 (FANSI: magnitude / max), which keeps ``step = 1``
stable for any weight (stable for ``step < 1 / (4/9 + alpha)``).

Measured on the simulated head (true local field + 1 ppb, mask eroded by 2 voxels; NRMSE %):
the gradient-change test does not stop the iteration before 100 (about 1.3 % then, 0.5 % after
about 230 iterations). With ``weight=None`` the NRMSE is lowest after about 50 iterations and
then rises (semi-convergence); with the magnitude it flattens after 100-200: at 1.5 mm, 50.5 / 52.5 / 56.9 after 50 / 100 / 200 iterations with
``weight=None`` and 51.2 / 48.3 / 47.5 with the magnitude as weight, TKD(0.2) 53.6; at 1 mm,
53.2 / 54.8 / 57.7 (magnitude: 54.6 / 53.6 / 54.4), TKD 51.1, i.e. no better than TKD there.
The nonlinearity itself costs accuracy on these data (veins and calcifications reach phases
beyond pi/2 at TE 20 ms, where the sine saturates or turns): in the linear limit the same
iteration gives 45.2 (1.5 mm) and 43.1 (1 mm) after 100 iterations. With no regulariser but
the tiny ``alpha`` and the field free outside the mask, the iteration tends to a minimum-norm
fit that misses the near-cone content of large uniform sources (a 10 mm sphere keeps about
61 % of its contrast however long it runs).

Deviations: the iterate is kept in k-space (one forward and one inverse real FFT per
iteration, both pruned to the mask's bounding box: the inverse gives ``D chi`` there only, where
it is used, and the forward transforms the residual, zero outside the box,
and the step writes the next ``D chi`` spectrum in the same pass); the weight is zero outside
the mask (chimap's convention, as in ``tv_admm``: the field is not fitted there), while the
authors' script weights the whole field of view with the magnitude and FANSI's ``ndi.m`` with
1, i.e. fit a zero field outside the mask (on the simulated head that is worse: 63 % NRMSE at
1.5 mm after 100 iterations).
"""

from __future__ import annotations

import numpy as np

from ..kernels import dipole_kernel
from ..units import ppm_to_rad
from . import _nonlinear_kernels as NK
from ._common import box_irfft, box_rfft, check_inversion_inputs, check_positive, check_weight
from ._holdout import draw_held_out, parse_iteration_count, past_minimum, selection_record
from .autoreg import parse_alpha, warm_sweep
from .tv import DEFAULT_ALPHA, DEFAULT_CRITERION, _TVADMM

__all__ = ["DEFAULT_NDI_ALPHA", "DEFAULT_PHASE_SCALE", "NDI_AUTO_MAX_ITER", "ndi", "nltv", "rad_per_ppm"]

#: Newton steps stop below this phase change (rad).
_NEWTON_TOL_RAD = 1e-6


def rad_per_ppm(field_strength: float = 3.0, echo_time: float = 0.02) -> float:
    """Phase (rad) accrued at ``echo_time`` (s) by a field of 1 ppm at ``field_strength`` (T):
    ``2 pi gamma_bar B0 TE * 1e-6``, the ``phase_scale`` of :func:`nltv` and :func:`ndi`."""
    return float(ppm_to_rad(1.0, echo_time=echo_time, field_strength=field_strength))


#: Default phase scale (rad/ppm): 3 T, TE 20 ms, 16.05 rad/ppm.
DEFAULT_PHASE_SCALE = rad_per_ppm(3.0, 0.02)

#: Default Tikhonov weight of :func:`ndi` (FANSI toolbox ``ndi.m``).
DEFAULT_NDI_ALPHA = 1e-5

#: ``ndi(max_iter="auto")``: most iterations cross-validated (the authors' script allows 200),
#: the fraction of voxels held out, and how many steps past the held-out minimum to look.
NDI_AUTO_MAX_ITER = 200
NDI_AUTO_HOLDOUT = 0.1
NDI_AUTO_PATIENCE = 25


def _nonlinear_setup(local_field, mask, voxel_size, b0_direction, pad_factor, weight, phase_scale,
                     normalise):
    """Validate the inputs shared by the nonlinear inversions.

    Returns ``(mask, vs, b, dom, w, field, scale)``: the data weight ``w`` and the field on the
    input grid (both zero outside the mask), the phase scale ``scale`` (rad/ppm). ``normalise``
    is ``"rms"`` (unit RMS in the mask) or ``"max"`` (maximum 1).
    """
    scale = check_positive(phase_scale, "phase_scale")
    field, mask, vs, b, dom = check_inversion_inputs(local_field, mask, voxel_size, b0_direction,
                                                     pad_factor)
    w = check_weight(mask if weight is None else weight, mask, dom.dtype)
    if normalise == "max":
        w = w / w.max()
    return mask, vs, b, dom, w, field, scale


def nltv(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), weight=None,
         alpha=DEFAULT_ALPHA, phase_scale=DEFAULT_PHASE_SCALE, rho=None, mu=1.0, max_iter=100,
         tol=5e-3, isotropic=True, newton_iter=10, pad_factor=1.5, return_info=False):
    """Nonlinear-fidelity total-variation dipole inversion (FANSI nlTV, Milovic et al. 2018).

    ``chi = argmin 1/(2 s^2) ||W (exp(i s D chi) - exp(i s f))||^2 + alpha TV(chi)`` by ADMM
    (module docstring: units, defaults and deviations from the paper).

    Parameters
    ----------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm of B0. Values outside ``mask`` are ignored (they may be NaN).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels where the field is fitted (usually the eroded brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm (anisotropic allowed: gradients in ppm/mm).
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes (unit vector after normalisation; oblique allowed).
    weight : numpy.ndarray, shape (I, J, K), optional
        Data weight ``W`` (e.g. the magnitude), non-negative, used inside the mask only and
        normalised to unit RMS there (as in :func:`chimap.invert.tv_admm`). None: 1 in the mask.
    alpha : float or str
        TV weight (> 0), field in ppm and gradients in ppm/mm; the same meaning as in
        ``tv_admm`` (default :data:`chimap.invert.DEFAULT_ALPHA` = 3e-4). ``"auto"`` chooses
        it from the data by hold-out cross-validation of the nonlinear fit (a warm-started
        sweep as in :func:`chimap.invert.tv_admm`; held-out residuals measured as the chord
        ``|exp(i s r) - 1| / s``, the residual of this data term); ``"auto:frequency"``,
        ``"auto:lcurve"`` and ``"auto:inflection"`` use the other criteria of
        :mod:`chimap.invert.autoreg`.
    phase_scale : float
        ``s`` (rad/ppm, > 0) that turns the field into phase, ``2 pi gamma_bar B0 TE``;
        default 3 T, TE 20 ms (:func:`rad_per_ppm`). ``s -> 0`` gives the linear weighted TV.
    rho : float, optional
        ADMM penalty of the gradient split; default ``100 * alpha`` (FANSI's mu1 rule).
    mu : float
        ADMM penalty of the field split ``z2 = D chi`` (> 0); FANSI's mu2 = 1 (default).
        Smaller values (``tv_admm``: 0.3) converge faster where the fit is linear but correct
        wrong-branch voxels more slowly.
    max_iter : int
        Maximum number of ADMM iterations (default 100; FANSI: 150).
    tol : float
        Stop when ``||chi_k - chi_(k-1)|| / ||chi_k|| < tol`` (FANSI: 1e-3).
    isotropic : bool
        Isotropic TV (default) or anisotropic TV (separate differences, as FANSI's nlTV).
    newton_iter : int
        Maximum Newton steps per voxel and ADMM iteration (steps stop below 1e-6 rad).
    pad_factor : float or sequence of 3 float
        The mask's bounding box is zero padded to at least this factor times its length.
    return_info : bool
        Also return a dict with ``iterations``, ``converged`` and ``relative_change``; with an
        automatic ``alpha`` also ``alpha`` and ``alpha_selection`` (as in ``tv_admm``).

    Returns
    -------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm, zero outside ``mask``, dtype of ``local_field`` (float64 for
        integer input); arbitrary mean.
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        Bad shapes, empty mask, NaN/inf in the mask, bad voxel size or B0 direction, a bad
        weight, or ``alpha``, ``phase_scale``, ``rho``, ``mu``, ``tol``, ``max_iter`` or
        ``newton_iter`` not positive.
    """
    alpha, criterion = parse_alpha(alpha)
    rho = check_positive(rho, "rho", allow_none=True)
    mu = check_positive(mu, "mu")
    tol = check_positive(tol, "tol")
    max_iter = check_positive(max_iter, "max_iter", integer=True)
    newton_iter = check_positive(newton_iter, "newton_iter", integer=True)
    mask, vs, b, dom, w, field, scale = _nonlinear_setup(
        local_field, mask, voxel_size, b0_direction, pad_factor, weight, phase_scale, "rms")
    state = _NLTVADMM(field, mask, vs, b, dom, w, mu=mu, isotropic=isotropic, scale=scale,
                      newton_iter=newton_iter)
    selection = None
    if criterion is not None:
        alpha, selection = warm_sweep(state, field, mask, vs, b0_direction=b, weight=w, rho=rho, tol=tol,
                                      pad_factor=pad_factor, phase_scale=scale,
                                      criterion=DEFAULT_CRITERION if criterion == "default" else criterion)
    state.set_alpha(alpha, 100.0 * alpha if rho is None else rho)
    it, converged, change = state.run(max_iter, tol)
    out = state.chi_out()
    if return_info:
        info = {"iterations": it, "converged": converged, "relative_change": float(change)}
        if selection is not None:
            info["alpha"] = alpha
            info["alpha_selection"] = selection
        return out, info
    return out


class _NLTVADMM(_TVADMM):
    """The nlTV ADMM state (private): the linear TV-ADMM iteration of
    :class:`chimap.invert.tv._TVADMM` with the per-voxel Newton step of the nonlinear data term
    as its z2 update; warm-startable over ``alpha`` in the same way."""

    def __init__(self, field, mask, vs, b, dom, w, *, mu, isotropic, scale, newton_iter):
        super().__init__(field, mask, vs, b, dom, w, mu=mu, isotropic=isotropic, relax=1.0)
        self.scale, self.newton_iter = float(scale), int(newton_iter)

    def fidelity_update(self, dchi):
        NK.nonlinear_fidelity_update(dchi, self.f_fid, self.w2_fid, self.mu, self.scale, self.u2, self.t,
                                     self.newton_iter, _NEWTON_TOL_RAD)

    def measures(self):
        """``(data, regulariser, predicted_field)`` as :meth:`_TVADMM.measures`, with the
        nonlinear data term ``sum W^2 (2 sin(s (D chi - f) / 2) / s)^2``."""
        from .autoreg import solver_costs

        spec = self.fft(self.chi)
        spec *= self.d
        pred = self.ifft(spec)
        data, reg = solver_costs(self.chi, self.f_pad, None, self.vs, isotropic=self.isotropic,
                                 w2=self.w2, predicted_pad=pred, phase_scale=self.scale)
        return data, reg, self.dom.unpad(pred, self.mask)


def ndi(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), weight=None,
        alpha=DEFAULT_NDI_ALPHA, step=1.0, max_iter=100, tol=5e-3,
        phase_scale=DEFAULT_PHASE_SCALE, pad_factor=1.5, return_info=False):
    """Nonlinear dipole inversion (NDI, Polak et al. 2020): early-stopped gradient descent.

    Minimises ``(1/s^2) ||W (exp(i s D chi) - exp(i s f))||^2 + alpha ||chi||^2`` by gradient
    descent from ``chi = 0`` with a fixed step, stopped early (module docstring: units,
    defaults and their sources).

    Parameters
    ----------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm of B0. Values outside ``mask`` are ignored (they may be NaN).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels where the field is fitted.
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes.
    weight : numpy.ndarray, shape (I, J, K), optional
        Data weight ``W`` (the paper: the magnitude), non-negative, used inside the mask only
        and normalised to a maximum of 1 there. None: 1 in the mask.
    alpha : float
        Tikhonov weight (> 0) on chi (ppm); default 1e-5 (FANSI ``ndi.m``). It is the same
        number in rad units (both terms scale with ``s^2``).
    step : float
        Gradient step (> 0); the paper's script: 1. Must be below ``1 / (4/9 + alpha)``.
    max_iter : int or str
        Maximum number of iterations; default 100 (FANSI ``ndi.m``; the authors' script: 200).
        ``"auto"`` chooses the stopping iteration, NDI's effective regulariser, from the data
        by hold-out cross-validation (:mod:`chimap.invert.autoreg`): the iteration runs with
        a reproducible tenth of the weighted voxels held out (zero weight), the held-out
        residual (chord ``|exp(i s r) - 1| / s``) is recorded after every step up to
        :data:`NDI_AUTO_MAX_ITER` (stopping 25 steps past its minimum), and the solve on all
        voxels stops at the iteration of the minimum (or earlier by ``tol``). About twice the
        cost of a fixed count.
    tol : float
        Stop when the relative change of the gradient, ``||g_k - g_(k-1)|| / ||g_k||``, is
        below ``tol`` (the paper's script: 0.5 % for one head orientation). Together with
        ``max_iter`` this is the regulariser: more iterations recover more of the magic cone
        and amplify more noise.
    phase_scale : float
        ``s`` (rad/ppm, > 0), as in :func:`nltv`; ``s -> 0`` gives the Landweber iteration of
        the linear problem.
    pad_factor : float or sequence of 3 float
        The mask's bounding box is zero padded to at least this factor times its length.
    return_info : bool
        Also return a dict with ``iterations``, ``converged`` (stopped by ``tol``) and
        ``relative_change`` (of the gradient, last iteration); with ``max_iter="auto"`` also
        ``max_iter`` (the chosen count) and ``iteration_selection`` (``cv_rmse`` per
        iteration, ``holdout``, ``seed``, ``n_holdout``).

    Returns
    -------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm, zero outside ``mask``, dtype of ``local_field``; arbitrary mean.
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        Bad shapes, empty mask, NaN/inf in the mask, bad voxel size or B0 direction, a bad
        weight, ``alpha``, ``step``, ``phase_scale``, ``tol`` or ``max_iter`` not positive (or
        ``alpha="auto"``: NDI is regularised by its stopping, ``max_iter="auto"``), or an
        unstable ``step``.
    """
    if isinstance(alpha, str):
        raise ValueError('NDI is regularised by early stopping, not by its Tikhonov weight alpha: '
                         'use max_iter="auto" to choose the stopping iteration from the data')
    alpha = check_positive(alpha, "alpha")
    step = check_positive(step, "step")
    tol = check_positive(tol, "tol")
    max_iter = parse_iteration_count(max_iter, "max_iter")  # None: "auto"
    if step * (4.0 / 9.0 + alpha) >= 1.0:
        raise ValueError(f"step must be below 1 / (4/9 + alpha) = {1.0 / (4.0 / 9.0 + alpha):.4g} "
                         f"for the gradient descent to be stable, got {step!r}")
    mask, vs, b, dom, w, field, scale = _nonlinear_setup(
        local_field, mask, voxel_size, b0_direction, pad_factor, weight, phase_scale, "max")
    shape = dom.padded
    fft = box_rfft(shape, dom.box_shape)  # the residual q is zero outside the box
    ifft = box_irfft(shape, dom.box_shape, dom.dtype)  # only D chi in the box is used
    d = dipole_kernel(shape, vs, b0_direction=b, real_fft=True, dtype=dom.dtype)
    box = tuple(slice(0, n) for n in dom.box_shape)  # W = 0 beyond the box: q stays 0 there
    f_box = dom.pad(field)[box]

    def iterate(w_in, n_iter, stop_tol, held=None, patience=None):
        """NDI from chi = 0 with the weight ``w_in`` (input grid); returns the k-space iterate,
        the iterations run, whether ``stop_tol`` stopped it, the last change and, with
        ``held``, the held-out RMS chord residual after every step."""
        w2_box = dom.pad(w_in * w_in)[box]
        x = np.zeros(d.shape, dtype=np.result_type(dom.dtype, np.complex64))  # chi in k-space
        xd = np.zeros_like(x)  # D chi in k-space, written by each step
        track = stop_tol > 0  # the relative change only serves the tolerance stop
        g_prev = np.zeros_like(x) if track else np.zeros((1, 1, 1), x.dtype)
        q_box = np.zeros(dom.box_shape, dtype=dom.dtype)
        nyquist_last = shape[2] % 2 == 0
        if held is not None:
            held_box = dom.pad(held)[box] > 0
            f_held, w2_held = f_box[held_box].astype(np.float64), dom.pad(w * w)[box][held_box]
        errors = []
        change, converged, it = np.inf, False, 0
        for it in range(1, n_iter + 1):
            dchi = ifft(xd, overwrite=True)  # D chi on the box
            if held is not None and it > 1:  # residual of the previous step's chi
                errors.append(_held_out_rmse(dchi[held_box], f_held, w2_held, scale))
                if past_minimum(errors, patience):
                    break
            NK.sine_residual(dchi, f_box, w2_box, scale, q_box)
            change = NK.ndi_step(x, fft(q_box), d, alpha, step, g_prev, nyquist_last, xd, track)
            if track and change < stop_tol:
                converged = True
                break
        return x, it, converged, change, errors

    selection = None
    if max_iter is None:
        held, n_held = draw_held_out(w > 0, NDI_AUTO_HOLDOUT, "max_iter")
        # no tolerance stop while cross-validating: the held-out error decides
        _, _, _, _, errors = iterate(np.where(held, 0, w).astype(w.dtype), NDI_AUTO_MAX_ITER + 1, 0.0,
                                     held=held, patience=NDI_AUTO_PATIENCE)
        max_iter, selection = selection_record(errors, NDI_AUTO_HOLDOUT, n_held, "max_iter")
    x, it, converged, change, _ = iterate(w, max_iter, tol)
    out = dom.unpad(ifft(x), mask)
    if return_info:
        info = {"iterations": it, "converged": converged, "relative_change": float(change)}
        if selection is not None:
            info["max_iter"] = max_iter
            info["iteration_selection"] = selection
        return out, info
    return out


def _held_out_rmse(pred, f, w2, scale):
    """Weighted RMS chord residual ``|exp(i s (pred - f)) - 1| / s`` over held-out voxels."""
    r = 2.0 * np.sin(0.5 * scale * (pred.astype(np.float64) - f)) / scale
    return float(np.sqrt(np.sum(w2 * r * r) / np.sum(w2)))
