"""Nonlinear-fidelity inversions (chimap.invert.nonlinear): FANSI nlTV and NDI.

Sphere contrast, linear limit (phase scale -> 0), robustness to phase wraps, the per-voxel
Newton solve, joint axis permutation, better than TKD on several sources, input checks.
"""

import numpy as np
import pytest
import scipy.fft as sfft
from scipy import ndimage
from test_invert import _blobs, _sphere_problem

from chimap.forward import dipole_field
from chimap.invert import tkd, tv_admm
from chimap.invert._nonlinear_kernels import nonlinear_fidelity_update
from chimap.invert.nonlinear import DEFAULT_PHASE_SCALE, ndi, nltv, rad_per_ppm
from chimap.kernels import dipole_kernel, sphere_mask
from chimap.metrics import nrmse


def test_phase_scale_default_is_3t_te20ms():
    # 2 pi * 42.577478 MHz/T * 3 T * 20 ms * 1e-6 rad per ppm
    assert DEFAULT_PHASE_SCALE == pytest.approx(2 * np.pi * 42.577478 * 3 * 0.02, rel=1e-9)
    assert rad_per_ppm(7.0, 0.01) == pytest.approx(DEFAULT_PHASE_SCALE * 7 / 3 / 2, rel=1e-12)


@pytest.mark.parametrize("vs,b0", [((1.0, 1.0, 1.0), (0, 0, 1)), ((1.0, 1.5, 2.0), (0.3, 0.2, 0.93))])
def test_nltv_sphere_contrast(vs, b0):
    vs = np.asarray(vs, dtype=float)
    ph, mask, inner, ring = _sphere_problem(vs, b0)
    # the sphere's field reaches 0.067 ppm, 1.07 rad at the default phase scale
    chi, info = nltv(ph.field, mask, vs, b0_direction=b0, return_info=True)
    contrast = chi[inner].mean() - chi[ring].mean()
    assert abs(contrast - 0.1) < 0.005  # measured 0.098 (isotropic), 0.100 (anisotropic, oblique)
    assert info["iterations"] >= 1 and np.all(chi[~mask] == 0)


@pytest.mark.parametrize("vs,b0", [((1.0, 1.0, 1.0), (0, 0, 1)), ((1.0, 1.5, 2.0), (0.3, 0.2, 0.93))])
def test_ndi_sphere_contrast(vs, b0):
    vs = np.asarray(vs, dtype=float)
    ph, mask, inner, ring = _sphere_problem(vs, b0)
    chi, info = ndi(ph.field, mask, vs, b0_direction=b0, return_info=True)
    contrast = chi[inner].mean() - chi[ring].mean()
    # NDI cannot reach 5 %: with no regulariser but a tiny Tikhonov weight, the frequencies
    # near the magic cone (D ~ 0) are left to the start value 0 by gradient descent, which
    # therefore tends to the minimum-norm fit of the field in the mask, not to the sphere;
    # measured 0.061 (isotropic) and 0.064 (anisotropic, oblique) after 100 iterations; 0.0615
    # to 0.0617 (isotropic) for 50 to 800 iterations, with the default phase scale or in the
    # linear limit alike
    assert 0.059 < contrast < 0.067
    assert info["iterations"] == 100 and not info["converged"]
    chi50 = ndi(ph.field, mask, vs, b0_direction=b0, max_iter=50, tol=1e-9)
    assert abs(chi50[inner].mean() - chi50[ring].mean() - contrast) < 0.002


def test_nltv_linear_limit_is_weighted_tv():
    """phase_scale -> 0: the nonlinear data term becomes tv_admm's 1/2 ||W (D chi - f)||^2, so
    both converge to the same chi."""
    chi_true, mask = _blobs(shape=(24, 26, 22))
    mask &= sphere_mask(mask.shape, (2.0, 2.0, 2.0), radius=18.0)
    vs = np.array([2.0, 2.0, 2.0])
    field = dipole_field(chi_true, None, vs)
    kw = {"alpha": 3e-4, "mu": 1.0, "max_iter": 150, "tol": 1e-3}
    lin = tv_admm(field, mask, vs, **kw)
    out = nltv(field, mask, vs, phase_scale=1e-6, **kw)
    assert nrmse(out, lin, mask, demean=True) < 1e-3  # measured 1.4e-4 (chi itself: 7 % from the truth)
    # with a noiseless field the fitted residual is tiny, so the phase scale hardly matters
    # (1 - cos(s r) ~ (s r)^2 / 2): the default scale changes chi by less than 1 % here
    assert nrmse(nltv(field, mask, vs, **kw), lin, mask, demean=True) < 1e-2


