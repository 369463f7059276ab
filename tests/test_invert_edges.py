"""Morphology prior (chimap.invert.edges) and the per-voxel TV weight of the TV inversions."""

import numpy as np
import pytest

from chimap.config import validate as validate_config
from chimap.forward import dipole_field
from chimap.invert import tv_admm, tv_admm_wh
from chimap.invert.edges import magnitude_edge_weight
from chimap.kernels import sphere_mask


def _blobs(shape=(40, 40, 40), voxel_size=(2.0, 2.0, 2.0)):
    """Two spheres of different chi inside a ball mask; their magnitude shows them."""
    chi = np.zeros(shape)
    mag = np.ones(shape)
    c = (np.asarray(shape) - 1) / 2.0
    spheres = []
    for off, r, v, m in [((0, 0, 0), 10, 0.1, 0.6), ((6, 4, 2), 4, -0.08, 1.4)]:
        s = sphere_mask(shape, voxel_size, radius=r, center=c + np.asarray(off))
        chi[s] = v
        mag[s] = m
        spheres.append(s)
    mask = sphere_mask(shape, voxel_size, radius=32.0)
    field = dipole_field(chi, None, voxel_size)
    return chi, mag, mask, field, spheres


def test_edges_are_the_magnitude_boundaries_not_the_mask_boundary():
    vs = (2.0, 2.0, 2.0)
    _, mag, mask, _, spheres = _blobs(voxel_size=vs)
    g = magnitude_edge_weight(mag, mask, vs, edge_fraction=0.3)
    edges = mask & (g == 0)
    assert g.dtype == np.float32 and set(np.unique(g)) == {0.0, 1.0}
    assert np.all(g[~mask] == 1)
    # every edge voxel lies within one voxel of a sphere's surface (forward differences)
    from scipy import ndimage

    near = np.zeros_like(mask)
    for s in spheres:
        near |= ndimage.binary_dilation(s) & ~ndimage.binary_erosion(s)
    assert edges.any() and np.all(near[edges])
    # a flat magnitude has no edges: fewer than the fraction, never the whole mask
    assert np.all(magnitude_edge_weight(np.ones_like(mag), mask, vs, edge_fraction=0.3) == 1)


def test_edge_fraction_and_weight():
    rng = np.random.default_rng(0)
    vs = (1.0, 1.0, 1.0)
    mask = sphere_mask((30, 30, 30), vs, radius=13.0)
    mag = rng.random((30, 30, 30))
    for fraction in (0.1, 0.3):
        g = magnitude_edge_weight(mag, mask, vs, edge_fraction=fraction, edge_weight=0.2)
        n = np.count_nonzero(g[mask] == np.float32(0.2))
        assert abs(n - fraction * mask.sum()) <= 1
    assert np.all(magnitude_edge_weight(mag, mask, vs, edge_fraction=0.0) == 1)
    # anisotropic voxels: differences are per mm, so the same step along the 3 mm axis is a
    # weaker edge than along a 1 mm axis
    ramp = np.zeros((30, 30, 30))
    ramp[:15] = 1.0
    ramp[:, :, 15:] += 1.0
    g = magnitude_edge_weight(ramp, mask, (1.0, 1.0, 3.0), edge_fraction=0.02)
    i, _, _ = np.nonzero(g == 0)
    assert i.size > 0 and np.all(i == 14)  # only the step along the fine axis


@pytest.mark.parametrize("kwargs,message", [
    (dict(edge_fraction=1.0), "edge_fraction"),
    (dict(edge_fraction=-0.1), "edge_fraction"),
    (dict(edge_weight=1.0), "edge_weight"),
])
def test_edge_weight_bad_parameters(kwargs, message):
    mask = np.ones((8, 8, 8), bool)
    with pytest.raises(ValueError, match=message):
        magnitude_edge_weight(np.ones((8, 8, 8)), mask, (1, 1, 1), **kwargs)


