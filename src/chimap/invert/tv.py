"""Total-variation regularised dipole inversion solved with ADMM.

Problem (chi and the field in ppm, gradients in ppm/mm)::

    chi = argmin_x  1/2 || W (D x - f) ||_2^2  +  alpha * TV(x)

with ``D`` the dipole convolution (:mod:`chimap.kernels`), ``f`` the local field, ``W`` a
data-fidelity weight and ``TV(x) = sum_voxels |G x|`` (isotropic: Euclidean norm of the
3-vector of physical forward differences ``(x[i + e_a] - x[i]) / h_a``).

Two solvers:

- ``solver="weighted"`` (default; FANSI linear wTV, Milovic et al. MRM 2018;80:814): a second
  split ``z2 = D x`` makes the weighted data term a pointwise update
  ``z2 = (W^2 f + mu (D x + u2)) / (W^2 + mu)``, and the chi update is a k-space division
  ``x = IFFT[(rho E^H F(z - u) + mu D F(z2 - u2)) / (rho |E|^2 + mu D^2)]`` (4 FFTs per
  iteration, two of them pruned to the mask's box: outside it ``z2 - u2`` is the previous
  ``D x``, whose spectrum is known, so the split lives on the box only;
  :class:`chimap.invert._common.DataSplitRegion`). ``W`` is zero outside the mask
  (``weight=None``: ``W = 1`` inside), so the field there is not fitted at all and chi outside
  the mask is free (it absorbs the field of sources just outside the mask, e.g. those removed
  by erosion; it is set to 0 on output).
- ``solver="closed_form"`` (Bilgic et al. MRM 2014;72:1444): ``W = 1`` on the whole padded
  grid with the field taken as zero outside the mask; the only split is ``z = G x``, and the
  chi update is ``x = IFFT[(D F f + rho E^H F(z - u)) / (D^2 + rho |E|^2)]`` (2 FFTs per
  iteration). About twice as fast per iteration, but asking for zero field outside the mask
  is a model error: on simulated heads with a 2-voxel eroded mask it gives about 50 % NRMSE
  against 20-26 % for the weighted solver (see ``benchmarks/bench_invert.py``).

Both run on the mask's bounding box, zero padded (``pad_factor``), with real FFTs
(``scipy.fft``, all CPUs) in the dtype of the input, and stop when the relative change
``||x_k - x_(k-1)|| / ||x_k||`` drops below ``tol``.
"""

from __future__ import annotations

import numpy as np

from ..kernels import dipole_kernel, laplacian_kernel
from . import _admm_kernels as K
from ._common import (DataSplitRegion, check_inversion_inputs, check_positive, check_weight,
                      padded_gradient_weight, real_fft_pair)
from .autoreg import parse_alpha, warm_sweep

__all__ = ["DEFAULT_ALPHA", "tv_admm"]

#: Default TV weight for fields in ppm and gradients in ppm/mm (see :func:`tv_admm`).
DEFAULT_ALPHA = 3e-4

#: Criterion of ``alpha="auto"`` (see :mod:`chimap.invert.autoreg`).
DEFAULT_CRITERION = "cv"


