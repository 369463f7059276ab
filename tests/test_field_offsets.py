"""Tests for chimap.field.offsets (MCPC-3D-S phase-offset estimation and removal)."""

import numpy as np
import pytest

from chimap.field.combine import fit_field_complex, fit_field_linear
from chimap.field.offsets import mcpc3ds, remove_phase_offset
from chimap.field.unwrap import wrap
from chimap.units import hz_per_ppm

SHAPE = (24, 20, 16)
VOXEL = (1.5, 1.0, 2.0)


def _coords(shape=SHAPE):
    return np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")


def _synthetic(te, *, field_amp=30.0, offset_amp=2.5, noise=0.0, rng=0, dtype=np.float64):
    """Smooth field (Hz) and smooth offset (rad, beyond +-pi), wrapped multi-echo phase."""
    x, y, z = _coords()
    field = field_amp * (0.6 * x + 0.3 * y * z + 0.4 * np.sin(2 * z))
    offset = 1.0 + offset_amp * (0.7 * x - 0.5 * y + 0.3 * z * z)
    te = np.asarray(te)
    mag = np.broadcast_to((1.0 + 0.3 * x)[..., None] * np.exp(-te / 0.05), SHAPE + (te.size,)).copy()
    sig = mag * np.exp(1j * (offset[..., None] + 2 * np.pi * field[..., None] * te))
    if noise:
        g = np.random.default_rng(rng)
        sig = sig + noise * (g.standard_normal(sig.shape) + 1j * g.standard_normal(sig.shape))
    mask = np.ones(SHAPE, bool)
    return (np.abs(sig).astype(dtype), np.angle(sig).astype(dtype), mask, field, offset)


def _ang(a):
    return np.angle(np.exp(1j * np.asarray(a, dtype=np.float64)))


def test_exact_without_smoothing():
    te = [0.004, 0.009, 0.014]
    mag, pha, mask, _field, offset = _synthetic(te)
    est = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=0)
    assert np.max(np.abs(_ang(est - offset))) < 1e-9
    assert np.all(est >= -np.pi) and np.all(est < np.pi)


def test_smoothed_estimate_with_noise():
    te = [0.004, 0.009, 0.014]
    # a small FOV (36 x 20 x 32 mm): smoothing biases a curved offset, so keep it gentle
    mag, pha, mask, _field, offset = _synthetic(te, noise=0.05, rng=1, offset_amp=1.0)
    raw = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=0)
    est = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=2.0)
    err_raw = np.abs(_ang(raw - offset))
    err = np.abs(_ang(est - offset))
    # measured: median error 0.016 rad smoothed vs 0.074 rad raw
    assert np.median(err) < 0.03
    assert np.median(err) < 0.5 * np.median(err_raw)  # smoothing removes noise


def test_wrapped_difference_harmless_when_te2_is_twice_te1():
    # |f| up to 150 Hz: 2 pi f dTE wraps (dTE = 5 ms -> limit 100 Hz) but TE1 / dTE = 1
    te = [0.005, 0.010, 0.015]
    mag, pha, mask, field, offset = _synthetic(te, field_amp=150.0)
    dphi = 2 * np.pi * field * 0.005
    assert np.abs(dphi).max() > np.pi
    est = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=0)
    assert np.max(np.abs(_ang(est - offset))) < 1e-9


def test_unwrap_callable_fixes_wrapped_difference():
    te = [0.004, 0.009, 0.014]  # TE1 / dTE = 0.8: a wrap costs 0.8 * 2 pi
    mag, pha, mask, field, offset = _synthetic(te, field_amp=150.0)
    est_plain = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=0)
    assert np.max(np.abs(_ang(est_plain - offset))) > 1.0
    true_dphi = 2 * np.pi * field * 0.005
    calls = []

    def oracle(p, m, vs):  # exact unwrapping up to a global 2 pi multiple, as an unwrapper gives
        calls.append((p.shape, m.dtype, tuple(vs)))
        return p + 2 * np.pi * np.round((true_dphi - p) / (2 * np.pi)) + 4 * np.pi

    est = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=0, unwrap=oracle)
    assert calls == [(SHAPE, np.dtype(bool), VOXEL)]
    assert np.max(np.abs(_ang(est - offset))) < 1e-9


