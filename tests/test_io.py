"""NIfTI round trips and the Acquisition record."""

import dataclasses
import json

import numpy as np
import pytest

from chimap.io import Acquisition, load_nifti, save_nifti, write_sidecar


def _rot_x(deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _affine(rot, vs=(0.8, 1.0, 2.0), shift=(-90.0, 12.5, 30.0)):
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(vs)
    a[:3, 3] = shift
    return a


# ------------------------------------------------------------------ NIfTI round trip
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_nifti_4d_round_trip_keeps_affine_dtype_units(tmp_path, dtype):
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((5, 6, 7, 3)) * 100).astype(dtype)
    affine = _affine(_rot_x(17.0))
    path = save_nifti(tmp_path / "sub" / "x.nii.gz", data, affine)
    out, aff, hdr = load_nifti(path)
    assert out.shape == (5, 6, 7, 3)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, data)
    np.testing.assert_allclose(aff, affine, atol=1e-5)
    assert hdr.get_xyzt_units() == ("mm", "sec")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.nii.gz"]  # no temp file left


# ------------------------------------------------------------------ Acquisition
def test_acquisition_from_oblique_affine():
    acq = Acquisition.from_affine(_affine(_rot_x(20.0)), (10, 11, 12), echo_times=[0.004, 0.008], field_strength=3)
    # R = Rx(20) => b = R.T @ z = (0, sin 20, cos 20); voxel sizes divided out first
    np.testing.assert_allclose(acq.b0_direction, [0, np.sin(np.radians(20)), np.cos(np.radians(20))], atol=1e-12)
    assert acq.obliquity_deg == pytest.approx(20.0)
    np.testing.assert_allclose(acq.voxel_size, [0.8, 1.0, 2.0])
    assert acq.shape == (10, 11, 12) and acq.n_echoes == 2
    assert acq.b0_matches_affine

    acq_y = Acquisition.from_affine(_affine(_rot_y(35.0)), (4, 4, 4), echo_times=0.01, field_strength=7)
    np.testing.assert_allclose(acq_y.b0_direction, [-np.sin(np.radians(35)), 0, np.cos(np.radians(35))], atol=1e-12)
    assert acq_y.obliquity_deg == pytest.approx(35.0)


def test_acquisition_axial_and_explicit_b0_direction():
    axial = Acquisition.from_affine(np.diag([1.0, 1.0, 2.0, 1.0]), (4, 4, 4, 3), echo_times=[0.01, 0.02, 0.03],
                                    field_strength=3)
    np.testing.assert_allclose(axial.b0_direction, [0, 0, 1])
    assert axial.obliquity_deg == pytest.approx(0.0) and axial.shape == (4, 4, 4)
    # after resampling, the direction is carried explicitly and wins over the affine
    tilted = Acquisition.from_affine(np.diag([1.0, 1.0, 2.0, 1.0]), (4, 4, 4), echo_times=0.01,
                                     field_strength=3, b0_direction=[0, 1, 1])
    np.testing.assert_allclose(tilted.b0_direction, [0, 2 ** -0.5, 2 ** -0.5])
    assert tilted.obliquity_deg == pytest.approx(45.0)
    assert not tilted.b0_matches_affine


def test_acquisition_to_dict_from_dict_round_trip():
    acq = Acquisition.from_affine(_affine(_rot_x(13.0) @ _rot_y(-7.0)), (9, 8, 7), echo_times=[0.0041, 0.0093, 0.0145],
                                  field_strength=2.89, b0_direction=[0.1, -0.2, 0.97])
    d = json.loads(json.dumps(acq.to_dict()))
    back = Acquisition.from_dict(d)
    assert back == acq
    assert back.to_dict() == acq.to_dict()
    assert back != dataclasses.replace(acq, field_strength=3.0)
    with pytest.raises(ValueError, match="unknown key"):
        Acquisition.from_dict({**d, "echo_time": 1})
    with pytest.raises(ValueError, match="missing key.*affine"):
        Acquisition.from_dict({k: v for k, v in d.items() if k != "affine"})


def test_acquisition_validation():
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="milliseconds"):
        Acquisition.from_affine(aff, (4, 4, 4), echo_times=[4, 8, 12], field_strength=3)
    with pytest.raises(ValueError, match="tesla"):
        Acquisition.from_affine(aff, (4, 4, 4), echo_times=[0.004], field_strength=3000)
    with pytest.raises(ValueError, match="2 echo"):
        Acquisition.from_affine(aff, (4, 4, 4, 2), echo_times=[0.004, 0.008, 0.012], field_strength=3)
    with pytest.raises(ValueError, match="disagrees with the affine"):
        Acquisition(echo_times=[0.01], field_strength=3, voxel_size=[1, 1, 2], b0_direction=[0, 0, 1],
                    affine=aff, shape=(4, 4, 4))
    with pytest.raises(ValueError, match="singular"):
        Acquisition.from_affine(np.diag([1.0, 1.0, 0.0, 1.0]), (4, 4, 4), echo_times=0.01, field_strength=3)
    acq = Acquisition.from_affine(aff, (4, 4, 4), echo_times=0.01, field_strength=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        acq.field_strength = 7
    with pytest.raises(ValueError):
        acq.echo_times[0] = 0.5  # read-only arrays


def test_acquisition_from_sidecars(tmp_path):
    aff = _affine(_rot_x(10.0))
    s1 = write_sidecar(tmp_path / "e1.json", echo_times=0.004, field_strength=3, echo_number=1)
    s2 = {"EchoTime": 0.008, "MagneticFieldStrength": 3.0, "EchoNumber": 2}
    acq = Acquisition.from_sidecars([s1, s2], affine=aff, shape=(4, 5, 6, 2))
    np.testing.assert_allclose(acq.echo_times, [0.004, 0.008])
    assert acq.field_strength == 3.0
    assert acq.obliquity_deg == pytest.approx(10.0)

    with pytest.raises(ValueError, match="disagree on MagneticFieldStrength"):
        Acquisition.from_sidecars([s1, {**s2, "MagneticFieldStrength": 7}], affine=aff, shape=(4, 5, 6))
    with pytest.raises(ValueError, match="field_strength="):
        Acquisition.from_sidecars({"EchoTime": [0.004]}, affine=aff, shape=(4, 5, 6))
    # explicit values win, with a warning when they disagree
    with pytest.warns(UserWarning, match="overrides"):
        acq7 = Acquisition.from_sidecars([s1, s2], affine=aff, shape=(4, 5, 6), field_strength=7)
    assert acq7.field_strength == 7.0
    # the chimap-specific B0Direction key is read
    carried = Acquisition.from_sidecars({"EchoTime": 0.01, "MagneticFieldStrength": 3, "B0Direction": [0, 0.6, 0.8]},
                                        affine=aff, shape=(4, 5, 6))
    np.testing.assert_allclose(carried.b0_direction, [0, 0.6, 0.8])
    assert carried.obliquity_deg == pytest.approx(np.degrees(np.arccos(0.8)))