def test_ndi_linear_limit_is_landweber():
    """Full mask, no padding, phase_scale -> 0: after k steps of size t from 0, exactly
    X_k = (1 - (1 - 2 t (D^2 + alpha))^k) D F / (D^2 + alpha) in k-space."""
    shape, vs, b0 = (20, 18, 22), np.array([1.0, 1.2, 0.9]), np.array([0.1, 0.3, 0.95])
    rng = np.random.default_rng(4)
    field = rng.standard_normal(shape) * 0.01
    mask = np.ones(shape, bool)
    alpha, step, k = 1e-3, 1.0, 7
    out = ndi(field, mask, vs, b0_direction=b0, alpha=alpha, step=step, max_iter=k, tol=1e-12,
              phase_scale=1e-7, pad_factor=1.0)
    d = dipole_kernel(shape, vs, b0_direction=b0, real_fft=True)
    a = d * d + alpha
    spec = (1 - (1 - 2 * step * a) ** k) * d * sfft.rfftn(field) / a
    ref = sfft.irfftn(spec, s=shape)
    np.testing.assert_allclose(out, ref, atol=1e-6 * np.abs(ref).max())


def test_ndi_descends_its_objective():
    """Each gradient step lowers (1/s^2) ||W (exp(i s D chi) - exp(i s f))||^2 + alpha ||chi||^2
    (full mask, periodic grid, so chi is the whole iterate); the phase reaches ~3 rad."""
    shape, vs = (18, 20, 16), np.array([1.0, 1.0, 1.5])
    rng = np.random.default_rng(2)
    chi_true = np.zeros(shape)
    chi_true[6:12, 7:13, 5:11] = 0.3
    d = dipole_kernel(shape, vs, real_fft=True)
    field = sfft.irfftn(d * sfft.rfftn(chi_true), s=shape) + 0.002 * rng.standard_normal(shape)
    mask = np.ones(shape, bool)
    s, alpha = DEFAULT_PHASE_SCALE, 1e-5

    def energy(chi):
        dchi = sfft.irfftn(d * sfft.rfftn(chi), s=shape)
        return (np.sum(np.abs(np.exp(1j * s * dchi) - np.exp(1j * s * field)) ** 2) / s**2
                + alpha * np.sum(chi * chi))

    e = [energy(ndi(field, mask, vs, max_iter=k, tol=1e-12, pad_factor=1.0)) for k in (1, 2, 5, 10, 20)]
    assert np.all(np.diff(e) < 0)


@pytest.mark.parametrize("func", [nltv, ndi])
def test_phase_wraps_in_the_field_are_repaired(func):
    """Adding 2 pi / s to the field in 1 % of the voxels (phase wraps) hardly changes the result
    of the nonlinear methods; it ruins the linear TV (measured NRMSE change: nlTV 0.5 %, NDI
    1e-15 -- its iterates see the field only through exp(i s f) --, tv_admm about 900 %)."""
    chi_true, mask = _blobs()
    vs = np.array([2.0, 2.0, 2.0])
    field = dipole_field(chi_true, None, vs)
    wrapped = field.copy()
    sel = mask & (np.random.default_rng(0).random(mask.shape) < 0.01)
    wrapped[sel] += 2 * np.pi / DEFAULT_PHASE_SCALE
    err = nrmse(func(wrapped, mask, vs), func(field, mask, vs), mask, demean=True)
    assert err < (0.02 if func is nltv else 1e-9)
    kw = {"max_iter": 30}
    assert nrmse(tv_admm(wrapped, mask, vs, **kw), tv_admm(field, mask, vs, **kw), mask, demean=True) > 1.0


def test_newton_solves_the_pointwise_problem():
    """z minimises (W^2/s^2)(1 - cos(s (z - f))) + mu/2 (z - v)^2 (stationary, and no better
    than a fine grid search), also where W^2 > mu (locally concave data term)."""
    rng = np.random.default_rng(5)
    n = (4, 5, 6)
    s, mu = DEFAULT_PHASE_SCALE, 1.0
    f = rng.normal(0, 0.05, n)
    dchi = f + rng.normal(0, 0.05, n)
    w2 = rng.uniform(0, 3, n)
    u2 = rng.normal(0, 0.01, n)
    v = dchi + u2
    u2_new, t = u2.copy(), np.zeros(n)
    nonlinear_fidelity_update(dchi, f, w2, mu, s, u2_new, t, 50, 1e-12)
    z = t + u2_new
    np.testing.assert_allclose(u2_new, v - z, atol=1e-15)
    grad = w2 * np.sin(s * (z - f)) / s + mu * (z - v)
    assert np.abs(grad).max() < 1e-10

    def g(zz):
        return w2[..., None] * (1 - np.cos(s * (zz - f[..., None]))) / s**2 + mu / 2 * (zz - v[..., None]) ** 2

    grid = v[..., None] + np.linspace(-0.5, 0.5, 20001)
    assert np.all(g(z[..., None])[..., 0] <= g(grid).min(axis=-1) + 1e-9)


@pytest.mark.parametrize("func", [nltv, ndi])
def test_joint_axis_permutation(func):
    vs = np.array([1.5, 2.0, 2.5])
    b0 = np.array([0.2, -0.3, 0.93])
    shape = (30, 26, 22)
    chi = np.zeros(shape)
    chi[10:18, 8:14, 9:13] = 0.1
    mask = sphere_mask(shape, vs, radius=20.0)
    field = dipole_field(chi, None, vs, b0_direction=b0)
    perm = (2, 0, 1)
    kw = {"max_iter": 8, "tol": 1e-12}
    ref = func(field, mask, vs, b0_direction=b0, **kw)
    out = func(np.transpose(field, perm), np.transpose(mask, perm), vs[list(perm)],
               b0_direction=b0[list(perm)], **kw)
    np.testing.assert_allclose(out, np.transpose(ref, perm), atol=1e-6 * np.abs(ref).max())


