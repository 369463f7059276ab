"""Susceptibility referencing (chimap.reference)."""

import numpy as np
import pytest

from chimap.kernels import sphere_mask
from chimap.reference import csf_mask_from_r2star, reference_chi

SHAPE = (30, 34, 28)
VS = (2.0, 2.0, 2.0)


def _data(dtype=np.float32):
    rng = np.random.default_rng(0)
    mask = sphere_mask(SHAPE, VS, radius=26.0)
    chi = np.where(mask, 0.05 + 0.02 * rng.standard_normal(SHAPE), 0.0).astype(dtype)
    labels = np.zeros(SHAPE, np.uint8)
    labels[mask] = 1
    labels[sphere_mask(SHAPE, VS, radius=8.0)] = 3
    return chi, mask, labels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_brain_reference(dtype):
    chi, mask, _ = _data(dtype)
    before = chi.copy()
    out, offset = reference_chi(chi, mask)
    assert out.dtype == dtype
    assert abs(out[mask].astype(np.float64).mean()) < 1e-6
    assert offset == pytest.approx(chi[mask].astype(np.float64).mean())
    np.testing.assert_array_equal(out[~mask], chi[~mask])  # outside the mask: unchanged
    np.testing.assert_array_equal(chi, before)  # input untouched


def test_region_and_labels_reference():
    chi, mask, labels = _data()
    csf = labels == 3
    out, offset = reference_chi(chi, mask, region=csf)
    assert abs(out[csf].mean()) < 1e-6
    out2, offset2 = reference_chi(chi, mask, region="labels", labels=labels, label_values=[3])
    np.testing.assert_array_equal(out, out2)
    assert offset == offset2
    # the region is restricted to the mask
    out3, _ = reference_chi(chi, mask, region=np.ones(SHAPE, bool))
    assert abs(out3[mask].mean()) < 1e-6
    # integer input is computed in float64
    out4, _ = reference_chi(np.round(chi * 100).astype(np.int32), mask)
    assert out4.dtype == np.float64


def test_reference_bad_inputs():
    chi, mask, labels = _data()
    with pytest.raises(ValueError, match="unknown reference region"):
        reference_chi(chi, mask, region="csf")
    with pytest.raises(ValueError, match="labels and label_values"):
        reference_chi(chi, mask, region="labels")
    with pytest.raises(ValueError, match="no voxel"):
        reference_chi(chi, mask, region="labels", labels=labels, label_values=[9])
    with pytest.raises(ValueError, match="no voxel"):
        reference_chi(chi, np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="shape"):
        reference_chi(chi, mask[:-1])
    bad = chi.copy()
    bad[tuple(np.argwhere(mask)[0])] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        reference_chi(bad, mask)


def test_csf_mask_from_r2star():
    mask = sphere_mask(SHAPE, VS, radius=26.0)
    r2 = np.where(mask, 20.0, 0.0)
    ventricle = sphere_mask(SHAPE, VS, radius=8.0)
    r2[ventricle] = 1.0
    r2[2, 17, 14] = 1.0  # an isolated low-R2* voxel (noise) near the edge
    speck = np.zeros(SHAPE, bool)
    speck[15, 5, 14] = True  # inside the eroded mask but tiny
    r2[speck] = 1.0
    csf = csf_mask_from_r2star(r2, mask, VS)
    np.testing.assert_array_equal(csf, ventricle)
    assert not csf_mask_from_r2star(r2, mask, VS, threshold=0.5).any()
    with pytest.raises(ValueError, match="threshold"):
        csf_mask_from_r2star(r2, mask, VS, threshold=-1)
