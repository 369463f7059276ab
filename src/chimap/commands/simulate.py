"""``chimap simulate``: analytic phantoms and the realistic head with ground truth."""

from __future__ import annotations

import logging
import time

NAME = "simulate"
HELP = "simulate a head (built-in, or the QSM challenge 2.0 model) with inputs and ground truth"

log = logging.getLogger("chimap")


def add_arguments(parser):
    parser.add_argument("what", choices=["head", "challenge"],
                        help="head: the built-in MNI152-based head; challenge: the QSM challenge 2.0 "
                             "head model from --segmentation-dir")
    parser.add_argument("--segmentation-dir", default=None, metavar="DIR",
                        help="folder with SegmentedModel.nii.gz, BrainMask.nii.gz and "
                             "SusceptibilityValues.mat (for 'challenge')")
    parser.add_argument("-o", "--output", required=True, help="output folder (BIDS-like)")
    parser.add_argument("--protocol", choices=["gre", "epi"], default="gre",
                        help="multi-echo GRE or segmented 3D-EPI (default gre)")
    parser.add_argument("--voxel-size", type=float, nargs="+", default=[1.0], metavar="MM",
                        help="output voxel size in mm: one value or three (default 1)")
    parser.add_argument("--echo-times", type=float, nargs="+", default=None, metavar="S",
                        help="echo times in seconds (default GRE 0.005 0.012 0.019 0.026, "
                             "EPI 0.008 0.018 0.028 0.038)")
    parser.add_argument("--field-strength", type=float, default=3.0, metavar="T", help="tesla (default 3)")
    parser.add_argument("--snr", type=float, default=100.0,
                        help="first-echo brain SNR; 0 for no noise (default 100)")
    tilt = parser.add_mutually_exclusive_group()
    tilt.add_argument("--b0-tilt", type=float, default=0.0, metavar="DEG",
                      help="head pitch relative to B0 in degrees (default 0)")
    tilt.add_argument("--b0-direction", type=float, nargs=3, default=None, metavar=("I", "J", "K"),
                      help="B0 direction in voxel axes")
    parser.add_argument("--lesions", type=int, default=0, help="number of MS lesions (default 0)")
    parser.add_argument("--oversample", type=int, default=2,
                        help="fine simulation grid factor (default 2; 1 is an inverse crime)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--vary-anatomy", action="store_true",
                        help="jitter nuclei and tissue susceptibilities with the seed")
    parser.add_argument("--scale", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("SI", "SJ", "SK"),
                        help="head size relative to MNI152 per axis")
    parser.add_argument("--echo-spacing", type=float, default=0.0008, metavar="S",
                        help="EPI echo spacing in seconds (default 0.0008)")
    parser.add_argument("--segments", type=int, default=None,
                        help="EPI shots per partition (default: the fewest that fit the echo times)")
    parser.add_argument("--subject", default="sim", help="BIDS subject label (default sim)")


def run(args) -> int:
    from ..sim.bids import write_simulated_head
    from ..sim.head import simulate_head

    vs = args.voxel_size
    if len(vs) not in (1, 3):
        raise ValueError(f"--voxel-size takes one or three values, got {len(vs)}")
    t0 = time.perf_counter()
    if args.what == "challenge":
        head = _simulate_challenge(args)
        write_simulated_head(head, args.output, subject=args.subject)
        log.info(summary(head, args.output, time.perf_counter() - t0))
        return 0
    head = simulate_head(
        voxel_size=vs if len(vs) == 3 else vs[0],
        echo_times=args.echo_times,
        field_strength=args.field_strength,
        protocol=args.protocol,
        snr=None if args.snr == 0 else args.snr,
        b0_direction=args.b0_direction,
        b0_tilt_deg=args.b0_tilt,
        lesions=args.lesions,
        oversample=args.oversample,
        rng=args.seed,
        anatomy_scale=args.scale,
        vary_anatomy=args.vary_anatomy,
        echo_spacing=args.echo_spacing,
        segments=args.segments,
        progress=lambda m: log.info("  %s", m),
    )
    write_simulated_head(head, args.output, subject=args.subject)
    log.info(summary(head, args.output, time.perf_counter() - t0))
    return 0


def _simulate_challenge(args):
    """The challenge 2.0 model: its 0.64 mm labels are the fine grid; --voxel-size picks the
    output voxel as the nearest whole multiple of 0.64 mm (1.28 mm for the default 1)."""
    import numpy as np

    from ..geometry import b0_direction_from_tilt
    from ..sim.segmented import load_challenge_segmentation, simulate_segmentation

    if not args.segmentation_dir:
        raise ValueError("'chimap simulate challenge' needs --segmentation-dir DIR")
    if args.lesions:
        raise ValueError("--lesions is only available for the built-in head")
    if len(set(args.voxel_size)) > 1:
        raise ValueError("the challenge model is simulated on isotropic voxels (whole multiples of its 0.64 mm "
                         f"labels): give one --voxel-size value, got {args.voxel_size}")
    labels, brain, vs_f, chi = load_challenge_segmentation(args.segmentation_dir)
    factor = max(1, int(round(float(np.max(args.voxel_size)) / float(vs_f.max()))))
    # the fine grid keeps oversample 2 relative to the output: subsample the labels if needed
    step = max(1, factor // 2)
    oversample = factor // step
    sub = (slice(None, None, step),) * 3
    b0 = args.b0_direction if args.b0_direction is not None else b0_direction_from_tilt(args.b0_tilt)
    return simulate_segmentation(
        labels[sub], brain[sub], vs_f * step, chi_overrides=chi, oversample=oversample,
        echo_times=args.echo_times, field_strength=args.field_strength, protocol=args.protocol,
        snr=None if args.snr == 0 else args.snr, b0_direction=b0, rng=args.seed,
        echo_spacing=args.echo_spacing, segments=args.segments, progress=lambda m: log.info("  %s", m))


def summary(head, out_dir, seconds) -> str:
    """A short human-readable summary of a simulated head."""
    import numpy as np

    m = head.brain_mask
    if m.sum() == 0:
        raise ValueError("the simulated brain mask is empty")
    kinds = {}
    for rec in head.lesions:
        kinds[rec["kind"]] = kinds.get(rec["kind"], 0) + 1
    lines = [
        f"simulated head -> {out_dir}",
        f"  grid {head.magnitude.shape[:3]} at {tuple(round(float(v), 3) for v in head.voxel_size)} mm, "
        f"{head.magnitude.shape[3]} echoes {[round(float(t) * 1e3, 2) for t in head.echo_times]} ms, "
        f"{head.field_strength:g} T, {head.params['protocol'].upper()}",
        f"  B0 direction (voxel axes) {np.round(head.b0_direction, 4).tolist()}",
        f"  brain {int(m.sum())} voxels; chi in brain {float(head.chi[m].min()):+.3f} .. "
        f"{float(head.chi[m].max()):+.3f} ppm; total field in brain {float(head.total_field[m].min()):+.2f} .. "
        f"{float(head.total_field[m].max()):+.2f} ppm; local field SD {float(head.local_field[m].std()) * 1e3:.1f} ppb",
        f"  noise sigma {head.noise_sigma:.4g}; lesions: {kinds or 'none'}",
        f"  done in {seconds:.1f} s",
    ]
    return "\n".join(lines)