def _texture_problem():
    """Fine random susceptibility texture (many small sources, as in brain tissue) in a ball;
    inversion mask eroded by one voxel, so sources also lie just outside it."""
    shape, vs = (36, 40, 32), np.array([2.0, 2.0, 2.0])
    brain = sphere_mask(shape, vs, radius=24.0)
    tex = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal(shape), 0.7)
    chi = np.where(brain, tex * 0.05 / tex[brain].std(), 0.0)
    return chi, ndimage.binary_erosion(brain, iterations=1), vs


def test_nltv_better_than_tkd():
    """Measured NRMSE on the blobs: nlTV 0.060, with a magnitude-like weight 0.062, TKD(0.2)
    0.30; on the texture: nlTV 0.44, TKD 0.50."""
    chi_true, mask = _blobs()
    vs = np.array([2.0, 2.0, 2.0])
    field = dipole_field(chi_true, None, vs)
    e_tkd = nrmse(tkd(field, mask, vs, threshold=0.2), chi_true, mask, demean=True)
    assert nrmse(nltv(field, mask, vs), chi_true, mask, demean=True) < e_tkd - 0.1
    weight = np.where(np.abs(chi_true) > 0.1, 0.5, 1.0)  # lower in the strong sources
    assert nrmse(nltv(field, mask, vs, weight=weight), chi_true, mask, demean=True) < e_tkd - 0.1
    chi_true, mask, vs = _texture_problem()
    field = dipole_field(chi_true, None, vs)
    e_tkd = nrmse(tkd(field, mask, vs, threshold=0.2), chi_true, mask, demean=True)
    assert nrmse(nltv(field, mask, vs), chi_true, mask, demean=True) < e_tkd - 0.03


def test_ndi_better_than_tkd_on_texture():
    """NDI (measured NRMSE 0.43) beats TKD(0.2) (0.50) on fine texture, where its filter
    ``1 - (1 - 2 D^2)^k`` keeps more of the near-cone band than TKD's ``|D| / 0.2``. On the
    large uniform blobs it does not (0.45 against 0.30): with the field free outside the mask
    and no regulariser, gradient descent tends to the minimum-norm fit (see the sphere test)."""
    chi_true, mask, vs = _texture_problem()
    field = dipole_field(chi_true, None, vs)
    e_tkd = nrmse(tkd(field, mask, vs, threshold=0.2), chi_true, mask, demean=True)
    e = nrmse(ndi(field, mask, vs), chi_true, mask, demean=True)
    assert e < e_tkd - 0.05
    chi_true, mask = _blobs()
    field = dipole_field(chi_true, None, vs)
    e_tkd = nrmse(tkd(field, mask, vs, threshold=0.2), chi_true, mask, demean=True)
    e = nrmse(ndi(field, mask, vs), chi_true, mask, demean=True)
    assert 0.40 < e < 0.49 and e > e_tkd


@pytest.mark.parametrize("func,kw,match", [
    (nltv, {"alpha": 0}, "alpha"), (nltv, {"phase_scale": -1}, "phase_scale"), (nltv, {"mu": 0}, "mu"),
    (nltv, {"rho": float("nan")}, "rho"), (nltv, {"max_iter": 1.5}, "max_iter"), (nltv, {"tol": 0}, "tol"),
    (nltv, {"newton_iter": 0}, "newton_iter"),
    (ndi, {"alpha": -1e-5}, "alpha"), (ndi, {"step": 0}, "step"), (ndi, {"step": 2.3}, "step"),
    (ndi, {"phase_scale": 0}, "phase_scale"), (ndi, {"max_iter": 0}, "max_iter"), (ndi, {"tol": "x"}, "tol"),
])
def test_bad_parameters(func, kw, match):
    with pytest.raises(ValueError, match=match):
        func(np.zeros((8, 8, 8)), np.ones((8, 8, 8), bool), (1, 1, 1), **kw)


@pytest.mark.parametrize("func", [nltv, ndi])
def test_shape_mismatch_weight_and_dtype(func):
    with pytest.raises(ValueError, match="shape"):
        func(np.zeros((8, 8, 8)), np.ones((8, 8, 7), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="weight"):
        func(np.zeros((8, 8, 8)), np.ones((8, 8, 8), bool), (1, 1, 1), weight=-np.ones((8, 8, 8)))
    field = np.random.default_rng(0).standard_normal((12, 12, 12)).astype(np.float32) * 1e-2
    mask = np.ones((12, 12, 12), bool)
    mask[0] = False
    before = field.copy()
    out = func(field, mask, (1, 1, 1), max_iter=10)
    assert out.dtype == np.float32 and np.array_equal(field, before)
    assert np.all(out[~mask] == 0) and np.all(np.isfinite(out))
