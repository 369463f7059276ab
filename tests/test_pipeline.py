"""chimap run end to end on a simulated head, configuration handling and bad inputs."""

from __future__ import annotations

import json
import tomllib

import nibabel as nib
import numpy as np
import pytest

from chimap import cli
from chimap.config import resolve, validate
from chimap.pipeline import run
from chimap.sim.head import simulate_head

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    assert cli.main(["-q", "simulate", "head", "-o", str(root), "--voxel-size", "3", "--seed", "2"]) == 0
    return root


def _anat(sim):
    return sim / "sub-sim" / "anat"


def _truth(sim, name):
    return np.asarray(nib.load(str(sim / "derivatives" / "truth" / "sub-sim" / "anat" / name)).dataobj)


def _nrmse(chi, est_mask, sim):
    truth = _truth(sim, "sub-sim_Chimap.nii.gz").astype(np.float64)
    m = est_mask & (_truth(sim, "sub-sim_desc-brain_mask.nii.gz") > 0)
    x, r = chi[m] - chi[m].mean(), truth[m] - truth[m].mean()
    return 100 * np.linalg.norm(x - r) / np.linalg.norm(r), float(x @ r / (r @ r))


def test_run_bids_default(sim, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["-q", "run", "--bids", str(_anat(sim)), "-o", str(out)]) == 0
    chi_img = nib.load(str(out / "chi.nii.gz"))
    phase_img = nib.load(str(_anat(sim) / "sub-sim_acq-gre_echo-1_part-phase_MEGRE.nii.gz"))
    np.testing.assert_allclose(chi_img.affine, phase_img.affine)
    chi = np.asarray(chi_img.dataobj)
    mask = np.asarray(nib.load(str(out / "mask.nii.gz")).dataobj) > 0
    assert chi.dtype == np.float32 and mask.any() and np.all(chi[~mask] == 0)
    nrmse, slope = _nrmse(chi, mask, sim)
    print(f"3 mm default pipeline: NRMSE {nrmse:.1f} %, slope {slope:.3f}")
    # 3 mm head, own mask: measured NRMSE 65.1 %, slope 0.57 (coarse 3 mm voxels and boundary
    # losses of background removal; the 1 mm accuracy is measured by benchmarks/bench_pipeline.py).
    # The bounds catch regressions such as a sign or unit error (NRMSE > 100 %, slope <= 0).
    assert nrmse < 75 and 0.4 < slope < 1.3
    record = json.loads((out / "chimap.json").read_text())
    rep = record["consensus_report"]
    assert rep["units"] == "ppm"
    # the default deviates from the consensus in one documented place: LBV background removal
    failed = [k for k, ok in rep["consensus_checks"].items() if not ok]
    assert failed == ["background field removal by the SHARP family or PDF"]
    # the default chooses the TV weight from the data and says which, and how, in the record
    assert record["configuration"]["invert"]["alpha"] == "auto"
    alpha = record["inversion"]["alpha"]
    assert 1e-5 < alpha < 1e-2 and record["inversion"]["alpha_selection"]["criterion"] == "cv"
    assert f"alpha = {alpha:.3g} chosen by hold-out cross-validation" in rep["methods_paragraph"]
    # ... and how it smoothed the phase offset (chimap's local-linear deviation from MCPC-3D-S)
    assert "phase difference unwrapped" in rep["methods_paragraph"]
    assert "plane fitted in a Gaussian window of sigma 5.0 mm" in rep["methods_paragraph"]
    inc = rep["inclusion"]
    assert min(inc.values()) >= 0
    assert inc["final_mask_voxels"] == (inc["brain_mask_voxels"] + inc["added_by_hole_filling"]
                                        - inc["excluded_by_background_removal"])
    assert abs(float(chi[mask].mean())) < 1e-4  # referenced to the whole brain
    assert not (out / "field.nii.gz").exists()


