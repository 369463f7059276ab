"""Pruned transforms of the mask's box (chimap.invert._common.box_rfft, DataSplitRegion) and
the TV inversions that compute their data splits on the box only: they must give the iterates
of the textbook ADMM, whose splits cover the whole padded grid."""

import numpy as np
import pytest
import scipy.fft as sfft
from test_invert import _blobs

from chimap.forward import dipole_field
from chimap.invert import _common, nltv, tv_admm, tv_admm_wh
from chimap.invert import tv as tv_module
from chimap.invert import tv_wh as tv_wh_module
from chimap.invert._common import DataSplitRegion, Domain, box_rfft


@pytest.mark.parametrize("shape, box", [((24, 30, 27), (11, 17, 20)), ((24, 30, 28), (11, 17, 28)),
                                        ((16, 18, 20), (16, 18, 20)), ((15, 9, 7), (1, 9, 1))])
def test_box_rfft_is_the_transform_of_the_zero_padded_box(shape, box):
    rng = np.random.default_rng(5)
    x = rng.normal(size=box)
    padded = np.zeros(shape)
    padded[: box[0], : box[1], : box[2]] = x
    got = box_rfft(shape, box)(x)
    assert got.shape == (shape[0], shape[1], shape[2] // 2 + 1)
    np.testing.assert_allclose(got, sfft.rfftn(padded), atol=1e-10 * np.abs(x).sum())
    got32 = box_rfft(shape, box)(x.astype(np.float32))
    assert got32.dtype == np.complex64
    np.testing.assert_allclose(got32, sfft.rfftn(padded), atol=1e-5 * np.abs(x).sum())


def test_box_rfft_of_a_difference_and_repeated_calls():
    # the transform reuses its padded lines between calls: each call must still return a new
    # spectrum of its own input, and `minus` must give the transform of the difference
    shape, box = (20, 18, 16), (9, 11, 7)
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=box), rng.normal(size=box)
    fft = box_rfft(shape, box)

    def reference(v):
        padded = np.zeros(shape)
        padded[: box[0], : box[1], : box[2]] = v
        return sfft.rfftn(padded)

    first = fft(x)
    second = fft(y)
    diff = fft(x, minus=y)
    assert not np.shares_memory(first, second) and not np.shares_memory(second, diff)
    np.testing.assert_allclose(first, reference(x), atol=1e-10 * np.abs(x).sum())
    np.testing.assert_allclose(second, reference(y), atol=1e-10 * np.abs(y).sum())
    np.testing.assert_allclose(diff, reference(x - y), atol=1e-10 * np.abs(x - y).sum())
    assert fft(x.astype(np.float32), minus=y.astype(np.float32)).dtype == np.complex64
    with pytest.raises(ValueError, match="shape"):
        fft(x, minus=y[:, :, :-1])


def test_box_rfft_rejects_another_shape():
    with pytest.raises(ValueError, match="shape"):
        box_rfft((16, 16, 16), (8, 8, 8))(np.zeros((8, 8, 9)))


def test_split_region_spectrum_and_field():
    mask = np.zeros((20, 22, 18), bool)
    mask[3:12, 5:15, 2:9] = True
    dom = Domain.from_mask(mask, 1.5, np.float64)
    region = DataSplitRegion(dom, 1.0)
    assert region.shape == dom.box_shape
    assert DataSplitRegion(dom, 1.5).shape == dom.padded  # over-relaxation: the whole grid
    rng = np.random.default_rng(0)
    model_pad = rng.normal(size=dom.padded)
    model_spec = sfft.rfftn(model_pad)
    kept = model_spec.copy()
    model = region.field(model_spec)
    np.testing.assert_array_equal(model_spec, kept)  # the spectrum is not consumed
    np.testing.assert_allclose(model, region.crop(model_pad), atol=1e-12)
    target = rng.normal(size=region.shape)
    expected_pad = model_pad.copy()
    expected_pad[region.slices] = target
    np.testing.assert_allclose(region.spectrum(target, model, model_spec), sfft.rfftn(expected_pad),
                               atol=1e-9 * np.abs(expected_pad).sum())
    # no model yet: the padded array is the target alone
    zero_pad = np.zeros(dom.padded)
    zero_pad[region.slices] = target
    np.testing.assert_allclose(region.spectrum(target, region.zeros(), None), sfft.rfftn(zero_pad),
                               atol=1e-9 * np.abs(target).sum())


class _TextbookSplit(_common.DataSplitRegion):
    """The textbook ADMM: splits on the whole padded grid (a relax other than 1 gives it) and
    the chi update's spectrum transformed directly, ``F(z2 - u2)``, without the model."""

    def __init__(self, dom, relax):
        super().__init__(dom, 0.5)

    def spectrum(self, target, model, model_spec):
        return sfft.rfftn(target)


@pytest.mark.parametrize("func,kw,module", [
    (tv_admm, {"alpha": 3e-4}, tv_module),
    (tv_admm, {"alpha": "auto"}, tv_module),
    (nltv, {"alpha": 3e-4}, tv_module),
    (tv_admm_wh, {"alpha": 3e-4}, tv_wh_module),
    (tv_admm_wh, {"alpha": 3e-4, "refine_field": "same field", "refine_every": 5}, tv_wh_module),
    # over-relaxation: the region is the whole grid, the spectrum still model plus gap
    (tv_admm, {"alpha": 3e-4, "relax": 1.5}, tv_module),
    (tv_admm_wh, {"alpha": 3e-4, "relax": 1.5}, tv_wh_module),
])
def test_box_split_gives_the_textbook_iterates(monkeypatch, func, kw, module):
    chi, mask = _blobs(shape=(30, 34, 28))
    vs = np.array([1.5, 1.5, 2.0])
    b0 = np.array([0.2, 0.1, 0.97]) / np.linalg.norm([0.2, 0.1, 0.97])
    rng = np.random.default_rng(1)
    field = dipole_field(chi, None, vs, b0_direction=b0) + 0.002 * rng.standard_normal(chi.shape)
    field = np.where(mask, field, 0).astype(np.float32)
    weight = np.where(mask, 0.5 + rng.random(chi.shape), 0).astype(np.float32)
    if "refine_field" in kw:  # a refinement that keeps the field: exercises the field update
        kw = {**kw, "refine_field": lambda c: field}
    args = (field, mask, vs)
    fast = func(*args, b0_direction=b0, weight=weight, max_iter=40, **kw)
    monkeypatch.setattr(module, "DataSplitRegion", _TextbookSplit)
    full = func(*args, b0_direction=b0, weight=weight, max_iter=40, **kw)
    np.testing.assert_allclose(fast, full, atol=2e-5 * np.abs(full).max())
    assert np.abs(full).max() > 0.01
