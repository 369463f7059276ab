"""Automatic choice of the regularisation weight ``alpha`` from the data.

The regularised inversions :func:`~chimap.invert.tikhonov`, :func:`~chimap.invert.tv_admm`,
:func:`~chimap.invert.tv_admm_wh`, :func:`~chimap.invert.nltv` and
:func:`~chimap.invert.star_qsm` accept ``alpha="auto"`` (the method's default criterion) or
``alpha="auto:<criterion>"``, :func:`~chimap.invert.medi` ``lam="auto"`` (its data weight, the
inverse of a regularisation weight), :func:`~chimap.invert.ndi` ``max_iter="auto"`` (NDI is
regularised by its stopping iteration) and :func:`~chimap.invert.rts` ``lsmr_iter="auto"`` (the
early stop of its step 1): the weight is chosen by a sweep scored by one of the criteria below
(the stopping iterations by hold-out cross-validation along one run), the inversion is solved
at the chosen weight, and with ``return_info=True`` ``info["alpha"]`` (``"lam"``,
``"max_iter"``, ``"lsmr_iter"``) holds the choice and ``info["alpha_selection"]``
(``"lam_selection"``, ``"iteration_selection"``) the sweep (weights, the data and regulariser
terms, the criterion's curve), for the provenance record. Other inversions are wired by one
line, :func:`resolve_alpha` with a ``solve(alpha, field, mask, voxel_size, weight)`` callable.
TKD and TSVD (a truncation threshold: generalised cross-validation of it scored worse than
the usual 0.2 on simulated heads, notes of ``benchmarks/accuracy.py``) and iLSQR
(early-stopped LSQR with data-driven thresholds) have no weight chosen here.

Criteria
--------
``"cv"`` -- hold-out cross-validation of the field (Stone M. Cross-validatory choice and
    assessment of statistical predictions. J R Stat Soc B 1974;36:111-147). A random tenth of
    the mask voxels (fixed seed, so the choice is reproducible) gets zero data weight; along the
    sweep each solution predicts the field there (``D chi``, plus the fitted harmonic field for
    weak-harmonic TV), and the weight with the smallest weighted root-mean-square prediction
    error is chosen (parabolic vertex in log-log between the sampled minimum and its
    neighbours). Noise fitted at the training voxels does not predict the held-out ones, and
    over-smoothing does not either. The minimum error estimates the effective field noise
    (noise plus model error), reported as ``cv_rmse``. For the closed-form Tikhonov inversion,
    whose data term has no voxel weights, ``"cv"`` is generalised cross-validation (Golub GH,
    Heath M, Wahba G. Technometrics 1979;21:215-223), exact in k-space.
``"frequency"`` -- frequency analysis (Milovic C, Prieto C, Bilgic B, Uribe S,
    Acosta-Cabronero J, Irarrazaval P, Tejos C. Comparison of parameter optimization methods for
    quantitative susceptibility mapping. Magn Reson Med 2021;85:480-494). The mean magnitude of
    the spectrum of chi (masked, on the padded grid) is compared between two k-space regions in
    the same high-frequency shell (0.65 to 0.95 of the Nyquist frequency) at different values of
    the dipole kernel: M2 (``0.1 < D <= 0.2``, nearer the magic cone, where noise is amplified
    and regularisation acts most) and M3 (``0.22 < D <= 0.32``, better conditioned). Assuming an
    isotropic spectrum of the true chi, under-regularised solutions carry more energy in M2 than
    in M3 and over-regularised ones less; the weight is where they are equal, where
    ``zeta23 = ((e2 - e3) / (e2 + e3))^2`` vanishes.
``"lcurve"`` -- the L-curve corner, the maximum of the curvature of
    ``(log data term, log regulariser)`` (Hansen PC, O'Leary DP. The use of the L-curve in the
    regularization of discrete ill-posed problems. SIAM J Sci Comput 1993;14:1487-1503),
    derivatives in ``log(alpha)`` from smoothing splines. The terms are those the solver
    minimised: ``sum W^2 (D chi - f)^2`` and ``sum |G chi|`` over the padded grid for TV (chi
    outside the mask included), the squared norms for Tikhonov (exact in k-space).
``"inflection"`` -- the L-curve's inflection point (Milovic et al. 2021), the zero of the
    curvature on the small-``alpha`` side of the corner.

Speed
-----
TV sweeps run at full resolution on one ADMM state (:func:`warm_sweep`, :func:`warm_solver`):
every weight, from the largest down, is warm-started from the previous solution (with the
penalty ``rho = 100 alpha`` the scaled duals are invariant), gets at most 10 iterations (30 for
the first), and the ``"cv"`` sweep stops at the first weight past the minimum of the held-out
error (widening the sweep by up to four quarter decades when the minimum is at an end). The
iterates at the best weight so far are kept, and the final solve continues from them with
every voxel's weight restored. Measured (``.venv/bin/python benchmarks/bench_pipeline.py
--variant``, 2 cores, simulated 1 mm heads of about 192 x 228 x 204 voxels): the weak-harmonic
TV inversion of the default pipeline takes 66-77 s with ``alpha="auto"`` (6 weights, 80 sweep
iterations, then 45-50 iterations with the two LBV boundary refinements) against 33-57 s at a
fixed weight. Solvers that cannot warm-start may sweep on a grid downsampled by 2
(``choose_alpha(downsample=2, alpha_scale=...)``), with a map of the weight between grids that
the caller must establish. The closed-form Tikhonov sweep costs one FFT.

Defaults and who chose them
---------------------------
All chimap's (the papers above choose weights by hand or by the L-curve):

- Criterion ``"cv"`` for every iterative method (TV, weak-harmonic TV, nlTV, STAR-QSM's weak
  level, MEDI's ``lam``; NDI's stopping iteration), generalised cross-validation for the
  closed-form Tikhonov. The frequency analysis assumes an isotropic spectrum of the true chi
  (which veins and nuclei break) and the L-curve a clear corner; the held-out field error
  needs neither and follows the noise (``tests/test_invert_autoreg.py``: four spheres at 1 and
  5 ppb, where the chosen TV weight and MEDI ``lam`` change by 3-6 times and land within 3
  NRMSE points of the best of a fixed grid of weights, mostly better).
- ``holdout = 0.1``: a tenth of the weighted voxels, enough for a stable error estimate (over
  10^5 voxels in a head) while the fit on the rest changes little. ``seed = 0``: the same
  voxels for every run, so the choice is reproducible and invariant to axis permutations.
- Sweeps in quarter decades (the parabolic vertex through the minimum and its two neighbours
  resolves the weight between samples); TV from 1e-3 downwards, MEDI ``lam`` from 100 upwards
  (:data:`chimap.invert.medi.MEDI_AUTO_LAMBDAS`), Tikhonov over 1e-3 to 10.
- On the simulated 1 mm heads of ``benchmarks/bench_pipeline.py`` the default pipeline with
  ``alpha="auto"`` chose 1.0e-4 (GRE, 3 T and 7 T) and 3.6e-4 (single-echo EPI, noisier),
  against the former fixed 3e-4: voxelwise slope 0.83-0.84 instead of 0.74-0.77, NRMSE
  39.5 / 37.2 / 55.2 % instead of 38.6 / 41.7 / 55.7 % (GRE / 7 T / EPI).

Deviations from the papers
--------------------------
- Frequency analysis: the full text was not available; the regions, the shell and the
  ``zeta23`` rule follow the authors' FANSI toolbox (``create_freqmasks_anisotropic``,
  ``compute_freqe`` with the mean magnitude, ``zetafunc``; 2020), the variant that compares
  ``D`` itself in two bands on the equatorial side of the cone. The shell radius is a fraction
  of each axis' Nyquist frequency (FANSI scales one radius by the largest voxel size; the same
  for isotropic voxels). Where ``e2 - e3`` changes sign from positive to negative as ``alpha``
  grows, the crossing is interpolated in ``log(alpha)``; only without such a crossing is the
  sampled minimum of ``zeta23`` taken (the paper's rule), because that sampled minimum can sit
  at an end of the sweep where the amplitudes approach without meeting (measured on the 3 mm
  simulated head at 3 ppb). ``info["frequency_applies"]`` tells whether they meet (within
  1 %). Milovic et al. suggest multiplying the choice by 1.5 to 2 (``frequency_factor``).
- The L-curve terms are computed on the padded grid of the solver, not on the masked chi.
- Sweep solutions are warm-started and stopped early instead of being solved to convergence
  one by one; on the 2 mm head the warm sweep's NRMSE per weight matched converged solves
  within 0.5 NRMSE points.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AUTOMATIC_PARAMETERS", "CRITERIA", "DEFAULT_SWEEPS", "invert_recording_choices", "choose_alpha", "downsample_problem", "frequency_amplitudes",
           "frequency_criterion", "frequency_masks", "holdout_mask", "lcurve_corner", "lcurve_curvature",
           "lcurve_inflection", "parse_alpha", "resolve_alpha", "restore_state", "snapshot_state", "solver_costs", "tikhonov_sweep",
           "warm_solver", "warm_sweep"]

#: Inversion parameters that can be chosen from the data ("auto"), each with the key of its
#: selection record in the inversion's ``info`` (MEDI's ``lam``; NDI's stopping iteration; RTS's LSMR
#: count).
AUTOMATIC_PARAMETERS = {"alpha": "alpha_selection", "lam": "lam_selection", "max_iter": "iteration_selection",
                        "lsmr_iter": "iteration_selection"}

#: Criteria accepted by :func:`choose_alpha` and by ``alpha="auto:<criterion>"``.
CRITERIA = ("cv", "frequency", "lcurve", "inflection")

#: The frequency analysis applies where the M2 and M3 amplitudes cross within the sweep or meet
#: within about 1 % (``zeta23 <= ZETA_TOL``); see :func:`frequency_criterion`.
ZETA_TOL = 0.005 ** 2

#: Default sweeps (weights on the solved grid), per regulariser: TV in quarter decades from
#: 1e-3 down to 1.8e-5 (field in ppm, gradients in ppm/mm; ``"cv"`` widens it upwards by up to
#: four quarter decades when its minimum is at 1e-3, as for noise of several ppb); L2 weights (Tikhonov's ``alpha``,
#: which multiplies the regulariser inside the norm) in eighth decades from 1e-3 to 10.
DEFAULT_SWEEPS = {
    "tv": tuple(10.0 ** np.arange(-4.75, -2.99, 0.25)),
    "l2-gradient": tuple(10.0 ** np.arange(-3.0, 1.01, 0.125)),
    "l2": tuple(10.0 ** np.arange(-3.0, 1.01, 0.125)),
}


# ------------------------------------------------------------------------------------ L-curve


def _check_sweep(alphas, *series):
    a = np.asarray(alphas, dtype=np.float64)
    if a.ndim != 1 or a.size < 3:
        raise ValueError(f"alphas must be a 1-D sequence of at least 3 values, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError("alphas must be positive and finite")
    order = np.argsort(a)
    if np.any(np.diff(a[order]) <= 0):
        raise ValueError("alphas must be distinct")
    out = []
    for name, s in series:
        v = np.asarray(s, dtype=np.float64)
        if v.shape != a.shape:
            raise ValueError(f"{name} must have one value per alpha ({a.size}), got shape {v.shape}")
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise ValueError(f"{name} must be positive and finite (they are plotted on log axes)")
        out.append(v[order])
    return a[order], order, out


def lcurve_curvature(alphas, residual_norms, regulariser_norms, *, method="spline"):
    """Signed curvature of the log-log L-curve at each ``alpha`` (Hansen's formula).

    With ``t = log(alpha)``, ``x(t) = log(residual)``, ``y(t) = log(regulariser)``::

        kappa = (x' y'' - x'' y') / (x'^2 + y'^2)^(3/2)

    positive where the curve turns like the corner of an "L" (residual on the horizontal axis,
    growing with ``alpha``; regulariser on the vertical axis, falling).

    Parameters
    ----------
    alphas : sequence of float, length n >= 3
        Regularisation weights (any order, distinct, > 0).
    residual_norms, regulariser_norms : sequence of float, length n
        Data-fidelity and regularisation terms of each solution (> 0). Norms or squared norms
        give the same corner: a common power scales both log axes alike.
    method : {"spline", "fd"}
        Derivatives of cubic smoothing splines of ``x(t)`` and ``y(t)`` (smoothing chosen by
        generalised cross-validation; robust to the small wiggles of iterative solutions; needs
        n >= 5, else finite differences are used), or second-order finite differences on the
        non-uniform ``t`` grid.

    Returns
    -------
    numpy.ndarray, shape (n,)
        Curvature, in the order of ``alphas``.
    """
    if method not in ("spline", "fd"):
        raise ValueError(f'method must be "spline" or "fd", got {method!r}')
    a, order, (r, s) = _check_sweep(alphas, ("residual_norms", residual_norms),
                                    ("regulariser_norms", regulariser_norms))
    t, x, y = np.log(a), np.log(r), np.log(s)
    if method == "spline" and a.size >= 5:
        dx, ddx = _smooth_derivatives(t, x)
        dy, ddy = _smooth_derivatives(t, y)
    else:
        dx, dy = np.gradient(x, t), np.gradient(y, t)
        ddx, ddy = np.gradient(dx, t), np.gradient(dy, t)
    kappa = (dx * ddy - ddx * dy) / np.maximum(dx * dx + dy * dy, 1e-300) ** 1.5
    out = np.empty_like(kappa)
    out[order] = kappa
    return out


def _smooth_derivatives(t, v):
    """First and second derivatives at ``t`` of a cubic smoothing spline through ``(t, v)``."""
    from scipy.interpolate import make_smoothing_spline

    spline = make_smoothing_spline(t, v)  # smoothing by generalised cross-validation
    return spline.derivative(1)(t), spline.derivative(2)(t)


def lcurve_corner(alphas, residual_norms, regulariser_norms, *, method="spline"):
    """The L-curve corner: the weight of maximum curvature of the log-log L-curve.

    Parameters
    ----------
    alphas, residual_norms, regulariser_norms, method
        As in :func:`lcurve_curvature`.

    Returns
    -------
    index : int
        Index into ``alphas`` (as given) of the corner.
    alpha : float
        ``alphas[index]``.
    """
    kappa = lcurve_curvature(alphas, residual_norms, regulariser_norms, method=method)
    i = int(np.argmax(kappa))
    return i, float(np.asarray(alphas, dtype=np.float64)[i])


def lcurve_inflection(alphas, residual_norms, regulariser_norms, *, method="spline"):
    """The L-curve's inflection point (Milovic et al. 2021): from the corner towards smaller
    ``alpha``, the first sign change of the curvature, interpolated linearly in ``log(alpha)``;
    the smallest ``alpha`` if the curvature keeps its sign.

    Returns
    -------
    index : int
        Index into ``alphas`` (as given) of the swept weight nearest to the inflection point.
    alpha : float
        The interpolated inflection point.
    """
    a = np.asarray(alphas, dtype=np.float64)
    kappa = lcurve_curvature(a, residual_norms, regulariser_norms, method=method)
    order = np.argsort(a)
    ka, aa = kappa[order], a[order]
    j = int(np.argmax(ka))
    while j > 0 and ka[j - 1] > 0:
        j -= 1
    if j == 0:
        return int(order[0]), float(aa[0])
    t = ka[j] / (ka[j] - ka[j - 1])  # the zero lies between j - 1 and j
    alpha = float(np.exp((1 - t) * np.log(aa[j]) + t * np.log(aa[j - 1])))
    return int(order[j if t < 0.5 else j - 1]), alpha


# ------------------------------------------------------------------- frequency analysis


def frequency_masks(shape, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), ring=(0.65, 0.95),
                    bands=((0.1, 0.2), (0.22, 0.32)), signed=True, cone=0.085):
    """k-space regions of the frequency analysis (Milovic et al. 2021) on a real-FFT half grid.

    Parameters
    ----------
    shape : tuple of 3 int
        Padded grid shape (the last axis is halved by the real FFT).
    voxel_size : array_like, shape (3,)
        mm.
    b0_direction : array_like, shape (3,)
        B0 in voxel axes.
    ring : (float, float)
        Radial range of every region, as fractions of the Nyquist frequency of each axis.
    bands : ((float, float), (float, float))
        Dipole-kernel ranges ``lo < D <= hi`` of the two compared regions, M2 and M3.
    signed : bool
        Compare ``D`` itself (True) or ``|D|`` (False) with ``bands``.
    cone : float
        The magic-cone region M1 is ``|D| <= cone`` (reported, not used by the criterion).

    Returns
    -------
    masks : dict of str -> numpy.ndarray of bool
        ``"cone"``, ``"m2"`` and ``"m3"``, each of the real-FFT shape.
    weight : numpy.ndarray, shape (1, 1, n2 // 2 + 1)
        Multiplicity of each half-spectrum sample in the full spectrum (1 or 2).
    """
    from ..kernels import dipole_kernel

    shape = tuple(int(n) for n in shape)
    d = dipole_kernel(shape, voxel_size, b0_direction=b0_direction, real_fft=True, dtype=np.float64)
    f0 = 2.0 * np.fft.fftfreq(shape[0])[:, None, None]
    f1 = 2.0 * np.fft.fftfreq(shape[1])[None, :, None]
    f2 = 2.0 * np.fft.rfftfreq(shape[2])[None, None, :]
    r2 = f0 * f0 + f1 * f1 + f2 * f2
    in_ring = (r2 >= ring[0] ** 2) & (r2 <= ring[1] ** 2)
    dd = d if signed else np.abs(d)
    masks = {"cone": in_ring & (np.abs(d) <= cone)}
    for name, (lo, hi) in zip(("m2", "m3"), bands):
        masks[name] = in_ring & (dd > lo) & (dd <= hi)
    weight = np.full((1, 1, f2.size), 2.0)
    weight[..., 0] = 1.0
    if shape[2] % 2 == 0:
        weight[..., -1] = 1.0
    return masks, weight


def frequency_amplitudes(spectrum, masks, weight):
    """Mean magnitude of a real-FFT half ``spectrum`` in each region of ``masks``, every sample
    counted with its multiplicity ``weight`` in the full spectrum (dict, same keys)."""
    amp = np.abs(spectrum)
    out = {}
    for name, m in masks.items():
        w = np.broadcast_to(weight, m.shape)[m]
        out[name] = float(np.sum(amp[m] * w) / max(float(np.sum(w)), 1e-300))
    return out


def frequency_criterion(alphas, m2_amplitudes, m3_amplitudes):
    """The frequency-analysis choice (Milovic et al. 2021): the weight at which the mean
    spectral amplitudes of M2 and M3 are equal, where ``zeta23 = ((e2 - e3) / (e2 + e3))^2``
    vanishes.

    The amplitudes are equal where ``e2 - e3`` changes sign between two swept weights from
    positive (noise amplified near the cone) to negative (over-regularised) as ``alpha`` grows;
    that crossing is interpolated linearly in ``log(alpha)`` (``log(e2 / e3)`` against
    ``log(alpha)``), the largest such crossing if there are several. Without such a crossing the
    sampled minimum of ``zeta23`` is taken (the paper's rule), and the criterion counts as
    applicable only if the amplitudes meet there within about 1 % (``zeta23 <= ZETA_TOL``).

    Returns
    -------
    index : int
        Index into ``alphas`` (as given) of the swept weight nearest to the choice.
    alpha : float
        The chosen weight.
    zeta : numpy.ndarray
        ``zeta23`` per weight, in the order of ``alphas``.
    applies : bool
        Whether M2 and M3 meet within the sweep.
    """
    a, order, (e2, e3) = _check_sweep(alphas, ("m2_amplitudes", m2_amplitudes),
                                      ("m3_amplitudes", m3_amplitudes))
    zeta = ((e2 - e3) / (e2 + e3)) ** 2
    z = np.empty_like(zeta)
    z[order] = zeta
    g = np.log(e2 / e3)
    down = [j for j in range(a.size - 1) if g[j] > 0 >= g[j + 1]]
    if down:
        j = down[-1]
        t = g[j] / (g[j] - g[j + 1])
        alpha = float(np.exp((1 - t) * np.log(a[j]) + t * np.log(a[j + 1])))
        return int(order[j if t < 0.5 else j + 1]), alpha, z, True
    i = int(np.argmin(zeta))
    return int(order[i]), float(a[i]), z, bool(zeta[i] <= ZETA_TOL)


# ---------------------------------------------------------------------- costs of a solution


def solver_costs(chi_pad, field_pad, d, voxel_size, *, w2=None, regulariser="tv", isotropic=True,
                 predicted_pad=None, phase_scale=None, gradient_weight_pad=None):
    """Data-fidelity and regularisation terms of a solution on the padded grid.

    Parameters
    ----------
    chi_pad, field_pad : numpy.ndarray
        chi and the local field (ppm) on the padded grid.
    d : numpy.ndarray or None
        Real-FFT dipole kernel of that grid (unused with ``predicted_pad``).
    voxel_size : array_like, shape (3,)
        mm.
    w2 : numpy.ndarray, optional
        Squared data weight on the padded grid; None: 1 everywhere.
    regulariser : {"tv", "l2-gradient", "l2"}
        ``sum |G chi|`` (isotropic or anisotropic TV), ``sum |G chi|^2`` or ``sum chi^2``, with
        ``G`` the periodic forward differences in 1/mm.
    isotropic : bool
        Isotropic TV (Euclidean norm of the gradient) or anisotropic (sum of absolute values).
    predicted_pad : numpy.ndarray, optional
        The model's field on the padded grid, if known (default ``D chi``).
    phase_scale : float, optional
        ``s`` (rad/ppm) of a nonlinear data term: the residual ``r`` becomes the chord
        ``2 sin(s r / 2) / s``, so that ``data = 2 F(chi)`` of :mod:`chimap.invert.nonlinear`.
    gradient_weight_pad : numpy.ndarray, optional
        Per-voxel weight of the gradient regulariser on the padded grid (the
        ``gradient_weight`` of :func:`chimap.invert.tv_admm`); None: 1 everywhere.

    Returns
    -------
    data, regulariser : float
        ``sum W^2 (D chi - f)^2`` (or its nonlinear form) and the regulariser.
    """
    import scipy.fft as sfft

    from ..kernels import fft_workers
    from ._autoreg_kernels import gradient_norms

    if regulariser not in DEFAULT_SWEEPS:
        raise ValueError(f"regulariser must be one of {tuple(DEFAULT_SWEEPS)}, got {regulariser!r}")
    if predicted_pad is None:
        workers = fft_workers()
        spec = sfft.rfftn(chi_pad, workers=workers)
        spec *= d
        res = sfft.irfftn(spec, s=chi_pad.shape, workers=workers)
        del spec
    else:
        res = np.array(predicted_pad, dtype=np.result_type(predicted_pad, np.float32))
    res -= field_pad
    if phase_scale is not None:
        res = 2.0 * np.sin(0.5 * phase_scale * res) / phase_scale
    res *= res
    if w2 is not None:
        res *= w2
    data = float(np.sum(res, dtype=np.float64))
    del res
    if regulariser == "l2":
        return data, float(np.sum(np.square(chi_pad, dtype=np.float64)))
    from ._admm_kernels import UNIFORM

    iso, aniso, sq = gradient_norms(np.ascontiguousarray(chi_pad),
                                    1.0 / np.asarray(voxel_size, dtype=np.float64),
                                    UNIFORM if gradient_weight_pad is None else gradient_weight_pad)
    if regulariser == "l2-gradient":
        return data, float(sq)
    return data, float(iso if isotropic else aniso)


# ------------------------------------------------------------------------ downsampling


def downsample_problem(local_field, mask, voxel_size, weight=None, factor=2):
    """The inversion problem on a grid ``factor`` times coarser.

    The arrays are cropped to the mask's bounding box (zero padded to a multiple of
    ``factor``); the field and the weight are averaged over the mask voxels of each
    ``factor^3`` block; the coarse mask holds the blocks at least half inside ``mask``; the
    voxel size is multiplied by ``factor``.

    Returns
    -------
    local_field, mask, voxel_size, weight
        The coarse problem (``weight`` None if None was given).
    """
    m = np.asarray(mask, dtype=bool)
    idx = np.argwhere(m)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    n = [int(-(-(h - l) // factor) * factor) for l, h in zip(lo, hi)]
    box = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    coarse = tuple(k // factor for k in n)

    def block_sum(x):
        out = np.zeros(n, dtype=np.float64)
        xb = x[box]
        out[: xb.shape[0], : xb.shape[1], : xb.shape[2]] = xb
        return out.reshape(coarse[0], factor, coarse[1], factor, coarse[2], factor).sum(axis=(1, 3, 5))

    f = np.asarray(local_field)
    count = block_sum(m.astype(np.float64))
    cmask = count >= 0.5 * factor ** 3
    safe = np.maximum(count, 1.0)
    cfield = np.where(cmask, block_sum(np.where(m, f, 0.0)) / safe, 0.0).astype(f.dtype)
    cweight = None
    if weight is not None:
        cweight = np.where(cmask, block_sum(np.where(m, weight, 0.0)) / safe, 0.0).astype(f.dtype)
    return cfield, cmask, np.asarray(voxel_size, dtype=np.float64) * factor, cweight


# --------------------------------------------------------------------------- the sweep


def invert_recording_choices(invert, local_field, mask, voxel_size, **kwargs):
    """``invert(local_field, mask, voxel_size, **kwargs)`` -> ``(chi, chosen)``.

    Where a keyword of :data:`AUTOMATIC_PARAMETERS` is a string ("auto") and the inversion
    reports its info, ``chosen`` holds the chosen value and its selection record under their
    keys; otherwise it is empty.
    """
    import inspect

    automatic = [key for key in AUTOMATIC_PARAMETERS if isinstance(kwargs.get(key), str)]
    if not automatic or "return_info" not in inspect.signature(invert).parameters:
        return invert(local_field, mask, voxel_size, **kwargs), {}
    chi, info = invert(local_field, mask, voxel_size, return_info=True, **kwargs)
    chosen = {}
    for key in automatic:
        chosen[key] = info.get(key)
        chosen[AUTOMATIC_PARAMETERS[key]] = info.get(AUTOMATIC_PARAMETERS[key])
    return chi, chosen


def parse_alpha(alpha, name="alpha"):
    """``(value, criterion)`` of an ``alpha`` argument: a positive float and None, or None and
    the criterion of an automatic choice (``"auto"``: ``"default"``; ``"auto:<criterion>"``).

    Raises
    ------
    ValueError
        Naming ``name``, for any other string and for a non-positive or non-finite number.
    """
    from ._common import check_positive

    if isinstance(alpha, str):
        key = alpha.strip().lower()
        if key == "auto":
            return None, "default"
        if key.startswith("auto:") and key[5:] in CRITERIA:
            return None, key[5:]
        raise ValueError(f"{name} must be a positive number, \"auto\" or one of "
                         f"{', '.join(repr('auto:' + c) for c in CRITERIA)}; got {alpha!r}")
    return check_positive(alpha, name), None


def holdout_mask(shape, fraction, seed=0):
    """Pseudo-random voxels (about ``fraction`` of them) to hold out for cross-validation.

    Each voxel's draw is a hash of the symmetric functions of its indices, ``i + j + k``,
    ``ij + jk + ki`` and ``ijk``, and of ``seed``: reproducible, and invariant to a permutation
    of the array axes (so is the inversion's choice of ``alpha``).
    """
    idx = [np.arange(n, dtype=np.uint64).reshape([-1 if a == ax else 1 for a in range(3)])
           for ax, n in enumerate(shape)]
    i, j, k = idx
    with np.errstate(over="ignore"):
        x = ((i + j + k) * np.uint64(0x9E3779B97F4A7C15)
             + (i * j + j * k + k * i) * np.uint64(0xBF58476D1CE4E5B9)
             + (i * j * k) * np.uint64(0x94D049BB133111EB)
             + np.uint64(int(seed) % 2 ** 64) * np.uint64(0xD6E8FEB86659FD93))
        # splitmix64 finaliser
        x ^= x >> np.uint64(31)
        x *= np.uint64(0x7FB5D329728EA185)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x81DADEF4BC2DD44D)
        x ^= x >> np.uint64(33)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 < float(fraction)


def warm_solver(state, *, rho_factor=100.0, rho=None, first_iter=30, iter_per_alpha=10, tol=5e-3):
    """A ``solve`` callable for :func:`choose_alpha` that warm-starts every weight from the
    previous one on one iteration ``state`` (full resolution, no downsampling).

    ``state`` offers ``set_weight(weight)``, ``set_alpha(alpha, rho)``, ``run(max_iter, tol)``,
    ``chi_out()`` and ``measures()`` -> ``(data_cost, regulariser_cost, predicted_field)`` (the
    ADMM states of :mod:`chimap.invert.tv` and :mod:`chimap.invert.tv_wh`). The first weight
    gets at most ``first_iter`` iterations, every later one ``iter_per_alpha``; the ADMM penalty
    is ``rho_factor * alpha`` (or the fixed ``rho``). ``solve.calls`` counts calls and
    iterations.
    """
    calls = {"n": 0, "iterations": 0, "weight": None}

    def mark_best(alpha):
        """Keep a copy of the iterates: the best weight of the sweep so far (``"cv"``)."""
        solve.best = (alpha, snapshot_state(state, into=None if solve.best is None else solve.best[1]))

    def solve(alpha, local_field, mask, voxel_size, weight):
        if weight is not calls["weight"]:
            state.set_weight(weight)
            calls["weight"] = weight
        state.set_alpha(alpha, rho_factor * alpha if rho is None else rho)
        it, _, _ = state.run(first_iter if calls["n"] == 0 else iter_per_alpha, tol)
        calls["n"] += 1
        calls["iterations"] += it
        data, reg, predicted = state.measures()
        return state.chi_out(), {"data_cost": data, "regulariser_cost": reg, "iterations": it,
                                 "predicted_field": predicted}

    solve.calls = calls
    solve.best = None
    solve.mark_best = mark_best
    return solve


def snapshot_state(state, into=None):
    """Copies of the iterates named by ``state.ITERATES`` (into the arrays of ``into`` when
    given, to reuse their memory); :func:`restore_state` puts them back."""
    snap = {} if into is None else into
    for name in state.ITERATES:
        value = getattr(state, name, None)
        if value is None:
            snap.pop(name, None)
        elif name in snap and snap[name].shape == value.shape and snap[name].dtype == value.dtype:
            np.copyto(snap[name], value)
        else:
            snap[name] = np.array(value, copy=True)
    return snap


def restore_state(state, snap):
    """Make the iterates of a :func:`snapshot_state` the current ones (the snapshot's arrays are
    taken over, not copied)."""
    for name, value in snap.items():
        setattr(state, name, value)


def warm_sweep(state, local_field, mask, voxel_size, *, criterion, b0_direction=(0.0, 0.0, 1.0),
               weight=None, rho=None, tol=5e-3, pad_factor=1.5, phase_scale=None):
    """Choose a TV weight by a warm-started sweep on an ADMM ``state`` (:func:`warm_solver`).

    Every weight, from the largest down, continues from the previous solution; the sweep stops
    at the first weight past the minimum of the held-out error (``patience=1``; the parabolic
    vertex needs no more). On return the state holds the iterate of the sweep's best weight
    (``"cv"``; else its last) with the full data ``weight`` restored, so that the caller's
    final solve at the chosen weight continues from there. ``state.ITERATES`` names the
    arrays to keep. Returns ``(alpha, info)`` as :func:`choose_alpha` (TV sweep), with
    ``info["sweep_iterations"]`` and, for ``"cv"``, ``info["final_start_alpha"]``.
    """
    solve = warm_solver(state, rho=rho, tol=tol)
    alpha, info = choose_alpha(solve, local_field, mask, voxel_size, b0_direction=b0_direction,
                               weight=weight, pad_factor=pad_factor, regulariser="tv",
                               criterion=criterion, phase_scale=phase_scale, patience=1)
    info["sweep_iterations"] = solve.calls["iterations"]
    if solve.best is not None:  # continue from the best weight of the sweep, not its last
        info["final_start_alpha"] = solve.best[0]
        restore_state(state, solve.best[1])
    state.set_weight(weight)
    return alpha, info


def choose_alpha(solve, local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0),
                 criterion="cv", alphas=None, regulariser="tv", weight=None, holdout=0.1, seed=0,
                 patience=2, extend=4, downsample=1, alpha_scale=1.0, pad_factor=1.5,
                 frequency_options=None, frequency_factor=1.0, phase_scale=None):
    """Choose a regularisation weight from the data by a sweep of ``solve`` over ``alpha``.

    Parameters
    ----------
    solve : callable
        ``solve(alpha, local_field, mask, voxel_size, weight)`` -> chi, or (chi, info). It is
        called with decreasing weights (then, to widen the sweep, possibly increasing ones) and
        must fit the field with the data ``weight`` it gets (zero on the held-out voxels of
        ``"cv"``; None means 1 in the mask). ``info`` may give ``"predicted_field"`` (the
        model's field ``D chi`` (+ any other fitted component) on the input grid, ppm; needed
        by ``"cv"`` for solvers that also fit chi outside the mask, else it is computed from
        the returned chi), and ``"data_cost"`` and ``"regulariser_cost"``, the terms that the
        solver minimised (else computed from chi inside the mask).
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm.
    mask : numpy.ndarray of bool, shape (I, J, K)
    voxel_size : array_like, shape (3,)
        mm.
    b0_direction : array_like, shape (3,)
        B0 in voxel axes.
    criterion : {"cv", "frequency", "lcurve", "inflection"}
        Hold-out cross-validation of the field, frequency analysis, L-curve corner or L-curve
        inflection point (module docstring).
    alphas : sequence of float, optional
        Weights to try, on the solved grid; default ``DEFAULT_SWEEPS[regulariser]``.
    regulariser : {"tv", "l2-gradient", "l2"}
        The solver's regulariser (default sweep; regulariser term computed from chi).
    weight : numpy.ndarray, shape (I, J, K), optional
        Data weight of the problem (>= 0); None: 1 in the mask.
    holdout : float
        ``"cv"``: fraction of the weighted mask voxels held out, in (0, 0.5].
    seed : int
        ``"cv"``: seed of the reproducible pseudo-random choice of held-out voxels
        (:func:`holdout_mask`).
    patience : int
        ``"cv"``: stop the sweep once the held-out error has grown for this many weights past
        its minimum (0: never stop early).
    extend : int
        ``"cv"``: when the minimum lies at an end of the sweep, continue the sweep beyond it by
        at most this many steps of the sweep's (geometric) spacing.
    downsample : int
        Solve the sweep on a grid this many times coarser (:func:`downsample_problem`), for
        solvers that cannot warm-start; the chosen weight is multiplied by ``alpha_scale``.
    alpha_scale : float
        Map from a weight chosen on the coarse grid to the input grid (``downsample > 1``).
    pad_factor : float
        Zero padding of the grid on which chi is analysed (the solver's).
    frequency_options : dict, optional
        Keyword arguments of :func:`frequency_masks`.
    frequency_factor : float
        Multiplies the weight chosen by the frequency analysis (Milovic et al. suggest 1.5 to 2
        against its slight under-regularisation); 1 is the plain criterion.
    phase_scale : float, optional
        For solvers with the nonlinear data term of :mod:`chimap.invert.nonlinear` (rad/ppm):
        ``"cv"`` then measures a held-out residual ``r`` as the chord ``2 sin(s r / 2) / s``
        (``|exp(i s r) - 1| / s``, the residual that data term sees; ``r`` for ``s -> 0``).

    Returns
    -------
    alpha : float
        The chosen weight for the input grid.
    info : dict
        ``criterion``, ``alphas`` (the weights solved, in the order solved), ``index``
        (chosen sample), ``alpha_grid`` (choice on the swept grid), ``alpha``, ``at_edge``
        (the choice is an end of the sweep: widen it), ``downsample``, ``alpha_scale``,
        per weight ``data_cost`` and ``regulariser_cost``; with ``"cv"`` also ``holdout``,
        ``seed``, ``n_holdout`` and ``cv_rmse`` (root-mean-square weighted prediction error on
        the held-out voxels, ppm); with ``"frequency"`` ``cone_amplitude``, ``m2_amplitude``,
        ``m3_amplitude``, ``zeta``, ``frequency_applies``; with the L-curve ``curvature``.
    """
    import scipy.fft as sfft

    from ..kernels import dipole_kernel, fft_workers
    from ._common import Domain, check_positive

    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if regulariser not in DEFAULT_SWEEPS:
        raise ValueError(f"regulariser must be one of {tuple(DEFAULT_SWEEPS)}, got {regulariser!r}")
    downsample = check_positive(downsample, "downsample", integer=True)
    alpha_scale = check_positive(alpha_scale, "alpha_scale")
    frequency_factor = check_positive(frequency_factor, "frequency_factor")
    holdout = check_positive(holdout, "holdout")
    if holdout > 0.5:
        raise ValueError(f"holdout must be in (0, 0.5], got {holdout!r}")
    patience, extend = int(patience), int(extend)
    if patience < 0 or extend < 0:
        raise ValueError("patience and extend must be >= 0")
    sweep = np.sort(np.asarray(DEFAULT_SWEEPS[regulariser] if alphas is None else alphas,
                               dtype=np.float64))[::-1]
    _check_sweep(sweep)
    field, m, vs, w = local_field, np.asarray(mask, dtype=bool), np.asarray(voxel_size, float), weight
    if downsample > 1:
        field, m, vs, w = downsample_problem(field, m, vs, weight, downsample)
    f = np.asarray(field)
    dtype = f.dtype if np.issubdtype(f.dtype, np.floating) else np.dtype(np.float64)
    f = np.where(m, f, 0).astype(dtype)
    dom = Domain.from_mask(m, pad_factor, dtype)
    base_w = m.astype(dtype) if w is None else np.where(m, w, 0).astype(dtype)
    w_solve, held = w, None
    info = {"criterion": criterion, "downsample": downsample, "alpha_scale": alpha_scale}
    if criterion == "cv":
        held = (base_w > 0) & holdout_mask(m.shape, holdout, seed)
        n_held = int(held.sum())
        if n_held < 20 or n_held == int(np.count_nonzero(base_w)):
            raise ValueError(f"too few voxels to hold out {holdout:g} of them for cross-validation "
                             f"({n_held} of {int(np.count_nonzero(base_w))} weighted voxels in the mask): "
                             f"check the mask, or give the weight as a number instead of 'auto'")
        w_solve = np.where(held, 0, base_w).astype(dtype)
        w2_held = base_w[held].astype(np.float64) ** 2
        info.update(holdout=holdout, seed=seed, n_holdout=n_held)
    masks = mult = d = None
    if criterion == "frequency":
        masks, mult = frequency_masks(dom.padded, vs, b0_direction=b0_direction, **(frequency_options or {}))

    def kernel():
        nonlocal d
        if d is None:
            d = dipole_kernel(dom.padded, vs, b0_direction=b0_direction, real_fft=True, dtype=dtype)
        return d

    rows = {"data_cost": [], "regulariser_cost": []}
    if criterion == "cv":
        rows["cv_rmse"] = []
    if criterion == "frequency":
        rows.update(cone_amplitude=[], m2_amplitude=[], m3_amplitude=[])
    solved = []

    def run(a):
        out = solve(float(a), field, m, vs, w_solve)
        chi, sinfo = out if isinstance(out, tuple) else (out, {})
        chi = np.where(m, chi, 0).astype(dtype)
        pred = sinfo.get("predicted_field")
        if pred is None and (criterion == "cv" or "data_cost" not in sinfo):
            pred = dom.unpad(sfft.irfftn(sfft.rfftn(dom.pad(chi), workers=fft_workers()) * kernel(),
                                         s=dom.padded, workers=fft_workers()), m)
        if "data_cost" in sinfo and "regulariser_cost" in sinfo:
            data, reg = sinfo["data_cost"], sinfo["regulariser_cost"]
        else:
            ws = base_w if w_solve is None else w_solve
            data = float(np.sum((ws * (np.asarray(pred) - f))[m].astype(np.float64) ** 2))
            reg = solver_costs(dom.pad(chi), dom.pad(f), kernel(), vs, regulariser=regulariser)[1]
        rows["data_cost"].append(float(data))
        rows["regulariser_cost"].append(float(reg))
        if criterion == "cv":
            r = (np.asarray(pred)[held] - f[held]).astype(np.float64)
            if phase_scale is not None:
                r = 2.0 * np.sin(0.5 * phase_scale * r) / phase_scale
            rows["cv_rmse"].append(float(np.sqrt(np.sum(w2_held * r * r) / np.sum(w2_held))))
            if hasattr(solve, "mark_best") and rows["cv_rmse"][-1] <= min(rows["cv_rmse"]):
                solve.mark_best(float(a))
        if criterion == "frequency":
            amps = frequency_amplitudes(sfft.rfftn(dom.pad(chi), workers=fft_workers()), masks, mult)
            for key in ("cone", "m2", "m3"):
                rows[f"{key}_amplitude"].append(amps[key])
        solved.append(float(a))

    for k, a in enumerate(sweep):
        run(a)
        if criterion == "cv" and patience:
            i = int(np.argmin(rows["cv_rmse"]))
            # past an inner minimum by `patience` weights; a minimum still at the first weight
            # after two more means the sweep must widen upwards (below), not go on down
            if k - i >= (patience if i > 0 else max(patience, 2)):
                break
    if criterion == "cv" and extend:
        step = float(sweep[0] / sweep[1])
        for _ in range(extend):
            i = int(np.argmin(rows["cv_rmse"]))
            if i == len(solved) - 1 and solved[-1] == min(solved):
                run(solved[-1] / step)  # minimum at the small end: continue downwards
            elif i == 0 and solved[0] == max(solved):
                run(max(solved) * step)  # minimum at the large end: go back up
                # keep the rows ordered by decreasing alpha
                for values in rows.values():
                    values.insert(0, values.pop())
                solved.insert(0, solved.pop())
            else:
                break
    info["alphas"] = solved
    info.update(rows)
    a_grid, i = _decide(np.asarray(solved), rows, criterion, info, frequency_factor=frequency_factor)
    alpha = float(a_grid) * (alpha_scale if downsample > 1 else 1.0)
    info.update(index=int(i), alpha_grid=float(a_grid), alpha=alpha,
                at_edge=bool(i in (0, len(solved) - 1)))
    return alpha, info


def _decide(sweep, rows, criterion, info, *, frequency_factor=1.0):
    """Apply ``criterion`` to the rows of a sweep (decreasing ``sweep``); fills ``info`` with
    the criterion's curve and returns ``(alpha, index)``."""
    if criterion == "cv":
        e = np.log(np.asarray(rows["cv_rmse"], dtype=np.float64))
        i = int(np.argmin(e))
        a = float(sweep[i])
        if 0 < i < sweep.size - 1:
            # vertex of the parabola through the minimum and its neighbours (log-log)
            t = np.log(sweep[i - 1:i + 2])
            c = np.polyfit(t - t[1], e[i - 1:i + 2], 2)
            if c[0] > 0:
                a = float(np.exp(t[1] + np.clip(-c[1] / (2 * c[0]), t[2] - t[1], t[0] - t[1])))
        return a, i
    if criterion == "frequency":
        i, a, zeta, applies = frequency_criterion(sweep, rows["m2_amplitude"], rows["m3_amplitude"])
        info.update(zeta=zeta.tolist(), frequency_applies=applies, frequency_factor=frequency_factor)
        return a * frequency_factor, i
    info["curvature"] = lcurve_curvature(sweep, rows["data_cost"], rows["regulariser_cost"]).tolist()
    pick = lcurve_corner if criterion == "lcurve" else lcurve_inflection
    i, a = pick(sweep, rows["data_cost"], rows["regulariser_cost"])
    return a, i


def resolve_alpha(alpha, solve, local_field, mask, voxel_size, *, default_criterion="cv",
                  name="alpha", **kwargs):
    """One-line wiring of ``alpha="auto"`` into an inversion.

    Returns ``(alpha, None)`` for a number (validated; ValueError naming ``name`` otherwise),
    else ``choose_alpha(solve, local_field, mask, voxel_size, criterion=..., **kwargs)``, with
    ``"auto"`` meaning ``default_criterion``; put its second item into
    ``info["alpha_selection"]`` and solve at its first.
    """
    value, criterion = parse_alpha(alpha, name)
    if criterion is None:
        return value, None
    criterion = default_criterion if criterion == "default" else criterion
    return choose_alpha(solve, local_field, mask, voxel_size, criterion=criterion, **kwargs)


def tikhonov_sweep(field, dom, voxel_size, b0_direction, *, regulariser="gradient",
                   criterion="frequency", alphas=None, frequency_factor=1.0):
    """Exact sweep of the closed-form Tikhonov inversion (:func:`chimap.invert.tikhonov`).

    For ``chi(k) = D F(k) / (D^2 + alpha^2 R^2)`` the data term ``||D chi - f||^2``, the
    regulariser ``||R chi||^2`` and the spectrum of chi are closed-form in ``alpha`` (Parseval
    on the padded grid): every weight costs a few pointwise passes over the half spectrum and
    no FFT. The frequency analysis uses the spectrum of the (unmasked) closed-form chi.

    Parameters
    ----------
    field : numpy.ndarray
        Validated local field (zero outside the mask), input grid, ppm.
    dom : chimap.invert._common.Domain
        The padded grid of the inversion.
    voxel_size, b0_direction : numpy.ndarray, shape (3,)
        mm; unit vector in voxel axes.
    regulariser : {"gradient", "identity"}
    criterion : {"cv", "frequency", "lcurve", "inflection"}
        ``"cv"`` is generalised cross-validation here (Golub, Heath & Wahba 1979),
        ``n ||D chi - f||^2 / tr(I - A)^2`` with the influence ``A = D^2 / (D^2 + alpha^2 R^2)``,
        exact for the closed form; ``info["cv_rmse"]`` holds its square root.
    alphas : sequence of float, optional
        Default ``DEFAULT_SWEEPS["l2-gradient"]`` (``["l2"]`` for the identity).
    frequency_factor : float
        As in :func:`choose_alpha`.

    Returns
    -------
    alpha : float
    info : dict
        As :func:`choose_alpha`.
    """
    import scipy.fft as sfft

    from ..kernels import dipole_kernel, fft_workers, laplacian_kernel

    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    key = "l2-gradient" if regulariser == "gradient" else "l2"
    sweep = np.sort(np.asarray(DEFAULT_SWEEPS[key] if alphas is None else alphas, dtype=np.float64))[::-1]
    _check_sweep(sweep)
    spec = sfft.rfftn(dom.pad(field), workers=fft_workers())
    masks, mult = frequency_masks(dom.padded, voxel_size, b0_direction=b0_direction)
    d = dipole_kernel(dom.padded, voxel_size, b0_direction=b0_direction, real_fft=True, dtype=np.float32)
    if regulariser == "gradient":
        r2 = -laplacian_kernel(dom.padded, voxel_size, real_fft=True, dtype=np.float32)
    else:
        r2 = np.ones_like(d)
    d2 = d * d
    p = (spec.real ** 2 + spec.imag ** 2).astype(np.float32) * mult.astype(np.float32)
    pr4, pr2d2 = p * r2 * r2, p * r2 * d2
    mean_residual = float(p[0, 0, 0])  # k = 0: D(0) = 0, the residual is -F(0) for every alpha
    pr4[0, 0, 0] = pr2d2[0, 0, 0] = 0.0
    del p
    n = float(np.prod(dom.padded))
    regions = {name: (d[m], r2[m], np.abs(spec[m]), np.broadcast_to(mult, m.shape)[m])
               for name, m in masks.items()}
    del spec
    rows = {k: [] for k in ("data_cost", "regulariser_cost", "cv_rmse", "cone_amplitude",
                            "m2_amplitude", "m3_amplitude")}
    mult32 = np.broadcast_to(mult.astype(np.float32), d.shape)
    for a in sweep:
        a2 = np.float32(a * a)
        den = d2 + a2 * r2
        den[0, 0, 0] = 1.0
        # generalised cross-validation: n ||r||^2 / tr(I - A)^2, A = D^2 / den (A(0) = 0)
        one_minus_a = (a2 * r2) / den
        one_minus_a[0, 0, 0] = 1.0  # D(0) = 0: the mean is never fitted
        trace = float(np.sum(mult32 * one_minus_a, dtype=np.float64))
        del one_minus_a
        den *= den
        # residual D chi - f = -alpha^2 R^2 F / den (Parseval: sum over x = sum over k / n)
        rows["data_cost"].append((float(a2) ** 2 * float(np.sum(pr4 / den, dtype=np.float64))
                                  + mean_residual) / n)
        rows["regulariser_cost"].append(float(np.sum(pr2d2 / den, dtype=np.float64)) / n)
        rows["cv_rmse"].append(float(np.sqrt(n * rows["data_cost"][-1]) / trace))
        for name, (ds, rs, fs, ws) in regions.items():
            amp = np.abs(ds) * fs / (ds * ds + a2 * rs)
            rows[f"{name}_amplitude"].append(float(np.sum(amp * ws) / max(float(np.sum(ws)), 1e-300)))
    info = {"criterion": criterion, "alphas": [float(a) for a in sweep], "downsample": 1,
            "alpha_scale": 1.0, **rows}
    alpha, i = _decide(sweep, rows, criterion, info, frequency_factor=frequency_factor)
    info.update(index=int(i), alpha_grid=float(alpha), alpha=float(alpha),
                at_edge=bool(i in (0, len(sweep) - 1)))
    return float(alpha), info
