"""I/O on real data from ../shared/data (skipped where the folder is absent)."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from chimap.io import PhaseScalingWarning, load_multiecho, load_nifti, parse_sidecar

pytestmark = pytest.mark.shared_data


def _shared(sub):
    root = Path(__file__).resolve().parents[1]
    candidates = [Path(os.environ["CHIMAP_SHARED_DATA"])] if os.environ.get("CHIMAP_SHARED_DATA") else []
    candidates += [root / "shared" / "data", root.parent / "shared" / "data"]
    for c in candidates:
        if (c / sub).is_dir():
            return c / sub
    pytest.skip(f"shared data folder {sub} not found")


def test_romeo_small_arbitrary_phase_needs_range():
    d = _shared("romeo_small") / "small"
    kw = dict(magnitude=d / "Mag.nii", phase=d / "Phase.nii", echo_times=[0.004, 0.008, 0.012], field_strength=3)
    with pytest.raises(ValueError, match="units='range'"):
        load_multiecho(**kw)  # +-0.0037: arbitrary scaling, not radians
    mag, phase, acq = load_multiecho(**kw, phase_units="range")
    assert phase.shape == mag.shape == (51, 51, 41, 3) and phase.dtype == np.float32
    assert phase.min() == pytest.approx(-np.pi, abs=1e-5) and phase.max() == pytest.approx(np.pi, abs=1e-5)
    raw, _, _ = load_nifti(d / "Phase.nii")
    np.testing.assert_allclose(phase, raw / np.abs(raw).max() * np.pi, atol=1e-5)
    np.testing.assert_allclose(acq.voxel_size, [0.46875, 0.46875, 1.0])
    assert acq.obliquity_deg == pytest.approx(0.0)


def test_romeo_phase_with_nan():
    d = _shared("romeo_small") / "small"
    kw = dict(phase=d / "phase_with_nan.nii", echo_times=[0.004, 0.008], field_strength=3, phase_units="rad")
    with pytest.raises(ValueError, match="NaN") as err:
        load_multiecho(**kw)
    assert "nan_policy='zero'" in str(err.value)
    with pytest.warns(UserWarning, match="1280 NaN"):
        _, phase, _ = load_multiecho(**kw, nan_policy="zero")
    assert np.isfinite(phase).all() and phase.shape == (128, 128, 5, 2)


def test_siemens_dcm2niix_outputs(tmp_path):
    ref = _shared("dcm_qa_fmap_siemens") / "Ref"
    info = parse_sidecar(ref / "Si_3_gre_field_magph_e2_ph.json")
    np.testing.assert_allclose(info.echo_times, [0.00765])  # EchoTime wins over EchoTime1/EchoTime2
    assert info.field_strength == 3.0 and info.echo_number == 2

    # phase difference, dcm2niix-rescaled Siemens -4096..4094 -> radians = v * pi / 4096
    with pytest.warns(PhaseScalingWarning, match="Siemens"):
        _, phase, acq = load_multiecho(phase=ref / "Si_3_gre_field_magph_e2_ph.nii")
    raw, _, _ = load_nifti(ref / "Si_3_gre_field_magph_e2_ph.nii")
    assert phase.shape == (64, 64, 36, 1) and phase.dtype == np.float32  # int16 on disk
    np.testing.assert_allclose(phase[..., 0], raw * np.pi / 4096, rtol=1e-6)
    assert acq.field_strength == 3.0 and acq.obliquity_deg == pytest.approx(0.0, abs=1e-3)

    # per-echo magnitude files given in reverse order are sorted by EchoNumber from their sidecars
    for f in ("Si_2_gre_field_magph_e1", "Si_2_gre_field_magph_e2"):
        for ext in (".nii", ".json"):
            shutil.copy(ref / (f + ext), tmp_path / (f + ext))
    files = [tmp_path / "Si_2_gre_field_magph_e2.nii", tmp_path / "Si_2_gre_field_magph_e1.nii"]
    # the magnitude stands in for phase here (0..3967 is not a phase range): pass units='range'
    _, data, acq2 = load_multiecho(phase=files, phase_units="range")
    np.testing.assert_allclose(acq2.echo_times, [0.00519, 0.00765])
    e1, _, _ = load_nifti(files[1])
    e2, _, _ = load_nifti(files[0])
    lo, hi = min(e1.min(), e2.min()), max(e1.max(), e2.max())
    for k, raw_e in enumerate((e1, e2)):
        np.testing.assert_allclose(data[..., k], (raw_e - lo) / (hi - lo) * 2 * np.pi - np.pi, atol=1e-5)


def test_chimap_run_on_a_real_patch_without_background(tmp_path, capsys):
    """romeo_small is tissue to its edges: the automatic mask is refused with the fix named (exit 2,
    nothing written), and with a mask the whole pipeline runs on the real data."""
    import nibabel as nib

    from chimap import cli

    d = _shared("romeo_small") / "small"
    args = ["-q", "run", "--magnitude", str(d / "Mag.nii"), "--phase", str(d / "Phase.nii"), "--echo-times",
            "0.004", "0.008", "0.012", "--field-strength", "3", "--phase-units", "range"]
    out = tmp_path / "out"
    assert cli.main([*args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "without background" in err and "--mask" in err and "Traceback" not in err
    assert not out.exists()
    img = nib.load(str(d / "Mag.nii"))
    mask = np.zeros(img.shape[:3], np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    nib.save(nib.Nifti1Image(mask, img.affine), str(tmp_path / "mask.nii.gz"))
    assert cli.main([*args, "--mask", str(tmp_path / "mask.nii.gz"), "-o", str(out)]) == 0
    chi = np.asarray(nib.load(str(out / "chi.nii.gz")).dataobj)
    inside = mask > 0
    assert np.isfinite(chi).all() and np.abs(chi[inside]).max() > 0 and np.all(chi[~inside] == 0)
