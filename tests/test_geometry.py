"""Geometry: voxel sizes, B0 direction from an affine, obliquity, synthetic affines."""

import numpy as np
import pytest

from chimap.geometry import (
    affine_with_b0_direction,
    b0_direction_from_affine,
    check_b0_direction,
    check_voxel_size,
    obliquity_deg,
    rotation_from_to,
    rotation_part,
    voxel_sizes,
)

# Everything below is a handful of float64 products and square roots: 1e-12 is ~1e4 ulps,
# far below any geometric error worth catching (a swapped sign or axis is O(1)).
ATOL = 1e-12


def _rot_about_i(angle_rad):
    """Rotation by ``angle`` about world x (voxel axis I of an unrotated affine)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def _affine(rot, vs, shift=(10.0, -20.0, 5.0)):
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(vs, dtype=np.float64)
    a[:3, 3] = shift
    return a


def test_identity_affine():
    a = np.eye(4)
    np.testing.assert_allclose(b0_direction_from_affine(a), [0, 0, 1], atol=ATOL)
    assert obliquity_deg(a) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(voxel_sizes(a), [1, 1, 1], atol=ATOL)


@pytest.mark.parametrize("deg", [5.0, 17.0, 30.0, -12.0])
def test_rotation_about_i_gives_known_b0(deg):
    th = np.radians(deg)
    a = _affine(_rot_about_i(th), (1.0, 1.0, 1.0))
    # R.T @ z is the third row of R: (0, sin, cos) -- sign included.
    np.testing.assert_allclose(b0_direction_from_affine(a), [0, np.sin(th), np.cos(th)],
                               atol=ATOL)
    # arccos near 1 loses precision: error ~ sqrt(eps) rad ~ 1e-6 deg, so 1e-6 deg tolerance.
    assert obliquity_deg(a) == pytest.approx(abs(deg), abs=1e-6)


@pytest.mark.parametrize("vs", [(0.5, 0.5, 2.0), (1.0, 0.8, 3.0), (2.5, 0.3, 1.1)])
def test_anisotropic_voxels_do_not_change_direction(vs):
    th = np.radians(20.0)
    iso = _affine(_rot_about_i(th), (1.0, 1.0, 1.0))
    aniso = _affine(_rot_about_i(th), vs)
    np.testing.assert_allclose(voxel_sizes(aniso), vs, atol=ATOL)
    np.testing.assert_allclose(b0_direction_from_affine(aniso), b0_direction_from_affine(iso),
                               atol=ATOL)
    np.testing.assert_allclose(rotation_part(aniso), _rot_about_i(th), atol=ATOL)
    # Not dividing by the voxel sizes would give normalize(A.T z) -- a different direction.
    wrong = aniso[:3, :3].T @ [0, 0, 1]
    wrong /= np.linalg.norm(wrong)
    assert np.abs(wrong - b0_direction_from_affine(aniso)).max() > 1e-2


def test_reflection_keeps_b0_axis():
    # LAS storage (flipped I) leaves B0 along K; flipping K gives -K (same kernel, D is even).
    a = np.diag([-1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(b0_direction_from_affine(a), [0, 0, 1], atol=ATOL)
    a = np.diag([1.0, 1.0, -2.0, 1.0])
    np.testing.assert_allclose(b0_direction_from_affine(a), [0, 0, -1], atol=ATOL)
    assert obliquity_deg(a) == pytest.approx(0.0, abs=1e-9)


def test_sagittal_acquisition():
    # Sagittal slab: voxel axes (I, J, K) = world (y, z, x) -> B0 along voxel axis J.
    r = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=np.float64)
    a = _affine(r, (1.0, 1.0, 1.2))
    np.testing.assert_allclose(b0_direction_from_affine(a), [0, 1, 0], atol=ATOL)
    assert obliquity_deg(a) == pytest.approx(0.0, abs=1e-6)


def test_affine_with_b0_direction_round_trip():
    rng = np.random.default_rng(42)
    for _ in range(20):
        b = rng.normal(size=3)
        b /= np.linalg.norm(b)
        vs = rng.uniform(0.3, 3.0, size=3)
        shape = tuple(rng.integers(8, 64, size=3))
        centre = rng.normal(scale=20, size=3)
        a = affine_with_b0_direction(vs, b, shape=shape, center_world=centre)
        np.testing.assert_allclose(voxel_sizes(a), vs, atol=1e-12)
        np.testing.assert_allclose(b0_direction_from_affine(a), b, atol=1e-12)
        r = rotation_part(a)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
        mid = np.append((np.asarray(shape) - 1) / 2.0, 1.0)
        np.testing.assert_allclose((a @ mid)[:3], centre, atol=1e-9)


def test_affine_axial_is_diagonal():
    a = affine_with_b0_direction((0.5, 0.6, 2.0), (0, 0, 1))
    np.testing.assert_allclose(a[:3, :3], np.diag([0.5, 0.6, 2.0]), atol=ATOL)


@pytest.mark.parametrize("a, b", [((0, 0, 1), (1, 0, 0)), ((0, 0, 1), (0, 0, -1)),
                                  ((1, 2, 3), (-1, -2, -3)), ((1, 1, 0), (0.3, -2, 5))])
def test_rotation_from_to_is_proper_rotation(a, b):
    r = rotation_from_to(a, b)
    an = np.asarray(a, float) / np.linalg.norm(a)
    bn = np.asarray(b, float) / np.linalg.norm(b)
    np.testing.assert_allclose(r @ an, bn, atol=1e-12)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("bad", [(1.0, 0.0, 1.0), (1.0, -1.0, 1.0), (1.0, np.nan, 1.0),
                                 (0.001, 0.001, 0.002), (1000.0, 1.0, 1.0), (1.0, 1.0)])
def test_bad_voxel_sizes_rejected(bad):
    with pytest.raises(ValueError, match="voxel"):
        check_voxel_size(bad)


def test_voxel_size_scalar_broadcast():
    np.testing.assert_array_equal(check_voxel_size(0.8), [0.8, 0.8, 0.8])


@pytest.mark.parametrize("bad", [(0, 0, 0), (1, 0), (np.nan, 0, 1)])
def test_bad_b0_direction_rejected(bad):
    with pytest.raises(ValueError, match="b0_direction"):
        check_b0_direction(bad)


def test_b0_direction_normalised():
    np.testing.assert_allclose(check_b0_direction((0, 3, 4)), [0, 0.6, 0.8], atol=ATOL)
