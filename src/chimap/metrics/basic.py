"""Voxel-wise error metrics: RMSE, MAE, NRMSE, PSNR and Pearson correlation.

All functions take ``f(estimate, reference, mask=None, *, ...)``: ``mask`` selects the voxels
that enter the metric (None: all voxels). Shapes must agree; NaN or inf inside the mask is an
error. Computations run in float64 and return a Python ``float``. Errors are in the units of
the inputs (ppm for susceptibility maps).
"""

from __future__ import annotations

import numpy as np

from ._common import masked_values, to_percent

__all__ = ["rmse", "mae", "nrmse", "nrmse_detrended", "psnr", "correlation", "linear_fit"]


def rmse(estimate, reference, mask=None) -> float:
    """Root-mean-square error within the mask.

    ``RMSE = sqrt( (1/N) * sum_{v in mask} (x_v - r_v)^2 )`` with ``N`` the number of voxels
    in the mask, ``x`` the estimate and ``r`` the reference.

    Parameters
    ----------
    estimate, reference : array_like
        Images of equal shape (ppm).
    mask : array_like of bool, optional
        Voxels to evaluate; default all.

    Returns
    -------
    float
        In the units of the inputs.
    """
    x, r = masked_values(estimate, reference, mask)
    return float(np.sqrt(np.mean((x - r) ** 2)))


def mae(estimate, reference, mask=None) -> float:
    """Mean absolute error within the mask: ``(1/N) * sum_{v in mask} |x_v - r_v|``.

    Parameters
    ----------
    estimate, reference : array_like
        Images of equal shape (ppm).
    mask : array_like of bool, optional
        Voxels to evaluate; default all.

    Returns
    -------
    float
        In the units of the inputs.
    """
    x, r = masked_values(estimate, reference, mask)
    return float(np.mean(np.abs(x - r)))


def nrmse(estimate, reference, mask=None, *, demean: bool = False, percent: bool = False) -> float:
    """Normalised root-mean-square error (relative L2 error) within the mask.

    ``NRMSE = ||x - r||_2 / ||r||_2`` with both norms taken over the voxels of the mask; this
    is the definition of the QSM challenges (Langkammer et al., MRM 2018;79:1661; Bilgic et al.,
    MRM 2021;86:1241), where it is called RMSE and given in percent.

    Parameters
    ----------
    estimate, reference : array_like
        Images of equal shape (ppm).
    mask : array_like of bool, optional
        Voxels to evaluate; default all.
    demean : bool, default False
        Subtract each image's mean within the mask first (removes the arbitrary QSM reference
        offset), as in the QSM challenge 2.0 evaluation (``compute_rmse_detrend``):
        ``||(x - mean x) - (r - mean r)|| / ||r - mean r||``.
    percent : bool, default False
        Return ``100 * NRMSE`` instead of the fraction.

    Returns
    -------
    float
        A fraction (0 for a perfect estimate, 1 for an all-zero estimate when ``demean`` is
        False), or percent.

    Raises
    ------
    ValueError
        If the (demeaned) reference is zero everywhere in the mask.
    """
    x, r = masked_values(estimate, reference, mask)
    if demean:
        x = x - x.mean()
        r = r - r.mean()
    den = np.linalg.norm(r)
    if den == 0.0:
        raise ValueError("NRMSE is undefined: the reference is zero (after demeaning) in the mask")
    return to_percent(np.linalg.norm(x - r) / den, percent)


