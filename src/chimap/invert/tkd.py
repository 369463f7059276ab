"""Truncated k-space division (TKD).

References
----------
Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ, Duyn JH. Magnetic susceptibility
mapping of brain tissue in vivo using MRI phase data. MRM 2009;62:1510-1522.
Wharton S, Schaefer A, Bowtell R. Susceptibility mapping in the human brain using
threshold-based k-space division. MRM 2010;63:1292-1304.
"""

from __future__ import annotations

import numpy as np

from ._common import check_dipole_threshold, check_inversion_inputs, filter_in_kspace

__all__ = ["tkd", "truncated_inverse_kernel"]


def truncated_inverse_kernel(d, threshold):
    """The TKD inverse kernel ``1 / D_t`` with ``D_t = D`` where ``|D| >= threshold`` and
    ``D_t = threshold * sign(D)`` elsewhere.

    Where ``D == 0`` exactly (``k = 0`` and samples exactly on the magic cone) ``sign(D) = 0``
    and the inverse is set to 0: those frequencies carry no field, so nothing about chi is
    measured there (at ``k = 0`` this leaves the mean of chi over the padded grid at zero; the
    reference is set afterwards, :mod:`chimap.reference`).
    """
    d = np.asarray(d)
    t = d.dtype.type(threshold)
    small = np.abs(d) < t
    with np.errstate(divide="ignore"):
        inv = np.where(small, np.sign(d) / t, 1.0 / np.where(small, 1, d))
    return inv.astype(d.dtype, copy=False)


def tkd(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), threshold=0.2,
        pad_factor=1.5):
    """Susceptibility by truncated k-space division (Shmueli et al. 2009, Wharton et al. 2010).

    ``chi = IFFT(FFT(field) / D_t)`` with the dipole kernel clipped in magnitude:
    ``D_t = threshold * sign(D)`` where ``|D| < threshold`` (:func:`truncated_inverse_kernel`;
    ``D == 0`` gives 0). No correction is applied for the resulting underestimation of
    susceptibility (Schweser et al. MRM 2013 propose a scaling factor; with ``threshold = 0.2``
    ROI values are typically low by 10-30 %): the output is the plain literature TKD.

    Parameters
    ----------
    local_field : numpy.ndarray, shape (I, J, K)
        Local (tissue) field in ppm of B0 after background removal. Values outside ``mask``
        are ignored (they may be NaN).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels where the local field is valid (usually the eroded brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes.
    threshold : float
        Truncation level of ``|D|``, in (0, 2/3); 0.2 is the usual brain value (Wharton 2010
        used 0.2, QSM.jl 0.15 by default). Smaller values give less underestimation and more
        streaking. There is no automatic choice: generalised cross-validation, exact for this
        filter, truncated more and scored worse than 0.2 on every simulated head tried (notes
        of ``benchmarks/accuracy.py``).
    pad_factor : float or sequence of 3 float
        The mask's bounding box is zero padded to at least this factor times its length on
        every axis (>= 1) to avoid wrap-around.

    Returns
    -------
    numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm, zero outside ``mask``, dtype of ``local_field`` (float64 for
        integer input). The mean (reference) is arbitrary: see
        :func:`chimap.reference.reference_chi`.

    Raises
    ------
    ValueError
        Invalid shapes, empty mask, NaN/inf inside the mask, bad voxel size, zero B0 direction
        or a threshold outside (0, 2/3).
    """
    thr = check_dipole_threshold(threshold)
    field, mask, vs, b, dom = check_inversion_inputs(local_field, mask, voxel_size,
                                                     b0_direction, pad_factor)
    return filter_in_kspace(field, mask, dom, vs, b, lambda d: truncated_inverse_kernel(d, thr))
