"""Provenance: the reporting items of the 2024 ISMRM QSM consensus for one run.

QSM Consensus Organization Committee, "Recommended implementation of quantitative
susceptibility mapping for clinical research in the brain: a consensus of the ISMRM electro-
magnetic tissue properties study group", MRM 2024;91:1834-1862 (Table 5: mandatory reporting).
"""

from __future__ import annotations

import numpy as np

from . import __version__
from .config import expand_defaults
from .invert.autoreg import AUTOMATIC_PARAMETERS

__all__ = ["consensus_report", "CONSENSUS_CHECKS"]

_NAMES = {
    "threshold": "magnitude-threshold brain mask (chimap.mask.brain_mask)",
    "external": "user-supplied brain mask",
    "mcpc3ds": "MCPC-3D-S phase-offset correction (Eckstein et al. MRM 2018)",
    "region_growing": "quality-guided region-growing (path-following) spatial unwrapping with temporal "
                      "unwrapping across echoes (in the spirit of ROMEO, Dymerska et al. MRM 2021)",
    "laplacian": "Laplacian unwrapping (Schofield & Zhu 2003)",
    "linear_fit": "magnitude- and TE-weighted linear fit of the unwrapped phase over echoes",
    "weighted_average": "TE- and magnitude-weighted average of per-echo fields",
    "complex_fit": "nonlinear complex fit over echoes (MEDI-style, Liu et al. MRM 2013) with spatial "
                   "unwrapping of the fitted field",
    "vsharp": "V-SHARP (Li et al. NeuroImage 2011)",
    "sharp": "SHARP (Schweser et al. NeuroImage 2011)",
    "resharp": "RESHARP (Sun & Wilman MRM 2014)",
    "ismv": "iSMV (Wen et al. MRM 2014)",
    "pdf": "PDF (Liu et al. NMR Biomed 2011)",
    "lbv": "LBV (Zhou et al. NMR Biomed 2014)",
    "tkd": "truncated k-space division (Shmueli et al. MRM 2009)",
    "tsvd": "truncated SVD of the dipole kernel (Wharton et al. MRM 2010)",
    "tikhonov": "closed-form L2-regularised inversion (Bilgic et al. JMRI 2014)",
    "rts": "rapid two-step inversion with a TV prior (Kames et al. NeuroImage 2018)",
    "tv_admm": "total-variation regularised inversion by ADMM (Bilgic et al. MRM 2014; Milovic et al. MRM 2018)",
    "tv_admm_wh": "total-variation regularised inversion with weak-harmonic background correction by ADMM "
                  "(Milovic et al. MRM 2019)",
    "tgv": "single-step TGV-QSM: unwrapping (through the phase Laplacian), background removal and "
           "inversion in one primal-dual optimisation (Langkammer et al. NeuroImage 2015)",
    "brain": "mean over the whole brain mask",
    "csf": "mean over a CSF region (lowest-R2* voxels of the ventricles)",
    "labels": "mean over labels of a user-supplied segmentation",
    "none": "none",
}

#: consensus recommendation -> predicate on the configuration
CONSENSUS_CHECKS = {
    "phase unwrapping by an exact (path-following / region-growing) method":
        lambda c: c.get("unwrap", {}).get("method") == "region_growing",
    "multi-echo combination before background field removal":
        lambda c: c.get("combine", {}).get("method") in ("linear_fit", "weighted_average", "complex_fit"),
    "background field removal by the SHARP family or PDF":
        lambda c: c.get("background", {}).get("method") in ("vsharp", "sharp", "resharp", "ismv", "pdf"),
    "sparsity-regularised (TV/L1) dipole inversion":
        lambda c: c["invert"]["method"] in ("tv_admm", "tv_admm_wh", "tgv"),
    "reference region specified (whole brain recommended)":
        lambda c: c["reference"]["method"] != "none",
}


def _step(cfg, step):
    table = dict(cfg.get(step, {}))
    method = table.pop("method", None)
    return {"method": method, "description": _NAMES.get(method, method), "parameters": table}


def _refinement_clause(cfg):
    n = int(cfg.get("background", {}).get("boundary_refinement", 0) or 0)
    if n <= 0 or cfg["background"].get("method") != "lbv":
        return ""
    return (f", on the hole-filled brain mask, with the field of chi that LBV removes with the boundary values "
            f"added back {n} time(s) during the inversion (chimap's boundary refinement)")


def _offsets_clause(cfg, n_echoes):
    """How MCPC-3D-S estimated the offset (its smoothing and unwrapping), as a clause."""
    if cfg.get("offsets", {}).get("method") != "mcpc3ds":
        return ""
    if n_echoes < 2:
        return " (not applied: it needs two echoes)"
    table = expand_defaults({"offsets": cfg["offsets"]})["offsets"]  # the function's own defaults
    sigma = table["sigma_mm"]
    parts = [f"echoes {list(table['echoes'])}"]
    if table["unwrap_difference"]:
        parts.append("their phase difference unwrapped by region growing")
    if table["smoothing"] == "local_linear":
        parts.append(f"the offset smoothed by a plane fitted in a Gaussian window of sigma {sigma} mm "
                     "(chimap's local-linear smoothing, unbiased at the mask edge)")
    else:
        parts.append(f"the offset smoothed by a Gaussian of sigma {sigma} mm")
    return f" ({', '.join(parts)})"


