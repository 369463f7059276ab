"""``chimap run``: magnitude and phase (NIfTI or a BIDS subject folder) to a referenced chi map."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

NAME = "run"
HELP = "run the QSM pipeline: magnitude + wrapped phase -> chi.nii.gz (ppm), mask.nii.gz, chimap.json"

log = logging.getLogger("chimap")


def add_arguments(parser):
    src = parser.add_argument_group("inputs")
    src.add_argument("--magnitude", nargs="+", default=None, metavar="NII",
                     help="magnitude: one 4-D file (echoes last) or one 3-D file per echo")
    src.add_argument("--phase", nargs="+", default=None, metavar="NII",
                     help="wrapped phase: one 4-D file or one 3-D file per echo")
    src.add_argument("--bids", default=None, metavar="DIR",
                     help="a BIDS subject folder (or its anat/) with part-mag/part-phase echo files")
    src.add_argument("--json", nargs="+", default=None, metavar="JSON", help="sidecar(s) with EchoTime (s)")
    src.add_argument("--echo-times", type=float, nargs="+", default=None, metavar="S", help="echo times in s")
    src.add_argument("--field-strength", type=float, default=None, metavar="T", help="tesla")
    src.add_argument("--b0-direction", type=float, nargs=3, default=None, metavar=("I", "J", "K"),
                     help="B0 in voxel axes (default: from the affine)")
    src.add_argument("--mask", default=None, metavar="NII", help="external brain mask")
    src.add_argument("--reference-labels", default=None, metavar="NII",
                     help="label image (or mask) on the image grid: reference chi to the mean over its "
                          "labels (sets [reference] method = \"labels\")")
    src.add_argument("--reference-values", type=int, nargs="+", default=None, metavar="N",
                     help="labels of --reference-labels forming the reference region (default: all non-zero)")
    src.add_argument("--phase-units", default="auto",
                     help="auto, rad, siemens, milliradians, uint16, degrees or range (default auto)")
    src.add_argument("--phase-sign", type=int, choices=[1, -1], default=1,
                     help="-1 for vendors whose phase has the opposite sign")
    src.add_argument("--phase-encoding", default=None, metavar="DIR",
                     help="EPI phase-encoding direction, BIDS style (i, j, k, i-, j-, k-); with "
                          "--effective-echo-spacing the phase-encode distortion is corrected (default: sidecar)")
    src.add_argument("--effective-echo-spacing", type=float, default=None, metavar="S",
                     help="EPI effective echo spacing in seconds (default: sidecar EffectiveEchoSpacing)")
    parser.add_argument("-o", "--output", required=False, metavar="DIR", help="output folder")
    parser.add_argument("--preset", default="default", help="shipped preset (default, fast, ...)")
    parser.add_argument("--config", default=None, metavar="TOML", help="configuration file over the preset")
    parser.add_argument("--inversion", default=None, metavar="METHOD",
                        help="dipole inversion instead of the preset's, with its defaults (e.g. tv_admm, medi, "
                             "tgv: single-step TGV-QSM from the wrapped phase)")
    parser.add_argument("--intermediates", action="store_true",
                        help="also write field.nii.gz, local_field.nii.gz and the brain mask")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def run(args) -> int:
    from ..config import expand_defaults, resolve, to_toml

    overrides = None
    if args.reference_labels or args.reference_values:
        if not args.reference_labels:
            raise ValueError("--reference-values needs --reference-labels LABELS.nii.gz")
        overrides = {"reference": {"method": "labels"}}
        if args.reference_values:
            overrides["reference"]["values"] = list(args.reference_values)
    if args.inversion:
        overrides = {**(overrides or {}), "invert": {"method": args.inversion}}
    if args.print_config:
        print(to_toml(expand_defaults(resolve(args.preset, config_file=args.config, overrides=overrides))))
        return 0
    if not args.output:
        raise ValueError("give an output folder with -o OUT_DIR")
    magnitude, phase, json = args.magnitude, args.phase, args.json
    if args.bids:
        if phase:
            raise ValueError("give either --bids or --phase/--magnitude, not both")
        from ..io.bids import find_subject_echoes

        magnitude, phase, json = find_subject_echoes(args.bids)
    if not phase:
        raise ValueError("no phase given: pass --phase PHASE.nii.gz (and --magnitude) or --bids SUBJECT_DIR")
    from ..pipeline import run_files

    out = run_files(phase=_one_or_list(phase), magnitude=_one_or_list(magnitude) if magnitude else None,
                    json=_one_or_list(json) if json else None, echo_times=args.echo_times,
                    field_strength=args.field_strength, b0_direction=args.b0_direction, mask=args.mask,
                    output=args.output, preset=args.preset, config_file=args.config, overrides=overrides,
                    reference_labels=args.reference_labels, phase_encoding=args.phase_encoding,
                    effective_echo_spacing=args.effective_echo_spacing,
                    phase_units=args.phase_units, phase_sign=args.phase_sign,
                    intermediates=args.intermediates or None, argv=sys.argv)
    log.info("wrote %s", Path(out) / "chi.nii.gz")
    return 0


def _one_or_list(items):
    return items[0] if len(items) == 1 else list(items)
