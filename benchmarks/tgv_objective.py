"""Benchmark: is single-step TGV-QSM limited by its iteration or by its model?

On a simulated head's noise-free total field (given to TGV-QSM as unwrapped phase at TE 20 ms,
``laplacian="plain"``, the ``julia`` parameters, the true brain mask), the primal-dual iteration
runs from several starts, and for each result this prints the NRMSE against the true chi (over
the eroded mask TGV solves on, both demeaned) and the value of the model's objective::

    F(chi, w) = 1/2 ||psi*||^2 + alpha1 ||m0 grad chi - m w||_1 + alpha0 ||m0 sym_grad w||_1,
    psi* = the minimum-norm psi on m with m0 (box chi - lap psi) = m0 lap phi

(Langkammer et al. 2015, in the de-dimensionalised units of :mod:`chimap.tgv.solver`; ``psi``
is eliminated exactly, by LSQR on the masked Laplacian, so F depends only on the iterate's
``chi`` and ``w``). F is convex: a lower F is closer to the model's minimiser, and on the segment
between two results F is at most the larger of their values. Starts:

- ``zero``: the reference codes' start;
- ``coarse``: chimap's coarse-grid start (``coarse_levels``, as in ``chimap run --preset tgv``);
- ``classical``: the chi of LBV + weak-harmonic TV (alpha="auto") on the same total field;
- ``truth``: the true chi (an oracle, to probe the model, not a method).

The last lines evaluate F and NRMSE halfway between the lowest-F result and the truth-started
one, and between it and the classical-started one (by convexity F there is at most the mean of
the two; much lower means both results sit on opposite walls of a valley the iteration has not
reached), and with ``--continue-halfway N`` iterate N times from each halfway point.

    .venv/bin/python benchmarks/tgv_objective.py [--voxel-size 2] [--iterations 2000 8000]
        [--starts zero coarse classical truth] [--continue-halfway N]

About 3 min at 2 mm with the defaults (2 cores); 1 mm takes about 15 min.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from chimap.background import lbv
from chimap.invert import tv_admm_wh
from chimap.metrics import nrmse as _nrmse
from chimap.sim.head import simulate_head
from chimap.tgv import operators, solver
from chimap.units import ppm_to_rad

ECHO_TIME = 0.02
STARTS = ("zero", "coarse", "classical", "truth")


class Capture:
    """Wraps the solver's primal-dual loop to keep the problem and final state of its last call
    (the benchmark's instrument; the library is unchanged by it)."""

    def __init__(self):
        self.last = None
        self._loop = solver._solve

    def __enter__(self):
        def capturing(lapphi, m, m0, inv_h, axial, mixed, sigma, tau, alpha1, alpha0, *rest):
            state = {}
            chi, info = self._loop(lapphi, m, m0, inv_h, axial, mixed, sigma, tau, alpha1, alpha0, *rest,
                                   state=state)
            self.last = dict(lapphi=lapphi.astype(np.float64), m=m > 0, m0=m0 > 0, h=1.0 / np.asarray(inv_h),
                             alpha1=float(alpha1), alpha0=float(alpha0), chi=chi, **state)
            return chi, info

        solver._solve = capturing
        return self

    def __exit__(self, *exc):
        solver._solve = self._loop


def masked_laplacian(m, m0, h):
    """The 7-point Laplacian as a sparse matrix from the voxels of ``m`` to those of ``m0``."""
    index = -np.ones(m.shape, dtype=np.int64)
    cols = np.flatnonzero(m)
    index.flat[cols] = np.arange(cols.size)
    rows = np.flatnonzero(m0)
    coords = np.array(np.unravel_index(rows, m.shape))
    r, c, v = [], [], []
    for a in range(3):
        for step in (1, -1):
            nb = coords.copy()
            nb[a] += step
            j = index[tuple(nb)]
            ok = j >= 0
            r.append(np.flatnonzero(ok))
            c.append(j[ok])
            v.append(np.full(ok.sum(), 1.0 / h[a] ** 2))
    r.append(np.arange(rows.size))
    c.append(index.flat[rows])
    v.append(np.full(rows.size, -2.0 * np.sum(1.0 / h ** 2)))
    return sp.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(rows.size, cols.size))


