"""Single-step TGV-QSM (chimap.tgv): adjoint identities of the discrete operators, one fused
numba iteration against the numpy reference, the phase Laplacian, harmonic background and wrap
invariance, a sphere, axis permutation and bad inputs."""

import numpy as np
import pytest

from chimap.forward import dipole_field
from chimap.kernels import sphere_mask
from chimap.sim.analytic import sphere
from chimap.tgv import _kernels as K
from chimap.tgv import iterations_heuristic, laplacian_of_phase, tgv_qsm
from chimap.tgv import operators as O
from chimap.tgv.solver import row_spans, step_sizes
from chimap.units import ppm_to_rad

VS = np.array([0.9, 1.1, 1.4])
B0 = np.array([0.2, -0.3, 0.93]) / np.linalg.norm([0.2, -0.3, 0.93])
FROBENIUS = np.array([1, 1, 1, 2, 2, 2.0]).reshape(6, 1, 1, 1)


def _random_state(shape, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape)
    m[2:-2, 2:-2, 2:-2] = rng.random(tuple(n - 4 for n in shape)) > 0.2
    m0 = m * (rng.random(shape) > 0.3)
    return rng, m, m0


def test_operators_are_adjoint():
    rng, m, m0 = _random_state((7, 8, 9))
    shape = m.shape
    chi, psi, w = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal((3,) + shape)
    eta, p, q = rng.standard_normal(shape), rng.standard_normal((3,) + shape), rng.standard_normal((6,) + shape)
    ke, kp, kq = O.apply_k(chi, psi, w, VS, B0, m, m0)
    tc, tp, tw = O.apply_kt(eta, p, q, VS, B0, m, m0)
    lhs = np.sum(ke * eta) + np.sum(kp * p) + np.sum(FROBENIUS * kq * q)
    rhs = np.sum(tc * chi) + np.sum(tp * psi) + np.sum(tw * w)
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # grad / div and sym_grad / div2 on their own
    assert np.sum(O.grad(chi, VS) * p) == pytest.approx(-np.sum(chi * O.div(p, VS)), rel=1e-12)
    assert np.sum(FROBENIUS * O.sym_grad(w, VS) * q) == pytest.approx(-np.sum(w * O.div2(q, VS)), rel=1e-12)


def test_dipole_laplacian_is_laplacian_of_the_dipole_field():
    """(1/3) L chi - (b.grad)^2 chi equals L (D * chi) for a smooth source (no discretisation
    mismatch at low frequencies), for oblique B0 and anisotropic voxels."""
    shape = (48, 44, 40)
    vs = np.array([1.0, 1.2, 1.5])
    c = (np.array(shape) - 1) / 2
    grid = np.stack(np.meshgrid(*[(np.arange(n) - c[a]) * vs[a] for a, n in enumerate(shape)], indexing="ij"))
    chi = np.exp(-np.sum(grid ** 2, axis=0) / (2 * 4.0 ** 2))
    field = dipole_field(chi, None, vs, b0_direction=B0)
    inner = sphere_mask(shape, vs, radius=12.0)
    lap_field = O.laplacian(field, vs)
    box = O.dipole_laplacian(chi, vs, B0)
    err = np.linalg.norm((box - lap_field)[inner]) / np.linalg.norm(lap_field[inner])
    assert err < 0.03  # measured 0.011 (second-order stencils on a 4 mm Gaussian)
    # axial B0: the original 7-point stencil (1/3, 1/3, -2/3) / h^2
    axial, mixed = O.dipole_stencil((1.0, 1.0, 1.0), (0, 0, 1))
    np.testing.assert_allclose(axial, [1 / 3, 1 / 3, -2 / 3])
    np.testing.assert_allclose(mixed, 0.0, atol=1e-15)


