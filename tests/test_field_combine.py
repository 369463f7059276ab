"""Tests for chimap.field.combine (multi-echo field fits and weighted combination)."""

import numpy as np
import pytest
from scipy import stats

from chimap.field.combine import (
    fit_field_complex,
    fit_field_linear,
    weighted_echo_average,
)

SHAPE = (20, 16, 12)
VOXEL = (1.0, 1.2, 2.5)
TE = np.array([0.004, 0.008, 0.012, 0.016])


def _coords():
    return np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")


def _case(te=TE, *, field_amp=40.0, offset=0.0, noise=0.0, rng=0, dtype=np.float64):
    """Field (Hz) with |f| < 1 / (2 dTE); magnitude low in half of the volume; phase unwrapped."""
    x, y, z = _coords()
    field = field_amp * (0.7 * x + 0.2 * np.cos(3 * y) - 0.1 * z)
    te = np.asarray(te, dtype=float)
    m0 = np.where(x > 0, 1.0, 0.25)
    mag = m0[..., None] * np.exp(-te / 0.04)
    off = offset * (1 + 0.5 * y) if np.ndim(offset) == 0 else offset
    phase = off[..., None] + 2 * np.pi * field[..., None] * te if np.ndim(off) else \
        off + 2 * np.pi * field[..., None] * te
    sig = mag * np.exp(1j * phase)
    if noise:
        g = np.random.default_rng(rng)
        sig = sig + noise * (g.standard_normal(sig.shape) + 1j * g.standard_normal(sig.shape))
    # "unwrapped" noisy phase: true phase plus the (small) noise-induced deviation
    pha_unw = phase + np.angle(sig * np.exp(-1j * phase))
    mask = np.ones(SHAPE, bool)
    return {"mag": np.abs(sig).astype(dtype), "wrapped": np.angle(sig).astype(dtype),
                "unwrapped": pha_unw.astype(dtype), "mask": mask, "field": field, "offset": off, "low": x <= 0}


# --- noise-free analytic cases ----------------------------------------------------------------


def test_linear_exact():
    c = _case()
    for mag in (None, c["mag"]):
        f, rel = fit_field_linear(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=mag)
        assert np.max(np.abs(f - c["field"])) < 1e-9
        assert np.max(rel) < 1e-9  # zero residuals


def test_linear_with_intercept_exact():
    c = _case(offset=0.8)
    f, _rel = fit_field_linear(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=c["mag"],
                              fit_offset=True)
    assert np.max(np.abs(f - c["field"])) < 1e-9
    # through the origin the offset biases the field
    f0, _ = fit_field_linear(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=c["mag"])
    assert np.max(np.abs(f0 - c["field"])) > 1.0


@pytest.mark.parametrize("te", [TE, np.array([0.003, 0.0065, 0.012, 0.0185, 0.021])])
def test_complex_exact_on_wrapped_phase(te):
    c = _case(te, offset=2.5)
    assert np.abs(c["unwrapped"]).max() > np.pi  # the input phase does wrap
    f, phi0, _noise = fit_field_complex(c["mag"], c["wrapped"], c["mask"], VOXEL, echo_times=te)
    assert np.max(np.abs(f - c["field"])) < 1e-4
    assert np.max(np.abs(np.angle(np.exp(1j * (phi0 - c["offset"]))))) < 1e-6
    assert phi0.min() >= -np.pi and phi0.max() < np.pi


def test_complex_two_echoes_and_residual():
    te = TE[:2]
    c = _case(te, offset=1.0)
    f, _phi0, noise, rr = fit_field_complex(c["mag"], c["wrapped"], c["mask"], VOXEL, echo_times=te,
                                           return_residual=True)
    assert np.max(np.abs(f - c["field"])) < 1e-4
    assert np.max(rr) < 1e-12
    assert np.all(np.isfinite(noise)) and np.all(noise > 0)  # relative (sigma = 1), no dof


def test_complex_aliases_large_fields():
    # |f| up to 280 Hz with dTE = 4 ms (limit 125 Hz): omega is unique only modulo 2 pi / dTE
    c = _case(field_amp=280.0, offset=0.5)
    f, phi0, _ = fit_field_complex(c["mag"], c["wrapped"], c["mask"], VOXEL, echo_times=TE)
    dte = TE[1] - TE[0]
    assert np.abs(f).max() <= 1 / (2 * dte) + 1e-9
    k = (c["field"] - f) * dte
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)  # aliased by whole multiples
    assert np.any(np.round(k) != 0)
    # the aliased model still reproduces the measured signal (uniform echo spacing)
    model = phi0[..., None] + 2 * np.pi * f[..., None] * TE
    assert np.max(np.abs(np.angle(np.exp(1j * (model - c["wrapped"]))))) < 1e-6