def test_run_files_fast_with_intermediates(sim, tmp_path):
    anat = _anat(sim)
    phase = sorted(anat.glob("*part-phase*.nii.gz"))
    mag = sorted(anat.glob("*part-mag*.nii.gz"))
    out = tmp_path / "fast"
    args = ["-q", "run", "--phase", *map(str, phase), "--magnitude", *map(str, mag), "-o", str(out),
            "--preset", "fast", "--intermediates"]
    assert cli.main(args) == 0
    for name in ("chi.nii.gz", "mask.nii.gz", "field.nii.gz", "local_field.nii.gz", "chimap.json"):
        assert (out / name).exists(), name
    field = np.asarray(nib.load(str(out / "field.nii.gz")).dataobj)
    truth = _truth(sim, "sub-sim_desc-total_fieldmap.nii.gz")
    m = np.asarray(nib.load(str(out / "brain_mask.nii.gz")).dataobj) > 0
    d = (field - truth)[m]
    assert np.median(np.abs(d - np.median(d))) < 0.01  # ppm; measured ~0.002


def test_ignoring_b0_tilt_is_worse():
    h = simulate_head(voxel_size=3.0, field_strength=7.0, b0_tilt_deg=25.0, snr=100, rng=4,
                      echo_times=(0.004, 0.009, 0.014))
    kw = dict(voxel_size=h.voxel_size, echo_times=h.echo_times, field_strength=h.field_strength,
              preset="fast")
    good = run(h.magnitude, h.phase, b0_direction=h.b0_direction, **kw)
    bad = run(h.magnitude, h.phase, b0_direction=(0, 0, 1), **kw)

    def err(res):
        m = res.mask & h.brain_mask
        x, r = res.chi[m] - res.chi[m].mean(), h.chi[m] - h.chi[m].mean()
        return np.linalg.norm(x - r) / np.linalg.norm(r)

    assert err(bad) > err(good) + 0.05  # measured gap ~0.2


def test_consensus_preset_is_compliant(sim, tmp_path):
    out = tmp_path / "cons"
    assert cli.main(["-q", "run", "--bids", str(_anat(sim)), "-o", str(out), "--preset", "consensus"]) == 0
    rep = json.loads((out / "chimap.json").read_text())["consensus_report"]
    assert rep["consensus_compliant"] is True
    assert "V-SHARP" in rep["methods_paragraph"]
    assert "smoothed by a Gaussian of sigma 10.0 mm" in rep["methods_paragraph"]  # the paper's


def test_print_config_round_trips(capsys):
    assert cli.main(["run", "--print-config"]) == 0
    cfg = tomllib.loads(capsys.readouterr().out)
    validate(cfg)
    assert cfg["invert"]["method"] == "tv_admm_wh"


def test_config_rejects_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        resolve("default", overrides={"invert": {"alhpa": 1e-3}})
    with pytest.raises(ValueError, match="method 'magic' is unknown"):
        resolve("default", overrides={"background": {"method": "magic"}})
    with pytest.raises(ValueError, match="unknown preset"):
        resolve("nope")
    with pytest.raises(ValueError, match="not one of"):
        resolve("default", overrides={"mask": {"quality": "best"}})
    merged = resolve("default", overrides={"background": {"method": "pdf", "tol": 1e-2}})
    assert merged["background"] == {"method": "pdf", "tol": 1e-2}


