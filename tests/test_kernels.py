"""Kernels: dipole, SMV, Laplacian, gradient/divergence on anisotropic, non-cubic grids."""

import itertools

import numpy as np
import pytest
import scipy.fft as sfft

from chimap.kernels import (
    dipole_kernel,
    divergence,
    gradient,
    kspace_grid,
    laplacian,
    laplacian_kernel,
    smv_kernel,
    sphere_mask,
)

# Kernel values are a few float64 operations: 1e-12 absolute is ~1e4 ulps of numbers <= 1.
ATOL = 1e-12
MAGIC_DEG = 54.7356  # arccos(1/sqrt(3)) in degrees, to 4 decimals


def _dipole_reference(shape, vs, b):
    """Independent implementation of D(k) = 1/3 - (k.b)^2/|k|^2 on the fftfreq grid, with
    (k.b)^2 averaged over the +/- signs of the Nyquist components of even axes (brute force
    over the 2^m sign combinations)."""
    b = np.asarray(b, float) / np.linalg.norm(b)
    freqs = [np.fft.fftfreq(n, d=d) for n, d in zip(shape, vs)]
    nyq = [np.arange(n) == n // 2 if n % 2 == 0 else np.zeros(n, bool) for n in shape]
    k = np.meshgrid(*freqs, indexing="ij")
    isn = np.meshgrid(*nyq, indexing="ij")
    k2 = sum(ki * ki for ki in k)
    acc = np.zeros(shape)
    signs = list(itertools.product((1.0, -1.0), repeat=3))
    for sg in signs:
        kk = [np.where(n_, s_ * ki, ki) for ki, n_, s_ in zip(k, isn, sg)]
        acc += sum(ki * bi for ki, bi in zip(kk, b)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - acc / len(signs) / k2
    d[0, 0, 0] = 0.0
    return d


# ---------------------------------------------------------------------------------------------
# dipole kernel


def test_dipole_axis_aligned_values():
    d = dipole_kernel((16, 16, 16), (1, 1, 1), b0_direction=(0, 0, 1))
    assert d[0, 0, 0] == 0.0  # D(0) = 0 by default
    assert d[0, 0, 3] == pytest.approx(-2 / 3, abs=ATOL)  # k along B0
    assert d[0, 0, -5] == pytest.approx(-2 / 3, abs=ATOL)
    assert d[4, 0, 0] == pytest.approx(1 / 3, abs=ATOL)  # k across B0
    assert d[2, -3, 0] == pytest.approx(1 / 3, abs=ATOL)
    # (1, 1, 1) makes the magic angle with z: D vanishes there.
    assert np.degrees(np.arccos(1 / np.sqrt(3))) == pytest.approx(MAGIC_DEG, abs=1e-4)
    assert d[1, 1, 1] == pytest.approx(0.0, abs=ATOL)
    assert d[-2, 2, -2] == pytest.approx(0.0, abs=ATOL)
    assert d.min() >= -2 / 3 - ATOL and d.max() <= 1 / 3 + ATOL


def test_dipole_tilted_values():
    b = np.array([1.0, 2.0, 2.0]) / 3.0  # unit vector, 48.2 deg from K
    d = dipole_kernel((12, 12, 12), (1, 1, 1), b0_direction=b)
    assert d[1, 2, 2] == pytest.approx(-2 / 3, abs=ATOL)  # k parallel to b
    assert d[-2, -4, -4] == pytest.approx(-2 / 3, abs=ATOL)  # antiparallel
    assert d[2, -1, 0] == pytest.approx(1 / 3, abs=ATOL)  # (2,-1,0).b = 0
    assert d[0, 1, -1] == pytest.approx(1 / 3, abs=ATOL)
    k = np.array([-1.0, 1.0, 1.0])  # (k.b)^2/|k|^2 = 1/3: on the magic cone
    ang = np.degrees(np.arccos(abs(k @ b) / np.linalg.norm(k)))
    assert ang == pytest.approx(MAGIC_DEG, abs=1e-4)
    assert d[-1, 1, 1] == pytest.approx(0.0, abs=ATOL)
    assert d[0, 0, 0] == 0.0


def test_dipole_d0_option():
    d = dipole_kernel((8, 8, 8), (1, 1, 1), d0=1 / 3)
    assert d[0, 0, 0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("shape, vs, b", [
    ((16, 20, 12), (0.5, 1.0, 2.0), (0, 0, 1)),
    ((15, 8, 10), (1.2, 0.7, 3.0), (0.2, -0.5, 1.0)),
    ((16, 12, 10), (0.9, 1.0, 1.3), (0.5, 0.6, 0.7)),  # Nyquist samples on every axis
    ((9, 1, 6), (1.0, 1.0, 1.0), (1.0, 1.0, 0.0)),
])
def test_dipole_equals_formula_on_physical_grid(shape, vs, b):
    d = dipole_kernel(shape, vs, b0_direction=b)
    assert d.shape == shape
    np.testing.assert_allclose(d, _dipole_reference(shape, vs, b), atol=ATOL)


def test_dipole_anisotropic_voxel_sizes_not_swapped():
    # k = (1/(16*0.5), 0, 1/(12*2)) = (1/8, 0, 1/24) cycles/mm:
    # D = 1/3 - (1/24)^2 / ((1/8)^2 + (1/24)^2) = 1/3 - 1/10.
    d = dipole_kernel((16, 20, 12), (0.5, 1.0, 2.0), b0_direction=(0, 0, 1))
    assert d[1, 0, 1] == pytest.approx(1 / 3 - 1 / 10, abs=ATOL)
    k0, k1, k2 = kspace_grid((16, 20, 12), (0.5, 1.0, 2.0))
    assert k0.shape == (16, 1, 1) and k1.shape == (1, 20, 1) and k2.shape == (1, 1, 12)
    assert k0[1, 0, 0] == pytest.approx(1 / 8) and k2[0, 0, 1] == pytest.approx(1 / 24)


@pytest.mark.parametrize("n2", [10, 11])
def test_dipole_real_fft_half_spectrum(n2):
    # rfftfreq puts +Nyquist in the last column, fftfreq -Nyquist; with the Nyquist average
    # both give the same value, so the half spectrum is exactly the first half.
    shape, vs, b = (6, 8, n2), (1.0, 0.8, 1.5), (0.3, -0.4, 1.0)
    full = dipole_kernel(shape, vs, b0_direction=b)
    half = dipole_kernel(shape, vs, b0_direction=b, real_fft=True)
    m = n2 // 2 + 1
    assert half.shape == (6, 8, m)
    np.testing.assert_allclose(half, full[..., :m], atol=ATOL)


def test_dipole_nyquist_average_and_hermitian():
    shape, vs, b = (8, 6, 10), (1.0, 0.8, 1.5), np.array([0.3, -0.4, 1.0])
    bn = b / np.linalg.norm(b)
    d = dipole_kernel(shape, vs, b0_direction=b)

    def plain(k):
        k = np.asarray(k, float)
        return 1 / 3 - (k @ bn) ** 2 / (k @ k)

    # single Nyquist component (axis I, index 4): mean of D at +k_N and -k_N
    k1, k2 = np.fft.fftfreq(6, d=0.8)[1], np.fft.fftfreq(10, d=1.5)[2]
    kn = 0.5 / vs[0]
    assert d[4, 1, 2] == pytest.approx(0.5 * (plain((kn, k1, k2)) + plain((-kn, k1, k2))),
                                       abs=ATOL)
    # regular samples keep the plain formula
    k0 = np.fft.fftfreq(8, d=1.0)[3]
    assert d[3, 1, 2] == pytest.approx(plain((k0, k1, k2)), abs=ATOL)
    # Hermitian on the grid: D[idx] = D[-idx mod n] (the real FFT pair needs it)
    neg = d[np.ix_(*[(-np.arange(n)) % n for n in shape])]
    np.testing.assert_allclose(d, neg, atol=ATOL)
    # even under flipping any single axis together with the sign of that B0 component
    for ax in range(3):
        bf = b.copy()
        bf[ax] *= -1
        df = dipole_kernel(shape, vs, b0_direction=bf)
        idx = [np.arange(n) for n in shape]
        idx[ax] = (-np.arange(shape[ax])) % shape[ax]
        np.testing.assert_allclose(df, d[np.ix_(*idx)], atol=ATOL)


@pytest.mark.parametrize("perm", [(2, 0, 1), (1, 2, 0), (0, 2, 1)])
def test_dipole_joint_permutation(perm):
    shape, vs, b = (10, 12, 7), np.array([0.6, 1.0, 2.2]), np.array([0.3, -0.5, 0.8])
    d = dipole_kernel(shape, vs, b0_direction=b)
    p = list(perm)
    dp = dipole_kernel(tuple(np.array(shape)[p]), vs[p], b0_direction=b[p])
    np.testing.assert_allclose(dp, np.transpose(d, perm), atol=ATOL)


def test_dipole_dtype():
    d = dipole_kernel((8, 6, 5), (1, 1, 2), b0_direction=(0.1, 0.2, 1), dtype=np.float32)
    assert d.dtype == np.float32
    d64 = dipole_kernel((8, 6, 5), (1, 1, 2), b0_direction=(0.1, 0.2, 1))
    # float32 rounding of values <= 1: 1e-6 is ~10 ulps.
    np.testing.assert_allclose(d, d64, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# SMV kernel


def test_smv_unit_dc_and_sphere_sums_to_one():
    shape, vs, radius = (20, 18, 16), (1.0, 0.8, 1.5), 4.0
    s = smv_kernel(shape, vs, radius=radius)
    assert s[0, 0, 0] == pytest.approx(1.0, abs=ATOL)
    ball = sfft.ifftn(s).real
    assert ball.sum() == pytest.approx(1.0, abs=ATOL)
    # the real-space kernel is the normalised ball around voxel 0 (periodic wrap)
    centred = np.fft.fftshift(ball)
    c = tuple(n // 2 for n in shape)
    ref = sphere_mask(shape, vs, radius=radius, center=c)
    np.testing.assert_allclose(centred, ref / ref.sum(), atol=1e-12)
    half = smv_kernel(shape, vs, radius=radius, real_fft=True)
    np.testing.assert_allclose(half, s[..., : shape[2] // 2 + 1], atol=ATOL)


def _apply(kernel, x):
    return sfft.ifftn(kernel * sfft.fftn(x)).real


def _interior(shape, margin):
    sl = tuple(slice(margin, n - margin) for n in shape)
    return sl


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (0.8, 1.0, 1.5)])
def test_smv_preserves_linear_field(vs):
    shape, radius = (24, 22, 20), 3.0
    g = np.meshgrid(*[np.arange(n) * d for n, d in zip(shape, vs)], indexing="ij")
    x = 0.3 * g[0] - 0.7 * g[1] + 0.2 * g[2] + 1.5
    s = smv_kernel(shape, vs, radius=radius)
    sl = _interior(shape, int(np.ceil(radius / min(vs))) + 1)  # away from the periodic seam
    # The discrete ball is point-symmetric, so its mean of a linear function is exact:
    # only FFT round-off remains (values ~ 30, eps*30*log(N) ~ 1e-13); 1e-9 absolute.
    np.testing.assert_allclose(_apply(s, x)[sl], x[sl], atol=1e-9)
    np.testing.assert_allclose(_apply(1.0 - s, x)[sl], 0.0, atol=1e-9)


def test_smv_preserves_harmonic_quadratic():
    # x^2 - y^2 is harmonic; the ball on an isotropic grid is symmetric under swapping I and J,
    # so its mean of x^2 - y^2 is exact (the sphere mean value property holds exactly).
    shape, vs, radius = (24, 24, 16), (1.0, 1.0, 1.0), 4.0
    g = np.meshgrid(*[(np.arange(n) - n / 2) * d for n, d in zip(shape, vs)], indexing="ij")
    x = g[0] ** 2 - g[1] ** 2 + 0.5 * g[0] * g[2]
    s = smv_kernel(shape, vs, radius=radius)
    sl = _interior(shape, 5)
    # values up to ~150, FFT round-off ~1e-12 relative: 1e-8 absolute.
    np.testing.assert_allclose(_apply(1.0 - s, x)[sl], 0.0, atol=1e-8)
    # a non-harmonic quadratic is not annihilated: the test can fail
    y = g[0] ** 2 + g[1] ** 2
    assert np.abs(_apply(1.0 - s, y)[sl]).min() > 1.0


def test_smv_radius_too_small():
    with pytest.raises(ValueError, match="radius"):
        smv_kernel((8, 8, 8), (1.0, 1.0, 2.0), radius=0.3)


# ---------------------------------------------------------------------------------------------
# Laplacian


@pytest.mark.parametrize("shape, vs", [((8, 7, 6), (1.0, 0.5, 2.0)), ((5, 9, 4), (0.9, 1.1, 1.3))])
def test_laplacian_kernel_is_fft_of_periodic_stencil(shape, vs):
    h = np.zeros(shape)
    for ax, d in enumerate(vs):
        for step in (1, -1):
            idx = [0, 0, 0]
            idx[ax] = step % shape[ax]
            h[tuple(idx)] += 1.0 / d**2
        h[0, 0, 0] -= 2.0 / d**2
    lk = laplacian_kernel(shape, vs)
    np.testing.assert_allclose(lk, sfft.fftn(h).real, atol=1e-12)
    assert np.abs(sfft.fftn(h).imag).max() < 1e-12  # symmetric stencil: real symbol
    lk_half = laplacian_kernel(shape, vs, real_fft=True)
    np.testing.assert_allclose(lk_half, sfft.rfftn(h).real, atol=1e-12)
    assert lk.max() <= 1e-12
    # applying it equals the periodic stencil with np.roll
    x = np.random.default_rng(1).normal(size=shape)
    rolled = sum((np.roll(x, 1, ax) + np.roll(x, -1, ax) - 2 * x) / d**2
                 for ax, d in enumerate(vs))
    np.testing.assert_allclose(_apply(lk, x), rolled, atol=1e-10)


def test_laplacian_kernel_dtype():
    assert laplacian_kernel((4, 4, 4), 1.0, dtype=np.float32).dtype == np.float32


def test_laplacian_of_quadratic_is_constant():
    shape, vs = (10, 12, 9), (0.7, 1.0, 1.8)
    g = np.meshgrid(*[np.arange(n) * d for n, d in zip(shape, vs)], indexing="ij")
    x = 1.5 * g[0] ** 2 - 0.5 * g[1] ** 2 + 2.0 * g[2] ** 2 + g[0] * g[1] + 3.0 * g[2]
    lap = laplacian(x, vs)
    # Second differences of quadratics are exact; float64 round-off on values ~ 1e3 divided
    # by h^2 ~ 0.5: 1e-9 absolute.
    np.testing.assert_allclose(lap[1:-1, 1:-1, 1:-1], 2 * (1.5 - 0.5 + 2.0), atol=1e-9)


# ---------------------------------------------------------------------------------------------
# gradient / divergence


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape, vs", [
    ((7, 9, 5), (1.0, 0.5, 2.0)),
    ((12, 4, 6), (0.8, 1.3, 0.6)),
    ((5, 2, 3), (1.0, 1.0, 3.0)),
    ((6, 1, 4), (1.0, 2.0, 0.5)),  # a length-1 axis
])
def test_gradient_divergence_adjoint(dtype, rtol, shape, vs):
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape).astype(dtype)
    g = rng.normal(size=shape + (3,)).astype(dtype)
    gx = gradient(x, vs)
    dg = divergence(g, vs)
    assert gx.dtype == dtype and dg.dtype == dtype
    assert gx.shape == shape + (3,) and dg.shape == shape
    lhs = np.vdot(gx.astype(np.float64), g.astype(np.float64))
    rhs = -np.vdot(x.astype(np.float64), dg.astype(np.float64))
    # Relative to the sum of |terms|: float64 round-off is ~1e-16 * sqrt(N); float32 inputs
    # carry ~6e-8 relative error per product, 1e-4 is generous yet fails for a wrong adjoint.
    scale = np.abs(gx.astype(np.float64) * g).sum()
    assert abs(lhs - rhs) <= rtol * scale


def test_gradient_of_linear_field():
    shape, vs = (6, 5, 4), (0.5, 1.0, 2.0)
    g = np.meshgrid(*[np.arange(n) * d for n, d in zip(shape, vs)], indexing="ij")
    x = 2.0 * g[0] - 1.0 * g[1] + 0.25 * g[2]
    gr = gradient(x, vs)
    for ax, slope in enumerate((2.0, -1.0, 0.25)):
        sl = [slice(None)] * 3
        sl[ax] = slice(0, -1)
        np.testing.assert_allclose(gr[(*sl, ax)], slope, atol=1e-12)
        sl[ax] = -1
        np.testing.assert_array_equal(gr[(*sl, ax)], 0.0)  # Neumann: zero at the last index


def test_gradient_rejects_bad_shapes():
    with pytest.raises(ValueError):
        gradient(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(ValueError):
        divergence(np.zeros((4, 4, 4, 2)), (1, 1, 1))