def test_weighted_average_exact_and_equivalence():
    c = _case(noise=0.02, rng=3)
    for w in ("phase_snr", "phase_var", "average", "te", "mag"):
        f, _rel = weighted_echo_average(_case()["unwrapped"], c["mask"], VOXEL, echo_times=TE,
                                       magnitude=c["mag"], weighting=w)
        assert np.max(np.abs(f - c["field"])) < 1e-9, w
    # inverse-variance weights |S|^2 TE^2 equal the through-origin WLS fit (noisy data)
    fa, ra = weighted_echo_average(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=c["mag"],
                                   weighting="phase_var")
    fl, rl = fit_field_linear(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=c["mag"])
    np.testing.assert_allclose(fa, fl, atol=1e-9)
    np.testing.assert_allclose(ra, rl, rtol=1e-6)


# --- noise: the reliability maps predict the error -------------------------------------------


def _check_reliability(err, rel, low):
    err, rel = np.abs(err), np.asarray(rel, float)
    for region in (low, ~low):
        ratio = np.sqrt(np.mean(err[region] ** 2)) / np.sqrt(np.mean(rel[region] ** 2))
        assert 0.8 < ratio < 1.25, ratio  # calibrated standard error
    assert np.median(rel[low]) > 2 * np.median(rel[~low])  # larger where the magnitude is low
    assert np.median(err[low]) > 2 * np.median(err[~low])
    rho = stats.spearmanr(rel.ravel(), err.ravel())[0]
    assert rho > 0.3, rho
    return rho


def test_reliability_tracks_error():
    c = _case(noise=0.03, rng=5)
    low = c["low"]
    f, rel = fit_field_linear(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=c["mag"])
    _check_reliability(f - c["field"], rel, low)
    fg, relg = fit_field_linear(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=c["mag"],
                                noise="global")
    _check_reliability(fg - c["field"], relg, low)
    fa, rela = weighted_echo_average(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=c["mag"])
    _check_reliability(fa - c["field"], rela, low)
    fc, _, nc = fit_field_complex(c["mag"], c["wrapped"], c["mask"], VOXEL, echo_times=TE)
    _check_reliability(fc - c["field"], nc, low)
    # a known noise level gives the model standard error directly
    _fk, _, nk = fit_field_complex(c["mag"], c["wrapped"], c["mask"], VOXEL, echo_times=TE, noise=0.03)
    np.testing.assert_allclose(np.median(nk), np.median(nc), rtol=0.1)


def test_units_hz_vs_ppm():
    c = _case(noise=0.02, rng=2)
    hz_per_ppm_3t = 127.73  # 42.577 MHz/T * 3 T * 1e-6
    for fun in (
        lambda fs: fit_field_linear(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=c["mag"],
                                    field_strength=fs),
        lambda fs: weighted_echo_average(c["unwrapped"], c["mask"], VOXEL, echo_times=TE,
                                         magnitude=c["mag"], field_strength=fs),
        lambda fs: fit_field_complex(c["mag"], c["wrapped"], c["mask"], VOXEL, echo_times=TE,
                                     field_strength=fs)[::2],
    ):
        f_hz, r_hz = fun(None)
        f_ppm, r_ppm = fun(3.0)
        np.testing.assert_allclose(f_ppm * hz_per_ppm_3t, f_hz, rtol=1e-4)
        np.testing.assert_allclose(r_ppm * hz_per_ppm_3t, r_hz, rtol=1e-4)


def test_single_echo():
    c = _case(te=TE[:1])
    for arr in (c["unwrapped"], c["unwrapped"][..., 0]):  # (I, J, K, 1) or (I, J, K)
        f, rel = fit_field_linear(arr, c["mask"], VOXEL, echo_times=TE[:1], magnitude=c["mag"])
        np.testing.assert_allclose(f, c["unwrapped"][..., 0] / (2 * np.pi * TE[0]), atol=1e-9)
        assert np.all(np.isfinite(rel)) and np.all(rel > 0)
        fa, _ = weighted_echo_average(arr, c["mask"], VOXEL, echo_times=TE[0])
        np.testing.assert_allclose(fa, f, atol=1e-9)
    with pytest.raises(ValueError, match="two or more echoes"):
        fit_field_complex(c["mag"], c["wrapped"], c["mask"], VOXEL, echo_times=TE[:1])
    with pytest.raises(ValueError, match="at least 2 echoes"):
        fit_field_linear(c["unwrapped"], c["mask"], VOXEL, echo_times=TE[:1], fit_offset=True)


