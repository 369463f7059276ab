"""``chimap invert``: a local field (ppm) to chi (ppm) with any of chimap's dipole inversions."""

from __future__ import annotations

import logging
import time

import numpy as np

NAME = "invert"
HELP = "dipole inversion of a local field in ppm: LOCAL_FIELD.nii.gz + mask -> chi.nii.gz (ppm)"

log = logging.getLogger("chimap")


def add_arguments(parser) -> None:
    parser.add_argument("local_field", metavar="LOCAL_FIELD", help="local field in ppm of B0 (3-D NIfTI)")
    parser.add_argument("--mask", "-m", required=True, metavar="MASK", help="where the local field is valid")
    parser.add_argument("--method", default=None,
                        help="inversion (tkd, tsvd, tikhonov, ilsqr, star_qsm, medi, nltv, ndi, rts, "
                             "tv_admm, tv_admm_wh); default: the default preset's, with its automatic "
                             "weight")
    parser.add_argument("--b0-direction", type=float, nargs=3, default=None, metavar=("I", "J", "K"),
                        help="B0 in voxel axes (default: from the affine)")
    parser.add_argument("--magnitude", default=None, metavar="MAG",
                        help="magnitude (3-D, or 4-D echoes last) for a magnitude-weighted data term")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword argument of the method (repeatable), e.g. --set alpha=5e-4, "
                             "--set alpha=auto, --set lam=auto (medi), --set max_iter=auto (ndi), "
                             "--set lsmr_iter=auto (rts)")
    parser.add_argument("-o", "--output", required=True, metavar="CHI",
                        help="output chi map (.nii.gz, ppm); a JSON sidecar beside it records the method, "
                             "its parameters and what was chosen from the data")


def run(args) -> int:
    import inspect

    from ..config import STEPS, configurable_keywords, method_function, resolve
    from ..geometry import b0_direction_from_affine, check_b0_direction, voxel_sizes
    from .. import __version__
    from ..io import load_nifti, save_nifti
    from ..io.nifti import write_json
    from ..invert.autoreg import AUTOMATIC_PARAMETERS, invert_recording_choices

    default = resolve("default")["invert"]
    method = args.method or default["method"]
    if method not in STEPS["invert"]:
        raise ValueError(f"unknown --method {method!r}; choose from {', '.join(STEPS['invert'])}")
    func = method_function("invert", method)
    settable = configurable_keywords(func)
    kwargs = {}
    if args.method is None:  # the default preset's parameters too
        kwargs.update({k: v for k, v in default.items() if k in settable})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in settable:
            raise ValueError(f"--set {item!r}: {method} accepts {', '.join(sorted(settable))} (as KEY=VALUE)")
        kwargs[key] = _parse_value(value)

    field, affine, _ = load_nifti(args.local_field)
    if field.ndim != 3:
        raise ValueError(f"the local field must be a 3-D image, got shape {field.shape}")
    mask, _, _ = load_nifti(args.mask)
    if mask.shape[:3] != field.shape or mask.size != field.size:
        raise ValueError(f"mask shape {mask.shape} does not match the local field {field.shape}")
    mask = mask.reshape(field.shape) > 0
    if not mask.any():
        raise ValueError("the mask is empty")
    if not np.all(np.isfinite(field[mask])):
        raise ValueError("the local field holds NaN or infinite values inside the mask")
    p99 = float(np.percentile(np.abs(field[mask]), 99))
    if p99 > 1.0:  # tissue local fields stay well below 1 ppm; Hz or radians do not
        raise ValueError(f"99 % of |local field| reaches {p99:.3g}, too large for ppm: convert Hz with "
                         "f_ppm = f_Hz / (42.577478 * B0_T) and phase with f_ppm = phase / (2 pi 42.577478 B0_T TE_s)")
    b0 = check_b0_direction(args.b0_direction) if args.b0_direction else b0_direction_from_affine(affine)
    vs = voxel_sizes(affine)
    params = inspect.signature(func).parameters
    if args.magnitude is not None and ("weight" in params or "magnitude" in params):
        mag, _, _ = load_nifti(args.magnitude)
        if mag.shape[:3] != field.shape:
            raise ValueError(f"magnitude shape {mag.shape} does not match the local field {field.shape}")
        mag = np.sqrt(np.mean(np.asarray(mag, np.float64).reshape(field.shape + (-1,)) ** 2, axis=3))
        if not np.all(np.isfinite(mag[mask])) or mag[mask].max() <= 0:
            raise ValueError("the magnitude must be finite and positive inside the mask")
        if "magnitude" in params:  # MEDI: edge mask and data weight from the magnitude itself
            kwargs["magnitude"] = np.where(mask, mag, 0).astype(np.float32)
        else:
            kwargs["weight"] = np.where(mask, mag / mag[mask].mean(), 0).astype(np.float32)
    elif args.magnitude is not None:
        log.warning("%s has no data weight: --magnitude ignored", method)
    log.info("chimap invert: %s on %s, voxel %s mm, B0 (voxel axes) %s", method, field.shape,
             np.round(vs, 4).tolist(), np.round(b0, 4).tolist())
    t0 = time.perf_counter()
    chi, chosen = invert_recording_choices(func, field.astype(np.float32), mask, vs, b0_direction=b0, **kwargs)
    seconds = time.perf_counter() - t0
    log.info("  %-20s %7.1f s", method, seconds)
    for key in AUTOMATIC_PARAMETERS:
        if key in chosen:
            log.info("  %s %s chose %.3g", key, kwargs[key], float(chosen[key]))
    save_nifti(args.output, np.where(mask, chi, 0).astype(np.float32), affine)
    record = {"software": f"chimap {__version__}", "command": "chimap invert", "method": method,
              "parameters": {k: v for k, v in kwargs.items() if not isinstance(v, np.ndarray)},
              "magnitude": str(args.magnitude) if args.magnitude else None,
              "local_field": str(args.local_field), "mask": str(args.mask), "units": "ppm",
              "voxel_size_mm": vs, "b0_direction_voxel_axes": b0, "seconds": round(seconds, 3),
              "chosen_from_data": chosen}
    write_json(_sidecar(args.output), record)
    log.info("wrote %s and its sidecar %s", args.output, _sidecar(args.output).name)
    return 0


def _sidecar(output):
    """``chi.nii.gz`` -> ``chi.json`` beside it."""
    from pathlib import Path

    out = Path(output)
    name = out.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return out.with_name(name + ".json")


def _parse_value(text):
    """A TOML-like scalar: bool, int, float, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
