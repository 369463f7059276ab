"""Background field removal: total field (ppm) -> local field (ppm) and a valid mask.

Every method has the signature ``f(total_field, mask, voxel_size, *, ...)`` and returns
``(local_field, valid_mask)``: the local field in ppm (0 outside the valid mask, dtype of the
input) and the mask where it is valid (a subset of ``mask``; eroded by the sphere for the SMV
methods, by the boundary layer for LBV, unchanged for PDF). Inputs are never modified; values
of the total field outside the mask are never read (NaN there is allowed).

=========  ==========================================================  =====================
method     idea                                                        valid mask
=========  ==========================================================  =====================
sharp      SMV high-pass + TSVD deconvolution (Schweser 2011)          eroded by radius
vsharp     largest sphere per voxel, 12 mm down to a voxel (Li 2011)   eroded by min radius
resharp    Tikhonov-regularised deconvolution by CG (Sun 2014)         eroded by radius
ismv       iterative SMV with boundary condition (Wen 2014)            eroded by radius
pdf        fit of dipole sources outside the mask (Liu 2011)           the mask
lbv        Laplace's equation with Dirichlet boundary (Zhou 2014)      interior, peeled
=========  ==========================================================  =====================

:func:`fill_mask_holes` prepares a mask with holes (low-quality voxels inside the brain) so
that sources in the holes stay in the local field.
"""

from .holes import fill_mask_holes
from .ismv import ismv
from .lbv import laplace_dirichlet, lbv
from .pdf import pdf
from .resharp import resharp
from .sharp import default_vsharp_radii, sharp, smv_filter, vsharp

__all__ = [
    "default_vsharp_radii",
    "fill_mask_holes",
    "ismv",
    "laplace_dirichlet",
    "lbv",
    "pdf",
    "resharp",
    "sharp",
    "smv_filter",
    "vsharp",
]
