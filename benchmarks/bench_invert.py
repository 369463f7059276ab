"""Benchmark: dipole inversion accuracy and time on the simulated head.

For each voxel size the head is simulated once without noise (``simulate_head(snr=None)``,
fine grid twice as fine: no inverse crime); the inversions get the true local field with
optional white Gaussian noise added (ppb), inside the brain mask eroded by 2 voxels. Printed per
method: NRMSE (%, demeaned, in the mask), detrended NRMSE (%), deep-grey slope (challenge 2.0),
mean absolute error of the deep-grey ROI means (ppb, both maps referenced to the whole-brain
mean), iterations and wall time.

Run by hand: ``.venv/bin/python benchmarks/bench_invert.py [--voxel-sizes 1.5 1.0]
[--noise-ppb 0 1 3]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy import ndimage

from chimap.invert import DEFAULT_ALPHA, tkd, tv_admm
from chimap.metrics import deep_grey_slope, nrmse, nrmse_detrended
from chimap.reference import reference_chi
from chimap.sim.head import simulate_head
from chimap.sim.tissues import LABELS

DEEP_GREY = ("caudate", "putamen", "globus_pallidus", "thalamus", "red_nucleus",
             "substantia_nigra", "dentate_nucleus")


def roi_error_ppb(est, truth, labels, mask):
    """Mean |ROI mean error| over the deep grey nuclei (ppb), both whole-brain referenced."""
    e, _ = reference_chi(est, mask)
    t, _ = reference_chi(truth, mask)
    errs = []
    for name in DEEP_GREY:
        sel = (labels == LABELS[name]) & mask
        if sel.any():
            errs.append(float(e[sel].mean() - t[sel].mean()))
    return 1000.0 * float(np.mean(np.abs(errs))), errs


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voxel-sizes", type=float, nargs="+", default=[1.5, 1.0])
    p.add_argument("--noise-ppb", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    p.add_argument("--closed-form", action="store_true", help="also run the closed-form TV solver")
    args = p.parse_args()
    for vs in args.voxel_sizes:
        t0 = time.perf_counter()
        h = simulate_head(voxel_size=vs, snr=None, rng=0)
        t_sim = time.perf_counter() - t0
        mask = ndimage.binary_erosion(h.brain_mask, iterations=2)
        print(f"\n{vs} mm head {h.chi.shape}, {int(mask.sum())} voxels in the eroded mask "
              f"(simulated in {t_sim:.0f} s)")
        print(f"{'method':24} {'noise ppb':>9} {'NRMSE %':>8} {'dNRMSE %':>8} {'DGM slope':>9} "
              f"{'DGM err ppb':>11} {'iter':>5} {'time s':>7}")
        rng = np.random.default_rng(1)
        for noise in args.noise_ppb:
            field = h.local_field
            if noise:
                field = field + rng.normal(0, noise * 1e-3, field.shape).astype(np.float32)
            kw = {"b0_direction": h.b0_direction}
            runs = [("TKD 0.2", tkd, kw),
                    (f"TV-ADMM a={args.alpha:g}", tv_admm,
                     {**kw, "alpha": args.alpha, "return_info": True})]
            if args.closed_form:
                runs.append((f"TV closed-form a={args.alpha:g}", tv_admm,
                             {**kw, "alpha": args.alpha, "solver": "closed_form",
                              "return_info": True}))
            for name, func, fkw in runs:
                t1 = time.perf_counter()
                out = func(field, mask, h.voxel_size, **fkw)
                dt = time.perf_counter() - t1
                chi, info = out if isinstance(out, tuple) else (out, None)
                err, _ = roi_error_ppb(chi, h.chi, h.labels, mask)
                it = info["iterations"] if info else "-"
                e = nrmse(chi, h.chi, mask, demean=True, percent=True)
                de = nrmse_detrended(chi, h.chi, mask, percent=True)
                slope = deep_grey_slope(chi, h.chi, h.labels, mask)
                print(f"{name:24} {noise:9.1f} {e:8.1f} {de:8.1f} {slope:9.3f} {err:11.1f} "
                      f"{it!s:>5} {dt:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