def test_unwrap_difference_uses_region_growing():
    te = [0.004, 0.009, 0.014]  # TE1 / dTE = 0.8: a wrap of the difference costs 0.8 * 2 pi
    mag, pha, mask, _field, offset = _synthetic(te, field_amp=150.0)
    est = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=0, unwrap_difference=True)
    assert np.max(np.abs(_ang(est - offset))) < 1e-9
    no_mag = mcpc3ds(pha, mask, VOXEL, echo_times=te, sigma_mm=0, unwrap_difference=True)
    assert np.max(np.abs(_ang(no_mag - offset))) < 1e-9


def _ramp_in_sphere(shape=(40, 40, 30), vs=(1.0, 1.0, 1.5)):
    """A linear offset (0.04 rad/mm, total well beyond 2 pi over the grid), a gentle field and
    a spherical mask of radius 16 mm: the mask's edge is inside every smoothing window."""
    idx = np.indices(shape).astype(np.float64)
    pos = [(idx[k] - (shape[k] - 1) / 2) * vs[k] for k in range(3)]
    offset = 0.5 + 0.04 * pos[0] - 0.03 * pos[1] + 0.05 * pos[2]
    field = 10.0 * np.sin(pos[0] / 15.0)  # Hz
    te = np.array([0.004, 0.008, 0.012])
    sig = np.exp(1j * (offset[..., None] + 2 * np.pi * field[..., None] * te))
    mask = sum(p * p for p in pos) <= 16.0**2
    return np.abs(sig), np.angle(sig), mask, offset, te, vs


def test_local_linear_smoothing_is_exact_for_a_linear_offset_up_to_the_edge():
    mag, pha, mask, offset, te, vs = _ramp_in_sphere()
    gauss = mcpc3ds(pha, mask, vs, magnitude=mag, echo_times=te, sigma_mm=5.0)
    plane = mcpc3ds(pha, mask, vs, magnitude=mag, echo_times=te, sigma_mm=5.0, smoothing="local_linear")
    err_gauss = np.abs(_ang(gauss - offset))[mask]
    err_plane = np.abs(_ang(plane - offset))[mask]
    # a weighted mean is pulled towards the interior where the window is one-sided ...
    assert err_gauss.max() > 0.05
    # ... a fitted plane is not (measured 6e-7: float32 filters)
    assert err_plane.max() < 1e-5


@pytest.mark.parametrize("sigma", [(1.5, 2.0, 1.2), (1.5, 0.0, 2.0)])
def test_shared_moment_passes_equal_scipys_gaussian_derivatives(sigma):
    # the local plane's moments share their one-dimensional passes; each must still be the
    # Gaussian derivative filter scipy computes, bit for bit (an axis without smoothing is
    # skipped, orders on it included, as scipy does)
    from scipy import ndimage

    from chimap.field.offsets import _gaussian_moments

    x = np.random.default_rng(5).random((17, 12, 14)).astype(np.float32)
    moments = _gaussian_moments(x, np.asarray(sigma), 2)
    assert sorted(moments) == sorted(o for o in np.ndindex(3, 3, 3) if sum(o) <= 2)
    for order, got in moments.items():
        expected = ndimage.gaussian_filter(x, sigma, order=list(order), mode="constant", cval=0.0, truncate=3.0)
        assert got.dtype == np.float32 and np.array_equal(got, expected), order


def test_local_linear_with_one_axis_unsmoothed_fits_a_plane_per_slice():
    # sigma 0 along the last axis: each slice gets its own plane in the other two axes, so a
    # ramp along the first two axes whose slope changes from slice to slice is still exact
    x, y, z = _coords()
    offset = 0.4 + (0.8 + 0.5 * z) * x - (0.3 - 0.4 * z) * y
    te = np.array([0.004, 0.009])
    mag = np.ones(SHAPE + (2,))
    pha = np.angle(np.exp(1j * (offset[..., None] + 2 * np.pi * 20.0 * x[..., None] * te)))
    est = mcpc3ds(pha, np.ones(SHAPE, bool), VOXEL, magnitude=mag, echo_times=te, sigma_mm=(4.0, 4.0, 0.0),
                  smoothing="local_linear")
    assert np.abs(_ang(est - offset)).max() < 1e-5


