"""Benchmark: speed, memory and accuracy of single-step TGV-QSM (chimap.tgv).

Speed: iterations of the fused primal-dual loop on an N^3 grid (default 160) and on a 1 mm whole
head's grid (200 x 230 x 190), each with an ellipsoidal mask (semi-axes 0.42 of the grid), in
seconds per 1000 iterations (``--device cuda``: the torch implementation on a GPU);
against the memory-bandwidth bound of the loop (bytes it must move per voxel and iteration,
times the voxels the loops visit, the mask's row spans, over the bandwidth of a large array
copy measured in the same run). Peak
memory (max RSS) of the process (on a GPU the host's). Accuracy (``--head VOXEL_MM``): on a
simulated 4-echo head (SNR 100), ``chimap.pipeline.run`` with the default preset, the ``tgv``
preset (TGV-QSM on the combined field) and the ``tgv`` preset with ``input = "phase"`` (from
the wrapped phase), each with its own mask; NRMSE against the true chi over the voxels all
three masks share (both demeaned), regression slope, largest deep-grey ROI mean error.

    .venv/bin/python benchmarks/tgv.py [--size 160] [--iterations 200] [--device cuda]
        [--head 1] [--head-iterations N] [--original DIR]

``--original DIR``: also time the original Cython TGV-QSM (QSMxT/TGV_QSM, built by you with
``python setup.py build_ext --inplace`` in DIR; nothing of it is part of chimap) on the same
grids, and score both on a 2 mm head's noise-free local-field phase with the same parameters.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

# bytes per voxel and iteration (float32; masks as float32): the dual pass reads chi_bar,
# psi_bar, w_bar (3), eta, p (3), q (6), the phase Laplacian and both masks and writes eta, p,
# q; the primal pass reads eta, p, q, chi, psi, w and both masks and writes chi, psi, w and
# their extrapolations. Neighbour reads are assumed to hit the cache.
BYTES_PER_VOXEL = 4 * ((1 + 1 + 3 + 1 + 3 + 6 + 1 + 2) + (1 + 3 + 6)
                       + (1 + 3 + 6 + 1 + 1 + 3 + 2) + (1 + 1 + 3) * 2)


def copy_bandwidth(n_bytes=1 << 30, repeats=5):
    """GB/s of ``np.copyto`` on two arrays of ``n_bytes`` (read + write counted)."""
    a = np.ones(n_bytes // 4, dtype=np.float32)
    b = np.empty_like(a)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * n_bytes / best / 1e9


def brain_like_mask(shape):
    """Ellipsoid with semi-axes 0.42 of ``shape``: about a brain in its field of view."""
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, np.float32) - 1) / 2
    return sum(((grid[a] - centre[a]) / (0.42 * shape[a])) ** 2 for a in range(3)) <= 1.0


def time_iterations(shape, iterations, device=None):
    """Seconds per iteration of the loop on :func:`brain_like_mask`, and the voxels its passes
    visit per iteration."""
    from scipy import ndimage

    from chimap.tgv import tgv_qsm
    from chimap.tgv.solver import row_spans

    vs = (1.0, 1.0, 1.0)
    mask = brain_like_mask(shape)
    rng = np.random.default_rng(0)
    phase = np.angle(np.exp(1j * rng.standard_normal(shape).astype(np.float32) * 0.5))
    kw = dict(echo_time=0.02, field_strength=3.0, erosions=0, device=device)
    tgv_qsm(phase, mask, vs, iterations=2, **kw)  # compile
    t = time.perf_counter()
    tgv_qsm(phase, mask, vs, iterations=1, **kw)
    setup = time.perf_counter() - t
    t = time.perf_counter()
    tgv_qsm(phase, mask, vs, iterations=iterations, check_every=iterations, **kw)
    elapsed = time.perf_counter() - t - setup
    # voxels the loops visit: the row spans of the mask (dual pass) and of its dilation (primal)
    visited = sum(int(np.sum(np.maximum(sp[..., 1] - sp[..., 0], 0)))
                  for sp in (row_spans(mask), row_spans(ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool)))))
    return elapsed / iterations, visited / 2


def load_original(directory):
    """``qsm_tgv`` and ``get_laplace_phase3``/``erode_mask`` of the original TGV-QSM, built by
    the user in ``directory`` (a checkout of github.com/QSMxT/TGV_QSM after ``python setup.py
    build_ext --inplace``; never part of chimap)."""
    import builtins
    import sys

    builtins.xrange = range  # the 2016 code is Python 2 in places
    sys.path[:0] = [str(directory), str(directory) + "/TGV_QSM"]
    from qsm_tgv_cython import qsm_tgv
    from TGV_QSM.qsm_tgv_main import erode_mask, get_laplace_phase3

    return qsm_tgv, get_laplace_phase3, erode_mask


def time_original(directory, shape, iterations):
    """Seconds per iteration of the original Cython TGV-QSM on the same grid and mask as
    :func:`time_iterations`."""
    qsm_tgv, _, _ = load_original(directory)
    mask = brain_like_mask(shape).astype(np.float32)
    rng = np.random.default_rng(0)
    lap = rng.standard_normal(shape).astype(np.float32) * 0.1
    t = time.perf_counter()
    qsm_tgv(lap, mask, np.ones(3), alpha=(0.003, 0.001), iterations=iterations)
    return (time.perf_counter() - t) / iterations


def original_accuracy(directory, voxel_size, iterations):
    """NRMSE of the original code and of ``tgv_qsm(preset="qsmxt")``, the same parameters (its
    2023 defaults: alpha (0.003, 0.001) in its order, 5 erosions, wrapped-difference
    Laplacian, de-dimensionalised), on one simulated head's noise-free local-field phase
    (TE 20 ms, so that only the solvers differ)."""
    from scipy import ndimage

    from chimap.sim.head import simulate_head
    from chimap.tgv import tgv_qsm
    from chimap.units import ppm_to_rad

    qsm_tgv, laplace3, erode = load_original(directory)
    h = simulate_head(voxel_size=voxel_size, snr=None, rng=0)
    te, b0 = 0.02, h.field_strength
    phase = np.angle(np.exp(1j * ppm_to_rad(h.local_field, echo_time=te, field_strength=b0)))
    m = h.brain_mask.copy()
    for _ in range(5):
        m = erode(m)
    t = time.perf_counter()
    chi_o = qsm_tgv(laplace3(phase, h.voxel_size), m, h.voxel_size, alpha=(0.003, 0.001),
                    iterations=iterations) / ppm_to_rad(1.0, echo_time=te, field_strength=b0)
    t_o = time.perf_counter() - t
    t = time.perf_counter()
    chi_c, info = tgv_qsm(phase, h.brain_mask, h.voxel_size, echo_time=te, field_strength=b0, preset="qsmxt",
                          iterations=iterations, return_info=True)
    t_c = time.perf_counter() - t
    both = ndimage.binary_erosion((m > 0) & info["mask"])
    for name, est, sec in (("original Cython", chi_o, t_o), ("chimap", chi_c, t_c)):
        x = est[both] - est[both].mean()
        r = h.chi[both] - h.chi[both].mean()
        print(f"  {name:16} NRMSE {100 * np.linalg.norm(x - r) / np.linalg.norm(r):5.1f} %  slope "
              f"{float(x @ r / (r @ r)):4.2f}  {sec:6.1f} s for {iterations} iterations")


def head_accuracy(voxel_size, iterations):
    """The classical default pipeline and TGV-QSM (from the combined field and from the wrapped
    phase), each through ``chimap.pipeline.run`` with its own mask, on one simulated head."""
    from chimap import pipeline
    from chimap.config import resolve
    from chimap.sim.head import simulate_head
    from chimap.sim.tissues import LABELS

    h = simulate_head(voxel_size=voxel_size, snr=100, rng=0)
    tgv_extra = {} if iterations is None else {"iterations": iterations}
    runs = {}
    for name, preset, invert in (("classical default", "default", {}),
                                 ("TGV-QSM, combined field", "tgv", tgv_extra),
                                 ("TGV-QSM, wrapped phase", "tgv", {"input": "phase", **tgv_extra})):
        t = time.perf_counter()
        res = pipeline.run(h.magnitude, h.phase, voxel_size=h.voxel_size, echo_times=h.echo_times,
                           field_strength=h.field_strength, b0_direction=h.b0_direction,
                           config=resolve(preset, overrides={"invert": invert} if invert else None))
        runs[name] = (res, time.perf_counter() - t)
    m = np.logical_and.reduce([res.mask for res, _ in runs.values()])

    def scores(est):
        x = est[m] - est[m].mean()
        r = h.chi[m] - h.chi[m].mean()
        nrmse = 100 * np.linalg.norm(x - r) / np.linalg.norm(r)
        xs, rs = est - est[m].mean(), h.chi - h.chi[m].mean()
        rois = [abs(1e3 * (xs[m & (h.labels == LABELS[n])].mean() - rs[m & (h.labels == LABELS[n])].mean()))
                for n in ("caudate", "putamen", "globus_pallidus", "thalamus", "red_nucleus",
                          "substantia_nigra", "dentate_nucleus") if (m & (h.labels == LABELS[n])).any()]
        return nrmse, float(x @ r / (r @ r)), max(rois)

    print(f"  scored over the voxels all masks share ({int(m.sum())})")
    for name, (res, sec) in runs.items():
        nrmse, slope, roi = scores(res.chi)
        extra = ""
        if "iterations" in res.inversion:
            extra = f"  ({res.inversion['iterations'][0]} iterations)"
        print(f"  {name:25} NRMSE {nrmse:5.1f} %  slope {slope:4.2f}  max |deep-grey ROI error| {roi:5.1f} ppb  "
              f"{sec:6.1f} s{extra}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--iterations", type=int, default=200, help="iterations timed per grid")
    p.add_argument("--device", default=None, help="torch device for the timing (e.g. cuda; default numba)")
    p.add_argument("--head", type=float, default=None, metavar="MM", help="also score a simulated head")
    p.add_argument("--head-iterations", type=int, default=None, help="TGV iterations on the head (default auto)")
    p.add_argument("--original", default=None, metavar="DIR",
                   help="a locally built original TGV-QSM (QSMxT/TGV_QSM, build_ext --inplace) to compare")
    args = p.parse_args()
    import numba

    bw = copy_bandwidth()
    print(f"numba threads {numba.get_num_threads()}; array copy {bw:.1f} GB/s; the loop moves "
          f"{BYTES_PER_VOXEL} bytes per voxel and iteration; device {args.device or 'numba (CPU)'}")
    for shape in ((args.size,) * 3, (200, 230, 190)):
        sec, voxels = time_iterations(shape, args.iterations, args.device)
        bound = BYTES_PER_VOXEL * voxels / (bw * 1e9)
        print(f"  grid {shape}: {1000 * sec:6.1f} s per 1000 iterations; bandwidth bound "
              f"{1000 * bound:5.1f} s ({bound / sec:.0%} of it reached)")
        if args.original:
            sec_o = time_original(args.original, shape, max(10, args.iterations // 4))
            print(f"    original Cython TGV-QSM: {1000 * sec_o:6.1f} s per 1000 iterations "
                  f"({sec_o / sec:.1f} x chimap's time)")
    print(f"  peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GB")
    if args.original:
        print("original against chimap, 2 mm head, noise-free local field, TE 20 ms:")
        original_accuracy(args.original, 2.0, 1000)
    if args.head:
        print(f"head at {args.head} mm:")
        head_accuracy(args.head, args.head_iterations)


if __name__ == "__main__":
    main()
