"""Single-step TGV-QSM: wrapped phase and mask in, chi out (Langkammer et al. 2015).

Reference
---------
Langkammer C, Bredies K, Poser BA, Barth M, Reishofer G, Fan AP, Bilgic B, Fazekas F, Mainero
C, Ropele S. Fast quantitative susceptibility mapping using 3D EPI and total generalized
variation. NeuroImage 2015;111:622-630. The behaviour follows the original TGV-QSM code
(Bredies and Langkammer, 2016, with its 2023 fixes) and TGV.jl (Christian, Stewart et al.)
where the paper leaves details open; this is an independent implementation.

Model
-----
On the Laplacian of the wrapped phase ``L phi`` (computed robustly, see ``laplacian``) and with
``box = L D`` the dipole operator in the image domain (:mod:`chimap.tgv.operators`)::

    min  1/2 ||psi||^2_(mask) + alpha1 ||grad chi - w||_1 + alpha0 ||sym_grad w||_1
    s.t. box chi - L psi = L phi   on mask0

``psi`` absorbs the harmonic background field, so unwrapping (only the Laplacian of the phase
enters), background removal and dipole inversion are one convex problem; ``chi`` is in phase
units (rad) and is divided by ``2 pi gamma_bar B0 TE`` (rad/ppm) at the end. ``mask`` is the
input mask eroded ``erosions`` times (6-neighbourhood), ``mask0`` once more. The saddle-point
problem is solved by the primal-dual (Chambolle-Pock) iteration with extrapolation
(:mod:`chimap.tgv._kernels`; two fused passes over memory per iteration, float32).

Parameters and presets
----------------------
``alpha = (alpha1, alpha0)``: ``alpha1`` weighs the first-order term (``grad chi - w``),
``alpha0`` the second-order term (``sym_grad w``); both in phase units. The paper writes
"(alpha1, alpha0) = (0.0015, 0.0005)", but its code applies 0.0015 to the second-order term and
0.0005 to the first-order term, so here the original is ``alpha=(0.0005, 0.0015)``. TGV.jl
orders its pair as ``[alpha0, alpha1]`` = ``[0.002, 0.003]`` at its default regularisation
(``alpha=(0.003, 0.002)`` here). Gkotsoulias et al. 2025 report "alpha1: 20 and alpha2: 30"
with 2500 iterations: that is TGV.jl's pair written times 1e4 (an inference; the paper gives no
other scale), i.e. ``preset="julia"`` with ``iterations=2500``. ``"qsmxt"`` is the original
code as maintained by QSMxT since 2023 (QSMxT/TGV_QSM@31f0ddd: both weights doubled, the
problem de-dimensionalised), the implementation Gkotsoulias et al. cite (Stewart et al. 2022);
``benchmarks/tgv.py --original`` runs that code beside this one (NRMSE 70.0 against 69.2 % on a
2 mm head, same parameters, 1000 iterations). On the 1 mm GRE case of
``benchmarks/bench_pipeline.py`` (the combined field as phase at the mean TE, the pipeline's
mask), the original code reached 69.1 % after 1000 iterations and 61.8 % after 2500, against
47.1 % for ``chimap run --preset tgv`` and 36.9 % for the classical default pipeline on the
same voxels (a one-off comparison with a locally built copy; nothing of it is in chimap).

=============  ===================  ==========  ========  =========  ===============  =========
preset         alpha (a1, a0)       iterations  erosions  laplacian  mean correction  de-dim.
=============  ===================  ==========  ========  =========  ===============  =========
``"julia"``    (0.003, 0.002)       "auto"      3         "sin"      yes              yes
``"original"`` (0.0005, 0.0015)     1000        5         "wrap"     no               no
``"qsmxt"``    (0.001, 0.003)       1000        5         "wrap"     no               yes
=============  ===================  ==========  ========  =========  ===============  =========

``iterations="auto"`` is TGV.jl's resolution heuristic ``max(1000, 3200 / prod(h)^0.42) /
3^0.6`` (h in mm; 1655 at 1 mm, 2193 at 0.8 mm, 2595 at 0.7 mm); ``tol`` stops earlier when the
relative change of chi over ``check_every`` iterations falls below it.

Input and convergence (measured)
--------------------------------
The Laplacian of the wrapped phase aliases where neighbouring voxels differ by more than pi
(vessels, late echoes, coarse voxels) and the sine form compresses large differences: on a
2 mm simulated head at TE 20 ms (local field only, no noise) the "sin" and "wrap" Laplacians
differ from that of the unwrapped phase by 67 % and 91 % (relative L2 in the eroded mask) and
TGV's NRMSE rises from 51.6 % (``laplacian="plain"`` on the unwrapped phase) to 62.6 % / 70.4 %.
``chimap run --preset tgv`` therefore feeds TGV the unwrapped, echo-combined field (``[invert]
input = "field"``); ``input = "phase"`` is the paper's single step.

The primal-dual iteration stops far from the model's minimiser at the published iteration
counts, from any start, and the model itself does not pin chi down near its minimum.
``benchmarks/tgv_objective.py`` evaluates the objective ``F`` (``psi`` eliminated exactly) on a
head's noise-free total field (``laplacian="plain"``, this preset's parameters):

- 2 mm, 8000 iterations: ``F`` 47.4 from zero (NRMSE 56.2 %), 34.5 from the coarse start
  (53.2 %), 32.7 from the LBV + weak-harmonic TV result (42.4 %), 33.0 from the true chi
  (29.4 %). Halfway between the coarse start's 2000-iteration result (``F`` 32.4, 49.9 %) and
  the truth-started one ``F`` is 26.5 (34.2 %), below every iterate: the iterates sit on
  opposite walls of a valley that the iteration crosses very slowly. From that halfway point
  2000 more iterations give ``F`` 27.0 at 35.1 %; from halfway towards the classical-started
  result, ``F`` 27.0 at 42.9 %. So the valley floor spans 35-43 % (the classical result: 36.3 %).
  Averaging the iterates does not help (an ad-hoc run: ``F`` 36.7 for the mean of the second
  half of 2000 iterations from the coarse start).
- 1 mm, 1655 iterations (2 coarse levels): ``F`` 872 from the coarse start (49.1 %), 1663 from
  the classical result (32.9 %), 1544 from the true chi (13.6 %); halfway between the first and
  the last 1164 (28.0 %), near the mean of the two: no valley on that segment, and lowering
  ``F`` from the truth-started result leads towards the preset's 49 %. Here the objective
  itself prefers the less accurate chi.

Earlier attempts on the 2 mm head: step-size balancing, a start from the 4 mm solution,
continuation of the ``psi`` weight and an FFT preconditioner of the ``eta`` step each gained at
most 3 NRMSE points; at 1 mm the coarse-grid start below gains 7-12 points.

Coarse-grid start
-----------------
``coarse_levels=n`` (chimap's; the reference codes start from zero) first solves the same
problem on a grid of twice the voxel size (the 2 x 2 x 2 block mean of the unwrapped phase;
the mask's blocks at least half inside, half the erosions), recursively ``n`` times, and starts
the iteration from that chi, interpolated trilinearly. Wrapped phase is not coarsened: the
coarse grid doubles the neighbour differences and aliases more (from the wrapped phase of the
1 mm GRE head the coarse start made NRMSE worse, 70.6 -> 75.4 %). The coarse solves cost about an eighth each and carry the slow,
large-scale part of the solution, which the iteration from zero builds up over thousands of
iterations. Measured on the 1 mm simulated GRE head (TGV on the combined field, 1655
iterations, NRMSE against the true chi): 62.4 % from zero, 55.0 % with one level, 53.2 % with
two (5000 iterations from zero: 57.9 %), for 50 -> 56 s. ``chimap run --preset tgv`` uses two
levels; the presets of :data:`PRESETS` keep the reference codes' start.

Deviations (documented choices)
-------------------------------
- Step sizes ``sigma = tau = 1 / ||K||`` with ``||K||`` the operator norm measured by power
  iteration for the actual stencils and voxel sizes (+5 % margin); the original uses the bound
  ``sqrt(2 g^2 + 1)``, ``g = 4 sum 1/h^2`` (17 at 1 mm; the measured norm is 11.9), TGV.jl its
  own bound and a step multiplier of 3 on some variables. Larger safe steps, same fixed point.
- Oblique B0 and anisotropic voxels: the dipole operator ``(1/3) L - (b . grad)^2`` is
  discretised with centred second and mixed differences (a 19-point stencil); for B0 along an
  axis it is the original 7-point stencil. TGV.jl fits a 27-point stencil to the continuous
  kernel instead.
- The symmetrised gradient of ``w`` uses the correct voxel size per derivative (both reference
  codes use ``1/h_x`` for all derivatives of ``w_x``; harmless only for isotropic voxels).
- ``device="cuda"``: the same iteration in torch (:mod:`chimap.tgv._torch`), whole-array
  tensor operations instead of the fused loops; equal to the numba result to float32 rounding.
- Finite differences see zeros beyond a working box (the mask's bounding box plus two voxels);
  the masks never reach its edge, so no boundary rule enters the result.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from scipy import ndimage

from ..geometry import check_b0_direction, check_voxel_size
from ..mask._checks import as_mask
from ..units import check_echo_times, ppm_to_rad
from . import _kernels as K
from .operators import dipole_stencil, operator_norm

__all__ = ["ECHO_COMBINATIONS", "PRESETS", "iterations_heuristic", "laplacian_of_phase", "step_sizes", "tgv_qsm"]

#: Named parameter sets (see the module docstring).
PRESETS = {
    "julia": {"alpha": (0.003, 0.002), "iterations": "auto", "erosions": 3, "laplacian": "sin",
              "correct_laplacian": True, "dedimensionalise": True, "preconditioned": True},
    "original": {"alpha": (0.0005, 0.0015), "iterations": 1000, "erosions": 5, "laplacian": "wrap",
                 "correct_laplacian": False, "dedimensionalise": False, "preconditioned": False},
    "qsmxt": {"alpha": (0.001, 0.003), "iterations": 1000, "erosions": 5, "laplacian": "wrap",
              "correct_laplacian": False, "dedimensionalise": True, "preconditioned": False},
}
#: Ways of combining echoes (see :func:`tgv_qsm`).
ECHO_COMBINATIONS = ("laplacian", "laplacian_origin", "per_echo")
_NORM_MARGIN = 1.05
_BOX_MARGIN = 2


def iterations_heuristic(voxel_size, step=3.0):
    """TGV.jl's iteration count for a resolution: ``max(1000, 3200 / prod(h)^0.42) / step^0.6``."""
    h = np.prod(np.asarray(voxel_size, dtype=np.float64))
    return int(round(max(1000.0, 3200.0 / h ** 0.42) / step ** 0.6))


