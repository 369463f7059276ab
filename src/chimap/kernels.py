"""Convolution kernels and finite-difference operators on anisotropic grids.

Every k-space kernel is sampled on the FFT grid ``fftfreq(n, d=voxel_size[ax])`` of each array
axis (cycles/mm), in the same order as the array axes, so voxel sizes and B0 direction are never
swapped between axes.

Dipole kernel and sign convention
---------------------------------
``D(k) = 1/3 - (k . b)^2 / |k|^2`` with ``b`` the unit B0 direction in voxel axes. The field in
ppm of B0 produced by a susceptibility distribution chi (ppm) is ``field = IFFT(D * FFT(chi))``.
The 1/3 term is the Lorentz-sphere correction. ``D(0)`` is undefined; chimap sets ``D(0) = 0``
by default, so a uniform susceptibility produces no field and every field has zero mean over the
(padded) grid. With phase ``= +2*pi*gamma_bar*B0*field*TE``, a paramagnetic (chi > 0) sphere
gives a positive field at its poles along B0 (``D = -2/3`` along b in k-space translates to
``+2/3 * chi * (a/r)^3`` on the b axis in image space) and a negative one on its equator.

Nyquist samples. On an axis of even length the sample at index ``n // 2`` stands for both
``+k_N`` and ``-k_N``; with B0 oblique to that axis ``D(+k_N, ...) != D(-k_N, ...)``, so a plain
evaluation gives a kernel that is not Hermitian on the grid: the real FFT pair then silently
symmetrises it in a way that depends on which axis is last, breaking the invariance to a joint
permutation of axes, voxel sizes and B0 direction. chimap therefore averages ``(k.b)^2`` over
the sign of every Nyquist component (which drops the cross terms):
``D = 1/3 - ((sum_regular k_i b_i)^2 + sum_Nyquist (k_i b_i)^2) / |k|^2``. It equals the plain
formula everywhere else and on the Nyquist samples when B0 is along a voxel axis, makes the
``real_fft`` half spectrum exactly the first half of the full kernel, and makes every operator
built on it real, self-adjoint and invariant to permuting or flipping voxel axes.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .geometry import check_b0_direction, check_voxel_size

__all__ = [
    "kspace_grid",
    "dipole_kernel",
    "smv_kernel",
    "sphere_mask",
    "laplacian_kernel",
    "gradient",
    "divergence",
    "laplacian",
    "fft_workers",
]


def fft_workers() -> int:
    """Number of worker threads chimap passes to ``scipy.fft`` (all CPUs available)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise ValueError(f"shape must have 3 positive entries, got {shape}")
    return shape


def kspace_grid(shape, voxel_size, *, real_fft: bool = False, dtype=np.float64):
    """Spatial frequencies (cycles/mm) of each axis, as broadcastable 1-D arrays.

    Parameters
    ----------
    shape : tuple of 3 int
        Array shape.
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm, one per array axis.
    real_fft : bool
        If True the last axis holds the ``rfftfreq`` half spectrum (for ``scipy.fft.rfftn``).
    dtype : numpy dtype
        Floating dtype of the returned arrays.

    Returns
    -------
    tuple of 3 numpy.ndarray
        ``k0`` of shape (n0, 1, 1), ``k1`` of shape (1, n1, 1), ``k2`` of shape (1, 1, m2).
    """
    shape = _check_shape(shape)
    vs = check_voxel_size(voxel_size)
    out = []
    for ax, (n, d) in enumerate(zip(shape, vs)):
        if real_fft and ax == 2:
            k = np.fft.rfftfreq(n, d=d)
        else:
            k = np.fft.fftfreq(n, d=d)
        view = [1, 1, 1]
        view[ax] = k.size
        out.append(k.astype(dtype).reshape(view))
    return tuple(out)


