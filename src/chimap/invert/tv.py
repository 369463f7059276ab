"""Total-variation regularised dipole inversion solved with ADMM.

Problem (chi and the field in ppm, gradients in ppm/mm)::

    chi = argmin_x  1/2 || W (D x - f) ||_2^2  +  alpha * TV(x)

with ``D`` the dipole convolution (:mod:`chimap.kernels`), ``f`` the local field, ``W`` a
data-fidelity weight and ``TV(x) = sum_voxels |G x|`` (isotropic: Euclidean norm of the
3-vector of physical forward differences ``(x[i + e_a] - x[i]) / h_a``).

Two solvers:

- ``solver="weighted"`` (default; FANSI linear wTV, Milovic et al. MRM 2018;80:814): a second
  split ``z2 = D x`` makes the weighted data term a pointwise update
  ``z2 = (W^2 f + mu (D x + u2)) / (W^2 + mu)``, and the chi update is a k-space division
  ``x = IFFT[(rho E^H F(z - u) + mu D F(z2 - u2)) / (rho |E|^2 + mu D^2)]`` (4 FFTs per
  iteration). ``W`` is zero outside the mask (``weight=None``: ``W = 1`` inside), so the field
  there is not fitted at all and chi outside the mask is free (it absorbs the field of sources
  just outside the mask, e.g. those removed by erosion; it is set to 0 on output).
- ``solver="closed_form"`` (Bilgic et al. MRM 2014;72:1444): ``W = 1`` on the whole padded
  grid with the field taken as zero outside the mask; the only split is ``z = G x``, and the
  chi update is ``x = IFFT[(D F f + rho E^H F(z - u)) / (D^2 + rho |E|^2)]`` (2 FFTs per
  iteration). About twice as fast per iteration, but asking for zero field outside the mask
  is a model error: on simulated heads with a 2-voxel eroded mask it gives about 50 % NRMSE
  against 20-26 % for the weighted solver (see ``benchmarks/bench_invert.py``).

Both run on the mask's bounding box, zero padded (``pad_factor``), with real FFTs
(``scipy.fft``, all CPUs) in the dtype of the input, and stop when the relative change
``||x_k - x_(k-1)|| / ||x_k||`` drops below ``tol``.
"""

from __future__ import annotations

import numpy as np

from ..kernels import dipole_kernel, laplacian_kernel
from . import _admm_kernels as K
from ._common import check_inversion_inputs, check_positive, check_weight, real_fft_pair

__all__ = ["DEFAULT_ALPHA", "tv_admm"]

#: Default TV weight for fields in ppm and gradients in ppm/mm (see :func:`tv_admm`).
DEFAULT_ALPHA = 3e-4