def test_dtype_mask_and_inputs_untouched():
    c = _case(noise=0.01, dtype=np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[2:18, 3:13, 1:11] = True
    mag, unw, wr = c["mag"].copy(), c["unwrapped"].copy(), c["wrapped"].copy()
    unw[0, 0, 0, :] = np.nan  # outside the mask: ignored
    unw_copy = unw.copy()
    outs = [*fit_field_linear(unw, mask, VOXEL, echo_times=TE, magnitude=mag),
            *weighted_echo_average(unw, mask, VOXEL, echo_times=TE, magnitude=mag),
            *fit_field_complex(mag, wr, mask, VOXEL, echo_times=TE, return_residual=True)]
    for o in outs:
        assert o.dtype == np.float32 and o.shape == SHAPE
        assert np.all(o[~mask] == 0)
        assert np.all(np.isfinite(o))
    np.testing.assert_array_equal(unw, unw_copy)
    np.testing.assert_array_equal(mag, c["mag"])
    np.testing.assert_array_equal(wr, c["wrapped"])
    # float64 stays float64
    f64, _ = fit_field_linear(unw.astype(np.float64), mask, VOXEL, echo_times=TE)
    assert f64.dtype == np.float64


def test_zero_magnitude_voxel():
    c = _case()
    mag = c["mag"].copy()
    mag[5, 5, 5, :] = 0.0
    f, rel = fit_field_linear(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, magnitude=mag)
    assert f[5, 5, 5] == 0 and np.isinf(rel[5, 5, 5])
    f, _, n = fit_field_complex(mag, c["wrapped"], c["mask"], VOXEL, echo_times=TE)
    assert f[5, 5, 5] == 0 and np.isinf(n[5, 5, 5])
    assert np.max(np.abs(f - c["field"])[rel < np.inf]) < 1e-4


# --- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["linear", "average", "complex"])
def test_bad_inputs(which):
    c = _case()

    def call(phase=None, mask=None, mag=None, **kw):
        phase = c["unwrapped"] if phase is None else phase
        mask = c["mask"] if mask is None else mask
        mag = c["mag"] if mag is None else mag
        kw.setdefault("echo_times", TE)
        if which == "linear":
            return fit_field_linear(phase, mask, VOXEL, magnitude=mag, **kw)
        if which == "average":
            return weighted_echo_average(phase, mask, VOXEL, magnitude=mag, **kw)
        return fit_field_complex(mag, phase, mask, VOXEL, **kw)

    with pytest.raises(ValueError, match="milliseconds"):
        call(echo_times=TE * 1000)
    with pytest.raises(ValueError, match="echo time"):
        call(echo_times=TE[:3])
    with pytest.raises(ValueError, match="magnitude has shape"):
        call(mag=c["mag"][..., :3])
    with pytest.raises(ValueError, match="mask has shape"):
        call(mask=c["mask"][:-1])
    with pytest.raises(ValueError, match="boolean"):
        call(mask=c["mask"] * 2)
    bad = c["unwrapped"].copy()
    bad[2, 2, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        call(phase=bad)
    badm = c["mag"].copy()
    badm[2, 2, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        call(mag=badm)
    with pytest.raises(ValueError, match="non-negative"):
        call(mag=-c["mag"])
    with pytest.raises(ValueError, match="noise"):
        call(noise="median")
    with pytest.raises(ValueError, match="tesla"):
        call(field_strength=3000)
    with pytest.raises(ValueError, match=r"\(I, J, K, E\)"):
        call(phase=c["unwrapped"][0, 0])


def test_bad_weighting_and_missing_magnitude():
    c = _case()
    with pytest.raises(ValueError, match="weighting"):
        weighted_echo_average(c["unwrapped"], c["mask"], VOXEL, echo_times=TE, weighting="snr")
    with pytest.raises(ValueError, match="magnitude is required"):
        fit_field_complex(None, c["wrapped"], c["mask"], VOXEL, echo_times=TE)
