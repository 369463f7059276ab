"""BIDS subject discovery for chimap run."""

import pytest

from chimap.io.bids import find_subject_echoes


def _touch(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def test_echoes_sorted_by_number_and_paired(tmp_path):
    anat = tmp_path / "sub-01" / "anat"
    names = [f"sub-01_echo-{e}_part-{p}_MEGRE.nii.gz" for e in (3, 1, 10, 2) for p in ("mag", "phase")]
    _touch(anat, names + ["sub-01_T1w.nii.gz", "sub-01_echo-1_part-phase_MEGRE.json"])
    mag, phase, js = find_subject_echoes(tmp_path / "sub-01")
    assert [p.name for p in phase] == [f"sub-01_echo-{e}_part-phase_MEGRE.nii.gz" for e in (1, 2, 3, 10)]
    assert [p.name for p in mag] == [f"sub-01_echo-{e}_part-mag_MEGRE.nii.gz" for e in (1, 2, 3, 10)]
    assert js is None


def test_phase_only_and_errors(tmp_path):
    _touch(tmp_path / "a", ["sub-01_echo-1_part-phase_MEGRE.nii.gz"])
    mag, phase, _ = find_subject_echoes(tmp_path / "a")
    assert mag is None and len(phase) == 1
    _touch(tmp_path / "b", ["sub-01_T1w.nii.gz"])
    with pytest.raises(ValueError, match="no \\*_part-phase_\\*"):
        find_subject_echoes(tmp_path / "b")
    _touch(tmp_path / "c", ["sub-01_acq-a_echo-1_part-phase_MEGRE.nii.gz", "sub-01_acq-b_echo-1_part-phase_MEGRE.nii.gz"])
    with pytest.raises(ValueError, match="several phase series"):
        find_subject_echoes(tmp_path / "c")
    _touch(tmp_path / "d", ["s_echo-1_part-phase_MEGRE.nii.gz", "s_echo-2_part-phase_MEGRE.nii.gz",
                            "s_echo-1_part-mag_MEGRE.nii.gz"])
    with pytest.raises(ValueError, match="do not match"):
        find_subject_echoes(tmp_path / "d")
    with pytest.raises(FileNotFoundError):
        find_subject_echoes(tmp_path / "missing")
