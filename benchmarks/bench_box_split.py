"""Benchmark: pruned FFTs on the mask's box, and the TV inversions' data splits computed there.

The TV inversions (TV-ADMM, nonlinear TV, weak-harmonic TV) compute their data splits on the
mask's bounding box (:class:`chimap.invert._common.DataSplitRegion`): ``D chi`` by a pruned
inverse transform and the split's spectrum by a pruned forward transform. This script times,
on the simulated 1 mm head (true local field, brain mask eroded by 2 voxels, white noise of
0.5 ppb, uniform weight):

1. the transforms alone on the padded grid of that mask: ``rfftn`` / ``irfftn`` against
   ``box_rfft`` / ``box_irfft`` (median of 7 calls each);
2. each TV inversion with ``alpha="auto"`` twice in one process: with the splits on the box
   (chimap's code) and on the whole padded grid (the textbook ADMM, forced by giving the split
   region a relaxation other than 1), with the wall time and the largest difference of the
   two results relative to the largest |chi|.

NDI and MEDI use the same pruned transforms where their data weight is zero (outside the box);
their times are in ``docs/accuracy.md``.

Run by hand: ``.venv/bin/python benchmarks/bench_box_split.py [--voxel-size 1.0] [--methods tv wh nltv]``
(about 6 minutes at 1 mm on 2 cores; ``--methods`` with no name times the transforms only).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _median_ms(func, repeat=7):
    func()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--methods", nargs="*", default=["tv", "wh", "nltv"], choices=["tv", "wh", "nltv"])
    args = parser.parse_args(argv)

    import scipy.fft as sfft
    from scipy import ndimage

    from chimap.allocator import retain_freed_memory
    from chimap.invert import _common, nltv, tv_admm, tv_admm_wh
    from chimap.invert import tv as tv_module
    from chimap.invert import tv_wh as tv_wh_module
    from chimap.invert._common import Domain, box_irfft, box_rfft
    from chimap.kernels import fft_workers
    from chimap.sim.head import simulate_head

    retain_freed_memory()  # as the chimap command does
    h = simulate_head(voxel_size=args.voxel_size, snr=None, rng=0)
    mask = ndimage.binary_erosion(h.brain_mask, iterations=2)
    rng = np.random.default_rng(0)
    field = np.where(mask, h.local_field + rng.normal(0, 0.5e-3, mask.shape), 0).astype(np.float32)
    weight = mask.astype(np.float32)
    vs, b0 = np.asarray(h.voxel_size, float), np.asarray(h.b0_direction, float)

    dom = Domain.from_mask(mask, 1.5, np.float32)
    shape, box = dom.padded, dom.box_shape
    print(f"grid {mask.shape}, mask box {box}, padded grid {shape}, {fft_workers()} FFT workers")
    x_box = rng.normal(size=box).astype(np.float32)
    x_pad = dom.pad(np.zeros(mask.shape, np.float32))
    x_pad[: box[0], : box[1], : box[2]] = x_box
    spec = sfft.rfftn(x_pad, workers=fft_workers())
    fwd, inv = box_rfft(shape, box), box_irfft(shape, box, np.float32)
    print("| transform | full grid (ms) | box (ms) |")
    print("|---|--:|--:|")
    print(f"| forward | {_median_ms(lambda: sfft.rfftn(x_pad, workers=fft_workers())):.1f} "
          f"| {_median_ms(lambda: fwd(x_box)):.1f} |")
    print(f"| inverse | {_median_ms(lambda: sfft.irfftn(spec, s=shape, workers=fft_workers())):.1f} "
          f"| {_median_ms(lambda: inv(spec)):.1f} |")

    funcs = {"tv": ("TV-ADMM", tv_admm, tv_module), "nltv": ("nonlinear TV", nltv, tv_module),
             "wh": ("weak-harmonic TV", tv_admm_wh, tv_wh_module)}
    if args.methods:
        print()
        print("| inversion (alpha auto) | splits on the box (s) | whole grid (s) | alpha | max difference |")
        print("|---|--:|--:|--:|--:|")
    for key in args.methods:
        title, func, module = funcs[key]
        small = (slice(60, 90),) * 3  # compile the numba kernels outside the timings
        func(field[small], mask[small], vs, b0_direction=b0, weight=weight[small], alpha=3e-4, max_iter=2)
        results = {}
        for name in ("box", "whole"):
            original = module.DataSplitRegion
            if name == "whole":
                module.DataSplitRegion = lambda d, relax: _common.DataSplitRegion(d, 0.5)
            try:
                t0 = time.perf_counter()
                chi, info = func(field, mask, vs, b0_direction=b0, weight=weight, alpha="auto", return_info=True)
                results[name] = (chi, time.perf_counter() - t0, info["alpha"])
            finally:
                module.DataSplitRegion = original
        diff = np.abs(results["box"][0] - results["whole"][0]).max() / np.abs(results["whole"][0]).max()
        print(f"| {title} | {results['box'][1]:.1f} | {results['whole'][1]:.1f} | {results['box'][2]:.3g} "
              f"| {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
