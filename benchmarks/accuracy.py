"""Accuracy tables of every dipole inversion on simulated heads (writes docs/accuracy.md).

Every inversion of :mod:`chimap.invert` (the registry :data:`METHODS`, plus any other public
function of ``chimap.invert`` with the inversion signature) runs on

(a) ``local``: the true local field of :func:`chimap.sim.head.simulate_head` (fine grid twice as
    fine as the output: no inverse crime) inside the brain mask eroded by 2 voxels, with white
    Gaussian field noise of the level that a 4-echo GRE at the given SNR gives (conversion
    below), at each SNR with B0 along voxel axis K, and at the first SNR with the head pitched
    by ``--tilt`` degrees (simulated with that B0 direction);
(b) ``pipeline``: the full chimap pipeline from the simulated 4-echo GRE magnitude and wrapped
    phase (same SNRs and tilt): :func:`chimap.pipeline.run` with the default preset (automatic
    brain mask, phase offsets, unwrapping, echo fit, LBV background removal); every inversion
    then runs on the pipeline's local field and mask, and the default preset's own result
    (weak-harmonic TV with LBV boundary refinement) is one more row;
(c) ``challenge``: another anatomy, the QSM challenge 2.0 head model from
    ``../shared/data/qsm2_headphantom_segmentation_neuropoly`` (:mod:`chimap.sim.segmented`,
    1.28 mm), true local field and pipeline at the first SNR; skipped when the folder is absent.

and prints one table per case and condition in the layout of Table 1 of He et al., "mQSM:
Multitask learning-based quantitative susceptibility mapping for iron analysis in brain",
MICCAI 2024 (methods as rows; SSIM, PSNR, NRMSE and HFEN as columns), with XSIM, the deep-grey
ROI error and the wall time added. The same tables, with a header that states the command,
date, machine, chimap version and settings, are written to ``docs/accuracy.md`` (a temporary
file renamed into place). That file is generated: never edit it by hand.

Run by hand (the full default run takes long on 2 cores; ``--keep`` makes it resumable)::

    .venv/bin/python benchmarks/accuracy.py --keep /tmp/chimap-accuracy
    .venv/bin/python benchmarks/accuracy.py --voxel-size 1.5 --cases local --methods tkd rts
    .venv/bin/python benchmarks/accuracy.py --quick          # 3 mm smoke run, writes nothing

With ``--keep DIR`` the simulations (``DIR/sim-*.npz``), the pipeline outputs
(``DIR/pipeline-*.npz``) and every finished table row (``DIR/results.json``) are cached; an
interrupted run resumes where it stopped. A cached row is reused only while the source file of
its method is unchanged (``--fresh`` recomputes every row; delete ``DIR`` after changing the
simulator or the pipeline).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SEGMENTATION_DIR = SHARED_DATA / "qsm2_headphantom_segmentation_neuropoly"
DEFAULT_OUTPUT = REPO / "docs" / "accuracy.md"

#: key -> (row label, module, function, fixed keyword arguments). Order = row order. Methods
#: that are not importable (yet) are skipped with a note.
METHODS: dict[str, tuple[str, str, str, dict]] = {
    "tkd": ("TKD (threshold 0.2)", "chimap.invert", "tkd", {"threshold": 0.2}),
    "tsvd": ("TSVD (threshold 0.2)", "chimap.invert", "tsvd", {"threshold": 0.2}),
    "tikhonov": ("Tikhonov (gradient)", "chimap.invert", "tikhonov", {}),
    "ilsqr": ("iLSQR", "chimap.invert.ilsqr", "ilsqr", {}),
    "star_qsm": ("STAR-QSM", "chimap.invert.star", "star_qsm", {}),
    "rts": ("RTS", "chimap.invert", "rts", {}),
    "tv_admm": ("TV-ADMM", "chimap.invert", "tv_admm", {}),
    "tv_admm_wh": ("TV-ADMM weak-harmonic", "chimap.invert", "tv_admm_wh", {}),
    "medi": ("MEDI", "chimap.invert.medi", "medi", {}),
    "nltv": ("nonlinear TV", "chimap.invert.nonlinear", "nltv", {}),
    "ndi": ("NDI", "chimap.invert.nonlinear", "ndi", {}),
}

#: The parameter that ``--alpha auto`` sets to "auto" where it is not ``alpha`` (MEDI's data
#: weight; NDI and RTS are regularised by their stopping iteration); None: the method has none.
AUTO_PARAMETER = {"medi": "lam", "ndi": "max_iter", "rts": "lsmr_iter", "tkd": None, "tsvd": None}

DEEP_GREY = ("caudate", "putamen", "globus_pallidus", "thalamus", "red_nucleus",
             "substantia_nigra", "dentate_nucleus")

COLUMNS = ("SSIM", "PSNR (dB)", "NRMSE (%)", "HFEN (%)", "XSIM", "DGM err (ppb)", "time (s)")

#: margin (voxels) kept around the evaluation mask when the metrics crop the arrays: at least
#: the half-width of the widest filter (HFEN LoG 15^3 -> 7), so cropping changes nothing
_METRIC_MARGIN = 8


# ----------------------------------------------------------------------------------- methods


@dataclass
class Method:
    key: str
    label: str
    func: object
    fixed: dict
    source: Path | None
    source_hash: str = ""


def resolve_methods(keys=None):
    """Importable methods (in registry order) and notes for those skipped.

    Besides :data:`METHODS`, any public function of ``chimap.invert`` whose first parameters
    are ``(local_field, mask, voxel_size)`` is added under its own name, so that a new
    inversion shows up in the tables without editing this script.
    """
    import chimap.invert as inv

    registry = dict(METHODS)
    for name in getattr(inv, "__all__", []):
        obj = getattr(inv, name, None)
        if name in {m[2] for m in registry.values()} or not callable(obj) or not inspect.isfunction(obj):
            continue
        params = list(inspect.signature(obj).parameters)
        if params[:3] == ["local_field", "mask", "voxel_size"]:
            registry[name] = (name, "chimap.invert", name, {})
    if keys:
        unknown = [k for k in keys if k not in registry]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(registry)}")
        registry = {k: registry[k] for k in keys}
    found, skipped = [], []
    for key, (label, module, func_name, fixed) in registry.items():
        func = getattr(inv, func_name, None)
        if func is None:
            try:
                func = getattr(importlib.import_module(module), func_name)
            except (ImportError, AttributeError) as exc:
                skipped.append(f"{label} (`{module}.{func_name}` not importable: {type(exc).__name__})")
                continue
        try:
            source = Path(inspect.getsourcefile(func))
        except TypeError:
            source = None
        method = Method(key, label, func, fixed, source)
        method.source_hash = _source_hash(method)  # of the code as imported now
        found.append(method)
    return found, skipped


def _source_hash(method: Method) -> str:
    """Hash of the method's source file and of the chimap files its module uses directly
    (helpers, kernels, automatic alpha), to tell when a cached row is stale."""
    files = set()
    if method.source is not None:
        files.add(method.source)
    for value in getattr(method.func, "__globals__", {}).values():
        mod = value if inspect.ismodule(value) else inspect.getmodule(value)
        name = getattr(mod, "__name__", "") or ""
        if name.startswith("chimap") and getattr(mod, "__file__", None):
            files.add(Path(mod.__file__))
    if not files:
        return "unknown"
    h = hashlib.sha1()
    for f in sorted(files):
        h.update(str(f.name).encode())
        h.update(f.read_bytes() if f.exists() else b"missing")
    return h.hexdigest()[:12]


def call_method(method: Method, problem, *, alpha_mode="auto"):
    """Run one inversion on a problem; returns ``(chi, seconds, alpha_note)``.

    Keyword arguments are chosen from the function's signature: ``b0_direction`` always;
    ``magnitude`` (RMS over echoes) where the problem has one; ``weight``, the data weight that
    matches the problem's noise (uniform for white noise, the default preset's magnitude weight
    in the pipeline cases); ``alpha="auto"`` with ``alpha_mode="auto"`` where the function
    accepts it (a ``ValueError``/``TypeError`` naming alpha falls back to the default;
    ``alpha_note`` says which); ``return_info=True`` to report the alpha chosen.
    """
    params = inspect.signature(method.func).parameters
    kw = dict(method.fixed)
    if "b0_direction" in params:
        kw["b0_direction"] = problem.b0_direction
    if "magnitude" in params and problem.magnitude is not None:
        kw["magnitude"] = problem.magnitude
    if "weight" in params and problem.weight is not None:
        kw["weight"] = problem.weight
    if "return_info" in params:
        kw["return_info"] = True
    key = AUTO_PARAMETER.get(method.key, "alpha")
    tries = [dict(kw)]
    if alpha_mode == "auto" and key in params and key not in method.fixed:
        tries.insert(0, {**kw, key: "auto"})
    alpha_note = None
    for i, args in enumerate(tries):
        t0 = time.perf_counter()
        try:
            out = method.func(problem.field, problem.mask, problem.voxel_size, **args)
        except (ValueError, TypeError) as exc:
            if args.get(key) == "auto" and key in str(exc).lower() and i + 1 < len(tries):
                alpha_note = "default (auto not supported)"
                continue
            raise
        seconds = time.perf_counter() - t0
        break
    chi, info = (out if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict) else (out, {}))
    if isinstance(chi, tuple):  # e.g. (chi, harmonic) of return_harmonic
        chi = chi[0]
    if args.get(key) == "auto":
        value = info.get(key)
        alpha_note = f"auto = {value:.3g}" if isinstance(value, (int, float)) else "auto"
        if key != "alpha":
            alpha_note = f"{key} {alpha_note}"
    return np.asarray(chi), seconds, alpha_note


# ----------------------------------------------------------------------------------- metrics


def _crop(mask, margin=_METRIC_MARGIN):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def evaluate(chi, truth, mask, labels=None):
    """Metrics of one estimate against the truth over ``mask``.

    Both maps are referenced the same way: each has its own mean over ``mask`` subtracted (the
    whole-brain referencing of the consensus) and is zero outside ``mask``; every metric sees
    these referenced maps. SSIM and PSNR use the dynamic range of the referenced truth in the
    mask, NRMSE and HFEN are in percent, XSIM is Milovic et al. 2024 (L = 1 ppm). DGM err is
    the mean over the deep-grey nuclei of ``|mean(chi) - mean(truth)|`` over each nucleus (ppb),
    as ``benchmarks/bench_invert.py`` reports it.

    Returns
    -------
    dict
        ``ssim``, ``psnr``, ``nrmse``, ``hfen``, ``xsim``, ``dgm_ppb`` (NaN without labels).
    """
    from chimap.metrics import hfen, nrmse, psnr, ssim, xsim
    from chimap.sim.tissues import LABELS

    mask = np.asarray(mask, bool)
    box = _crop(mask)
    m = mask[box]
    x = np.asarray(chi, np.float64)[box]
    r = np.asarray(truth, np.float64)[box]
    if not np.all(np.isfinite(x[m])):
        raise ValueError("the estimate has NaN or infinite values in the mask")
    x = np.where(m, x - x[m].mean(), 0.0)
    r = np.where(m, r - r[m].mean(), 0.0)
    out = {"ssim": ssim(x, r, m), "psnr": psnr(x, r, m), "nrmse": nrmse(x, r, m, percent=True),
           "hfen": hfen(x, r, m, percent=True), "xsim": xsim(x, r, m), "dgm_ppb": float("nan")}
    if labels is not None:
        lab = np.asarray(labels)[box]
        errs = [x[sel].mean() - r[sel].mean() for name in DEEP_GREY
                if (sel := (lab == LABELS[name]) & m).any()]
        if errs:
            out["dgm_ppb"] = 1e3 * float(np.mean(np.abs(errs)))
    return {k: float(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """One table: a field to invert and the truth to compare with."""

    key: str
    title: str
    field: np.ndarray
    mask: np.ndarray
    voxel_size: np.ndarray
    b0_direction: np.ndarray
    truth: np.ndarray
    eval_mask: np.ndarray
    labels: np.ndarray | None = None
    magnitude: np.ndarray | None = None
    weight: np.ndarray | None = None
    notes: list = field(default_factory=list)
    extra_rows: list = field(default_factory=list)


def field_noise_ppb(magnitude, mask, echo_times, field_strength, snr):
    """Field noise (ppb) of a multi-echo GRE at ``snr``.

    ``snr`` is chimap's definition (mean first-echo brain magnitude over the noise standard
    deviation ``sigma`` per real/imaginary channel). With ``m_e`` the mean magnitude of echo
    ``e`` in ``mask``, the phase noise of echo ``e`` is ``sigma / m_e`` rad (high-SNR limit), and
    the field of a weighted least-squares fit of phase against echo time through the origin
    (phase offsets removed) has the standard deviation

    ``sigma_f = 1 / (2 pi * f_ppm * sqrt(sum_e (m_e / sigma)^2 TE_e^2))`` ppm,

    with ``f_ppm = gamma/(2 pi) * B0 * 1e-6`` Hz per ppm (0.46 ppb at SNR 100 and 1.14 ppb at
    SNR 40 for chimap's default 3 T echoes 5/12/19/26 ms on the simulated head).
    """
    from chimap.units import hz_per_ppm

    mag = np.asarray(magnitude, np.float64)
    if mag.ndim == 3:
        mag = mag[..., None]
    means = np.array([mag[..., e][mask].mean() for e in range(mag.shape[3])])
    sigma = means[0] / float(snr)
    te = np.asarray(echo_times, np.float64)
    info = np.sum((means / sigma) ** 2 * te**2)
    return 1e3 / (2 * np.pi * hz_per_ppm(field_strength) * np.sqrt(info))


def rms_magnitude(magnitude):
    mag = np.asarray(magnitude, np.float32)
    return mag if mag.ndim == 3 else np.sqrt(np.mean(mag**2, axis=3))


def magnitude_weight(magnitude, mask):
    """The default preset's data weight: RMS magnitude over echoes, mean 1 in ``mask``."""
    w = np.where(mask, rms_magnitude(magnitude), 0).astype(np.float32)
    return (w / (float(w[mask].mean()) or 1.0)).astype(np.float32)


# -------------------------------------------------------------------------------- simulations

_SIM_ARRAYS = ("magnitude", "phase", "chi", "local_field", "brain_mask", "labels", "voxel_size",
               "b0_direction", "echo_times")


@dataclass
class Sim:
    magnitude: np.ndarray
    phase: np.ndarray
    chi: np.ndarray
    local_field: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    voxel_size: np.ndarray
    b0_direction: np.ndarray
    echo_times: np.ndarray
    field_strength: float
    seconds: float


def _np_save(path: Path, **arrays):
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _challenge_factor(voxel_size, label_mm=0.64):
    """Output voxels of the challenge model: whole multiples (>= 2) of its 0.64 mm labels."""
    return max(2, round(float(voxel_size) / float(label_mm)))


def challenge_voxel_mm(voxel_size, label_mm=0.64):
    """The challenge model's output voxel size (mm) for a requested ``voxel_size``."""
    factor = _challenge_factor(voxel_size, label_mm)
    step = max(1, factor // 2)
    return round(label_mm * step * (factor // step), 3)


def _tree_hash(*patterns, exclude=()) -> str:
    """Short hash of the chimap source files matching ``patterns`` (relative to the package),
    less those under the folders ``exclude``: part of the cache keys, so that a change of the
    simulator or the pipeline is never served from a stale cache."""
    import chimap

    root = Path(chimap.__file__).resolve().parent
    files = {f for pat in patterns for f in root.glob(pat) if f.is_file()}
    files = {f for f in files if not any(str(f.relative_to(root)).startswith(e) for e in exclude)}
    h = hashlib.sha1()
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:8]


#: sources that the simulations depend on, and those the pipeline outputs depend on (its local
#: field does not depend on chimap.invert; its own chi does)
_SIM_SOURCES = ("sim/*.py", "geometry.py", "units.py", "constants.py", "kernels.py", "forward.py")
_PIPELINE_SOURCES = ("**/*.py", "presets/*.toml")


def data_hashes():
    """(simulation, pipeline local field, whole pipeline) source hashes."""
    return (_tree_hash(*_SIM_SOURCES), _tree_hash(*_PIPELINE_SOURCES, exclude=("invert/",)),
            _tree_hash(*_PIPELINE_SOURCES))


def simulate(anatomy, voxel_size, snr, tilt, seed, keep: Path | None, log):
    """One simulated acquisition (cached in ``keep``)."""
    name = f"sim-{anatomy}-{voxel_size:g}mm-snr{snr:g}-tilt{tilt:g}-seed{seed}-{data_hashes()[0]}.npz"
    if keep is not None and (keep / name).exists():
        with np.load(keep / name) as z:
            d = {k: z[k] for k in z.files}
        return Sim(**{k: d[k] for k in _SIM_ARRAYS}, field_strength=float(d["field_strength"]),
                   seconds=float(d["seconds"]))
    from chimap.geometry import b0_direction_from_tilt

    t0 = time.perf_counter()
    if anatomy == "head":
        from chimap.sim.head import simulate_head

        h = simulate_head(voxel_size=voxel_size, snr=snr, b0_tilt_deg=tilt, rng=seed)
    else:
        from chimap.sim.segmented import load_challenge_segmentation, simulate_segmentation

        labels, brain, vs_f, chi = load_challenge_segmentation(SEGMENTATION_DIR)
        # as `chimap simulate challenge`: output voxel = nearest whole multiple of 0.64 mm,
        # fine grid (label map, subsampled if needed) twice as fine
        factor = _challenge_factor(voxel_size, vs_f.max())
        step = max(1, factor // 2)
        sub = (slice(None, None, step),) * 3
        h = simulate_segmentation(labels[sub], brain[sub], vs_f * step, chi_overrides=chi,
                                  oversample=factor // step, snr=snr,
                                  b0_direction=b0_direction_from_tilt(tilt), rng=seed)
    seconds = time.perf_counter() - t0
    log(f"  simulated {anatomy} {h.chi.shape} at {np.round(h.voxel_size, 3).tolist()} mm, SNR {snr:g}, "
        f"tilt {tilt:g} deg in {seconds:.0f} s")
    sim = Sim(**{k: np.asarray(getattr(h, k)) for k in _SIM_ARRAYS}, field_strength=float(h.field_strength),
              seconds=seconds)
    if keep is not None:
        _np_save(keep / name, **{k: getattr(sim, k) for k in _SIM_ARRAYS},
                 field_strength=sim.field_strength, seconds=seconds)
    return sim


def _mm(voxel_size):
    v = np.round(np.asarray(voxel_size, float), 3)
    return f"{v[0]:g}" if np.all(v == v[0]) else " x ".join(f"{x:g}" for x in v)


def local_problem(sim, snr, *, key, title, seed):
    """Case (a): the true local field with white noise of the GRE field noise at ``snr``."""
    from scipy import ndimage

    mask = ndimage.binary_erosion(sim.brain_mask, iterations=2)
    noise = field_noise_ppb(sim.magnitude, mask, sim.echo_times, sim.field_strength, snr)
    rng = np.random.default_rng(seed)
    f = sim.local_field.astype(np.float32) + rng.normal(0.0, noise * 1e-3, sim.local_field.shape).astype(np.float32)
    f = np.where(mask, f, np.float32(0)).astype(np.float32)
    p = Problem(key=key, title=title, field=f, mask=mask, voxel_size=np.asarray(sim.voxel_size, float),
                b0_direction=np.asarray(sim.b0_direction, float), truth=sim.chi, eval_mask=mask,
                labels=sim.labels, magnitude=rms_magnitude(sim.magnitude), weight=mask.astype(np.float32))
    p.notes.append(f"grid {sim.chi.shape} of {_mm(sim.voxel_size)} mm voxels, {int(mask.sum())} voxels in the brain mask eroded by 2 voxels; "
                   f"white field noise {noise:.2f} ppb; B0 (voxel axes) {np.round(sim.b0_direction, 3).tolist()}")
    return p


def pipeline_problem(sim, *, key, title, keep: Path | None, log):
    """Case (b): the default pipeline from magnitude and phase, up to its local field."""
    from chimap import pipeline

    # the file holds the pipeline's own chi too: keyed by every chimap source
    name = key.split("/sim-")[0].replace("/", "-") + f"-{data_hashes()[2]}.npz"
    cached = keep / f"pipeline-{name}" if keep is not None else None
    if cached is not None and cached.exists():
        with np.load(cached) as z:
            res = {k: z[k] for k in z.files}
        timings = json.loads(str(res["timings"]))
    else:
        t0 = time.perf_counter()
        r = pipeline.run(sim.magnitude, sim.phase, voxel_size=sim.voxel_size, echo_times=sim.echo_times,
                         field_strength=sim.field_strength, b0_direction=sim.b0_direction)
        timings = dict(r.timings, total=time.perf_counter() - t0)
        res = {"chi": r.chi, "mask": r.mask, "brain_mask": r.brain_mask, "local_field": r.local_field,
               "timings": json.dumps(timings)}
        log(f"  pipeline (default preset) in {timings['total']:.0f} s")
        if cached is not None:
            _np_save(cached, **res)
    # voxels with a measured local field: inside the brain mask before hole filling and where
    # background removal left a value (the default preset inverts over the hole-filled mask
    # with zero data weight where no local field exists; methods without a data weight cannot)
    inv_mask = res["brain_mask"] & res["mask"] & (res["local_field"] != 0)
    eval_mask = inv_mask & sim.brain_mask
    p = Problem(key=key, title=title, field=np.where(inv_mask, res["local_field"], 0).astype(np.float32),
                mask=inv_mask, voxel_size=np.asarray(sim.voxel_size, float),
                b0_direction=np.asarray(sim.b0_direction, float), truth=sim.chi, eval_mask=eval_mask,
                labels=sim.labels, magnitude=rms_magnitude(sim.magnitude),
                weight=magnitude_weight(sim.magnitude, inv_mask))
    dice = 2 * float((inv_mask & sim.brain_mask).sum()) / float(inv_mask.sum() + sim.brain_mask.sum())
    to_local = sum(v for k, v in timings.items() if k not in ("total", "dipole inversion", "referencing"))
    p.notes.append(f"grid {sim.chi.shape} of {_mm(sim.voxel_size)} mm voxels; pipeline mask {int(inv_mask.sum())} "
                   f"voxels (Dice {dice:.3f} with the true brain), evaluated on its {int(eval_mask.sum())} voxels "
                   f"inside the true brain; B0 (voxel axes) {np.round(sim.b0_direction, 3).tolist()}; "
                   f"pipeline up to the local field {to_local:.0f} s")
    inversion_s = float(timings.get("dipole inversion", float("nan")))
    p.extra_rows.append(("chimap run, default preset", res["chi"], inversion_s, ""))
    return p


# ------------------------------------------------------------------------------------- tables


def _auto_note(alpha_note):
    """The row's note for an automatic choice ("alpha auto = 0.0002", "lam auto = 1.2e+03")."""
    if not alpha_note or alpha_note.startswith("default"):
        return ""
    return f"alpha {alpha_note}" if alpha_note.startswith("auto") else alpha_note


def run_problem(problem: Problem, methods, *, alpha_mode, cache: dict, save_cache, log):
    """All methods on one problem; returns the table rows (dicts)."""
    rows = []
    todo = [(m.label, m) for m in methods] + [(label, (chi, sec, note)) for label, chi, sec, note in problem.extra_rows]
    for label, item in todo:
        if isinstance(item, Method):
            ckey = f"{problem.key}|{item.key}|alpha={alpha_mode}|src={item.source_hash or _source_hash(item)}"
            if ckey in cache:
                rows.append(cache[ckey])
                log(_row_line(cache[ckey]) + "  (cached)")
                continue
            try:
                chi, seconds, alpha_note = call_method(item, problem, alpha_mode=alpha_mode)
                metrics = evaluate(chi, problem.truth, problem.eval_mask, problem.labels)
                row = dict(method=label, time=seconds, alpha=alpha_note,
                           note=_auto_note(alpha_note),
                           **metrics)
                cache[ckey] = row  # failures are not cached: a rerun tries again
                save_cache()
            except Exception as exc:  # noqa: BLE001 - a failing method is a row, not a crash
                row = {"method": label, "error": f"{type(exc).__name__}: {exc}"[:200]}
        else:
            chi, seconds, note = item
            row = dict(method=label, time=seconds, note=note,
                       **evaluate(chi, problem.truth, problem.eval_mask, problem.labels))
        rows.append(row)
        log(_row_line(row))
    return rows


def _fmt(value, spec):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _row_cells(row):
    if "error" in row:
        return [row["method"]] + ["failed"] + [""] * (len(COLUMNS) - 1)
    label = row["method"] + (f" ({row['note']})" if row.get("note") else "")
    return [label, _fmt(row["ssim"], ".4f"), _fmt(row["psnr"], ".2f"), _fmt(row["nrmse"], ".1f"),
            _fmt(row["hfen"], ".1f"), _fmt(row["xsim"], ".4f"), _fmt(row["dgm_ppb"], ".1f"),
            _fmt(row["time"], ".1f")]


def _row_line(row):
    cells = _row_cells(row)
    if "error" in row:
        return f"    {cells[0]:44} failed: {row['error']}"
    return "    " + f"{cells[0]:44} " + " ".join(f"{c:>9}" for c in cells[1:])


def format_table(rows, *, bold_best=True):
    """A markdown table: methods as rows, the metrics of :data:`COLUMNS` as columns.

    The best value of each metric column (highest SSIM, PSNR and XSIM, lowest NRMSE, HFEN and
    deep-grey error) is bold, as in mQSM's Table 1; failures are listed below the table.
    """
    header = "| Method | " + " | ".join(COLUMNS) + " |"
    align = "|:--|" + "--:|" * len(COLUMNS)
    ok = [r for r in rows if "error" not in r]
    best = {}
    if bold_best and len(ok) > 1:
        for key, pick in (("ssim", max), ("psnr", max), ("xsim", max), ("nrmse", min), ("hfen", min),
                          ("dgm_ppb", min)):
            vals = [r[key] for r in ok if not math.isnan(r[key])]
            if vals:
                best[key] = pick(vals)
    lines = [header, align]
    keys = ("ssim", "psnr", "nrmse", "hfen", "xsim", "dgm_ppb")
    for r in ok:
        cells = _row_cells(r)
        for i, key in enumerate(keys, start=1):
            if key in best and r[key] == best[key]:
                cells[i] = f"**{cells[i]}**"
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        if "error" in r:
            lines.append(f"\n{r['method']}: failed ({r['error']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- document


def _git(*args):
    try:
        return subprocess.run(["git", "--no-optional-locks", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_provenance():
    """chimap version, git commit and the source files that differ from it (read-only git)."""
    import chimap

    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = [line.split(maxsplit=1)[1] for line in _git("status", "--porcelain", "--", "src").splitlines()
               if len(line.split(maxsplit=1)) == 2]
    text = f"chimap {chimap.__version__}, git commit {commit}"
    if changed:
        text += " plus uncommitted changes in " + ", ".join(f"`{c}`" for c in changed)
    return text


def machine_line():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem_s = f", {mem:.0f} GiB memory"
    except (ValueError, OSError, AttributeError):
        mem_s = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores available ({cpu}){mem_s}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


METHOD_NOTES = """\
## How the numbers are made

- **Cases.** (a) *true local field*: the simulator's local field (the field of the brain's own
  susceptibility, computed on a grid twice as fine as the output: no inverse crime) inside the
  brain mask eroded by 2 voxels, plus white Gaussian noise. (b) *pipeline*: `chimap.pipeline.run`
  with the default preset on the simulated 4-echo 3 T GRE magnitude and wrapped phase (own
  automatic brain mask, phase offsets, unwrapping, echo fit, LBV); every inversion then runs on
  the pipeline's local field inside the pipeline mask where a local field exists, and the row
  *chimap run, default preset* is the pipeline's own result (weak-harmonic TV with LBV boundary
  refinement, magnitude weight, hole-filled mask). (c) *challenge model*: the same two cases on
  the QSM challenge 2.0 head model (Marques et al. MRM 2021) from `../shared/data`, 1.28 mm.
- **Noise of case (a).** White noise with the field standard deviation that a weighted linear
  fit of the 4-echo phase through the origin reaches at the given SNR (chimap's SNR: mean
  first-echo brain magnitude over the noise SD per channel): `sigma_f = 1 / (2 pi f_ppm
  sqrt(sum_e (m_e / sigma)^2 TE_e^2))` with `m_e` the mean brain magnitude of echo `e`,
  `sigma = m_1 / SNR` and `f_ppm` = 127.7 Hz/ppm at 3 T. The level is printed above each table.
- **Tilt.** The head is pitched about voxel axis I relative to B0 and *simulated* with that B0
  direction; every method receives the oblique B0 direction in voxel axes.
- **Inputs per method.** `b0_direction` always; the RMS magnitude over echoes where a method
  takes `magnitude`; where it takes `weight`, the data weight that matches the noise: uniform in
  case (a) (white noise), the default preset's magnitude weight (RMS magnitude, mean 1 in the
  mask) in case (b); with `--alpha auto` the regularisation chosen from the data where a method
  offers it: `alpha="auto"` (Tikhonov: generalised cross-validation; TV-ADMM, weak-harmonic TV,
  nonlinear TV and STAR-QSM's weak level: hold-out cross-validation of the field), MEDI's
  `lam="auto"`, NDI's `max_iter="auto"` (its stopping iteration, the regulariser of NDI) and
  RTS's `lsmr_iter="auto"` (step 1's early stop); the row then says so, with the chosen value;
  everything else at each method's defaults.
- **Referencing.** Estimate and truth are each demeaned over the evaluation mask (whole-brain
  referencing) and set to zero outside it; every metric sees these two maps. Evaluation mask:
  (a) the eroded brain mask the methods received; (b) the pipeline mask inside the true brain.
- **Metrics** (`chimap.metrics`): SSIM (Wang 2004; Gaussian window sigma 1.5 voxels, 11^3,
  L = range of the truth in the mask), PSNR (dB, peak = range of the truth in the mask), NRMSE
  (`||x - r|| / ||r||`, %), HFEN (LoG sigma 1.5 voxels, %), XSIM (Milovic 2024, L = 1 ppm,
  K2 = 0.001), DGM err: mean over caudate, putamen, globus pallidus, thalamus, red nucleus,
  substantia nigra and dentate nucleus of the absolute error of the ROI mean (ppb). Best value per
  column in bold (mQSM Table 1 layout; single values, one simulated head per table).
- **Time** is the wall time of the inversion call alone on this machine (shared cores: treat it
  as an upper bound); for the default-preset row it is the pipeline's inversion step. The script
  runs with the `chimap` command's memory setting (`chimap.allocator.retain_freed_memory`: freed
  large arrays are kept for reuse instead of being returned to the system and zero-filled again),
  as a user of `chimap run` or `chimap invert` gets it; tables before 2026-12-08 ran without it.
- **Methods without a data-driven parameter.** TKD and TSVD (threshold 0.2, the common choice of
  Wharton et al. 2010) and iLSQR (its regularisation is the early stop of LSQR at the paper's
  tolerance, and its streaking estimate takes its thresholds from percentiles of the data, as
  the paper does) run at their published defaults. A truncation threshold can be chosen by
  generalised cross-validation, exactly for these k-space filters; an implementation of that
  (not kept) tried on these heads (the four true-local-field cases and the challenge pipeline
  case) chose 0.27-0.40 for TKD and 0.17-0.25 for TSVD: TKD 1.2-4.1 NRMSE points worse than at
  0.2 in every case, TSVD better in three cases and worse in two. The zero field outside the
  mask puts energy near the magic cone that GCV reads as noise, so it truncates more than the
  streaking needs; chimap offers no automatic threshold for that reason.
- **RTS** runs at the paper's delta 0.15 and mu 1e5 (its TV weight acts only inside the
  magic-cone region that step 2 fills in, so the field cannot cross-validate it); its
  data-driven parameter is step 1's LSMR count, the early stop that regularises it
  (`lsmr_iter="auto"`: hold-out cross-validation, as NDI's stopping iteration). Against the
  paper's 4 iterations (this table as generated at commit 34ea8e0): on the true local fields it
  chose 7-12 iterations and lowered NRMSE by 1.3-4.2 points and the deep-grey error from
  10.7-14.2 to 1.6-5.6 ppb; on the pipeline's fields, which keep some background, it chose 5-6
  and NRMSE rose by 0.8-1.4 points (deep-grey error 5.8-9.8 ppb against 5.7-7.5).
- **Methods worse than TKD.** NDI can score below TKD on these heads: its only regulariser is
  the stopping iteration, and with a tiny Tikhonov weight gradient descent leaves the
  near-cone content of large uniform sources at its start value 0 (a 10 mm sphere keeps about
  61 % of its contrast however long it runs; `chimap.invert.nonlinear`). Its nonlinear data
  term also weighs veins and calcifications less where their phase passes pi/2. TSVD discards
  the cone content that TKD clips, so it scores below TKD by construction. The closed-form
  Tikhonov inversion fits the zero-filled field on the whole padded grid, outside the mask too
  (no data weight in closed form), which biases chi (a 0.1 ppm sphere comes out at 0.091-0.094,
  `tests/test_invert_closed_form.py`) and, in the pipeline cases, makes it sensitive to the
  field left at the mask edge.
- **Real data.** `../shared/data` holds no in-vivo data with a ground truth (see its README).
  `romeo_small` is real 3-echo GRE but only a 24 x 24 x 41 mm patch inside the brain (no brain
  boundary for background removal, undocumented echo times, arbitrary phase scale): an inversion
  of it has no truth to be scored against, and its runtime (10^5 voxels) says nothing about a
  head, so it has no row here.
"""


def write_doc(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------- main


def conditions(snrs, tilt):
    """(key, label, snr, tilt) per condition: each SNR with B0 along K, the first SNR tilted."""
    out = [(f"snr{s:g}", f"SNR {s:g}, B0 along K", s, 0.0) for s in snrs]
    if tilt:
        out.append((f"snr{snrs[0]:g}-tilt{tilt:g}", f"SNR {snrs[0]:g}, B0 tilted {tilt:g} deg", snrs[0], tilt))
    return out


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["local", "pipeline", "challenge"],
                   choices=["local", "pipeline", "challenge"])
    p.add_argument("--methods", nargs="+", default=None, metavar="KEY",
                   help=f"method keys (default all): {', '.join(METHODS)}")
    p.add_argument("--voxel-size", type=float, default=None,
                   help="isotropic output voxel size in mm (default 1; 3 with --quick)")
    p.add_argument("--snrs", type=float, nargs="+", default=[100.0, 40.0],
                   help="first-echo brain SNRs of the 4-echo GRE (default 100 40)")
    p.add_argument("--tilt", type=float, default=15.0, help="head pitch relative to B0 in degrees (default 15; 0: none)")
    p.add_argument("--alpha", choices=["auto", "default"], default="auto",
                   help="auto: alpha='auto' where a method supports it (default); default: each method's default")
    p.add_argument("--seed", type=int, default=0, help="simulation and noise seed (default 0)")
    p.add_argument("--keep", default=None, metavar="DIR", help="cache simulations, pipeline outputs and rows here")
    p.add_argument("--fresh", action="store_true", help="recompute every row (ignore the cached rows)")
    p.add_argument("--output", default=None, metavar="MD",
                   help=f"markdown output (default {DEFAULT_OUTPUT.relative_to(REPO)}; with --quick none)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 mm voxels, SNR 100 only, no tilt, no challenge case, no output file")
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from chimap.allocator import retain_freed_memory

    retain_freed_memory()  # as the chimap command does (see "Time" in the notes)
    t_start = time.perf_counter()
    provenance = code_provenance()  # before any work: the code this run imports
    if args.quick:
        args.voxel_size = args.voxel_size or 3.0
        args.snrs = args.snrs[:1]
        args.tilt = 0.0
        args.cases = [c for c in args.cases if c != "challenge"]
    vs = args.voxel_size or 1.0
    output = Path(args.output) if args.output else (None if args.quick else DEFAULT_OUTPUT)
    keep = Path(args.keep) if args.keep else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    methods, skipped = resolve_methods(args.methods)
    for s in skipped:
        log(f"skipped: {s}")
    cache_path = keep / "results.json" if keep is not None else None
    cache = {}
    if cache_path is not None and cache_path.exists() and not args.fresh:
        cache = json.loads(cache_path.read_text())

    def save_cache():
        if cache_path is not None:
            tmp = cache_path.with_name(cache_path.name + ".tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, cache_path)

    conds = conditions(args.snrs, args.tilt)
    sections = []  # (heading, [(title, notes, table)])
    all_rows = []
    sim_seconds = 0.0
    challenge_mm = None

    def tables_for(anatomy, cases_here, conds_here, letter, vs_here):
        nonlocal sim_seconds
        out = {c: [] for c in cases_here}
        for ckey, clabel, snr, tilt in conds_here:
            t_sim = time.perf_counter()
            sim = simulate(anatomy, vs_here, snr, tilt, args.seed, keep, log)
            sim_seconds += time.perf_counter() - t_sim
            for case in cases_here:
                # rows are cached under the code their data came from (and their method's code)
                sim_h, field_h, _ = data_hashes()
                key = f"{anatomy}/{vs_here:g}mm/seed{args.seed}/{case}/{ckey}/sim-{sim_h}"
                if case == "pipeline":
                    key += f"/field-{field_h}"
                title = f"{clabel}, {'true local field' if case == 'local' else 'pipeline from phase'}"
                log(f"\n[{letter}] {anatomy} {title}")
                if case == "local":
                    prob = local_problem(sim, snr, key=key, title=title, seed=args.seed + 1)
                else:
                    try:
                        prob = pipeline_problem(sim, key=key, title=title, keep=keep, log=log)
                    except Exception as exc:  # noqa: BLE001
                        log(f"  pipeline failed: {type(exc).__name__}: {exc}")
                        out[case].append((title, [f"the pipeline failed: {type(exc).__name__}: {exc}"], ""))
                        continue
                for n in prob.notes:
                    log(f"  {n}")
                log("    " + f"{'method':44} " + " ".join(f"{c.split(' ')[0]:>9}" for c in COLUMNS))
                rows = run_problem(prob, methods, alpha_mode=args.alpha, cache=cache, save_cache=save_cache,
                                   log=log)
                all_rows.extend(rows)
                out[case].append((title, prob.notes, format_table(rows)))
            del sim
        return out

    head_cases = [c for c in ("local", "pipeline") if c in args.cases]
    if head_cases:
        res = tables_for("head", head_cases, conds, "a/b", vs)
        if "local" in res:
            sections.append(("(a) Simulated head, true local field", res["local"]))
        if "pipeline" in res:
            sections.append(("(b) Simulated head, full pipeline from magnitude and phase", res["pipeline"]))
    if "challenge" in args.cases:
        heading = "(c) QSM challenge 2.0 head model (another anatomy)"
        if not SEGMENTATION_DIR.exists():
            log(f"\nchallenge case skipped: {SEGMENTATION_DIR} not found")
            sections.append((heading, [("skipped", [f"`{SEGMENTATION_DIR}` not found"], "")]))
        else:
            res = tables_for("challenge", ["local", "pipeline"], conds[:1], "c", vs)
            challenge_mm = challenge_voxel_mm(vs)
            sections.append((heading, res["local"] + res["pipeline"]))

    total = time.perf_counter() - t_start
    log(f"\ntotal {total / 60:.1f} min (simulating or loading the heads: {sim_seconds / 60:.1f} min)")
    if output is None:
        return 0
    challenge_vs = f" (challenge model: {challenge_mm} mm)" if challenge_mm else ""

    header = [
        "# Accuracy of the dipole inversions on simulated heads",
        "",
        "<!-- Generated by benchmarks/accuracy.py: do not edit by hand, rerun the script. -->",
        "",
        "Generated by `benchmarks/accuracy.py`; regenerate it with the command below, never by hand.",
        "",
        f"- Command: `{' '.join(['.venv/bin/python', 'benchmarks/accuracy.py', *argv])}`",
        (f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; this run took "
         f"{total / 60:.1f} min (rows and simulations taken from the cache count for nothing)"),
        f"- Machine: {machine_line()}",
        f"- Code: {provenance}",
        (f"- Settings: voxel size {vs:g} mm{challenge_vs}, 4-echo 3 T GRE (TE 5/12/19/26 ms), "
         f"SNR {', '.join(f'{s:g}' for s in args.snrs)}, tilt {args.tilt:g} deg, seed {args.seed}, "
         f"alpha mode `{args.alpha}`"),
        (f"- Methods (source hash: module and the chimap modules it uses): "
         f"{', '.join(f'{m.label} `{m.source_hash}`' for m in methods)}"),
    ]
    inv_min = sum(r.get("time", 0.0) for r in all_rows if "error" not in r and not math.isnan(r.get("time", 0.0))) / 60
    header.insert(8, f"- Sum of the inversion times in the tables: {inv_min:.1f} min (cached rows included)")
    no_auto = sorted({r["method"] for r in all_rows if str(r.get("alpha") or "").startswith("default")})
    if no_auto:
        header.append("- `alpha=\"auto\"` not supported (run at their default alpha): " + ", ".join(no_auto))
    manual = [m.label for m in methods if AUTO_PARAMETER.get(m.key, "alpha") is None
              or AUTO_PARAMETER.get(m.key, "alpha") not in inspect.signature(m.func).parameters]
    if args.alpha == "auto" and manual:
        header.append("- No parameter chosen from the data (their published defaults): " + ", ".join(manual)
                      + " (see the notes below the tables)")
    if skipped:
        header.append("- Not available in this checkout (skipped): " + "; ".join(skipped))
    body = []
    for heading, tables in sections:
        body += ["", f"## {heading}"]
        for title, notes, table in tables:
            body += ["", f"### {title}", ""]
            body += [f"{n}." for n in notes]
            if table:
                body += ["", table]
    text = "\n".join(header + [""] + METHOD_NOTES.splitlines() + body) + "\n"
    write_doc(output, text)
    log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
