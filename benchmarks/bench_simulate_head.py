"""Benchmark: simulate a whole head (4 echoes) and print wall time and peak memory per protocol.

Run by hand (``make bench`` or ``.venv/bin/python benchmarks/bench_simulate_head.py [--voxel-size 1]``).
Each configuration runs in a fresh subprocess so its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, tempfile
from chimap.sim.head import simulate_head
from chimap.sim.bids import write_simulated_head
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
head = simulate_head(**cfg)
t_sim = time.perf_counter() - t0
with tempfile.TemporaryDirectory() as d:
    t1 = time.perf_counter()
    write_simulated_head(head, d)
    t_write = time.perf_counter() - t1
peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({"shape": list(head.magnitude.shape), "fine": head.params["fine_shape"],
                  "simulate_s": t_sim, "write_s": t_write, "peak_gb": peak_gb, "stages": head.timings}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--protocols", nargs="+", default=["gre", "epi"])
    parser.add_argument("--lesions", type=int, default=10)
    args = parser.parse_args()
    print(f"{'protocol':8} {'output shape':>18} {'fine grid':>16} {'simulate s':>10} {'write s':>8} {'peak GB':>8}")
    for protocol in args.protocols:
        cfg = dict(voxel_size=args.voxel_size, protocol=protocol, lesions=args.lesions, rng=0)
        res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
        if res.returncode:
            print(res.stderr, file=sys.stderr)
            return res.returncode
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{protocol:8} {str(tuple(r['shape'])):>18} {str(tuple(r['fine'])):>16} "
              f"{r['simulate_s']:10.1f} {r['write_s']:8.1f} {r['peak_gb']:8.2f}")
        print("         stages: " + ", ".join(f"{k}={v:.1f}" for k, v in r["stages"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