def dipole_kernel(shape, voxel_size, *, b0_direction=(0.0, 0.0, 1.0), real_fft=False,
                  dtype=np.float64, d0=0.0):
    """Unit dipole kernel in k-space, ``D(k) = 1/3 - (k.b)^2/|k|^2``.

    On the Nyquist samples of even-length axes ``(k.b)^2`` is averaged over the sign of the
    Nyquist components (module docstring), so the kernel is Hermitian on the grid.

    Parameters
    ----------
    shape : tuple of 3 int
        Shape of the (possibly padded) FFT grid.
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm.
    b0_direction : array_like, shape (3,)
        B0 direction in voxel axes (normalised here).
    real_fft : bool
        Return the half spectrum matching ``scipy.fft.rfftn`` (last axis ``n2 // 2 + 1``).
    dtype : numpy dtype
        float32 or float64.
    d0 : float
        Value at k = 0 (default 0: a uniform susceptibility creates no field).

    Returns
    -------
    numpy.ndarray
        Real array of shape ``shape`` (or the half spectrum), values in [-2/3, 1/3].
    """
    b = check_b0_direction(b0_direction)
    dtype = np.dtype(dtype).type
    shape = _check_shape(shape)
    ks = kspace_grid(shape, voxel_size, real_fft=real_fft, dtype=dtype)
    # Nyquist samples of even axes stand for both +k_N and -k_N: (k.b)^2 is averaged over the
    # sign of each Nyquist component, which removes the cross terms (see module docstring).
    kb = np.zeros((1, 1, 1), dtype=dtype)
    kb_nyq_sq = np.zeros((1, 1, 1), dtype=dtype)
    for ax, (k, n) in enumerate(zip(ks, shape)):
        kb_ax = k * dtype(b[ax])
        if n % 2 == 0 and n > 1:
            nyq = np.zeros(k.shape, dtype=bool)
            idx = [0, 0, 0]
            idx[ax] = k.size - 1 if (real_fft and ax == 2) else n // 2
            nyq[tuple(idx)] = True
            kb_nyq_sq = kb_nyq_sq + np.where(nyq, kb_ax * kb_ax, dtype(0))
            kb_ax = np.where(nyq, dtype(0), kb_ax)
        kb = kb + kb_ax
    k0, k1, k2 = ks
    k_sq = k0 * k0 + k1 * k1 + k2 * k2
    k_sq[0, 0, 0] = 1.0  # avoid 0/0; D(0) is set below
    d = dtype(1.0 / 3.0) - (kb * kb + kb_nyq_sq) / k_sq
    d[0, 0, 0] = d0
    return d.astype(dtype, copy=False)


def sphere_mask(shape, voxel_size, *, radius, center=None) -> np.ndarray:
    """Boolean ball of ``radius`` mm around ``center`` (voxel coordinates; default the grid centre)."""
    shape = _check_shape(shape)
    vs = check_voxel_size(voxel_size)
    c = (np.asarray(shape) - 1) / 2.0 if center is None else np.asarray(center, dtype=np.float64)
    axes = [((np.arange(n) - c[ax]) * vs[ax]) ** 2 for ax, n in enumerate(shape)]
    r2 = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
    return r2 <= float(radius) ** 2


