"""Phase unwrapping: wrap helper, Laplacian, region growing (ROMEO-like) and temporal unwrapping."""

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from chimap.field.unwrap import (
    unwrap_laplacian,
    unwrap_region_growing,
    unwrap_temporal,
    wrap,
)
from chimap.units import ppm_to_rad

TWO_PI = 2 * np.pi


# --------------------------------------------------------------------------- helpers


def smooth_phase(shape=(48, 48, 48), voxel_size=(1.0, 1.0, 1.0), amplitude=20.0):
    """Quadratic + linear + Gaussian bumps, defined in mm so anisotropic grids sample one function."""
    vs = np.asarray(voxel_size, dtype=float)
    ext = 48.0  # mm, the physical size of the field of view along every axis
    c = (np.asarray(shape) - 1) / 2.0
    x, y, z = np.meshgrid(*[(np.arange(n) - c[a]) * vs[a] / (ext / 2) for a, n in enumerate(shape)],
                          indexing="ij")
    f = (0.55 * (x**2 + 0.6 * y**2) + 0.25 * z + 0.45 * np.exp(-((x - 0.3) ** 2 + y**2 + (z + 0.2) ** 2) / 0.1)
         - 0.35 * np.exp(-((x + 0.4) ** 2 + (y - 0.3) ** 2 + z**2) / 0.05))
    return amplitude * f


def ball(shape, voxel_size=(1.0, 1.0, 1.0), radius=20.0, center=None):
    vs = np.asarray(voxel_size, dtype=float)
    c = (np.asarray(shape) - 1) / 2.0 if center is None else np.asarray(center, dtype=float)
    g = np.meshgrid(*[((np.arange(n) - c[a]) * vs[a]) ** 2 for a, n in enumerate(shape)], indexing="ij")
    return sum(g) <= radius**2


def residual_wraps(u, mask):
    """Number of face-neighbour pairs inside the mask whose difference exceeds pi."""
    n = 0
    for a in range(u.ndim):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        pair = mask[tuple(lo)] & mask[tuple(hi)]
        n += int(np.sum((np.abs(u[tuple(hi)].astype(float) - u[tuple(lo)]) > np.pi) & pair))
    return n


def wrap_counts(out, phase):
    k = (out.astype(np.float64) - phase.astype(np.float64)) / TWO_PI
    return k, np.abs(k - np.round(k)).max()


# --------------------------------------------------------------------------- wrap


def test_wrap_interval_and_dtype():
    x = np.array([-3 * np.pi, -np.pi, -1.0, 0.0, np.pi, 3 * np.pi, 7.5, -20.0])
    w = wrap(x)
    assert np.all(w > -np.pi) and np.all(w <= np.pi)
    assert w[1] == pytest.approx(np.pi) and w[4] == pytest.approx(np.pi)
    k = (x - w) / TWO_PI
    np.testing.assert_allclose(k, np.round(k), atol=1e-12)
    assert wrap(x.astype(np.float32)).dtype == np.float32
    assert wrap(np.arange(10)).dtype == np.float64
    assert float(wrap(4.0)) == pytest.approx(4.0 - TWO_PI)
    with pytest.raises(ValueError, match="complex"):
        wrap(np.exp(1j * x))


# --------------------------------------------------------------------------- region growing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_mask", [False, True])
def test_region_growing_round_trip(dtype, use_mask):
    true = smooth_phase()
    assert true.max() - true.min() > 15  # many wraps
    phase = wrap(true).astype(dtype)
    mask = ball(true.shape, radius=22.0) if use_mask else None
    before = phase.copy()
    out = unwrap_region_growing(phase, mask, 1.0)
    np.testing.assert_array_equal(phase, before)  # input untouched
    assert out.dtype == dtype and out.shape == phase.shape
    assert wrap_counts(out, phase)[1] < 1e-5  # exact congruence with the input
    m = np.ones(true.shape, bool) if mask is None else mask
    shift = np.round((out.astype(float) - true) / TWO_PI)[m]
    assert np.all(shift == shift[0])  # truth up to one global multiple of 2*pi
    assert residual_wraps(out, m) == 0
    if mask is not None:
        np.testing.assert_array_equal(out[~mask], phase[~mask])  # outside: unchanged


