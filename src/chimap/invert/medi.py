"""MEDI: morphology enabled dipole inversion (nonlinear, Gauss-Newton), with SMV, MERIT and MEDI+0.

References
----------
Liu T, Liu J, de Rochefort L, et al. Morphology enabled dipole inversion (MEDI) from a
single-angle acquisition: comparison with COSMOS in human brain imaging. MRM 2011;66:777-783.
Liu J, Liu T, de Rochefort L, et al. Morphology enabled dipole inversion for quantitative
susceptibility mapping using structural consistency between the magnitude image and the
susceptibility map. NeuroImage 2012;59:2560-2568 (nonlinear data term, Gauss-Newton).
Liu T, Wisnieff C, Lou M, et al. Nonlinear formulation of the magnetic field to source
relationship for robust quantitative susceptibility mapping. MRM 2013;69:467-476 (MERIT).
Wen Y, Zhou D, Liu T, Spincemaille P, Wang Y. An iterative spherical mean value method for
background field removal in MRI. MRM 2014;72:1065-1071 (SMV filtering of field and operator).
Liu Z, Spincemaille P, Yao Y, Zhang Y, Wang Y. MEDI+0: morphology enabled dipole inversion with
automatic uniform cerebrospinal fluid zero reference for quantitative susceptibility mapping.
MRM 2018;79:2795-2803.
The behaviour follows the authors' public MEDI toolbox (``MEDI_L1``, ``gradient_mask``,
``dataterm_mask``, ``extract_CSF``) where the papers leave a detail open; this is an independent
implementation.

Problem
-------
With ``x = s * chi`` the susceptibility in radians of phase (``s = rad_per_ppm``) and
``phi = s * f`` the local field in radians, MEDI minimises::

    E(x) = sum_(voxels, a = 1..3) sqrt((M_a (G x)_a)^2 + eps)                  (1)
           + lam * || W (exp(i D x) - exp(i phi)) ||_2^2                       (2)
           + lam_csf / 2 * || M_csf (x - mean_csf(x)) ||_2^2  (MEDI+0 only)   (3)

(1) is the L1 norm of the gradient components that are not edges of the magnitude image,
``M_a = 0`` on edges (anisotropic: each component separately), smoothed with the toolbox's
``eps = 1e-6 (rad/mm)^2``. (2) is the nonlinear (complex exponential) data term with the data
weight ``W``. (3) ties the CSF to its own mean (the toolbox's gradient ``lam_csf * L x`` with
``L x = M_csf (x - mean_csf x)``, i.e. half the paper's squared norm for the same ``lam_csf``).

Solver (as in the toolbox): Gauss-Newton on (2) with the lagged-diffusivity (IRLS) weight
``V = 1 / sqrt((M G x_n)^2 + eps)`` frozen at the current iterate; each step solves::

    (G^T M V M G + 2 lam D^T W^2 D [+ lam_csf L]) dx = -grad E(x_n)

with ``grad E = G^T M V M G x + 2 lam D^T (W^2 sin(D x - phi)) [+ lam_csf L x]`` (the
derivative of (2): ``Re(conj(w) (-i) (w - W e^(i phi)))`` with ``w = W e^(i D x)`` equals
``W^2 sin(D x - phi)``), starting from ``x = 0``, at most ``max_iter = 10`` steps, stopping when
``||dx|| / ||x_n|| < tol = 0.1``. The inner solve is conjugate gradients from 0 with the
toolbox's stopping rule ``||r|| <= cg_tol ||b||`` (``cg_tol = 0.01``) or ``cg_max_iter = 100``
iterations.

Units and the default lambda
----------------------------
The toolbox takes the local field as the phase (rad) accrued over the echo spacing ``dTE`` and
returns ``x / (2 pi dTE f0) * 1e6`` ppm, so ``lam = 1000`` is defined for phase in rad and
gradients in rad/mm, and its strength in ppm depends on the acquisition: in ppm units the cost
is ``s (||M G chi||_1 + lam s ||W (D chi - f)||^2 + ...)`` for small phases, a data weight
``lam * s`` against a unit L1 weight (``alpha = 1 / (2 lam s)`` in the
``1/2 ||.||^2 + alpha TV`` convention of :func:`chimap.invert.tv_admm`). chimap's interface is in
ppm; internally the field is multiplied by ``rad_per_ppm``, by default
:data:`MEDI_RAD_PER_PPM` ``= 2 pi gamma_bar B0 dTE 1e-6`` for a reference 3 T acquisition with
``dTE = 5 ms`` (4.013 rad/ppm), so ``lam`` means what it means in the toolbox for such an
acquisition (``alpha`` = 1.25e-4). To reproduce the toolbox on a given protocol, pass
``rad_per_ppm = chimap.units.ppm_to_rad(1.0, echo_time=dTE, field_strength=B0)``. The reference
was checked on the simulated head (``simulate_head(voxel_size=1.5, snr=None, rng=0)``, true local
field, brain mask eroded by 2 voxels, 1 ppb white noise, magnitude of echo 1): NRMSE (%) for
``lam`` = 250 / 500 / 1000 / 2000 / 4000 was 23.7 / 20.3 / 19.0 / 19.4 / 21.4 (TKD(0.2) 53.6,
:func:`chimap.invert.tv_admm` defaults 21.2), so the toolbox default is the best of the sweep
with this reference (the lead author's default choice, kept unchanged).

Defaults: ``lam = 1000``, ``edge_percentage = 0.9``, ``lam_csf = 100``, SMV radius 5 mm when
used, MERIT off, ``max_iter = 10``, ``tol = 0.1``, ``cg_max_iter = 100``, ``cg_tol = 0.01`` are
the toolbox's (Cornell MRI lab); ``rad_per_ppm``, ``pad_factor = 1.3`` and the preconditioner
are chimap's (measured, below).

Weights
-------
Data weight ``W``: ``1 / noise_std`` if given (the toolbox's ``N_std`` mode), else ``weight``
if given, else the magnitude (the field noise SD scales as 1 / magnitude), else uniform;
normalised to mean 1 in the mask (toolbox ``dataterm_mask``).
Edge mask ``M`` (toolbox ``gradient_mask``): the three forward differences (per mm) of
``magnitude * mask`` are thresholded so that the number of components at or above the
threshold is ``edge_percentage * (number of mask voxels)``; those components are edges and are
not penalised. With the default 0.9 that is about 30 % of the gradient components (0.9 of 3 per
voxel), counted with those across the mask boundary. (The toolbox's comment calls it the
"percentage of voxels considered to be edges"; it is a count of components per mask voxel, not
a quantile of voxels.) Without a magnitude every gradient component is penalised (anisotropic
TV: the prior without morphology) and ``W`` is uniform unless ``noise_std`` or ``weight`` is
given.

Options
-------
SMV (``smv_radius_mm``): the field becomes ``f - S f`` and the operator ``(1 - S) D`` (``S``:
spherical mean over the radius), which removes residual harmonic background; the mask is eroded
to ``S mask > 0.999`` and the noise SD becomes ``sqrt(S n^2 + n^2)`` (the toolbox's rules); chi
is returned on the eroded mask (``info["mask"]``).
MERIT (``merit=True``): after each Gauss-Newton step the weighted complex residual
``W (e^(i D x) - e^(i phi))`` is demeaned over the mask; where its magnitude exceeds 6 standard
deviations of the residual magnitudes (``ratio = |res| / (6 sd) > 1``) the noise SD is
multiplied by ``ratio^2`` and ``W`` recomputed (toolbox rule).
MEDI+0 (``csf_mask``): term (3); chi is then referenced to its CSF mean (0 in the CSF), as in the
toolbox. :func:`medi_csf_mask` derives the CSF mask from an R2* map by MEDI+0's rule (from a
magnitude alone there is no CSF rule: fit R2* over the echoes first).

Measured on the 1.5 mm head above (NRMSE %, demeaned over the returned mask): default with
magnitude 19.0, without magnitude 22.2, MEDI+0 with :func:`medi_csf_mask` of the simulated R2*
18.8 (CSF SD 1.9 ppb, truth 1.8), MERIT 25.3 (the largest residuals of this simulation are model
error at veins and calcifications, not phase errors; MERIT down-weights them), SMV 5 mm 34.6 on
the 22 % smaller eroded mask (the filtered operator loses the lowest frequencies).

Automatic lambda
----------------
``lam="auto"`` (chimap's; the MEDI papers set ``lam`` by hand or by the L-curve) chooses the
weight by hold-out cross-validation (:mod:`chimap.invert.autoreg`): a reproducible tenth of the
weighted mask voxels gets zero data weight, ``lam`` runs up :data:`MEDI_AUTO_LAMBDAS` (quarter
decades from 100 to about 56000, the toolbox's 1000 in the middle), each weight warm-started
from the previous solution with one Gauss-Newton step (two for the first, from ``x = 0``) and
MERIT off, and the sweep stops two weights past the minimum of the held-out residual (the chord
``|exp(i s r) - 1| / s`` of the field residual ``r``, weighted by ``W``). The final solve
starts from the sweep's solution at the weight nearest the chosen one and runs, with every
voxel's weight restored (and MERIT if asked), for up to ``max_iter`` steps; each weight of the
sweep likewise starts from the solution of its nearest predecessor (which matters when the
sweep widens back up). ``"auto:lcurve"`` and the other criteria use the same sweep (data term
``||W (e^(iDx) - e^(i phi))||^2 / s^2``, regulariser ``||M G x||_1 / s``). The sweep costs
about as many Gauss-Newton steps as it has weights and keeps one iterate per weight (the
padded grid in float32 each); its CG steps stop at a relative residual of
:data:`MEDI_AUTO_CG_TOL` = 0.03 (the final solve at ``cg_tol``): on the 1 mm simulated head's
true local field (192 x 228 x 204) that took 239 s -> 164 s (2 cores; 824 -> 568 CG
iterations) for the same weight (4321 / 4314) and NRMSE (12.42 / 12.41 %).

Deviations from the toolbox
---------------------------
- Preconditioned CG: the inner solve runs CG on the split-preconditioned system
  ``Q A Q y = Q b``, ``x = Q y``, with ``Q = F^-1 diag(k^(-1/2)) F``,
  ``k = 2 lam mean_mask(W^2) D^2 + 3 mean(V M) |E|^2`` (``|E|^2`` the symbol of ``G^T G``;
  ``mean(V M)`` over the penalised components in the mask; the factor 3 needed the fewest
  iterations among 1, 3 and 10), its iterates held in k-space so an iteration costs 4 real
  FFTs like the toolbox's plain CG. The stopping rule is the toolbox's, on the residual of the
  original system ``||b - A x|| <= cg_tol ||b||``. On the 3 mm head plain CG needed
  18 + 42 + 86 + 82 iterations, the preconditioned one 14 + 21 + 45 + 44 (same NRMSE); at
  1.5 mm plain CG hit the cap of 100 in every step after the first, the preconditioned one
  needed 31 + 35 + 50 + 47, so its steps are closer to the exact Gauss-Newton steps than the
  toolbox's capped ones.
- Domain: the mask's bounding box zero padded by ``pad_factor`` (the toolbox uses the
  acquired matrix, unpadded unless ``zeropad`` is set); 1.3 gave the NRMSE of 1.5 within 0.2
  points on the 3 mm head (1.0: 7 points worse). Periodic forward differences on that grid (the
  toolbox: zero at the last index) -- the padding only joins zeros.
- The edge threshold is the exact quantile (the toolbox searches it in steps of 5 %).
- The ppm -> rad conversion uses the fixed reference ``rad_per_ppm`` (above) instead of the
  acquisition's own ``dTE`` and ``B0``, which the interface does not take.
- ``weight`` is accepted (as the pipeline passes it) as an alternative to ``noise_std``.
- Numba loops run on one thread when the padded grid has fewer than 2^20 voxels.

Runtime on a 2-CPU machine shared with other jobs (load average 9-14, so wall times are
inflated): 1 mm head (192 x 228 x 204, brain mask eroded by 2 voxels, magnitude; 4 steps,
39 + 46 + 61 + 62 CG iterations) 84 s of CPU time on one thread (212 s wall on the busy
machine); with both CPUs 282 s wall on the busy machine. 1.5 mm: 20 s of CPU time (54 s wall).
The first call compiles the numba loops (about 25 s, cached on disk afterwards).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from scipy import ndimage

from ..constants import GAMMA_BAR_HZ_PER_T
from ..geometry import check_voxel_size
from ..kernels import dipole_kernel, laplacian_kernel, smv_kernel
from . import _medi_kernels as K
from ._common import check_inversion_inputs, check_positive, check_weight, real_fft_pair
from .autoreg import choose_alpha, parse_alpha

__all__ = ["DEFAULT_MEDI_LAMBDA", "MEDI_AUTO_LAMBDAS", "MEDI_RAD_PER_PPM", "medi", "medi_csf_mask"]

#: Default data weight ``lam`` of the MEDI toolbox (phase in rad, gradients in rad/mm).
DEFAULT_MEDI_LAMBDA = 1000.0
#: Reference acquisition of the ppm -> rad conversion: 3 T, echo spacing 5 ms.
MEDI_REFERENCE_FIELD_STRENGTH_T = 3.0
MEDI_REFERENCE_DELTA_TE_S = 0.005
#: Radians of phase per ppm of field for the reference acquisition, ``2 pi gamma_bar B0 dTE 1e-6``.
MEDI_RAD_PER_PPM = float(2.0 * np.pi * GAMMA_BAR_HZ_PER_T * MEDI_REFERENCE_FIELD_STRENGTH_T * 1e-6
                         * MEDI_REFERENCE_DELTA_TE_S)

#: ``lam="auto"``: the sweep (quarter decades around the toolbox default 1000), Gauss-Newton
#: steps for the first weight and for each later one (warm-started).
MEDI_AUTO_LAMBDAS = tuple(10.0 ** np.arange(2.0, 4.76, 0.25))
MEDI_AUTO_FIRST_STEPS = 2
MEDI_AUTO_STEPS = 1
#: ``lam="auto"``: CG tolerance of the sweep's Gauss-Newton steps (at least ``cg_tol``); the
#: sweep only ranks the weights, the final solve runs at ``cg_tol``
MEDI_AUTO_CG_TOL = 0.03

_EPS = 1e-6  # smoothing of |M G x| in (rad/mm)^2, the toolbox's value
_PRECOND_GRADIENT_FACTOR = 3.0  # k = ... + 3 mean(V M) |E|^2 (measured, see module docstring)
# below this many voxels of the padded grid numba loops run on one thread: launching parallel
# loops costs more than they save on small grids (and much more on a busy machine)
_SERIAL_BELOW = 1 << 20


def _padded_bool(dom, x):
    out = np.zeros(dom.padded, dtype=bool)
    b = dom.box_shape
    out[: b[0], : b[1], : b[2]] = x[dom.box]
    return out


def _real_array(a, name):
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name} must be a real array, got dtype {a.dtype}")


def _check_magnitude(magnitude, mask):
    """3-D magnitude (root sum of squares over echoes for 4-D input), zero outside the mask."""
    if magnitude is None:
        return None
    a = np.asarray(magnitude)
    _real_array(a, "magnitude")
    if a.ndim == 4 and a.shape[:3] == mask.shape:
        a = np.sqrt(np.sum(a.astype(np.float64) ** 2, axis=3))
    if a.shape != mask.shape:
        raise ValueError(f"magnitude shape {np.shape(magnitude)} does not match local_field shape "
                         f"{mask.shape} (3-D, or 4-D with echoes last)")
    inside = a[mask].astype(np.float64)
    if not np.all(np.isfinite(inside)) or np.any(inside < 0):
        raise ValueError("magnitude must be finite and non-negative inside the mask")
    if not np.any(inside > 0):
        raise ValueError("magnitude is zero everywhere inside the mask")
    return np.where(mask, a.astype(np.float64), 0.0)


def _noise_map(noise_std, weight, mag, mask):
    """Relative field noise SD in the mask (inf: no data), 0 outside."""
    if noise_std is not None and weight is not None:
        raise ValueError("pass either noise_std or weight, not both")
    n = np.zeros(mask.shape, dtype=np.float64)
    if noise_std is not None:
        s = np.asarray(noise_std)
        if s.shape != mask.shape:
            raise ValueError(f"noise_std shape {s.shape} does not match local_field shape {mask.shape}")
        _real_array(s, "noise_std")
        s = s[mask].astype(np.float64)
        if np.any(np.isnan(s)) or np.any(s <= 0):
            raise ValueError("noise_std must be positive inside the mask (+inf: no data there)")
        if not np.any(np.isfinite(s)):
            raise ValueError("noise_std is infinite everywhere inside the mask")
        n[mask] = s
        return n
    if weight is not None:
        w = check_weight(weight, mask, np.float64)[mask]
    elif mag is not None:
        w = mag[mask]
    else:
        w = np.ones(int(mask.sum()))
    with np.errstate(divide="ignore"):
        n[mask] = np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), np.inf)
    return n


def _check_csf(csf_mask, mask):
    if csf_mask is None:
        return None
    c = np.asarray(csf_mask)
    if c.shape != mask.shape:
        raise ValueError(f"csf_mask shape {c.shape} does not match local_field shape {mask.shape}")
    if c.dtype != bool:
        if not np.issubdtype(c.dtype, np.number) or not np.all(np.isfinite(c)):
            raise ValueError("csf_mask must be boolean or numeric without NaN")
        c = c != 0
    c = c & mask
    if not c.any():
        raise ValueError("csf_mask has no voxel inside the mask")
    return c


def _penalised_components(mag_pad, inside, vs, fraction):
    """uint8 (3, ...) map of the gradient components to penalise (0 on magnitude edges)."""
    a = np.where(inside, mag_pad, 0).astype(mag_pad.dtype)
    g = np.empty((3,) + a.shape, dtype=a.dtype)
    for ax in range(3):  # |periodic forward difference| per mm
        g[ax] = np.abs(np.roll(a, -1, axis=ax) - a) * a.dtype.type(1.0 / vs[ax])
    del a
    n_edges = round(fraction * np.count_nonzero(inside))
    pos = g[g > 0]
    if n_edges >= pos.size:
        return (g == 0).view(np.uint8)
    if n_edges == 0:
        return np.ones(g.shape, dtype=np.uint8)
    thr = np.partition(pos, pos.size - n_edges)[pos.size - n_edges]
    return (g < thr).view(np.uint8)


def medi(local_field, mask, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), magnitude=None, noise_std=None,
         weight=None, lam=DEFAULT_MEDI_LAMBDA, edge_percentage=0.9, smv_radius_mm=None, merit=False,
         csf_mask=None, lam_csf=100.0, rad_per_ppm=MEDI_RAD_PER_PPM, max_iter=10, tol=0.1,
         cg_max_iter=100, cg_tol=0.01, pad_factor=1.3, return_info=False):
    """Morphology enabled dipole inversion (Liu 2011, 2012), with SMV, MERIT and MEDI+0 options.

    Parameters
    ----------
    local_field : numpy.ndarray, shape (I, J, K)
        Local field in ppm of B0; values outside ``mask`` are ignored (may be NaN).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels where the local field is valid (the eroded brain mask).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm (anisotropic allowed; gradients are per mm).
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes (unit vector after normalisation; may be oblique).
    magnitude : numpy.ndarray, shape (I, J, K) or (I, J, K, E), optional
        Magnitude image (a.u.; echoes combined by root sum of squares): source of the edge mask
        and, without ``noise_std``/``weight``, of the data weight. None: every gradient is
        penalised and the weight is uniform.
    noise_std : numpy.ndarray, shape (I, J, K), optional
        Field noise SD (any unit; only relative values matter), > 0 in the mask (+inf: no
        data). Data weight ``1 / noise_std``.
    weight : numpy.ndarray, shape (I, J, K), optional
        Data weight (>= 0) instead of ``1 / noise_std``; not with ``noise_std``.
    lam : float or str
        Data-fidelity weight for phase in rad (toolbox default 1000; see the module docstring
        for its meaning in ppm). ``"auto"`` chooses it from the data by hold-out
        cross-validation, ``"auto:<criterion>"`` by another criterion of
        :mod:`chimap.invert.autoreg` (module docstring, "Automatic lambda").
    edge_percentage : float
        Number of edge gradient components per mask voxel, in (0, 3] (toolbox default 0.9,
        i.e. about 30 % of the components are edges).
    smv_radius_mm : float, optional
        SMV radius in mm (e.g. 5, the toolbox's usual value); None: no SMV.
    merit : bool
        Model error reduction through iterative tuning (Liu 2013).
    csf_mask : numpy.ndarray of bool, shape (I, J, K), optional
        CSF (ventricles) for MEDI+0; see :func:`medi_csf_mask`. None: no CSF term.
    lam_csf : float
        Weight of the CSF uniformity term (toolbox default 100, phase units).
    rad_per_ppm : float
        Phase (rad) per ppm of field used internally (default: 3 T, echo spacing 5 ms).
    max_iter : int
        Gauss-Newton steps at most (toolbox: 10).
    tol : float
        Stop when ``||dx|| / ||x||`` falls below it (toolbox: 0.1).
    cg_max_iter : int
        Conjugate-gradient iterations per step at most (toolbox: 100).
    cg_tol : float
        CG stops when ``||b - A dx|| <= cg_tol ||b||`` (toolbox: 0.01).
    pad_factor : float or sequence of 3 float
        Zero padding of the mask's bounding box (>= 1; 1.3 measured as accurate as 1.5 on
        simulated heads).
    return_info : bool
        Also return a dict: ``iterations``, ``converged``, ``relative_change`` (per step),
        ``cg_iterations`` (per step), ``cost_data`` and ``cost_reg`` (toolbox's
        ``||W (e^(iDx) - e^(i phi))||`` and ``||M G x||_1`` in phase units, per step),
        ``mask`` (where chi is returned), ``rad_per_ppm``, ``downweighted`` (MERIT: voxels
        whose weight was lowered); with an automatic ``lam`` also ``lam`` (the chosen
        weight) and ``lam_selection`` (the sweep; its ``alphas`` are ``1 / lam``).

    Returns
    -------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm, dtype of ``local_field`` (float64 for integer input), zero
        outside ``mask`` (outside the SMV-eroded mask with SMV). Arbitrary mean, except with
        ``csf_mask``: zero mean in the CSF.
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        Bad shapes, empty mask, NaN/inf in the field inside the mask, bad voxel size or B0
        direction, non-positive ``lam``/``lam_csf``/``rad_per_ppm``/``tol``/``cg_tol``,
        non-integer or non-positive iteration counts, ``edge_percentage`` outside (0, 3], a bad
        magnitude, noise or weight map, both ``noise_std`` and ``weight``, a CSF mask outside
        the mask, or an SMV radius that erodes the whole mask.
    """
    lam, criterion = parse_alpha(lam, "lam")
    lam_csf = check_positive(lam_csf, "lam_csf")
    s = check_positive(rad_per_ppm, "rad_per_ppm")
    max_iter = check_positive(max_iter, "max_iter", integer=True)
    cg_max_iter = check_positive(cg_max_iter, "cg_max_iter", integer=True)
    tol = check_positive(tol, "tol")
    cg_tol = check_positive(cg_tol, "cg_tol")
    ep = check_positive(edge_percentage, "edge_percentage")
    if ep > 3.0:
        raise ValueError(f"edge_percentage must be in (0, 3] (edge gradient components per mask voxel), "
                         f"got {edge_percentage!r}")
    smv_r = check_positive(smv_radius_mm, "smv_radius_mm", allow_none=True)
    if not isinstance(merit, (bool, np.bool_)):
        raise ValueError(f"merit must be True or False, got {merit!r}")  # noqa: TRY004
    field, mask, vs, b, dom = check_inversion_inputs(local_field, mask, voxel_size, b0_direction, pad_factor)
    mag = _check_magnitude(magnitude, mask)
    noise = _noise_map(noise_std, weight, mag, mask)
    csf = _check_csf(csf_mask, mask)

    kw = dict(lam_csf=lam_csf, s=s, ep=ep, smv_r=smv_r, tol=tol, cg_max_iter=cg_max_iter, cg_tol=cg_tol)
    n_threads = 1 if int(np.prod(dom.padded)) < _SERIAL_BELOW else None
    with _numba_threads(n_threads):
        warm, selection = None, None
        if criterion is not None:
            warm = {}
            lam, selection = _choose_lambda(field, mask, vs, b, dom, mag, noise, csf, warm,
                                            criterion="cv" if criterion == "default" else criterion,
                                            pad_factor=pad_factor, **kw)
        out = _solve(field, mask, vs, b, dom, mag, noise, csf, lam=lam, merit=bool(merit), max_iter=max_iter,
                     return_info=return_info or selection is not None, warm=warm, **kw)
    if selection is None:
        return out
    if not return_info:
        return out[0]
    out[1].update(lam=lam, lam_selection=selection)
    return out


def _choose_lambda(field, mask, vs, b, dom, mag, noise, csf, warm, *, criterion, pad_factor, **kw):
    """``lam="auto"``: a warm-started sweep over :data:`MEDI_AUTO_LAMBDAS` (module docstring).

    Returns ``(lam, selection)``; ``warm["x"]`` holds the sweep's iterate nearest ``lam``."""
    s = kw["s"]
    w_data = np.where(mask & np.isfinite(noise) & (noise > 0), 1.0 / np.where(noise > 0, noise, 1.0), 0.0)
    calls = {"n": 0}
    iterates = {}

    def nearest(alpha):
        """The sweep iterate of the solved weight nearest ``alpha`` (in log scale)."""
        return iterates[min(iterates, key=lambda a: abs(np.log(a / alpha)))]

    def solve(alpha, f, m, voxel_size, w):
        held = mask & (w == 0) & (w_data > 0)
        if iterates:  # continue from the solution of the nearest weight solved so far
            warm["x"] = nearest(alpha)
        _solve(field, mask, vs, b, dom, mag, noise, csf, lam=1.0 / alpha, merit=False,
               max_iter=MEDI_AUTO_FIRST_STEPS if calls["n"] == 0 else MEDI_AUTO_STEPS, return_info=False,
               warm=warm, held=held, **{**kw, "cg_tol": max(kw["cg_tol"], MEDI_AUTO_CG_TOL)})
        calls["n"] += 1
        iterates[alpha] = warm["x"]
        box = dom.box_shape
        crop = (slice(0, box[0]), slice(0, box[1]), slice(0, box[2]))
        # the model's field such that predicted - field = (D x - phi) / s where the field is fitted
        res = np.zeros(mask.shape)
        fitted = np.zeros(mask.shape, dtype=bool)
        res[dom.box] = ((warm["dx"] - warm["phi"])[crop]) / s
        fitted[dom.box] = warm["m_in"][crop]
        predicted = np.where(fitted & mask, field + res, field)
        chi = dom.unpad(warm["x"] / s, mask)
        return chi, {"predicted_field": predicted, "data_cost": warm["data_cost"] / s ** 2,
                     "regulariser_cost": warm["reg_cost"] / s}

    alpha, selection = choose_alpha(solve, field, mask, vs, b0_direction=b, weight=w_data, criterion=criterion,
                                    alphas=1.0 / np.asarray(MEDI_AUTO_LAMBDAS), phase_scale=s,
                                    pad_factor=pad_factor)
    selection["gauss_newton_steps"] = MEDI_AUTO_FIRST_STEPS + MEDI_AUTO_STEPS * (calls["n"] - 1)
    # the final solve starts from the sweep's solution nearest the chosen weight
    warm["x"] = nearest(alpha)
    return 1.0 / alpha, selection