def _automatic_clause(result):
    """What the inversion chose from the data (``result.inversion``), as a clause."""
    chosen = getattr(result, "inversion", None) or {}
    parts = []
    for key, selection in AUTOMATIC_PARAMETERS.items():
        if chosen.get(key) is None:
            continue
        sel = chosen.get(selection) or {}
        how = {"cv": "hold-out cross-validation of the field ({:g} % of the voxels held out)".format(
                   100 * float(sel.get("holdout", 0.1))),
               "frequency": "frequency analysis (Milovic et al. MRM 2021)",
               "lcurve": "the L-curve corner", "inflection": "the L-curve inflection point"}.get(
            sel.get("criterion"), "a data-driven criterion")
        if key == "alpha" and sel.get("criterion") == "cv" and "n_holdout" not in sel:
            how = "generalised cross-validation"
        n = len(sel.get("alphas", sel.get("cv_rmse", [])))
        parts.append(f"{key} = {float(chosen[key]):.3g} chosen by {how} over {n} sampled values")
    return f" ({'; '.join(parts)})" if parts else ""


def consensus_report(cfg, acq, result) -> dict:
    """The consensus reporting table for one run, plus a generated methods paragraph."""
    chi, mask = result.chi, result.mask
    vals = chi[mask]
    steps = {s: _step(cfg, s) for s in ("mask", "offsets", "unwrap", "combine", "background", "invert", "reference")}
    checks = {name: bool(pred(cfg)) for name, pred in CONSENSUS_CHECKS.items()}
    te_ms = [round(float(t) * 1e3, 3) for t in acq.echo_times]
    head = (
        f"QSM was computed with chimap {__version__} from {len(te_ms)}-echo data (TE = {te_ms} ms, "
        f"{acq.field_strength:g} T, voxel {np.round(acq.voxel_size, 3).tolist()} mm, B0 direction "
        f"{np.round(acq.b0_direction, 4).tolist()} in voxel axes, obliquity {acq.obliquity_deg:.1f} deg) "
        f"on the acquired grid without resampling. Brain mask: {steps['mask']['description']}. "
        f"Phase offsets: {steps['offsets']['description']}{_offsets_clause(cfg, len(te_ms))}. "
    )
    if steps["invert"]["method"] == "tgv":
        record = getattr(result, "inversion", None) or {}
        tgv = (f"with parameters {steps['invert']['parameters']} ({record.get('iterations')} iterations, "
               f"TGV weights (first, second order) {record.get('alpha')}, {record.get('erosions')} mask erosions). ")
        if cfg["invert"].get("input", "phase") == "field":
            middle = (f"Unwrapping: {steps['unwrap']['description']}. "
                      f"Echo combination: {steps['combine']['description']}. Background field removal and "
                      f"dipole inversion: single-step TGV-QSM (Langkammer et al. NeuroImage 2015) on the "
                      f"Laplacian of the combined field, one primal-dual optimisation, " + tgv)
            steps = {k: v for k, v in steps.items() if k != "background"}
        else:
            middle = (f"Unwrapping, background field removal and dipole inversion: "
                      f"{steps['invert']['description']} " + tgv)
            steps = {k: v for k, v in steps.items() if v["method"] is not None}
    else:
        middle = (
            f"Unwrapping: {steps['unwrap']['description']}. "
            f"Echo combination: {steps['combine']['description']}. Background field removal: "
            f"{steps['background']['description']}{_refinement_clause(cfg)}. Dipole inversion: "
            f"{steps['invert']['description']} "
            f"with parameters {steps['invert']['parameters']}{_automatic_clause(result)}. ")
    paragraph = (head + middle
                 + f"Susceptibility is reported in ppm, referenced to the {steps['reference']['description']}.")
    return {
        "software": f"chimap {__version__}",
        "units": "ppm",
        "steps": steps,
        "reference_region": steps["reference"]["description"],
        "reference_offset_ppm": result.reference_offset,
        "whole_brain_mean_ppm": float(vals.mean()) if vals.size else None,
        "whole_brain_sd_ppm": float(vals.std()) if vals.size else None,
        "inclusion": {"brain_mask_voxels": int(result.brain_mask.sum()), "final_mask_voxels": int(mask.sum()),
                      "excluded_by_background_removal": int((result.brain_mask & ~mask).sum()),
                      "added_by_hole_filling": int((mask & ~result.brain_mask).sum())},
        "geometry": "processed on the acquired grid (no resampling, no reorientation); B0 direction from "
                    + ("the affine" if acq.b0_matches_affine else "an explicit value"),
        "consensus_checks": checks,
        "consensus_compliant": all(checks.values()),
        "methods_paragraph": paragraph,
    }
