"""Tests for chimap.mask: brain masks, morphology in mm, thresholds, quality, two-pass masks.

Simulated heads are built once per module at 2-3 mm (the first one also loads nilearn's MNI
templates). Dice of brain_mask with the true brain mask measured when these tests were written
(default options): GRE 2 mm SNR 100 0.986; 3 mm SNR 30 at 7 T with 15 deg tilt 0.983;
anisotropic (2, 2, 3) mm 0.989; 3D-EPI 3 mm 0.984. The asserted target is the consensus-level
0.95.
"""

import numpy as np
import pytest
from scipy import ndimage

from chimap.mask import (
    artefact_reduction_masks,
    ball,
    brain_mask,
    combine_echoes,
    combine_two_pass,
    compute_threshold,
    dice,
    dilate_mm,
    erode_mm,
    fill_holes,
    gaussian_threshold,
    homogenize,
    largest_component,
    open_mm,
    otsu_threshold,
    percentile_threshold,
    phase_quality,
    quality_from_noise,
)
from chimap.sim.head import simulate_head
from chimap.sim.tissues import LABELS

TARGET_DICE = 0.95

HEADS = {
    "gre_2mm": {"voxel_size": 2.0, "snr": 100.0, "rng": 11},
    "noisy_7t_tilted": {"voxel_size": 3.0, "snr": 30.0, "rng": 12, "field_strength": 7.0, "b0_tilt_deg": 15.0},
    "anisotropic": {"voxel_size": (2.0, 2.0, 3.0), "snr": 100.0, "rng": 13},
    "epi": {"voxel_size": 3.0, "snr": 100.0, "rng": 14, "protocol": "epi"},
}


@pytest.fixture(scope="module")
def heads():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = simulate_head(**HEADS[name])
        return cache[name]

    return get


@pytest.fixture(scope="module")
def gre(heads):
    return heads("gre_2mm")


def _box(shape=(30, 30, 30), lo=(5, 5, 5), hi=(25, 25, 25)):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def _extent_removed(before, after):
    """Voxels removed at the low and high end along each axis (for boxes)."""
    b = np.argwhere(before)
    a = np.argwhere(after)
    return [(int(a[:, k].min() - b[:, k].min()), int(b[:, k].max() - a[:, k].max())) for k in range(3)]


# ---------------------------------------------------------------------------------------------
# brain_mask on simulated heads


@pytest.mark.parametrize("name", list(HEADS))
def test_brain_mask_dice_on_simulated_heads(heads, name):
    h = heads(name)
    m = brain_mask(h.magnitude, None, h.voxel_size)
    assert m.dtype == bool and m.shape == h.brain_mask.shape
    d = dice(m, h.brain_mask)
    assert d >= TARGET_DICE, f"{name}: Dice {d:.4f}"
    # one connected piece without enclosed cavities
    assert np.array_equal(largest_component(m), m)
    assert np.array_equal(ndimage.binary_fill_holes(m), m)


def test_brain_mask_excludes_scalp_skull_and_outer_csf(gre):
    m = brain_mask(gre.magnitude, None, gre.voxel_size)
    lab = gre.labels
    for name in ("soft_tissue", "skull", "eye", "air"):
        inside = np.count_nonzero(m & (lab == LABELS[name]))
        assert inside <= 0.005 * m.sum(), f"{name}: {inside} voxels in the mask"
    outer_csf = (lab == LABELS["csf"]) & ~gre.brain_mask
    assert np.count_nonzero(m & outer_csf) < 0.25 * np.count_nonzero(outer_csf)


@pytest.mark.parametrize("method", ["otsu", "gaussian"])
def test_brain_mask_threshold_methods(gre, method):
    m = brain_mask(gre.magnitude, None, gre.voxel_size, threshold_method=method)
    assert dice(m, gre.brain_mask) >= TARGET_DICE


def test_brain_mask_percentile_and_absolute_threshold(gre):
    img = combine_echoes(gre.magnitude)
    level = otsu_threshold(homogenize(img, None, gre.voxel_size))
    a = brain_mask(gre.magnitude, None, gre.voxel_size)
    b = brain_mask(gre.magnitude, None, gre.voxel_size, threshold=level)
    assert np.array_equal(a, b)
    frac = np.mean(homogenize(img, None, gre.voxel_size) <= level) * 100
    c = brain_mask(gre.magnitude, None, gre.voxel_size, threshold_method="percentile", threshold_percentile=frac)
    assert dice(c, a) > 0.99
    smaller = brain_mask(gre.magnitude, None, gre.voxel_size, threshold_factor=1.3)
    assert smaller.sum() < a.sum()


