"""Holes of the brain mask before background removal: keep their sources local.

Phase-quality masking removes unreliable voxels, and some of them lie *inside* the brain: a
calcification or haemorrhage, the core of a large vein. Left out of the mask, a hole is treated
as "outside" by every background-removal method, so the field of the source in it, which is
harmonic around the hole, is removed as background and the source is lost from the local field
(and from chi). Filling the hole keeps that field local: the mask passed to background removal
is the hole-filled mask, the unknown total field in the holes is replaced by the harmonic
interpolation of the field around them (a smooth, source-free guess that background removal
can treat like any other voxel), and the dipole inversion then gives the hole voxels zero data
weight, so their susceptibility is fitted to the field *around* them, as in MEDI's treatment of
unreliable voxels (Liu et al. MRM 2012;69:467).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._common import check_inputs
from .lbv import laplace_dirichlet

__all__ = ["fill_mask_holes"]

_FACES = ndimage.generate_binary_structure(3, 1)


def fill_mask_holes(total_field, mask, voxel_size, *, tol=1e-6):
    """Fill the enclosed holes of a mask and interpolate the field into them harmonically.

    Parameters
    ----------
    total_field : numpy.ndarray, shape (I, J, K)
        Total field (ppm); only values inside ``mask`` are read.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Brain mask with possible holes (voxels not in the mask and not connected, through
        6-connected non-mask voxels, to the outside of the array).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    tol : float
        Relative residual of the Laplace solve.

    Returns
    -------
    field : numpy.ndarray, shape (I, J, K)
        ``total_field`` inside ``mask``, its harmonic interpolation in the holes, 0 elsewhere;
        dtype of ``total_field``.
    filled : numpy.ndarray of bool, shape (I, J, K)
        ``mask`` with its holes filled.
    holes : numpy.ndarray of bool, shape (I, J, K)
        The filled voxels (``filled & ~mask``).

    Raises
    ------
    ValueError
        Bad shapes, an empty mask or non-finite values inside the mask.
    """
    f, m, vs = check_inputs(total_field, mask, voxel_size)
    filled = ndimage.binary_fill_holes(m, structure=_FACES)
    holes = filled & ~m
    field = np.where(m, f, 0).astype(f.dtype)
    if not holes.any():
        return field, filled, holes
    # Dirichlet problem on the holes plus the one-voxel ring of mask voxels around them: the
    # ring holds the measured field, the holes are the unknowns
    region = ndimage.binary_dilation(holes, structure=_FACES) & filled
    u, _, _ = laplace_dirichlet(np.where(m, f, 0), region, vs, tol=tol)
    field[holes] = u[holes].astype(f.dtype)
    return field, filled, holes
