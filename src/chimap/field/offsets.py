"""Receiver phase offsets: MCPC-3D-S estimation (Eckstein et al. MRM 2018;79:2996) and removal.

The measured phase of echo ``e`` is ``phase_e = phi0 + 2 pi f TE_e`` (mod 2 pi) with ``phi0`` a
smooth, echo-independent offset left by the transceiver and coil combination (monopolar
readouts; bipolar gradient-delay correction is not implemented). Removing ``phi0`` makes the
phase proportional to TE, which the through-origin fits of :mod:`chimap.field.combine` and the
temporal unwrapping need.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from scipy import ndimage

from ..geometry import check_voxel_size
from ..units import check_echo_times
from .combine import _as_echo_array, _check_mask, _out_dtype
from .unwrap import unwrap_region_growing, wrap

__all__ = ["mcpc3ds", "remove_phase_offset"]


def _smooth_sigma_vox(sigma_mm, voxel_size):
    s = np.asarray(sigma_mm, dtype=np.float64).ravel()
    if s.size == 1:
        s = np.repeat(s, 3)
    if s.size != 3 or not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"sigma_mm must be one or three non-negative numbers (mm), got {s.tolist()}")
    return s / voxel_size


def mcpc3ds(phase, mask, voxel_size, *, magnitude=None, echo_times, echoes=(0, 1), sigma_mm=10.0,
            smoothing="gaussian", unwrap_difference=False, unwrap=None):
    """Estimate the receiver phase offset with MCPC-3D-S (Eckstein et al. MRM 2018;79:2996).

    With echoes ``a`` and ``b`` (``dTE = TE_b - TE_a``):

    1. the Hermitian product ``H = S_b conj(S_a)`` gives the phase evolution
       ``dphi = angle(H) = 2 pi f dTE`` without the offset;
    2. the field phase at ``TE_a`` is ``dphi * TE_a / dTE``; subtracting it from the phase of
       echo ``a`` leaves the offset ``phi0``;
    3. ``phi0`` is smoothed without unwrapping by Gaussian smoothing of the complex exponential
       ``w exp(i phi0)`` (``w = sqrt(|S_a| |S_b|)`` inside ``mask``, 0 outside; as
       ``mcpc3ds`` in ROMEO's MriResearchTools) with ``sigma_mm`` in millimetres on the
       (possibly anisotropic) grid, and the angle taken.

    Local-linear smoothing (``smoothing="local_linear"``, chimap's deviation from the paper).
    Gaussian smoothing is a weighted local *mean*: within about ``sigma_mm`` of the mask's edge
    the window is one-sided, so an offset that varies across the head is biased towards its
    interior values there. On the simulated 1 mm GRE head (``benchmarks/bench_pipeline.py``
    data) the offset error in the outermost millimetre of the mask was 0.068 rad with
    ``sigma_mm = 10`` against 0.008 rad deeper than 12 mm: 4 ppb of field at TE 20 ms, the
    largest error of the field near the edge. ``"local_linear"`` fits, in the same Gaussian
    window and with the same weights, a plane ``a + b . (x - x0)`` to the raw offset and keeps
    ``a`` (first-order normalised convolution, Knutsson & Westin, CVPR 1993). The raw offset is
    made continuous first: the Gaussian estimate, which is smooth, is unwrapped
    (:func:`chimap.field.unwrap.unwrap_region_growing`) and the raw offset's wrapped difference
    from it added back. A linear offset is then reproduced exactly up to the edge; on the head
    (with ``unwrap_difference``) the error was 0.0037 rad at the edge and 0.0003 rad inside
    with ``sigma_mm = 5``. Where the window holds too little of the mask (Gaussian weight below
    5 % of its maximum) or the plane is ill-determined, the Gaussian result is kept; outside
    ``mask`` the offset is the Gaussian result. On the 1 mm four-echo simulated head (2 cores) it
    took about 9 s against 4-6 s for the Gaussian (ad-hoc timing, both with ``unwrap_difference``).

    Wraps of the echo difference. Step 2 assumes ``dphi`` is not wrapped, i.e.
    ``|f| < 1 / (2 dTE)`` (71 Hz for dTE = 7 ms), as in the paper. Where it does wrap, ``phi0``
    errs by ``2 pi TE_a / dTE`` per wrap; this vanishes modulo 2 pi when ``TE_a / dTE`` is an
    integer (e.g. ``TE_b = 2 TE_a``, the paper's recommended timing). Otherwise pass ``unwrap``:
    it is called as ``unwrap(dphi, mask, voxel_size)`` and must return the spatially unwrapped
    difference (e.g. ``functools.partial(unwrap_region_growing, magnitude=...)``, as ROMEO
    does); its result is shifted by the 2 pi multiple that makes the median wrap count in the
    mask zero, so a global 2 pi ambiguity of the unwrapper does not bias the offset.

    Parameters
    ----------
    phase : numpy.ndarray, shape (I, J, K, E)
        Wrapped phase in rad, two or more echoes.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels whose estimate is trusted (they weigh in the smoothing). The offset is returned
        on the whole grid: near the mask it is the smoothed extrapolation, far from it (smoothed
        weight below 1e-3 of its maximum) the raw estimate.
    voxel_size : float or sequence of 3 float
        mm.
    magnitude : numpy.ndarray, optional
        Same shape as ``phase``; weights of the smoothing (uniform without it).
    echo_times : sequence of float
        Seconds, one per echo.
    echoes : pair of int
        Zero-based indices of the two echoes used (default the first two, as the paper).
    sigma_mm : float or sequence of 3 float
        Standard deviation of the Gaussian smoothing in mm (default 10 mm, i.e. ROMEO's
        ``sigma = [10, 10, 5]`` voxels at 1 x 1 x 2 mm). 0 disables smoothing.
    smoothing : {"gaussian", "local_linear"}
        Gaussian weighted mean (the paper) or a local plane fitted in the same window (above).
    unwrap_difference : bool
        Unwrap the echo difference with :func:`chimap.field.unwrap.unwrap_region_growing`
        (magnitude ``sqrt(|S_a| |S_b|)`` as its quality) before step 2, as ROMEO does; needed
        wherever ``|f| > 1 / (2 dTE)`` unless ``TE_a / dTE`` is an integer. Ignored when
        ``unwrap`` is given.
    unwrap : callable, optional
        Spatial unwrapper for the echo difference, see above.

    Returns
    -------
    numpy.ndarray, shape (I, J, K)
        Phase offset ``phi0`` in rad, wrapped to ``[-pi, pi)``, dtype of ``phase``. Remove it
        with :func:`remove_phase_offset`.
    """
    vs = check_voxel_size(voxel_size)
    p4 = _as_echo_array(phase, "phase")
    if np.ndim(phase) != 4 or p4.shape[-1] < 2:
        raise ValueError(f"MCPC-3D-S needs two or more echoes with shape (I, J, K, E), got {np.shape(phase)}")
    te = check_echo_times(echo_times, n_echoes=p4.shape[-1])
    m = _check_mask(mask, p4.shape[:3])
    try:
        ea, eb = (int(e) for e in echoes)
    except (TypeError, ValueError):
        raise ValueError(f"echoes must be two echo indices, got {echoes!r}") from None
    n_e = p4.shape[-1]
    if not (0 <= ea < n_e and 0 <= eb < n_e) or ea == eb:
        raise ValueError(f"echoes must be two different zero-based indices below {n_e}, got {echoes!r}")
    dte = te[eb] - te[ea]
    if dte <= 0:
        raise ValueError(f"echo {eb} must come after echo {ea} (TE {te[eb]} s vs {te[ea]} s)")
    sig = _smooth_sigma_vox(sigma_mm, vs)
    if smoothing not in ("gaussian", "local_linear"):
        raise ValueError(f'smoothing must be "gaussian" or "local_linear", got {smoothing!r}')

    pa = p4[..., ea].astype(np.float64)
    pb = p4[..., eb].astype(np.float64)
    if not (np.all(np.isfinite(pa[m])) and np.all(np.isfinite(pb[m]))):
        raise ValueError("phase contains NaN or inf inside the mask")
    if magnitude is None:
        weight = np.ones(pa.shape)
    else:
        m4 = _as_echo_array(magnitude, "magnitude")
        if m4.shape != p4.shape:
            raise ValueError(f"magnitude has shape {np.shape(magnitude)} but phase has shape {p4.shape}")
        ma = m4[..., ea].astype(np.float64)
        mb = m4[..., eb].astype(np.float64)
        if not (np.all(np.isfinite(ma[m])) and np.all(np.isfinite(mb[m]))):
            raise ValueError("magnitude contains NaN or inf inside the mask")
        if np.any(ma[m] < 0) or np.any(mb[m] < 0):
            raise ValueError("magnitude must be non-negative")
        weight = np.sqrt(np.abs(ma * mb))
    weight = np.where(m, np.nan_to_num(weight), 0.0)

    dphi = np.angle(np.exp(1j * (pb - pa)))  # angle of the Hermitian product
    if unwrap is None and unwrap_difference:
        quality = weight if magnitude is not None else None

        def unwrap(x, msk, v):
            return unwrap_region_growing(x, msk, v, magnitude=quality)
    if unwrap is not None:
        if not callable(unwrap):
            raise ValueError("unwrap must be a callable unwrap(phase, mask, voxel_size) or None")
        dphi_u = np.asarray(unwrap(dphi.astype(_out_dtype(p4)), m, vs), dtype=np.float64)
        if dphi_u.shape != dphi.shape:
            raise ValueError(f"unwrap returned shape {dphi_u.shape}, expected {dphi.shape}")
        if m.any():
            k = np.round((dphi_u[m] - dphi[m]) / (2 * np.pi))
            dphi_u = dphi_u - 2 * np.pi * np.median(k).round()
        dphi = np.where(m, dphi_u, dphi)
    raw = pa - dphi * (te[ea] / dte)  # phase of echo a minus its field phase

    if np.all(sig == 0) or not m.any():
        return wrap(raw).astype(_out_dtype(p4))
    z = np.where(m, weight * np.exp(1j * np.where(m, raw, 0.0)), 0.0)  # NaN outside the mask stays out
    kw = {"sigma": sig, "mode": "constant", "cval": 0.0, "truncate": 3.0}
    zs = ndimage.gaussian_filter(z.real, **kw) + 1j * ndimage.gaussian_filter(z.imag, **kw)
    ws = ndimage.gaussian_filter(weight, **kw)
    offset = np.where(ws > 1e-3 * ws.max(), np.angle(zs), raw)
    if smoothing == "local_linear":
        # the plane is fitted to the raw offset made continuous: the Gaussian estimate, smooth
        # and so trivially unwrapped, plus the raw offset's (small) wrapped difference from it
        smooth = unwrap_region_growing(offset.astype(np.float64), m, vs)
        fitted, support = _local_plane(np.where(m, smooth + wrap(raw - smooth), 0.0), weight, sig, ws, m)
        offset = np.where(support, fitted, offset)
    return wrap(offset).astype(_out_dtype(p4))


def _local_plane(values, weight, sigma_vox, smoothed_weight, where, *, min_support=0.05):
    """Value at every voxel of the plane fitted to ``values`` in the voxel's Gaussian window.

    Weighted least squares ``min sum_y g(x - y) w(y) (r(y) - a - b . u)^2`` per voxel ``x``
    with ``u = (y - x) / sigma`` (per axis) and ``g`` the Gaussian of :func:`mcpc3ds`. The
    window moments about each voxel are Gaussian derivative filters, with no coordinates
    involved: since ``d g / d x_k = -(x_k - y_k) / sigma_k^2 g``, ``sum g w u_k = sigma_k
    d_k G[w]`` and ``sum g w u_i u_j = sigma_i sigma_j d_i d_j G[w] + delta_ij G[w]`` (``G`` the
    Gaussian filter; exact for scipy's truncated kernels too), so float32 loses nothing to
    cancellation. The 14 filters share their one-dimensional passes (:func:`_gaussian_moments`)
    and the 3 x 3 systems are solved voxel by voxel (:func:`_solve_planes`).

    Returns
    -------
    fitted : numpy.ndarray
        ``a`` on the support, 0 elsewhere (float64, input shape).
    support : numpy.ndarray of bool
        The voxels of ``where`` whose window holds at least ``min_support`` of the largest
        smoothed weight and whose spread of positions is not degenerate (covariance
        determinant in sigma units above 1e-6).
    """
    shape = weight.shape
    fitted = np.zeros(shape)
    support = np.zeros(shape, dtype=bool)
    keep = where & (smoothed_weight >= min_support * smoothed_weight.max())
    if not keep.any():
        return fitted, support
    # the bounding box of the voxels that get a plane, plus the window's reach
    idx = np.nonzero(keep)
    reach = np.ceil(3.0 * np.asarray(sigma_vox)).astype(int)
    box = tuple(slice(max(0, int(i.min()) - r), min(n, int(i.max()) + 1 + r))
                for i, n, r in zip(idx, shape, reach))
    sigma = np.asarray(sigma_vox, dtype=np.float64)
    w = weight[box].astype(np.float32)
    wr = (w * values[box]).astype(np.float32)
    mw = _gaussian_moments(w, sigma, 2)
    mr = _gaussian_moments(wr, sigma, 1)

    def order(*axes):
        """The moments' key: differentiated once along each axis in ``axes``."""
        return tuple(axes.count(k) for k in range(3))

    first_w = tuple(mw[order(k)] for k in range(3))
    second_w = tuple(mw[order(k, m)] for k, m in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)))
    first_r = tuple(mr[order(k)] for k in range(3))
    # an axis without smoothing has no derivative moments: its sigma factor (0) removes them
    fitted[box], support[box] = _solve_planes(mw[order()], first_w, second_w, mr[order()], first_r, sigma,
                                              np.ascontiguousarray(keep[box]))
    return fitted, support


def _gaussian_moments(x, sigma, max_order):
    """Gaussian derivative filters of ``x`` (float32) of every order ``(o0, o1, o2)`` with
    ``o0 + o1 + o2 <= max_order``, as a dict keyed by the order.

    Each is ``ndimage.gaussian_filter(x, sigma, order=...)`` (constant zero boundary, truncated
    at 3 sigma; axes with ``sigma == 0`` left unfiltered, as scipy does), with the
    one-dimensional passes along the first axes shared between orders: 28 passes instead of 42
    for the moments of :func:`_local_plane`. Each pass writes float32 like scipy's own chain, so
    the results equal scipy's bit for bit.
    """
    partial = {(): x}
    for axis in range(3):
        nxt = {}
        for orders, arr in partial.items():
            for o in range(max_order - sum(orders) + 1):
                if sigma[axis] > 1e-15:
                    nxt[orders + (o,)] = ndimage.gaussian_filter1d(
                        arr, sigma[axis], axis=axis, order=o, mode="constant", cval=0.0, truncate=3.0,
                        output=np.float32)
                else:
                    nxt[orders + (o,)] = arr
        partial = nxt
    return partial


@njit(cache=True, parallel=True)
def _solve_planes(s0, first_w, second_w, r0, first_r, sigma, keep):
    """Intercepts of the local planes of :func:`_local_plane` from its filtered moments.

    ``s0 = G[w]``, ``first_w[k] = d_k G[w]``, ``second_w`` the six ``d_i d_j G[w]`` (order
    00, 01, 02, 11, 12, 22), ``r0 = G[w r]``, ``first_r[k] = d_k G[w r]`` (tuples of float32
    arrays of the box's shape);
    ``keep`` marks the voxels that get a plane. Returns ``(a, good)``: the intercept (float64,
    0 elsewhere) and the voxels whose position covariance (in sigma units) has a determinant
    above 1e-6. In float64: ``E[u] = sigma d G[w] / G[w]``, ``cov = E[u u] - E[u] E[u]``,
    ``cov b = E[r u] - E[u] E[r]``, ``a = E[r] - E[u] . b``.
    """
    n0, n1, n2 = s0.shape
    fitted = np.zeros(s0.shape)
    good = np.zeros(s0.shape, dtype=np.bool_)
    row = np.array([0, 0, 0, 1, 1, 2])
    col = np.array([0, 1, 2, 1, 2, 2])
    for i in prange(n0):
        mu = np.empty(3)
        rhs = np.empty(3)
        c = np.empty((3, 3))
        for j in range(n1):
            for k in range(n2):
                if not keep[i, j, k]:
                    continue
                s = np.float64(s0[i, j, k])
                for a in range(3):
                    mu[a] = np.float64(first_w[a][i, j, k]) * sigma[a] / s
                for p in range(6):
                    a, b = row[p], col[p]
                    e_uu = np.float64(second_w[p][i, j, k]) * sigma[a] * sigma[b]
                    if a == b:
                        e_uu += s
                    c[a, b] = c[b, a] = e_uu / s - mu[a] * mu[b]
                c00 = c[1, 1] * c[2, 2] - c[1, 2] * c[1, 2]
                c01 = c[0, 2] * c[1, 2] - c[0, 1] * c[2, 2]
                c02 = c[0, 1] * c[1, 2] - c[0, 2] * c[1, 1]
                c11 = c[0, 0] * c[2, 2] - c[0, 2] * c[0, 2]
                c12 = c[0, 1] * c[0, 2] - c[0, 0] * c[1, 2]
                c22 = c[0, 0] * c[1, 1] - c[0, 1] * c[0, 1]
                det = c[0, 0] * c00 + c[0, 1] * c01 + c[0, 2] * c02
                if not det > 1e-6:
                    continue
                r = np.float64(r0[i, j, k]) / s
                for a in range(3):
                    rhs[a] = np.float64(first_r[a][i, j, k]) * sigma[a] / s - mu[a] * r
                b0 = (c00 * rhs[0] + c01 * rhs[1] + c02 * rhs[2]) / det
                b1 = (c01 * rhs[0] + c11 * rhs[1] + c12 * rhs[2]) / det
                b2 = (c02 * rhs[0] + c12 * rhs[1] + c22 * rhs[2]) / det
                fitted[i, j, k] = r - (mu[0] * b0 + mu[1] * b1 + mu[2] * b2)
                good[i, j, k] = True
    return fitted, good


def remove_phase_offset(phase, offset):
    """Subtract a phase offset from every echo and re-wrap to ``[-pi, pi)``.

    Parameters
    ----------
    phase : numpy.ndarray, shape (I, J, K, E) or (I, J, K)
        Phase in rad.
    offset : numpy.ndarray, shape (I, J, K)
        Offset in rad (e.g. from :func:`mcpc3ds`).

    Returns
    -------
    numpy.ndarray
        ``wrap(phase - offset)``, same shape and (float) dtype as ``phase``; a new array.
    """
    p = np.asarray(phase)
    o = np.asarray(offset)
    if p.ndim not in (3, 4):
        raise ValueError(f"phase must have shape (I, J, K, E) or (I, J, K), got {p.shape}")
    if o.shape != p.shape[:3]:
        raise ValueError(f"offset has shape {o.shape} but the phase's spatial shape is {p.shape[:3]}")
    oo = o.astype(np.float64)
    if p.ndim == 4:
        oo = oo[..., None]
    return wrap(p.astype(np.float64) - oo).astype(_out_dtype(p))