def test_brain_mask_single_echo_and_first_echo(gre):
    first = brain_mask(gre.magnitude, None, gre.voxel_size, echo_combination="first")
    assert np.array_equal(first, brain_mask(gre.magnitude[..., 0], None, gre.voxel_size))
    assert dice(first, gre.brain_mask) >= TARGET_DICE


def test_brain_mask_robust_to_receive_bias(gre):
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in gre.brain_mask.shape], indexing="ij")
    bias = np.exp(0.8 * g[0] + 0.5 * g[2]).astype(np.float32)   # 13x brightness range
    mag = gre.magnitude * bias[..., None]
    assert dice(brain_mask(mag, None, gre.voxel_size), gre.brain_mask) >= TARGET_DICE


def test_brain_mask_deterministic_and_inputs_untouched(gre):
    mag = gre.magnitude.copy()
    a = brain_mask(mag, None, gre.voxel_size)
    b = brain_mask(mag, None, gre.voxel_size)
    assert np.array_equal(a, b)
    assert np.array_equal(mag, gre.magnitude) and mag.dtype == np.float32
    m64 = brain_mask(mag.astype(np.float64), None, gre.voxel_size)
    assert dice(m64, a) > 0.999


def test_brain_mask_with_phase_quality(gre):
    q = phase_quality(gre.phase, None, gre.voxel_size, magnitude=gre.magnitude, echo_times=gre.echo_times)
    assert q.dtype == np.float32 and q.min() >= 0 and q.max() <= 1
    assert np.median(q[gre.brain_mask]) > 0.7 > np.median(q[gre.labels == LABELS["air"]])
    plain = brain_mask(gre.magnitude, None, gre.voxel_size)
    m = brain_mask(gre.magnitude, None, gre.voxel_size, quality=q)
    assert not np.any(m & ~plain)
    assert dice(m, gre.brain_mask) >= TARGET_DICE
    calc = gre.labels == LABELS["calcification"]
    # the calcification's phase is unreliable: most of it leaves the mask
    assert calc.any() and np.count_nonzero(m & calc) <= calc.sum() // 2
    assert np.median(q[calc]) < 0.5 * np.median(q[gre.brain_mask])


def test_brain_mask_quality_exclusion_keeps_holes():
    shape = (40, 40, 40)
    g = np.indices(shape) - 19.5
    r = np.sqrt((g ** 2).sum(0))
    mag = np.where(r < 14, 1.0, 0.02).astype(np.float32)
    q = np.ones(shape, np.float32)
    q[r >= 14] = 0.0
    q[(np.abs(g[0]) < 3) & (np.abs(g[1]) < 3) & (np.abs(g[2]) < 3)] = 0.1   # a bad cube in the centre
    m = brain_mask(mag, None, 1.0, quality=q, quality_threshold=0.5, open_mm=0, erode_mm=0)
    assert not np.any(m & (q < 0.5))
    assert np.count_nonzero(m) == np.count_nonzero((r < 14) & (q >= 0.5))
    # percentile inside the brain: the 5th percentile is 1.0 (the bad cube is 2 % of the
    # brain), so the cube goes
    m2 = brain_mask(mag, None, 1.0, quality=q, quality_threshold="percentile", quality_percentile=5.0,
                    open_mm=0, erode_mm=0)
    assert np.array_equal(m2, m)