@contextmanager
def _numba_threads(n):
    """Run numba's parallel loops on ``n`` threads inside the block (None: unchanged)."""
    if n is None:
        yield
        return
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(min(n, old))
    try:
        yield
    finally:
        numba.set_num_threads(old)


def _solve(field, mask, vs, b, dom, mag, noise, csf, *, lam, lam_csf, s, ep, smv_r, merit, max_iter, tol,
           cg_max_iter, cg_tol, return_info, warm=None, held=None):
    """The Gauss-Newton iterations of :func:`medi` on validated inputs.

    ``warm`` (dict, optional): start from ``warm["x"]`` (padded grid, rad) when present, and
    leave there the final ``x``, ``dx`` (``D x``), ``phi``, ``m_in`` (padded), ``data_cost``
    (``||W (e^(iDx) - e^(i phi))||^2``) and ``reg_cost`` (``||M G x||_1``). ``held`` (bool,
    input grid, optional): voxels given zero data weight (hold-out cross-validation).
    """
    dt = dom.dtype.type
    shape = dom.padded
    fft, ifft = real_fft_pair(shape, dom.dtype)
    inv_h = (1.0 / vs).astype(np.float64)
    d = dipole_kernel(shape, vs, b0_direction=b, real_fft=True, dtype=dom.dtype)
    phi = dom.pad(field) * dt(s)
    m_orig = _padded_bool(dom, mask)
    m_in = m_orig
    n_pad = np.zeros(shape, dtype=np.float64)
    n_pad[m_orig] = noise[mask]  # same voxel order: the box sits at the origin of the padded grid
    del noise
    held_pad = None if held is None else _padded_bool(dom, held)
    sk = None
    if smv_r is not None:
        sk = smv_kernel(shape, vs, radius=smv_r, real_fft=True, dtype=dom.dtype)
        d = ((1 - sk) * d).astype(dom.dtype)
        phi = phi - ifft(fft(phi) * sk)
        m_in = ifft(fft(m_orig.astype(dom.dtype)) * sk) > 0.999
        if not m_in.any():
            raise ValueError(f"smv_radius_mm={smv_r} erodes the whole mask: use a smaller radius")
        phi = np.where(m_in, phi, dt(0))

    def data_weight(nz):
        """Data weight (mean 1 in the mask) from the relative noise SD (toolbox rules)."""
        bad = ~np.isfinite(nz)
        if sk is not None:
            sq = np.where(bad, 0.0, nz * nz).astype(dom.dtype)
            nz = np.sqrt(np.maximum(ifft(fft(sq) * sk).astype(np.float64) + sq, 0.0))
            if bad.any():
                bad = ifft(fft(bad.astype(dom.dtype)) * sk) > 1e-3
        ok = m_in & ~bad & (nz > 0)
        if held_pad is not None:
            ok &= ~held_pad
        w = np.zeros(shape, dtype=np.float64)
        w[ok] = 1.0 / nz[ok]
        mean = w[m_in].mean()
        if not mean > 0:
            raise ValueError("the data weight is zero everywhere inside the mask")
        return (w / mean).astype(dom.dtype)

    m = data_weight(n_pad)
    if mag is not None:
        mag_pad = np.zeros(shape, dtype=dom.dtype)
        mag_pad[m_orig] = mag[mask]
        penalised = _penalised_components(mag_pad, m_in, vs, ep)
        del mag_pad
    else:
        penalised = np.ones((3,) + shape, dtype=np.uint8)
    csf_idx = None
    if csf is not None:
        csf_p = _padded_bool(dom, csf) & m_in
        if not csf_p.any():
            raise ValueError("csf_mask has no voxel inside the SMV-eroded mask")
        csf_idx = np.flatnonzero(csf_p)
        del csf_p

    def add_csf(p, out):
        """``out += lam_csf * L p``, ``L p = M_csf (p - mean_csf p)``."""
        v = p.reshape(-1)[csf_idx]
        out.reshape(-1)[csf_idx] += dt(lam_csf) * (v - dt(v.mean(dtype=np.float64)))

    e2 = -laplacian_kernel(shape, vs, real_fft=True, dtype=dom.dtype)
    d2 = d * d
    two_lam = 2.0 * lam
    if warm is not None and warm.get("x") is not None:
        x = warm["x"].copy()
        dx_field = ifft(fft(x) * d)  # D x
    else:
        x = np.zeros(shape, dtype=dom.dtype)
        dx_field = np.zeros(shape, dtype=dom.dtype)  # D x
    c = np.empty((3,) + shape, dtype=dom.dtype)
    info = {"relative_change": [], "cg_iterations": [], "cost_data": [], "cost_reg": []}
    downweighted = np.zeros(shape, dtype=bool)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        K.lagged_weights(x, penalised, inv_h, _EPS, c)
        m2 = m * m
        # b = grad E(x) = G^T c G x + 2 lam D (W^2 sin(D x - phi)) [+ lam_csf L x]
        q = ifft(fft(m2 * np.sin(dx_field - phi)) * d)
        rhs = np.empty(shape, dtype=dom.dtype)
        K.weighted_gradient_normal(x, c, inv_h, rhs)
        q *= dt(two_lam)
        rhs += q
        del q
        if csf_idx is not None:
            add_csf(x, rhs)
        sel = penalised.view(bool) & m_in
        kc = _PRECOND_GRADIENT_FACTOR * float(c[sel].mean(dtype=np.float64)) if sel.any() else 0.0
        del sel
        if not kc > 0:  # no penalised gradient in the mask: the weight outside it
            kc = _PRECOND_GRADIENT_FACTOR / np.sqrt(_EPS)
        km = float(np.mean(m2[m_in], dtype=np.float64))
        kden = (two_lam * km) * d2 + dt(kc) * e2
        kden[0, 0, 0] = 1
        ks = (1 / np.sqrt(kden)).astype(dom.dtype)
        ks[0, 0, 0] = 0  # constants are in the null space of A (D(0) = E(0) = 0)
        del kden

        def apply_a(u, du, w2=m2):
            """Image-space ``G^T c G u [+ lam_csf L u]``; ``du <- W^2 du`` in place."""
            out = np.empty(shape, dtype=dom.dtype)
            K.weighted_gradient_normal(u, c, inv_h, out)
            du *= w2
            if csf_idx is not None:
                add_csf(u, out)
            return out

        step, n_cg = _spectral_pcg(apply_a, rhs, ks, d, two_lam, fft, ifft, cg_tol, cg_max_iter)
        del rhs, ks
        info["cg_iterations"].append(n_cg)
        xn = float(np.linalg.norm(x))
        change = float(np.linalg.norm(step)) / xn if xn > 0 else float("inf")
        info["relative_change"].append(change)
        x -= step
        del step
        dx_field = ifft(fft(x) * d)
        res = m[m_in].astype(np.float64) * (np.exp(1j * dx_field[m_in].astype(np.float64))
                                             - np.exp(1j * phi[m_in].astype(np.float64)))
        info["cost_data"].append(float(np.linalg.norm(res)))
        info["cost_reg"].append(_l1_cost(x, penalised, inv_h))
        if merit:
            res -= res.mean()
            amp = np.abs(res)
            factor = 6.0 * amp.std()
            if factor > 0:
                ratio = np.maximum(amp / factor, 1.0)
                n_pad[m_in] *= ratio * ratio
                downweighted[m_in] |= ratio > 1
                m = data_weight(n_pad)
        del res
        if change < tol:
            converged = True
            break
    if warm is not None:
        warm.update(x=x, dx=dx_field, phi=phi, m_in=m_in, data_cost=info["cost_data"][-1] ** 2,
                    reg_cost=info["cost_reg"][-1])
    out_mask = mask
    if sk is not None:
        out_mask = np.zeros(mask.shape, dtype=bool)
        bb = dom.box_shape
        out_mask[dom.box] = m_in[: bb[0], : bb[1], : bb[2]]
    out = dom.unpad(x / dt(s), out_mask)
    if csf is not None:
        out[out_mask] -= dt(out[csf & out_mask].mean(dtype=np.float64))
    if return_info:
        info.update(iterations=it, converged=converged, mask=out_mask, rad_per_ppm=s,
                    downweighted=int(np.count_nonzero(downweighted)))
        return out, info
    return out


