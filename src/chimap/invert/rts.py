"""RTS: rapid two-step dipole inversion with a sparsity prior.

Reference
---------
Kames C, Wiggermann V, Rauscher A. Rapid two-step dipole inversion for susceptibility mapping
with sparsity priors. NeuroImage 2018;167:276-283.

Step 1 solves ``D chi = f`` by a few LSMR iterations (an early-stopped Krylov solution: the
well-conditioned frequencies converge first). Step 2 keeps that estimate on the
well-conditioned part of k-space, ``M = {k : |D(k)| > delta}``, and fills the ill-conditioned
cone with the image of least total variation::

    chi = argmin  mu/2 || M (F chi - F chi_1) ||^2  +  || G chi ||_1

by ADMM with the split ``z = G chi`` (the x-update is diagonal in k-space). Parameters and
stopping rules are the paper's: ``delta = 0.15``, 4 LSMR iterations, ``mu = 1e5``, ADMM
penalty ``rho = 10``, at most 20 iterations or a relative change below 1e-2. Norms use the
unitary FFT and gradients in 1/mm (chi in ppm), so ``mu`` and ``rho`` keep the paper's values
on any voxel size; the ADMM penalty is kept fixed (the paper's choice; no residual balancing).

Automatic regularisation. RTS's regulariser is the early stop of step 1: more LSMR iterations
fill more of the magic cone and amplify more noise. ``lsmr_iter="auto"`` chooses that count
from the data by hold-out cross-validation, as NDI's ``max_iter="auto"``
(:mod:`chimap.invert.autoreg`): step 1 runs with a reproducible tenth of the mask's voxels
held out (their rows of ``D chi = f`` removed), the held-out residual ``D chi_k - f`` is
recorded after every LSMR iteration up to :data:`RTS_AUTO_MAX_ITER` (stopping
:data:`RTS_AUTO_PATIENCE` iterations past its minimum), and step 1 on all voxels runs for the
count of the minimum. This is chimap's addition, not part of the paper, whose 4 iterations
stay the default. Measured with ``benchmarks/accuracy.py`` (true local fields, SNR 100 / 40 /
tilted 15 degrees, and the QSM challenge 2.0 head model): it chose 8 / 7 / 7 / 12 iterations,
NRMSE 42.7 / 46.2 / 43.5 / 35.4 % against 45.5 / 47.5 / 46.6 / 39.6 % with 4, and deep-grey
ROI errors of 1.6-5.6 ppb against 10.7-14.2; on the challenge head's pipeline field it chose 6,
61.1 % against 60.0 %. A 10 mm sphere's noiseless field (1 mm, B0 along K): 15 iterations,
contrast 0.099 of 0.1 (4 iterations: 0.085).

``mu`` keeps the paper's value: it weighs the k-space consistency with step 1 against the TV
term, but it is not a regularisation weight with an optimum in the data: step 1's early stop
already limits the noise, so the L-curve of step 2 (``||M (F chi - F chi_1)||^2`` against
``TV(chi)``) has no corner. Measured on the simulated 1 mm head (true local field, SNR 100,
warm-started sweep of ``1 / mu`` from 1e-6 to 1e-1): the consistency term falls as
``(1 / mu)^2`` while TV saturates (1.59e4 for ``mu`` >= 1e4), so the curvature is <= 0
everywhere and the corner criterion picks the end of the sweep; the frequency analysis does
not apply (its amplitudes never cross) and would pick ``mu = 10`` (NRMSE 73 %). NRMSE itself
varies little with ``mu`` (45.0-48.1 % for ``mu`` = 1e2-1e5, 20 iterations).
"""

from __future__ import annotations

import numpy as np

from ..kernels import dipole_kernel, laplacian_kernel
from . import _admm_kernels as K
from ._common import check_dipole_threshold, check_inversion_inputs, check_positive, real_fft_pair
from ._holdout import draw_held_out, parse_iteration_count, past_minimum, selection_record
from ._lsmr import lsmr_iterates

__all__ = ["RTS_AUTO_MAX_ITER", "rts"]

#: ``rts(lsmr_iter="auto")``: most LSMR iterations cross-validated, iterations run past the
#: held-out minimum before the search stops, and the fraction of mask voxels held out.
RTS_AUTO_MAX_ITER = 60
RTS_AUTO_PATIENCE = 8
RTS_AUTO_HOLDOUT = 0.1


