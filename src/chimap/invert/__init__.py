"""Dipole inversion: local field (ppm) -> susceptibility (ppm).

=====================  ==========================================================================
:func:`tkd`            truncated k-space division (Shmueli 2009, Wharton 2010)
:func:`tsvd`           truncated SVD: frequencies with ``|D|`` below a threshold dropped (Wharton 2010)
:func:`tikhonov`       closed-form L2 inversion, gradient or identity regulariser (Bilgic 2014)
:func:`ilsqr`          LSQR, fast QSM and streaking-artefact estimation and removal (Li 2015)
:func:`star_qsm`       streaking artefact reduction: strong sources (L1) first, then weak ones
                       (TV; chimap's deviation, see the module) (Wei 2015)
:func:`medi`           morphology-enabled dipole inversion: nonlinear data term, L1 gradient prior
                       off the magnitude's edges, optional SMV, MERIT and MEDI+0 (Liu 2011/2012/2018)
:func:`nltv`           TV with the nonlinear (complex exponential) data term, ADMM with a per-voxel
                       Newton step (FANSI nlTV, Milovic 2018)
:func:`ndi`            nonlinear dipole inversion: gradient descent on the complex data term with
                       Tikhonov and early stopping (Polak 2020)
:func:`rts`            rapid two-step: LSMR, then TV fill-in of the magic cone (Kames 2018)
:func:`tv_admm`        total-variation regularised inversion with ADMM (FANSI weighted linear
                       TV, Milovic 2018; closed-form variant of Bilgic 2014)
:func:`tv_admm_wh`     TV inversion with a jointly fitted residual harmonic field (weak-harmonic
                       QSM, Milovic 2019): absorbs background left by background removal
=====================  ==========================================================================

Both TV inversions take a per-voxel TV weight ``gradient_weight``, e.g. MEDI's morphology prior
from :func:`chimap.invert.edges.magnitude_edge_weight`.

Every inversion takes ``(local_field, mask, voxel_size, *, b0_direction, ...)``, works on the
mask's bounding box zero padded by ``pad_factor``, keeps the input dtype, never modifies its
inputs and returns chi that is zero outside the mask with an arbitrary mean; reference it with
:mod:`chimap.reference`.

Default TV weight
-----------------
``DEFAULT_ALPHA = 3e-4`` (field in ppm, gradients in ppm/mm). Sweep of ``alpha`` in
{1, 2, 3, 5, 10} x 1e-4 on the simulated head (``simulate_head(snr=None, rng=0)``, true local
field, brain mask eroded by 2 voxels, white noise of 0, 1 and 3 ppb added to the field) at 3, 2
and 1.5 mm. NRMSE (%, demeaned) at 3 / 2 / 1.5 mm:

=========  ==================  ==================  ==================
alpha      noise 0             noise 1 ppb         noise 3 ppb
=========  ==================  ==================  ==================
1e-4       24.9 / 18.4 / 17.8  31.1 / 22.2 / 20.4  71.5 / 51.5 / 43.7
2e-4       25.5 / 19.9 / 19.0  29.1 / 21.8 / 20.3  56.1 / 39.5 / 33.3
3e-4       27.1 / 21.5 / 20.5  29.3 / 22.6 / 21.2  49.0 / 34.3 / 29.1
5e-4       30.2 / 24.7 / 23.7  31.4 / 25.1 / 24.0  42.7 / 30.6 / 27.0
1e-3       36.9 / 31.1 / 30.1  37.2 / 31.1 / 30.1  40.5 / 32.0 / 30.4
=========  ==================  ==================  ==================

The best ``alpha`` depends on the noise much more than on the voxel size. 3e-4 has the lowest
mean excess over the per-condition best (2.7 NRMSE points over the 9 conditions; worst 8.5 at
3 mm and 3 ppb) and stays within 3.1 points of the best for noise up to 1 ppb, about the field
noise of a 4-echo 3 T acquisition at SNR 100. On a sphere (chi 0.1 ppm, radius 10 mm, 1 mm and
1 x 1.5 x 2 mm oblique voxels) every ``alpha`` from 1e-5 to 5e-4 recovers the contrast within
2.5 % (1e-3: -4 %). For noisier data raise ``alpha`` (5e-4 to 1e-3 at 3 ppb).
"""

from .closed_form import tikhonov, tsvd
from .ilsqr import ilsqr
from .medi import DEFAULT_MEDI_LAMBDA, MEDI_RAD_PER_PPM, medi, medi_csf_mask
from .nonlinear import DEFAULT_NDI_ALPHA, DEFAULT_PHASE_SCALE, ndi, nltv, rad_per_ppm
from .rts import rts
from .star import star_qsm
from .tkd import tkd, truncated_inverse_kernel
from .tv import DEFAULT_ALPHA, tv_admm
from .tv_wh import DEFAULT_WH_BETA, tv_admm_wh

__all__ = ["DEFAULT_ALPHA", "DEFAULT_MEDI_LAMBDA", "DEFAULT_NDI_ALPHA", "DEFAULT_PHASE_SCALE", "ndi", "nltv",
           "rad_per_ppm", "DEFAULT_WH_BETA", "MEDI_RAD_PER_PPM", "ilsqr", "medi",
           "medi_csf_mask", "rts", "star_qsm", "tikhonov", "tkd", "truncated_inverse_kernel", "tsvd",
           "tv_admm", "tv_admm_wh"]