def tv_admm(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), alpha=DEFAULT_ALPHA,
            weight=None, gradient_weight=None, solver="weighted", max_iter=300, tol=5e-3, rho=None, mu=0.3,
            pad_factor=1.5, isotropic=True, relax=1.0, return_info=False):
    """Total-variation dipole inversion with ADMM (Bilgic 2014; FANSI linear wTV, Milovic 2018).

    Parameters
    ----------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm of B0 (after background removal). Values outside ``mask`` are
        ignored (they may be NaN).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels where the local field is valid (usually the eroded brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm (anisotropic allowed: differences are physical, per mm).
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes.
    alpha : float or str
        TV regularisation weight (> 0), for the field in ppm and gradients in ppm/mm. The
        default was chosen from a sweep on simulated heads at 1.5, 2 and 3 mm, with and
        without noise (see the package notes in :mod:`chimap.invert`). ``"auto"`` chooses it
        from the data by hold-out cross-validation of the field (:data:`DEFAULT_CRITERION`;
        weighted solver only), ``"auto:frequency"``, ``"auto:lcurve"`` or
        ``"auto:inflection"`` by another criterion (:mod:`chimap.invert.autoreg`); the sweep
        is warm-started and the whole call costs about one to two fixed-weight solves.
    weight : numpy.ndarray, shape (I, J, K), optional
        Data-fidelity weight ``W`` (e.g. the magnitude, or 1 / field noise SD); zero or
        positive, used inside the mask only and normalised to unit root-mean-square there, so
        ``alpha`` keeps its meaning. None: uniform weight inside the mask.
    gradient_weight : numpy.ndarray, shape (I, J, K), optional
        Per-voxel weight (>= 0) of the TV term, ``alpha * sum_i g_i |(G x)_i|``: e.g. the
        morphology prior :func:`chimap.invert.edges.magnitude_edge_weight` (MEDI's edge mask,
        0 on the magnitude's edges). Used inside the mask; 1 outside it. None: uniform.
    solver : {"weighted", "closed_form"}
        ADMM splitting (module docstring). ``"closed_form"`` takes no ``weight``.
    max_iter : int
        Maximum number of ADMM iterations.
    tol : float
        Stop when ``||x_k - x_(k-1)|| / ||x_k|| < tol``.
    rho : float, optional
        ADMM penalty of the gradient split ``z = G x`` (1/mm^2 scale of ``|E|^2``); default
        ``100 * alpha`` (Bilgic 2014, FANSI). It changes the speed of convergence, not the
        solution of the problem.
    mu : float
        ADMM penalty of the field split ``z2 = D x`` (weighted solver only); FANSI's default 1
        fits weights of unit RMS; 0.3 (default) reached the same accuracy in fewer iterations
        on simulated heads.
    relax : float
        ADMM over-relaxation factor in (0, 2) (Boyd et al. 2011, section 3.4.3); 1 is plain
        ADMM.
    pad_factor : float or sequence of 3 float
        The mask's bounding box is zero padded to at least this factor times its length.
    isotropic : bool
        Isotropic TV (Euclidean norm of the gradient, default) or anisotropic TV (sum of the
        absolute differences, as in Bilgic 2014).
    return_info : bool
        Also return a dict with ``iterations``, ``converged`` and ``relative_change`` (of the
        final solve); with an automatic ``alpha`` also ``alpha`` (the chosen weight) and
        ``alpha_selection`` (the sweep, see :func:`chimap.invert.autoreg.choose_alpha`, plus
        ``sweep_iterations``).

    Returns
    -------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm, zero outside ``mask``, dtype of ``local_field`` (float64 for
        integer input). Its mean is arbitrary: reference it with
        :func:`chimap.reference.reference_chi`.
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        Invalid shapes, empty mask, NaN/inf inside the mask, bad voxel size, zero B0
        direction, ``alpha`` neither positive nor an ``"auto"`` string, ``rho``, ``mu``,
        ``tol`` or ``max_iter`` not positive, a bad weight, or ``alpha="auto"`` with
        ``solver="closed_form"``.
    """
    alpha, criterion = parse_alpha(alpha)
    rho = check_positive(rho, "rho", allow_none=True)
    mu = check_positive(mu, "mu")
    tol = check_positive(tol, "tol")
    max_iter = check_positive(max_iter, "max_iter", integer=True)
    field, mask, vs, b, dom = check_inversion_inputs(local_field, mask, voxel_size,
                                                     b0_direction, pad_factor)
    if solver not in ("weighted", "closed_form"):
        raise ValueError(f'solver must be "weighted" or "closed_form", got {solver!r}')
    if solver == "closed_form" and weight is not None:
        raise ValueError('solver="closed_form" fits the field with unit weight: pass weight=None')
    relax = float(relax)
    if not 0.0 < relax < 2.0:
        raise ValueError(f"relax must be in (0, 2), got {relax!r}")
    w = None
    if solver == "weighted":
        w = check_weight(mask if weight is None else weight, mask, dom.dtype)
    tv_weight = padded_gradient_weight(gradient_weight, mask, dom)
    state = _TVADMM(field, mask, vs, b, dom, w, mu=mu, isotropic=isotropic, relax=relax, tv_weight=tv_weight)
    selection = None
    if criterion is not None:
        criterion = DEFAULT_CRITERION if criterion == "default" else criterion
        if w is None and criterion == "cv":
            raise ValueError('alpha="auto" cross-validates the data fit, which needs the weighted solver: '
                             'use solver="weighted" or alpha="auto:frequency" / "auto:lcurve"')
        alpha, selection = warm_sweep(state, field, mask, vs, b0_direction=b, weight=w, rho=rho,
                                      tol=tol, pad_factor=pad_factor, criterion=criterion)
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