def rts(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), delta=0.15, lsmr_iter=4,
        mu=1e5, rho=10.0, max_iter=20, tol=1e-2, pad_factor=1.5, isotropic=True, return_info=False):
    """Rapid two-step (RTS) dipole inversion (Kames et al. 2018).

    Parameters
    ----------
    local_field, mask, voxel_size, b0_direction
        As in :func:`chimap.invert.tsvd` (field in ppm, sizes in mm, B0 in voxel axes).
    delta : float
        ``|D|`` above which k-space counts as well conditioned, in (0, 2/3). Paper: 0.15.
    lsmr_iter : int or str
        LSMR iterations of step 1. Paper: 4 (the simulated 1 mm head's true local field at
        SNR 100: NRMSE 42.8-45.4 % for 4-32 iterations, 60 % for 2). ``"auto"`` chooses the
        count by hold-out cross-validation (module docstring); about twice the cost of step 1
        at the chosen count, plus that of 8 iterations.
    mu : float
        Weight of the k-space consistency with step 1 in step 2. Paper: 1e5.
    rho : float
        ADMM penalty of the gradient split. Paper: 10.
    max_iter : int
        ADMM iterations at most. Paper: 20.
    tol : float
        Stop when the relative change of chi falls below it. Paper: 1e-2.
    pad_factor : float or sequence of 3 float
        Zero padding of the mask's bounding box (>= 1).
    isotropic : bool
        Isotropic TV (vector shrinkage), as in the paper; False: anisotropic.
    return_info : bool
        Also return ``{"iterations", "converged", "relative_change"}`` (of step 2); with
        ``lsmr_iter="auto"`` also ``lsmr_iter`` (the chosen count) and ``iteration_selection``
        (``cv_rmse`` after each LSMR iteration, ppm; ``holdout``, ``seed``, ``n_holdout``).

    Returns
    -------
    chi : numpy.ndarray, shape (I, J, K)
        ppm, zero outside ``mask``, dtype of ``local_field``; arbitrary mean.
    info : dict
        Only with ``return_info=True``.
    """
    delta = check_dipole_threshold(delta, "delta")
    lsmr_iter = parse_iteration_count(lsmr_iter, "lsmr_iter")  # None: "auto"
    mu = check_positive(mu, "mu")
    rho = check_positive(rho, "rho")
    max_iter = check_positive(max_iter, "max_iter", integer=True)
    tol = check_positive(tol, "tol")
    field, mask, vs, b, dom = check_inversion_inputs(local_field, mask, voxel_size, b0_direction, pad_factor)
    shape = dom.padded
    fft, ifft = real_fft_pair(shape, dom.dtype)
    d = dipole_kernel(shape, vs, b0_direction=b, real_fft=True, dtype=dom.dtype)

    # step 1: early-stopped LSMR on D chi = f (D is self-adjoint); vectors in the data's dtype,
    # LSMR's scalar recurrences in float64
    def apply_d(x):
        return ifft(fft(x.reshape(shape)) * d, overwrite=True).ravel()

    f = dom.pad(field).ravel()
    selection = None
    if lsmr_iter is None:
        lsmr_iter, selection = _cross_validated_lsmr_iter(apply_d, f, dom.pad(mask) > 0)
    chi1 = np.zeros_like(f)
    for chi1, _ in lsmr_iterates(apply_d, apply_d, f, lsmr_iter):
        pass
    x0 = fft(chi1.reshape(shape))
    del chi1

    # step 2: TV fill-in of the ill-conditioned cone, data fixed (softly, mu) where |D| > delta
    well = (np.abs(d) > delta).astype(dom.dtype)
    e2 = -laplacian_kernel(shape, vs, real_fft=True, dtype=dom.dtype)
    den = mu * well + rho * e2
    den[0, 0, 0] = 1.0  # D(0) = 0 and G(0) = 0: the mean stays 0
    data = (mu * well * x0) / den
    data[0, 0, 0] = 0.0
    scale = (dom.dtype.type(rho) / den).astype(dom.dtype)
    scale[0, 0, 0] = 0.0
    del den, well, e2, x0
    inv_h = (1.0 / vs).astype(np.float64)
    thr = 1.0 / rho
    u = np.zeros((3,) + shape, dtype=dom.dtype)
    s = np.zeros((3,) + shape, dtype=dom.dtype)
    ets = np.zeros(shape, dtype=dom.dtype)
    chi = ifft(data)
    prev = chi
    converged = False
    change = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        K.grad_shrink_update(chi, u, s, inv_h, thr, bool(isotropic), 1.0, K.UNIFORM)
        K.grad_adjoint(s, ets, inv_h)
        prev = chi
        chi = ifft(data + scale * fft(ets))
        change = K.relative_change(chi, prev)
        if change < tol:
            converged = True
            break
    out = dom.unpad(chi, mask)
    if return_info:
        info = {"iterations": it, "converged": converged, "relative_change": float(change)}
        if selection is not None:
            info["lsmr_iter"] = lsmr_iter
            info["iteration_selection"] = selection
        return out, info
    return out


def _cross_validated_lsmr_iter(apply_d, f, mask):
    """The LSMR count of step 1 with the least held-out residual, and the selection record.

    Step 1 with the held-out voxels' rows removed, ``min ||W (D chi - f)||`` (``W`` 0 on them,
    1 elsewhere on the padded grid, where the paper's step 1 also fits the zero field outside
    the mask); after each iteration the RMS of ``D chi_k - f`` over the held-out voxels.
    ``f`` is the flattened padded field, ``mask`` the padded mask (3-D); the held-out voxels
    are drawn on the padded grid, whose axes are those of the input, so the draw keeps its
    invariance to axis permutation.
    """
    held, n_held = draw_held_out(mask, RTS_AUTO_HOLDOUT, "lsmr_iter")
    held = held.ravel()
    keep = (~held).astype(f.dtype)
    f_held = f[held].astype(np.float64)
    last = {}

    def apply_a(v):
        dv = apply_d(v)
        last["held"] = dv[held]  # D v at the held-out voxels: LSMR carries D x along
        dv *= keep
        return dv

    errors = []
    for _, dx_held in lsmr_iterates(apply_a, lambda y: apply_d(keep * y), keep * f, RTS_AUTO_MAX_ITER,
                                    observe=lambda: last["held"]):
        r = dx_held - f_held
        errors.append(float(np.sqrt(np.mean(r * r))))
        if past_minimum(errors, RTS_AUTO_PATIENCE):
            break
    return selection_record(errors, RTS_AUTO_HOLDOUT, n_held, "lsmr_iter")
