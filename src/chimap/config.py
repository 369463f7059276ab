"""Pipeline configuration: TOML presets, user overrides and validation against the algorithms.

A configuration has one table per pipeline step. ``method`` names the algorithm; every other key
is a keyword argument of that algorithm's function, so a preset reads like the calls it makes.
Unknown keys are rejected by name, with the keys that the chosen method accepts.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import tomllib
from importlib import resources
from pathlib import Path

__all__ = ["STEPS", "expand_defaults", "load_preset", "load_config", "merge", "validate", "resolve", "available_presets", "to_toml"]

#: step -> method -> "module:function"
STEPS: dict[str, dict[str, str]] = {
    "mask": {
        "threshold": "chimap.mask:brain_mask",
        "external": "",
    },
    "offsets": {
        "mcpc3ds": "chimap.field.offsets:mcpc3ds",
        "none": "",
    },
    "unwrap": {
        "region_growing": "chimap.field.unwrap:unwrap_temporal",
        "complex_guided": "chimap.field.unwrap:unwrap_complex_guided",
        "laplacian": "chimap.field.unwrap:unwrap_laplacian",
    },
    "combine": {
        "linear_fit": "chimap.field.combine:fit_field_linear",
        "weighted_average": "chimap.field.combine:weighted_echo_average",
        "complex_fit": "chimap.field.combine:fit_field_complex",
    },
    "distortion": {
        "auto": "",
        "none": "",
    },
    "background": {
        "vsharp": "chimap.background:vsharp",
        "sharp": "chimap.background:sharp",
        "resharp": "chimap.background:resharp",
        "ismv": "chimap.background:ismv",
        "pdf": "chimap.background:pdf",
        "lbv": "chimap.background:lbv",
    },
    "invert": {
        "tkd": "chimap.invert:tkd",
        "tsvd": "chimap.invert:tsvd",
        "tikhonov": "chimap.invert:tikhonov",
        "rts": "chimap.invert:rts",
        "tv_admm": "chimap.invert:tv_admm",
        "tv_admm_wh": "chimap.invert:tv_admm_wh",
        "medi": "chimap.invert:medi",
        "ilsqr": "chimap.invert:ilsqr",
        "star_qsm": "chimap.invert:star_qsm",
        "nltv": "chimap.invert:nltv",
        "ndi": "chimap.invert:ndi",
        # one step from the wrapped phase: the pipeline skips unwrapping, echo combination and
        # background removal (chimap.pipeline)
        "tgv": "chimap.tgv:tgv_qsm",
    },
    "reference": {
        "brain": "",
        "csf": "",
        "labels": "",
        "none": "",
    },
}

#: Keys of a step that configure the pipeline itself, not the algorithm.
PIPELINE_KEYS = {
    "mask": {"method", "quality", "two_pass"},
    "offsets": {"method"},
    "unwrap": {"method"},
    "combine": {"method"},
    "distortion": {"method", "reference"},
    "background": {"method", "use_reliability", "erode_mm", "boundary_refinement"},
    "invert": {"method", "weight", "domain", "input", "edges", "edge_fraction"},
    "reference": {"method", "values"},
    "output": {"intermediates"},
}

#: Allowed values of the pipeline keys that take a fixed set of values.
PIPELINE_VALUES = {
    ("mask", "quality"): ("phase", "none"),
    ("mask", "two_pass"): (True, False),
    ("distortion", "reference"): ("auto", "median", "none"),
    ("invert", "weight"): ("magnitude", "reliability", "none"),
    ("invert", "domain"): ("brain", "valid"),
    ("invert", "edges"): ("magnitude", "none"),
    ("invert", "input"): ("phase", "field"),
    ("output", "intermediates"): (True, False),
    ("background", "use_reliability"): (True, False),
}

#: Arguments the pipeline passes itself (never set from a configuration).
_SUPPLIED = {"phase", "phases", "magnitude", "mask", "voxel_size", "echo_times", "field_strength",
             "b0_direction", "total_field", "local_field", "field", "weight", "weights",
             "phase_unwrapped", "data", "noise", "chi", "unwrap", "phase_offset", "template",
             "return_info", "return_residual", "return_harmonic", "harmonic_mask", "refine_field",
             "refine_every", "refine_times", "noise_std", "csf_mask", "echo_time", "progress"}

#: Inversions that start from the wrapped phase and replace unwrapping, echo combination and
#: background removal.
ONE_STEP_INVERSIONS = {"tgv"}


def available_presets() -> list[str]:
    """Names of the presets shipped with chimap."""
    return sorted(p.name[:-5] for p in resources.files("chimap.presets").iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict:
    """Load a shipped preset by name (e.g. ``default``, ``fast``)."""
    names = available_presets()
    if name not in names:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(names)}")
    return tomllib.loads(resources.files("chimap.presets").joinpath(f"{name}.toml").read_text())


def load_config(path) -> dict:
    """Load a user TOML configuration file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such configuration file: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None


def merge(base: dict, override: dict) -> dict:
    """Merge ``override`` into a copy of ``base`` table by table; a new ``method`` replaces the
    whole table (its keyword arguments belong to the old method)."""
    out = copy.deepcopy(base)
    for step, table in override.items():
        if not isinstance(table, dict):
            raise ValueError(f"configuration entry {step!r} must be a table ([{step}])")
        if "method" in table and table["method"] != out.get(step, {}).get("method"):
            out[step] = dict(table)
        else:
            out.setdefault(step, {}).update(table)
    return out