def linear_fit(x, y) -> tuple[float, float]:
    """Least-squares line ``y = slope * x + intercept``; returns ``(slope, intercept)``.

    Raises ``ValueError`` when ``x`` has no spread (the slope is undefined).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError("a linear fit needs at least 2 points")
    xm, ym = x.mean(), y.mean()
    sxx = np.sum((x - xm) ** 2)
    if sxx <= 0.0:
        raise ValueError("a linear fit needs reference values that are not all equal")
    slope = np.sum((x - xm) * (y - ym)) / sxx
    return float(slope), float(ym - slope * xm)


def nrmse_detrended(estimate, reference, mask=None, *, percent: bool = False) -> float:
    """Detrended NRMSE of the QSM challenge 2.0 (Bilgic et al., MRM 2021;86:1241).

    Both images are demeaned within the mask (``x0 = x - mean x``, ``r0 = r - mean r``); the
    line ``x0 = a * r0 + b`` is fitted by least squares; the estimate is corrected to
    ``x1 = (x0 - b) / a`` and ``NRMSE_detrend = ||x1 - r0||_2 / ||r0||_2`` within the mask.
    This removes a global scaling and offset of the estimate (so ``s * x + c`` with ``s != 0``
    scores the same as ``x``); it follows ``compute_rmse_detrend`` of the challenge code.

    Parameters
    ----------
    estimate, reference : array_like
        Images of equal shape (ppm).
    mask : array_like of bool, optional
        Voxels to evaluate; default all.
    percent : bool, default False
        Return percent instead of a fraction.

    Returns
    -------
    float
        NaN when the fitted slope is zero (the estimate holds no trace of the reference).
    """
    x, r = masked_values(estimate, reference, mask)
    x0 = x - x.mean()
    r0 = r - r.mean()
    den = np.linalg.norm(r0)
    if den == 0.0:
        raise ValueError("detrended NRMSE is undefined: the reference is constant in the mask")
    a, b = linear_fit(r0, x0)
    if a == 0.0:
        return float("nan")
    x1 = (x0 - b) / a
    return to_percent(np.linalg.norm(x1 - r0) / den, percent)


def psnr(estimate, reference, mask=None, *, data_range=None) -> float:
    """Peak signal-to-noise ratio in dB within the mask.

    ``PSNR = 10 * log10( P^2 / MSE )`` with ``MSE = (1/N) sum_{v in mask} (x_v - r_v)^2`` and
    the peak ``P = max(r) - min(r)`` over the mask (the dynamic range of the reference), as in
    Huynh-Thu & Ghanbari, Electronics Letters 2008;44:800 and its use for QSM in mQSM (He et al.,
    2024). A susceptibility map has no fixed peak value, so the reference's range stands for it.

    Parameters
    ----------
    estimate, reference : array_like
        Images of equal shape (ppm).
    mask : array_like of bool, optional
        Voxels to evaluate; default all.
    data_range : float, optional
        Peak ``P`` to use instead of the reference's range (ppm).

    Returns
    -------
    float
        In dB; ``inf`` for a perfect estimate.
    """
    x, r = masked_values(estimate, reference, mask)
    peak = float(r.max() - r.min()) if data_range is None else float(data_range)
    if not np.isfinite(peak) or peak <= 0:
        raise ValueError(
            f"PSNR needs a positive peak; the reference range in the mask is {peak} "
            "(give data_range)"
        )
    mse = float(np.mean((x - r) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / mse))


def correlation(estimate, reference, mask=None) -> float:
    """Pearson correlation coefficient of the voxel values within the mask.

    ``rho = sum (x - mean x)(r - mean r) / sqrt( sum (x - mean x)^2 * sum (r - mean r)^2 )``
    over the voxels in the mask.

    Parameters
    ----------
    estimate, reference : array_like
        Images of equal shape.
    mask : array_like of bool, optional
        Voxels to evaluate; default all.

    Returns
    -------
    float
        In [-1, 1]; NaN when either image is constant within the mask.
    """
    x, r = masked_values(estimate, reference, mask)
    x0 = x - x.mean()
    r0 = r - r.mean()
    den = np.sqrt(np.sum(x0 * x0) * np.sum(r0 * r0))
    if den == 0.0:
        return float("nan")
    return float(np.clip(np.sum(x0 * r0) / den, -1.0, 1.0))
