"""RTS (chimap.invert.rts): sphere contrast, better than TKD on several sources, the LSMR of
step 1 against scipy's, the cross-validated LSMR count, input checks (axis permutation:
tests/test_invert_closed_form.py)."""

import numpy as np
import pytest
from scipy.sparse.linalg import lsmr
from test_invert import _sphere_problem

from chimap.config import resolve
from chimap.forward import dipole_field
from chimap.invert import rts, tkd
from chimap.invert._lsmr import lsmr_iterates
from chimap.invert.rts import RTS_AUTO_PATIENCE
from chimap.kernels import sphere_mask
from chimap.metrics import nrmse


@pytest.mark.parametrize("vs,b0", [((1.0, 1.0, 1.0), (0, 0, 1)), ((1.0, 1.5, 2.0), (0.3, 0.2, 0.93))])
def test_sphere_contrast(vs, b0):
    vs = np.asarray(vs, dtype=float)
    ph, mask, inner, ring = _sphere_problem(vs, b0)
    chi, info = rts(ph.field, mask, vs, b0_direction=b0, return_info=True)
    # measured 0.085 (isotropic) and 0.068 (anisotropic, oblique) with the paper's parameters:
    # 4 LSMR iterations leave the cone partly empty and 20 ADMM steps do not fill it all
    contrast = chi[inner].mean() - chi[ring].mean()
    assert 0.06 < contrast < 0.1
    assert info["iterations"] >= 1 and np.all(chi[~mask] == 0)


def test_better_than_tkd_on_blobs():
    """Several sources in a mask: RTS beats TKD(0.2) (measured NRMSE 0.24 vs 0.29)."""
    shape, vs = (40, 44, 36), np.array([1.5, 1.5, 1.5])
    chi = np.zeros(shape)
    c = (np.asarray(shape) - 1) / 2.0
    for off, r, v in [((0, 0, 0), 12, 0.05), ((5, 3, 2), 5, 0.15), ((-6, -4, 1), 4, -0.1), ((2, -6, -4), 3, 0.3)]:
        chi[sphere_mask(shape, vs, radius=r * 1.5, center=c + np.asarray(off))] += v
    mask = sphere_mask(shape, vs, radius=27.0)
    field = dipole_field(chi, None, vs)
    e_rts = nrmse(rts(field, mask, vs), chi, mask, demean=True)
    e_tkd = nrmse(tkd(field, mask, vs), chi, mask, demean=True)
    assert e_rts < e_tkd - 0.03


@pytest.mark.parametrize("kw,match", [({"delta": 0.7}, "delta"), ({"mu": -1}, "mu"), ({"rho": 0}, "rho"),
                                      ({"lsmr_iter": 1.5}, "lsmr_iter"), ({"max_iter": 0}, "max_iter")])
def test_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        rts(np.zeros((8, 8, 8)), np.ones((8, 8, 8), bool), (1, 1, 1), **kw)


def test_shape_mismatch_dtype_and_pipeline_choice():
    with pytest.raises(ValueError, match="shape"):
        rts(np.zeros((8, 8, 8)), np.ones((8, 8, 7), bool), (1, 1, 1))
    field = np.random.default_rng(0).standard_normal((12, 12, 12)).astype(np.float32) * 1e-3
    before = field.copy()
    out = rts(field, np.ones((12, 12, 12), bool), (1, 1, 1))
    assert out.dtype == np.float32 and np.array_equal(field, before)
    assert resolve("fast", overrides={"invert": {"method": "rts"}})["invert"]["method"] == "rts"


def test_lsmr_iterates_are_scipys_and_carry_a_linear_map():
    """Each yielded iterate is scipy's lsmr stopped at that count; ``observe`` carries S x along
    without applying S to x."""
    rng = np.random.default_rng(0)
    a, b, s = rng.standard_normal((60, 40)), rng.standard_normal(60), rng.standard_normal((5, 40))
    last = {}

    def apply_a(v):
        last["sv"] = s @ v
        return a @ v

    out = [(x.copy(), sx.copy()) for x, sx in lsmr_iterates(apply_a, lambda y: a.T @ y, b, 12,
                                                             observe=lambda: last["sv"])]
    assert len(out) == 12
    for k in (1, 2, 5, 12):
        ref = lsmr(a, b, maxiter=k, atol=0.0, btol=0.0, conlim=0.0)[0]
        x, sx = out[k - 1]
        np.testing.assert_allclose(x, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
        np.testing.assert_allclose(sx, s @ x, rtol=0, atol=1e-12 * np.abs(s @ x).max())
    # without observe the second item is None; a zero right-hand side yields nothing
    assert next(lsmr_iterates(lambda v: a @ v, lambda y: a.T @ y, b, 1))[1] is None
    assert list(lsmr_iterates(lambda v: a @ v, lambda y: a.T @ y, np.zeros(60), 5)) == []


def test_auto_lsmr_iter_cross_validates_the_early_stop():
    """lsmr_iter="auto": the count of least held-out residual, then the plain solve at that
    count. Noiseless sphere (B0 along K): measured 15 iterations and contrast 0.0988, within
    5 % of 0.1 (the paper's 4 iterations: 0.085); with 2 ppb of white noise the count drops
    (measured 7)."""
    ph, mask, inner, ring = _sphere_problem()
    vs = np.ones(3)
    chi, info = rts(ph.field, mask, vs, lsmr_iter="auto", return_info=True)
    sel = info["iteration_selection"]
    errors = np.asarray(sel["cv_rmse"])
    assert info["lsmr_iter"] == sel["lsmr_iter"] == int(np.argmin(errors)) + 1
    assert errors.size == info["lsmr_iter"] + RTS_AUTO_PATIENCE  # stopped by the patience rule
    assert 10 <= info["lsmr_iter"] <= 20 and sel["criterion"] == "cv" and sel["n_holdout"] > 1000
    assert abs(chi[inner].mean() - chi[ring].mean() - 0.1) < 0.005
    np.testing.assert_array_equal(chi, rts(ph.field, mask, vs, lsmr_iter=info["lsmr_iter"]))
    noisy = ph.field + np.random.default_rng(1).normal(0.0, 0.002, ph.field.shape)
    _, info_noisy = rts(noisy, mask, vs, lsmr_iter="auto", return_info=True)
    assert info_noisy["lsmr_iter"] < info["lsmr_iter"] - 3


def test_auto_lsmr_iter_needs_voxels_to_hold_out():
    mask = np.zeros((10, 10, 10), bool)
    mask[4:6, 4:6, 4:6] = True
    with pytest.raises(ValueError, match="hold out"):
        rts(np.zeros((10, 10, 10)), mask, (1, 1, 1), lsmr_iter="auto")
    with pytest.raises(ValueError, match="lsmr_iter"):
        rts(np.zeros((8, 8, 8)), np.ones((8, 8, 8), bool), (1, 1, 1), lsmr_iter="best")
