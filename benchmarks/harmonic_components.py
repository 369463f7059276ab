"""How much white/grey-matter contrast is lost with the harmonic part of the local field.

A susceptibility whose field is harmonic inside the mask (e.g. the bowl ``chi ~ r^2``) looks
like a background field there, so background removal takes its field out and the weak-harmonic
inversion's ``phi`` absorbs it (``chimap.invert.tv_wh``, "What the field cannot tell"). This
script measures the effect on a simulated head with noise-free fields: it inverts (1) the
simulator's true local field and (2) LBV's local field of the true total field, each by TV-ADMM
and by weak-harmonic TV (``chimap invert`` with its defaults and the magnitude, ``alpha="auto"``),
in the mask of the default pipeline (``chimap run``, LBV on its hole-filled brain mask). For each
it prints, against the true chi (both demeaned over the mask inside the true brain): NRMSE, the
white- and grey-matter means, the ``r^2`` component of the error (least-squares fit
``a + b r^2`` from the mask's centroid, given as ``b * (70 mm)^2`` in ppb) and the deep-grey ROI
errors.

    .venv/bin/python benchmarks/harmonic_components.py [--case epi|gre|...] [--keep DIR]

``--case`` takes a case of ``benchmarks/bench_pipeline.py`` (default ``epi``: 3D-EPI, 1 x 1 x
2 mm); with ``--keep`` the simulation and outputs are kept (and reused: the folder layout is
bench_pipeline's, so ``--keep`` may point at a bench_pipeline folder). About 5 min for ``epi``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import CASES, DEEP_GREY, SHARED_SEGMENTATION, _chimap, simulate_case  # noqa: E402

WHITE_MATTER, CORTICAL_GREY = 1, 2
BOWL_RADIUS_MM = 70.0
INVERSIONS = {"TV-ADMM": ["--method", "tv_admm", "--set", "alpha=auto"],
              "weak-harmonic TV": ["--method", "tv_admm_wh", "--set", "alpha=auto"]}


def _load(path, dtype=np.float64):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=dtype), img


def _save(path, data, like):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), like.affine), str(path))


def evaluate(chi, truth, mask, labels, voxel_size):
    """Metrics of ``chi`` against ``truth`` over ``mask`` (both demeaned there)."""
    est = chi - chi[mask].mean()
    ref = truth - truth[mask].mean()
    err = est - ref
    centre = np.argwhere(mask).mean(axis=0)
    grid = np.indices(mask.shape, dtype=np.float64)
    r2 = sum(((grid[i] - centre[i]) * voxel_size[i]) ** 2 for i in range(3))
    design = np.stack([np.ones(int(mask.sum())), r2[mask]], axis=1)
    coef = np.linalg.lstsq(design, err[mask], rcond=None)[0]
    means = {name: (1e3 * ref[mask & (labels == lab)].mean(), 1e3 * est[mask & (labels == lab)].mean())
             for name, lab in (("white", WHITE_MATTER), ("grey", CORTICAL_GREY))}
    roi = {name: 1e3 * float(err[mask & (labels == lab)].mean())
           for name, lab in DEEP_GREY.items() if (mask & (labels == lab)).any()}
    return dict(nrmse=100 * float(np.linalg.norm(err[mask]) / np.linalg.norm(ref[mask])), means=means,
                bowl_ppb=1e3 * float(coef[1]) * BOWL_RADIUS_MM ** 2, roi_ppb=roi)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="epi", choices=sorted(CASES))
    p.add_argument("--keep", default=None, help="keep (and reuse) the simulation and outputs in this folder")
    args = p.parse_args(argv)
    from chimap.background.lbv import lbv

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="chimap-harmonic-"))
    case = root / args.case
    sim = simulate_case(root, args.case)
    if sim is None:
        p.error(f"{args.case} needs {SHARED_SEGMENTATION}")
    anat = sim / "sub-sim" / "anat"
    truth_dir = sim / "derivatives" / "truth" / "sub-sim" / "anat"
    run = case / "harmonic-run"
    if not (run / "brain_mask.nii.gz").exists():
        cfg = case / "intermediates.toml"
        cfg.write_text("[output]\nintermediates = true\n")
        _chimap("run", "--bids", str(anat), "-o", str(run), "--config", str(cfg))

    mask, img = _load(run / "mask.nii.gz")
    mask = mask > 0
    lbv_mask = _load(run / "brain_mask.nii.gz")[0] > 0
    vs = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    truth = _load(truth_dir / "sub-sim_Chimap.nii.gz")[0]
    brain = _load(truth_dir / "sub-sim_desc-brain_mask.nii.gz")[0] > 0
    labels = _load(truth_dir / "sub-sim_dseg.nii.gz", np.int32)[0]
    local = _load(truth_dir / "sub-sim_desc-local_fieldmap.nii.gz")[0]
    total = _load(truth_dir / "sub-sim_desc-total_fieldmap.nii.gz")[0]
    magnitude = sorted(anat.glob("*part-mag*.nii.gz"))
    fields = {"true local field": np.where(mask, local, 0.0),
              "LBV of the true total field": np.where(mask, lbv(total, lbv_mask, vs)[0], 0.0)}
    evaluated = mask & brain
    rows = []
    print(f"{args.case}: grid {mask.shape}, voxel {vs.tolist()} mm, {int(evaluated.sum())} voxels evaluated; "
          f"noise-free fields")
    print(f"{'input':30} {'inversion':17} {'NRMSE':>6} {'white/grey (true)':>20} {'white/grey':>13} "
          f"{'bowl':>7}  deep-grey errors (ppb)")
    for field_name, field in fields.items():
        path = case / f"harmonic-{field_name.replace(' ', '_')}.nii.gz"
        _save(path, field, img)
        for inv_name, inv_args in INVERSIONS.items():
            out = case / f"harmonic-chi-{field_name.replace(' ', '_')}-{inv_name.replace(' ', '_')}.nii.gz"
            _chimap("invert", str(path), "--mask", str(run / "mask.nii.gz"), "--magnitude", str(magnitude[0]),
                    *inv_args, "-o", str(out))
            res = evaluate(_load(out)[0], truth, evaluated, labels, vs)
            (tw, ew), (tg, eg) = res["means"]["white"], res["means"]["grey"]
            rows.append(dict(input=field_name, inversion=inv_name, **res))
            print(f"{field_name:30} {inv_name:17} {res['nrmse']:5.1f}% {tw:9.1f} /{tg:6.1f}   {ew:6.1f} /{eg:5.1f} "
                  f"{res['bowl_ppb']:6.1f}   " + " ".join(f"{k[:4]} {v:5.1f}" for k, v in res["roi_ppb"].items()),
                  flush=True)
    (case / "harmonic_components.json").write_text(json.dumps(rows, indent=2))
    print(f"bowl: the r^2 component of the error, ppb at {BOWL_RADIUS_MM:g} mm from the centre; "
          f"details: {case / 'harmonic_components.json'}")


if __name__ == "__main__":
    main()
