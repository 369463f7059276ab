"""Phase scaling: every vendor convention to radians, ambiguity, sign, dtypes."""

import warnings

import numpy as np
import pytest

from chimap.io import PhaseScalingWarning, detect_phase_units, scale_phase_to_radians


def _truth(shape=(6, 7, 8), seed=0):
    """Wrapped phase in [-pi, pi) that fills the whole circle (both ends present)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-np.pi, np.pi, shape)
    t.flat[0] = -np.pi
    t.flat[1] = np.pi - 1e-6
    return t


def _circ_err(a, b):
    return np.max(np.abs(np.angle(np.exp(1j * (np.asarray(a, np.float64) - b)))))


ENCODERS = {
    # name: (encode(truth) -> stored, expected units, tolerance in rad)
    "siemens_unsigned": (
        lambda t: np.clip(np.round((t + np.pi) * 2048 / np.pi), 0, 4095).astype(np.uint16),
        "siemens", np.pi / 2048,
    ),
    "siemens_signed": (
        lambda t: np.clip(np.round(t * 4096 / np.pi), -4096, 4095).astype(np.int16),
        "siemens", np.pi / 4096,
    ),
    "siemens_signed_float": (  # dcm2niix applies RescaleSlope 2 / Intercept -4096 -> float storage
        lambda t: (2.0 * np.clip(np.round((t + np.pi) * 2048 / np.pi), 0, 4095) - 4096).astype(np.float32),
        "siemens", np.pi / 2048,
    ),
    "milliradians": (lambda t: np.round(t * 1000).astype(np.int16), "milliradians", 1e-3),
    "milliradians_float": (lambda t: (t * 1000).astype(np.float32), "milliradians", 1e-5),
    "uint16": (
        lambda t: np.clip(np.round((t + np.pi) * 32768 / np.pi), 0, 65535).astype(np.uint16),
        "uint16", np.pi / 32768,
    ),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_vendor_conventions_detected_and_rescaled(name):
    encode, units, tol = ENCODERS[name]
    truth = _truth()
    stored = encode(truth)
    assert detect_phase_units(stored) == units
    with pytest.warns(PhaseScalingWarning, match="rescaled to radians"):
        rad = scale_phase_to_radians(stored)
    assert rad.dtype == np.float32
    assert rad.shape == truth.shape
    assert _circ_err(rad, truth) <= tol * 1.01
    assert rad.min() >= -np.pi - 1e-6 and rad.max() <= np.pi + 1e-6
    # explicit units give the same result without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(scale_phase_to_radians(stored, units=units), rad)


def test_exact_vendor_values():
    np.testing.assert_allclose(
        scale_phase_to_radians(np.array([-4096, 0, 4094], np.int16), units="siemens"),
        [-np.pi, 0, 4094 * np.pi / 4096], rtol=1e-6)
    np.testing.assert_allclose(
        scale_phase_to_radians(np.array([0, 2048, 4095], np.uint16), units="siemens"),
        [-np.pi, 0, 2047 * np.pi / 2048], rtol=1e-6)
    np.testing.assert_allclose(scale_phase_to_radians(np.array([-3142, 1571]), units="mrad"),
                               [-3.142 + 2 * np.pi, 1.571], rtol=1e-6)  # -3.142 < -pi: wrapped
    np.testing.assert_allclose(scale_phase_to_radians(np.array([0, 32768]), units="uint16"), [-np.pi, 0], atol=1e-6)
    np.testing.assert_allclose(scale_phase_to_radians(np.array([-180.0, 90.0]), units="degrees"), [-np.pi, np.pi / 2])


def test_siemens_signed_not_confused_with_milliradians():
    truth = _truth()
    siemens = np.round(truth * 4096 / np.pi)
    mrad = np.round(truth * 1000)
    with pytest.warns(PhaseScalingWarning, match="Siemens"):
        assert _circ_err(scale_phase_to_radians(siemens), truth) < 1e-3
    with pytest.warns(PhaseScalingWarning, match="milliradians"):
        assert _circ_err(scale_phase_to_radians(mrad), truth) < 1e-3


@pytest.mark.parametrize("offset", [0.0, np.pi])
def test_radians_pass_through_without_warning(offset):
    truth = (_truth() + offset).astype(np.float32)  # [-pi, pi) and [0, 2pi)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert detect_phase_units(truth) == "rad"
        out = scale_phase_to_radians(truth)
    np.testing.assert_array_equal(out, truth)
    assert out is not truth and out.dtype == np.float32


def test_dtype_float64_kept_and_input_untouched():
    truth = _truth()
    keep = truth.copy()
    out = scale_phase_to_radians(truth, phase_sign=-1)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(truth, keep)
    np.testing.assert_array_equal(out, -keep)


@pytest.mark.parametrize(
    "values, needle",
    [
        (np.linspace(-20, 20, 50), "units='rad'"),  # unwrapped radians, or anything else
        (np.linspace(-20, 20, 50), "'range'"),
        (np.linspace(-0.0037, 0.0037, 50), "'range'"),  # arbitrary scaling (ROMEO test data)
        (np.arange(0, 361, dtype=np.int16), "degrees"),  # 0..360: degrees or integers?
        (np.arange(-180, 181).astype(np.float32), "degrees"),
        (np.arange(-2000, 2001, dtype=np.int16), "siemens"),  # matches no range
        (np.arange(-2000, 2001, dtype=np.int16), "milliradians"),
        (np.arange(-3, 4, dtype=np.int16), "units="),  # integers within [-pi, pi] are not radians
        (np.linspace(-np.pi, 0.5, 50), "units="),  # does not fill [-pi, pi]
    ],
)
def test_ambiguous_phase_raises_with_options(values, needle):
    with pytest.raises(ValueError, match=r"units=") as err:
        scale_phase_to_radians(values)
    assert needle in str(err.value)


def test_range_option_maps_min_max_to_two_pi():
    truth = _truth()
    stored = (truth + np.pi) * 0.0037 / np.pi - 0.0037  # linear, arbitrary units
    out = scale_phase_to_radians(stored.astype(np.float32), units="range")
    assert out.dtype == np.float32
    assert out.min() == pytest.approx(-np.pi, abs=1e-5)
    assert _circ_err(out, truth) < 1e-4


def test_explicit_units_reject_out_of_range_values():
    with pytest.raises(ValueError, match=r"siemens.*span"):
        scale_phase_to_radians(np.array([0, 10000]), units="siemens")
    with pytest.raises(ValueError, match="milliradians"):
        scale_phase_to_radians(np.array([-5000, 5000]), units="milliradians")
    with pytest.raises(ValueError, match="unknown phase units"):
        scale_phase_to_radians(np.zeros(3), units="gradians")
    with pytest.raises(ValueError, match="phase_sign"):
        scale_phase_to_radians(np.zeros(3), units="rad", phase_sign=2)


def test_phase_sign_ge_convention():
    """GE stores phase with the opposite sign: phase_sign=-1 restores chimap's convention."""
    truth = _truth()
    ge_stored = np.round(-truth * 1000).astype(np.int16)  # GE: mrad, opposite sign
    out = scale_phase_to_radians(ge_stored, units="milliradians", phase_sign=-1)
    assert _circ_err(out, truth) < 1e-3
    wrong = scale_phase_to_radians(ge_stored, units="milliradians")
    assert _circ_err(wrong, truth) > 1.0


def test_nan_ignored_by_detection_and_kept():
    stored = np.round(_truth() * 4096 / np.pi)
    stored[0, 0, 2] = np.nan
    with pytest.warns(PhaseScalingWarning):
        out = scale_phase_to_radians(stored)
    assert np.isnan(out[0, 0, 2]) and np.isfinite(out).sum() == out.size - 1
    with pytest.raises(ValueError, match="no finite"):
        scale_phase_to_radians(np.full(4, np.nan))


def test_vendor_mode_never_picks_radians():
    with pytest.raises(ValueError, match="units="):
        scale_phase_to_radians(_truth(), units="vendor")
