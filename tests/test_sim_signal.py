"""Signal models of the simulator (chimap.sim.signal): GRE echoes, segmented 3D-EPI, noise.

The phase convention is design.md's ``phase = +2*pi*gamma_bar*B0*field*TE``; the expected
phases are computed with chimap.units (the only place where gamma*B0 appears).
"""

import numpy as np
import pytest

from chimap.sim.signal import (
    add_complex_noise,
    complex_exponent,
    epi_readout,
    gre_echo,
    noise_sigma,
    receiver_phase_offset,
)
from chimap.units import hz_per_ppm, ppm_to_rad


def _wrap(p):
    return np.angle(np.exp(1j * p))


# ---------------------------------------------------------------------------------------------
# GRE


@pytest.mark.parametrize("field_strength", [1.5, 3.0, 7.0])
def test_gre_echo_phase_and_decay(field_strength):
    rng = np.random.default_rng(0)
    shape = (20, 9, 7)  # 20 rows: two slabs of the default chunk (16) and a remainder
    field = rng.uniform(-2.0, 2.0, shape).astype(np.float32)  # ppm
    r2s = rng.uniform(0.0, 60.0, shape).astype(np.float32)  # 1/s
    m0 = rng.uniform(0.2, 1.0, shape).astype(np.float32)
    z = complex_exponent(field, r2s, field_strength=field_strength)
    assert z.dtype == np.complex64
    for te in (0.003, 0.02):
        s = gre_echo(m0, z, echo_time=te)
        assert s.dtype == np.complex64 and s.shape == shape
        expected_phase = ppm_to_rad(field.astype(np.float64), echo_time=te, field_strength=field_strength)
        # the explicit formula, once, as a cross-check of units.ppm_to_rad
        gamma_bar = hz_per_ppm(field_strength) / field_strength * 1e6
        np.testing.assert_allclose(expected_phase, 2 * np.pi * gamma_bar * field_strength * field * 1e-6 * te,
                                   rtol=1e-6)
        # float32 exponent: |phase| up to 2*pi*298 Hz/ppm*2 ppm*20 ms ~ 75 rad, so the absolute
        # error of the complex64 rounding is ~75 * 6e-8 * a few ~ 1e-5 rad; allow 1e-4.
        dphi = _wrap(np.angle(s) - expected_phase)
        assert np.abs(dphi).max() < 1e-4
        np.testing.assert_allclose(np.abs(s), m0 * np.exp(-r2s * te), rtol=1e-5)


def test_gre_echo_positive_field_gives_positive_phase():
    z = complex_exponent(np.full((2, 2, 2), 0.1, np.float32), np.zeros((2, 2, 2), np.float32), field_strength=3.0)
    s = gre_echo(np.ones((2, 2, 2), np.float32), z, echo_time=0.005)
    # 0.1 ppm at 3 T = 12.77 Hz -> 0.401 rad at 5 ms
    np.testing.assert_allclose(np.angle(s), 2 * np.pi * 12.7732434 * 0.005, rtol=1e-5)


def test_gre_echo_rejects_milliseconds():
    z = np.zeros((2, 2, 2), np.complex64)
    with pytest.raises(ValueError, match="milliseconds"):
        gre_echo(np.ones((2, 2, 2), np.float32), z, echo_time=5.0)


# ---------------------------------------------------------------------------------------------
# 3D-EPI


def _blob(shape, centre, sigma=1.5):
    idx = np.indices(shape).astype(np.float64)
    r2 = sum((idx[a] - centre[a]) ** 2 for a in range(3))
    return np.exp(-r2 / (2 * sigma**2)).astype(np.complex64)


def _peak_along(img, axis, centre_guess, half=4):
    """Sub-voxel peak position along ``axis`` (centroid of |img|^2 summed over the other axes,
    in a window around ``centre_guess``)."""
    prof = (np.abs(img) ** 2).sum(axis=tuple(a for a in range(3) if a != axis))
    pos = np.arange(prof.size)
    w = np.abs(pos - centre_guess) <= half
    return float((prof[w] * pos[w]).sum() / prof[w].sum())


@pytest.mark.parametrize("pe_axis", [0, 1, 2])
def test_epi_no_offresonance_no_change(pe_axis):
    shape = (16, 20, 12)
    img = _blob(shape, (7, 9, 5)) * np.exp(0.3j)
    out = epi_readout(img, np.zeros(shape, np.complex64), echo_time=0.02, echo_spacing=0.0007,
                      segments=1, pe_axis=pe_axis)
    np.testing.assert_allclose(out, img, atol=1e-6)


