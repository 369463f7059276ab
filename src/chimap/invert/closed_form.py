"""Closed-form (k-space) dipole inversions: TSVD and Tikhonov (L2) regularisation.

References
----------
Wharton S, Schaefer A, Bowtell R. Susceptibility mapping in the human brain using
threshold-based k-space division. MRM 2010;63:1292-1304 (TSVD: frequencies with ``|D|`` below
the threshold are discarded).
Bilgic B, Chatnuntawech I, Fan AP, et al. Fast image reconstruction with L2-regularization.
JMRI 2014;40:181-191 (closed-form L2 inversion with a gradient regulariser).
Golub GH, Heath M, Wahba G. Generalized cross-validation as a method for choosing a good ridge
parameter. Technometrics 1979;21:215-223 (``tikhonov(alpha="auto")``).
"""

from __future__ import annotations

import numpy as np

from ..kernels import laplacian_kernel
from ._common import check_dipole_threshold, check_inversion_inputs, filter_in_kspace
from .autoreg import parse_alpha, tikhonov_sweep

__all__ = ["TIKHONOV_CRITERION", "tikhonov", "tsvd"]

#: Criterion of ``tikhonov(alpha="auto")`` (generalised cross-validation; see :func:`tikhonov`).
TIKHONOV_CRITERION = "cv"


def tsvd(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), threshold=0.2, pad_factor=1.5):
    """Susceptibility by truncated SVD of the dipole kernel (Wharton et al. 2010).

    ``chi = IFFT(FFT(field) / D)`` where ``|D| >= threshold`` and 0 elsewhere: the frequencies
    near the magic cone, where the kernel is not invertible, are discarded (TKD instead clips
    ``|D|`` to the threshold). Without regularisation the contrast of large structures is
    underestimated by the discarded cone.

    Parameters
    ----------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm; values outside ``mask`` are ignored.
    mask : numpy.ndarray of bool, shape (I, J, K)
    voxel_size : array_like, shape (3,)
        mm.
    b0_direction : array_like, shape (3,)
        B0 in voxel axes.
    threshold : float
        In (0, 2/3); 0.2 by default as for TKD.
    pad_factor : float or sequence of 3 float
        Zero padding of the mask's bounding box (>= 1).

    Returns
    -------
    numpy.ndarray, shape (I, J, K)
        chi in ppm, zero outside ``mask``, dtype of ``local_field``; arbitrary mean.
    """
    thr = check_dipole_threshold(threshold)
    field, mask, vs, b, dom = check_inversion_inputs(local_field, mask, voxel_size, b0_direction, pad_factor)

    def discard_cone(d):
        keep = np.abs(d) >= thr
        return np.where(keep, 1.0 / np.where(keep, d, 1), 0).astype(dom.dtype)

    return filter_in_kspace(field, mask, dom, vs, b, discard_cone)


def tikhonov(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), alpha=0.1,
             regulariser="gradient", pad_factor=1.5, return_info=False):
    """Closed-form L2-regularised dipole inversion (Bilgic et al. 2014).

    ``chi = argmin ||D chi - f||^2 + alpha^2 ||R chi||^2`` on the zero-padded grid, solved
    exactly in k-space: ``chi = IFFT(D F(f) / (D^2 + alpha^2 R^2))`` with ``R^2 = 1``
    (``regulariser="identity"``) or ``R^2 = |G(k)|^2``, the squared k-space response of the
    forward-difference gradient in 1/mm (``"gradient"``, as in the paper). The data term is
    unweighted and extends over the padded grid (that is what makes it closed form), so it
    also fits the zero field outside the mask: sources whose field reaches past the mask are
    biased low (a 10 mm sphere of 0.1 ppm in a 25 mm mask: contrast 0.091-0.094).

    Parameters
    ----------
    local_field, mask, voxel_size, b0_direction, pad_factor
        As in :func:`tsvd`.
    alpha : float or str
        Regularisation weight (> 0); it multiplies the regulariser inside the norm, as in the
        paper, hence ``alpha^2`` above (gradients in ppm/mm). Default 0.1: on the 1 mm simulated
        head's true local field (brain eroded 2 mm) NRMSE was 89 / 66 / 59 / 54 / 55 % for
        alpha 0.01 / 0.03 / 0.05 / 0.1 / 0.2, with or without 1 ppb noise.
        ``"auto"`` chooses it from the data by generalised cross-validation
        (:data:`TIKHONOV_CRITERION`, :func:`chimap.invert.autoreg.tikhonov_sweep`);
        ``"auto:frequency"``, ``"auto:lcurve"`` and ``"auto:inflection"`` use the other
        criteria of :mod:`chimap.invert.autoreg`. The closed form gives the data and
        regulariser terms, the influence trace and the spectrum of chi for every weight
        exactly, so the 33-weight sweep costs about one FFT. Measured on the true local field
        (brain eroded 2 voxels, white noise 0.5 / 1 / 3 ppb) of the simulated head at 2 and
        1.5 mm and of the QSM challenge 2.0 head model at 1.28 mm: the best swept weight gave
        55.6-59.9 % and 42.7-48.4 % NRMSE; GCV landed 0-1.5 NRMSE points above it (weights
        0.06-0.22, larger for more noise), the frequency analysis 3.5 to 93 points above, the
        L-curve corner 13 to 275 points above (it marks where the closed form starts to fit
        noise, far below the weight that suppresses streaking).
    regulariser : {"gradient", "identity"}
    return_info : bool
        Also return a dict; with an automatic ``alpha`` it holds ``alpha`` and
        ``alpha_selection`` (the sweep, its costs and the criterion).

    Returns
    -------
    chi : numpy.ndarray, shape (I, J, K)
        chi in ppm, zero outside ``mask``, dtype of ``local_field``; arbitrary mean.
    info : dict
        Only with ``return_info=True``.
    """
    if regulariser not in ("gradient", "identity"):
        raise ValueError(f'regulariser must be "gradient" or "identity", got {regulariser!r}')
    alpha, criterion = parse_alpha(alpha)
    field, mask, vs, b, dom = check_inversion_inputs(local_field, mask, voxel_size, b0_direction, pad_factor)
    selection = None
    if criterion is not None:
        alpha, selection = tikhonov_sweep(
            field, dom, vs, b, regulariser=regulariser,
            criterion=TIKHONOV_CRITERION if criterion == "default" else criterion)

    def regularised_inverse(d):
        if regulariser == "gradient":
            r2 = -laplacian_kernel(dom.padded, vs, real_fft=True, dtype=dom.dtype)  # = |G(k)|^2
        else:
            r2 = np.ones_like(d)
        den = d * d + dom.dtype.type(alpha * alpha) * r2
        den[0, 0, 0] = 1.0  # D(0) = 0 and G(0) = 0: the mean is undetermined, set to 0
        return d / den

    chi = filter_in_kspace(field, mask, dom, vs, b, regularised_inverse)
    if not return_info:
        return chi
    info = {}
    if selection is not None:
        info = {"alpha": alpha, "alpha_selection": selection}
    return chi, info
