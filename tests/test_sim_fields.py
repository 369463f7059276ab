"""Two-scale field simulation and grid-to-grid resampling of the simulator (chimap.sim.fields)."""

import numpy as np
import pytest

from chimap.forward import dipole_field
from chimap.sim.fields import block_mean, fourier_downsample, periodic_dipole_field, two_scale_dipole_field

FINE_SHAPE = (48, 40, 44)
FINE_VS = np.array([1.0, 1.2, 0.9])
B0_TILTED = np.array([0.0, np.sin(np.radians(20)), np.cos(np.radians(20))])


def _ball(shape, vs, centre_mm, radius_mm):
    idx = np.indices(shape).astype(np.float64)
    r2 = sum((idx[a] * vs[a] - centre_mm[a]) ** 2 for a in range(3))
    return r2 <= radius_mm**2


@pytest.fixture(scope="module")
def sources():
    """A big paramagnetic ball in the middle and a small diamagnetic one off centre, 6-7 fine
    voxels from three faces of the volume (float32, ppm).

    The method assumes the periodic images of the sources lie well outside the volume: with the
    small ball 2 voxels from a face the max error grows to 15 % of the peak on the opposite face
    (measured), because the image's near field cannot be represented on the coarse grid.
    """
    chi = np.zeros(FINE_SHAPE, np.float32)
    centre = [(n - 1) / 2 * v for n, v in zip(FINE_SHAPE, FINE_VS)]
    chi[_ball(FINE_SHAPE, FINE_VS, centre, 12.0)] = 1.0
    chi[_ball(FINE_SHAPE, FINE_VS, (10 * 1.0, 30 * 1.2, 32 * 0.9), 3.5)] = -2.0
    return chi


@pytest.mark.parametrize("b0", [(0.0, 0.0, 1.0), tuple(B0_TILTED)])
def test_two_scale_matches_zero_padded_field(sources, b0):
    """The two-scale field agrees with the direct zero-padded (linear) convolution.

    The correction removes the periodic images' field on the coarse grid; what remains is the
    difference between the coarse (factor 2) and fine representation of the images' field,
    largest on the faces near which a source sits (its image is then close by), plus, with B0
    oblique to two axes, a Nyquist checkerboard that differs between the padded and the unpadded
    grid (see tests/test_forward.py) and that the 2x2x2 block mean cancels. Measured, in % of the
    field's maximum (axial / tilted B0): fine grid max 1.1 / 2.4, RMS 0.07 / 0.13; block mean
    (the simulator's output grid) max 0.78 (tilted), 0.29 two coarse voxels inside the faces.
    The uncorrected periodic field is off by 12-14 %.
    """
    ref = dipole_field(sources, None, FINE_VS, b0_direction=b0, pad_factor=2)
    two = two_scale_dipole_field(sources, FINE_VS, 2, b0_direction=b0)
    per = periodic_dipole_field(sources, FINE_VS, b0_direction=b0)
    assert two.dtype == np.float32 and two.shape == FINE_SHAPE
    peak = np.abs(ref).max()
    err = np.abs(two - ref)
    assert err.max() < 0.04 * peak
    assert np.sqrt((err**2).mean()) < 0.003 * peak
    err_c = np.abs(block_mean(two, 2) - block_mean(ref, 2))
    assert err_c.max() < 0.015 * peak
    assert err_c[2:-2, 2:-2, 2:-2].max() < 0.006 * peak
    # the periodic field alone is far off: the test can tell a missing correction
    assert np.abs(per - ref).max() > 0.1 * peak


def test_two_scale_factor_per_axis_and_inputs_untouched(sources):
    """A factor per axis works (here (2, 2, 2) given as a tuple, and (1, 2, 2)); with factor 1 on
    an axis the coarse grid equals the fine one along it. The input is not modified."""
    keep = sources.copy()
    ref = dipole_field(sources, None, FINE_VS, b0_direction=B0_TILTED, pad_factor=2)
    peak = np.abs(ref).max()
    for f in ((2, 2, 2), (1, 2, 2)):
        two = two_scale_dipole_field(sources, FINE_VS, f, b0_direction=B0_TILTED)
        assert np.abs(two - ref).max() < 0.04 * peak  # measured 2.4 % for both
    np.testing.assert_array_equal(sources, keep)


def test_two_scale_with_factor_one_is_exact(sources):
    """With factor 1 and no margin the coarse grid is the fine grid: periodic + (padded - periodic) = padded."""
    ref = dipole_field(sources, None, FINE_VS, b0_direction=B0_TILTED, pad_factor=2)
    two = two_scale_dipole_field(sources, FINE_VS, 1, b0_direction=B0_TILTED, margin_mm=0)
    np.testing.assert_allclose(two, ref, atol=2e-6 * np.abs(ref).max() * 10)