@pytest.mark.parametrize("pe_axis", [1, 2])
def test_epi_single_shot_shift_sign_and_size(pe_axis):
    """Line ky is read at t = TE + ky*esp, so k-space is multiplied by exp(2i*pi*df*esp*ky).
    By the DFT shift theorem (numpy's forward exp(-2i*pi*k*n/N)) that moves the image by
    s = -df*esp*N voxels along the phase-encode axis. With df*esp*N an integer the shift is an
    exact circular shift."""
    shape = (8, 64, 32)
    n = shape[pe_axis]
    esp = 0.0005
    shift = -2  # voxels
    df = -shift / (esp * n)  # Hz: 62.5 Hz for N=64, 125 Hz for N=32
    centre = [4, 30, 15]
    img = _blob(shape, centre)
    z = np.full(shape, 2j * np.pi * df, np.complex64)
    out = epi_readout(img, z, echo_time=0.02, echo_spacing=esp, segments=1, pe_axis=pe_axis)
    # the k-space centre (ky = 0) is read at TE, where image_te already holds its phase: no global
    # phase is added, so the complex image itself is the shifted input.
    expected = np.roll(img, shift, axis=pe_axis)
    np.testing.assert_allclose(np.abs(out), np.abs(expected), atol=2e-5)
    np.testing.assert_allclose(out, expected, atol=2e-5)
    peak = _peak_along(out, pe_axis, centre[pe_axis] + shift)
    assert peak == pytest.approx(centre[pe_axis] + shift, abs=1e-3)


def test_epi_positive_offresonance_shifts_towards_lower_index():
    shape, esp, df = (4, 48, 4), 0.0008, 40.0  # df*esp*N = 1.536 voxels
    img = _blob(shape, (2, 24, 2), sigma=2.0)
    z = np.full(shape, 2j * np.pi * df, np.complex64)
    out = epi_readout(img, z, echo_time=0.01, echo_spacing=esp, segments=1, pe_axis=1)
    peak = _peak_along(out, 1, 24, half=8)
    # a smooth (band-limited) blob moves by exactly -df*esp*N; the centroid in a +-8 window of a
    # sigma=2 Gaussian is exact to ~1e-3 voxel
    assert peak == pytest.approx(24 - df * esp * shape[1], abs=0.01)


@pytest.mark.parametrize("segments", [2, 4])
def test_epi_segmented_shift_divided_by_segments(segments):
    """Interleaved shots: line m is read at train position m // S, so the phase ramp per ky is
    divided by S (the staircase leaves ghosts N/S apart but moves the main lobe by -df*esp*N/S)."""
    shape, esp = (4, 64, 4), 0.0005
    n = shape[1]
    df = 8.0 / (esp * n)  # single-shot shift -8 voxels
    img = _blob(shape, (2, 32, 2), sigma=1.5)
    z = np.full(shape, 2j * np.pi * df, np.complex64)
    out = epi_readout(img, z, echo_time=0.03, echo_spacing=esp, segments=segments, pe_axis=1)
    expected = 32 - 8.0 / segments
    peak = _peak_along(out, 1, expected, half=3)
    # the staircase phase error (periodic in ky with period S) only adds ghosts N/S apart; the
    # main lobe sits at the expected place: measured |peak - expected| < 3e-6 voxel; allow 0.05
    assert peak == pytest.approx(expected, abs=0.05)
    # and most of the energy stays in the main lobe: measured 0.96 (S=2), 0.95 (S=4)
    prof = (np.abs(out) ** 2).sum(axis=(0, 2))
    main = prof[int(round(expected)) - 4:int(round(expected)) + 5].sum()
    assert main / prof.sum() > 0.9


