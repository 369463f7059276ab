"""Multi-echo combination: phase of several echoes -> one field map with a reliability map.

The 2024 consensus (Biondetti et al. MRM 2022;88:2101, doi:10.1002/mrm.29365; QSM consensus
MRM 2024;91:1834) recommends combining the echoes *before* background field removal, either by a
fit of phase against echo time or by a weighted combination of per-echo fields. This module
offers both, plus MEDI's nonlinear complex fit which works on wrapped phase:

* :func:`fit_field_linear` -- weighted least squares of *unwrapped* phase against TE
  (through the origin after phase-offset removal, or with an intercept).
* :func:`weighted_echo_average` -- ROMEO's "B0 weighted combination" of per-echo fields
  ``phase_e / (2 pi TE_e)`` (Dymerska et al. MRM 2021;85:2329; Biondetti 2022).
* :func:`fit_field_complex` -- Gauss-Newton fit of ``S_e = |S_e| exp(i (phi0 + omega TE_e))`` to
  the complex signal (MEDI's ``Fit_ppm_complex``; Liu et al. MRM 2013;69:467, Kressler et al.
  IEEE TMI 2010;29:273). Needs no unwrapping, but returns an aliased field (see there).

Units (design.md section 3): phase in rad, echo times in s; the field is returned in Hz when
``field_strength`` is None and in ppm of B0 otherwise. The reliability (noise) maps are standard
errors of the field estimate in the same unit, 0 outside the mask, ``inf`` in masked voxels with
no signal; ``1 / reliability**2`` is an inverse-variance weight.

Noise level. Every fit assumes complex Gaussian noise of standard deviation ``sigma`` per channel,
so that the phase of echo ``e`` has variance ``sigma**2 / |S_e|**2``. ``sigma`` is taken from the
``noise`` argument:

* ``"local"`` -- per voxel from the weighted residuals of the fit (``E - p`` degrees of freedom,
  ``p`` fitted parameters): flags voxels where the model fails (unwrapping errors, flow, fat)
  but is itself noisy when there are few echoes;
* ``"global"`` -- one value pooled over the mask (the median of the local estimates, made
  unbiased for the chi-square median): a smooth, magnitude-driven map like MEDI's ``N_std``;
* a float -- the known noise standard deviation in magnitude units (no residuals used).

With no residual degrees of freedom (one echo; two echoes with an intercept) and no float given,
``sigma = 1`` is used: the map is then only *relative* (in units of the noise level), as MEDI's
``N_std`` always is.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from scipy import stats

from ..geometry import check_voxel_size
from ..units import check_echo_times, check_field_strength, hz_per_ppm

__all__ = ["fit_field_complex", "fit_field_linear", "weighted_echo_average"]

_WEIGHTINGS = ("phase_snr", "phase_var", "average", "te", "mag")


# ---------------------------------------------------------------------------------------------
# validation helpers (also used by chimap.field.offsets)


def _out_dtype(arr: np.ndarray) -> np.dtype:
    return arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)


def _check_mask(mask, spatial_shape) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != tuple(spatial_shape):
        raise ValueError(f"mask has shape {m.shape} but the data's spatial shape is {tuple(spatial_shape)}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or not np.all((m == 0) | (m == 1)):
            raise ValueError("mask must be boolean (or contain only 0 and 1)")
        m = m.astype(bool)
    return m


def _as_echo_array(arr, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim == 3:
        return a[..., None]
    if a.ndim != 4:
        raise ValueError(f"{name} must have shape (I, J, K, E) (or (I, J, K) for one echo), got {a.shape}")
    return a


def _masked_echoes(phase, mask, *, echo_times, magnitude=None, phase_name="phase",
                   magnitude_required=False, min_echoes=1):
    """Validate and gather masked voxels.

    Returns ``(P, M, te, mask, spatial_shape, dtype)`` with ``P`` (N, E) float64 phase, ``M``
    (N, E) float64 magnitude or None.
    """
    p4 = _as_echo_array(phase, phase_name)
    n_echoes = p4.shape[-1]
    te = check_echo_times(echo_times, n_echoes=n_echoes)
    if n_echoes < min_echoes:
        raise ValueError(f"this fit needs at least {min_echoes} echoes, the data has {n_echoes}")
    m = _check_mask(mask, p4.shape[:3])
    P = p4[m].astype(np.float64)
    if not np.all(np.isfinite(P)):
        raise ValueError(f"{phase_name} contains NaN or inf inside the mask")
    M = None
    if magnitude is None:
        if magnitude_required:
            raise ValueError("magnitude is required")
    else:
        m4 = _as_echo_array(magnitude, "magnitude")
        if m4.shape != p4.shape:
            raise ValueError(f"magnitude has shape {np.shape(magnitude)} but {phase_name} has shape "
                             f"{np.shape(phase)}: they must match")
        M = m4[m].astype(np.float64)
        if not np.all(np.isfinite(M)):
            raise ValueError("magnitude contains NaN or inf inside the mask")
        if np.any(M < 0):
            raise ValueError("magnitude must be non-negative (pass |S|, not a signed image)")
    return P, M, te, m, p4.shape[:3], _out_dtype(np.asarray(phase))


def _check_noise(noise):
    if isinstance(noise, str):
        if noise not in ("local", "global"):
            raise ValueError(f"noise must be 'local', 'global' or a positive float, got {noise!r}")
        return noise
    try:
        s = float(noise)
    except (TypeError, ValueError):
        raise ValueError(f"noise must be 'local', 'global' or a positive float, got {noise!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"noise standard deviation must be positive and finite, got {s}")
    return s


def _noise_variance(wrss: np.ndarray, dof: int, noise) -> np.ndarray | float:
    """sigma**2 per voxel (or scalar) from the weighted residual sum of squares ``wrss``."""
    if not isinstance(noise, str):
        return float(noise) ** 2
    if dof <= 0:
        return 1.0
    local = wrss / dof
    if noise == "local":
        return local
    finite = local[np.isfinite(local)]
    if finite.size == 0:
        return 1.0
    # median of chi2(dof)/dof is below 1: rescale so the pooled estimate is unbiased
    return float(np.median(finite) / (stats.chi2.ppf(0.5, dof) / dof))


def _to_output(values_hz, se_hz, mask, spatial_shape, dtype, field_strength):
    scale = 1.0 if field_strength is None else 1.0 / hz_per_ppm(field_strength)
    field = np.zeros(spatial_shape, dtype=dtype)
    rel = np.zeros(spatial_shape, dtype=dtype)
    field[mask] = values_hz * scale
    rel[mask] = se_hz * scale
    return field, rel


def _check_common(voxel_size, field_strength):
    check_voxel_size(voxel_size)
    if field_strength is not None:
        check_field_strength(field_strength)


# ---------------------------------------------------------------------------------------------
# linear fit of unwrapped phase


def fit_field_linear(phase_unwrapped, mask, voxel_size, *, echo_times, magnitude=None,
                     field_strength=None, fit_offset=False, noise="local"):
    """Weighted least-squares fit of unwrapped phase against echo time, per voxel.

    Model ``phase_e = 2 pi f TE_e`` (``fit_offset=False``; the phase offset must have been
    removed first, e.g. with :func:`chimap.field.offsets.mcpc3ds`) or
    ``phase_e = phi0 + 2 pi f TE_e`` (``fit_offset=True``). Each echo is weighted by its inverse
    phase variance ``|S_e|**2``; written on the per-echo fields ``phase_e / (2 pi TE_e)`` these
    are the weights ``|S_e|**2 TE_e**2`` of the "phase_var" combination, i.e. the optimal
    (maximum-likelihood) combination for Gaussian noise at high SNR (cf. Wu et al. NeuroImage
    2012;59:297; the weightings are compared in Biondetti et al. MRM 2022;88:2101). Without
    ``magnitude`` all echoes weigh the same in phase.

    With one echo (through the origin) this is ``phase / (2 pi TE)``.

    Parameters
    ----------
    phase_unwrapped : numpy.ndarray, shape (I, J, K, E) or (I, J, K)
        Spatially and temporally unwrapped phase in rad (consistent across echoes).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels to fit; the outputs are 0 elsewhere. NaN or inf inside the mask is an error.
    voxel_size : float or sequence of 3 float
        mm (validated; the fit is voxel-wise).
    echo_times : sequence of float
        Seconds, one per echo.
    magnitude : numpy.ndarray, optional
        Same shape as the phase; weights ``|S_e|**2``.
    field_strength : float, optional
        Tesla. None: the field is returned in Hz; otherwise in ppm of B0.
    fit_offset : bool
        Fit an intercept ``phi0`` as well (needs two echoes or more).
    noise : {"local", "global"} or float
        Source of the noise level for the reliability map (see the module docstring).

    Returns
    -------
    field : numpy.ndarray, shape (I, J, K)
        Hz, or ppm when ``field_strength`` is given; dtype of the phase.
    reliability : numpy.ndarray, shape (I, J, K)
        Standard error of ``field`` in the same unit: ``sigma / (2 pi sqrt(sum_e w_e TE_e**2))``
        through the origin (the slope's standard error with an intercept). ``inf`` where every
        echo has zero magnitude.
    """
    _check_common(voxel_size, field_strength)
    noise = _check_noise(noise)
    P, M, te, m, shape, dtype = _masked_echoes(phase_unwrapped, mask, echo_times=echo_times,
                                               magnitude=magnitude, phase_name="phase_unwrapped",
                                               min_echoes=2 if fit_offset else 1)
    n_echoes = te.size
    t = 2.0 * np.pi * te  # phase = f * t, f in Hz
    w = np.ones_like(P) if M is None else M * M
    with np.errstate(divide="ignore", invalid="ignore"):
        if not fit_offset:
            s_tt = w @ (t * t)
            f = (w * P) @ t / s_tt
            resid = P - f[:, None] * t
            inv_info = 1.0 / s_tt
            dof = n_echoes - 1
        else:
            a11 = w.sum(axis=1)
            a12 = w @ t
            a22 = w @ (t * t)
            b1 = (w * P).sum(axis=1)
            b2 = (w * P) @ t
            det = a11 * a22 - a12 * a12
            f = (a11 * b2 - a12 * b1) / det
            phi0 = (a22 * b1 - a12 * b2) / det
            resid = P - phi0[:, None] - f[:, None] * t
            inv_info = a11 / det
            dof = n_echoes - 2
        wrss = np.sum(w * resid * resid, axis=1)
        bad = ~np.isfinite(f)
        wrss[bad] = np.nan
        sigma2 = _noise_variance(wrss, dof, noise)
        se = np.sqrt(sigma2 * inv_info)
    f[bad] = 0.0
    se[bad] = np.inf
    return _to_output(f, se, m, shape, dtype, field_strength)


# ---------------------------------------------------------------------------------------------
# weighted average of per-echo fields (ROMEO)


def weighted_echo_average(phase_unwrapped, mask, voxel_size, *, echo_times, magnitude=None,
                          field_strength=None, weighting="phase_snr", noise="local"):
    """Weighted average of per-echo fields ``phase_e / (2 pi TE_e)`` (ROMEO's B0 combination).

    ``field = sum_e w_e field_e / sum_e w_e`` (Dymerska et al. MRM 2021;85:2329, the
    ``calculateB0_unwrapped`` function of ROMEO/MriResearchTools; compared in Biondetti et al.
    MRM 2022;88:2101). The phase offset must have been removed first.

    Parameters
    ----------
    phase_unwrapped : numpy.ndarray, shape (I, J, K, E) or (I, J, K)
        Unwrapped phase, rad, offset removed.
    mask : numpy.ndarray of bool, shape (I, J, K)
    voxel_size : float or sequence of 3 float
        mm (validated).
    echo_times : sequence of float
        Seconds.
    magnitude : numpy.ndarray, optional
        Same shape as the phase; treated as 1 when omitted.
    field_strength : float, optional
        None: Hz; otherwise ppm at this many tesla.
    weighting : {"phase_snr", "phase_var", "average", "te", "mag"}
        ``w_e = |S_e| TE_e`` (ROMEO's default, proportional to the per-echo phase SNR),
        ``|S_e|**2 TE_e**2`` (inverse variance; equals :func:`fit_field_linear`), ``1``,
        ``TE_e`` or ``|S_e|``.
    noise : {"local", "global"} or float
        Noise level for the reliability map (module docstring); the local estimate uses the
        scatter of the per-echo fields around the average (``E - 1`` degrees of freedom).

    Returns
    -------
    field, reliability : numpy.ndarray, shape (I, J, K)
        Field (Hz or ppm) and its standard error
        ``sigma * sqrt(sum_e w_e**2 / (|S_e| 2 pi TE_e)**2) / sum_e w_e`` in the same unit.
    """
    _check_common(voxel_size, field_strength)
    noise = _check_noise(noise)
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    P, M, te, m, shape, dtype = _masked_echoes(phase_unwrapped, mask, echo_times=echo_times,
                                               magnitude=magnitude, phase_name="phase_unwrapped")
    mag = np.ones_like(P) if M is None else M
    t = 2.0 * np.pi * te
    fe = P / t  # per-echo field, Hz
    w = {"phase_snr": mag * te, "phase_var": (mag * te) ** 2, "average": np.ones_like(P),
         "te": np.broadcast_to(te, P.shape), "mag": mag}[weighting]
    with np.errstate(divide="ignore", invalid="ignore"):
        sw = w.sum(axis=1)
        f = (w * fe).sum(axis=1) / sw
        prec = (mag * t) ** 2  # inverse variance of field_e, in units of 1/sigma**2
        wrss = np.sum(prec * (fe - f[:, None]) ** 2, axis=1)
        var_unit = np.sum(w * w / prec, axis=1) / (sw * sw)
        bad = ~np.isfinite(f) | ~np.isfinite(var_unit)
        wrss[bad] = np.nan
        sigma2 = _noise_variance(wrss, te.size - 1, noise)
        se = np.sqrt(sigma2 * var_unit)
    f[bad] = 0.0
    se[bad] = np.inf
    return _to_output(f, se, m, shape, dtype, field_strength)


# ---------------------------------------------------------------------------------------------
# nonlinear complex fit (MEDI Fit_ppm_complex)


def _uniform_spacing(te: np.ndarray) -> bool:
    d = np.diff(te)
    return bool(np.all(np.abs(d - d[0]) <= 1e-9 + 1e-6 * d[0]))


@njit(cache=True)
def _phase_at_zero(M, P, te, n, om):  # pragma: no cover - numba
    """``phi0 = angle(sum_e |S_e|^2 exp(i (P_e - om TE_e)))`` of voxel ``n`` for frequency ``om``."""
    cs = 0.0
    sn = 0.0
    for e in range(P.shape[1]):
        w = M[n, e] * M[n, e]
        cs += w * np.cos(P[n, e] - om * te[e])
        sn += w * np.sin(P[n, e] - om * te[e])
    return np.arctan2(sn, cs)


@njit(cache=True, parallel=True)
def _gauss_newton_complex(M, P, te, dte, iterations, tol, wrap):  # pragma: no cover - numba
    """Per-voxel Gauss-Newton for ``S_e = M_e exp(i (phi0 + omega TE_e))``.

    With ``W = M exp(i theta)`` the Gauss-Newton right-hand side ``Re(conj(i W) (S - W))`` is
    ``M**2 sin(P - theta)`` and the normal matrix ``sum M**2 [1, TE; TE, TE**2]`` is constant.
    Returns omega (rad/s), phi0 (rad), the residual sum of squares ``sum |S - model|**2``,
    ``sum M**2`` and ``[(J^H J)^-1]_omega`` (inf where the matrix is singular).
    """
    n_vox, n_e = M.shape
    omega = np.zeros(n_vox)
    phi0 = np.zeros(n_vox)
    rss = np.full(n_vox, np.nan)
    a11o = np.zeros(n_vox)
    ai22o = np.full(n_vox, np.inf)
    two_pi = 2.0 * np.pi
    for n in prange(n_vox):
        a11 = 0.0
        a12 = 0.0
        a22 = 0.0
        for e in range(n_e):
            w = M[n, e] * M[n, e]
            a11 += w
            a12 += w * te[e]
            a22 += w * te[e] * te[e]
        a11o[n] = a11
        det = a11 * a22 - a12 * a12
        if not (a11 > 0 and det > 1e-10 * a11 * a22):  # no signal, or one echo carries it all
            continue
        # initial omega from echoes 1 and 2 (Hermitian product), phi0 from all echoes
        d12 = P[n, 1] - P[n, 0]
        d12 = d12 - two_pi * np.floor((d12 + np.pi) / two_pi)
        om = d12 / dte
        ph = _phase_at_zero(M, P, te, n, om)
        for _ in range(iterations):
            pr1 = 0.0
            pr2 = 0.0
            for e in range(n_e):
                g = M[n, e] * M[n, e] * np.sin(P[n, e] - ph - om * te[e])
                pr1 += g
                pr2 += g * te[e]
            d_om = (a11 * pr2 - a12 * pr1) / det
            ph += (a22 * pr1 - a12 * pr2) / det
            om += d_om
            if abs(d_om * dte) <= tol:
                break
        if wrap:
            x = om * dte
            xw = x - two_pi * np.floor((x + np.pi) / two_pi)
            if xw != x:  # alias to [-pi, pi) per dTE and refit phi0 for the aliased omega
                om = xw / dte
                ph = _phase_at_zero(M, P, te, n, om)
        r = 0.0
        for e in range(n_e):
            r += 2.0 * M[n, e] * M[n, e] * (1.0 - np.cos(P[n, e] - ph - om * te[e]))
        omega[n] = om
        phi0[n] = ph
        rss[n] = r
        ai22o[n] = a11 / det
    return omega, phi0, rss, a11o, ai22o


def fit_field_complex(magnitude, phase, mask, voxel_size, *, echo_times, field_strength=None,
                      iterations=30, tol=1e-9, noise="global", return_residual=False):
    """Nonlinear fit of the complex multi-echo signal; works on wrapped phase.

    Fits ``S_e = |S_e| exp(i (phi0 + omega TE_e))`` per voxel by Gauss-Newton iterations
    (a numba kernel, parallel over voxels), exactly as MEDI's ``Fit_ppm_complex`` (Liu et al. MRM 2013;69:467;
    Kressler et al. IEEE TMI 2010;29:273) but for arbitrary echo times and with ``phi0`` the
    phase at ``TE = 0`` (MEDI's ``p0`` is the phase at TE1). The model magnitude is the measured
    ``|S_e|`` (not fitted), so echoes are weighted by ``|S_e|**2``, their inverse phase variance.
    Initialisation: ``omega`` from the Hermitian product of echoes 1 and 2,
    ``phi0 = angle(sum_e |S_e| S_e exp(-i omega TE_e))``.

    Aliasing. ``omega`` is determined only modulo ``2 pi / dTE`` with ``dTE = TE2 - TE1``: a
    field beyond ``+-1 / (2 dTE)`` Hz (71 Hz for dTE = 7 ms) comes back aliased, exactly as in
    MEDI. With uniformly spaced echoes the result is wrapped to ``[-pi, pi)`` in
    ``omega * dTE`` (and ``phi0`` re-fitted), so the returned field is a *wrapped* field: spatially
    unwrap ``2 pi field_hz * dTE`` afterwards (MEDI unwraps ``iFreq_raw`` with region growing or a
    Laplacian) and divide back. Remove the phase offset first only if you want ``phi0`` ~ 0; the
    fit itself does not need it.

    Parameters
    ----------
    magnitude, phase : numpy.ndarray, shape (I, J, K, E)
        Magnitude (a.u.) and wrapped phase (rad) of two or more echoes.
    mask : numpy.ndarray of bool, shape (I, J, K)
    voxel_size : float or sequence of 3 float
        mm (validated; the fit is voxel-wise).
    echo_times : sequence of float
        Seconds, increasing is not required but TE2 != TE1 is.
    field_strength : float, optional
        None: field in Hz; otherwise ppm at this many tesla.
    iterations : int
        Maximum Gauss-Newton iterations (MEDI: 30).
    tol : float
        A voxel stops when its update of ``omega * dTE`` is below ``tol`` rad.
    noise : {"global", "local"} or float
        Noise level for the noise map (module docstring). The default "global" gives MEDI's
        ``N_std = sqrt([(J^H J)^-1]_omega)`` scaled by a noise level estimated from the residuals
        over the mask, i.e. a physical standard error.
    return_residual : bool
        Also return MEDI's relative residual ``sum|S - model|**2 / sum|S|**2``
        (the consensus excludes voxels above 0.3).

    Returns
    -------
    field : numpy.ndarray, shape (I, J, K)
        ``omega / (2 pi)`` in Hz, or ppm with ``field_strength``; aliased as described above.
    phase_offset : numpy.ndarray, shape (I, J, K)
        ``phi0`` in rad, wrapped to ``[-pi, pi)``.
    noise_map : numpy.ndarray, shape (I, J, K)
        Standard error of ``field`` in its unit (``inf`` where the magnitude is zero).
    relative_residual : numpy.ndarray, shape (I, J, K)
        Only with ``return_residual=True``.
    """
    _check_common(voxel_size, field_strength)
    noise = _check_noise(noise)
    iterations = int(iterations)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if np.ndim(phase) == 4 and np.shape(phase)[-1] < 2 or np.ndim(phase) == 3:
        raise ValueError("the complex fit needs two or more echoes (phi0 and omega are not separable "
                         "from one echo); for one echo use fit_field_linear after offset removal")
    P, M, te, m, shape, dtype = _masked_echoes(phase, mask, echo_times=echo_times, magnitude=magnitude,
                                               magnitude_required=True, min_echoes=2)
    dte = te[1] - te[0]
    if dte == 0:
        raise ValueError("the first two echo times must differ")
    wrap = te.size == 2 or _uniform_spacing(te)
    omega, phi0, rss, a11, ai22 = _gauss_newton_complex(M, P, te, dte, iterations, float(tol), wrap)
    good = np.isfinite(ai22)
    sigma2 = _noise_variance(rss, te.size - 2, noise)
    with np.errstate(invalid="ignore"):
        se_hz = np.sqrt(sigma2 * ai22) / (2 * np.pi)
    se_hz[~good] = np.inf
    f_hz = omega / (2 * np.pi)
    phi0 = np.mod(phi0 + np.pi, 2 * np.pi) - np.pi
    field, noise_map = _to_output(f_hz, se_hz, m, shape, dtype, field_strength)
    offset = np.zeros(shape, dtype=dtype)
    offset[m] = phi0
    if not return_residual:
        return field, offset, noise_map
    with np.errstate(divide="ignore", invalid="ignore"):
        relres = np.where(good, rss / a11, 0.0)
    rr = np.zeros(shape, dtype=dtype)
    rr[m] = relres
    return field, offset, noise_map, rr