def objective(state, b0_direction, laplacian_matrix):
    """``(F, data term, first-order term, second-order term)`` of a captured result."""
    h, m, m0, chi, w = state["h"], state["m"], state["m0"], state["chi"], state["w"]
    residual = (operators.dipole_laplacian(chi, h, b0_direction) - state["lapphi"])[m0]
    psi = lsqr(laplacian_matrix, residual, atol=1e-10, btol=1e-10, iter_lim=50000)[0]
    data = 0.5 * float(np.sum(psi ** 2))
    first = state["alpha1"] * float(np.sum(np.sqrt(np.sum((m0 * operators.grad(chi, h) - m * w) ** 2, axis=0))))
    frobenius = np.array([1, 1, 1, 2, 2, 2], dtype=np.float64).reshape(6, 1, 1, 1)
    second = state["alpha0"] * float(np.sum(np.sqrt(np.sum(frobenius * (m0 * operators.sym_grad(w, h)) ** 2,
                                                            axis=0))))
    return data + first + second, data, first, second


def nrmse(estimate, truth, mask):
    """NRMSE in percent, both demeaned in the mask."""
    return _nrmse(estimate, truth, mask, demean=True, percent=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voxel-size", type=float, default=2.0, help="mm (isotropic)")
    p.add_argument("--iterations", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    p.add_argument("--continue-halfway", type=int, default=0, metavar="N",
                   help="also iterate N times from each halfway point")
    args = p.parse_args()

    head = simulate_head(voxel_size=args.voxel_size, snr=None, rng=11)
    vs, b0 = np.asarray(head.voxel_size, dtype=float), np.asarray(head.b0_direction, dtype=float)
    brain, truth = head.brain_mask, head.chi
    phase = ppm_to_rad(head.total_field, echo_time=ECHO_TIME, field_strength=head.field_strength)
    levels = 2 if args.voxel_size < 1.5 else 1
    starts = {}
    for name in args.starts:
        if name == "classical":
            local, valid = lbv(head.total_field, brain, vs)[:2]
            starts[name] = tv_admm_wh(np.where(valid, local, 0).astype(np.float32), valid, vs, b0_direction=b0,
                                      alpha="auto")
            print(f"classical start (LBV + weak-harmonic TV): NRMSE {nrmse(starts[name], truth, valid & brain):.1f} % "
                  "over its own mask")
        else:
            starts[name] = {"zero": None, "coarse": None, "truth": np.where(brain, truth, 0)}[name]
    print(f"{args.voxel_size:g} mm head, noise-free total field, TGV-QSM preset julia "
          f"(coarse start: {levels} level(s))")
    matrix = None
    results = []

    def solve(label, chi0, n_iter, coarse_levels=0):
        nonlocal matrix
        t0 = time.perf_counter()
        with Capture() as cap:
            chi, info = solver.tgv_qsm(phase, brain, vs, echo_time=ECHO_TIME, field_strength=head.field_strength,
                                       b0_direction=b0, laplacian="plain", iterations=n_iter,
                                       coarse_levels=coarse_levels, return_info=True, _chi0=chi0)
        seconds = time.perf_counter() - t0
        if matrix is None:
            matrix = masked_laplacian(cap.last["m"], cap.last["m0"], cap.last["h"])
        f, data, first, second = objective(cap.last, b0, matrix)
        score = nrmse(chi, truth, info["mask"])
        print(f"start {label:9} {n_iter:6d} iterations  NRMSE {score:5.1f} %  F {f:9.4g}  (data {data:.4g}, "
              f"first order {first:.4g}, second order {second:.4g})  {seconds:5.0f} s", flush=True)
        return dict(f=f, label=label, iterations=n_iter, nrmse=score, state=cap.last, chi=chi, mask=info["mask"])

    for n_iter in args.iterations:
        for name, chi0 in starts.items():
            results.append(solve(name, chi0, n_iter, levels if name == "coarse" else 0))
    best = min(results, key=lambda r: r["f"])
    for partner in ("truth", "classical"):
        other = [r for r in results if r["label"] == partner and r["iterations"] == max(args.iterations)]
        if not other or other[0] is best:
            continue
        other = other[0]
        mid = {key: best["state"][key] for key in ("lapphi", "m", "m0", "h", "alpha1", "alpha0")}
        mid["chi"] = 0.5 * (best["state"]["chi"] + other["state"]["chi"])
        mid["w"] = 0.5 * (best["state"]["w"] + other["state"]["w"])
        halfway = 0.5 * (best["chi"] + other["chi"])
        print(f"halfway between the lowest F (start {best['label']}, {best['iterations']} iterations: F "
              f"{best['f']:.4g}, NRMSE {best['nrmse']:.1f} %) and start {partner} ({other['iterations']} iterations: "
              f"F {other['f']:.4g}, NRMSE {other['nrmse']:.1f} %): F {objective(mid, b0, matrix)[0]:.4g}, NRMSE "
              f"{nrmse(halfway, truth, best['mask']):.1f} %", flush=True)
        if args.continue_halfway:
            solve(f"halfway {best['label']}+{partner}", halfway, args.continue_halfway)

if __name__ == "__main__":
    main()
