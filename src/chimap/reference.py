"""Susceptibility referencing: chi relative to a stated reference region.

QSM determines susceptibility only up to a constant (the ``k = 0`` component of the field is
lost), so every chi map must be reported relative to a reference region. The 2024 consensus
(MRM 2024;91:1834) recommends stating the reference and including the whole brain;
:func:`reference_chi` subtracts the mean over the whole brain mask by default, or over a given
region (a CSF mask, e.g. from :func:`csf_mask_from_r2star`, or labels of a segmentation).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import check_voxel_size

__all__ = ["csf_mask_from_r2star", "reference_chi"]


def _bool_mask(mask, shape, name):
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"{name} shape {m.shape} does not match chi shape {shape}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or not np.all(np.isfinite(m)):
            raise ValueError(f"{name} must be boolean or numeric without NaN")
        m = m != 0
    return m


def reference_chi(chi, mask, *, region="brain", labels=None, label_values=None):
    """Subtract the mean susceptibility of a reference region.

    Parameters
    ----------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm (any reference).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Brain mask: the voxels that are shifted (values outside it are returned unchanged).
    region : {"brain", "labels"} or numpy.ndarray of bool
        ``"brain"`` (default, consensus): mean over ``mask``. ``"labels"``: mean over the
        voxels of ``mask`` whose ``labels`` value is in ``label_values`` (e.g. a CSF or
        ventricle label of a segmentation). A boolean array: mean over ``region & mask``
        (e.g. a CSF mask from :func:`csf_mask_from_r2star`).
    labels : numpy.ndarray of int, shape (I, J, K), optional
        Segmentation, for ``region="labels"``.
    label_values : int or sequence of int, optional
        Labels forming the reference region, for ``region="labels"``.

    Returns
    -------
    chi_ref : numpy.ndarray, shape (I, J, K)
        ``chi - offset`` inside ``mask`` (its mean over the reference region is 0), ``chi``
        outside; dtype of ``chi`` (float64 for integer input). The input is not modified.
    offset : float
        The subtracted mean (ppm): the susceptibility of the reference region in the input's
        reference.

    Raises
    ------
    ValueError
        Shape mismatch, unknown region, missing labels, an empty reference region, or NaN/inf
        in ``chi`` inside it.
    """
    x = np.asarray(chi)
    if x.ndim != 3:
        raise ValueError(f"chi must be a 3-D array (I, J, K), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating) \
            or x.dtype == bool:
        raise ValueError(f"chi must be a real array (ppm), got dtype {x.dtype}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    m = _bool_mask(mask, x.shape, "mask")
    if isinstance(region, str):
        if region == "brain":
            ref = m
            what = "the brain mask"
        elif region == "labels":
            if labels is None or label_values is None:
                raise ValueError('region="labels" needs both labels and label_values')
            lab = np.asarray(labels)
            if lab.shape != x.shape:
                raise ValueError(f"labels shape {lab.shape} does not match chi shape {x.shape}")
            values = np.atleast_1d(np.asarray(label_values)).ravel()
            ref = np.isin(lab, values) & m
            what = f"labels {values.tolist()}"
        else:
            raise ValueError(
                f'unknown reference region {region!r}: use "brain", "labels" (with labels and '
                'label_values) or a boolean region mask (for CSF: csf_mask_from_r2star(...) or '
                "a segmentation's CSF label)"
            )
    else:
        ref = _bool_mask(region, x.shape, "region") & m
        what = "the reference region"
    if not ref.any():
        raise ValueError(f"{what} holds no voxel inside the mask: cannot reference chi")
    vals = x[ref].astype(np.float64)
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"chi holds NaN/inf inside {what}")
    offset = float(vals.mean())
    out = x.copy()
    out[m] -= x.dtype.type(offset)
    return out, offset


def _ball(voxel_size, radius_mm):
    vs = np.asarray(voxel_size, dtype=np.float64)
    half = np.floor(radius_mm / vs + 1e-9).astype(int)
    axes = [(np.arange(-h, h + 1) * v) ** 2 for h, v in zip(half, vs)]
    r2 = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
    return r2 <= radius_mm * radius_mm + 1e-9


def csf_mask_from_r2star(r2star, mask, voxel_size, *, threshold=5.0, erode_mm=3.0,
                         min_volume_mm3=200.0):
    """A simple CSF (ventricle) reference mask from an R2* map.

    CSF has a long T2*: voxels with ``R2* < threshold`` inside the brain mask eroded by
    ``erode_mm`` (to drop the cortical surface, sulcal CSF partial volumes and residual
    background-field errors) are kept, and connected components smaller than
    ``min_volume_mm3`` are removed (isolated low-R2* voxels are noise), leaving mostly the
    ventricles (as in MEDI+0's automatic CSF reference, Liu et al. MRM 2018;79:2795, which
    uses R2* < 5 s^-1).

    Parameters
    ----------
    r2star : numpy.ndarray, shape (I, J, K)
        R2* in 1/s.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Brain mask.
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    threshold : float
        R2* threshold in 1/s.
    erode_mm : float
        Erosion radius of the brain mask in mm (0: none).
    min_volume_mm3 : float
        Smallest kept connected component (26-connectivity), in mm^3.

    Returns
    -------
    numpy.ndarray of bool
        The CSF mask (may be empty: check before using it as a reference).

    Raises
    ------
    ValueError
        Shape mismatch, bad voxel size or negative parameters.
    """
    r2 = np.asarray(r2star)
    if r2.ndim != 3:
        raise ValueError(f"r2star must be a 3-D array (I, J, K), got shape {r2.shape}")
    m = _bool_mask(mask, r2.shape, "mask")
    vs = check_voxel_size(voxel_size)
    for name, v in (("threshold", threshold), ("erode_mm", erode_mm),
                    ("min_volume_mm3", min_volume_mm3)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be finite and non-negative, got {v!r}")
    inner = m
    if erode_mm > 0:
        inner = ndimage.binary_erosion(m, structure=_ball(vs, float(erode_mm)))
    with np.errstate(invalid="ignore"):
        csf = inner & np.isfinite(r2) & (r2 < threshold)
    if min_volume_mm3 > 0 and csf.any():
        lab, _ = ndimage.label(csf, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(lab.ravel())[1:] * float(np.prod(vs))
        keep = np.flatnonzero(sizes >= min_volume_mm3) + 1
        csf = np.isin(lab, keep)
    return csf