def step_sizes(h, axial, mixed, norm, *, preconditioned=True):
    """Primal-dual step sizes ``(sigma, tau)``: dual steps for (eta, p, q) and primal steps
    for (chi, psi, w_x, w_y, w_z).

    ``preconditioned=False``: ``sigma = tau = 1 / (1.05 ||K||)``. ``preconditioned=True``: the
    diagonal preconditioning of Pock and Chambolle (ICCV 2011, alpha = 1), ``tau_j = 1 /
    sum_i |K_ij|`` and ``sigma_i = 1 / sum_j |K_ij|`` from the stencils (full masks), which
    converges for any ``K``; p (and q) take the smallest of their components' steps, since
    their projections are onto Euclidean balls. The blocks of K differ in scale by an order of
    magnitude (the dipole and Laplacian stencils against the identity on w), which a single
    step size cannot serve.
    """
    if not preconditioned:
        step = 1.0 / (norm * _NORM_MARGIN)
        return np.full(3, step), np.full(5, step)
    inv_h = 1.0 / np.asarray(h, dtype=np.float64)
    box_abs = 2.0 * np.sum(np.abs(axial)) + abs(2.0 * np.sum(axial)) + 4.0 * np.sum(np.abs(mixed))
    lap_abs = 4.0 * np.sum(inv_h ** 2)
    grad_col = 2.0 * np.sum(inv_h)            # chi in the forward differences of p
    # w_a: -1 in p_a; in sym_grad: e_aa (2 / h_a), e_ab for b != a (two entries of 1 / (2 h_b),
    # counted twice by the Frobenius inner product)
    w_col = np.array([1.0 + 2.0 * inv_h[a] + sum(2.0 * inv_h[c] for c in range(3) if c != a) for a in range(3)])
    tau = np.concatenate([[1.0 / (box_abs + grad_col), 1.0 / lap_abs], 1.0 / w_col])
    p_row = np.max(2.0 * inv_h + 1.0)         # |grad chi| (two entries) and -w
    q_row = max(np.max(2.0 * inv_h), max(2.0 * (inv_h[a] + inv_h[c]) for a, c in ((0, 1), (0, 2), (1, 2))))
    sigma = np.array([1.0 / (box_abs + lap_abs), 1.0 / p_row, 1.0 / q_row])
    return sigma, tau