def test_operator_norm_and_step_sizes():
    # 1 mm, axial: the measured norm is below the original bound sqrt(2 g^2 + 1) = 17
    norm = O.operator_norm((1.0, 1.0, 1.0), (0, 0, 1))
    assert 11.0 < norm < 13.0  # measured 11.93
    axial, mixed = O.dipole_stencil(VS, B0)
    sigma, tau = step_sizes(VS, axial, mixed, O.operator_norm(VS, B0))
    assert sigma.shape == (3,) and tau.shape == (5,) and np.all(sigma > 0) and np.all(tau > 0)
    uniform_sigma, uniform_tau = step_sizes(VS, axial, mixed, 10.0, preconditioned=False)
    assert np.allclose(uniform_sigma, 1 / 10.5) and np.allclose(uniform_tau, 1 / 10.5)


def test_fused_iteration_matches_the_reference():
    """One dual and one primal step of the numba kernels equal the Chambolle-Pock step written
    with the numpy operators (projections, prox of psi, extrapolation), oblique anisotropic."""
    rng, m, m0 = _random_state((9, 10, 11), seed=1)
    shape = m.shape
    chi, psi, w = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal((3,) + shape)
    chib, psib, wb = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal((3,) + shape)
    eta = rng.standard_normal(shape) * m0
    p = rng.standard_normal((3,) + shape)
    q = rng.standard_normal((6,) + shape) * m0
    lapphi = rng.standard_normal(shape) * m0
    sigma = np.array([0.04, 0.2, 0.3])
    tau = np.array([0.05, 0.06, 0.1, 0.12, 0.14])
    a1, a0 = 0.3, 0.2
    # reference
    ke, kp, kq = O.apply_k(chib, psib, wb, VS, B0, m, m0)
    eta_r = eta + sigma[0] * (ke - m0 * lapphi)
    p_r = p + sigma[1] * kp
    p_r *= np.minimum(1, a1 / np.maximum(np.sqrt((p_r ** 2).sum(0)), 1e-30))
    q_r = q + sigma[2] * kq
    q_r *= np.minimum(1, a0 / np.maximum(np.sqrt((FROBENIUS * q_r ** 2).sum(0)), 1e-30))
    tc, tp, tw = O.apply_kt(eta_r, p_r, q_r, VS, B0, m, m0)
    psi_r = (psi - tau[1] * tp) / (1 + tau[1] * m)
    chi_r = chi - tau[0] * tc
    w_r = w - tau[2:].reshape(3, 1, 1, 1) * tw

    def pad(a):
        out = np.zeros(a.shape[:-3] + tuple(n + 2 for n in shape), np.float32)
        out[..., 1:-1, 1:-1, 1:-1] = a
        return out

    E, P, Q, C, S, W, CB, SB, WB, L, M, M0 = (pad(a) for a in (eta, p, q, chi, psi, w, chib, psib, wb, lapphi, m, m0))
    axial, mixed = O.dipole_stencil(VS, B0)
    inv_h = 1.0 / VS
    full = np.zeros(M.shape[:2] + (2,), dtype=np.int64)
    full[..., 0], full[..., 1] = 1, M.shape[2] - 1  # every interior voxel
    # float32 scalars, as the solver passes them (float32 arithmetic throughout)
    f32 = np.float32
    args = tuple(np.asarray(a, f32) for a in (inv_h, inv_h ** 2, axial, mixed))
    K.dual_step(CB, SB, WB, E, P, Q, L, M, M0, *args, sigma.astype(f32), f32(a1), f32(a0), full)
    K.primal_step(E, P, Q, C, S, W, CB, SB, WB, M, M0, *args, tau.astype(f32), full)
    s = (slice(1, -1),) * 3
    v = (slice(None),) + s
    for got, ref in ((E[s], eta_r), (P[v], p_r), (Q[v], q_r), (S[s], psi_r), (C[s], chi_r), (W[v], w_r),
                     (CB[s], 2 * chi_r - chi), (SB[s], 2 * psi_r - psi), (WB[v], 2 * w_r - w)):
        np.testing.assert_allclose(got, ref, atol=2e-6 * np.abs(ref).max())