def test_edge_weight_bad_inputs():
    mask = np.ones((8, 8, 8), bool)
    with pytest.raises(ValueError, match="shape"):
        magnitude_edge_weight(np.ones((8, 8, 7)), mask, (1, 1, 1))
    with pytest.raises(ValueError, match="3D"):
        magnitude_edge_weight(np.ones((8, 8, 8, 2)), mask, (1, 1, 1))
    with pytest.raises(ValueError, match="empty"):
        magnitude_edge_weight(np.ones((8, 8, 8)), ~mask, (1, 1, 1))
    bad = np.ones((8, 8, 8))
    bad[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        magnitude_edge_weight(bad, mask, (1, 1, 1))
    with pytest.raises(ValueError, match="voxel_size"):
        magnitude_edge_weight(np.ones((8, 8, 8)), mask, (1, 0, 1))


@pytest.mark.parametrize("func", [tv_admm, tv_admm_wh])
def test_unit_gradient_weight_is_plain_tv(func):
    vs = (2.0, 2.0, 2.0)
    _, _, mask, field, _ = _blobs(voxel_size=vs)
    plain = func(field, mask, vs, alpha=5e-4, max_iter=40)
    ones = func(field, mask, vs, alpha=5e-4, max_iter=40, gradient_weight=np.ones(mask.shape))
    np.testing.assert_array_equal(plain, ones)


@pytest.mark.parametrize("func", [tv_admm, tv_admm_wh])
def test_morphology_prior_keeps_the_contrast_tv_shrinks(func):
    """At a strong TV weight, uniform TV shrinks each sphere's contrast; not penalising the
    magnitude's edges (the spheres' surfaces) keeps it."""
    vs = (2.0, 2.0, 2.0)
    chi, mag, mask, field, spheres = _blobs(voxel_size=vs)
    g = magnitude_edge_weight(mag, mask, vs, edge_fraction=0.15)
    background = mask & ~(spheres[0] | spheres[1])

    def contrasts(x):
        return [float(x[s].mean() - x[background].mean()) for s in spheres]

    truth = contrasts(chi)
    plain = contrasts(func(field, mask, vs, alpha=3e-3))
    edged = contrasts(func(field, mask, vs, alpha=3e-3, gradient_weight=g))
    for t, p, e in zip(truth, plain, edged):
        assert abs(p - t) > 0.15 * abs(t)  # uniform TV at this weight loses > 15 % ...
        assert abs(e - t) < 0.05 * abs(t)  # ... the morphology prior < 5 %


@pytest.mark.parametrize("func", [tv_admm, tv_admm_wh])
def test_gradient_weight_rejected(func):
    vs = (2.0, 2.0, 2.0)
    _, _, mask, field, _ = _blobs(voxel_size=vs)
    with pytest.raises(ValueError, match="gradient_weight shape"):
        func(field, mask, vs, gradient_weight=np.ones((3, 3, 3)))
    bad = np.ones(mask.shape)
    bad[mask.nonzero()[0][0], mask.nonzero()[1][0], mask.nonzero()[2][0]] = -1
    with pytest.raises(ValueError, match="non-negative"):
        func(field, mask, vs, gradient_weight=bad)
    bad[bad < 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        func(field, mask, vs, gradient_weight=bad)


def test_config_edges_only_for_tv_inversions():
    validate_config({"invert": {"method": "tv_admm_wh", "edges": "magnitude", "edge_fraction": 0.2}})
    with pytest.raises(ValueError, match="edges"):
        validate_config({"invert": {"method": "tkd", "edges": "magnitude"}})
    with pytest.raises(ValueError, match="edge_fraction"):
        validate_config({"invert": {"method": "tv_admm", "edges": "magnitude", "edge_fraction": 1.5}})
    with pytest.raises(ValueError, match="edges"):
        validate_config({"invert": {"method": "tv_admm", "edges": "sobel"}})
