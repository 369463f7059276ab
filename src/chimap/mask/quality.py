"""Phase-quality maps and quality thresholds for masking (higher quality = more reliable).

The consensus recommends brain extraction *plus* phase-quality masking (QSM consensus MRM
2024;91:1834): voxels whose phase is unreliable (low signal, strong local gradients, unwrapping
or fit failures) are left out. chimap's convention: a quality map is higher where the phase is
more reliable, e.g.

* :func:`phase_quality` -- a ROMEO-like voxel quality from neighbouring phase and magnitude
  (Dymerska et al. MRM 2021;85:2294, doi:10.1002/mrm.28563), in [0, 1];
* :func:`quality_from_noise` -- turns a noise / standard-error map (such as the reliability
  map of :mod:`chimap.field.combine`, or a fit residual, lower = better) into a quality in
  [0, 1].
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._checks import as_image, as_mask, check_voxel_size
from .threshold import THRESHOLD_METHODS, compute_threshold

__all__ = ["phase_quality", "quality_from_noise", "quality_threshold_mask"]


@njit(cache=True, inline="always")
def _wrap(x):
    """``(x + pi) mod 2 pi - pi``; a phase difference lies within one period of the interval,
    where a conditional shift gives the modulo's result exactly (and much faster)."""
    y = x + np.pi
    period = 2.0 * np.pi
    if 0.0 <= y < period:
        pass
    elif period <= y < 2.0 * period:
        y -= period
    elif -period <= y < 0.0:
        y += period
    else:
        y = y % period
    return y - np.pi


@njit(cache=True)
def _edge_weight(ph, p2, mag, ratio, use_second, use_mag, a, b):
    """ROMEO-like weight of the edge between flat voxel indices ``a`` and ``b`` (``b`` the
    neighbour further along its axis; see :func:`phase_quality`)."""
    d1 = _wrap(ph[b] - ph[a])
    w = 1.0 - abs(d1) / np.pi
    if use_second:
        d2 = _wrap(p2[b] - p2[a])
        w *= min(max(1.0 - abs(d2 * ratio - d1), 0.0), 1.0)
    if use_mag:
        lo = min(mag[a], mag[b])
        hi = max(mag[a], mag[b])
        w *= (lo / hi) * (lo / hi) if hi > 0 else 0.0
    return w


@njit(cache=True, inline="always")
def _add_axis_edges(total, count, ph, p2, mag, ratio, use_second, use_mag, v, pos, n, stride):
    """Add to ``(total, count)`` the weights of voxel ``v``'s edges along one axis (at
    position ``pos`` of ``n``, flat ``stride``): first the edge to the next voxel, then the
    edge to the previous one."""
    if pos + 1 < n:
        total += _edge_weight(ph, p2, mag, ratio, use_second, use_mag, v, v + stride)
        count += 1
    if pos > 0:
        total += _edge_weight(ph, p2, mag, ratio, use_second, use_mag, v - stride, v)
        count += 1
    return total, count


@njit(cache=True, parallel=True)
def _mean_edge_weight(ph, p2, ratio, mag, use_second, use_mag):
    """Mean weight of the (up to six) face edges of every voxel, one pass, float64.

    For each voxel the edges are summed in the order axis 0, 1, 2, and on each axis the edge to
    the next voxel before the edge to the previous one.
    """
    n0, n1, n2 = ph.shape
    phf = ph.ravel()
    p2f = p2.ravel()
    magf = mag.ravel()
    out = np.zeros(ph.shape, np.float64)
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                v = (i * n1 + j) * n2 + k
                total, count = _add_axis_edges(0.0, 0, phf, p2f, magf, ratio, use_second, use_mag, v, i, n0,
                                               n1 * n2)
                total, count = _add_axis_edges(total, count, phf, p2f, magf, ratio, use_second, use_mag, v, j,
                                               n1, n2)
                total, count = _add_axis_edges(total, count, phf, p2f, magf, ratio, use_second, use_mag, v, k,
                                               n2, 1)
                out[i, j, k] = total / count if count > 0 else 0.0
    return out