def test_external_mask_passes_through_validated(gre):
    ext = gre.brain_mask.astype(np.uint8)
    out = brain_mask(gre.magnitude, ext, gre.voxel_size)
    assert out.dtype == bool and np.array_equal(out, gre.brain_mask)
    assert out is not ext and ext.dtype == np.uint8
    with pytest.raises(ValueError, match="shape"):
        brain_mask(gre.magnitude, ext[:-1], gre.voxel_size)
    with pytest.raises(ValueError, match="empty"):
        brain_mask(gre.magnitude, np.zeros_like(ext), gre.voxel_size)
    bad = ext.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        brain_mask(gre.magnitude, bad, gre.voxel_size)
    q = np.ones(ext.shape, np.float32)
    q[: ext.shape[0] // 2] = 0.0
    refined = brain_mask(gre.magnitude, ext, gre.voxel_size, quality=q, quality_threshold=0.5)
    assert not refined[: ext.shape[0] // 2].any() and refined.sum() > 0


# ---------------------------------------------------------------------------------------------
# input validation


def test_brain_mask_rejects_bad_input():
    mag = np.zeros((10, 10, 10), np.float32)
    mag[3:7, 3:7, 3:7] = 1.0
    with pytest.raises(ValueError, match="constant"):
        brain_mask(np.zeros((10, 10, 10)), None, 1.0)
    nan = mag.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        brain_mask(nan, None, 1.0)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        brain_mask(mag[0], None, 1.0)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        brain_mask(mag[..., None, None], None, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        brain_mask(mag - 0.5, None, 1.0)
    with pytest.raises(ValueError, match="real"):
        brain_mask(mag.astype(np.complex64), None, 1.0)
    with pytest.raises(ValueError, match="voxel_size"):
        brain_mask(mag, None, (1.0, 1.0))
    with pytest.raises(ValueError, match="threshold_method"):
        brain_mask(mag, None, 1.0, threshold_method="bet")
    with pytest.raises(ValueError, match="fill_holes"):
        brain_mask(mag, None, 1.0, fill_holes="2d")
    with pytest.raises(ValueError, match="erode_mm"):
        brain_mask(mag, None, 1.0, erode_mm=-1)
    with pytest.raises(ValueError, match="echo_combination"):
        brain_mask(mag[..., None], None, 1.0, echo_combination="mean")
    with pytest.raises(ValueError, match="quality shape"):
        brain_mask(mag, None, 1.0, quality=np.ones((9, 10, 10)))
    with pytest.raises(ValueError, match="open_mm"):
        brain_mask(mag, None, 1.0, open_mm=5, homogenize_mm=None)


# ---------------------------------------------------------------------------------------------
# morphology in mm


def test_erosion_mm_removes_voxels_per_axis_on_anisotropic_grid():
    m = _box()
    vs = (1.0, 1.5, 3.0)
    assert _extent_removed(m, erode_mm(m, vs, radius_mm=3.0)) == [(3, 3), (2, 2), (1, 1)]
    assert _extent_removed(m, erode_mm(m, vs, radius_mm=2.9)) == [(2, 2), (1, 1), (0, 0)]
    assert _extent_removed(m, erode_mm(m, vs, radius_mm=1.0)) == [(1, 1), (0, 0), (0, 0)]
    assert np.array_equal(erode_mm(m, vs, radius_mm=0.0), m)
    d = dilate_mm(m, vs, radius_mm=3.0)
    assert _extent_removed(d, m) == [(3, 3), (2, 2), (1, 1)]


@pytest.mark.parametrize("radius", [1.0, 2.5, 4.0, 9.0])   # shifted min-plus and EDT paths
def test_erode_dilate_match_scipy_with_the_ball(radius):
    rng = np.random.default_rng(3)
    m = ndimage.binary_opening(rng.random((34, 30, 26)) > 0.35, iterations=2)
    vs = (1.0, 1.3, 2.2)
    se = ball(radius, vs)
    assert np.array_equal(erode_mm(m, vs, radius_mm=radius), ndimage.binary_erosion(m, se, border_value=0))
    assert np.array_equal(dilate_mm(m, vs, radius_mm=radius), ndimage.binary_dilation(m, se))


def test_single_voxel_dilation_is_the_ball():
    m = np.zeros((21, 21, 21), bool)
    m[10, 10, 10] = True
    vs = (0.8, 1.0, 2.0)
    d = dilate_mm(m, vs, radius_mm=4.0)
    g = (np.indices(m.shape) - 10) * np.asarray(vs)[:, None, None, None]
    assert np.array_equal(d, (g ** 2).sum(0) <= 16.0 + 1e-9)


def test_erosion_at_array_border_and_inputs_untouched():
    m = np.ones((8, 8, 8), np.uint8)
    keep = m.copy()
    e = erode_mm(m, 1.0, radius_mm=1.0)
    assert e.dtype == bool and e.sum() == 6 ** 3
    assert np.array_equal(m, keep)


def test_open_mm_cuts_thin_bridge():
    m = np.zeros((40, 20, 20), bool)
    m[2:16, 3:17, 3:17] = True
    m[24:38, 3:17, 3:17] = True
    m[16:24, 9:11, 9:11] = True   # 2-voxel bridge
    o = open_mm(m, 1.0, radius_mm=1.0)
    assert not o[17:23].any() and ndimage.label(o)[1] == 2      # the bridge is cut
    assert o[2:16].sum() > 0.9 * 14 ** 3 and not np.any(o & ~m)
    one = open_mm(m, 1.0, radius_mm=1.0, keep_largest=True)
    assert not one[20:].any() and one[:20].sum() == o[:20].sum()


def test_largest_component_drops_islands():
    m = _box((30, 30, 30), (2, 2, 2), (15, 15, 15))
    m[20:23, 20:23, 20:23] = True
    m[27, 27, 27] = True
    lc = largest_component(m)
    assert lc.sum() == 13 ** 3 and not lc[20:].any()
    diag = np.zeros((5, 5, 5), bool)
    diag[1, 1, 1] = diag[2, 2, 2] = diag[3, 3, 3] = True
    assert largest_component(diag).sum() == 1
    assert largest_component(diag, connectivity=3).sum() == 3
    assert not largest_component(np.zeros((4, 4, 4))).any()
    with pytest.raises(ValueError, match="connectivity"):
        largest_component(m, connectivity=4)


def test_fill_holes_3d_and_slicewise():
    m = _box((20, 20, 20), (2, 2, 2), (18, 18, 18))
    cavity = _box((20, 20, 20), (7, 7, 7), (12, 12, 12))
    m &= ~cavity
    assert np.array_equal(fill_holes(m, mode="3d"), _box((20, 20, 20), (2, 2, 2), (18, 18, 18)))
    # open the cavity to the outside through a channel along axis 0: no longer a 3-D hole,
    # but closed in every slice perpendicular to axis 0 except the channel's own
    m[2:7, 9, 9] = False
    assert not fill_holes(m, mode="3d")[9, 9, 9]
    s0 = fill_holes(m, mode="slices", axes=(0,))
    assert s0[9, 9, 9] and s0[4, 9, 9]
    s1 = fill_holes(m, mode="slices", axes=(1,))
    assert s1[9, 8, 9] and not s1[9, 9, 9]           # slice j=9 holds the channel
    assert fill_holes(m, mode="both")[9, 9, 9]
    # holes in the first and last slices are filled too
    edge = np.ones((6, 6, 6), bool)
    edge[0, 2:4, 2:4] = False
    assert fill_holes(edge, mode="slices", axes=(0,)).all()
    with pytest.raises(ValueError, match="mode"):
        fill_holes(m, mode="2d")


def test_dice():
    a = _box()
    assert dice(a, a) == 1.0
    assert dice(a, a.astype(np.uint8)) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros(5), np.zeros(5)) == 1.0
    b = a.copy()
    b[5:15] = False
    assert dice(a, b) == pytest.approx(2 * b.sum() / (a.sum() + b.sum()))
    with pytest.raises(ValueError, match="same shape"):
        dice(a, a[1:])


# ---------------------------------------------------------------------------------------------
# thresholds, bias, quality


def test_thresholds_on_bimodal_values():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.05, 0.02, 60000), rng.normal(1.0, 0.1, 40000)])
    assert 0.3 < otsu_threshold(v) < 0.7      # middle of the empty gap between the modes
    assert 0.1 < gaussian_threshold(v) < 0.9
    assert percentile_threshold(v, percentile=60) == pytest.approx(np.percentile(v, 60))
    assert compute_threshold(v, method="otsu", factor=2.0) == pytest.approx(2 * otsu_threshold(v))
    assert otsu_threshold(np.array([np.nan, 3.0, 3.0])) == 3.0
    with pytest.raises(ValueError, match="method"):
        compute_threshold(v, method="li")
    with pytest.raises(ValueError, match="finite"):
        otsu_threshold([np.nan])
    with pytest.raises(ValueError, match="percentile"):
        percentile_threshold(v, percentile=120)