def test_periodic_field_of_uniform_chi_is_zero():
    chi = np.full((8, 10, 12), 0.7, np.float32)
    f = periodic_dipole_field(chi, (1.0, 1.0, 1.0), b0_direction=(0, 0, 1))
    assert f.dtype == np.float32
    assert np.abs(f).max() < 1e-6  # D(0) = 0


# ---------------------------------------------------------------------------------------------
# block_mean


def test_block_mean_known_values():
    x = np.arange(4 * 6 * 2, dtype=np.float32).reshape(4, 6, 2)
    m = block_mean(x, (2, 3, 1))
    assert m.shape == (2, 2, 2) and m.dtype == np.float32
    # x[i, j, k] = 12 i + 2 j + k: the block mean is the value at the block's centre indices
    for a in range(2):
        for b in range(2):
            for c in range(2):
                ci, cj = 2 * a + 0.5, 3 * b + 1.0
                assert m[a, b, c] == pytest.approx(12 * ci + 2 * cj + c)
    np.testing.assert_array_equal(block_mean(x, 1), x)
    z = (x + 1j * x[::-1]).astype(np.complex64)
    mz = block_mean(z, (2, 3, 1))
    assert mz.dtype == np.complex64
    np.testing.assert_allclose(mz.real, m)
    np.testing.assert_allclose(mz.imag, block_mean(x[::-1].copy(), (2, 3, 1)))
    assert block_mean(np.ones((4, 4, 4)), 2).sum() == pytest.approx(8.0)
    with pytest.raises(ValueError, match="divisible"):
        block_mean(np.zeros((5, 4, 4), np.float32), 2)


# ---------------------------------------------------------------------------------------------
# fourier_downsample


def _smooth_complex(n_fine, pos):
    """exp(i*(low-frequency cosines)): one cycle per field of view per axis with amplitude <= 1,
    so its spectrum is sum_n J_n(a) at harmonics n; |J_n(1)| < 2.5e-7 for n >= 8 — band-limited
    to float32 precision on a coarse grid of >= 16 voxels, and to ~2e-5 (J_6(1)) on 10-12."""
    x, y, z = pos
    phase = (1.0 * np.cos(2 * np.pi * x / n_fine[0] + 0.3) + 0.7 * np.sin(2 * np.pi * y / n_fine[1])
             + 0.5 * np.cos(2 * np.pi * z / n_fine[2] - 1.0))
    return np.exp(1j * phase)


@pytest.mark.parametrize("factor", [(2, 2, 2), (2, 3, 2), (3, 3, 3), (1, 2, 4)])
def test_fourier_downsample_samples_block_centres(factor):
    """The output is the band-limited signal sampled at the centres of the ``factor`` blocks,
    i.e. at fine index f*c + (f-1)/2. Sampling at f*c instead (no half-voxel shift) differs by
    0.25-0.5 in this signal, 1e4 times the tolerance."""
    n_c = (16, 12, 16)
    n_f = tuple(c * f for c, f in zip(n_c, factor))
    x = _smooth_complex(n_f, np.indices(n_f).astype(np.float64)).astype(np.complex64)
    cidx = np.indices(n_c).astype(np.float64)
    centres = [cidx[a] * factor[a] + (factor[a] - 1) / 2.0 for a in range(3)]
    expected = _smooth_complex(n_f, centres)
    out = fourier_downsample(x, factor)
    assert out.shape == n_c and out.dtype == np.complex64
    # measured max error 2e-5 (the J_6(1) harmonic cut on the 12-voxel axis) plus float32 FFTs
    assert np.abs(out - expected).max() < 1e-4
    wrong = _smooth_complex(n_f, [cidx[a] * factor[a] for a in range(3)])
    if any(f > 1 for f in factor):
        assert np.abs(out - wrong).max() > 0.1


def test_fourier_downsample_constant_and_linearity():
    c = np.full((12, 8, 6), 2.5 - 1.0j, np.complex64)
    out = fourier_downsample(c, 2)
    assert out.shape == (6, 4, 3)
    np.testing.assert_allclose(out, 2.5 - 1.0j, atol=1e-6)
    np.testing.assert_array_equal(fourier_downsample(c, 1), c)
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((12, 8, 6)) + 1j * rng.standard_normal((12, 8, 6))).astype(np.complex64)
    b = (rng.standard_normal((12, 8, 6)) + 1j * rng.standard_normal((12, 8, 6))).astype(np.complex64)
    np.testing.assert_allclose(fourier_downsample(a + 2 * b, 2),
                               fourier_downsample(a, 2) + 2 * fourier_downsample(b, 2), atol=1e-5)
    # k-space cropping keeps the DC term: the mean over the volume is preserved
    assert fourier_downsample(a, 2).mean() == pytest.approx(a.mean(), abs=1e-6)