def test_region_growing_anisotropic_noncubic_and_magnitude():
    vs = (1.0, 1.5, 2.4)
    shape = (48, 32, 20)  # the same 48 mm field of view on each axis
    true = smooth_phase(shape, vs)
    rng = np.random.default_rng(1)
    phase = wrap(true + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    mag = (1.0 + 0.2 * rng.random(shape)).astype(np.float32)
    mask = ball(shape, vs, radius=21.0)
    out = unwrap_region_growing(phase, mask, vs, magnitude=mag, seed="center")
    assert wrap_counts(out, phase)[1] < 1e-5
    shift = np.round((out - true) / TWO_PI)[mask]
    assert np.all(shift == shift[0])
    # seeds only change the global multiple
    out2 = unwrap_region_growing(phase, mask, vs, seed=tuple(int(v) for v in np.argwhere(mask)[0]))
    d = np.round((out2 - out) / TWO_PI)[mask]
    assert np.all(d == d[0])


def test_region_growing_components_and_template():
    shape = (48, 40, 40)
    true = smooth_phase(shape)
    a = ball(shape, radius=11.0, center=(12, 20, 20))
    b = ball(shape, radius=9.0, center=(36, 20, 20))
    assert not np.any(ndimage.binary_dilation(a) & b)  # disconnected
    mask = a | b
    phase = wrap(true)
    out = unwrap_region_growing(phase, mask, 1.0)
    assert wrap_counts(out, phase)[1] < 1e-5
    assert residual_wraps(out, mask) == 0
    for comp in (a, b):  # each component exact up to its own 2*pi multiple
        s = np.round((out - true) / TWO_PI)[comp]
        assert np.all(s == s[0])
    # aligned to the largest component: medians within pi
    assert abs(np.median(out[b]) - np.median(out[a])) <= np.pi
    # a template (e.g. a scaled previous echo) fixes every component's multiple: exact truth
    rng = np.random.default_rng(0)
    template = true + 0.3 * rng.standard_normal(shape)
    out_t = unwrap_region_growing(phase, mask, 1.0, template=template)
    np.testing.assert_allclose(out_t[mask], true[mask], atol=1e-9)
    # without alignment the second component keeps its own seed's multiple (k = 0 there)
    out_n = unwrap_region_growing(phase, mask, 1.0, align_components=False)
    assert wrap_counts(out_n, phase)[1] < 1e-5


def test_region_growing_correct_global():
    true = smooth_phase() + 5 * TWO_PI
    out = unwrap_region_growing(wrap(true), None, 1.0, correct_global=True)
    assert -np.pi < np.median(out) <= np.pi
    s = np.round((out - true) / TWO_PI)
    assert np.all(s == s.flat[0])


# --------------------------------------------------------------------------- Laplacian


def test_laplacian_exact_on_box_with_wrapped_differences():
    # no mask, every true neighbour difference below pi: the mirror (DCT) solve of the
    # wrapped-difference Laplacian is exact up to the constant
    true = smooth_phase()
    out = unwrap_laplacian(wrap(true), None, 1.0, formula="wrapped")
    err = out - true
    assert np.abs(err - err.mean()).max() < 1e-8
    # the sin/cos estimate (Schofield & Zhu) shrinks large gradients (here up to 1.6 rad/voxel):
    # a smooth deviation remains
    out = unwrap_laplacian(wrap(true), None, 1.0, formula="sincos")
    err = out - true
    err -= err.mean()
    assert err.std() < 0.3 and np.abs(err).max() < 1.5  # measured 0.23 / 1.12 rad
    # not congruent with the input
    assert wrap_counts(out, wrap(true))[1] > 0.01


@pytest.mark.parametrize("pad", ["mirror", "zero"])
def test_laplacian_masked_anisotropic_float32(pad):
    vs = (1.0, 1.5, 2.4)
    shape = (48, 32, 20)
    true = smooth_phase(shape, vs)  # gradients up to 2.9 rad/voxel along the 2.4 mm axis
    mask = ball(shape, vs, radius=21.0)
    phase = wrap(true).astype(np.float32)
    # wrapped differences + conjugate-gradient solve of the masked Poisson problem: ~exact
    out = unwrap_laplacian(phase, mask, vs, pad=pad, formula="wrapped")
    assert out.dtype == np.float32
    assert np.all(out[~mask] == 0)
    err = (out - true)[mask]
    err -= np.median(err)
    assert err.std() < 0.01 and np.abs(err).max() < 0.05  # measured 4e-4 / 4e-3 rad
    # sin/cos: smooth deviation, measured std 0.42 rad (max 2.1)
    err = (unwrap_laplacian(phase, mask, vs, pad=pad, formula="sincos") - true)[mask]
    err -= np.median(err)
    assert err.std() < 0.6
    # the classic single box solve leaves a larger harmonic deviation (measured 1.0-1.7 rad)
    err0 = (unwrap_laplacian(phase, mask, vs, pad=pad, iterations=0, formula="sincos") - true)[mask]
    err0 -= np.median(err0)
    assert err0.std() > 2 * err.std()
    # output is circularly aligned with the input
    out = unwrap_laplacian(phase, mask, vs, pad=pad, formula="sincos")
    assert abs(np.angle(np.mean(np.exp(1j * (phase[mask] - out[mask]))))) < 1e-3


# --------------------------------------------------------------------------- temporal


def test_temporal_exact_on_synthetic_echoes():
    shape = (40, 40, 32)
    field = smooth_phase(shape, amplitude=1.0)
    mask = ball(shape, radius=17.0)
    tes = np.array([0.004, 0.0095, 0.015, 0.0205])  # non-integer TE ratios
    rate = 1400.0  # rad/s per unit of field: the last echo spans ~20 rad
    true = np.stack([field * rate * te for te in tes], axis=-1)
    rng = np.random.default_rng(3)
    offset = np.pi * np.sin(np.linspace(0, 2, shape[0]))[:, None, None] * np.ones(shape)
    phases = wrap(true + offset[..., None] + 0.02 * rng.standard_normal(true.shape)).astype(np.float32)
    before = phases.copy()
    out = unwrap_temporal(phases, mask, 1.0, echo_times=tes, phase_offset=offset)
    np.testing.assert_array_equal(phases, before)
    assert out.dtype == np.float32 and out.shape == phases.shape
    assert wrap_counts(out, phases)[1] < 1e-5
    for e in range(len(tes)):
        d = (out[..., e] - offset - true[..., e])[mask]
        assert np.abs(d).max() < 0.2, e  # the truth itself, no 2*pi multiple left
        assert residual_wraps(out[..., e], mask) == 0
    # offset already removed by the caller: same result minus the offset
    out2 = unwrap_temporal(wrap(phases - offset[..., None]), mask, 1.0, echo_times=tes,
                           magnitude=np.ones(shape), template_echo=1)
    np.testing.assert_allclose(out2[mask], (out - offset[..., None])[mask], atol=1e-4)


def test_temporal_global_multiple_from_te_consistency():
    # the template echo's median phase (4.5 rad) lies outside (-pi, pi]: the median rule alone
    # would be off by 2*pi; the non-integer TE ratios single out the right multiple
    shape = (32, 32, 24)
    mask = ball(shape, radius=13.0)
    tes = np.array([0.005, 0.012, 0.019])
    field = smooth_phase(shape, amplitude=0.3) + 4.5
    true = np.stack([field * te / tes[0] for te in tes], axis=-1)
    out = unwrap_temporal(wrap(true), mask, 1.0, echo_times=tes)
    for e in range(3):
        np.testing.assert_allclose(out[..., e][mask], true[..., e][mask], atol=1e-9)


# --------------------------------------------------------------------------- simulated head


@pytest.fixture(scope="module")
def head():
    from chimap.sim.head import simulate_head

    h = simulate_head(voxel_size=4.0, snr=100, rng=0)
    eroded = ndimage.binary_erosion(h.brain_mask)
    truth = np.stack([ppm_to_rad(h.total_field, echo_time=te, field_strength=h.field_strength) + h.phase_offset
                      for te in h.echo_times], axis=-1)
    return h, eroded, truth


def test_head_region_growing_last_echo(head):
    h, eroded, truth = head
    out = unwrap_region_growing(h.phase[..., -1], h.brain_mask, h.voxel_size, magnitude=h.magnitude[..., -1])
    assert out.dtype == np.float32
    assert wrap_counts(out, h.phase[..., -1])[1] < 1e-5
    k = np.round((out - truth[..., -1]) / TWO_PI)[eroded]
    _, counts = np.unique(k, return_counts=True)
    assert counts.max() / eroded.sum() > 0.99  # measured 99.79 % (4 mm, TE 26 ms)


def test_head_temporal_all_echoes(head):
    h, eroded, truth = head
    out = unwrap_temporal(h.phase, h.brain_mask, h.voxel_size, echo_times=h.echo_times,
                          magnitude=h.magnitude, phase_offset=h.phase_offset)
    for e in range(len(h.echo_times)):
        k = np.round((out[..., e] - truth[..., e]) / TWO_PI)[eroded]
        assert np.mean(k == 0) > 0.99, e  # no global multiple left; measured >= 99.96 %


def test_head_laplacian_error(head):
    h, eroded, truth = head
    out = unwrap_laplacian(h.phase[..., -1], h.brain_mask, h.voxel_size, formula="sincos")
    err = (out - truth[..., -1])[eroded]
    err -= np.median(err)
    # measured: std 0.76 rad, |err| < pi in 99.3 % (iterations=0: std 1.2 rad, 98.3 %)
    assert err.std() < 1.0
    assert np.mean(np.abs(err) < np.pi) > 0.98


# --------------------------------------------------------------------------- validation


def test_bad_inputs_rejected():
    phase = wrap(smooth_phase((16, 16, 16)))
    mask = np.ones(phase.shape, bool)
    for fn in (unwrap_region_growing, unwrap_laplacian):
        with pytest.raises(ValueError, match="unwrap_temporal"):
            fn(np.stack([phase, phase], -1), None, 1.0)
        with pytest.raises(ValueError, match="mask shape"):
            fn(phase, mask[:-1], 1.0)
        bad = phase.copy()
        bad[3, 3, 3] = np.nan
        with pytest.raises(ValueError, match="non-finite"):
            fn(bad, None, 1.0)
        m = mask.copy()
        m[3, 3, 3] = False
        out = fn(bad, m, 1.0)  # NaN outside the mask is fine
        assert np.isfinite(out[m]).all()
        with pytest.raises(ValueError, match="complex"):
            fn(np.exp(1j * phase), None, 1.0)
        with pytest.raises(ValueError, match="empty"):
            fn(phase, np.zeros(phase.shape, bool), 1.0)
        with pytest.raises(ValueError, match="millimetres"):
            fn(phase, None, 0.001)
    with pytest.raises(ValueError, match="magnitude shape"):
        unwrap_region_growing(phase, None, 1.0, magnitude=np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        unwrap_region_growing(phase, None, 1.0, magnitude=-np.ones(phase.shape))
    with pytest.raises(ValueError, match="seed"):
        unwrap_region_growing(phase, None, 1.0, seed="middle")
    with pytest.raises(ValueError, match="inside the mask"):
        unwrap_region_growing(phase, None, 1.0, seed=(99, 0, 0))
    with pytest.raises(ValueError, match="pad"):
        unwrap_laplacian(phase, None, 1.0, pad="reflect")
    with pytest.raises(ValueError, match="formula"):
        unwrap_laplacian(phase, None, 1.0, formula="fft")
    phases = np.stack([phase, phase], -1)
    with pytest.raises(ValueError, match="4-D"):
        unwrap_temporal(phase, None, 1.0, echo_times=[0.01])
    with pytest.raises(ValueError):
        unwrap_temporal(phases, None, 1.0, echo_times=[0.01, 0.02, 0.03])  # length mismatch
    with pytest.raises(ValueError):
        unwrap_temporal(phases, None, 1.0, echo_times=[5.0, 10.0])  # milliseconds
    with pytest.raises(ValueError, match="template_echo"):
        unwrap_temporal(phases, None, 1.0, echo_times=[0.01, 0.02], template_echo=2)
    with pytest.raises(ValueError, match="phase_offset shape"):
        unwrap_temporal(phases, None, 1.0, echo_times=[0.01, 0.02], phase_offset=np.zeros((2, 2, 2)))


def test_integer_input_gives_float64():
    phase = np.zeros((8, 8, 8), dtype=np.int16)
    assert unwrap_region_growing(phase, None, 1.0).dtype == np.float64
    assert unwrap_laplacian(phase, None, 1.0).dtype == np.float64


# --------------------------------------------------------------------------- shared real data


def _shared(sub):
    root = Path(__file__).resolve().parents[1]
    candidates = [Path(os.environ["CHIMAP_SHARED_DATA"])] if os.environ.get("CHIMAP_SHARED_DATA") else []
    candidates += [root / "shared" / "data", root.parent / "shared" / "data"]
    for c in candidates:
        if (c / sub).is_dir():
            return c / sub
    pytest.skip(f"shared data folder {sub} not found")


@pytest.mark.shared_data
def test_romeo_small_no_residual_wraps():
    from chimap.io import load_nifti
    from chimap.io.phase import scale_phase_to_radians

    d = _shared("romeo_small") / "small"
    raw, affine, _ = load_nifti(d / "Phase.nii")
    mag, _, _ = load_nifti(d / "Mag.nii")
    phase = scale_phase_to_radians(raw, units="range")
    vs = np.abs(np.diag(affine)[:3])
    for e in range(phase.shape[-1]):
        m = mag[..., e] > 0.5 * np.percentile(mag[..., e], 99)  # ~98 % of the patch
        out = unwrap_region_growing(phase[..., e], m, vs, magnitude=mag[..., e])
        assert wrap_counts(out, phase[..., e])[1] < 1e-5
        assert residual_wraps(out, m) == 0, e
    out = unwrap_temporal(phase, m, vs, echo_times=[0.004, 0.008, 0.012], magnitude=mag)
    assert residual_wraps(out[..., -1], m) <= 20  # measured 15 of ~3e5 edges (TE-ratio noise)


@pytest.mark.shared_data
def test_romeo_phase_with_nan():
    from chimap.io import load_nifti

    raw, affine, _ = load_nifti(_shared("romeo_small") / "small" / "phase_with_nan.nii")
    p = raw[..., 0]
    assert np.isnan(p).any()
    with pytest.raises(ValueError, match="non-finite"):
        unwrap_region_growing(p, None, 1.0)
    m = np.isfinite(p)
    out = unwrap_region_growing(p, m, np.abs(np.diag(affine)[:3]))
    assert wrap_counts(out[m], p[m])[1] < 1e-5
    assert np.isnan(out[~m]).all()  # untouched outside the mask


def test_complex_guided_recovers_the_true_phase():
    """Complex fit of all echoes, spatial unwrapping of omega * dTE, then the nearest turn per
    echo: exact 2*pi multiples, the true phase everywhere in the mask (offset included)."""
    from chimap.field import unwrap_complex_guided

    shape = (40, 40, 32)
    field = smooth_phase(shape, amplitude=1.0)
    mask = ball(shape, radius=17.0)
    tes = np.array([0.005, 0.012, 0.019, 0.026])
    rate = 1400.0
    true = np.stack([field * rate * te for te in tes], axis=-1)
    offset = 0.4 * np.sin(np.linspace(0, 2, shape[1]))[None, :, None] * np.ones(shape)
    rng = np.random.default_rng(4)
    phases = wrap(true + offset[..., None] + 0.02 * rng.standard_normal(true.shape)).astype(np.float32)
    out = unwrap_complex_guided(phases, mask, 1.0, echo_times=tes, magnitude=np.ones(phases.shape))
    assert out.dtype == np.float32 and wrap_counts(out, phases)[1] < 1e-5
    for e in range(len(tes)):
        d = (out[..., e] - offset - true[..., e])[mask]
        d -= 2 * np.pi * np.round(np.median(d) / (2 * np.pi))  # one global multiple is free
        assert np.abs(d).max() < 0.2, e
    with pytest.raises(ValueError, match="two echoes"):
        unwrap_complex_guided(phases[..., :1], mask, 1.0, echo_times=tes[:1])