def test_homogenize_removes_smooth_bias():
    shape = (40, 44, 36)
    g = np.indices(shape) - np.array(shape)[:, None, None, None] / 2
    tissue = (g ** 2 / np.array([15.0, 17.0, 13.0])[:, None, None, None] ** 2).sum(0) < 1
    bias = 1.0 + 0.5 * g[0] / 20
    img = np.where(tissue, 1.0, 0.01) * bias
    out = homogenize(img.astype(np.float32), None, 4.0, sigma_mm=20.0)   # a head-sized ellipsoid
    inner = ndimage.binary_erosion(tissue, iterations=4)
    spread = lambda x: np.ptp(x[inner]) / np.median(x[inner])
    assert spread(out) < 0.35 * spread(img)


def _edge_quality_reference(phase, magnitude=None, ratio=None, second=None):
    """phase_quality from its definition: every face edge's weight, averaged per voxel."""
    def wrap(x):
        return np.mod(x + np.pi, 2 * np.pi) - np.pi

    total = np.zeros(phase.shape)
    count = np.zeros(phase.shape)
    for ax in range(3):
        n = phase.shape[ax]
        lo, hi = (slice(None),) * ax + (slice(0, n - 1),), (slice(None),) * ax + (slice(1, n),)
        d1 = wrap(phase[hi] - phase[lo])
        w = 1 - np.abs(d1) / np.pi
        if second is not None:
            w *= np.clip(1 - np.abs(wrap(second[hi] - second[lo]) * ratio - d1), 0, 1)
        if magnitude is not None:
            a, b = magnitude[lo], magnitude[hi]
            big = np.maximum(a, b)
            w *= np.where(big > 0, (np.minimum(a, b) / np.where(big > 0, big, 1)) ** 2, 0)
        for end in (lo, hi):
            total[end] += w
            count[end] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0)