def laplacian_of_phase(phase, voxel_size, *, method="sin"):
    """Laplacian (rad/mm^2) of the unwrapped phase, computed from the wrapped phase.

    Parameters
    ----------
    phase : numpy.ndarray, shape (I, J, K)
        Wrapped (or unwrapped) phase in radians.
    voxel_size : array_like, shape (3,)
        mm.
    method : {"sin", "wrap", "plain"}
        ``"sin"``: ``cos(phi) L sin(phi) - sin(phi) L cos(phi)`` (TGV.jl's default); ``"wrap"``:
        neighbour differences wrapped into [-pi, pi) (original TGV-QSM); ``"plain"``: the
        ordinary Laplacian, for phase that is already unwrapped (a combined field). 7-point
        stencil, replicated border.
    """
    if method not in ("sin", "wrap", "plain"):
        raise ValueError(f'laplacian must be "sin", "wrap" or "plain", got {method!r}')
    vs = check_voxel_size(voxel_size)
    ph = np.ascontiguousarray(phase, dtype=np.float64)
    out = np.empty(ph.shape, dtype=np.float64)
    if method == "plain":
        padded = np.pad(ph, 1, mode="edge")
        out[...] = 0.0
        for a in range(3):
            lo = [slice(1, -1)] * 3
            hi = [slice(1, -1)] * 3
            lo[a] = slice(0, -2)
            hi[a] = slice(2, None)
            out += (padded[tuple(lo)] + padded[tuple(hi)] - 2.0 * ph) / vs[a] ** 2
        return out
    K.laplacian_of_wrapped_phase(ph, 1.0 / vs ** 2, method == "wrap", out)
    return out