def tv_admm(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), alpha=DEFAULT_ALPHA,
            weight=None, solver="weighted", max_iter=300, tol=5e-3, rho=None, mu=0.3,
            pad_factor=1.5, isotropic=True, relax=1.0, return_info=False):
    """Total-variation dipole inversion with ADMM (Bilgic 2014; FANSI linear wTV, Milovic 2018).

    Parameters
    ----------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm of B0 (after background removal). Values outside ``mask`` are
        ignored (they may be NaN).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels where the local field is valid (usually the eroded brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm (anisotropic allowed: differences are physical, per mm).
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes.
    alpha : float
        TV regularisation weight (> 0), for the field in ppm and gradients in ppm/mm. The
        default was chosen from a sweep on simulated heads at 1.5, 2 and 3 mm, with and
        without noise (see the package notes in :mod:`chimap.invert`).
    weight : numpy.ndarray, shape (I, J, K), optional
        Data-fidelity weight ``W`` (e.g. the magnitude, or 1 / field noise SD); zero or
        positive, used inside the mask only and normalised to unit root-mean-square there, so
        ``alpha`` keeps its meaning. None: uniform weight inside the mask.
    solver : {"weighted", "closed_form"}
        ADMM splitting (module docstring). ``"closed_form"`` takes no ``weight``.
    max_iter : int
        Maximum number of ADMM iterations.
    tol : float
        Stop when ``||x_k - x_(k-1)|| / ||x_k|| < tol``.
    rho : float, optional
        ADMM penalty of the gradient split ``z = G x`` (1/mm^2 scale of ``|E|^2``); default
        ``100 * alpha`` (Bilgic 2014, FANSI). It changes the speed of convergence, not the
        solution of the problem.
    mu : float
        ADMM penalty of the field split ``z2 = D x`` (weighted solver only); FANSI's default 1
        fits weights of unit RMS; 0.3 (default) reached the same accuracy in fewer iterations
        on simulated heads.
    relax : float
        ADMM over-relaxation factor in (0, 2) (Boyd et al. 2011, section 3.4.3); 1 is plain
        ADMM.
    pad_factor : float or sequence of 3 float
        The mask's bounding box is zero padded to at least this factor times its length.
    isotropic : bool
        Isotropic TV (Euclidean norm of the gradient, default) or anisotropic TV (sum of the
        absolute differences, as in Bilgic 2014).
    return_info : bool
        Also return a dict with ``iterations``, ``converged`` and ``relative_change``.

    Returns
    -------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm, zero outside ``mask``, dtype of ``local_field`` (float64 for
        integer input). Its mean is arbitrary: reference it with
        :func:`chimap.reference.reference_chi`.
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        Invalid shapes, empty mask, NaN/inf inside the mask, bad voxel size, zero B0
        direction, ``alpha``, ``rho``, ``mu``, ``tol`` or ``max_iter`` not positive, or a bad
        weight.
    """
    alpha = check_positive(alpha, "alpha")
    rho = check_positive(rho, "rho", allow_none=True)
    mu = check_positive(mu, "mu")
    tol = check_positive(tol, "tol")
    max_iter = check_positive(max_iter, "max_iter", integer=True)
    field, mask, vs, b, dom = check_inversion_inputs(local_field, mask, voxel_size,
                                                     b0_direction, pad_factor)
    if solver not in ("weighted", "closed_form"):
        raise ValueError(f'solver must be "weighted" or "closed_form", got {solver!r}')
    if solver == "closed_form" and weight is not None:
        raise ValueError('solver="closed_form" fits the field with unit weight: pass weight=None')
    relax = float(relax)
    if not 0.0 < relax < 2.0:
        raise ValueError(f"relax must be in (0, 2), got {relax!r}")
    if rho is None:
        rho = 100.0 * alpha
    w = None
    if solver == "weighted":
        w = check_weight(mask if weight is None else weight, mask, dom.dtype)

    dt = dom.dtype.type
    shape = dom.padded
    fft, ifft = real_fft_pair(shape, dom.dtype)

    d = dipole_kernel(shape, vs, b0_direction=b, real_fft=True, dtype=dom.dtype)
    e2 = -laplacian_kernel(shape, vs, real_fft=True, dtype=dom.dtype)  # |E|^2 >= 0
    inv_h = (1.0 / vs).astype(np.float64)
    thr = alpha / rho

    f_pad = dom.pad(field)
    chi = np.zeros(shape, dtype=dom.dtype)
    prev = np.zeros(shape, dtype=dom.dtype)
    u = np.zeros((3,) + shape, dtype=dom.dtype)
    s = np.zeros((3,) + shape, dtype=dom.dtype)
    ets = np.zeros(shape, dtype=dom.dtype)

    if w is None:
        denom = d * d + dt(rho) * e2
        denom[0, 0, 0] = 1  # D(0) = |E(0)| = 0: the mean of chi is not determined; keep 0
        inv = (1 / denom).astype(dom.dtype)
        inv[0, 0, 0] = 0
        del denom
        dtf = fft(f_pad)
        dtf *= d * inv
        rho_inv = inv * dt(rho)
        del inv, f_pad
    else:
        w2 = dom.pad(w * w)
        w2f = w2 * f_pad
        denom = dt(mu) * d * d + dt(rho) * e2
        denom[0, 0, 0] = 1
        inv = (1 / denom).astype(dom.dtype)
        inv[0, 0, 0] = 0
        del denom
        rho_inv = inv * dt(rho)
        mu_d_inv = inv * d * dt(mu)
        del inv
        u2 = np.zeros(shape, dtype=dom.dtype)
        t = np.where(w2 > 0, f_pad, dt(0))  # z2 - u2: start from z2 = f where W > 0, u2 = 0
        del f_pad

    converged = False
    change = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        # chi update (closed form in k-space)
        K.grad_adjoint(s, ets, inv_h)
        spec = fft(ets)
        spec *= rho_inv
        if w is None:
            spec += dtf
        else:
            spec += fft(t) * mu_d_inv
        chi = ifft(spec).astype(dom.dtype, copy=False)
        change = K.relative_change(chi, prev)
        if change < tol:
            converged = True
            break
        # z/u update (TV prox)
        K.grad_shrink_update(chi, u, s, inv_h, thr, bool(isotropic), relax)
        if w is not None:
            spec = fft(chi)
            spec *= d
            dchi = ifft(spec).astype(dom.dtype, copy=False)
            K.fidelity_update(dchi, w2f, w2, dt(mu), u2, t, relax)
    out = dom.unpad(chi, mask)
    if return_info:
        return out, {"iterations": it, "converged": converged, "relative_change": float(change)}
    return out