def test_laplacian_of_wrapped_phase_ignores_wraps():
    shape = (30, 32, 28)
    vs = np.array([1.0, 1.0, 2.0])
    c = (np.array(shape) - 1) / 2
    grid = np.stack(np.meshgrid(*[(np.arange(n) - c[a]) * vs[a] for a, n in enumerate(shape)], indexing="ij"))
    phase = 0.004 * np.sum(grid ** 2, axis=0) + 0.15 * grid[0]  # a range of 9 rad: wraps
    assert np.ptp(phase) > 2 * np.pi
    wrapped = np.angle(np.exp(1j * phase))
    truth = laplacian_of_phase(phase, vs, method="plain")
    inner = (slice(1, -1),) * 3
    for method in ("sin", "wrap"):
        got = laplacian_of_phase(wrapped, vs, method=method)
        # neighbour differences stay below pi: "wrap" is exact; "sin" sums sin(d), which
        # underestimates where the phase is steep (cos of the gradient step: 0.9 at the edge)
        tol = 1e-9 if method == "wrap" else 0.12 * np.abs(truth[inner]).max()
        np.testing.assert_allclose(got[inner], truth[inner], atol=tol)
    np.testing.assert_allclose(truth[inner], 0.008 * 3, rtol=1e-9)  # L (0.004 |x|^2) = 0.024
    with pytest.raises(ValueError, match="laplacian"):
        laplacian_of_phase(wrapped, vs, method="fourier")


@pytest.fixture(scope="module")
def sphere_case():
    """A 0.1 ppm sphere and a strong source outside the mask (harmonic background): wrapped
    single-echo phase at 3 T, TE 20 ms."""
    vs = np.array([1.0, 1.0, 1.0])
    shape = (48, 48, 48)
    ph = sphere(shape, vs, radius=6.0, chi=0.1, supersample=3)
    c = (np.array(shape) - 1) / 2
    outside = np.zeros(shape)
    outside[sphere_mask(shape, vs, radius=5.0, center=c + np.array([0, 0, 22]))] = 3.0
    background = dipole_field(outside, None, vs)
    mask = sphere_mask(shape, vs, radius=16.0)
    total = ph.field + background
    phase = ppm_to_rad(total, echo_time=0.02, field_strength=3.0)
    return vs, mask, ph, phase, background


def _contrast(chi, vs, mask_eroded):
    inner = sphere_mask(chi.shape, vs, radius=3.5)
    ring = mask_eroded & ~sphere_mask(chi.shape, vs, radius=9.0)
    return float(chi[inner].mean() - chi[ring].mean())


def test_sphere_with_background_and_wraps(sphere_case):
    vs, mask, ph, phase, background = sphere_case
    assert np.ptp(phase[mask]) > 2 * np.pi  # the phase wraps inside the mask
    wrapped = np.angle(np.exp(1j * phase))
    kw = dict(echo_time=0.02, field_strength=3.0, iterations=3000, alpha=(0.03, 0.02), return_info=True)
    chi, info = tgv_qsm(wrapped, mask, vs, **kw)
    # The primal-dual iteration fills in the magic cone of a uniform sphere slowly: measured
    # contrast 0.062 / 0.079 after 1500 / 3000 iterations (0.107 after 8000 without
    # preconditioning); the default weights (0.003, 0.002) approach a minimum-norm-like
    # solution on this sharp-edged phantom (0.05 after 3000)
    assert 0.07 < _contrast(chi, vs, info["mask"]) < 0.11
    assert chi.dtype == np.float32 and np.all(chi[~info["mask"]] == 0)
    # the harmonic background and the wraps do not enter: the same result from the local field
    local, _ = tgv_qsm(ppm_to_rad(ph.field, echo_time=0.02, field_strength=3.0), mask, vs,
                       **{**kw, "laplacian": "plain"})
    m = info["mask"]
    assert np.linalg.norm((chi - local)[m]) < 0.05 * np.linalg.norm(local[m])