class _TVADMM:
    """The TV-ADMM iteration state on the padded grid (private).

    Built once per problem; :meth:`set_alpha` changes the weight (and the ADMM penalty) while
    keeping every split variable and scaled dual, so that a sweep over ``alpha`` warm-starts
    each solve from the previous one. With ``rho`` proportional to ``alpha`` (the default
    ``100 * alpha``) the shrinkage threshold ``alpha / rho`` and the scaled dual ``u`` of the
    optimum do not change with ``alpha``: only the k-space inverse is rebuilt.
    """

    #: The iterates that define the state (copied by :func:`.autoreg.snapshot_state`).
    ITERATES = ("chi", "prev", "u", "s", "u2", "t", "model", "model_spec")

    def __init__(self, field, mask, vs, b, dom, w, *, mu, isotropic, relax, tv_weight=K.UNIFORM):
        self.mask, self.vs, self.dom, self.w = mask, vs, dom, w
        self.tv_weight = tv_weight
        self.mu, self.isotropic, self.relax = mu, bool(isotropic), relax
        shape = dom.padded
        self.fft, self.ifft = real_fft_pair(shape, dom.dtype)
        self.d = dipole_kernel(shape, vs, b0_direction=b, real_fft=True, dtype=dom.dtype)
        self.e2 = -laplacian_kernel(shape, vs, real_fft=True, dtype=dom.dtype)  # |E|^2 >= 0
        self.inv_h = (1.0 / vs).astype(np.float64)
        self.f_pad = dom.pad(field)
        self.chi = np.zeros(shape, dtype=dom.dtype)
        self.prev = np.zeros(shape, dtype=dom.dtype)
        self.u = np.zeros((3,) + shape, dtype=dom.dtype)
        self.s = np.zeros((3,) + shape, dtype=dom.dtype)
        self.ets = np.zeros(shape, dtype=dom.dtype)
        if w is None:
            self.f_spec = self.fft(self.f_pad)
        else:
            # the data split z2 = D chi lives on a region at the grid's origin (the mask's box)
            self.split = DataSplitRegion(dom, relax)
            self.w2 = dom.pad(w * w)
            self.set_field(self.f_pad)
            self.u2 = self.split.zeros()
            # z2 - u2 on the region: start from z2 = f where W > 0, u2 = 0
            self.t = np.where(self.w2_fid > 0, self.f_fid, dom.dtype.type(0))
            self.model = self.split.zeros()  # D chi on the region, of the last z2 update
            self.model_spec = None  # its spectrum on the whole grid (None: D chi = 0)
        self.alpha = self.rho = None

    def set_field(self, f_pad):
        """Replace the local field (padded grid; weighted solver only)."""
        self.f_pad = f_pad
        self.f_fid, self.w2_fid, self.w2f_fid = self.split.crop_data(f_pad, self.w2)

    def set_weight(self, w):
        """Replace the data weight (input grid, zero outside the mask; weighted solver only)."""
        if self.w is None:
            if w is not None:
                raise ValueError("the closed-form solver has no data weight")
            return
        self.w2 = self.dom.pad(np.where(self.mask, w, 0) ** 2)
        self.set_field(self.f_pad)

    def set_alpha(self, alpha, rho):
        """Set the TV weight and the ADMM penalty of the gradient split (rebuilds the k-space
        inverse; the iterates are kept)."""
        dt = self.dom.dtype.type
        d, e2 = self.d, self.e2
        if self.w is None:
            denom = d * d + dt(rho) * e2
        else:
            denom = dt(self.mu) * d * d + dt(rho) * e2
        denom[0, 0, 0] = 1  # D(0) = |E(0)| = 0: the mean of chi is not determined; keep 0
        inv = (1 / denom).astype(self.dom.dtype)
        inv[0, 0, 0] = 0
        del denom
        self.rho_inv = inv * dt(rho)
        if self.w is None:
            self.dtf = self.f_spec * (d * inv)
        else:
            self.mu_d_inv = inv * d * dt(self.mu)
        self.alpha, self.rho = float(alpha), float(rho)

    def run(self, max_iter, tol):
        """At most ``max_iter`` iterations; stop when the relative change is below ``tol``.
        Returns ``(iterations, converged, relative_change)``."""
        fft, ifft = self.fft, self.ifft
        thr = self.alpha / self.rho
        converged = False
        change = np.inf
        it = 0
        for it in range(1, max_iter + 1):
            # chi update (closed form in k-space)
            K.grad_adjoint(self.s, self.ets, self.inv_h)
            spec = fft(self.ets)
            if self.w is None:
                spec *= self.rho_inv
                spec += self.dtf
            else:
                K.tv_chi_spectrum(spec, self.split.spectrum(self.t, self.model, self.model_spec),
                                  self.rho_inv, self.mu_d_inv)
            self.chi = ifft(spec).astype(self.dom.dtype, copy=False)
            change = K.relative_change(self.chi, self.prev)
            if change < tol:
                converged = True
                break
            # z/u update (TV prox)
            K.grad_shrink_update(self.chi, self.u, self.s, self.inv_h, thr, self.isotropic, self.relax,
                                 self.tv_weight)
            if self.w is not None:
                spec *= self.d  # the irfft kept chi's spectrum: D chi without another FFT
                self.model_spec = spec
                self.model = self.split.field(spec)
                self.fidelity_update(self.model)
        return it, converged, change

    def fidelity_update(self, dchi):
        """z2/u2 update of the data split ``z2 = D chi`` (quadratic data term) on the split's
        region; updates ``self.u2`` and ``self.t`` in place."""
        K.fidelity_update(dchi, self.w2f_fid, self.w2_fid, self.dom.dtype.type(self.mu), self.u2, self.t,
                          self.relax)

    def chi_out(self):
        """The current chi on the input grid, zero outside the mask."""
        return self.dom.unpad(self.chi, self.mask)

    def measures(self):
        """``(data, regulariser, predicted_field)``: ``sum W^2 (D chi - f)^2`` and ``TV(chi)``
        on the padded grid (:func:`.autoreg.solver_costs`), and ``D chi`` on the input grid,
        zero outside the mask (ppm); chi outside the mask is included in all three."""
        from .autoreg import solver_costs

        spec = self.fft(self.chi)
        spec *= self.d
        pred = self.ifft(spec)
        data, reg = solver_costs(self.chi, self.f_pad, None, self.vs, isotropic=self.isotropic,
                                 w2=None if self.w is None else self.w2, predicted_pad=pred,
                                 gradient_weight_pad=self.tv_weight)
        return data, reg, self.dom.unpad(pred, self.mask)
