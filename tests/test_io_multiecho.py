"""load_multiecho: 4-D and per-echo files, sorting, sidecars, checks."""

import json

import numpy as np
import pytest

from chimap.io import PhaseScalingWarning, load_multiecho, save_nifti, write_sidecar

SHAPE = (6, 5, 4)
TE = [0.004, 0.008, 0.012]


def _affine(tilt_deg=12.0):
    t = np.radians(tilt_deg)
    a = np.eye(4)
    a[:3, :3] = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]]) * [1.0, 1.0, 2.0]
    a[:3, 3] = [-3.0, -2.5, 4.0]
    return a


def _phase(n_echoes=3, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(-np.pi, np.pi, SHAPE + (n_echoes,)).astype(np.float32)
    p[0, 0, 0, :] = -np.pi
    p[0, 0, 1, :] = np.float32(3.14)
    return p


def _mag(n_echoes=3):
    return np.stack([np.full(SHAPE, 100.0 - 10 * e, np.float32) for e in range(n_echoes)], axis=-1)


def test_4d_files_with_one_sidecar(tmp_path):
    ph, mg, aff = _phase(), _mag(), _affine()
    save_nifti(tmp_path / "phase.nii.gz", ph, aff)
    save_nifti(tmp_path / "mag.nii.gz", mg, aff)
    write_sidecar(tmp_path / "phase.json", echo_times=TE, field_strength=3)
    mag, phase, acq = load_multiecho(magnitude=tmp_path / "mag.nii.gz", phase=tmp_path / "phase.nii.gz")
    assert phase.shape == mag.shape == SHAPE + (3,)
    assert phase.dtype == mag.dtype == np.float32
    np.testing.assert_array_equal(phase, ph)
    np.testing.assert_array_equal(mag, mg)
    np.testing.assert_allclose(acq.echo_times, TE)
    assert acq.field_strength == 3.0 and acq.shape == SHAPE
    np.testing.assert_allclose(acq.affine, aff, atol=1e-5)
    assert acq.obliquity_deg == pytest.approx(12.0, abs=1e-3)


def test_single_3d_echo_promoted_and_explicit_parameters(tmp_path):
    ph = _phase(1)[..., 0].astype(np.float64)
    save_nifti(tmp_path / "p.nii", ph, _affine())
    mag, phase, acq = load_multiecho(phase=str(tmp_path / "p.nii"), echo_times=0.02, field_strength=7,
                                     b0_direction=[0, 0, 1])
    assert mag is None
    assert phase.shape == SHAPE + (1,) and phase.dtype == np.float64
    np.testing.assert_array_equal(phase[..., 0], ph)
    assert acq.n_echoes == 1 and acq.obliquity_deg == 0.0  # explicit direction wins over the tilted affine


@pytest.mark.parametrize("with_echo_number", [False, True])
def test_list_of_3d_echoes_sorted(tmp_path, with_echo_number):
    ph, mg, aff = _phase(), _mag(), _affine()
    order = [2, 0, 1]  # given out of order
    pfiles, mfiles = [], []
    for e in order:
        pf, mf = tmp_path / f"e{e}_phase.nii.gz", tmp_path / f"e{e}_mag.nii.gz"
        save_nifti(pf, ph[..., e], aff)
        save_nifti(mf, mg[..., e], aff)
        meta = {"EchoTime": TE[e], "MagneticFieldStrength": 3}
        if with_echo_number:
            meta["EchoNumber"] = e + 1
        write_sidecar(tmp_path / f"e{e}_phase.json", meta)  # magnitude has no sidecar: follows the phase
        pfiles.append(pf)
        mfiles.append(mf)
    mag, phase, acq = load_multiecho(magnitude=mfiles, phase=pfiles)
    np.testing.assert_allclose(acq.echo_times, TE)
    np.testing.assert_array_equal(phase, ph)
    np.testing.assert_array_equal(mag, mg)


def test_list_with_explicit_echo_times_and_magnitude_sidecars(tmp_path):
    ph, mg, aff = _phase(), _mag(), _affine()
    pfiles, mfiles = [], []
    for e in [1, 2, 0]:
        save_nifti(tmp_path / f"p{e}.nii", ph[..., e], aff)
        pfiles.append(tmp_path / f"p{e}.nii")
    for e in [0, 2, 1]:  # magnitude in yet another order, told by its own sidecars
        save_nifti(tmp_path / f"m{e}.nii", mg[..., e], aff)
        write_sidecar(tmp_path / f"m{e}.json", echo_times=TE[e], field_strength=3)
        mfiles.append(tmp_path / f"m{e}.nii")
    # phase sidecars absent: the magnitude's sidecars tell the field strength; explicit TEs in given file order
    mag, phase, acq = load_multiecho(magnitude=mfiles, phase=pfiles, json=None,
                                     echo_times=[TE[1], TE[2], TE[0]], field_strength=3)
    np.testing.assert_allclose(acq.echo_times, TE)
    np.testing.assert_array_equal(phase, ph)
    np.testing.assert_array_equal(mag, mg)


def test_echo_times_in_ms_rejected(tmp_path):
    save_nifti(tmp_path / "p.nii.gz", _phase(), _affine())
    (tmp_path / "p.json").write_text(json.dumps({"EchoTime": [4, 8, 12], "MagneticFieldStrength": 3}))
    with pytest.raises(ValueError, match="millisecond"):
        load_multiecho(phase=tmp_path / "p.nii.gz")
    with pytest.raises(ValueError, match="millisecond"):
        load_multiecho(phase=tmp_path / "p.nii.gz", json={}, echo_times=[4, 8, 12], field_strength=3)


def test_echo_count_must_match_echo_axis(tmp_path):
    save_nifti(tmp_path / "p.nii.gz", _phase(), _affine())
    with pytest.raises(ValueError, match="3 echo.*2 echo time"):
        load_multiecho(phase=tmp_path / "p.nii.gz", echo_times=[0.004, 0.008], field_strength=3)


def test_missing_echo_times_or_field_strength(tmp_path):
    save_nifti(tmp_path / "p.nii.gz", _phase(), _affine())
    with pytest.raises(ValueError, match="echo_times="):
        load_multiecho(phase=tmp_path / "p.nii.gz", field_strength=3)
    with pytest.raises(ValueError, match="field_strength="):
        load_multiecho(phase=tmp_path / "p.nii.gz", echo_times=TE)
    with pytest.raises(FileNotFoundError):
        load_multiecho(phase=tmp_path / "nope.nii.gz", echo_times=TE, field_strength=3)


def test_mismatched_shapes_rejected(tmp_path):
    save_nifti(tmp_path / "p.nii.gz", _phase(), _affine())
    save_nifti(tmp_path / "m.nii.gz", _mag(2), _affine())
    with pytest.raises(ValueError, match=r"magnitude shape \(6, 5, 4, 2\) differs from phase shape \(6, 5, 4, 3\)"):
        load_multiecho(magnitude=tmp_path / "m.nii.gz", phase=tmp_path / "p.nii.gz", echo_times=TE, field_strength=3)
    save_nifti(tmp_path / "e1.nii", np.zeros((6, 5, 4), np.float32), _affine())
    save_nifti(tmp_path / "e2.nii", np.zeros((6, 5, 3), np.float32), _affine())
    with pytest.raises(ValueError, match=r"differ in shape.*\(6, 5, 4\).*\(6, 5, 3\)"):
        load_multiecho(phase=[tmp_path / "e1.nii", tmp_path / "e2.nii"], echo_times=TE[:2], field_strength=3)


def test_mismatched_affines_rejected(tmp_path):
    save_nifti(tmp_path / "p.nii.gz", _phase(), _affine(12.0))
    save_nifti(tmp_path / "m.nii.gz", _mag(), _affine(14.0))
    with pytest.raises(ValueError, match="affines differ"):
        load_multiecho(magnitude=tmp_path / "m.nii.gz", phase=tmp_path / "p.nii.gz", echo_times=TE, field_strength=3)
    shifted = _affine(12.0)
    shifted[0, 3] += 1e-5  # float rounding in converters is tolerated
    save_nifti(tmp_path / "m.nii.gz", _mag(), shifted)
    load_multiecho(magnitude=tmp_path / "m.nii.gz", phase=tmp_path / "p.nii.gz", echo_times=TE, field_strength=3)


def test_nan_policy(tmp_path):
    ph = _phase()
    ph[1, 1, 1, 1] = np.nan
    ph[2, 2, 2, 1] = np.nan
    save_nifti(tmp_path / "p.nii.gz", ph, _affine())
    save_nifti(tmp_path / "m.nii.gz", _mag(), _affine())
    kw = dict(magnitude=tmp_path / "m.nii.gz", phase=tmp_path / "p.nii.gz", echo_times=TE, field_strength=3)
    with pytest.raises(ValueError, match=r"echo 2 \(TE 8 ms\): 2 of 120.*nan_policy='zero'"):
        load_multiecho(**kw)
    with pytest.warns(UserWarning, match="2 NaN"):
        mag, phase, _ = load_multiecho(**kw, nan_policy="zero")
    assert np.isfinite(phase).all()
    assert phase[1, 1, 1, 1] == 0 and mag[1, 1, 1, 1] == 0 and mag[1, 1, 1, 0] == 100
    with pytest.raises(ValueError, match="nan_policy"):
        load_multiecho(**kw, nan_policy="ignore")


def test_vendor_phase_scaled_and_sign(tmp_path):
    truth = _phase()
    stored = np.round(truth * 4096 / np.pi).astype(np.int16)  # Siemens, dcm2niix-rescaled
    save_nifti(tmp_path / "p.nii.gz", stored, _affine())
    kw = dict(phase=tmp_path / "p.nii.gz", echo_times=TE, field_strength=3)
    with pytest.warns(PhaseScalingWarning, match="Siemens"):
        _, phase, _ = load_multiecho(**kw)
    assert phase.dtype == np.float32
    np.testing.assert_allclose(phase, stored * np.pi / 4096, rtol=1e-6)
    _, neg, _ = load_multiecho(**kw, phase_units="siemens", phase_sign=-1)
    np.testing.assert_array_equal(neg, -phase)
    with pytest.raises(ValueError, match="units='range'"):
        load_multiecho(**kw, phase_units="milliradians")  # out of range for the stated units


def test_sidecar_phase_units_used(tmp_path):
    small = (_phase() * 0.1).astype(np.float32)  # radians, but too small a range to detect
    save_nifti(tmp_path / "p.nii.gz", small, _affine())
    with pytest.raises(ValueError, match="units='rad'"):
        load_multiecho(phase=tmp_path / "p.nii.gz", echo_times=TE, field_strength=3)
    write_sidecar(tmp_path / "p.json", echo_times=TE, field_strength=3, phase_units="rad")
    _, phase, _ = load_multiecho(phase=tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(phase, small)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="phase is required"):
        load_multiecho(phase=None)
    save_nifti(tmp_path / "p.nii.gz", _phase(), _affine())
    with pytest.raises(ValueError, match="same layout"):
        load_multiecho(phase=tmp_path / "p.nii.gz", magnitude=[tmp_path / "p.nii.gz"] * 2)
    with pytest.raises(ValueError, match="3-D volume per echo"):
        load_multiecho(phase=[tmp_path / "p.nii.gz"], echo_times=TE, field_strength=3)