def test_joint_axis_permutation(sphere_case):
    vs, mask, ph, phase, _ = sphere_case
    vs = np.array([1.0, 1.1, 1.3])
    b0 = np.array([0.1, 0.25, 0.96])
    perm = (2, 0, 1)
    phase = np.angle(np.exp(1j * phase))
    kw = dict(echo_time=0.02, field_strength=3.0, iterations=200)
    ref = tgv_qsm(phase, mask, vs, b0_direction=b0, **kw)
    out = tgv_qsm(np.transpose(phase, perm), np.transpose(mask, perm), vs[list(perm)],
                  b0_direction=b0[list(perm)], **kw)
    np.testing.assert_allclose(out, np.transpose(ref, perm), atol=1e-4 * np.abs(ref).max())


def test_multi_echo_combinations_and_tolerance(sphere_case):
    vs, mask, ph, _, background = sphere_case
    te = np.array([0.01, 0.02, 0.03])
    # a receiver phase offset (linear, so its Laplacian vanishes) and wrapped echoes; the
    # "wrap" Laplacian is exact while neighbour differences stay below pi
    offset = np.linspace(-2, 2, mask.shape[0])[:, None, None] * np.ones(mask.shape)
    phase = np.stack([np.angle(np.exp(1j * (offset + ppm_to_rad(ph.field + background, echo_time=t,
                                                                 field_strength=3.0)))) for t in te], axis=-1)
    kw = dict(field_strength=3.0, iterations=300, laplacian="wrap")
    single = tgv_qsm(phase[..., 1], mask, vs, echo_time=0.02, **kw)
    for mode in ("laplacian", "laplacian_origin", "per_echo"):
        chi, info = tgv_qsm(phase, mask, vs, echo_time=te, echo_combination=mode, return_info=True, **kw)
        m = info["mask"]
        # noiseless echoes agree: every combination solves for the same chi
        assert np.linalg.norm((chi - single)[m]) < 0.1 * np.linalg.norm(single[m]), mode
    _, info = tgv_qsm(phase, mask, vs, echo_time=te, field_strength=3.0, iterations=2000, tol=0.05,
                      check_every=25, return_info=True)
    assert info["converged"] == [True] and info["iterations"][0] < 2000
    assert info["relative_change"][0][-1][1] < 0.05


def test_iterations_heuristic_matches_tgv_jl():
    assert iterations_heuristic((1.0, 1.0, 1.0)) == 1655
    assert iterations_heuristic((0.7, 0.7, 0.7)) == 2595


def test_bad_inputs(sphere_case):
    vs, mask, _, phase, _ = sphere_case
    wrapped = np.angle(np.exp(1j * phase))
    kw = dict(echo_time=0.02, field_strength=3.0, iterations=5)
    with pytest.raises(ValueError, match="shape"):
        tgv_qsm(wrapped, mask[:-1], vs, **kw)
    with pytest.raises(ValueError, match="empty"):
        tgv_qsm(wrapped, np.zeros_like(mask), vs, **kw)
    with pytest.raises(ValueError, match="radians"):
        tgv_qsm(wrapped * 100, mask, vs, **kw)
    with pytest.raises(ValueError, match="NaN"):
        bad = wrapped.copy()
        bad[24, 24, 24] = np.nan
        tgv_qsm(bad, mask, vs, **kw)
    with pytest.raises(ValueError, match="milliseconds|ms"):
        tgv_qsm(wrapped, mask, vs, echo_time=20.0, field_strength=3.0)
    with pytest.raises(ValueError, match="echo time"):
        tgv_qsm(np.stack([wrapped, wrapped], -1), mask, vs, echo_time=0.02, field_strength=3.0)
    with pytest.raises(ValueError, match="erosions"):
        tgv_qsm(wrapped, mask, vs, erosions=40, **kw)
    with pytest.raises(ValueError, match="preset"):
        tgv_qsm(wrapped, mask, vs, preset="cuda", **kw)
    with pytest.raises(ValueError, match="alpha"):
        tgv_qsm(wrapped, mask, vs, alpha=(0.003, -1.0), **kw)