@pytest.mark.parametrize("shape", [(9, 8, 7), (1, 6, 5), (7, 1, 1), (1, 1, 1)])
def test_phase_quality_is_the_mean_edge_weight(shape):
    rng = np.random.default_rng(3)
    # phase slightly beyond [-pi, pi] and a second echo with large steps exercise every branch
    # of the wrap (differences within one period and far beyond it)
    phase = rng.uniform(-np.pi - 1e-3, np.pi + 1e-3, shape + (2,))
    phase[..., 1] *= 3.0
    mag = rng.random(shape + (2,))
    mag.flat[::7] = 0.0
    te = (0.005, 0.012)
    mask = rng.random(shape) > 0.3
    cases = [
        ({"magnitude": mag, "echo_times": te}, dict(magnitude=mag[..., 0], ratio=te[0] / te[1], second=phase[..., 1])),
        ({"magnitude": mag}, dict(magnitude=mag[..., 0])),
        ({"echo_times": te, "echo": 1}, dict(ratio=te[1] / te[0], second=phase[..., 0])),
        ({}, {}),
    ]
    for kwargs, ref_kwargs in cases:
        echo = kwargs.get("echo", 0)
        expected = _edge_quality_reference(phase[..., echo], **ref_kwargs)
        q = phase_quality(phase, None, 1.0, **kwargs)
        assert q.dtype == np.float32 and q.shape == shape
        np.testing.assert_allclose(q, expected, rtol=0, atol=1e-6)
        masked = phase_quality(phase, mask, 1.0, **kwargs)
        assert np.array_equal(masked, np.where(mask, q, 0))


def test_phase_quality_of_a_ramp():
    # a phase ramp of 0.5 rad per voxel along axis 1, uniform magnitude, one echo: the edges
    # along axis 1 weigh 1 - 0.5 / pi, the others 1; a ramp steeper than pi wraps and weighs
    # by its wrapped step
    for step in (0.5, 2 * np.pi - 0.5):
        phase = np.angle(np.exp(1j * step * np.arange(6)))[None, :, None] * np.ones((5, 6, 4))
        q = phase_quality(phase, None, 1.0, magnitude=np.ones(phase.shape))
        along = 1 - 0.5 / np.pi
        inner = (4 + 2 * along) / 6  # a voxel away from the borders: 4 edges of 1, 2 of `along`
        assert q[2, 2, 2] == pytest.approx(inner, abs=1e-6)
        edge = (4 + along) / 5  # first voxel along axis 1 (axes 0 and 2 interior)
        assert q[2, 0, 2] == pytest.approx(edge, abs=1e-6)


