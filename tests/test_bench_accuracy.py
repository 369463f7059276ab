"""Smoke tests of benchmarks/accuracy.py (the accuracy tables): metrics, table layout, method
calls and caching on tiny problems (no head simulation)."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from test_invert import _blobs

from chimap.forward import dipole_field
from chimap.metrics import hfen, nrmse, psnr, ssim, xsim
from chimap.sim.tissues import LABELS

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
_spec = importlib.util.spec_from_file_location("bench_accuracy", _PATH)
acc = importlib.util.module_from_spec(_spec)
sys.modules["bench_accuracy"] = acc  # dataclasses look their module up there
_spec.loader.exec_module(acc)


def _labelled_truth(shape=(30, 34, 28)):
    rng = np.random.default_rng(0)
    truth = np.zeros(shape)
    labels = np.zeros(shape, np.uint8)
    mask = np.zeros(shape, bool)
    mask[4:-4, 5:-5, 4:-4] = True
    labels[mask] = LABELS["white_matter"]
    labels[10:14, 10:15, 10:14] = LABELS["caudate"]
    labels[16:20, 18:23, 12:16] = LABELS["putamen"]
    truth[mask] = rng.normal(0, 0.02, mask.sum())
    truth[labels == LABELS["caudate"]] += 0.06
    truth[labels == LABELS["putamen"]] += 0.08
    return truth, mask, labels


def test_evaluate_perfect_estimate_and_offset_invariance():
    truth, mask, labels = _labelled_truth()
    out = acc.evaluate(truth + 0.3 * mask, truth, mask, labels)  # any reference offset
    assert out["ssim"] == pytest.approx(1.0) and out["xsim"] == pytest.approx(1.0)
    assert out["nrmse"] == pytest.approx(0.0, abs=1e-9) and out["hfen"] == pytest.approx(0.0, abs=1e-9)
    assert out["dgm_ppb"] == pytest.approx(0.0, abs=1e-9) and out["psnr"] > 200  # rounding only


def test_evaluate_matches_the_metrics_on_the_uncropped_demeaned_maps():
    truth, mask, labels = _labelled_truth()
    est = 0.8 * truth + np.random.default_rng(1).normal(0, 0.01, truth.shape) + 0.1
    out = acc.evaluate(est.astype(np.float32), truth, mask, labels)
    x = np.where(mask, est - est[mask].mean(), 0)
    r = np.where(mask, truth - truth[mask].mean(), 0)
    assert out["ssim"] == pytest.approx(ssim(x, r, mask), rel=1e-6)
    assert out["xsim"] == pytest.approx(xsim(x, r, mask), rel=1e-6)
    assert out["hfen"] == pytest.approx(hfen(x, r, mask, percent=True), rel=1e-6)
    assert out["psnr"] == pytest.approx(psnr(x, r, mask), rel=1e-6)
    assert out["nrmse"] == pytest.approx(nrmse(est, truth, mask, demean=True, percent=True), rel=1e-6)
    # deep-grey error: mean |ROI mean error| (ppb) after whole-mask referencing
    errs = [x[(labels == LABELS[n]) & mask].mean() - r[(labels == LABELS[n]) & mask].mean()
            for n in ("caudate", "putamen")]
    assert out["dgm_ppb"] == pytest.approx(1e3 * np.mean(np.abs(errs)), rel=1e-6)
    assert math.isnan(acc.evaluate(est, truth, mask)["dgm_ppb"])  # no labels
    with pytest.raises(ValueError, match="NaN"):
        acc.evaluate(np.where(mask, np.nan, 0), truth, mask)


def test_field_noise_conversion():
    mag = np.ones((4, 4, 4, 2))
    mag[..., 1] = 0.5
    mask = np.ones((4, 4, 4), bool)
    te = [0.01, 0.02]
    got = acc.field_noise_ppb(mag, mask, te, 3.0, 100.0)
    # phase SD per echo 1/100 and 1/50 rad; fit through the origin: 1/sqrt(sum (TE/sd)^2) rad/s
    omega = 1.0 / np.sqrt((0.01 * 100) ** 2 + (0.02 * 50) ** 2)
    assert got == pytest.approx(1e3 * omega / (2 * np.pi * 42.577478 * 3.0), rel=1e-6)
    assert acc.field_noise_ppb(mag, mask, te, 3.0, 40.0) == pytest.approx(got * 2.5)


def _row(name, v, **extra):
    return dict(method=name, ssim=v, psnr=30 + v, nrmse=50 - v, hfen=40 - v, xsim=v, dgm_ppb=5 - v,
                time=1.25, note="", **extra)


def test_table_layout_bold_best_and_failures():
    rows = [_row("A", 0.5), _row("B", 0.9), {"method": "C", "error": "ValueError: boom"},
            {**_row("D", 0.1), "psnr": float("inf"), "dgm_ppb": float("nan"), "note": "alpha auto = 0.0002"}]
    text = acc.format_table(rows)
    lines = text.splitlines()
    assert lines[0] == "| Method | SSIM | PSNR (dB) | NRMSE (%) | HFEN (%) | XSIM | DGM err (ppb) | time (s) |"
    assert lines[1].count("|") == 9
    assert lines[3] == "| B | **0.9000** | 30.90 | **49.1** | **39.1** | **0.9000** | **4.1** | 1.2 |"
    assert "| D (alpha auto = 0.0002) | 0.1000 | **inf** |" in text and "| - |" in text
    assert "C: failed (ValueError: boom)" in text and "| C |" not in text


def _tiny_problem(weight=None):
    chi, mask = _blobs(shape=(24, 26, 22), voxel_size=(2.0, 2.0, 2.0))
    vs = np.array([2.0, 2.0, 2.0])
    f = dipole_field(chi, None, vs).astype(np.float32)
    return acc.Problem(key="tiny", title="tiny", field=np.where(mask, f, 0).astype(np.float32), mask=mask,
                       voxel_size=vs, b0_direction=np.array([0.0, 0.0, 1.0]), truth=chi, eval_mask=mask,
                       magnitude=np.ones(mask.shape, np.float32), weight=weight)


def test_call_method_alpha_auto_fallback_and_keywords():
    seen = []

    def no_auto(local_field, mask, voxel_size, *, b0_direction=(0, 0, 1), alpha=1e-3, weight=None):
        if isinstance(alpha, str):  # as chimap's check_positive does
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        seen.append((alpha, weight is not None))
        return np.zeros_like(local_field)

    def with_auto(local_field, mask, voxel_size, *, alpha=1e-3, magnitude=None, return_info=False):
        seen.append((alpha, magnitude is not None))
        return np.zeros_like(local_field), {"alpha": 2.5e-4}

    prob = _tiny_problem(weight=np.ones((24, 26, 22), np.float32))
    _, _, note = acc.call_method(acc.Method("x", "X", no_auto, {}, None), prob, alpha_mode="auto")
    assert note.startswith("default") and seen[-1] == (1e-3, True)
    _, _, note = acc.call_method(acc.Method("y", "Y", with_auto, {}, None), prob, alpha_mode="auto")
    assert note == "auto = 0.00025" and seen[-1] == ("auto", True)
    _, _, note = acc.call_method(acc.Method("y", "Y", with_auto, {}, None), prob, alpha_mode="default")
    assert note is None and seen[-1] == (1e-3, True)


def test_run_problem_real_methods_and_cache(tmp_path):
    methods, skipped = acc.resolve_methods(["tkd", "tikhonov"])
    assert [m.key for m in methods] == ["tkd", "tikhonov"] and not skipped
    prob = _tiny_problem()
    cache = {}
    rows = acc.run_problem(prob, methods, alpha_mode="auto", cache=cache, save_cache=lambda: None,
                           log=lambda msg: None)
    assert [r["method"] for r in rows] == ["TKD (threshold 0.2)", "Tikhonov (gradient)"]
    assert all("error" not in r and 0 < r["nrmse"] < 100 and r["ssim"] <= 1 for r in rows)
    # a second run takes every row from the cache (the method is not called again)
    calls = []
    for m in methods:
        m.func = lambda *a, _o=m.func, **k: calls.append(1) or _o(*a, **k)
    again = acc.run_problem(prob, methods, alpha_mode="auto", cache=cache, save_cache=lambda: None,
                            log=lambda msg: None)
    assert again == rows and not calls
    with pytest.raises(ValueError, match="unknown method"):
        acc.resolve_methods(["nope"])


def test_missing_method_is_skipped_and_failures_become_rows(monkeypatch):
    monkeypatch.setitem(acc.METHODS, "ghost", ("Ghost", "chimap.invert.no_such_module", "ghost", {}))
    methods, skipped = acc.resolve_methods(["tkd", "ghost"])
    assert [m.key for m in methods] == ["tkd"] and "Ghost" in skipped[0]

    def broken(local_field, mask, voxel_size):
        raise RuntimeError("diverged")

    rows = acc.run_problem(_tiny_problem(), [acc.Method("b", "Broken", broken, {}, None)], alpha_mode="auto",
                           cache={}, save_cache=lambda: None, log=lambda msg: None)
    assert rows == [{"method": "Broken", "error": "RuntimeError: diverged"}]


def test_write_doc_is_atomic(tmp_path):
    out = tmp_path / "docs" / "accuracy.md"
    acc.write_doc(out, "one\n")
    acc.write_doc(out, "two\n")
    assert out.read_text() == "two\n" and sorted(p.name for p in out.parent.iterdir()) == ["accuracy.md"]