def test_row_spans_cover_the_active_voxels():
    rng = np.random.default_rng(3)
    active = np.zeros((6, 7, 12), bool)
    active[1:5, 1:6, 2:10] = rng.random((4, 5, 8)) > 0.6
    span = row_spans(active)
    for i in range(6):
        for j in range(7):
            ks = np.flatnonzero(active[i, j])
            if ks.size:
                assert span[i, j, 0] <= ks.min() and ks.max() < span[i, j, 1]
            else:
                assert span[i, j, 0] >= span[i, j, 1]
    assert np.all(span[..., 0] >= 1) and np.all(span[..., 1] <= 11)


def test_skipping_inactive_voxels_changes_nothing(sphere_case):
    """The span-restricted loops give what full loops give (a mask far smaller than its box)."""
    vs, mask, _, phase, _ = sphere_case
    wrapped = np.angle(np.exp(1j * phase))
    import chimap.tgv.solver as S

    small = mask & sphere_mask(mask.shape, vs, radius=10.0, center=(20, 26, 23))
    kw = dict(echo_time=0.02, field_strength=3.0, iterations=60, erosions=1)
    fast = tgv_qsm(wrapped, small, vs, **kw)
    original = S.row_spans
    try:
        S.row_spans = lambda a: original(np.ones_like(a))
        full = tgv_qsm(wrapped, small, vs, **kw)
    finally:
        S.row_spans = original
    np.testing.assert_allclose(fast, full, atol=1e-6 * np.abs(full).max())


def test_torch_iteration_matches_numba(sphere_case):
    """device="cpu" runs the torch implementation (the GPU path): equal to the numba loops to
    float32 rounding, with oblique B0, anisotropic voxels and a tolerance stop."""
    pytest.importorskip("torch")
    vs, mask, _, phase, _ = sphere_case
    vs = np.array([1.0, 1.2, 0.9])
    wrapped = np.angle(np.exp(1j * phase))
    kw = dict(echo_time=0.02, field_strength=3.0, b0_direction=(0.2, -0.3, 0.93), iterations=400, erosions=2,
              tol=1e-3, check_every=50, return_info=True)
    ref, info = tgv_qsm(wrapped, mask, vs, **kw)
    out, info_t = tgv_qsm(wrapped, mask, vs, device="cpu", **kw)
    assert info_t["device"] == "cpu" and info["device"] == "numba"
    assert info_t["iterations"] == info["iterations"]
    assert np.linalg.norm(out - ref) <= 1e-4 * np.linalg.norm(ref)


def test_device_is_checked(sphere_case):
    vs, mask, _, phase, _ = sphere_case
    wrapped = np.angle(np.exp(1j * phase))
    kw = dict(echo_time=0.02, field_strength=3.0, iterations=5)
    try:
        import torch
    except ImportError:
        with pytest.raises(ValueError, match="needs torch"):
            tgv_qsm(wrapped, mask, vs, device="cuda", **kw)
        return
    with pytest.raises(ValueError, match="torch device"):
        tgv_qsm(wrapped, mask, vs, device="gpu please", **kw)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            tgv_qsm(wrapped, mask, vs, device="cuda", **kw)


@pytest.mark.parametrize("preset,expected", [
    ("julia", dict(alpha=(0.003, 0.002), erosions=3, laplacian="sin", correct_laplacian=True, dedimensionalise=True)),
    ("original", dict(alpha=(0.0005, 0.0015), erosions=5, laplacian="wrap", correct_laplacian=False,
                      dedimensionalise=False)),
    ("qsmxt", dict(alpha=(0.001, 0.003), erosions=5, laplacian="wrap", correct_laplacian=False,
                   dedimensionalise=True)),
])
def test_presets_set_the_documented_parameters(sphere_case, preset, expected):
    vs, mask, _, phase, _ = sphere_case
    wrapped = np.angle(np.exp(1j * phase))
    _, info = tgv_qsm(wrapped, mask, vs, echo_time=0.02, field_strength=3.0, preset=preset, iterations=2,
                      return_info=True)
    assert {k: info[k] for k in expected} == expected


