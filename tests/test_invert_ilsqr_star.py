"""iLSQR (chimap.invert.ilsqr) and STAR-QSM (chimap.invert.star): sphere contrast, several
sources, a strong source, geometry and input checks."""

import numpy as np
import pytest
from scipy import ndimage
from test_invert import _blobs, _sphere_problem

from chimap.forward import dipole_field
from chimap.invert import tkd, tv_admm
from chimap.invert.ilsqr import ilsqr
from chimap.invert.star import star_qsm
from chimap.kernels import sphere_mask
from chimap.metrics import nrmse


def _contrast(chi, inner, ring):
    return float(chi[inner].mean() - chi[ring].mean())


@pytest.mark.parametrize("vs,b0,measured", [((1.5, 1.5, 1.5), (0, 0, 1), 0.0714),
                                            ((1.5, 2.0, 2.5), (0.3, 0.2, 0.93), 0.0721)])
def test_ilsqr_sphere_contrast(vs, b0, measured):
    vs = np.asarray(vs, dtype=float)
    ph, mask, inner, ring = _sphere_problem(vs, b0)
    chi, info = ilsqr(ph.field, mask, vs, b0_direction=b0, return_info=True)
    # iLSQR with the paper's tolerances cannot recover a large uniform sphere (chi 0.1): the
    # step-1 LSQR stopped at a 1 % residual leaves most of the magic cone empty (contrast ~0.06)
    # and the artefact LSQR (tol 0.01) stops on its normal-equation test before its structural
    # fill-in of the cone reaches the sphere's interior. Measured 0.071 / 0.072 here (1 mm
    # grids: 0.065 / 0.074; with tol=1e-3 and 500 iterations 0.095 / 0.086).
    c = _contrast(chi, inner, ring)
    assert abs(c - measured) < 0.004
    # step 3 raises the contrast of the LSQR estimate and the result is zero outside the mask
    assert c > _contrast(info["chi_lsqr"], inner, ring) + 0.005
    assert np.all(chi[~mask] == 0) and info["lsqr"]["converged"]


@pytest.mark.parametrize("vs,b0", [((1.5, 1.5, 1.5), (0, 0, 1)), ((1.0, 1.5, 2.0), (0.3, 0.2, 0.93))])
def test_star_sphere_contrast(vs, b0):
    vs = np.asarray(vs, dtype=float)
    ph, mask, inner, ring = _sphere_problem(vs, b0)
    chi, info = star_qsm(ph.field, mask, vs, b0_direction=b0, return_info=True)
    # measured 0.099 / 0.101; the sphere is the strongest source, so level 1 holds part of it
    assert abs(_contrast(chi, inner, ring) - 0.1) < 0.005
    assert info["strong"]["sources"] > 0 and np.all(chi[~mask] == 0)


def test_both_beat_tkd_on_blobs():
    """Four spheres of different chi: measured NRMSE iLSQR 0.14 (its LSQR step alone 0.46),
    STAR 0.075, TKD(0.2) 0.30."""
    chi, mask = _blobs()
    vs = np.array([2.0, 2.0, 2.0])
    field = dipole_field(chi, None, vs)
    e_tkd = nrmse(tkd(field, mask, vs, threshold=0.2), chi, mask, demean=True)
    out, info = ilsqr(field, mask, vs, return_info=True)
    e_ilsqr = nrmse(out, chi, mask, demean=True)
    assert e_ilsqr < e_tkd - 0.1
    assert e_ilsqr < nrmse(info["chi_lsqr"], chi, mask, demean=True) - 0.2  # artefacts removed
    assert nrmse(star_qsm(field, mask, vs), chi, mask, demean=True) < e_tkd - 0.15


def test_star_strong_source_spares_weak_tissue():
    """A haemorrhage-like sphere (1.5 ppm) among weak sources: level 1 captures it and
    the weak tissue away from it is more accurate than with single-level TV at the same alpha
    (measured NRMSE there 0.107 vs 0.149; TKD 1.10)."""
    shape, vs = (36, 40, 32), np.array([2.0, 2.0, 2.0])
    chi = np.zeros(shape)
    c = (np.asarray(shape) - 1) / 2.0
    for off, r, v in [((0, 0, 0), 20, 0.03), ((5, 4, 2), 7, 0.08), ((-5, -4, 1), 6, -0.05), ((2, -6, -3), 4, 0.1)]:
        chi[sphere_mask(shape, vs, radius=r, center=c + np.asarray(off))] += v
    strong = sphere_mask(shape, vs, radius=5.0, center=c + np.array([-2, 6, -3]))
    chi[strong] = 1.5
    mask = sphere_mask(shape, vs, radius=32.0)
    field = dipole_field(chi, None, vs) + np.random.default_rng(0).standard_normal(shape) * 1e-3
    away = mask & ~ndimage.binary_dilation(strong, iterations=4)
    out, info = star_qsm(field, mask, vs, return_info=True)
    found = info["chi_strong"] != 0  # measured: exactly the 56 voxels of the strong sphere
    assert (found & strong).sum() >= 0.95 * strong.sum() and (found & ~strong).sum() <= 0.1 * strong.sum()
    e_star = nrmse(out, chi, away, demean=True)
    assert e_star < nrmse(tv_admm(field, mask, vs), chi, away, demean=True) - 0.03
    assert e_star < 0.13


