"""benchmarks/harmonic_components.py: its evaluation recovers a known bowl and known means."""

import importlib.util
from pathlib import Path

import numpy as np

from chimap.kernels import sphere_mask

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "harmonic_components.py"
_spec = importlib.util.spec_from_file_location("bench_harmonic", _PATH)
hc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hc)


def test_evaluate_recovers_bowl_and_means():
    shape, vs = (40, 44, 24), np.array([1.0, 1.0, 2.0])
    mask = sphere_mask(shape, vs, radius=18.0)
    inner = sphere_mask(shape, vs, radius=10.0)
    labels = np.where(inner, hc.WHITE_MATTER, hc.CORTICAL_GREY) * mask
    labels[sphere_mask(shape, vs, radius=3.0)] = 5  # a "putamen" at the centre
    truth = np.where(inner, -0.02, 0.01) * mask
    centre = np.argwhere(mask).mean(axis=0)
    grid = np.indices(shape, dtype=float)
    r2 = sum(((grid[i] - centre[i]) * vs[i]) ** 2 for i in range(3))
    bowl = -0.004 * r2 / hc.BOWL_RADIUS_MM ** 2  # -4 ppb at 70 mm

    exact = hc.evaluate(truth + 0.3, truth, mask, labels, vs)  # an offset is referenced away
    assert exact["nrmse"] < 1e-9 and abs(exact["bowl_ppb"]) < 1e-9
    assert all(abs(v) < 1e-9 for v in exact["roi_ppb"].values())

    res = hc.evaluate(truth + bowl, truth, mask, labels, vs)
    assert abs(res["bowl_ppb"] + 4.0) < 1e-6
    (true_white, est_white), (true_grey, est_grey) = res["means"]["white"], res["means"]["grey"]
    # the bowl lifts the centre (white) against the rim (grey)
    assert est_white - true_white > 0 > est_grey - true_grey
    assert res["roi_ppb"]["putamen"] > 0 and res["nrmse"] > 0.1