def test_quality_from_noise():
    noise = np.array([0.0, 1.0, 2.0, np.inf, np.nan, 4.0]).reshape(1, 2, 3)
    q = quality_from_noise(noise)
    assert q.dtype == np.float32
    assert q[0, 0, 0] == 1.0 and q[0, 1, 0] == 0.0 and q[0, 1, 1] == 0.0
    assert np.all(np.diff(q.ravel()[[0, 1, 2, 5]]) < 0)
    with pytest.raises(ValueError, match="non-negative"):
        quality_from_noise(-noise[..., :2])


# ---------------------------------------------------------------------------------------------
# two-pass artefact reduction


def _sphere_phantom():
    shape = (36, 36, 36)
    g = np.indices(shape) - 17.5
    r = np.sqrt((g ** 2).sum(0))
    brain = r < 14
    rng = np.random.default_rng(1)
    q = np.where(brain, 0.9, 0.1) + 0.02 * rng.standard_normal(shape)
    source = np.sqrt(((g - np.array([4, 0, 0])[:, None, None, None]) ** 2).sum(0)) < 3
    q[source] = 0.15                               # unreliable phase around a strong source
    return brain, source, q.astype(np.float32)


def test_artefact_reduction_masks_on_phantom():
    brain, source, q = _sphere_phantom()
    q_in = q.copy()
    reliable, filled = artefact_reduction_masks(q, brain, 1.0)
    assert np.array_equal(q, q_in)
    assert not np.any(reliable & source)
    assert np.all(filled[source])
    assert not np.any(reliable & ~filled) and not np.any(filled & ~brain)
    assert dice(filled, brain) > 0.99
    # without a brain mask the masks come from the quality map alone
    r2, f2 = artefact_reduction_masks(q, None, 1.0, threshold="gaussian")
    assert not np.any(r2 & source) and dice(f2, brain) > 0.97
    # a fixed threshold, a percentile, and filling small holes in pass 1
    r3, _ = artefact_reduction_masks(q, brain, 1.0, threshold=0.5, max_hole_mm3=200.0)
    assert np.all(r3[source])
    r4, _ = artefact_reduction_masks(q, brain, 1.0, threshold="percentile", percentile=3.0)
    assert not np.any(r4 & source)
    with pytest.raises(ValueError, match="quality threshold"):
        artefact_reduction_masks(q, brain, 1.0, threshold="triangle")
    with pytest.raises(ValueError, match="shape"):
        artefact_reduction_masks(q, brain[1:], 1.0)


def test_artefact_reduction_masks_on_simulated_head(gre):
    q = phase_quality(gre.phase, None, gre.voxel_size, magnitude=gre.magnitude, echo_times=gre.echo_times)
    brain = brain_mask(gre.magnitude, None, gre.voxel_size)
    reliable, filled = artefact_reduction_masks(q, brain, gre.voxel_size)
    calc = gre.labels == LABELS["calcification"]
    assert np.count_nonzero(reliable & calc) <= calc.sum() // 2 and np.all(filled[calc & brain])
    assert dice(filled, brain) > 0.99 and reliable.sum() > 0.95 * brain.sum()


def test_combine_two_pass():
    rel = np.zeros((4, 4, 4), bool)
    rel[:2] = True
    filled = rel.copy()
    filled[2] = True
    c1 = np.full((4, 4, 4), 1.0, np.float32)
    c2 = np.full((4, 4, 4), 2.0, np.float32)
    out = combine_two_pass(c1, c2, rel)
    assert out.dtype == np.float32
    assert np.all(out[:2] == 1.0) and np.all(out[2:] == 2.0)
    out = combine_two_pass(c1, c2.astype(np.float64), rel, filled_mask=filled)
    assert out.dtype == np.float64 and np.all(out[3] == 0.0) and np.all(out[2] == 2.0)
    c2[3] = np.nan      # outside both masks: ignored when the filled mask is given
    assert np.isfinite(combine_two_pass(c1, c2, rel, filled_mask=filled)).all()
    with pytest.raises(ValueError, match="NaN"):
        combine_two_pass(c1, c2, rel)
    with pytest.raises(ValueError, match="same shape"):
        combine_two_pass(c1, c2[1:], rel)
    with pytest.raises(ValueError, match="shape"):
        combine_two_pass(c1, c1, rel[1:])