def _l1_cost(x, penalised, inv_h):
    """``||M G x||_1`` (anisotropic, periodic forward differences), float."""
    total = 0.0
    for ax in range(3):
        g = np.abs(np.roll(x, -1, axis=ax) - x)
        total += float(g[penalised[ax].view(bool)].sum(dtype=np.float64)) * inv_h[ax]
    return total


def _spectral_pcg(apply_a, b, ks, d, two_lam, fft, ifft, tol, max_iter):
    """Solve ``A x = b`` (``A = G^T c G + 2 lam D W^2 D [+ lam_csf L]``) by CG on
    ``Q A Q y = Q b``, ``x = Q y``, ``Q = F^-1 ks F``, with ``y`` held in k-space.

    One iteration: ``u = F^-1(ks y)`` and ``D u = F^-1(d ks y)`` (2 inverse FFTs), then
    ``Q A u = ks (F(G^T c G u) + 2 lam d F(W^2 D u))`` (2 forward FFTs). The residual of the
    original system is ``F^-1(r / ks)`` (``r`` the k-space residual; zero where ``ks = 0``), so
    the toolbox's rule ``||b - A x|| <= tol ||b||`` is checked without extra FFTs.
    """
    n2 = b.shape[2]
    even = n2 % 2 == 0
    with np.errstate(divide="ignore"):
        inv_ks2 = np.where(ks > 0, 1 / (ks.astype(np.float64) ** 2), 0.0)
    r = fft(b)
    r *= ks
    y = np.zeros_like(r)
    p = np.zeros_like(r)
    w = np.full(r.shape[2], 2.0)  # Parseval weights of the half spectrum (see _medi_kernels)
    w[0] = 1.0
    if even:
        w[-1] = 1.0
    r2 = (r.real.astype(np.float64) ** 2 + r.imag.astype(np.float64) ** 2) * w
    rr = float(r2.sum())
    rt = float((r2 * inv_ks2).sum())
    del r2
    stop = tol * tol * rt
    u = np.empty_like(r)
    du = np.empty_like(r)
    beta = 0.0
    n = 0
    while n < max_iter and rt > stop and rr > 0:
        K.spectral_direction_split(p, r, beta, ks, d, u, du)
        img_du = ifft(du)
        reg = apply_a(ifft(u), img_du)
        ap = fft(reg)
        del reg
        pap = K.spectral_combine_dot(ap, fft(img_du), ks, d, two_lam, p, even)
        del img_du
        if not pap > 0:
            break
        rr_new, rt = K.spectral_cg_step(y, r, p, ap, rr / pap, inv_ks2, even)
        beta = rr_new / rr
        rr = rr_new
        n += 1
    y *= ks
    return ifft(y), n


