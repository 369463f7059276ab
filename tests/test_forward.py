"""Forward model: dipole_field against closed forms, invariances, adjointness, input checks.

Two ways of comparing the discrete FFT field with a closed form are used:

* direct: the field of the supersampled (partial-volume) object on the grid, at voxel centres;
* fine-grid: simulated on a grid twice as fine, both fields averaged over 2x2x2 blocks
  (design.md section 6: simulate at a finer grid than you compare, no inverse crime).

With B0 oblique to two or more voxel axes, the discrete kernel ``1/3 - (k.b)^2/|k|^2`` is
discontinuous across the Nyquist faces of the periodic k-grid (D(k_N, k_J) != D(-k_N, k_J)),
so a sharp object rings at the Nyquist frequency: the direct error then is ~1.8-2.1 % of the
peak 2 voxels outside a sphere (decaying slowly, ~1 % at 4 voxels), a checkerboard that the
2x2x2 block average cancels exactly. That is a property of the Fourier method (cf. Cheng et al.
Phys Med Biol 2009;54:1169), not of the phantom; the oblique cases are therefore checked on the
fine grid, and the direct oblique error is bounded as a regression guard.
"""

import numpy as np
import pytest

from chimap.forward import dipole_field, padded_shape
from chimap.sim.analytic import cylinder, sphere


def _block_mean(x):
    s = x.shape
    return x.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5))


def _coords(shape, vs):
    c = (np.asarray(shape) - 1) / 2.0
    return np.meshgrid(*[(np.arange(n) - c[i]) * vs[i] for i, n in enumerate(shape)],
                       indexing="ij")


def _radius(shape, vs):
    return np.sqrt(sum(g * g for g in _coords(shape, vs)))


def _rho(shape, vs, axis):
    g = _coords(shape, vs)
    return np.sqrt(sum(g[i] ** 2 for i in range(3) if i != axis))


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------------------------
# sign convention


