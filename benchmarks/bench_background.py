"""Benchmark: background field removal on a whole simulated head (speed, memory, accuracy).

Run by hand::

    .venv/bin/python benchmarks/bench_background.py [--voxel-size 1] [--cache /tmp/head1.npz]
                                                    [--methods sharp vsharp ...] [--floor]

The head (``simulate_head(voxel_size, snr=None, rng=0)``, about 60 s at 1 mm) is simulated once
and its fields are saved to ``--cache`` (reused when the file exists). Every method then runs
in a fresh subprocess, so the reported extra peak memory (peak resident set, ``VmHWM``, above
the level after loading the inputs) is its own. Accuracy columns, inside each method's valid mask:

* ``rel RMSE``: ``||(x - mean x) - (t - mean t)|| / ||t - mean t||``, x the estimate and t the
  true local field;
* ``deep``: the same in the brain eroded by 12 mm (a region common to all methods);
* with ``--floor``: ``floor``, the error of the method applied to the true local field alone
  (no background: what the method itself removes from the local field), and ``bg resid``,
  the RMS of the method's output on the background field alone, over the RMS of the true
  local field (how much background leaks through).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

METHODS = ["sharp", "vsharp", "resharp", "ismv", "pdf", "lbv"]

CHILD = r"""
import json, sys, time
import numpy as np
from scipy import ndimage
import chimap.background as B
path, name, floor = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
d = np.load(path)
total, local, mask, vs, b0 = d["total"], d["local"], d["mask"], d["voxel_size"], d["b0_direction"]
kw = {"b0_direction": b0} if name == "pdf" else {}
fn = getattr(B, name)
def status(key):  # kB; VmHWM is the peak of this process image (ru_maxrss is not reset by exec)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
base = status("VmRSS")
try:  # reset the peak to the current level (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
t0 = time.perf_counter()
est, valid = fn(total, mask, vs, **kw)
seconds = time.perf_counter() - t0
peak = status("VmHWM")
def rel(x, t, region):
    x = x[region] - x[region].mean()
    t = t[region] - t[region].mean()
    return float(np.linalg.norm(x - t) / np.linalg.norm(t))
deep = valid & (ndimage.distance_transform_edt(mask, sampling=vs) > 12.0)
out = {"seconds": seconds, "extra_gb": (peak - base) / 1024**2,
       "valid": float(valid.sum() / mask.sum()),
       "err": rel(est, local, valid), "deep": rel(est, local, deep), "dtype": str(est.dtype),
       "subset": bool(np.all(mask[valid]))}
if floor:
    est_l, _ = fn(local, mask, vs, **kw)
    est_b, _ = fn(total - local, mask, vs, **kw)
    b = est_b[valid] - est_b[valid].mean()
    out["floor"] = rel(est_l, local, valid)
    out["bg_resid"] = float(np.sqrt((b * b).mean()) / local[valid].std())
print(json.dumps(out))
"""


def simulate(voxel_size, path):
    from chimap.sim.head import simulate_head

    t0 = time.perf_counter()
    head = simulate_head(voxel_size=voxel_size, snr=None, rng=0)
    seconds = time.perf_counter() - t0
    np.savez(path, total=head.total_field, local=head.local_field, mask=head.brain_mask,
             voxel_size=head.voxel_size, b0_direction=head.b0_direction)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--cache", help="npz file with the simulated fields (written if absent)")
    parser.add_argument("--floor", action="store_true",
                        help="also run each method on the true local field and on the background")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.cache or os.path.join(tmp, "head.npz")
        if os.path.exists(path):
            print(f"using simulated fields from {path}")
        else:
            secs = simulate(args.voxel_size, path)
            print(f"simulated the head at {args.voxel_size} mm in {secs:.1f} s")
        with np.load(path) as d:
            shape, n_mask = d["mask"].shape, int(d["mask"].sum())
            vs = d["voxel_size"].tolist()
        print(f"grid {shape}, voxel size {vs} mm, {n_mask} brain voxels, "
              f"{os.cpu_count()} CPUs\n")
        head = (f"{'method':8} {'time s':>7} {'+mem GB':>8} {'valid':>6} {'rel RMSE':>9} "
                f"{'deep':>6}")
        if args.floor:
            head += f" {'floor':>6} {'bg resid':>9}"
        print(head)
        for name in args.methods:
            res = subprocess.run([sys.executable, "-c", CHILD, path, name,
                                  "1" if args.floor else "0"], check=False,
                                 capture_output=True, text=True)
            if res.returncode:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            r = json.loads(res.stdout.strip().splitlines()[-1])
            line = (f"{name:8} {r['seconds']:7.2f} {r['extra_gb']:8.2f} {r['valid']:6.2f} "
                    f"{r['err']:9.3f} {r['deep']:6.3f}")
            if args.floor:
                line += f" {r['floor']:6.3f} {r['bg_resid']:9.3f}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