def test_local_linear_falls_back_to_gaussian_where_a_plane_is_undetermined():
    te = [0.004, 0.009, 0.014]
    mag, pha, _mask, _field, _offset = _synthetic(te)
    line = np.zeros(SHAPE, bool)
    line[5:15, 10, 8] = True  # no spread across the line: the plane's slopes are undetermined
    kw = dict(magnitude=mag, echo_times=te, sigma_mm=3.0)
    gauss = mcpc3ds(pha, line, VOXEL, **kw)
    plane = mcpc3ds(pha, line, VOXEL, smoothing="local_linear", **kw)
    np.testing.assert_allclose(plane[line], gauss[line], atol=1e-12)
    single = np.zeros(SHAPE, bool)
    single[10, 10, 8] = True
    assert np.all(np.isfinite(mcpc3ds(pha, single, VOXEL, smoothing="local_linear", unwrap_difference=True, **kw)))


def test_local_linear_smoothing_removes_noise():
    te = [0.004, 0.009, 0.014]
    mag, pha, mask, _field, offset = _synthetic(te, noise=0.05, rng=1, offset_amp=1.0)
    raw = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=0)
    est = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=2.0, smoothing="local_linear")
    err_raw = np.abs(_ang(raw - offset))
    err = np.abs(_ang(est - offset))
    assert np.median(err) < 0.5 * np.median(err_raw)
    assert est.dtype == pha.dtype


def test_other_echo_pair_and_no_magnitude():
    te = [0.003, 0.006, 0.009, 0.012]
    _mag, pha, mask, _field, offset = _synthetic(te)
    est = mcpc3ds(pha, mask, VOXEL, echo_times=te, echoes=(1, 3), sigma_mm=0)
    assert np.max(np.abs(_ang(est - offset))) < 1e-9


def test_mask_and_outside_values():
    te = [0.004, 0.009, 0.014]
    mag, pha, mask, _field, offset = _synthetic(te, offset_amp=1.0)
    mask = np.zeros(SHAPE, bool)
    mask[4:20, 4:16, 3:13] = True
    pha_nan = pha.copy()
    pha_nan[0, 0, 0, :] = np.nan  # outside the mask: does not spread into the estimate
    est = mcpc3ds(pha_nan, mask, VOXEL, magnitude=mag, echo_times=te, sigma_mm=2.0)
    err = np.abs(_ang(est - offset))
    assert est.shape == SHAPE
    assert np.isfinite(est).sum() >= est.size - 1
    assert np.median(err[mask]) < 0.05  # noise-free: only the smoothing bias (0.022 measured)
    # outside: extrapolated by the normalised smoothing, good close to the mask only
    from scipy import ndimage

    shell = ndimage.binary_dilation(mask) & ~mask
    assert np.median(err[shell]) < 0.1


def test_float32_preserved_and_inputs_untouched():
    te = [0.004, 0.009, 0.014]
    mag, pha, mask, _field, _offset = _synthetic(te, dtype=np.float32)
    pha0, mag0 = pha.copy(), mag.copy()
    est = mcpc3ds(pha, mask, VOXEL, magnitude=mag, echo_times=te)
    assert est.dtype == np.float32
    np.testing.assert_array_equal(pha, pha0)
    np.testing.assert_array_equal(mag, mag0)
    out = remove_phase_offset(pha, est)
    assert out.dtype == np.float32 and out.shape == pha.shape
    np.testing.assert_array_equal(pha, pha0)