def medi_csf_mask(r2star, mask, voxel_size, *, threshold=5.0, center_radius_mm=30.0, n_central=2,
                  erode_mm=0.0):
    """Ventricular CSF mask for MEDI+0 from an R2* map (the rule of Liu Z et al. MRM 2018).

    Rule (MEDI+0's automatic CSF mask, as in the authors' toolbox ``extract_CSF``):
    voxels of the mask with ``R2* < threshold`` (5 1/s) form the candidate CSF; its connected
    components (26-connectivity) inside a ball of ``center_radius_mm`` (30 mm) around the
    mask's centroid are ranked by size, and the ``n_central`` (2) largest mark the ventricles;
    every connected component of the whole candidate CSF that touches them is kept. Sulcal CSF
    and isolated low-R2* voxels away from the ventricles are left out. ``erode_mm`` > 0 first
    erodes the mask by a ball of that radius (the toolbox's optional 10 mm SMV erosion).

    Parameters
    ----------
    r2star : numpy.ndarray, shape (I, J, K)
        R2* in 1/s (e.g. a log-linear fit over the echo magnitudes).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Brain mask.
    voxel_size : array_like, shape (3,)
        mm.
    threshold : float
        R2* threshold in 1/s (MEDI+0: 5).
    center_radius_mm : float
        Radius of the central ball in mm (toolbox: 30).
    n_central : int
        Number of central components that seed the ventricles (toolbox: 2).
    erode_mm : float
        Erosion of the mask in mm before thresholding (0: none, the toolbox's default).

    Returns
    -------
    numpy.ndarray of bool, shape (I, J, K)
        The CSF mask (may be empty when no voxel passes the threshold near the centre).

    Raises
    ------
    ValueError
        Shape mismatch, empty mask, bad voxel size or non-positive parameters.
    """
    r2 = np.asarray(r2star)
    if r2.ndim != 3:
        raise ValueError(f"r2star must be a 3-D array (I, J, K), got shape {r2.shape}")
    _real_array(r2, "r2star")
    m = np.asarray(mask)
    if m.shape != r2.shape:
        raise ValueError(f"mask shape {m.shape} does not match r2star shape {r2.shape}")
    m = m.astype(bool)
    if not m.any():
        raise ValueError("mask is empty")
    vs = check_voxel_size(voxel_size)
    threshold = check_positive(threshold, "threshold")
    radius = check_positive(center_radius_mm, "center_radius_mm")
    n_central = check_positive(n_central, "n_central", integer=True)
    erode = float(erode_mm)
    if not np.isfinite(erode) or erode < 0:
        raise ValueError(f"erode_mm must be finite and non-negative, got {erode_mm!r}")
    idx = np.argwhere(m)
    centre = idx.mean(axis=0) * vs
    if erode > 0:
        half = np.floor(erode / vs + 1e-9).astype(int)
        ax = [(np.arange(-h, h + 1) * v) ** 2 for h, v in zip(half, vs)]
        ball = ax[0][:, None, None] + ax[1][None, :, None] + ax[2][None, None, :] <= erode * erode + 1e-9
        m = ndimage.binary_erosion(m, structure=ball)
    with np.errstate(invalid="ignore"):
        low = m & np.isfinite(r2) & (r2 < threshold)
    grids = np.ogrid[tuple(slice(0, n) for n in r2.shape)]
    dist2 = sum(((g * v) - c) ** 2 for g, v, c in zip(grids, vs, centre))
    structure = np.ones((3, 3, 3), dtype=bool)
    central, n_c = ndimage.label(low & (dist2 <= radius * radius), structure=structure)
    if n_c == 0:
        return np.zeros(r2.shape, dtype=bool)
    sizes = np.bincount(central.ravel())[1:]
    seeds = np.isin(central, np.argsort(sizes)[::-1][:n_central] + 1)
    whole, _ = ndimage.label(low, structure=structure)
    keep = np.unique(whole[seeds])
    return np.isin(whole, keep[keep > 0])
