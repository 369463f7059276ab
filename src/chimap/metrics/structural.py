"""Filter-based image metrics: HFEN, SSIM and XSIM.

These metrics look at a neighbourhood of each voxel, so they take 2-D or 3-D arrays (3-D
volumes ``(I, J, K)`` in practice). Filter widths are in voxels, as in the published
definitions, whatever the voxel size. Outside the array the images are taken as zero
(zero padding, as MATLAB's ``imfilter``/``convn(..., 'same')`` of the reference codes).

``apply_mask`` (default True) multiplies both images by the mask before filtering, so that
values outside the mask never enter the result (the challenge setting, where both the estimate
and the ground truth are brain-masked maps). With ``apply_mask=False`` the full images are
filtered and the mask only chooses the voxels that are averaged (an ROI within a larger map).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

from ._common import check_pair, to_percent

__all__ = ["log_kernel", "hfen", "ssim", "ssim_map", "xsim"]

HFEN_SIGMA = 1.5
HFEN_SIZE = 15
XSIM_K1 = 0.01
XSIM_K2 = 0.001
XSIM_L = 1.0  # ppm


def log_kernel(size: int = HFEN_SIZE, sigma: float = HFEN_SIGMA, ndim: int = 3) -> np.ndarray:
    """Normalised Laplacian-of-Gaussian kernel as MATLAB's ``fspecial('log')``/``fspecial3('log')``.

    With ``r^2`` the squared distance (in voxels) from the centre of a ``size^ndim`` cube:
    ``g = exp(-r^2 / (2 sigma^2))``, values below ``eps * max(g)`` set to 0, ``g /= sum(g)``;
    ``h = g * (r^2 - ndim * sigma^2) / sigma^4``; finally ``h -= mean(h)`` so that the kernel
    sums to zero (a constant image gives zero response away from the borders).

    Parameters
    ----------
    size : int, default 15
        Odd kernel width in voxels.
    sigma : float, default 1.5
        Standard deviation in voxels.
    ndim : int, default 3

    Returns
    -------
    numpy.ndarray, float64, shape ``(size,) * ndim``
    """
    size = int(size)
    if size < 3 or size % 2 == 0:
        raise ValueError(f"LoG kernel size must be an odd integer >= 3, got {size}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"LoG sigma must be positive (voxels), got {sigma}")
    half = size // 2
    ax = np.arange(-half, half + 1, dtype=np.float64)
    r2 = sum(g**2 for g in np.meshgrid(*([ax] * ndim), indexing="ij"))
    g = np.exp(-r2 / (2.0 * sigma**2))
    g[g < np.finfo(np.float64).eps * g.max()] = 0.0
    g /= g.sum()
    h = g * (r2 - ndim * sigma**2) / sigma**4
    return h - h.mean()


def _check_nd(x):
    if x.ndim not in (2, 3):
        raise ValueError(f"this metric takes 2-D or 3-D images, got shape {x.shape}")


def hfen(estimate, reference, mask=None, *, sigma: float = HFEN_SIGMA, size: int = HFEN_SIZE,
         apply_mask: bool = True, percent: bool = False) -> float:
    """High-frequency error norm (Ravishankar & Bresler, IEEE TMI 2011;30:1028).

    As used for QSM in the 2016 reconstruction challenge (Langkammer et al., MRM 2018;79:1661):
    with ``LoG`` the normalised Laplacian-of-Gaussian filter of :func:`log_kernel` (``sigma``
    = 1.5 voxels, 15 voxels wide), ``m`` the mask and ``x``, ``r`` the masked images
    (``x = estimate * m``, ``r = reference * m`` when ``apply_mask``),

    ``HFEN = ||LoG(x) - LoG(r)||_2 / ||LoG(r)||_2``

    where both norms run over the voxels of the mask only. The filter is a zero-padded linear
    convolution of the whole array, so ``LoG(x) - LoG(r) = LoG(x - r)``.

    Parameters
    ----------
    estimate, reference : array_like
        2-D or 3-D images of equal shape (ppm).
    mask : array_like of bool, optional
        Default all voxels.
    sigma : float, default 1.5
        LoG standard deviation in voxels.
    size : int, default 15
        LoG kernel width in voxels.
    apply_mask : bool, default True
        Zero both images outside the mask before filtering.
    percent : bool, default False
        Return percent instead of a fraction.

    Returns
    -------
    float
        0 for a perfect estimate; ``|s - 1|`` for ``estimate = s * reference``.
    """
    x, r, m = check_pair(estimate, reference, mask)
    _check_nd(x)
    if apply_mask:
        x = np.where(m, x, 0.0)
        r = np.where(m, r, 0.0)
    k = log_kernel(size, sigma, x.ndim)
    lerr = fftconvolve(x - r, k, mode="same")[m]
    lref = fftconvolve(r, k, mode="same")[m]
    den = np.linalg.norm(lref)
    if den == 0.0:
        raise ValueError("HFEN is undefined: the LoG-filtered reference is zero in the mask")
    return to_percent(np.linalg.norm(lerr) / den, percent)


def _window_radius(window: int) -> int:
    window = int(window)
    if window < 3 or window % 2 == 0:
        raise ValueError(f"SSIM window must be an odd width >= 3 voxels, got {window}")
    return window // 2


def ssim_map(estimate, reference, mask=None, *, data_range, k1: float = 0.01, k2: float = 0.03,
             sigma: float = 1.5, window: int = 11, apply_mask: bool = True) -> np.ndarray:
    """Local SSIM index at every voxel (Wang et al., IEEE TIP 2004;13:600), float64.

    With Gaussian-weighted local means ``mu``, variances ``s^2`` and covariance ``s_xr``
    (a normalised separable Gaussian of standard deviation ``sigma`` voxels truncated to a
    ``window``-wide cube, zero padding at the array borders),
    ``C1 = (k1 * L)^2``, ``C2 = (k2 * L)^2`` and ``L = data_range``:

    ``SSIM = (2 mu_x mu_r + C1)(2 s_xr + C2) / ((mu_x^2 + mu_r^2 + C1)(s_x^2 + s_r^2 + C2))``.

    See :func:`ssim` for the parameters; the map covers the whole array.
    """
    x, r, m = check_pair(estimate, reference, mask)
    return _ssim_core(x, r, m, data_range=data_range, k1=k1, k2=k2, sigma=sigma, window=window,
                      apply_mask=apply_mask)


def _ssim_core(x, r, m, *, data_range, k1, k2, sigma, window, apply_mask):
    _check_nd(x)
    radius = _window_radius(window)
    L = float(data_range)
    if not np.isfinite(L) or L <= 0:
        raise ValueError(f"SSIM data_range must be positive, got {data_range}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"SSIM sigma must be positive (voxels), got {sigma}")
    if apply_mask:
        x = np.where(m, x, 0.0)
        r = np.where(m, r, 0.0)

    def filt(a):
        return gaussian_filter(a, sigma, mode="constant", cval=0.0, radius=radius)

    mu_x, mu_r = filt(x), filt(r)
    var_x = filt(x * x) - mu_x**2
    var_r = filt(r * r) - mu_r**2
    cov = filt(x * r) - mu_x * mu_r
    c1 = (k1 * L) ** 2
    c2 = (k2 * L) ** 2
    num = (2.0 * mu_x * mu_r + c1) * (2.0 * cov + c2)
    den = (mu_x**2 + mu_r**2 + c1) * (var_x + var_r + c2)
    return num / den


def ssim(estimate, reference, mask=None, *, data_range=None, k1: float = 0.01, k2: float = 0.03,
         sigma: float = 1.5, window: int = 11, apply_mask: bool = True) -> float:
    """Structural similarity index, 2-D or 3-D (Wang et al., IEEE TIP 2004;13:600).

    The mean of :func:`ssim_map` over the voxels of the mask, with a Gaussian window of
    ``sigma`` = 1.5 voxels truncated to an ``11^3`` cube, ``K1 = 0.01``, ``K2 = 0.03`` and
    ``L = data_range``. The images are not rescaled.

    Parameters
    ----------
    estimate, reference : array_like
        2-D or 3-D images of equal shape (ppm).
    mask : array_like of bool, optional
        Voxels over which the map is averaged; default all.
    data_range : float, optional
        Dynamic range ``L``; default ``max(reference) - min(reference)`` within the mask.
    k1, k2 : float
        Stabilising constants (``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``).
    sigma : float, default 1.5
        Window standard deviation in voxels.
    window : int, default 11
        Odd window width in voxels (the Gaussian is truncated to this cube).
    apply_mask : bool, default True
        Zero both images outside the mask before filtering (see the module notes).

    Returns
    -------
    float
        1 for a perfect estimate; at most 1.
    """
    x, r, m = check_pair(estimate, reference, mask)
    if data_range is None:
        rv = r[m]
        data_range = float(rv.max() - rv.min())
        if data_range <= 0:
            raise ValueError("SSIM: the reference is constant in the mask; give data_range")
    smap = _ssim_core(x, r, m, data_range=data_range, k1=k1, k2=k2, sigma=sigma, window=window,
                      apply_mask=apply_mask)
    return float(np.mean(smap[m]))


def xsim(estimate, reference, mask=None, *, sigma: float = 1.5, window: int = 7,
         apply_mask: bool = True) -> float:
    """XSIM, the susceptibility-optimised SSIM of Milovic et al. (MRM 2024, QSM challenge 2.0).

    SSIM computed on the maps in ppm without any rescaling, with ``L = 1`` ppm, ``K1 = 0.01``
    and ``K2 = 0.001`` (so ``C1 = 1e-4``, ``C2 = 1e-6`` ppm^2; the small ``K2`` makes the index
    sensitive to streaking), and a Gaussian window of ``sigma`` = 1.5 voxels on a ``7^3`` cube
    (``sw = [3 3 3]`` half-widths in the authors' ``compute_xsim.m``), averaged over the mask:

    ``XSIM = mean_{v in mask} (2 mu_x mu_r + C1)(2 s_xr + C2)
    / ((mu_x^2 + mu_r^2 + C1)(s_x^2 + s_r^2 + C2))``, i.e. :func:`ssim` with these constants.

    Parameters
    ----------
    estimate, reference : array_like
        2-D or 3-D susceptibility maps of equal shape, in ppm.
    mask : array_like of bool, optional
        Voxels over which the map is averaged; default all.
    sigma : float, default 1.5
        Window standard deviation in voxels.
    window : int, default 7
        Odd window width in voxels.
    apply_mask : bool, default True
        Zero both images outside the mask before filtering (see the module notes).

    Returns
    -------
    float
        1 for a perfect estimate.
    """
    x, r, m = check_pair(estimate, reference, mask)
    smap = _ssim_core(x, r, m, data_range=XSIM_L, k1=XSIM_K1, k2=XSIM_K2, sigma=sigma,
                      window=window, apply_mask=apply_mask)
    return float(np.mean(smap[m]))