def test_detach_cuts_the_neck_below_an_open_foramen():
    """A brain whose stem continues into a wide neck without bone around it (as in the QSM
    challenge 2.0 head model): the opening cannot cut the connection, detach_mm does."""
    from chimap.kernels import sphere_mask as ball_mm

    shape, vs = (64, 64, 80), (2.0, 2.0, 2.0)
    c = np.array([31.5, 31.5, 45.0])
    brain = ball_mm(shape, vs, radius=44.0, center=c)
    idx = np.indices(shape)
    r_xy = np.hypot((idx[0] - c[0]) * 2.0, (idx[1] - c[1]) * 2.0)
    # a 28 mm wide opening under the brain (the foramen), widening into a 52 mm neck below
    neck = ((r_xy < 14.0) & (idx[2] < c[2] - 10)) | ((r_xy < 26.0) & (idx[2] < c[2] - 34))
    skull_out = ball_mm(shape, vs, radius=54.0, center=c) & ~ball_mm(shape, vs, radius=48.0, center=c)
    mag = np.where(brain | neck | skull_out, 1.0, 0.02) * (1 + 0.01 * np.random.default_rng(0).random(shape))
    with_detach = brain_mask(mag, None, vs, erode_mm=0.0)
    without = brain_mask(mag, None, vs, erode_mm=0.0, detach_mm=0.0)
    low_neck = neck & (idx[2] < 8)  # far below the brain
    assert without[low_neck].mean() > 0.9  # the neck leaks in without the detach step
    assert with_detach[low_neck].mean() < 0.05
    assert with_detach[brain].mean() > 0.97


@pytest.mark.parametrize("crop", [(slice(None),) * 3, (slice(0, 40), slice(5, 64), slice(None))])
def test_detach_on_the_bounding_box_equals_the_whole_grid(crop):
    """The detach step works on the mask's bounding box; on a head with an enclosed hole, a
    neck, a flat-faced second deep core, and (cropped) touching the array's faces it must give
    what the distance transforms of the whole grid give."""
    from chimap.kernels import sphere_mask as ball_mm
    from chimap.mask.brain import _detach_large

    shape, vs = (64, 64, 80), (2.0, 2.0, 2.0)
    c = np.array([31.5, 31.5, 45.0])
    idx = np.indices(shape)
    r_xy = np.hypot((idx[0] - c[0]) * 2.0, (idx[1] - c[1]) * 2.0)
    head = ball_mm(shape, vs, radius=40.0, center=c) & ~ball_mm(shape, vs, radius=6.0, center=c)
    head |= (r_xy < 14.0) & (idx[2] > 2) & (idx[2] < c[2] - 10)
    # a block with flat faces (a second deep core): its depth near them needs the box's margin
    head |= (np.abs(idx[0] - 31.5) < 14) & (np.abs(idx[1] - 31.5) < 14) & (idx[2] >= 2) & (idx[2] < 24)
    head = head[crop]
    radius = 16.0

    depth = ndimage.distance_transform_edt(fill_holes(head, mode="3d"), sampling=vs)
    labels, _ = ndimage.label(depth > radius)
    sizes = np.bincount(labels.ravel())[1:]
    core = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.25 * sizes.max()))
    expected = head & (ndimage.distance_transform_edt(~core, sampling=vs) <= radius + 4.0)
    got = _detach_large(head, vs, radius)
    assert np.array_equal(got, expected)
    assert 0 < got.sum() < head.sum()  # the test cuts something


def test_brain_mask_refuses_a_fragmented_threshold_mask():
    """An image with no background (a patch inside the brain): Otsu splits the tissue classes
    into fragments that the opening removes; the mask is refused with a hint, not returned."""
    rng = np.random.default_rng(0)
    blocks = rng.random((8, 8, 8)) > 0.4  # grey/white-like blocks of 6 mm fill the whole field of view
    mag = np.where(np.kron(blocks, np.ones((6, 6, 6), bool)), 1.0, 0.6).astype(np.float32)
    mag += rng.normal(0, 0.02, mag.shape).astype(np.float32)
    with pytest.raises(ValueError, match=r"kept \d+ of the \d+ voxels above the magnitude threshold.*--mask"):
        brain_mask(np.abs(mag), None, 1.0)
    # the hint works: without opening and erosion the tissue is kept
    m = brain_mask(np.abs(mag), None, 1.0, open_mm=0, erode_mm=0, detach_mm=0)
    assert m.mean() > 0.4
