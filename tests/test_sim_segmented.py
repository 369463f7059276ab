"""Simulation from a label map: synthetic labels, and the QSM challenge 2.0 head model where
../shared/data holds it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from chimap import cli
from chimap.constants import GAMMA_BAR_HZ_PER_T
from chimap.sim.segmented import load_challenge_segmentation, simulate_segmentation
from chimap.sim.tissues import LABELS


def _ball_head(n=48, vs=1.0):
    """Air around a CSF-skinned white-matter ball holding a globus-pallidus sphere."""
    c = (np.arange(n) - (n - 1) / 2) * vs
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    labels = np.zeros((n, n, n), np.uint8)
    labels[r < 18] = LABELS["csf"]
    labels[r < 15] = LABELS["white_matter"]
    gp = np.sqrt((c[:, None, None] - 4) ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) < 5
    labels[gp] = LABELS["globus_pallidus"]
    return labels, r < 15


def test_label_map_truth_and_phase_consistent():
    labels, brain = _ball_head()
    head = simulate_segmentation(labels, brain, (1.0, 1.0, 1.0), chi_overrides={LABELS["globus_pallidus"]: 0.2},
                                 snr=None, phase_offset_amplitude=0.0, echo_times=(0.01, 0.02))
    assert head.magnitude.shape == (24, 24, 24, 2) and head.magnitude.dtype == np.float32
    np.testing.assert_allclose(head.voxel_size, 2.0)
    # the GP override is in the truth (core of the sphere, away from partial volume)
    core = ndimage.binary_erosion(head.labels == LABELS["globus_pallidus"])
    assert core.any()
    assert head.chi[core].mean() == pytest.approx(0.2, abs=0.02)
    np.testing.assert_allclose(head.total_field, head.local_field + head.background_field, atol=1e-6)
    # noise-free phase = 2 pi gamma B0 field TE (within intravoxel dephasing), inside the brain
    inner = ndimage.binary_erosion(head.brain_mask, iterations=2)
    expected = 2 * np.pi * GAMMA_BAR_HZ_PER_T * 3.0 * 1e-6 * head.total_field * 0.02
    err = np.angle(np.exp(1j * (head.phase[..., 1] - expected)))[inner]
    # Measured median |err| 0.08 rad: k-space cropping rings at the sharp ball edge on this tiny
    # 24-voxel grid, and the 5 mm GP sphere dephases within 2 mm voxels. The mean is unbiased
    # (measured 0.0015 rad); the median bound checks sign and scale (fields here reach 1 rad).
    assert np.median(np.abs(err)) < 0.12
    assert abs(err.mean()) < 0.01


def test_label_map_rejects_bad_input():
    labels, brain = _ball_head(16)
    with pytest.raises(ValueError, match="chimap tissue labels"):
        simulate_segmentation(np.full_like(labels, 99), brain, 1.0)
    with pytest.raises(ValueError, match="must be 3-D and equal"):
        simulate_segmentation(labels, brain[:-1], 1.0)
    with pytest.raises(ValueError, match="millisecond"):
        simulate_segmentation(labels, brain, 1.0, echo_times=(5, 10))


def _challenge_dir():
    here = Path(__file__).resolve().parent
    for root in (here.parent.parent / "shared" / "data", here.parent / "shared" / "data"):
        d = root / "qsm2_headphantom_segmentation_neuropoly"
        if (d / "SegmentedModel.nii.gz").exists():
            return d
    pytest.skip("challenge 2.0 segmentation not found in ../shared/data")


@pytest.mark.shared_data
@pytest.mark.slow
def test_challenge_head_matches_its_table():
    folder = _challenge_dir()
    labels, brain, vs, chi = load_challenge_segmentation(folder)
    assert labels.shape == (256, 320, 320) and np.allclose(vs, 0.64)
    sub = (slice(None, None, 2),) * 3
    head = simulate_segmentation(labels[sub], brain[sub], vs * 2, chi_overrides=chi, snr=None, rng=3)
    assert head.magnitude.shape == (64, 80, 80, 4)
    for name in ("globus_pallidus", "putamen", "white_matter", "thalamus"):
        lab = LABELS[name]
        core = ndimage.binary_erosion(head.labels == lab) & head.brain_mask
        # block means at the core of each structure: partial volume only at structure edges
        assert head.chi[core].mean() == pytest.approx(chi[lab], abs=0.015), name
    # background field harmonic inside the brain: its Laplacian is much smaller than the local one's
    inner = ndimage.binary_erosion(head.brain_mask, iterations=3)
    lap_bg = ndimage.laplace(head.background_field.astype(np.float64))[inner]
    lap_loc = ndimage.laplace(head.local_field.astype(np.float64))[inner]
    assert np.sqrt((lap_bg ** 2).mean()) < 0.15 * np.sqrt((lap_loc ** 2).mean())


@pytest.mark.shared_data
@pytest.mark.slow
def test_cli_simulate_challenge(tmp_path):
    folder = _challenge_dir()
    rc = cli.main(["-q", "simulate", "challenge", "--segmentation-dir", str(folder), "-o", str(tmp_path),
                   "--voxel-size", "2.56", "--b0-tilt", "12"])
    assert rc == 0
    sim = json.loads((tmp_path / "derivatives" / "truth" / "simulation.json").read_text())
    assert sim["parameters"]["shape"] == [64, 80, 80]
    assert sim["parameters"]["b0_direction"][1] == pytest.approx(np.sin(np.radians(12)))
    assert (tmp_path / "derivatives" / "truth" / "sub-sim" / "anat" / "sub-sim_Chimap.nii.gz").exists()


def test_cli_simulate_challenge_needs_folder(tmp_path, capsys):
    rc = cli.main(["simulate", "challenge", "-o", str(tmp_path)])
    assert rc == 2
    assert "--segmentation-dir" in capsys.readouterr().err
    assert not os.listdir(tmp_path)
