"""``chimap simulate head`` and ``chimap demo`` through chimap.cli.main, and the BIDS-like layout
of chimap.sim.bids read back with chimap.io."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from chimap import cli
from chimap.geometry import b0_direction_from_affine
from chimap.io import load_multiecho, load_nifti

slow = pytest.mark.slow

ANAT = "sub-sim/anat"
TRUTH = "derivatives/truth/sub-sim/anat"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    rc = cli.main(["simulate", "head", "-o", str(out), "--voxel-size", "4", "--lesions", "2", "--seed", "1",
                   "--b0-tilt", "12", "--echo-times", "0.004", "0.009", "0.014"])
    return rc, out


@slow
def test_simulate_head_writes_readable_inputs(simulated):
    rc, out = simulated
    assert rc == 0
    anat = out / ANAT
    phase = [anat / f"sub-sim_acq-gre_echo-{e}_part-phase_MEGRE.nii.gz" for e in (1, 2, 3)]
    mag = [anat / f"sub-sim_acq-gre_echo-{e}_part-mag_MEGRE.nii.gz" for e in (1, 2, 3)]
    for p in phase + mag:
        assert p.exists() and p.with_name(p.name.replace(".nii.gz", ".json")).exists()
    # given in reverse order: the sidecars' EchoNumber / EchoTime sort them
    magnitude, ph, acq = load_multiecho(phase=phase[::-1], magnitude=mag[::-1])
    assert ph.shape == magnitude.shape and ph.shape[3] == 3
    np.testing.assert_allclose(acq.echo_times, [0.004, 0.009, 0.014])
    assert acq.field_strength == 3.0
    t = np.radians(12.0)
    np.testing.assert_allclose(acq.b0_direction, [0.0, np.sin(t), np.cos(t)], atol=1e-9)
    np.testing.assert_allclose(b0_direction_from_affine(acq.affine), acq.b0_direction, atol=1e-9)
    np.testing.assert_allclose(acq.voxel_size, [4.0, 4.0, 4.0], rtol=1e-6)
    assert ph.min() >= -np.pi - 1e-6 and ph.max() <= np.pi + 1e-6
    meta = json.loads(phase[1].with_name(phase[1].name.replace(".nii.gz", ".json")).read_text())
    assert meta["EchoTime"] == pytest.approx(0.009) and meta["EchoNumber"] == 2
    assert meta["MagneticFieldStrength"] == 3.0 and meta["Units"] == "rad"
    # echo order: magnitude decays with echo number in the brain
    brain = load_nifti(out / TRUTH / "sub-sim_desc-brain_mask.nii.gz")[0] > 0
    means = [magnitude[..., e][brain].mean() for e in range(3)]
    assert means[0] > means[1] > means[2]


@slow
def test_simulate_head_writes_truth(simulated):
    rc, out = simulated
    truth = out / TRUTH
    names = ["sub-sim_Chimap", "sub-sim_desc-fullhead_Chimap", "sub-sim_desc-total_fieldmap",
             "sub-sim_desc-local_fieldmap", "sub-sim_desc-background_fieldmap", "sub-sim_desc-brain_mask",
             "sub-sim_dseg", "sub-sim_desc-lesions_mask", "sub-sim_R2starmap", "sub-sim_M0map",
             "sub-sim_desc-phaseoffset_phase"]
    data = {}
    for n in names:
        data[n], aff, _ = load_nifti(truth / f"{n}.nii.gz")
        assert data[n].shape == data["sub-sim_Chimap"].shape
        np.testing.assert_allclose(b0_direction_from_affine(aff),
                                   [0.0, np.sin(np.radians(12)), np.cos(np.radians(12))], atol=1e-6)
    mask = data["sub-sim_desc-brain_mask"] > 0
    assert not data["sub-sim_Chimap"][~mask].any()
    np.testing.assert_allclose(data["sub-sim_desc-total_fieldmap"],
                               data["sub-sim_desc-local_fieldmap"] + data["sub-sim_desc-background_fieldmap"],
                               atol=1e-5)
    # label table lists exactly the labels present
    with open(truth / "sub-sim_dseg.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert {int(r["index"]) for r in rows} == set(np.unique(data["sub-sim_dseg"]).astype(int))
    assert {r["name"] for r in rows} >= {"white_matter", "globus_pallidus", "air"}
    # lesion table, lesion json and lesion map agree
    with open(truth / "sub-sim_lesions.tsv") as fh:
        lrows = list(csv.DictReader(fh, delimiter="\t"))
    ljson = json.loads((truth / "sub-sim_lesions.json").read_text())
    assert [int(r["lesion_id"]) for r in lrows] == [r["lesion_id"] for r in ljson] == [1, 2]
    for r in lrows:
        n = int((data["sub-sim_desc-lesions_mask"] == int(r["lesion_id"])).sum())
        assert int(r["n_voxels"]) == n
        assert float(r["volume_mm3"]) == pytest.approx(n * 64.0)
    sim = json.loads((out / "derivatives" / "truth" / "simulation.json").read_text())
    p = sim["parameters"]
    assert p["voxel_size"] == [4.0, 4.0, 4.0] and p["lesions"] == 2 and p["rng"] == 1
    assert p["echo_times"] == [0.004, 0.009, 0.014] and p["b0_tilt_deg"] == 12.0
    assert sim["noise_sigma"] > 0  # default SNR 100
    assert (out / "dataset_description.json").exists() and (out / "README.md").exists()
    assert (out / ANAT / "sub-sim_T1w.nii.gz").exists()


@slow
def test_simulate_epi_sidecars(tmp_path):
    rc = cli.main(["-q", "simulate", "head", "-o", str(tmp_path), "--voxel-size", "4", "--protocol", "epi",
                   "--echo-times", "0.02", "--segments", "12", "--snr", "0"])
    assert rc == 0
    meta = json.loads((tmp_path / ANAT / "sub-sim_acq-epi_echo-1_part-phase_MEGRE.json").read_text())
    assert meta["PulseSequenceType"] == "segmented 3D-EPI"
    assert meta["EffectiveEchoSpacing"] == pytest.approx(0.0008 / 12)
    sim = json.loads((tmp_path / "derivatives" / "truth" / "simulation.json").read_text())
    assert sim["noise_sigma"] == 0.0 and sim["parameters"]["snr"] is None


def test_voxel_size_two_values_is_usage_error(tmp_path, capsys):
    rc = cli.main(["simulate", "head", "-o", str(tmp_path), "--voxel-size", "1", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--voxel-size" in err and "one or three" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_echo_times_in_ms_is_usage_error(tmp_path, capsys):
    rc = cli.main(["simulate", "head", "-o", str(tmp_path), "--voxel-size", "4", "--echo-times", "5", "10"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "milliseconds" in err
    assert not any(tmp_path.iterdir())


def test_negative_snr_and_lesions_are_usage_errors(tmp_path, capsys):
    assert cli.main(["simulate", "head", "-o", str(tmp_path), "--voxel-size", "4", "--snr", "-3"]) == 2
    assert "SNR" in capsys.readouterr().err
    assert cli.main(["simulate", "head", "-o", str(tmp_path), "--voxel-size", "4", "--lesions", "-2"]) == 2
    assert "lesions" in capsys.readouterr().err


@slow
def test_demo_writes_report_and_chi(tmp_path):
    rc = cli.main(["demo", "-o", str(tmp_path), "--voxel-size", "4", "--lesions", "2"])
    assert rc == 0
    report = tmp_path / "report.html"
    assert report.exists()
    html = report.read_text()
    assert "<html" in html.lower() and "lesion 1" in html and "lesion 2" in html
    chi, aff, _ = load_nifti(tmp_path / TRUTH / "sub-sim_Chimap.nii.gz")
    mask = load_nifti(tmp_path / TRUTH / "sub-sim_desc-brain_mask.nii.gz")[0] > 0
    assert chi.shape == mask.shape and mask.sum() > 1000
    assert np.isfinite(chi).all() and chi[mask].std() > 0.01
    # the demo tilts the head by 10 degrees
    np.testing.assert_allclose(b0_direction_from_affine(aff), [0, np.sin(np.radians(10)), np.cos(np.radians(10))],
                               atol=1e-6)


def test_challenge_anisotropic_voxels_are_a_usage_error(tmp_path, capsys):
    """The challenge model is simulated on isotropic multiples of 0.64 mm: anisotropic voxel
    sizes are refused (they used to be replaced silently by the largest one)."""
    out = tmp_path / "c"
    rc = cli.main(["simulate", "challenge", "--segmentation-dir", str(tmp_path), "-o", str(out),
                   "--voxel-size", "1.28", "1.28", "2.56"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "isotropic" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
