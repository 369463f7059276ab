"""Automatic intensity thresholds: Otsu, histogram Gaussian fit, percentile.

These are the threshold choices QSMxT offers for its magnitude- and quality-based masks (Stewart
et al. MRM 2022;87:1289, doi:10.1002/mrm.29048, and ``QSMxT/QSMxT@598cc6e``
``qsmxt/interfaces/nipype_interface_masking.py``):

* Otsu (IEEE Trans SMC 1979;9:62, doi:10.1109/TSMC.1979.4310076): the level that maximises the
  between-class variance of the histogram;
* "gaussian" (Balan et al. Comput Biol Med 2012;42:509, doi:10.1016/j.compbiomed.2012.01.004,
  as QSMxT implements it): fit one normal distribution (mean and standard deviation of the
  data) to the histogram and take the level where the histogram falls furthest *below* that
  normal -- the valley between background and tissue. Unlike QSMxT, the normal density is
  compared with a *density* histogram (QSMxT compares it with bin probabilities, which differ
  by the bin width);
* percentile: the given percentile of the values.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "THRESHOLD_METHODS",
    "compute_threshold",
    "gaussian_threshold",
    "otsu_threshold",
    "percentile_threshold",
]

THRESHOLD_METHODS = ("otsu", "gaussian", "percentile")


def _values(values, name="values"):
    v = np.asarray(values)
    if np.issubdtype(v.dtype, np.complexfloating) or not (v.dtype == bool or np.issubdtype(v.dtype, np.number)):
        raise ValueError(f"{name} must be real numbers, got dtype {v.dtype}")
    v = v.ravel().astype(np.float64, copy=False)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError(f"{name} holds no finite value to threshold")
    return v


def otsu_threshold(values, *, nbins: int = 256) -> float:
    """Otsu's threshold of a set of values.

    Parameters
    ----------
    values : array_like
        Any shape; non-finite values are ignored.
    nbins : int
        Histogram bins over ``[min, max]``.

    Returns
    -------
    float
        The level ``t`` for which the classes ``values <= t`` and ``values > t`` have the
        largest between-class variance (the middle of the plateau when several neighbouring bin
        centres tie, e.g. across empty bins). Constant input returns its value.
    """
    v = _values(values)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    if int(nbins) < 2:
        raise ValueError(f"nbins must be >= 2, got {nbins}")
    hist, edges = np.histogram(v, bins=int(nbins), range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    hist = hist.astype(np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1.0)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1.0)
    between = w0[:-1] * w1[:-1] * (m0[:-1] - m1[:-1]) ** 2
    # the criterion is flat across empty bins between the classes: take the middle of the
    # first maximal plateau rather than its low end
    best = between.max()
    first = int(np.argmax(between >= best * (1 - 1e-12)))
    last = first
    while last + 1 < between.size and between[last + 1] >= best * (1 - 1e-12):
        last += 1
    return float(0.5 * (centres[first] + centres[last]))


def gaussian_threshold(values, *, max_bins: int = 1000) -> float:
    """Histogram Gaussian-fit threshold (Balan et al. 2012, as used by QSMxT).

    Parameters
    ----------
    values : array_like
        Any shape; non-finite values are ignored.
    max_bins : int
        Cap on the Freedman-Diaconis number of bins.

    Returns
    -------
    float
        The bin centre where a normal density with the data's mean and standard deviation
        exceeds the density histogram the most.
    """
    v = _values(values)
    lo, hi = float(v.min()), float(v.max())
    sd = float(v.std())
    if hi <= lo or sd == 0:
        return lo
    q75, q25 = np.percentile(v, [75, 25])
    width = 2.0 * (q75 - q25) / np.cbrt(v.size)
    nbins = int(np.clip(np.ceil((hi - lo) / width) if width > 0 else 256, 16, max_bins))
    hist, edges = np.histogram(v, bins=nbins, range=(lo, hi), density=True)
    centres = 0.5 * (edges[:-1] + edges[1:])
    mu = float(v.mean())
    normal = np.exp(-0.5 * ((centres - mu) / sd) ** 2) / (sd * np.sqrt(2.0 * np.pi))
    return float(centres[int(np.argmax(normal - hist))])


def percentile_threshold(values, *, percentile: float) -> float:
    """The ``percentile`` (0-100) of the finite values."""
    v = _values(values)
    p = float(percentile)
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {percentile!r}")
    return float(np.percentile(v, p))


def compute_threshold(values, *, method: str = "otsu", percentile: float = 50.0, factor: float = 1.0) -> float:
    """A threshold by name, times ``factor``.

    Parameters
    ----------
    values : array_like
        Non-finite values are ignored.
    method : {"otsu", "gaussian", "percentile"}
    percentile : float
        For ``method="percentile"`` (0-100).
    factor : float
        Multiplies the automatic level (QSMxT's ``threshold_algorithm_factor``: > 1 gives
        smaller masks).

    Returns
    -------
    float
    """
    if method == "otsu":
        t = otsu_threshold(values)
    elif method == "gaussian":
        t = gaussian_threshold(values)
    elif method == "percentile":
        t = percentile_threshold(values, percentile=percentile)
    else:
        raise ValueError(f"threshold method must be one of {', '.join(THRESHOLD_METHODS)}, got {method!r}")
    f = float(factor)
    if not np.isfinite(f) or f <= 0:
        raise ValueError(f"threshold factor must be a positive number, got {factor!r}")
    return t * f