def smv_kernel(shape, voxel_size, *, radius, real_fft=False, dtype=np.float64):
    """Spherical mean value kernel in k-space for a sphere of ``radius`` mm.

    The sphere is sampled at voxel centres on the (anisotropic) grid, normalised to unit sum and
    centred at voxel (0, 0, 0) with periodic wrap, so ``IFFT(S * FFT(x))`` is the mean of ``x``
    over the sphere around each voxel. ``S(0) = 1``; a harmonic function is left unchanged
    (apart from discretisation), so ``1 - S`` annihilates harmonic background fields.

    Raises
    ------
    ValueError
        If the radius is smaller than half the smallest voxel (the sphere would be one voxel).
    """
    shape = _check_shape(shape)
    vs = check_voxel_size(voxel_size)
    radius = float(radius)
    if radius < 0.5 * vs.min():
        raise ValueError(f"SMV radius {radius} mm is below half a voxel ({vs.min()} mm voxels)")
    axes = []
    for n, d in zip(shape, vs):
        idx = np.arange(n)
        idx = np.where(idx > n // 2, idx - n, idx)  # signed offsets with wrap
        axes.append((idx * d) ** 2)
    r2 = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
    ball = (r2 <= radius * radius).astype(np.float64)
    ball /= ball.sum()
    if real_fft:
        s = sfft.rfftn(ball, workers=fft_workers()).real
    else:
        s = sfft.fftn(ball, workers=fft_workers()).real
    return s.astype(dtype)


def laplacian_kernel(shape, voxel_size, *, real_fft=False, dtype=np.float64):
    """k-space symbol of the periodic 7-point discrete Laplacian (1/mm^2), ``<= 0`` everywhere."""
    shape = _check_shape(shape)
    vs = check_voxel_size(voxel_size)
    out = np.zeros((1, 1, 1), dtype=dtype)
    for ax, (n, d) in enumerate(zip(shape, vs)):
        m = n // 2 + 1 if (real_fft and ax == 2) else n
        k = np.arange(m)
        lap = (2.0 * np.cos(2.0 * np.pi * k / n) - 2.0) / (d * d)
        view = [1, 1, 1]
        view[ax] = m
        out = out + lap.astype(dtype).reshape(view)
    return out


def gradient(x, voxel_size) -> np.ndarray:
    """Forward-difference gradient, zero at the last index of each axis (Neumann boundary).

    Parameters
    ----------
    x : numpy.ndarray, shape (I, J, K)
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm; differences are divided by them (units of x per mm).

    Returns
    -------
    numpy.ndarray, shape (I, J, K, 3)
        Same dtype as ``x`` (float64 for integer input).
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"gradient expects a 3-D array, got shape {x.shape}")
    vs = check_voxel_size(voxel_size)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    g = np.zeros(x.shape + (3,), dtype=dtype)
    for ax in range(3):
        n = x.shape[ax]
        if n < 2:
            continue
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[ax] = slice(1, None)
        lo[ax] = slice(0, -1)
        g[(*lo, ax)] = (x[tuple(hi)] - x[tuple(lo)]) / dtype.type(vs[ax])
    return g


def divergence(g, voxel_size) -> np.ndarray:
    """Discrete divergence, the negative adjoint of :func:`gradient`: ``<grad x, g> = -<x, div g>``.

    Parameters
    ----------
    g : numpy.ndarray, shape (I, J, K, 3)
    voxel_size : array_like, shape (3,)

    Returns
    -------
    numpy.ndarray, shape (I, J, K)
    """
    g = np.asarray(g)
    if g.ndim != 4 or g.shape[-1] != 3:
        raise ValueError(f"divergence expects shape (I, J, K, 3), got {g.shape}")
    vs = check_voxel_size(voxel_size)
    dtype = g.dtype if np.issubdtype(g.dtype, np.floating) else np.dtype(np.float64)
    out = np.zeros(g.shape[:3], dtype=dtype)
    for ax in range(3):
        if g.shape[ax] < 2:
            # gradient() is identically zero along a length-1 axis, so its adjoint ignores
            # that component (otherwise <grad x, g> = -<x, div g> fails).
            continue
        gi = g[..., ax]
        d = np.zeros(g.shape[:3], dtype=dtype)
        sl = [slice(None)] * 3
        # interior: g[i] - g[i-1]; first: g[0]; last: -g[n-2]
        first = list(sl)
        first[ax] = slice(0, 1)
        d[tuple(first)] = gi[tuple(first)]
        mid_out = list(sl)
        mid_out[ax] = slice(1, -1)
        mid_a = list(sl)
        mid_a[ax] = slice(1, -1)
        mid_b = list(sl)
        mid_b[ax] = slice(0, -2)
        d[tuple(mid_out)] = gi[tuple(mid_a)] - gi[tuple(mid_b)]
        last = list(sl)
        last[ax] = slice(-1, None)
        prev = list(sl)
        prev[ax] = slice(-2, -1)
        d[tuple(last)] = -gi[tuple(prev)]
        out += d / dtype.type(vs[ax])
    return out


def laplacian(x, voxel_size) -> np.ndarray:
    """7-point Laplacian with replicate (Neumann) boundary, ``divergence(gradient(x))`` (1/mm^2)."""
    return divergence(gradient(x, voxel_size), voxel_size)