def _function(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def method_function(step: str, method: str):
    """The function that implements ``method`` of ``step`` (None for pipeline-internal methods)."""
    spec = STEPS[step][method]
    return _function(spec) if spec else None


def validate(config: dict) -> dict:
    """Check steps, methods and keys; return the configuration unchanged.

    Raises
    ------
    ValueError
        Naming the unknown step, method or key, and what is accepted.
    """
    for step, table in config.items():
        if step not in STEPS and step != "output":
            raise ValueError(f"unknown configuration table [{step}]; known: {', '.join([*STEPS, 'output'])}")
        if step == "output":
            bad = set(table) - PIPELINE_KEYS["output"]
            if bad:
                raise ValueError(f"unknown key(s) {sorted(bad)} in [output]; known: {sorted(PIPELINE_KEYS['output'])}")
            continue
        if not isinstance(table, dict):
            raise ValueError(f"configuration entry {step!r} must be a table ([{step}])")
        method = table.get("method")
        if method not in STEPS[step]:
            raise ValueError(f"[{step}] method {method!r} is unknown; choose from {', '.join(STEPS[step])}")
        func = method_function(step, method)
        allowed = set(PIPELINE_KEYS[step])
        if func is not None:
            allowed |= configurable_keywords(func)
        bad = set(table) - allowed
        if bad:
            raise ValueError(f"unknown key(s) {sorted(bad)} in [{step}] for method {method!r}; "
                             f"accepted: {', '.join(sorted(allowed))}")
    for (step, key), values in PIPELINE_VALUES.items():
        if key in config.get(step, {}) and config[step][key] not in values:
            raise ValueError(f"[{step}] {key} = {config[step][key]!r} is not one of {list(values)}")
    invert = config.get("invert", {})
    if invert.get("edges", "none") != "none" or "edge_fraction" in invert:
        func = method_function("invert", invert.get("method"))
        if func is None or "gradient_weight" not in inspect.signature(func).parameters:
            raise ValueError(f"[invert] edges / edge_fraction set the TV weight of the TV inversions (tv_admm, "
                             f"tv_admm_wh), not of {invert.get('method')!r}: drop the keys")
        fraction = invert.get("edge_fraction", 0.3)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ValueError(f"[invert] edge_fraction must be a number in [0, 1), got {fraction!r}")
    if "input" in invert and invert.get("method") not in ONE_STEP_INVERSIONS:
        raise ValueError(f"[invert] input applies to the one-step inversions ({', '.join(sorted(ONE_STEP_INVERSIONS))}), "
                         f"not to {invert.get('method')!r}: drop the key")
    if invert.get("method") in ONE_STEP_INVERSIONS:
        if config.get("mask", {}).get("two_pass", False):
            raise ValueError("the two-pass masks need a background-removal step, which TGV-QSM does not have: "
                             "set [mask] two_pass = false")
        if invert.get("input", "phase") == "field" and invert.get("laplacian", "plain") != "plain":
            raise ValueError(f'[invert] laplacian = "{invert["laplacian"]}" is for wrapped phase; with input = '
                             '"field" the field is unwrapped: drop the key or set input = "phase"')
    return config


def configurable_keywords(func) -> set[str]:
    """Keyword-only arguments of an algorithm that a user may set (not those the pipeline
    supplies itself, such as ``b0_direction`` or ``weight``)."""
    params = inspect.signature(func).parameters
    return {n for n, p in params.items()
            if p.kind == p.KEYWORD_ONLY and n not in _SUPPLIED and not n.startswith("_")}


def resolve(preset: str = "default", *, config_file=None, overrides: dict | None = None) -> dict:
    """Preset, then a user file, then overrides; validated."""
    cfg = load_preset(preset)
    if config_file is not None:
        cfg = merge(cfg, load_config(config_file))
    if overrides:
        cfg = merge(cfg, overrides)
    return validate(cfg)


def expand_defaults(config: dict) -> dict:
    """A copy of ``config`` with every keyword default of each step's function filled in, so that
    the printed and recorded configuration reproduces a run exactly."""
    out = copy.deepcopy(config)
    for step, table in out.items():
        if step not in STEPS:
            continue
        func = method_function(step, table["method"])
        if func is None:
            continue
        for name, p in inspect.signature(func).parameters.items():
            if p.kind == p.KEYWORD_ONLY and name not in _SUPPLIED and p.default is not inspect.Parameter.empty:
                table.setdefault(name, list(p.default) if isinstance(p.default, tuple) else p.default)
    return out


def step_kwargs(config: dict, step: str) -> dict:
    """Keyword arguments for the algorithm of ``step`` (the table minus pipeline keys)."""
    table = config.get(step, {})
    return {k: v for k, v in table.items() if k not in PIPELINE_KEYS[step]}


def to_toml(config: dict) -> str:
    """Render a configuration as TOML (tables of scalars and lists)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for step, table in config.items():
        lines.append(f"[{step}]")
        # TOML has no null: a None default is shown as a comment
        lines += [f"# {k} = (none)" if v is None else f"{k} = {value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)