def test_epi_r2star_blurs_but_keeps_position():
    """R2* during the train weights line ky by exp(-R2*·esp·ky) relative to TE. The weight is
    real, so the point-spread function has a symmetric magnitude (no shift) but is wider than
    the single voxel of a point object."""
    shape, esp = (4, 64, 4), 0.001
    img = np.zeros(shape, np.complex64)
    img[:, 32, :] = 1.0  # a line of points along the pe axis position 32
    z = np.full(shape, -50.0 + 0j, np.complex64)  # R2* = 50/s: weights exp(-+1.6) across the train
    out = epi_readout(img, z, echo_time=0.04, echo_spacing=esp, segments=1, pe_axis=1)
    p = np.abs(out[0, :, 0])
    np.testing.assert_allclose(p[33:], p[31:0:-1], rtol=1e-4, atol=1e-6)  # symmetric about 32
    assert p.argmax() == 32
    # measured: 58 % of the energy left in the centre voxel (100 % without R2*)
    assert (p[32] ** 2) / (p**2).sum() < 0.8
    # the k-space centre is read at TE: the DC component (sum over the pe axis) is unchanged
    np.testing.assert_allclose(out.sum(axis=1), img.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_epi_rejects_bad_echo_spacing_and_segments():
    img = np.ones((4, 8, 4), np.complex64)
    z = np.zeros_like(img)
    with pytest.raises(ValueError, match="seconds"):
        epi_readout(img, z, echo_time=0.02, echo_spacing=0.8, segments=1)  # 0.8 ms given as 0.8
    with pytest.raises(ValueError, match="seconds"):
        epi_readout(img, z, echo_time=0.02, echo_spacing=0.0, segments=1)
    with pytest.raises(ValueError, match="segments"):
        epi_readout(img, z, echo_time=0.02, echo_spacing=0.0005, segments=0)
    with pytest.raises(ValueError, match="segments"):
        epi_readout(img, z, echo_time=0.02, echo_spacing=0.0005, segments=9)
    with pytest.raises(ValueError, match="milliseconds"):
        epi_readout(img, z, echo_time=20.0, echo_spacing=0.0005, segments=1)


# ---------------------------------------------------------------------------------------------
# noise and phase offsets


def test_noise_sigma_definition():
    sig = np.zeros((10, 10, 10), np.complex64)
    mask = np.zeros(sig.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    sig[mask] = 2.0 * np.exp(1j * np.linspace(0, 6, mask.sum()))  # |S| = 2 in the mask
    sig[~mask] = 100.0  # outside the mask: must not count
    assert noise_sigma(sig, mask, snr=40.0) == pytest.approx(2.0 / 40.0, rel=1e-6)
    assert noise_sigma(sig, mask, snr=None) == 0.0
    assert noise_sigma(sig, mask, snr=np.inf) == 0.0
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match="SNR"):
            noise_sigma(sig, mask, snr=bad)


def test_add_complex_noise_statistics():
    sigma = 0.37
    sig = np.zeros((100, 100, 50), np.complex64)
    sig[:50] = 3.0 + 1.0j
    out = add_complex_noise(sig, sigma, rng=5)
    assert out.dtype == np.complex64 and out.shape == sig.shape
    assert np.array_equal(sig[:50], np.full((50, 100, 50), 3.0 + 1.0j, np.complex64))  # input untouched
    n = out - sig
    # 250,000 samples per channel: the standard error of the SD is sigma/sqrt(2N) = 0.14 %;
    # allow 1 %. Mean 0 within 5 standard errors (sigma/sqrt(N) = 0.2 % of sigma).
    for part in (n.real, n.imag):
        assert part[50:].std() == pytest.approx(sigma, rel=0.01)  # background (zero signal)
        assert part[:50].std() == pytest.approx(sigma, rel=0.01)
        assert abs(part.mean()) < 5 * sigma / np.sqrt(part.size)
    # real and imaginary parts independent
    assert abs(np.corrcoef(n.real.ravel(), n.imag.ravel())[0, 1]) < 0.01
    # seeded: reproducible; sigma 0: an unchanged copy
    np.testing.assert_array_equal(add_complex_noise(sig, sigma, rng=5), out)
    assert not np.array_equal(add_complex_noise(sig, sigma, rng=6), out)
    clean = add_complex_noise(sig, 0.0)
    np.testing.assert_array_equal(clean, sig)
    assert clean is not sig


def test_receiver_phase_offset_smooth_and_seeded():
    shape = (30, 24, 20)
    a = receiver_phase_offset(shape, (1.0, 1.0, 1.0), rng=3)
    assert a.dtype == np.float32 and a.shape == shape
    np.testing.assert_array_equal(a, receiver_phase_offset(shape, (1.0, 1.0, 1.0), rng=3))
    assert not np.array_equal(a, receiver_phase_offset(shape, (1.0, 1.0, 1.0), rng=4))
    # constant + linear + quadratic with the coefficients bounded by the amplitude:
    # |phi| <= pi + 3*(0.4 + 0.2)*pi
    assert np.abs(a).max() <= np.pi * (1 + 3 * 0.6) + 1e-5
    # smooth: neighbouring voxels differ by at most the largest slope, 3 * 0.8*pi*... per voxel
    for ax in range(3):
        step = np.abs(np.diff(a, axis=ax)).max()
        assert step < (0.4 + 2 * 0.2) * np.pi * 2.0 / (shape[ax] - 1) + 1e-5
    assert np.ptp(receiver_phase_offset(shape, (1.0, 1.0, 1.0), rng=3, amplitude=0.0)) == 0.0