def phase_quality(phase, mask, voxel_size, *, magnitude=None, echo_times=None, echo: int = 0):
    """ROMEO-like voxel quality in [0, 1] from phase (and magnitude) coherence of neighbours.

    Every face-neighbour pair (edge) gets the product of ROMEO's weights (Dymerska et al.
    MRM 2021;85:2294):

    * phase coherence ``1 - |wrap(dphi)| / pi`` of echo ``echo``;
    * with two or more echoes and ``echo_times``: phase-gradient coherence
      ``max(0, 1 - |wrap(dphi_2) * TE_1 / TE_2 - wrap(dphi_1)|)`` between echo ``echo`` and the
      next one (a consistent field gives proportional phase steps);
    * with ``magnitude``: magnitude coherence ``(min(M_i, M_j) / max(M_i, M_j))**2``.

    The voxel quality is the mean weight of its (up to six) edges inside the array. This is a
    simplified ROMEO quality (no phase-linearity or magnitude-weight terms).

    Parameters
    ----------
    phase : array_like, shape (I, J, K) or (I, J, K, E)
        Wrapped phase (rad).
    mask : array_like or None
        Quality is set to 0 outside it (None: everywhere computed).
    voxel_size : float or sequence of 3 float
        mm; validated only (the weights are per edge, independent of the spacing).
    magnitude : array_like, optional
        Same shape as ``phase``.
    echo_times : sequence of float, optional
        Seconds; enables the gradient-coherence term.
    echo : int
        Echo (0-based) whose phase and magnitude are used.

    Returns
    -------
    numpy.ndarray of float32, shape (I, J, K)
    """
    p = as_image(phase, "phase", ndims=(3, 4))
    check_voxel_size(voxel_size)
    p4 = p[..., None] if p.ndim == 3 else p
    n_echo = p4.shape[3]
    if not 0 <= int(echo) < n_echo:
        raise ValueError(f"echo must be within 0..{n_echo - 1}, got {echo}")
    echo = int(echo)
    shape = p4.shape[:3]
    m = None if mask is None else as_mask(mask, shape=shape)
    mag = np.zeros((1, 1, 1))  # unused placeholders keep one compiled signature
    use_mag = magnitude is not None
    if use_mag:
        mag = as_image(magnitude, "magnitude", ndims=(3, 4), nonnegative=True)
        mag = mag[..., None] if mag.ndim == 3 else mag
        if mag.shape != p4.shape:
            raise ValueError(f"magnitude shape {mag.shape} does not match phase shape {p4.shape}")
        mag = np.ascontiguousarray(mag[..., echo], dtype=np.float64)
    p2, ratio = np.zeros((1, 1, 1)), 1.0
    use_second = echo_times is not None and n_echo >= 2
    if use_second:
        te = np.asarray(echo_times, dtype=np.float64).ravel()
        if te.size != n_echo or not np.all(np.isfinite(te)) or np.any(te <= 0):
            raise ValueError(f"echo_times must be {n_echo} positive values (s), got {te.tolist()}")
        nxt = echo + 1 if echo + 1 < n_echo else echo - 1
        p2, ratio = np.ascontiguousarray(p4[..., nxt], dtype=np.float64), float(te[echo] / te[nxt])
    ph = np.ascontiguousarray(p4[..., echo], dtype=np.float64)  # one compiled layout
    q = _mean_edge_weight(ph, p2, ratio, mag, use_second, use_mag)
    if m is not None:
        q[~m] = 0.0
    return q.astype(np.float32)


def quality_from_noise(noise, mask=None):
    """Quality in [0, 1] from a noise / standard-error / residual map (lower = better).

    ``quality = s / (s + noise)`` with ``s`` the median of the finite, positive noise values
    inside ``mask``: 0.5 at the typical noise level, 1 for a noiseless voxel, 0 for infinite
    noise. NaN and voxels outside ``mask`` get 0.

    Parameters
    ----------
    noise : array_like, shape (I, J, K)
        Non-negative (NaN and +inf allowed).
    mask : array_like, optional

    Returns
    -------
    numpy.ndarray of float32
    """
    n = as_image(noise, "noise", ndims=(3,), allow_nonfinite=True).astype(np.float64)
    if np.any(n[~np.isnan(n)] < 0):
        raise ValueError("noise must be non-negative (a standard error or residual map)")
    region = np.ones(n.shape, bool) if mask is None else as_mask(mask, shape=n.shape)
    ref = n[region & np.isfinite(n) & (n > 0)]
    if ref.size == 0:
        raise ValueError("noise holds no finite positive value inside the mask")
    s = float(np.median(ref))
    with np.errstate(invalid="ignore", over="ignore"):
        q = s / (s + n)
    q = np.where(np.isnan(q) | ~region, 0.0, q)
    return q.astype(np.float32)


def quality_threshold_mask(quality, region, *, threshold="otsu", percentile: float = 10.0, factor: float = 1.0):
    """Voxels whose quality reaches a threshold.

    Parameters
    ----------
    quality : numpy.ndarray, shape (I, J, K)
        Higher = more reliable; NaN counts as unreliable.
    region : numpy.ndarray of bool or None
        Where the percentile is computed (e.g. the brain mask); None = the whole volume.
    threshold : float or {"otsu", "gaussian", "percentile"}
        A number is used as is. ``"otsu"`` and ``"gaussian"`` are computed over the whole
        volume (background, skull and noise supply the low mode, so a uniformly good brain
        loses nothing); ``"percentile"`` is the ``percentile`` of the quality inside
        ``region`` (e.g. 10 drops the worst 10 % of the brain).
    percentile, factor : float
        See :func:`chimap.mask.threshold.compute_threshold`.

    Returns
    -------
    mask : numpy.ndarray of bool
    level : float
        The threshold applied.
    """
    q = np.asarray(quality)
    if isinstance(threshold, str):
        if threshold not in THRESHOLD_METHODS:
            raise ValueError(f"quality threshold must be a number or one of {', '.join(THRESHOLD_METHODS)}, "
                             f"got {threshold!r}")
        finite = np.isfinite(q)
        sel = finite & region if (threshold == "percentile" and region is not None) else finite
        if not sel.any():
            raise ValueError("quality holds no finite value where the threshold is computed")
        level = compute_threshold(q[sel], method=threshold, percentile=percentile, factor=factor)
    else:
        try:
            level = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"quality threshold must be a number or a method name, got {threshold!r}") from None
        if np.isnan(level):
            raise ValueError("quality threshold is NaN")
    with np.errstate(invalid="ignore"):
        keep = q >= level
    return keep & ~np.isnan(q), level
