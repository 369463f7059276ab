"""``chimap metrics``: compare susceptibility maps with a reference (ground truth).

Loads each estimate, the reference, the mask and optionally a segmentation, calls
:func:`chimap.metrics.compute_all`, prints one row per estimate and writes the results as JSON
(with the package version and parameters) and/or CSV. Both files are written atomically.
Undefined (NaN) and infinite values are written as ``null`` in JSON and ``nan``/``inf`` in CSV.
"""

from __future__ import annotations

import csv
import logging
import math

import numpy as np

NAME = "metrics"
HELP = ("compare susceptibility maps with a reference: RMSE, NRMSE, HFEN, SSIM, XSIM, "
        "QSM challenge 2.0 set")

log = logging.getLogger("chimap")


def add_arguments(parser) -> None:
    parser.add_argument("estimates", nargs="+", metavar="CHI",
                        help="susceptibility map(s) to evaluate (NIfTI, ppm)")
    parser.add_argument("--reference", "-r", required=True, metavar="TRUTH",
                        help="reference susceptibility map (NIfTI, ppm)")
    parser.add_argument("--mask", "-m", required=True, metavar="MASK",
                        help="evaluation mask (NIfTI; non-zero voxels are evaluated)")
    parser.add_argument("--labels", "-l", metavar="LABELS",
                        help="segmentation (NIfTI, chimap.sim labels) for the QSM challenge 2.0 "
                             "metrics")
    parser.add_argument("--no-morphology", action="store_true",
                        help="skip the challenge's one-voxel erosion/dilation of the label regions")
    parser.add_argument("--output", "-o", metavar="JSON", help="write the results as JSON")
    parser.add_argument("--csv", metavar="CSV",
                        help="write the results as CSV (one row per estimate)")


def _load_3d(path, what):
    from ..io import load_nifti

    data, affine, _ = load_nifti(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{what} {path} must be a 3-D image, got shape {data.shape}")
    return data, affine


def _json_value(v):
    return v if math.isfinite(v) else None


def _fmt(v) -> str:
    return f"{v:.4g}"


def format_table(rows, columns) -> str:
    """Plain-text table: one row per (name, metrics dict)."""
    header = ["estimate", *columns]
    body = [[name, *(_fmt(m[c]) if c in m else "-" for c in columns)] for name, m in rows]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *body]]
    return "\n".join(lines)


def run(args) -> int:
    from .. import __version__
    from ..geometry import voxel_sizes
    from ..io import atomic_path, write_json
    from ..metrics import challenge_metrics, compute_all

    ref, ref_affine = _load_3d(args.reference, "reference")
    mask, _ = _load_3d(args.mask, "mask")
    if mask.shape != ref.shape:
        raise ValueError(f"mask {args.mask} has shape {mask.shape}, reference {args.reference} "
                         f"has shape {ref.shape}")
    mask = np.asarray(mask) != 0
    labels = None
    if args.labels:
        labels, _ = _load_3d(args.labels, "labels")
        if labels.shape != ref.shape:
            raise ValueError(f"labels {args.labels} have shape {labels.shape}, reference "
                             f"{args.reference} has shape {ref.shape}")
    voxel_size = voxel_sizes(ref_affine)

    rows = []
    for path in args.estimates:
        est, affine = _load_3d(path, "estimate")
        if est.shape != ref.shape:
            raise ValueError(f"estimate {path} has shape {est.shape}, reference "
                             f"{args.reference} has shape {ref.shape}")
        if not np.allclose(affine, ref_affine, atol=1e-3):
            log.warning("warning: %s and the reference have different affines; "
                        "comparing voxel by voxel", path)
        try:
            values = compute_all(est, ref, mask)
            if labels is not None:
                values.update(challenge_metrics(est, ref, labels, mask, voxel_size=voxel_size,
                                                morphology=not args.no_morphology))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        rows.append((str(path), {k: float(v) for k, v in values.items()}))

    columns = list(dict.fromkeys(k for _, m in rows for k in m))
    if not getattr(args, "quiet", False):
        print(format_table(rows, columns))

    if args.output:
        record = {
            "chimap_version": __version__,
            "command": "metrics",
            "parameters": {
                "reference": str(args.reference),
                "mask": str(args.mask),
                "labels": str(args.labels) if args.labels else None,
                "voxel_size": [float(v) for v in voxel_size],
                "morphology": not args.no_morphology,
            },
            "units": {"rmse": "ppm", "mae": "ppm", "nrmse": "fraction", "psnr": "dB",
                      "hfen": "fraction", "*_pct": "percent",
                      "calc_moment*": "ppm*mm^3"},
            "results": [{"estimate": name, "metrics": {k: _json_value(v) for k, v in m.items()}}
                        for name, m in rows],
        }
        write_json(args.output, record)
        log.info("wrote %s", args.output)
    if args.csv:
        with atomic_path(args.csv) as tmp:
            with open(tmp, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["estimate", *columns])
                for name, m in rows:
                    writer.writerow([name, *(repr(m[c]) if c in m else "" for c in columns)])
        log.info("wrote %s", args.csv)
    return 0


__all__ = ["NAME", "HELP", "add_arguments", "run", "format_table"]