@pytest.mark.parametrize("func,kw", [
    (ilsqr, {"tol_lsqr": 1e-12, "max_iter_lsqr": 8, "tol": 1e-12, "max_iter": 8}),
    (star_qsm, {"strong_tol": 1e-12, "strong_max_iter": 8, "tol": 1e-12, "max_iter": 8}),
])
def test_joint_axis_permutation(func, kw):
    """Permuting field, mask, voxel sizes and B0 jointly permutes chi (fixed iteration counts)."""
    vs = np.array([1.5, 2.0, 2.5])
    b0 = np.array([0.2, -0.3, 0.93])
    shape = (30, 26, 22)
    chi = np.zeros(shape)
    chi[10:18, 8:14, 9:13] = 0.1
    chi[20:22, 15:17, 8:10] = 0.5
    mask = sphere_mask(shape, vs, radius=20.0)
    field = dipole_field(chi, None, vs, b0_direction=b0)
    perm = (2, 0, 1)
    ref = func(field, mask, vs, b0_direction=b0, **kw)
    out = func(np.transpose(field, perm), np.transpose(mask, perm), vs[list(perm)], b0_direction=b0[list(perm)],
               **kw)
    np.testing.assert_allclose(out, np.transpose(ref, perm), atol=1e-5 * np.abs(ref).max())


def test_ilsqr_is_linear_in_the_field():
    """Every step is linear in f (LSQR, rank-based weights, fitted scaling): ilsqr(3 f) = 3 ilsqr(f)."""
    chi, mask = _blobs((24, 26, 22), (2.0, 2.0, 2.0))
    field = dipole_field(chi, None, (2.0, 2.0, 2.0))
    a = ilsqr(field, mask, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(ilsqr(3.0 * field, mask, (2.0, 2.0, 2.0)), 3.0 * a, atol=1e-6 * np.abs(a).max())


@pytest.mark.parametrize("func", [ilsqr, star_qsm])
def test_zero_field_gives_zero_chi(func):
    out = func(np.zeros((12, 12, 12)), np.ones((12, 12, 12), bool), (1, 1, 1))
    assert np.all(out == 0)


@pytest.mark.parametrize("func,kw,match", [
    (ilsqr, {"tol_lsqr": 0}, "tol_lsqr"),
    (ilsqr, {"tol": float("nan")}, "tol"),
    (ilsqr, {"max_iter": 1.5}, "max_iter"),
    (ilsqr, {"max_iter_lsqr": 0}, "max_iter_lsqr"),
    (ilsqr, {"laplacian_percentiles": (70, 60)}, "laplacian_percentiles"),
    (ilsqr, {"kspace_percentiles": (1,)}, "kspace_percentiles"),
    (ilsqr, {"gradient_percentiles": (50, 101)}, "gradient_percentiles"),
    (ilsqr, {"kspace_exponent": -1}, "kspace_exponent"),
    (ilsqr, {"smv_radius": 0.2}, "smv_radius"),
    (ilsqr, {"tkd_threshold": 0}, "tkd_threshold"),
    (ilsqr, {"cone_threshold": 0.7}, "cone_threshold"),
    (ilsqr, {"weight": np.ones((8, 8, 7))}, "weight"),
    (star_qsm, {"alpha": 0}, "alpha"),
    (star_qsm, {"strong_fraction": 1.0}, "strong_fraction"),
    (star_qsm, {"strong_fraction": -0.1}, "strong_fraction"),
    (star_qsm, {"strong_max_iter": 0}, "strong_max_iter"),
    (star_qsm, {"strong_tol": "x"}, "strong_tol"),
    (star_qsm, {"max_iter": 2.5}, "max_iter"),
    (star_qsm, {"weight": -np.ones((8, 8, 8))}, "weight"),
])
def test_bad_parameters(func, kw, match):
    with pytest.raises(ValueError, match=match):
        func(np.zeros((8, 8, 8)), np.ones((8, 8, 8), bool), (1, 1, 1), **kw)


@pytest.mark.parametrize("func", [ilsqr, star_qsm])
def test_shape_mismatch_dtype_and_inputs_untouched(func):
    with pytest.raises(ValueError, match="shape"):
        func(np.zeros((8, 8, 8)), np.ones((8, 8, 7), bool), (1, 1, 1))
    shape = (16, 14, 12)
    chi = np.zeros(shape)
    chi[5:9, 5:9, 4:8] = 0.1
    mask = sphere_mask(shape, (1, 1, 1), radius=6.5)
    field = dipole_field(chi, None, (1, 1, 1)).astype(np.float32)
    field[~mask] = np.nan  # ignored outside the mask
    weight = np.ones(shape)
    before, mask_before = field.copy(), mask.copy()
    out = func(field, mask, (1, 1, 1), weight=weight)
    assert out.dtype == np.float32 and np.all(np.isfinite(out)) and np.all(out[~mask] == 0)
    np.testing.assert_array_equal(field, before)
    assert np.array_equal(mask, mask_before)