def test_coarse_start_speeds_up_convergence():
    """coarse_levels=1 starts from the same problem solved at twice the voxel size: after
    300 iterations a 0.1 ppm sphere has more of its contrast than from zero (measured 0.061
    against 0.043); too small a mask
    for a coarse grid, or wrapped phase, falls back to the start from zero."""
    vs = np.ones(3)
    shape = (64, 64, 64)
    ph = sphere(shape, vs, radius=6.0, chi=0.1, supersample=3)
    mask = sphere_mask(shape, vs, radius=24.0)
    phase = ppm_to_rad(ph.field, echo_time=0.02, field_strength=3.0)  # unwrapped
    inner = sphere_mask(shape, vs, radius=3.5)
    contrast = {}
    for levels in (0, 1):
        chi, info = tgv_qsm(phase, mask, vs, echo_time=0.02, field_strength=3.0, iterations=300,
                            laplacian="plain", coarse_levels=levels, return_info=True)
        ring = info["mask"] & ~sphere_mask(shape, vs, radius=9.0)
        contrast[levels] = chi[inner].mean() - chi[ring].mean()
        assert info["coarse_levels"] == levels
    assert info["coarse"]["voxel_size"] == [2.0, 2.0, 2.0] and info["coarse"]["iterations"] == [300]
    assert contrast[1] > contrast[0] + 0.01
    small = sphere_mask(shape, vs, radius=12.0)
    _, info = tgv_qsm(phase, small, vs, echo_time=0.02, field_strength=3.0, iterations=5, laplacian="plain",
                      coarse_levels=2, return_info=True)
    assert info["coarse"] is None
    # wrapped phase is not coarsened (it would alias more on the coarse grid)
    _, info = tgv_qsm(np.angle(np.exp(1j * phase)), mask, vs, echo_time=0.02, field_strength=3.0, iterations=5,
                      coarse_levels=1, return_info=True)
    assert info["coarse"] is None
    with pytest.raises(ValueError, match="coarse_levels"):
        tgv_qsm(phase, mask, vs, echo_time=0.02, field_strength=3.0, iterations=5, coarse_levels=-1)


def test_solver_loop_reports_its_final_psi_and_w():
    """``_solve(..., state=dict)`` hands back the loop's final psi and w (benchmarks/tgv_objective.py
    evaluates the model's objective with them): three iterations from zero, against the kernels."""
    from scipy import ndimage

    from chimap.tgv.solver import _solve

    rng, m, m0 = _random_state((11, 12, 13), seed=4)
    f32 = np.float32
    m, m0 = m.astype(f32), m0.astype(f32)
    lapphi = (rng.standard_normal(m.shape) * m0).astype(f32)
    axial, mixed = O.dipole_stencil(VS, B0)
    sigma, tau = np.array([0.04, 0.2, 0.3]), np.array([0.05, 0.06, 0.1, 0.12, 0.14])
    state = {}
    chi, _ = _solve(lapphi, m, m0, 1.0 / VS, axial, mixed, sigma, tau, 0.3, 0.2, 3, None, 1, None, state=state)
    shape = m.shape
    c, cb, s, sb, e = (np.zeros(shape, f32) for _ in range(5))
    w, wb, p = (np.zeros((3,) + shape, f32) for _ in range(3))
    q = np.zeros((6,) + shape, f32)
    args = tuple(np.asarray(a, f32) for a in (1.0 / VS, 1.0 / VS ** 2, axial, mixed))
    dual_span = row_spans(m > 0)
    primal_span = row_spans(ndimage.binary_dilation(m > 0, np.ones((3, 3, 3), bool)))
    for _ in range(3):
        K.dual_step(cb, sb, wb, e, p, q, lapphi, m, m0, *args, sigma.astype(f32), f32(0.3), f32(0.2), dual_span)
        K.primal_step(e, p, q, c, s, w, cb, sb, wb, m, m0, *args, tau.astype(f32), primal_span)
    assert np.abs(s).max() > 0 and np.abs(w).max() > 0
    np.testing.assert_array_equal(chi, c)
    np.testing.assert_array_equal(state["psi"], s)
    np.testing.assert_array_equal(state["w"], w)