# coarse-grid start only where the mask spans at least this many voxels per axis on the coarse grid
_MIN_COARSE_EXTENT = 16


def _odd(n):
    """``n``, or ``n + 1`` when ``n`` is a power of two (fused loops run slower on those)."""
    return n + 1 if n & (n - 1) == 0 else n


def tgv_qsm(phase, mask, voxel_size, *, echo_time, field_strength, b0_direction=(0.0, 0.0, 1.0),
            preset="julia", alpha=None, iterations=None, erosions=None, laplacian=None,
            correct_laplacian=None, dedimensionalise=None, preconditioned=None, coarse_levels=0, tol=None,
            check_every=50, echo_combination="laplacian", device=None, progress=None, return_info=False,
            _chi0=None):
    """Susceptibility from wrapped phase in one step by TGV-QSM (Langkammer et al. 2015).

    Parameters
    ----------
    phase : numpy.ndarray, shape (I, J, K) or (I, J, K, E)
        Wrapped phase in radians (chimap's sign: ``+2 pi gamma_bar B0 field TE``); echoes last.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Brain mask (it is eroded ``erosions`` times before use).
    voxel_size : array_like, shape (3,)
        mm (anisotropic allowed).
    echo_time : float or array_like of float
        Echo time(s) in seconds, one per echo.
    field_strength : float
        Tesla.
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes (oblique allowed).
    preset : {"julia", "original", "qsmxt"}
        Defaults for every parameter left None (module docstring).
    alpha : tuple of 2 float, optional
        ``(alpha1, alpha0)``: weights of the first-order and the second-order TGV terms.
    iterations : int or "auto", optional
        Primal-dual iterations (at most, with ``tol``); "auto": :func:`iterations_heuristic`.
    erosions : int, optional
        Erosions of ``mask`` (6-neighbourhood) before solving.
    laplacian : {"sin", "wrap", "plain"}, optional
        How the Laplacian of the phase is computed (:func:`laplacian_of_phase`; "plain" for
        unwrapped input).
    correct_laplacian : bool, optional
        Subtract the mean of the phase Laplacian over ``mask0`` (TGV.jl).
    dedimensionalise : bool, optional
        Scale the voxel sizes to a unit geometric mean (and ``alpha1``, ``alpha0`` and the
        Laplacian accordingly): the same problem, better conditioned for small or anisotropic
        voxels.
    tol : float, optional
        Stop when the relative change of chi (in the mask) over ``check_every`` iterations is
        below ``tol``; None runs every iteration.
    preconditioned : bool, optional
        Diagonally preconditioned step sizes (:func:`step_sizes`) instead of one step from the
        operator norm.
    coarse_levels : int
        Start from a coarser solution (chimap's; module docstring, "Coarse-grid start"): 0
        starts from chi = 0 as the reference codes do; 1 first solves the same problem on a
        grid of twice the voxel size (``iterations`` there too, an eighth of the cost) and
        starts from its chi interpolated to this grid; 2 does the same for that grid, and so on.
        The fixed point is the same; it is reached sooner. Only for unwrapped phase
        (``laplacian="plain"``) and masks spanning at least 32 voxels per axis; otherwise the
        start is zero (``info["coarse"]`` is None).
    check_every : int
        Iterations between convergence checks (and progress reports).
    echo_combination : {"laplacian", "laplacian_origin", "per_echo"}
        Multi-echo input: ``"laplacian"`` fits the phase Laplacians of the echoes linearly in
        TE with an intercept (which takes the Laplacian of the receiver phase offset), takes
        the slope times the mean echo time as the phase Laplacian (for which ``alpha`` holds)
        and solves once; ``"laplacian_origin"`` fits through the origin (``sum TE_e L phi_e /
        sum TE_e^2``; less noise, for phase whose offsets were removed, e.g. by MCPC-3D-S);
        ``"per_echo"`` solves each echo (``alpha`` for its own TE) and averages chi with
        weights ``TE_e^2`` (inverse noise variance).
    device : str, optional
        None (default): the fused numba loops on the CPU. A torch device (``"cuda"``,
        ``"cuda:1"``; ``"cpu"`` for testing, slower than numba): the same iteration in torch
        (needs the ``dl`` extra), equal to the numba result to float32 rounding.
    progress : callable, optional
        ``progress(iteration, total, relative_change)`` after every check.
    return_info : bool
        Also return a dict (parameters used, iterations, convergence history, the eroded mask).

    Returns
    -------
    chi : numpy.ndarray, shape (I, J, K), float32
        Susceptibility in ppm, zero outside the eroded mask; arbitrary offset (reference it).
    info : dict
        Only with ``return_info=True``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = dict(PRESETS[preset])
    for key, value in (("alpha", alpha), ("iterations", iterations), ("erosions", erosions),
                       ("laplacian", laplacian), ("correct_laplacian", correct_laplacian),
                       ("dedimensionalise", dedimensionalise), ("preconditioned", preconditioned)):
        if value is not None:
            cfg[key] = value
    ph = np.asarray(phase)
    if ph.ndim not in (3, 4):
        raise ValueError(f"phase must be 3-D or 4-D (echoes last), got shape {ph.shape}")
    if not np.issubdtype(ph.dtype, np.floating) and not np.issubdtype(ph.dtype, np.integer):
        raise ValueError(f"phase must be a real array in radians, got dtype {ph.dtype}")
    if ph.ndim == 3:
        ph = ph[..., None]
    te = check_echo_times(echo_time)
    if te.size != ph.shape[3]:
        raise ValueError(f"{te.size} echo time(s) for {ph.shape[3]} echo(es)")
    m_in = as_mask(mask, shape=ph.shape[:3], allow_empty=False)
    inside = ph[m_in]
    if not np.all(np.isfinite(inside)):
        raise ValueError("phase holds NaN or infinite values inside the mask")
    if cfg["laplacian"] != "plain" and np.abs(inside).max() > np.pi + 1e-3:
        raise ValueError(f"wrapped phase must lie in [-pi, pi] rad, found up to {np.abs(inside).max():.3g}: "
                         'rescale it to radians (or pass laplacian="plain" for unwrapped phase)')
    vs = check_voxel_size(voxel_size)
    b = check_b0_direction(b0_direction)
    strength = float(field_strength)
    if not strength > 0:
        raise ValueError(f"field_strength must be positive (tesla), got {field_strength!r}")
    alpha1, alpha0 = (float(a) for a in cfg["alpha"])
    if not (alpha1 > 0 and alpha0 > 0):
        raise ValueError(f"alpha must be two positive weights (alpha1, alpha0), got {cfg['alpha']!r}")
    n_iter = iterations_heuristic(vs) if cfg["iterations"] == "auto" else int(cfg["iterations"])
    if n_iter < 1:
        raise ValueError(f"iterations must be positive or 'auto', got {cfg['iterations']!r}")
    n_erode = int(cfg["erosions"])
    if n_erode < 0:
        raise ValueError(f"erosions must be >= 0, got {cfg['erosions']!r}")
    if echo_combination not in ECHO_COMBINATIONS:
        raise ValueError(f"echo_combination must be one of {ECHO_COMBINATIONS}, got {echo_combination!r}")
    if echo_combination == "laplacian" and ph.shape[3] == 2 and np.ptp(te) <= 0:
        raise ValueError("two echoes with the same echo time: no slope to fit")
    check_every = max(1, int(check_every))
    levels = int(coarse_levels)
    if levels < 0:
        raise ValueError(f"coarse_levels must be >= 0, got {coarse_levels!r}")
    coarse_record = None
    # unwrapped input only: on a coarser grid the wrapped phase aliases more (measured on the 1 mm
    # GRE head from the wrapped phase: NRMSE 70.6 % from zero, 75.4 % with two levels)
    if (levels > 0 and cfg["laplacian"] == "plain"
            and min(np.ptp(np.argwhere(m_in), axis=0)) >= 2 * _MIN_COARSE_EXTENT):
        _chi0, coarse_record = _coarse_start(
            ph, m_in, vs, te=te, strength=strength, b=b, preset=preset, cfg=cfg, n_iter=n_iter, n_erode=n_erode,
            tol=tol, check_every=check_every, echo_combination=echo_combination, device=device, levels=levels)
    if device is not None:
        from . import _torch

        _torch.check_device(device)

    cross = ndimage.generate_binary_structure(3, 1)
    m = ndimage.binary_erosion(m_in, cross, iterations=n_erode) if n_erode else m_in.copy()
    m0 = ndimage.binary_erosion(m, cross)
    if not m0.any():
        raise ValueError(f"the mask vanishes after {n_erode + 1} erosions: use fewer erosions")
    # working box: the eroded mask's bounding box plus a margin, odd sizes
    idx = np.argwhere(m)
    lo = idx.min(axis=0)
    hi = idx.max(axis=0) + 1
    lo_in = np.maximum(lo - _BOX_MARGIN, 0)
    hi_in = np.minimum(hi + _BOX_MARGIN, m.shape)
    box = tuple(slice(a, z) for a, z in zip(lo_in, hi_in))
    inner = tuple(int(z - a) for a, z in zip(lo_in, hi_in))
    # the box in the working arrays: one voxel of padding plus what the image edge cut off
    off = tuple(int(_BOX_MARGIN - (lo[a] - lo_in[a])) + 1 for a in range(3))
    work = tuple(_odd(inner[a] + 2 * (_BOX_MARGIN + 1)) for a in range(3))
    wsl = tuple(slice(off[a], off[a] + inner[a]) for a in range(3))

    scale_c = float(np.prod(vs)) ** (-1.0 / 3.0) if cfg["dedimensionalise"] else 1.0
    h = vs * scale_c
    a1, a0 = alpha1 * scale_c, alpha0 * scale_c ** 2
    lap_method = cfg["laplacian"]
    mw = np.zeros(work, dtype=np.float32)
    mw[wsl] = m[box]
    m0w = np.zeros(work, dtype=np.float32)
    m0w[wsl] = m0[box]

    def laplacians():
        """Per-echo phase Laplacians on the working grid (rad/mm^2 of the scaled grid)."""
        for e in range(ph.shape[3]):
            lp = np.zeros(work, dtype=np.float32)
            lp[wsl] = laplacian_of_phase(ph[box + (e,)], vs, method=lap_method) / scale_c ** 2
            yield lp

    # problems in phase units at a reference echo time: (Laplacian, rad per ppm, weight)
    if echo_combination != "per_echo" or ph.shape[3] == 1:
        # least-squares fit in TE of the echoes' Laplacians (with an intercept that takes the
        # Laplacian of the receiver phase offset, or through the origin), expressed as the phase
        # Laplacian at the mean echo time (the weights alpha are meant for phase at one TE)
        te_ref = float(np.mean(te))
        if ph.shape[3] == 1:
            coef = np.ones(1)
        elif echo_combination == "laplacian":
            coef = (te - te.mean()) / np.sum((te - te.mean()) ** 2) * te_ref
        else:
            coef = te / np.sum(te ** 2) * te_ref
        total = np.zeros(work, dtype=np.float32)
        for e, lp in enumerate(laplacians()):
            total += lp * np.float32(coef[e])
        problems = [(total, float(ppm_to_rad(1.0, echo_time=te_ref, field_strength=strength)), 1.0)]
    else:
        problems = [(lp, float(ppm_to_rad(1.0, echo_time=float(te[e]), field_strength=strength)), float(te[e]) ** 2)
                    for e, lp in enumerate(laplacians())]

    axial, mixed = dipole_stencil(h, b)
    norm = operator_norm(h, b)
    sigma, tau = step_sizes(h, axial, mixed, norm, preconditioned=cfg["preconditioned"])
    inv_h = 1.0 / h
    chi_sum = np.zeros(work, dtype=np.float64)
    weights = []
    runs = []
    for lapphi, rad_per_ppm, weight in problems:
        if cfg["correct_laplacian"]:
            lapphi[m0w > 0] -= np.float32(lapphi[m0w > 0].mean(dtype=np.float64))
        lapphi *= m0w
        solve = _solve if device is None else partial(_torch.solve, device=device)
        chi0 = None
        if _chi0 is not None:  # start value in ppm on the input grid -> rad on the working grid
            chi0 = np.zeros(work, dtype=np.float32)
            chi0[wsl] = _chi0[box] * rad_per_ppm
        chi, info = solve(lapphi, mw, m0w, inv_h, axial, mixed, sigma, tau, a1, a0, n_iter, tol, check_every,
                          progress, chi0)
        chi_sum += weight * chi / rad_per_ppm
        weights.append(weight)
        runs.append(info)
    chi_w = chi_sum / sum(weights)
    out = np.zeros(m.shape, dtype=np.float32)
    out[box] = chi_w[wsl]
    out[~m] = 0.0
    if return_info:
        return out, {"preset": preset, "alpha": (alpha1, alpha0), "iterations": [r["iterations"] for r in runs],
                     "max_iterations": n_iter, "converged": [r["converged"] for r in runs],
                     "relative_change": [r["relative_change"] for r in runs], "erosions": n_erode, "laplacian": lap_method,
                     "correct_laplacian": bool(cfg["correct_laplacian"]),
                     "dedimensionalise": bool(cfg["dedimensionalise"]), "operator_norm": norm,
                     "preconditioned": bool(cfg["preconditioned"]), "sigma": sigma.tolist(), "tau": tau.tolist(), "echo_combination": echo_combination, "mask": m, "tol": tol,
                     "device": "numba" if device is None else str(device), "coarse_levels": levels,
                     "coarse": coarse_record}
    return out


def _coarse_start(ph, m_in, vs, *, te, strength, b, preset, cfg, n_iter, n_erode, tol, check_every,
                  echo_combination, device, levels):
    """chi (ppm, input grid) of the same problem solved on a grid of twice the voxel size and
    interpolated back (trilinear, voxel-area aligned), and a record of that solve.

    The coarse phase is the 2 x 2 x 2 block mean of the (unwrapped) phase, the coarse mask the
    blocks at least half inside the mask, eroded ``ceil(erosions / 2)`` times."""
    shape = m_in.shape
    even = tuple(n + n % 2 for n in shape)

    def blocks(x):
        out = np.zeros(even + x.shape[3:], dtype=x.dtype)
        out[: shape[0], : shape[1], : shape[2]] = x
        new = (even[0] // 2, 2, even[1] // 2, 2, even[2] // 2, 2) + x.shape[3:]
        return out.reshape(new).mean(axis=(1, 3, 5))

    ph_c = blocks(ph.astype(np.float64))  # unwrapped phase (the caller's condition)
    m_c = blocks(m_in.astype(np.float64)) >= 0.5
    chi_c, info = tgv_qsm(ph_c.astype(np.float32), m_c, 2.0 * vs, echo_time=te, field_strength=strength,
                          b0_direction=b, preset=preset, alpha=cfg["alpha"], iterations=n_iter,
                          erosions=-(-n_erode // 2), laplacian=cfg["laplacian"],
                          correct_laplacian=cfg["correct_laplacian"], dedimensionalise=cfg["dedimensionalise"],
                          preconditioned=cfg["preconditioned"], coarse_levels=levels - 1, tol=tol,
                          check_every=check_every, echo_combination=echo_combination, device=device,
                          return_info=True)
    fine = ndimage.zoom(chi_c, 2, order=1, grid_mode=True, mode="grid-constant", cval=0.0)
    record = {"voxel_size": (2.0 * vs).tolist(), "iterations": info["iterations"], "coarse": info["coarse"]}
    return fine[: shape[0], : shape[1], : shape[2]], record


def row_spans(active):
    """``(n0, n1, 2)`` int64: per row ``(i, j)`` the half-open range of ``k`` from the first to
    the last voxel set in ``active`` (an empty range where the row has none), within the
    interior ``1 <= k < n2 - 1`` of a padded working grid."""
    a = np.asarray(active, dtype=bool)
    n2 = a.shape[2]
    anyk = a.any(axis=2)
    first = np.argmax(a, axis=2)
    last = n2 - 1 - np.argmax(a[:, :, ::-1], axis=2)
    span = np.zeros(a.shape[:2] + (2,), dtype=np.int64)
    span[..., 0] = np.where(anyk, np.maximum(first, 1), 1)
    span[..., 1] = np.where(anyk, np.minimum(last + 1, n2 - 1), 1)
    return span


def _solve(lapphi, m, m0, inv_h, axial, mixed, sigma, tau, alpha1, alpha0, n_iter, tol, check_every, progress,
           chi0=None, state=None):
    """The primal-dual iterations on the working grid (from ``chi0``, rad, when given; else 0);
    returns chi (rad) and a record. A dict ``state`` receives the final ``psi`` and ``w`` (for
    evaluating the objective, benchmarks/tgv_objective.py)."""
    shape = lapphi.shape
    f32 = np.float32
    chi, chib, psi, psib = (np.zeros(shape, f32) for _ in range(4))
    if chi0 is not None:
        chi[...] = chi0
        chib[...] = chi0
    w, wb, p = (np.zeros((3,) + shape, f32) for _ in range(3))
    q = np.zeros((6,) + shape, f32)
    eta = np.zeros(shape, f32)
    ref = np.zeros(shape, f32)
    # float32 scalars keep the fused loops' arithmetic in float32 (see chimap.tgv._kernels)
    inv_h = np.asarray(inv_h, dtype=np.float64)
    args = tuple(np.asarray(a, dtype=f32) for a in (inv_h, inv_h ** 2, axial, mixed))
    sigma, tau = np.asarray(sigma, dtype=f32), np.asarray(tau, dtype=f32)
    alpha1, alpha0 = f32(alpha1), f32(alpha0)
    dual_span = row_spans(m > 0)
    primal_span = row_spans(ndimage.binary_dilation(m > 0, np.ones((3, 3, 3), bool)))
    monitor = Monitor(n_iter, tol, check_every, progress)
    it = 0
    for it in range(1, n_iter + 1):
        K.dual_step(chib, psib, wb, eta, p, q, lapphi, m, m0, args[0], args[1], args[2], args[3], sigma,
                    alpha1, alpha0, dual_span)
        K.primal_step(eta, p, q, chi, psi, w, chib, psib, wb, m, m0, args[0], args[1], args[2], args[3], tau,
                      primal_span)
        if monitor.due(it) and monitor.stop(it, float(K.relative_change(chi, ref, m))):
            break
    if state is not None:
        state.update(psi=psi.astype(np.float64), w=w.astype(np.float64))
    return chi.astype(np.float64), monitor.record(it)


class Monitor:
    """Convergence bookkeeping of a primal-dual loop (numba or torch): the relative change of
    chi every ``check_every`` iterations, progress reports and the ``tol`` stop."""

    def __init__(self, n_iter, tol, check_every, progress):
        self.n_iter, self.tol, self.check_every, self.progress = n_iter, tol, check_every, progress
        self.changes = []
        self.converged = False

    def due(self, it):
        """Whether iteration ``it`` is a check."""
        return it % self.check_every == 0 or it == self.n_iter

    def stop(self, it, change):
        """Record the relative change at a check; True when the loop should stop."""
        self.changes.append((it, change))
        if self.progress is not None:
            self.progress(it, self.n_iter, change)
        self.converged = self.tol is not None and it > self.check_every and change < self.tol
        return self.converged

    def record(self, it):
        return {"iterations": it, "converged": self.converged, "relative_change": self.changes}