def _write(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


@pytest.mark.parametrize("case", ["ms", "shape", "no_echo_time", "not_radians", "empty_mask", "nan", "bad_config"])
def test_bad_inputs_exit_2_and_keep_outputs(sim, tmp_path, capsys, case):
    anat = _anat(sim)
    phase = sorted(anat.glob("*part-phase*.nii.gz"))
    mag = sorted(anat.glob("*part-mag*.nii.gz"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "chi.nii.gz").write_bytes(b"previous good result")
    p4 = np.stack([np.asarray(nib.load(str(p)).dataobj) for p in phase], axis=3)
    m4 = np.stack([np.asarray(nib.load(str(p)).dataobj) for p in mag], axis=3)
    aff = nib.load(str(phase[0])).affine
    te = ["0.005", "0.012", "0.019", "0.026"]
    args = ["run", "--magnitude", str(_write(tmp_path / "m.nii.gz", m4, aff)), "-o", str(out),
            "--field-strength", "3"]
    if case == "ms":
        args += ["--phase", str(_write(tmp_path / "p.nii.gz", p4, aff)), "--echo-times", "5", "12", "19", "26"]
    elif case == "shape":
        args += ["--phase", str(_write(tmp_path / "p.nii.gz", p4[:-1], aff)), "--echo-times", *te]
    elif case == "no_echo_time":
        (tmp_path / "p.json").write_text(json.dumps({"MagneticFieldStrength": 3}))
        args += ["--phase", str(_write(tmp_path / "p.nii.gz", p4, aff))]
    elif case == "not_radians":
        args += ["--phase", str(_write(tmp_path / "p.nii.gz", p4 * 1000 / np.pi * 2, aff)), "--echo-times", *te]
    elif case == "empty_mask":
        args += ["--phase", str(_write(tmp_path / "p.nii.gz", p4, aff)), "--echo-times", *te,
                 "--mask", str(_write(tmp_path / "mask.nii.gz", np.zeros(p4.shape[:3], np.uint8), aff))]
    elif case == "nan":
        bad = p4.copy()
        bad[10:14, 10:14, 10:14] = np.nan
        args += ["--phase", str(_write(tmp_path / "p.nii.gz", bad, aff)), "--echo-times", *te]
    elif case == "bad_config":
        (tmp_path / "c.toml").write_text("[invert]\nalhpa = 1\n")
        args += ["--phase", str(_write(tmp_path / "p.nii.gz", p4, aff)), "--echo-times", *te,
                 "--config", str(tmp_path / "c.toml")]
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error" in err and len(err.strip().splitlines()) == 1, err
    assert (out / "chi.nii.gz").read_bytes() == b"previous good result"
    assert not (out / "chimap.json").exists()


@pytest.mark.parametrize("overrides", [
    {"combine": {"method": "complex_fit"}},
    {"mask": {"method": "threshold", "quality": "phase", "two_pass": True}},
    {"background": {"method": "pdf"}, "invert": {"method": "tv_admm", "weight": "reliability"}},
])
def test_pipeline_options_run_and_stay_accurate(overrides):
    """Complex fit (wrapped phase, then spatial unwrapping of the field), the two-pass artefact
    reduction and other method choices run end to end with sane accuracy."""
    h = simulate_head(voxel_size=3.0, snr=100, rng=6)
    cfg = resolve("default", overrides=overrides)
    res = run(h.magnitude, h.phase, voxel_size=h.voxel_size, echo_times=h.echo_times,
              field_strength=h.field_strength, b0_direction=h.b0_direction, config=cfg)
    m = res.mask & h.brain_mask
    x, r = res.chi[m] - res.chi[m].mean(), h.chi[m] - h.chi[m].mean()
    nrmse = np.linalg.norm(x - r) / np.linalg.norm(r)
    # over the whole brain mask (domain "brain": the 3 mm rim is a large part of it) the default
    # measures 0.69 and these options 0.95 (complex fit), and below; a sign or unit error gives > 1.3
    assert nrmse < 1.0, nrmse
    b = res.brain_mask & h.brain_mask
    d = (res.field - h.total_field)[b]
    assert np.median(np.abs(d - np.median(d))) < 0.01  # total field within 10 ppb (median)


def test_reference_labels_from_the_cli(sim, tmp_path):
    """`--reference-labels` with `--reference-values`: chi's mean over those labels is 0."""
    labels_path = sim / "derivatives" / "truth" / "sub-sim" / "anat" / "sub-sim_dseg.nii.gz"
    labels = _truth(sim, "sub-sim_dseg.nii.gz")
    out = tmp_path / "ref"
    args = ["-q", "run", "--bids", str(_anat(sim)), "-o", str(out), "--preset", "fast",
            "--reference-labels", str(labels_path), "--reference-values", "1"]
    assert cli.main(args) == 0
    chi = np.asarray(nib.load(str(out / "chi.nii.gz")).dataobj)
    mask = np.asarray(nib.load(str(out / "mask.nii.gz")).dataobj) > 0
    wm = mask & (labels == 1)
    assert wm.sum() > 100 and abs(float(chi[wm].mean())) < 1e-5
    assert abs(float(chi[mask].mean())) > 1e-4  # not the whole-brain reference
    record = json.loads((out / "chimap.json").read_text())
    assert record["configuration"]["reference"] == {"method": "labels", "values": [1]}
    assert "segmentation" in record["consensus_report"]["reference_region"]


@pytest.mark.parametrize("case", ["values_only", "missing_label", "shape"])
def test_reference_labels_bad_input(sim, tmp_path, capsys, case):
    labels_path = sim / "derivatives" / "truth" / "sub-sim" / "anat" / "sub-sim_dseg.nii.gz"
    args = ["run", "--bids", str(_anat(sim)), "-o", str(tmp_path / "o"), "--preset", "fast"]
    if case == "values_only":
        args += ["--reference-values", "3"]
    elif case == "missing_label":
        args += ["--reference-labels", str(labels_path), "--reference-values", "99"]
    else:
        bad = tmp_path / "small.nii.gz"
        _write(bad, np.ones((4, 4, 4), np.uint8))
        args += ["--reference-labels", str(bad)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "reference" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "chi.nii.gz").exists()


def test_domain_brain_covers_the_brain_mask_and_fills_holes():
    """With [invert] domain = "brain" chi covers the whole (hole-filled) brain mask, including
    the rim that LBV cannot reach and the low-quality holes; "valid" keeps chi where the local
    field is. The brain-domain mask matches the true brain (Dice >= 0.95)."""
    from scipy import ndimage

    from chimap.mask import dice

    h = simulate_head(voxel_size=3.0, snr=100, rng=6)
    kw = dict(voxel_size=h.voxel_size, echo_times=h.echo_times, field_strength=h.field_strength,
              b0_direction=h.b0_direction)
    brain = run(h.magnitude, h.phase, config=resolve("default"), **kw)
    valid = run(h.magnitude, h.phase, config=resolve("default", overrides={"invert": {"domain": "valid"}}), **kw)
    filled = ndimage.binary_fill_holes(brain.brain_mask, structure=ndimage.generate_binary_structure(3, 1))
    assert np.array_equal(brain.mask, filled)
    assert valid.mask.sum() < brain.mask.sum() and np.all(brain.mask[valid.mask])
    assert dice(brain.mask, h.brain_mask) >= 0.95
    assert np.count_nonzero(brain.chi[brain.mask & ~valid.mask]) > 0.9 * (brain.mask & ~valid.mask).sum()


def test_fixed_alpha_overrides_the_automatic_default(sim, tmp_path):
    """[invert] alpha = 3e-4 fixes the weight: no sweep, nothing chosen in chimap.json."""
    import json

    cfg = tmp_path / "fixed.toml"
    cfg.write_text('[invert]\nalpha = 3e-4\n')
    out = tmp_path / "out"
    rc = cli.main(["-q", "run", "--bids", str(_anat(sim)), "--config", str(cfg), "-o", str(out)])
    assert rc == 0
    rec = json.loads((out / "chimap.json").read_text())
    assert rec["configuration"]["invert"]["alpha"] == 3e-4
    assert rec["inversion"] == {} and "chosen by" not in rec["consensus_report"]["methods_paragraph"]


def test_tgv_preset_runs_in_one_step(sim, tmp_path):
    """chimap run --preset tgv: TGV-QSM on the combined field (no background step), or with
    [invert] input = "phase" from the wrapped phase in one step (no unwrapping, combination or
    background step); the TGV record and a methods paragraph that names the single-step
    inversion."""
    import json

    runs = {}
    for name, extra in (("field", ""), ("phase", 'input = "phase"\n')):
        out = tmp_path / name
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text("[invert]\niterations = 300\n" + extra)
        rc = cli.main(["-q", "run", "--bids", str(_anat(sim)), "--preset", "tgv", "--config", str(cfg),
                       "--intermediates", "-o", str(out)])
        assert rc == 0
        rec = json.loads((out / "chimap.json").read_text())
        steps = set(rec["timings_s"])
        assert "background removal" not in steps
        assert any(s.startswith("TGV-QSM") for s in steps)
        inv = rec["inversion"]
        assert inv["iterations"] == [300] and inv["alpha"] == [0.003, 0.002] and inv["preset"] == "julia"
        assert "single-step TGV-QSM" in rec["consensus_report"]["methods_paragraph"]
        chi = np.asarray(nib.load(str(out / "chi.nii.gz")).dataobj)
        mask = np.asarray(nib.load(str(out / "mask.nii.gz")).dataobj) > 0
        nrmse, slope = _nrmse(chi, mask, sim)
        print(f"3 mm TGV from the {name} (300 iterations): NRMSE {nrmse:.1f} %, slope {slope:.3f}")
        # a short run on a coarse head: only gross errors (sign, units, a mask mix-up) are caught
        # here; benchmarks/tgv.py --head measures the accuracy
        assert nrmse < 100 and slope > 0.2
        runs[name] = (rec, out)
    rec, out = runs["field"]
    assert {"unwrapping", "echo combination"} <= set(rec["timings_s"])
    assert rec["inversion"]["coarse_levels"] == 2 and rec["inversion"]["coarse"] is not None
    assert rec["inversion"]["laplacian"] == "plain" and (out / "field.nii.gz").exists()
    assert "Laplacian of the combined field" in rec["consensus_report"]["methods_paragraph"]
    rec, out = runs["phase"]
    assert not set(rec["timings_s"]) & {"unwrapping", "echo combination"}
    assert rec["inversion"]["echo_combination"] == "laplacian_origin"
    assert not (out / "field.nii.gz").exists()
    # --inversion picks the method over any preset
    out2 = tmp_path / "inv"
    assert cli.main(["-q", "run", "--bids", str(_anat(sim)), "--inversion", "tkd", "-o", str(out2)]) == 0
    assert json.loads((out2 / "chimap.json").read_text())["configuration"]["invert"]["method"] == "tkd"


def test_magnitude_edges_reach_the_tv_inversion(sim, tmp_path):
    """[invert] edges = "magnitude": the pipeline builds MEDI's morphology prior from its own
    magnitude and the TV inversion uses it (the result changes, stays sane, and the record keeps
    the keys)."""
    chis = {}
    for name, extra in (("plain", ""), ("edges", 'edges = "magnitude"\nedge_fraction = 0.2\n')):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text("[invert]\nalpha = 3e-4\n" + extra)
        out = tmp_path / name
        assert cli.main(["-q", "run", "--bids", str(_anat(sim)), "--config", str(cfg), "-o", str(out)]) == 0
        chis[name] = np.asarray(nib.load(str(out / "chi.nii.gz")).dataobj)
        mask = np.asarray(nib.load(str(out / "mask.nii.gz")).dataobj) > 0
        nrmse, slope = _nrmse(chis[name], mask, sim)
        print(f"3 mm head, alpha 3e-4, {name}: NRMSE {nrmse:.1f} %, slope {slope:.3f}")
        # plumbing, not accuracy (benchmarks/bench_pipeline.py measures that): gross errors only
        assert nrmse < 100 and 0.2 < slope < 1.3
    record = json.loads((tmp_path / "edges" / "chimap.json").read_text())
    assert record["configuration"]["invert"]["edges"] == "magnitude"
    assert record["configuration"]["invert"]["edge_fraction"] == 0.2
    assert np.abs(chis["edges"] - chis["plain"]).max() > 1e-3