def test_paramagnetic_sphere_sign():
    shape, vs, a = (40, 40, 40), (1.0, 1.0, 1.0), 6.0
    p = sphere(shape, vs, radius=a, chi=0.5, supersample=4)
    f = dipole_field(p.chi, None, vs)
    c = 20  # grid centre is 19.5: voxel 20 is 0.5 mm off in each axis
    pole = f[c, c, c + 10]  # ~ on the B0 axis, r ~ 10.5 mm
    equator = f[c + 10, c, c]
    assert pole > 0 and equator < 0
    # closed form: +2/3 vs -1/3 of chi (a/r)^3: ratio ~ -2 (points are 1.5 deg off axis;
    # 10 % covers that and the discretisation error)
    assert pole / equator == pytest.approx(-2.0, rel=0.1)
    # diamagnetic: opposite sign, same magnitude (linearity)
    np.testing.assert_allclose(dipole_field(-p.chi, None, vs), -f, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# sphere vs closed form


def test_sphere_matches_closed_form_axis_aligned():
    # 48^3, radius 7 voxels, 4^3 sub-samples; compared >= 2 voxels outside the surface where
    # partial volume no longer matters. Measured max error 0.47 % of the peak (2/3 chi);
    # the brief's bound is 1 %.
    shape, vs, a = (48, 48, 48), (1.0, 1.0, 1.0), 7.0
    p = sphere(shape, vs, radius=a, supersample=4)
    f = dipole_field(p.chi, None, vs)
    peak = 2 / 3
    out = _radius(shape, vs) >= a + 2.0
    assert np.abs(f - p.field)[out].max() <= 0.01 * peak
    # inside: the Lorentz-corrected field is 0; 2 voxels in, measured 0.4 % of the peak
    inside = _radius(shape, vs) <= a - 2.0
    assert np.abs(f[inside]).max() <= 0.01 * peak


@pytest.mark.parametrize("shape, vs, a, b", [
    ((32, 32, 32), (1.0, 1.0, 1.0), 7.0, (0.3, -0.4, 1.0)),  # measured 0.15 %
    ((32, 32, 32), (1.0, 1.0, 1.0), 7.0, (0.0, 1.0, 1.0)),  # measured 0.21 %
    ((32, 28, 24), (0.8, 1.0, 1.5), 8.0, (0.3, -0.4, 1.0)),  # measured 0.52 %
    ((32, 28, 24), (0.8, 1.0, 1.5), 8.0, (0.0, 0.0, 1.0)),
])
def test_sphere_matches_closed_form_tilted_anisotropic(shape, vs, a, b):
    # Fine-grid comparison (see module docstring): simulate at half the voxel size, average
    # 2x2x2 blocks of both fields, compare >= 2 (largest) voxels outside. Bound 1 % of the peak.
    vs = np.asarray(vs)
    fine = sphere(tuple(2 * n for n in shape), vs / 2, radius=a, b0_direction=b, supersample=4)
    f = _block_mean(dipole_field(fine.chi, None, vs / 2, b0_direction=b))
    ref = _block_mean(fine.field)
    out = _radius(shape, vs) >= a + 2.0 * vs.max()
    assert np.abs(f - ref)[out].max() <= 0.01 * (2 / 3)


def test_sphere_direct_tilted_regression_bound():
    # Direct comparison with oblique B0: Nyquist ringing (module docstring). Measured 1.77 %
    # of the peak at >= 2 voxels; bound 2.5 % so that a real regression (e.g. a wrong kernel
    # angle, errors O(10 %)) fails.
    shape, vs, a, b = (48, 48, 48), (1.0, 1.0, 1.0), 7.0, (0.3, -0.4, 1.0)
    p = sphere(shape, vs, radius=a, b0_direction=b, supersample=4)
    f = dipole_field(p.chi, None, vs, b0_direction=b)
    out = _radius(shape, vs) >= a + 2.0
    err = np.abs(f - p.field)[out].max()
    assert err <= 0.025 * (2 / 3)
    # and the error is ringing: it drops by > 2x after 2x2x2 block averaging
    err_blocks = np.abs(_block_mean(f) - _block_mean(p.field))[_block_mean(out) == 1].max()
    assert err_blocks < 0.5 * err


# ---------------------------------------------------------------------------------------------
# infinite cylinder vs closed form


def _cylinder_errors(shape, vs, a, axis, b, fine):
    """Max |error| / peak inside (rho <= a - 2h) and outside (rho >= a + 2h)."""
    vs = np.asarray(vs, dtype=np.float64)
    u = np.eye(3)[axis]
    pad = [3.0, 3.0, 3.0]
    pad[axis] = 1.0  # periodic along the axis: infinite cylinder
    if fine:
        p = cylinder(tuple(2 * n for n in shape), vs / 2, radius=a, axis=u, b0_direction=b,
                     supersample=4)
        f = _block_mean(dipole_field(p.chi, None, vs / 2, b0_direction=b, pad_factor=pad))
        ref = _block_mean(p.field)
    else:
        p = cylinder(shape, vs, radius=a, axis=u, b0_direction=b, supersample=4)
        f = dipole_field(p.chi, None, vs, b0_direction=b, pad_factor=pad)
        ref = p.field
    cos_a = _unit(b)[axis]
    peak = max(0.5 * (1 - cos_a**2), abs(3 * cos_a**2 - 1) / 6)  # chi = 1
    rho = _rho(shape, vs, axis)
    h = max(vs[i] for i in range(3) if i != axis)
    err = np.abs(f - ref) / peak
    return err[rho <= a - 2 * h].max(), err[rho >= a + 2 * h].max()


@pytest.mark.parametrize("shape, vs, axis, b", [
    ((64, 64, 4), (1.0, 1.0, 1.0), 2, (1.0, 0.0, 1.0)),  # measured in 0.85 %, out 0.97 %
    ((64, 64, 4), (1.0, 1.0, 1.0), 2, (1.0, 0.0, 0.0)),  # measured in 0.85 %, out 0.97 %
    ((4, 64, 56), (2.0, 0.8, 1.0), 0, (0.5, 0.0, 1.0)),  # measured in 1.08 %, out 0.40 %
    ((4, 64, 56), (2.0, 0.8, 1.0), 0, (0.5, 1.0, 0.0)),  # measured in 1.32 %, out 0.64 %
])
def test_cylinder_matches_closed_form_direct(shape, vs, axis, b):
    # Cylinder of radius 8 mm along a voxel axis with pad_factor 1 along it, padded 3x across
    # (the D(0) = 0 offset is -mean field over the padded plane, ~0.1 % here). B0 in a plane
    # spanned by the axis and ONE perpendicular voxel axis, so no Nyquist ringing (the
    # spectrum lives on the k_axis = 0 plane, where D is even in each remaining axis).
    # Errors come from the sharp partial-volume edge; bound 2 % of the peak inside and outside.
    e_in, e_out = _cylinder_errors(shape, vs, 8.0, axis, b, fine=False)
    assert e_in <= 0.02 and e_out <= 0.02


@pytest.mark.parametrize("shape, vs, axis, b", [
    ((48, 48, 2), (1.0, 1.0, 1.0), 2, (1.0, 1.0, 1.0)),  # measured in 0.11 %, out 0.14 %
    ((2, 48, 40), (2.0, 0.8, 1.0), 0, (0.5, 1.0, 0.7)),  # measured in 0.48 %, out 0.56 %
])
def test_cylinder_matches_closed_form_oblique_fine_grid(shape, vs, axis, b):
    # B0 oblique to both perpendicular axes: fine-grid comparison (module docstring). Direct,
    # these cases ring at Nyquist (5-7 % inside). Bound 2 % of the peak, as above.
    e_in, e_out = _cylinder_errors(shape, vs, 8.0, axis, b, fine=True)
    assert e_in <= 0.02 and e_out <= 0.02


# ---------------------------------------------------------------------------------------------
# invariances


@pytest.mark.parametrize("perm", [(2, 0, 1), (1, 0, 2), (0, 2, 1)])
def test_joint_permutation_invariance(perm):
    rng = np.random.default_rng(11)
    shape, vs, b = (12, 16, 10), np.array([0.7, 1.0, 1.9]), np.array([0.2, -0.6, 0.8])
    chi = rng.normal(size=shape)
    f = dipole_field(chi, None, vs, b0_direction=b)
    p = list(perm)
    fp = dipole_field(np.transpose(chi, perm), None, vs[p], b0_direction=b[p])
    # same arithmetic in a permuted order; FFT round-off ~1e-15 of values ~1: 1e-12 absolute.
    np.testing.assert_allclose(fp, np.transpose(f, perm), atol=1e-12)


@pytest.mark.parametrize("ax", [0, 1, 2])
def test_axis_flip_invariance(ax):
    # Reversing a voxel axis and the sign of that B0 component reverses the field (even sizes
    # and oblique B0: this needs a Hermitian kernel on the Nyquist samples).
    rng = np.random.default_rng(12)
    chi = rng.normal(size=(12, 10, 8))
    vs, b = np.array([0.7, 1.0, 1.9]), np.array([0.2, -0.6, 0.8])
    f = dipole_field(chi, None, vs, b0_direction=b)
    bf = b.copy()
    bf[ax] *= -1
    ff = dipole_field(np.flip(chi, ax), None, vs, b0_direction=bf)
    np.testing.assert_allclose(ff, np.flip(f, ax), atol=1e-12)


def test_matches_complex_fft_reference():
    # Independent path: zero pad by hand, complex FFT with the full kernel, real part, crop.
    from chimap.kernels import dipole_kernel

    rng = np.random.default_rng(13)
    chi = rng.normal(size=(10, 9, 8))
    vs, b = (0.8, 1.0, 1.5), (0.3, 0.5, 0.8)
    ps = padded_shape(chi.shape, 2.0)
    big = np.zeros(ps)
    big[:10, :9, :8] = chi
    ref = np.fft.ifftn(dipole_kernel(ps, vs, b0_direction=b) * np.fft.fftn(big))
    assert np.abs(ref.imag).max() < 1e-12  # Hermitian kernel: real result
    np.testing.assert_allclose(dipole_field(chi, None, vs, b0_direction=b),
                               ref.real[:10, :9, :8], atol=1e-12)


def test_rotating_b0_rotates_field():
    # Rotating B0 by 90 deg (K -> I) about axis J, with a sphere centred on the grid that is
    # invariant under that rotation, rotates the field: f_I = rot90(f_K) in the (I, K) plane.
    shape, vs = (32, 20, 32), (1.0, 1.3, 1.0)
    p = sphere(shape, vs, radius=6.0, supersample=3)
    f_k = dipole_field(p.chi, None, vs, b0_direction=(0, 0, 1))
    f_i = dipole_field(p.chi, None, vs, b0_direction=(1, 0, 0))
    # rotation about J by +90 deg maps voxel (i, j, k) -> (k, j, n-1-i): np.rot90 on axes (2, 0)
    np.testing.assert_allclose(f_i, np.rot90(f_k, 1, axes=(2, 0)), atol=1e-12)
    np.testing.assert_allclose(f_i, np.rot90(f_k, 1, axes=(0, 2)), atol=1e-12)  # mirror too
    assert np.abs(f_i - f_k).max() > 0.1  # the fields do differ: the test can fail


def test_translation_invariance_periodic():
    # with pad_factor 1 the operator is a circular convolution: shifting chi shifts the field
    rng = np.random.default_rng(2)
    chi = rng.normal(size=(10, 12, 8))
    vs, b = (1.0, 0.9, 1.4), (0.1, 0.3, 1.0)
    f = dipole_field(chi, None, vs, b0_direction=b, pad_factor=1)
    g = dipole_field(np.roll(chi, (3, -2, 5), axis=(0, 1, 2)), None, vs, b0_direction=b,
                     pad_factor=1)
    np.testing.assert_allclose(g, np.roll(f, (3, -2, 5), axis=(0, 1, 2)), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# linear-operator properties


@pytest.mark.parametrize("shape", [(12, 10, 8), (11, 9, 7), (16, 5, 6)])
@pytest.mark.parametrize("pad", [1.0, 2.0])
def test_self_adjoint(shape, pad):
    # D is real and even (D(k) = D(-k)), so IFFT D FFT is self-adjoint; with zero padding the
    # operator is crop o (IFFT D FFT) o pad, still self-adjoint. Oblique B0 and even sizes
    # exercise the non-Hermitian Nyquist samples of the half-spectrum kernel.
    rng = np.random.default_rng(4)
    vs, b = (0.8, 1.0, 1.6), (0.3, -0.5, 0.8)
    x, y = rng.normal(size=shape), rng.normal(size=shape)
    dx = dipole_field(x, None, vs, b0_direction=b, pad_factor=pad)
    dy = dipole_field(y, None, vs, b0_direction=b, pad_factor=pad)
    lhs, rhs = np.vdot(dx, y), np.vdot(x, dy)
    # float64 round-off relative to sum |terms| (~1e-15 sqrt(N)); 1e-12 relative.
    assert abs(lhs - rhs) <= 1e-12 * np.abs(dx * y).sum()


def test_uniform_chi_no_field_when_periodic():
    # D(0) = 0: a uniform susceptibility filling the periodic grid gives no field
    f = dipole_field(np.full((8, 8, 8), 3.0), None, 1.0, b0_direction=(1, 1, 0), pad_factor=1)
    np.testing.assert_allclose(f, 0.0, atol=1e-13)


def test_mask_zeroes_sources_and_input_untouched():
    rng = np.random.default_rng(6)
    chi = rng.normal(size=(10, 9, 8))
    mask = rng.random(size=chi.shape) > 0.4
    chi0 = chi.copy()
    f = dipole_field(chi, mask, (1, 1, 2))
    np.testing.assert_allclose(f, dipole_field(np.where(mask, chi, 0.0), None, (1, 1, 2)),
                               atol=1e-14)
    np.testing.assert_array_equal(chi, chi0)


def test_padding_shape():
    assert padded_shape((10, 12, 7), 1) == (10, 12, 7)
    ps = padded_shape((10, 12, 7), (2, 1, 3))
    assert ps[0] >= 20 and ps[1] == 12 and ps[2] >= 21
    with pytest.raises(ValueError, match="pad_factor"):
        padded_shape((10, 10, 10), 0.5)


# ---------------------------------------------------------------------------------------------
# dtypes and input checks


def test_float32_in_float32_out():
    p = sphere((24, 24, 24), 1.0, radius=5.0, supersample=2)
    f64 = dipole_field(p.chi, None, 1.0, b0_direction=(0.2, 0, 1))
    f32 = dipole_field(p.chi.astype(np.float32), None, 1.0, b0_direction=(0.2, 0, 1))
    assert f32.dtype == np.float32 and f32.shape == (24, 24, 24)
    # single-precision FFTs: ~1e-7 * log2(N) relative to the peak 2/3: 1e-5 absolute.
    np.testing.assert_allclose(f32, f64, atol=1e-5)


def test_integer_input_gives_float64():
    chi = np.zeros((8, 8, 8), dtype=np.int16)
    chi[3:5, 3:5, 3:5] = 1
    assert dipole_field(chi, None, 1.0).dtype == np.float64


def test_nan_rejected():
    chi = np.zeros((6, 6, 6))
    chi[2, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dipole_field(chi, None, 1.0)


def test_mask_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="mask shape"):
        dipole_field(np.zeros((6, 6, 6)), np.ones((6, 6, 5), bool), 1.0)


def test_bad_inputs_rejected():
    with pytest.raises(ValueError, match="3-D"):
        dipole_field(np.zeros((6, 6)), None, 1.0)
    with pytest.raises(ValueError, match="voxel"):
        dipole_field(np.zeros((6, 6, 6)), None, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="b0_direction"):
        dipole_field(np.zeros((6, 6, 6)), None, 1.0, b0_direction=(0, 0, 0))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_quadratic_bowl_field_is_harmonic_inside(axis):
    """chi = r^2 - R^2 inside a ball of radius R (0 outside) makes a field whose Laplacian
    vanishes inside the ball: lap f = (lap chi) / 3 - (b . grad)^2 chi = 6/3 - 2 = 0 for every
    B0 direction b. Inside a mask such a bowl of chi cannot be told from a background field,
    which every background removal and the weak-harmonic fit take out (chimap.invert.tv_wh,
    "What the field cannot tell"). Control: chi = x^2 gives lap f = 2/3 - 2 b_x^2. B0 along a
    voxel axis: oblique B0 rings at Nyquist (module docstring), which a Laplacian amplifies."""
    shape, vs = (72, 72, 72), (1.0, 1.0, 1.0)
    b0 = np.eye(3)[axis]
    x, y, z = _coords(shape, vs)
    r2 = x ** 2 + y ** 2 + z ** 2
    ball = r2 <= 24.0 ** 2
    inner = r2 <= 16.0 ** 2  # away from the ball's surface

    def laplacian(f):  # 7-point, 1/mm^2
        lap = -6.0 * f
        for ax in range(3):
            lap += np.roll(f, 1, ax) + np.roll(f, -1, ax)
        return lap

    # continuous at the surface (chi = 0 there), so no ringing reaches the interior
    bowl = laplacian(dipole_field(np.where(ball, r2 - 24.0 ** 2, 0.0), None, vs, b0_direction=b0))[inner]
    control = laplacian(dipole_field(np.where(ball, x ** 2, 0.0), None, vs, b0_direction=b0))[inner]
    expected = 2.0 / 3.0 - 2.0 * b0[0] ** 2
    assert abs(np.median(control) - expected) < 0.01 * abs(expected)
    assert np.percentile(np.abs(bowl), 99) < 0.05 * abs(expected)
