"""Tests of the ``chimap metrics`` subcommand, called through chimap.cli.main."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from chimap import cli
from chimap.commands import COMMANDS

AFFINE = np.diag([0.8, 0.8, 1.0, 1.0])


@pytest.fixture(autouse=True)
def only_metrics_command(monkeypatch):
    """Build the parser with the metrics subcommand only, so that these tests do not depend on
    the other subcommands' modules."""
    monkeypatch.setattr(cli, "COMMANDS", ["metrics"])


def labelled_phantom(n=24):
    """Small labelled phantom (simulator labels): brain, deep grey, a vein, a calcification."""
    ii, jj, kk = np.indices((n, n, n))
    c = (n - 1) / 2
    r2 = (ii - c) ** 2 + (jj - c) ** 2 + (kk - c) ** 2
    labels = np.zeros((n, n, n), np.int16)
    labels[r2 <= 10**2] = 1
    for lab, (a, b) in zip((4, 5, 6, 7), ((8, 8), (15, 8), (8, 15), (15, 15))):
        labels[(ii - a) ** 2 + (jj - b) ** 2 + (kk - 12) ** 2 <= 4] = lab
    labels[(abs(ii - 12) <= 1) & (abs(jj - 4) <= 1) & (kk > 6) & (kk < 18)] = 11
    labels[(ii - 12) ** 2 + (jj - 12) ** 2 + (kk - 17) ** 2 <= 2] = 12
    values = {1: -0.02, 4: 0.06, 5: 0.08, 6: 0.15, 7: 0.05, 11: 0.45, 12: -0.6}
    ref = np.zeros(labels.shape)
    for lab, val in values.items():
        ref[labels == lab] = val
    ref += 0.01 * np.sin(ii / 2.0) * np.isin(labels, [4, 5, 6, 7])
    return ref, labels


def save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


@pytest.fixture
def files(tmp_path):
    ref, labels = labelled_phantom(24)
    ref = ref.astype(np.float32)
    rng = np.random.default_rng(0)
    noisy = (ref + 0.02 * rng.standard_normal(ref.shape) * (labels > 0)).astype(np.float32)
    return {
        "truth": save(tmp_path / "truth.nii.gz", ref),
        "same": save(tmp_path / "same.nii.gz", ref),
        "noisy": save(tmp_path / "noisy.nii.gz", noisy),
        "mask": save(tmp_path / "brain.nii.gz", (labels > 0).astype(np.uint8)),
        "labels": save(tmp_path / "labels.nii.gz", labels.astype(np.int16)),
        "dir": tmp_path,
    }


def test_metrics_is_registered():
    assert "metrics" in COMMANDS


def test_cli_writes_json_and_csv(files, capsys):
    out_json = files["dir"] / "out" / "metrics.json"
    out_csv = files["dir"] / "out" / "metrics.csv"
    rc = cli.main(["metrics", files["same"], files["noisy"], "--reference", files["truth"],
                   "--mask", files["mask"], "--labels", files["labels"],
                   "-o", str(out_json), "--csv", str(out_csv)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "same.nii.gz" in printed and "noisy.nii.gz" in printed and "xsim" in printed

    record = json.loads(out_json.read_text())
    assert record["parameters"]["voxel_size"] == pytest.approx([0.8, 0.8, 1.0])
    assert "chimap_version" in record
    same, noisy = (r["metrics"] for r in record["results"])
    assert [r["estimate"] for r in record["results"]] == [files["same"], files["noisy"]]
    assert same["nrmse"] == 0.0 and same["ssim"] == pytest.approx(1.0)
    assert same["psnr"] is None  # infinite PSNR is written as null
    assert same["deep_grey_slope"] == pytest.approx(1.0)
    assert noisy["nrmse"] > 0.05 and noisy["ssim"] < 0.99
    assert noisy["rmse"] == pytest.approx(0.02, rel=0.1)

    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["estimate"] for r in rows] == [files["same"], files["noisy"]]
    assert float(rows[1]["rmse"]) == pytest.approx(noisy["rmse"])
    assert math.isinf(float(rows[0]["psnr"]))
    assert "calc_moment_deviation" in rows[0]
    # No temporary files left next to the outputs.
    assert sorted(p.name for p in out_json.parent.iterdir()) == ["metrics.csv", "metrics.json"]


def test_cli_without_labels_and_quiet(files, capsys):
    out_json = files["dir"] / "m.json"
    rc = cli.main(["-q", "metrics", files["noisy"], "-r", files["truth"], "-m", files["mask"],
                   "-o", str(out_json)])
    assert rc == 0
    assert capsys.readouterr().out == ""
    metrics = json.loads(out_json.read_text())["results"][0]["metrics"]
    assert "hfen" in metrics and "deep_grey_slope" not in metrics


def test_cli_shape_mismatch_returns_2(files, capsys):
    small = save(files["dir"] / "small.nii.gz", np.zeros((10, 10, 10), np.float32))
    out_json = files["dir"] / "bad.json"
    rc = cli.main(["metrics", small, "--reference", files["truth"], "--mask", files["mask"],
                   "-o", str(out_json)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "shape" in err and "small.nii.gz" in err
    assert not out_json.exists()


def test_cli_missing_file_returns_2(files, capsys):
    rc = cli.main(["metrics", str(files["dir"] / "nope.nii.gz"), "--reference", files["truth"],
                   "--mask", files["mask"]])
    assert rc == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_nan_in_mask_returns_2(files, capsys):
    data = np.asarray(nib.load(files["noisy"]).dataobj).copy()
    data[12, 12, 12] = np.nan
    bad = save(files["dir"] / "nan.nii.gz", data)
    rc = cli.main(["metrics", bad, "--reference", files["truth"], "--mask", files["mask"]])
    assert rc == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "nan.nii.gz" in err


def test_cli_mask_shape_mismatch_returns_2(files, capsys):
    mask = save(files["dir"] / "mask_small.nii.gz", np.ones((5, 5, 5), np.uint8))
    rc = cli.main(["metrics", files["noisy"], "--reference", files["truth"], "--mask", mask])
    assert rc == 2
    assert "mask" in capsys.readouterr().err
