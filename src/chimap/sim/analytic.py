"""Analytic phantoms with closed-form fields: a sphere and an infinite cylinder.

Both return an :class:`AnalyticPhantom` ``(chi, field, mask)`` on a voxel grid:

- ``chi`` (ppm): the susceptibility, with partial-volume fractions at the boundary when
  ``supersample > 1`` (each voxel is sampled at ``supersample**3`` sub-voxel points);
- ``field`` (ppm of B0): the closed-form field evaluated at the voxel centres;
- ``mask`` (bool): voxels whose centre lies inside the object.

Units and geometry follow design.md section 3: radii in mm, positions ``(index - center) *
voxel_size`` in mm along the voxel axes (anisotropic voxels supported), ``b0_direction`` and
the cylinder ``axis`` are directions in voxel axes. The object sits in a medium of chi = 0.

Fields are *Lorentz corrected* (the field a proton sees, after the Lorentz-sphere
correction), which is what ``chimap.forward.dipole_field`` computes with the kernel
``D(k) = 1/3 - (k.b)^2/|k|^2`` and ``D(0) = 0``: the 1/3 term is the Lorentz correction, and a
uniform susceptibility gives no field. In that convention (first order in chi):

- sphere of radius ``a`` (Schenck, Med Phys 1996;23:815; Haacke et al., *Magnetic Resonance
  Imaging: Physical Principles and Sequence Design*, 1999, ch. 25)::

      inside:  0
      outside: chi/3 * (a/r)^3 * (3 cos^2(theta) - 1),   theta = angle(r, B0)

- infinite cylinder of radius ``a`` whose axis makes angle ``alpha`` with B0 (Haacke et al.
  1999, ch. 25; Cheng, Neelavalli & Haacke, Phys Med Biol 2009;54:1169, eqs. for the
  Lorentz-corrected cylinder)::

      inside:  chi/6 * (3 cos^2(alpha) - 1)
      outside: chi/2 * sin^2(alpha) * (a/rho)^2 * cos(2 phi)

  with ``rho`` the distance to the axis and ``phi`` the azimuth about the axis measured from
  the projection of B0 onto the plane perpendicular to the axis.

Both follow from the kernel: for the sphere, the mean of ``(k.b)^2/|k|^2`` over directions is
1/3 (inside field ``chi*(1/3 - 1/3) = 0``); for the cylinder, ``k`` lies in the plane
perpendicular to the axis, ``(k.b)^2/|k|^2 = sin^2(alpha) cos^2(phi_k)`` averages to
``sin^2(alpha)/2`` (inside ``chi*(1/3 - sin^2(alpha)/2) = chi/6*(3cos^2(alpha) - 1)``).
The fields scale linearly with ``chi``; a paramagnetic sphere (chi > 0) gives ``+2/3*chi`` at
its poles along B0 and ``-1/3*chi`` on its equator.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..geometry import check_b0_direction, check_voxel_size

__all__ = ["AnalyticPhantom", "sphere", "cylinder"]


class AnalyticPhantom(NamedTuple):
    """An object on a voxel grid with its closed-form field.

    Attributes
    ----------
    chi : numpy.ndarray, shape (I, J, K)
        Susceptibility in ppm (partial-volume fractions times chi at the boundary when
        supersampled).
    field : numpy.ndarray, shape (I, J, K)
        Closed-form Lorentz-corrected field in ppm of B0 at the voxel centres.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Voxels whose centre is inside the object.
    """

    chi: np.ndarray
    field: np.ndarray
    mask: np.ndarray


def _check_common(shape, voxel_size, radius, center, supersample, dtype):
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise ValueError(f"shape must have 3 positive entries, got {shape}")
    vs = check_voxel_size(voxel_size)
    radius = float(radius)
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be positive and finite (mm), got {radius}")
    if center is None:
        c = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    else:
        c = np.asarray(center, dtype=np.float64).ravel()
        if c.size != 3 or not np.all(np.isfinite(c)):
            raise ValueError(f"center needs 3 finite voxel coordinates, got {c.tolist()}")
    if int(supersample) != supersample or int(supersample) < 1:
        raise ValueError(f"supersample must be a positive integer, got {supersample!r}")
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    return shape, vs, radius, c, int(supersample), dtype


def _positions(shape, vs, c):
    """Physical positions (mm) of the voxel centres, as 3 broadcastable arrays."""
    out = []
    for ax, n in enumerate(shape):
        view = [1, 1, 1]
        view[ax] = n
        out.append(((np.arange(n) - c[ax]) * vs[ax]).reshape(view))
    return out


def _partial_volume(inside_fn, dist, radius, vs, supersample):
    """Fraction of each voxel inside the object.

    ``dist`` is the distance (mm) of each voxel centre to the object's centre (sphere) or axis
    (cylinder); ``inside_fn(p)`` takes points ``p`` of shape (N, 3) in mm relative to that
    centre and returns booleans. Only voxels within half a voxel diagonal of the surface are
    supersampled; the rest are exactly 0 or 1.
    """
    frac = (dist <= radius).astype(np.float64)
    if supersample == 1:
        return frac
    half_diag = 0.5 * float(np.linalg.norm(vs))
    boundary = np.abs(dist - radius) <= half_diag
    idx = np.argwhere(boundary)  # (N, 3) voxel indices
    if idx.size == 0:
        return frac
    s = supersample
    sub = (np.arange(s) + 0.5) / s - 0.5  # sub-voxel offsets in voxel units
    offs = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), axis=-1).reshape(-1, 3) * vs
    counts = np.zeros(len(idx))
    chunk = max(1, 2_000_000 // offs.shape[0])
    for start in range(0, len(idx), chunk):
        centres = idx[start:start + chunk].astype(np.float64)
        pts = centres[:, None, :] + offs[None, :, :] / vs  # voxel coords, shape (n, s^3, 3)
        counts[start:start + chunk] = inside_fn(pts).sum(axis=1)
    frac[tuple(idx.T)] = counts / offs.shape[0]
    return frac


def sphere(shape, voxel_size, *, radius, chi=1.0, center=None, b0_direction=(0.0, 0.0, 1.0),
           supersample=1, dtype=np.float64) -> AnalyticPhantom:
    """A uniformly magnetised sphere and its closed-form (Lorentz-corrected) field.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid shape (I, J, K).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    radius : float
        Sphere radius in mm.
    chi : float
        Susceptibility of the sphere in ppm (relative to the surrounding medium).
    center : array_like of 3 float, optional
        Centre in voxel coordinates (fractional allowed); default the grid centre
        ``(shape - 1) / 2``.
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes.
    supersample : int
        Sub-samples per voxel axis for the partial-volume ``chi`` at the boundary (1: binary).
    dtype : numpy floating dtype
        dtype of ``chi`` and ``field``.

    Returns
    -------
    AnalyticPhantom
        ``field`` is 0 inside and ``chi/3 * (a/r)^3 * (3 cos^2(theta) - 1)`` outside (ppm),
        ``theta`` the angle between the position vector and B0, evaluated at voxel centres.
    """
    shape, vs, a, c, s, dtype = _check_common(shape, voxel_size, radius, center, supersample,
                                              dtype)
    b = check_b0_direction(b0_direction)
    chi = float(chi)
    x0, x1, x2 = _positions(shape, vs, c)
    r2 = x0 * x0 + x1 * x1 + x2 * x2
    r = np.sqrt(r2)
    mask = r <= a
    rb = x0 * b[0] + x1 * b[1] + x2 * b[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos2 = np.where(r2 > 0, rb * rb / np.where(r2 > 0, r2, 1.0), 0.0)
        field = chi / 3.0 * (a / np.where(mask, a, r)) ** 3 * (3.0 * cos2 - 1.0)
    field = np.where(mask, 0.0, field)

    def inside(p):  # p in voxel coordinates
        d = (p - c) * vs
        return (d * d).sum(axis=-1) <= a * a

    frac = _partial_volume(inside, r, a, vs, s)
    return AnalyticPhantom(
        chi=(chi * frac).astype(dtype), field=field.astype(dtype), mask=mask
    )


def cylinder(shape, voxel_size, *, radius, chi=1.0, axis=(0.0, 0.0, 1.0), center=None,
             b0_direction=(0.0, 0.0, 1.0), supersample=1, dtype=np.float64) -> AnalyticPhantom:
    """An infinite, uniformly magnetised cylinder and its closed-form (Lorentz-corrected) field.

    The cylinder passes through ``center`` along ``axis`` and is infinite: it crosses the whole
    grid. To compare with :func:`chimap.forward.dipole_field`, choose ``axis`` along a voxel
    axis and use ``pad_factor = 1`` along it (periodic, hence infinite).

    Parameters
    ----------
    shape : tuple of 3 int
        Grid shape (I, J, K).
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    radius : float
        Cylinder radius in mm.
    chi : float
        Susceptibility of the cylinder in ppm.
    axis : array_like, shape (3,)
        Direction of the cylinder axis in voxel axes (any direction; normalised here).
    center : array_like of 3 float, optional
        A point on the axis in voxel coordinates; default the grid centre.
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes.
    supersample : int
        Sub-samples per voxel axis for the partial-volume ``chi`` (1: binary).
    dtype : numpy floating dtype
        dtype of ``chi`` and ``field``.

    Returns
    -------
    AnalyticPhantom
        ``field`` (ppm) is ``chi/6 * (3 cos^2(alpha) - 1)`` inside and
        ``chi/2 * sin^2(alpha) * (a/rho)^2 * cos(2 phi)`` outside, ``alpha`` the angle between
        axis and B0, ``rho`` the distance to the axis, ``phi`` the azimuth about the axis from
        the projection of B0 (Haacke et al. 1999 ch. 25; Cheng et al. Phys Med Biol
        2009;54:1169). Outside it is computed as
        ``chi/2 * (a/rho)^2 * (2 (rho_hat . b)^2 - sin^2(alpha))``, which equals the above and
        is defined also when B0 is parallel to the axis (then it is 0).
    """
    shape, vs, a, c, s, dtype = _check_common(shape, voxel_size, radius, center, supersample,
                                              dtype)
    b = check_b0_direction(b0_direction)
    try:
        u = check_b0_direction(axis)
    except ValueError as exc:
        raise ValueError(str(exc).replace("b0_direction", "axis")) from None
    chi = float(chi)
    cos_a = float(np.dot(u, b))
    sin2_a = max(0.0, 1.0 - cos_a * cos_a)
    x0, x1, x2 = _positions(shape, vs, c)
    along = x0 * u[0] + x1 * u[1] + x2 * u[2]
    p0, p1, p2 = x0 - along * u[0], x1 - along * u[1], x2 - along * u[2]  # perpendicular part
    rho2 = p0 * p0 + p1 * p1 + p2 * p2
    rho = np.sqrt(rho2)
    mask = rho <= a
    pb = p0 * b[0] + p1 * b[1] + p2 * b[2]
    safe = np.where(mask, 1.0, rho2)
    outside = chi / 2.0 * (a * a / safe) * (2.0 * pb * pb / safe - sin2_a)
    field = np.where(mask, chi / 6.0 * (3.0 * cos_a * cos_a - 1.0), outside)

    def inside(p):  # p in voxel coordinates
        d = (p - c) * vs
        d = d - (d @ u)[..., None] * u
        return (d * d).sum(axis=-1) <= a * a

    frac = _partial_volume(inside, rho, a, vs, s)
    return AnalyticPhantom(
        chi=(chi * frac).astype(dtype), field=field.astype(dtype), mask=mask
    )
