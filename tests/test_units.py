"""Unit conversions: ppm <-> Hz <-> rad, input checks, dtype preservation."""

import numpy as np
import pytest

from chimap.constants import GAMMA_BAR_HZ_PER_T
from chimap.units import (
    check_echo_times,
    check_field_strength,
    hz_per_ppm,
    hz_to_ppm,
    hz_to_rad,
    larmor_hz,
    ppm_to_hz,
    ppm_to_rad,
    rad_to_hz,
    rad_to_ppm,
)

# Round trips are a multiplication followed by a division by the same float64 factor:
# exact up to a few ulps, so rtol 1e-12 leaves ~1e4 ulps of slack and still catches any
# wrong factor (a factor error of even 1e-9 fails).
RT = 1e-12


def test_gamma_bar_codata():
    # CODATA 2018: gamma_p / 2pi = 42.577 478 518 MHz/T; the constant is given to 8 digits.
    assert GAMMA_BAR_HZ_PER_T == pytest.approx(42.577478e6, rel=1e-8)


@pytest.mark.parametrize("b0, hz", [(3.0, 127.73), (7.0, 298.04), (1.5, 63.87)])
def test_hz_per_ppm_known_values(b0, hz):
    # 1 ppm of 3 T is 127.73 Hz (127.732...), of 7 T 298.04 Hz; the literature values are
    # rounded to 0.01 Hz, hence abs=0.006.
    assert hz_per_ppm(b0) == pytest.approx(hz, abs=0.006)
    assert larmor_hz(b0) == pytest.approx(hz * 1e6, rel=1e-4)
    assert ppm_to_hz(1.0, field_strength=b0) == pytest.approx(hz, abs=0.006)


def test_known_phase():
    # 1 ppm at 3 T and TE = 20 ms: 2*pi * 127.732 Hz * 0.02 s = 16.051 rad (3 decimals given).
    assert ppm_to_rad(1.0, echo_time=0.02, field_strength=3.0) == pytest.approx(16.051, abs=1e-3)
    # 10 Hz over 25 ms accrues a quarter turn: 2*pi*10*0.025 = pi/2.
    assert hz_to_rad(10.0, echo_time=0.025) == pytest.approx(np.pi / 2, rel=RT)


def test_sign_convention_positive_field_positive_phase():
    assert ppm_to_rad(0.1, echo_time=0.01, field_strength=3.0) > 0
    assert ppm_to_hz(-0.1, field_strength=7.0) < 0


@pytest.mark.parametrize("b0", [3.0, 7.0])
@pytest.mark.parametrize("te", [0.004, 0.02])
def test_round_trips(b0, te):
    rng = np.random.default_rng(0)
    ppm = rng.normal(scale=0.5, size=(4, 5, 6))
    hz = ppm_to_hz(ppm, field_strength=b0)
    np.testing.assert_allclose(hz_to_ppm(hz, field_strength=b0), ppm, rtol=RT)
    rad = hz_to_rad(hz, echo_time=te)
    np.testing.assert_allclose(rad_to_hz(rad, echo_time=te), hz, rtol=RT)
    np.testing.assert_allclose(rad_to_ppm(rad, echo_time=te, field_strength=b0), ppm, rtol=RT)
    # the direct path agrees with the composed one
    np.testing.assert_allclose(ppm_to_rad(ppm, echo_time=te, field_strength=b0), rad, rtol=RT)


def test_echo_times_in_ms_rejected():
    with pytest.raises(ValueError, match="milliseconds"):
        check_echo_times([5.0, 10.0, 15.0])
    with pytest.raises(ValueError, match="milliseconds"):
        ppm_to_rad(1.0, echo_time=20.0, field_strength=3.0)
    with pytest.raises(ValueError, match="milliseconds"):
        rad_to_hz(1.0, echo_time=4.5)


def test_echo_times_checks():
    te = check_echo_times([0.005, 0.01, 0.015], n_echoes=3)
    assert te.dtype == np.float64 and te.shape == (3,)
    with pytest.raises(ValueError, match="echo"):
        check_echo_times([0.005, 0.01], n_echoes=3)
    for bad in ([], [0.0], [-0.01], [np.nan]):
        with pytest.raises(ValueError):
            check_echo_times(bad)


@pytest.mark.parametrize("bad", [3000.0, 7000, 30000.0])
def test_field_strength_in_mT_rejected(bad):
    with pytest.raises(ValueError, match="mT"):
        check_field_strength(bad)
    with pytest.raises(ValueError, match="tesla"):
        ppm_to_hz(1.0, field_strength=bad)


@pytest.mark.parametrize("bad", [0.0, -3.0, np.nan, np.inf, "three"])
def test_field_strength_invalid(bad):
    with pytest.raises(ValueError):
        check_field_strength(bad)


def test_float32_stays_float32():
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    outs = [
        ppm_to_hz(x, field_strength=3.0),
        hz_to_ppm(x, field_strength=3.0),
        hz_to_rad(x, echo_time=0.02),
        rad_to_hz(x, echo_time=0.02),
        ppm_to_rad(x, echo_time=0.02, field_strength=7.0),
        rad_to_ppm(x, echo_time=0.02, field_strength=7.0),
    ]
    for out in outs:
        assert out.dtype == np.float32
        assert out.shape == x.shape


def test_inputs_not_modified():
    x = np.ones((2, 2, 2))
    ppm_to_rad(x, echo_time=0.01, field_strength=3.0)
    np.testing.assert_array_equal(x, 1.0)