def test_remove_phase_offset_round_trip():
    te = [0.004, 0.009, 0.014]
    _mag, pha, _mask, field, offset = _synthetic(te)
    clean = remove_phase_offset(pha, offset)
    expected = 2 * np.pi * field[..., None] * np.asarray(te)
    assert np.max(np.abs(_ang(clean - expected))) < 1e-9
    assert clean.min() >= -np.pi and clean.max() < np.pi
    # one echo (I, J, K)
    one = remove_phase_offset(pha[..., 0], offset)
    np.testing.assert_allclose(one, clean[..., 0])
    np.testing.assert_allclose(wrap(np.array([np.pi, 3 * np.pi, -np.pi])), [np.pi] * 3)
    with pytest.raises(ValueError, match="offset has shape"):
        remove_phase_offset(pha, offset[:-1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"echo_times": [4.0, 9.0, 14.0]}, "milliseconds"),
        ({"echo_times": [0.004, 0.009]}, "echo"),
        ({"echo_times": [0.004, 0.009, 0.014], "echoes": (0, 0)}, "two different"),
        ({"echo_times": [0.004, 0.009, 0.014], "echoes": (0, 5)}, "two different"),
        ({"echo_times": [0.004, 0.009, 0.014], "echoes": (1, 0)}, "after"),
        ({"echo_times": [0.004, 0.009, 0.014], "sigma_mm": -1}, "sigma_mm"),
        ({"echo_times": [0.004, 0.009, 0.014], "unwrap": "romeo"}, "callable"),
        ({"echo_times": [0.004, 0.009, 0.014], "smoothing": "median"}, "smoothing"),
        ({"echo_times": [0.004, 0.009, 0.014], "unwrap": lambda p, m, v: p[:-1]}, "unwrap returned"),
    ],
)
def test_bad_inputs(kwargs, match):
    mag, pha, mask, _, _ = _synthetic([0.004, 0.009, 0.014])
    with pytest.raises(ValueError, match=match):
        mcpc3ds(pha, mask, VOXEL, magnitude=mag, **kwargs)


def test_bad_arrays():
    te = [0.004, 0.009, 0.014]
    mag, pha, mask, _, _ = _synthetic(te)
    with pytest.raises(ValueError, match="two or more echoes"):
        mcpc3ds(pha[..., 0], mask, VOXEL, echo_times=te[:1])
    with pytest.raises(ValueError, match="mask has shape"):
        mcpc3ds(pha, mask[:-1], VOXEL, echo_times=te)
    with pytest.raises(ValueError, match="magnitude has shape"):
        mcpc3ds(pha, mask, VOXEL, magnitude=mag[..., :2], echo_times=te)
    bad = pha.copy()
    bad[3, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mcpc3ds(bad, mask, VOXEL, echo_times=te)
    with pytest.raises(ValueError, match="millimetres"):
        mcpc3ds(pha, mask, 0.001, echo_times=te)


# --- simulated head: MCPC-3D-S, then the field fits, against the simulator's truth -----------


@pytest.fixture(scope="module")
def head():
    from chimap.sim.head import simulate_head

    return simulate_head(voxel_size=3.0, snr=100, rng=0, oversample=1)


def test_head_offset_and_field(head):
    m = head.brain_mask
    te = head.echo_times
    off = mcpc3ds(head.phase, m, head.voxel_size, magnitude=head.magnitude, echo_times=te)
    err = np.abs(_ang(off - head.phase_offset))[m]
    # measured: median 0.0036 rad, 95th percentile 0.055 rad (3 mm, SNR 100, sigma 10 mm)
    assert np.median(err) < 0.1
    assert np.percentile(err, 95) < 0.3

    clean = remove_phase_offset(head.phase, off)
    hz = hz_per_ppm(head.field_strength)
    # complex fit on wrapped phase: compare where the field is not aliased (|f| < 1 / (2 dTE))
    field, phi0, noise = fit_field_complex(head.magnitude, clean, m, head.voxel_size, echo_times=te,
                                           field_strength=head.field_strength)
    limit_ppm = 0.8 / (2 * (te[1] - te[0])) / hz
    ok = m & (np.abs(head.total_field) < limit_ppm)
    assert ok.sum() > 0.95 * m.sum()
    e = (field - head.total_field)[ok]
    # measured: median |error| 6.4e-4 ppm, error SD 9.7e-4 ppm, median noise map 9.5e-4 ppm
    assert np.median(np.abs(e)) < 3e-3
    assert 0.6 < e.std() / np.median(noise[ok]) < 1.6
    assert np.median(np.abs(_ang(phi0))[ok]) < 0.05  # offset already removed

    # linear fit of (oracle-)unwrapped phase through the origin
    true_phase = 2 * np.pi * head.total_field[..., None].astype(np.float64) * hz * te
    unwrapped = (clean + 2 * np.pi * np.round((true_phase - clean) / (2 * np.pi))).astype(np.float32)
    lin, _rel = fit_field_linear(unwrapped, m, head.voxel_size, echo_times=te, magnitude=head.magnitude,
                                field_strength=head.field_strength)
    e_lin = (lin - head.total_field)[m]
    assert np.median(np.abs(e_lin)) < 3e-3
    assert lin.dtype == np.float32
