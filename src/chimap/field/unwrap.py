"""Phase unwrapping: Laplacian-based, quality-guided region growing (ROMEO-like) and temporal.

All phases are in radians, arrays in storage order ``(I, J, K)`` (echoes last, ``(I, J, K, E)``),
voxel sizes in mm, echo times in seconds. Inputs are never modified; float32 in gives float32 out
(integer input gives float64).

Three families, with different guarantees:

- :func:`unwrap_laplacian` (Schofield & Zhu, Opt. Lett. 2003; Li et al., NeuroImage 2011) solves a
  Poisson equation for the Laplacian of the true phase. It is fast and robust to noise but its
  output is **not** congruent with the input (``out - phase`` is not a multiple of 2*pi): it is the
  true phase up to a constant and a smooth (harmonic) deviation, which background-field removal
  usually absorbs. The 2024 QSM consensus recommends exact unwrapping instead.
- :func:`unwrap_region_growing` is a quality-guided path-following ("region growing") unwrapper in
  the spirit of ROMEO (Dymerska et al., MRM 2021;85:2294). Its output is exactly the input plus an
  integer multiple of 2*pi in every voxel.
- :func:`unwrap_temporal` unwraps one echo of a multi-echo series spatially and the others in time,
  from the echo-time ratio (ROMEO's temporal unwrapping). Congruent with the input as well.

Sign convention: ``phase = +2*pi*gamma_bar*B0*field*TE (+ offset)`` (:mod:`chimap.units`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft
from numba import njit

from ..geometry import check_voxel_size
from ..kernels import fft_workers, laplacian_kernel
from ..units import check_echo_times

__all__ = ["unalias_field", "unwrap_complex_guided", "unwrap_laplacian", "unwrap_region_growing", "unwrap_temporal", "wrap"]

_TWO_PI = 2.0 * np.pi
_NBINS = 256  # edge-quality levels of the bucket queue; level 0 means "no edge"


def wrap(x):
    """Wrap angles to the interval (-pi, pi].

    Parameters
    ----------
    x : array_like
        Angles in radians, any shape.

    Returns
    -------
    numpy.ndarray or numpy scalar
        ``x - 2*pi*ceil((x - pi) / (2*pi))``; same dtype as a floating input (float64 for integer
        input). ``wrap(pi) == pi`` and ``wrap(-pi) == pi``. A new array.
    """
    x = np.asarray(x)
    if np.iscomplexobj(x):
        raise ValueError("wrap expects real angles in radians; use numpy.angle for complex data")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    xf = x.astype(dtype, copy=False)
    two_pi, pi = dtype.type(_TWO_PI), dtype.type(np.pi)
    out = xf - two_pi * np.ceil((xf - pi) / two_pi)
    # rounding of the subtraction can land a hair outside the interval: fold it back
    out = np.where(out > pi, out - two_pi, out)
    out = np.where(out <= -pi, out + two_pi, out)
    return out[()] if out.ndim == 0 else out.astype(dtype, copy=False)


# --------------------------------------------------------------------------- input checks


def _check_phase(phase, name="phase", ndim=3):
    p = np.asarray(phase)
    if np.iscomplexobj(p):
        raise ValueError(f"{name} must be real phase in radians, not complex; use numpy.angle(signal)")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"{name} must be a real numeric array (radians), got dtype {p.dtype}")
    if p.ndim != ndim:
        hint = ""
        if ndim == 3 and p.ndim == 4:
            hint = " (for multi-echo data (I, J, K, E) use unwrap_temporal or pass one echo, phase[..., e])"
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {p.shape}{hint}")
    if min(p.shape) < 1:
        raise ValueError(f"{name} is empty, shape {p.shape}")
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.dtype(np.float64)
    return p, out_dtype


def _check_mask(mask, shape):
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"mask shape {m.shape} does not match the phase's spatial shape {tuple(shape)}")
    if m.dtype != bool:
        if not np.all(np.isin(m, (0, 1))):
            raise ValueError("mask must be boolean (or 0/1)")
        m = m.astype(bool)
    if not m.any():
        raise ValueError("mask is empty: there is nothing to unwrap")
    return m


def _check_finite(a, mask, name):
    bad = ~np.isfinite(a) & mask
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite (NaN/inf) voxels inside the mask; "
            "exclude them from the mask (e.g. mask & numpy.isfinite(phase))"
        )


def _check_aux(a, shape, mask, name, *, nonnegative=False):
    """Validate an optional (I, J, K) companion array; returns a float64 copy with 0 outside mask."""
    if a is None:
        return None
    a = np.asarray(a)
    if np.iscomplexobj(a) or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} shape {a.shape} does not match the phase's spatial shape {tuple(shape)}")
    _check_finite(a, mask, name)
    out = np.where(mask, a, 0).astype(np.float64)
    if nonnegative and np.any(out < 0):
        raise ValueError(f"{name} must be non-negative inside the mask")
    return out


# --------------------------------------------------------------------------- Laplacian unwrapping


def _wrapped_laplacian(p, mask, vs, formula):
    """7-point Laplacian of the true phase from wrapped differences, Neumann at the mask boundary."""
    lap = np.zeros(p.shape, dtype=np.float64)
    for ax in range(3):
        if p.shape[ax] < 2:
            continue
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        d = p[hi] - p[lo]
        g = np.sin(d) if formula == "sincos" else wrap(d)
        g *= mask[hi] & mask[lo]
        g /= vs[ax] ** 2
        lap[lo] += g
        lap[hi] -= g
    return lap


def _poisson_neumann(f, vs):
    """Solve the 7-point Laplacian with replicate boundary (mirror extension) exactly via the DCT-II."""
    sym = np.zeros((1, 1, 1))
    for ax, (n, d) in enumerate(zip(f.shape, vs)):
        view = [1, 1, 1]
        view[ax] = n
        sym = sym + ((2.0 * np.cos(np.pi * np.arange(n) / n) - 2.0) / d**2).reshape(view)
    sym[0, 0, 0] = 1.0
    c = sfft.dctn(f, type=2, norm="ortho", workers=fft_workers())
    c /= sym
    c[0, 0, 0] = 0.0
    return sfft.idctn(c, type=2, norm="ortho", workers=fft_workers())


def _poisson_zero_padded(f, vs, pad_width):
    shape = tuple(n + 2 * w for n, w in zip(f.shape, pad_width))
    fp = np.zeros(shape)
    fp[tuple(slice(w, w + n) for n, w in zip(f.shape, pad_width))] = f
    k = laplacian_kernel(shape, vs, real_fft=True)
    k[0, 0, 0] = 1.0
    F = sfft.rfftn(fp, workers=fft_workers())
    F /= k
    F[0, 0, 0] = 0.0
    u = sfft.irfftn(F, s=shape, workers=fft_workers())
    return u[tuple(slice(w, w + n) for n, w in zip(f.shape, pad_width))]


def unwrap_laplacian(phase, mask, voxel_size, *, pad="mirror", pad_width=None, formula="wrapped",
                     iterations=10, tol=1e-3):
    """Laplacian-based phase unwrapping (Schofield & Zhu 2003; Li et al. 2011).

    The Laplacian of the true phase follows from the wrapped phase as
    ``cos(phi) * lap(sin(phi)) - sin(phi) * lap(cos(phi))``; with the 7-point stencil this equals
    ``sum_n sin(phi_n - phi_0) / h_n**2`` over the six neighbours (``formula='sincos'``).
    ``formula='wrapped'`` (default) uses ``wrap(phi_n - phi_0)`` instead (the unweighted least-squares
    unwrapping of Ghiglia & Romero), which does not shrink large gradients. Only neighbour pairs
    inside ``mask`` contribute (Neumann boundary at the mask edge). The Poisson equation is then
    inverted on the physical grid (discrete Laplacian symbol divided by the voxel sizes squared).

    Parameters
    ----------
    phase : array_like, shape (I, J, K)
        Wrapped phase in radians.
    mask : array_like of bool, shape (I, J, K), or None
        Region to unwrap; None uses every voxel.
    voxel_size : float or array_like, shape (3,)
        Voxel sizes in mm.
    pad : {'mirror', 'zero'}
        ``'mirror'`` (default): mirror-extended grid, i.e. the exact inverse of the 7-point
        Laplacian with replicate boundary, computed with a DCT (no extra memory).
        ``'zero'``: periodic FFT solve on a grid zero-padded by ``pad_width`` voxels per side.
    pad_width : int or sequence of 3 int, optional
        Zero padding per side for ``pad='zero'`` (default: half of each axis length).
    formula : {'wrapped', 'sincos'}
        Laplacian estimate, see above.
    iterations : int
        With a mask, the box solve does not invert the mask-restricted Laplacian exactly; up to
        this many preconditioned conjugate-gradient steps (the box solve as preconditioner)
        solve the masked Poisson problem. 0 gives the classic single box solve. Skipped where
        the mirror solve is already exact (mask None or covering the whole grid).
    tol : float
        Relative residual at which the conjugate-gradient refinement stops.

    Returns
    -------
    numpy.ndarray, shape (I, J, K)
        Unwrapped phase in radians, dtype of ``phase``; 0 outside ``mask``. **Not congruent with
        the input**: it approximates the true phase up to a constant and a smooth harmonic
        deviation (largest near the mask boundary and where the phase is noisy or has
        gradients near pi per voxel). The free constant is chosen so that the output is
        circularly closest to the input inside the mask (``mean(exp(1j*(phase - out)))`` real and
        positive).

    Raises
    ------
    ValueError
        For complex or non-3-D phase, a mask of another shape or empty, non-finite phase inside
        the mask, invalid voxel sizes, or unknown ``pad`` / ``formula``.
    """
    p, out_dtype = _check_phase(phase)
    m = _check_mask(mask, p.shape)
    vs = check_voxel_size(voxel_size)
    _check_finite(p, m, "phase")
    if pad not in ("mirror", "zero"):
        raise ValueError(f"pad must be 'mirror' or 'zero', got {pad!r}")
    if formula not in ("sincos", "wrapped"):
        raise ValueError(f"formula must be 'sincos' or 'wrapped', got {formula!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    p64 = np.where(m, p, 0).astype(np.float64)
    f = _wrapped_laplacian(p64, m, vs, formula)
    if pad == "mirror":
        def solve(r):
            return _poisson_neumann(r, vs)
    else:
        if pad_width is None:
            pw = tuple(n // 2 for n in p.shape)
        else:
            pw = tuple(int(w) for w in np.broadcast_to(np.asarray(pad_width), (3,)))
            if any(w < 0 for w in pw):
                raise ValueError(f"pad_width must be non-negative, got {pw}")

        def solve(r):
            return _poisson_zero_padded(r, vs, pw)
    if iterations == 0 or (pad == "mirror" and m.all()):
        u = solve(f)
    else:
        u = _pcg_masked_poisson(f, m, vs, solve, iterations, tol)
    c = np.angle(np.sum(np.exp(1j * (p64[m] - u[m]))))
    u += c
    u[~m] = 0.0
    return u.astype(out_dtype)


def _masked_laplacian(u, m, vs):
    out = np.zeros_like(u)
    for ax in range(3):
        if u.shape[ax] < 2:
            continue
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        g = (u[hi] - u[lo]) * (m[hi] & m[lo]) / vs[ax] ** 2
        out[lo] += g
        out[hi] -= g
    return out * m


def _pcg_masked_poisson(f, m, vs, solve, iterations, tol):
    """Solve ``L_mask u = f`` in the mask by CG on ``-L_mask`` preconditioned with the box solve."""
    b = -f * m
    bnorm = np.linalg.norm(b)
    u = np.zeros_like(b)
    if bnorm == 0:
        return u

    def precond(r):
        z = -solve(r) * m
        z[m] -= z[m].mean()
        return z

    r = b.copy()
    z = precond(r)
    d = z.copy()
    rz = np.vdot(r, z)
    for _ in range(iterations):
        ad = -_masked_laplacian(d, m, vs)
        dad = np.vdot(d, ad)
        if dad <= 0:
            break
        a = rz / dad
        u += a * d
        r -= a * ad
        if np.linalg.norm(r) <= tol * bnorm:
            break
        z = precond(r)
        rz_new = np.vdot(r, z)
        d = z + (rz_new / rz) * d
        rz = rz_new
    return u


# --------------------------------------------------------------------------- region growing (numba)


@njit(cache=True, inline="always")
def _wrap_scalar(x):
    return x - 2.0 * np.pi * math.floor((x + np.pi) / (2.0 * np.pi))


@njit(cache=True)
def _edge_weights(phase, mask, mag, use_mag, maxmag, gref, gscale, use_gref):
    """Quantised quality (1..255, 0 = no edge) of the forward edge of every voxel along each axis."""
    ni, nj, nk = phase.shape
    w = np.zeros((ni * nj * nk, 3), np.uint8)
    for i in range(ni):
        for j in range(nj):
            for k in range(nk):
                if not mask[i, j, k]:
                    continue
                v = (i * nj + j) * nk + k
                for a in range(3):
                    i2, j2, k2 = i, j, k
                    if a == 0:
                        i2 += 1
                    elif a == 1:
                        j2 += 1
                    else:
                        k2 += 1
                    if i2 >= ni or j2 >= nj or k2 >= nk or not mask[i2, j2, k2]:
                        continue
                    d = _wrap_scalar(phase[i2, j2, k2] - phase[i, j, k])
                    wt = 0.1 + 0.9 * (1.0 - abs(d) / np.pi)  # phase coherence
                    if use_gref:  # phase-gradient coherence with a reference / second echo
                        dg = _wrap_scalar(gref[i2, j2, k2] - gref[i, j, k]) * gscale
                        wt *= 0.1 + 0.9 * max(0.0, 1.0 - abs(d - dg))
                    if use_mag:
                        m1 = mag[i, j, k]
                        m2 = mag[i2, j2, k2]
                        small = min(m1, m2)
                        big = max(m1, m2)
                        coh = (small / big) ** 2 if big > 0 else 0.0  # magnitude coherence
                        wt *= 0.1 + 0.9 * coh
                        mw = 0.5 + 0.5 * min(1.0, small / (0.5 * maxmag)) if maxmag > 0 else 1.0
                        wt *= 0.1 + 0.9 * mw  # magnitude weight
                    w[v, a] = min(255, 1 + int(wt * 254.0))
    return w


@njit(cache=True)
def _quality_order(w, mask_flat, strides):
    """Mask voxels sorted by decreasing summed quality of their edges (counting sort)."""
    n = mask_flat.size
    q = np.zeros(n, np.int64)
    for v in range(n):
        for a in range(3):
            b = w[v, a]
            if b > 0:
                q[v] += b
                q[v + strides[a]] += b
    qmax = 6 * 255
    hist = np.zeros(qmax + 2, np.int64)
    count = 0
    for v in range(n):
        if mask_flat[v]:
            hist[qmax - q[v]] += 1
            count += 1
    start = np.zeros(qmax + 2, np.int64)
    acc = 0
    for b in range(qmax + 2):
        start[b] = acc
        acc += hist[b]
    order = np.empty(count, np.int64)
    for v in range(n):
        if mask_flat[v]:
            b = qmax - q[v]
            order[start[b]] = v
            start[b] += 1
    return order


@njit(cache=True, inline="always")
def _push(v, top, w, labels, strides, store, offsets, fill):
    nk = strides[1]
    i = v // strides[0]
    r = v - i * strides[0]
    j = r // nk
    k = r - j * nk
    coords = (i, j, k)
    for a in range(3):
        s = strides[a]
        b = w[v, a]  # forward edge: v -> v + s
        if b > 0 and labels[v + s] == 0:
            store[offsets[b] + fill[b]] = v * 6 + a
            fill[b] += 1
            top = max(top, b)
        if coords[a] > 0:  # backward edge: v -> v - s
            b = w[v - s, a]
            if b > 0 and labels[v - s] == 0:
                store[offsets[b] + fill[b]] = v * 6 + 3 + a
                fill[b] += 1
                top = max(top, b)
    return top


@njit(cache=True)
def _grow(phase_flat, w, shape, order, first_seed):
    """Grow from seeds along edges of decreasing quality (bucket queue); returns (k, labels)."""
    ni, nj, nk = shape
    n = ni * nj * nk
    strides = (nj * nk, nk, 1)
    counts = np.zeros(_NBINS, np.int64)
    for v in range(n):
        for a in range(3):
            counts[w[v, a]] += 1
    counts[0] = 0
    offsets = np.zeros(_NBINS, np.int64)
    acc = 0
    for b in range(_NBINS):
        offsets[b] = acc
        acc += counts[b]
    store = np.empty(acc, np.int64)  # every undirected edge enters the queue at most once
    fill = np.zeros(_NBINS, np.int64)
    kk = np.zeros(n, np.int32)
    labels = np.zeros(n, np.int32)
    two_pi = 2.0 * np.pi
    ncomp = 0
    ptr = 0
    while True:
        seed = -1
        if ncomp == 0 and first_seed >= 0:
            seed = first_seed
        else:
            while ptr < order.size:
                c = order[ptr]
                ptr += 1
                if labels[c] == 0:
                    seed = c
                    break
        if seed < 0:
            break
        ncomp += 1
        labels[seed] = ncomp
        top = _push(seed, 0, w, labels, strides, store, offsets, fill)
        while True:
            while top > 0 and fill[top] == 0:
                top -= 1
            if top == 0:
                break
            fill[top] -= 1
            e = store[offsets[top] + fill[top]]
            v = e // 6
            d = e - v * 6
            nb = v + strides[d] if d < 3 else v - strides[d - 3]
            if labels[nb] != 0:
                continue
            ref = phase_flat[v] + two_pi * kk[v]
            kk[nb] = np.int32(math.floor((ref - phase_flat[nb]) / two_pi + 0.5))
            labels[nb] = ncomp
            top = _push(nb, top, w, labels, strides, store, offsets, fill)
    return kk, labels


def _component_shifts(values, labels, ref_per_voxel):
    """Integer 2*pi shift per component (index = label) aligning its median to a reference."""
    lab = labels[labels > 0]
    ncomp = int(lab.max()) if lab.size else 0
    shifts = np.zeros(ncomp + 1, dtype=np.int64)
    if ncomp == 0:
        return shifts
    vals = values[labels > 0]
    if ref_per_voxel is not None:
        vals = vals - ref_per_voxel[labels > 0]
    order = np.argsort(lab, kind="stable")
    lab_s, vals_s = lab[order], vals[order]
    bounds = np.searchsorted(lab_s, np.arange(1, ncomp + 2))
    medians = np.array([np.median(vals_s[bounds[c]:bounds[c + 1]]) for c in range(ncomp)])
    if ref_per_voxel is not None:
        shifts[1:] = -np.round(medians / _TWO_PI).astype(np.int64)
    else:
        sizes = np.diff(bounds)
        largest = int(np.argmax(sizes))
        shifts[1:] = -np.round((medians - medians[largest]) / _TWO_PI).astype(np.int64)
    return shifts


def _region_grow_k(p64, m, *, mag=None, gref=None, gscale=1.0, seed="quality", align_components=True,
                   template=None, correct_global=False):
    """Integer wrap counts k (int64, 0 outside the mask) such that p64 + 2*pi*k is unwrapped."""
    shape = p64.shape
    use_mag = mag is not None
    maxmag = float(np.percentile(mag[m], 95)) if use_mag else 0.0
    magc = np.ascontiguousarray(mag) if use_mag else np.zeros((1, 1, 1))
    use_gref = gref is not None
    grefc = np.ascontiguousarray(gref) if use_gref else np.zeros((1, 1, 1))
    pc = np.ascontiguousarray(p64)
    mc = np.ascontiguousarray(m)
    w = _edge_weights(pc, mc, magc, use_mag, maxmag, grefc, float(gscale), use_gref)
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    order = _quality_order(w, mc.ravel(), strides)
    first = -1
    if isinstance(seed, str):
        if seed == "center":
            idx = np.argwhere(m)
            com = idx.mean(axis=0)
            first = int(np.ravel_multi_index(tuple(idx[np.argmin(((idx - com) ** 2).sum(axis=1))]), shape))
        elif seed != "quality":
            raise ValueError(f"seed must be 'quality', 'center' or a voxel index (i, j, k), got {seed!r}")
    else:
        s = tuple(int(x) for x in np.asarray(seed).ravel())
        if len(s) != 3 or any(not 0 <= x < n for x, n in zip(s, shape)) or not m[s]:
            raise ValueError(f"seed {seed!r} must be a voxel index (i, j, k) inside the mask")
        first = int(np.ravel_multi_index(s, shape))
    k, labels = _grow(pc.ravel(), w, (int(shape[0]), int(shape[1]), int(shape[2])), order, first)
    k = k.astype(np.int64)
    if align_components and labels.max() > (0 if template is not None else 1):
        vals = pc.ravel() + _TWO_PI * k
        shifts = _component_shifts(vals, labels, None if template is None else template.ravel())
        k += shifts[labels]
    if correct_global:
        med = np.median(pc.ravel()[mc.ravel()] + _TWO_PI * k[mc.ravel()])
        k -= int(np.round(med / _TWO_PI))
    k[~mc.ravel()] = 0
    return k.reshape(shape)


def unwrap_region_growing(phase, mask, voxel_size, *, magnitude=None, template=None, seed="quality",
                          align_components=True, correct_global=False):
    """Quality-guided region-growing phase unwrapping, in the spirit of ROMEO.

    Every pair of face neighbours inside the mask is an edge with a quality in (0, 1], the
    product of ROMEO's factors ``0.1 + 0.9 * c`` for: phase coherence ``c = 1 - |wrap(dphi)|/pi``;
    with ``template``, phase-gradient coherence ``c = max(0, 1 - |wrap(dphi) - wrap(dT)|)``;
    with ``magnitude``, magnitude coherence ``c = (min/max)**2`` and magnitude weight
    ``c = 0.5 + 0.5*min(1, min / (0.5 * m95))`` (``m95``: 95th percentile of the magnitude in
    the mask). Qualities are quantised to 255 levels. Growing starts at a seed and repeatedly
    takes the best edge from a bucket queue whose far voxel is not yet unwrapped, giving it
    ``neighbour + wrap(phase_new - phase_neighbour)``. When the queue runs dry, the next seed is
    the best-connected voxel not yet reached, so every disconnected component (and isolated
    voxel) gets its own seed. Implemented in numba: about 0.3 s for a 160^3 volume (one core).

    Parameters
    ----------
    phase : array_like, shape (I, J, K)
        Wrapped phase in radians (any range; wrapped differences are used).
    mask : array_like of bool, shape (I, J, K), or None
        Region to unwrap; None uses every voxel.
    voxel_size : float or array_like, shape (3,)
        Voxel sizes in mm. Validated only: edge qualities are per edge, so anisotropy enters
        through the larger phase differences along the coarser axes.
    magnitude : array_like, shape (I, J, K), optional
        Magnitude (any units, >= 0) for the magnitude terms of the quality.
    template : array_like, shape (I, J, K), optional
        A phase (rad) predicting this one, e.g. the unwrapped previous echo scaled by the ratio
        of echo times, or the same echo of an earlier frame. Its wrapped gradients add the
        phase-gradient coherence term, and (with ``align_components``) every component is
        shifted by the 2*pi multiple that brings its median closest to the template.
    seed : {'quality', 'center'} or tuple of 3 int
        First seed: the voxel whose edges have the highest summed quality (default), the mask
        voxel nearest the mask's centre of mass, or an explicit voxel index inside the mask.
    align_components : bool
        Shift every disconnected component by a global 2*pi multiple: towards the template if
        given, else so its median is within pi of the median of the largest component. This
        assumes the true phase does not jump by more than pi between components.
    correct_global : bool
        Finally shift everything by the 2*pi multiple that puts the median inside the mask into
        (-pi, pi] (reasonable for a short echo after phase-offset removal).

    Returns
    -------
    numpy.ndarray, shape (I, J, K)
        Unwrapped phase in radians, dtype of ``phase``. Inside the mask it equals
        ``phase + 2*pi*k`` with an integer ``k`` per voxel (to floating-point rounding); outside
        the mask the input is returned unchanged (``k = 0``). The global 2*pi multiple is set by
        the seed (``k = 0`` there) unless ``align_components`` / ``correct_global`` change it.

    Raises
    ------
    ValueError
        For complex or non-3-D phase (a 4-D array gets a hint), shape mismatches, an empty mask,
        non-finite values inside the mask, negative magnitude, an invalid seed or voxel size.
    """
    p, out_dtype = _check_phase(phase)
    m = _check_mask(mask, p.shape)
    check_voxel_size(voxel_size)
    _check_finite(p, m, "phase")
    mag = _check_aux(magnitude, p.shape, m, "magnitude", nonnegative=True)
    tpl = _check_aux(template, p.shape, m, "template")
    p64 = np.where(m, p, 0).astype(np.float64)
    k = _region_grow_k(p64, m, mag=mag, gref=tpl, gscale=1.0, seed=seed, align_components=align_components,
                       template=tpl, correct_global=correct_global)
    return (p + (_TWO_PI * k).astype(out_dtype)).astype(out_dtype)


# --------------------------------------------------------------------------- temporal unwrapping


def unwrap_temporal(phases, mask, voxel_size, *, echo_times, magnitude=None, template_echo="auto",
                    phase_offset=None, seed="quality"):
    """Multi-echo unwrapping: one echo spatially (region growing), the others from the TE ratio.

    ROMEO's temporal unwrapping. The template echo ``t`` is unwrapped with
    :func:`unwrap_region_growing` (magnitude terms from its magnitude; phase-gradient coherence
    with a neighbouring echo scaled by the TE ratio). Its global 2*pi multiple is then fixed: the
    median inside the mask goes to (-pi, pi], and where the TE ratios tell (non-integer ratios),
    the multiple that makes the other echoes most consistent with ``phi_e = phi_t * TE_e / TE_t``
    is taken. Every other echo ``e`` then becomes
    ``phi_e + 2*pi*round((phi_t_unwrapped * TE_e/TE_t - phi_e) / (2*pi))`` voxel by voxel.

    The prediction assumes phase proportional to TE, i.e. **the phase offset (receiver phase at
    TE = 0) has been removed** by the caller, or is given as ``phase_offset``: it is then
    subtracted before unwrapping and, since only integer multiples of 2*pi are added, is still
    contained in the output. Bipolar readouts need their odd/even echo correction beforehand.

    Parameters
    ----------
    phases : array_like, shape (I, J, K, E)
        Wrapped phase per echo in radians.
    mask : array_like of bool, shape (I, J, K), or None
        Region to unwrap; None uses every voxel.
    voxel_size : float or array_like, shape (3,)
        Voxel sizes in mm.
    echo_times : array_like, shape (E,)
        Echo times in seconds, one per echo.
    magnitude : array_like, shape (I, J, K, E) or (I, J, K), optional
        Magnitude; the template echo's is used for the spatial step.
    template_echo : int or "auto"
        Index of the echo unwrapped spatially. ``"auto"`` (default): the second echo when
        there are two or more, else the first. The later echoes are predicted as
        ``phi_t * TE_e / TE_t``, so any error of the template (noise, a residual phase offset)
        is multiplied by ``TE_e / TE_t``; from the first of four echoes (5 ... 26 ms) that is up
        to 5.2 and wrapped 2 % of the brain wrongly on the QSM challenge 2.0 head model (NRMSE
        170 % instead of 41 % after the full pipeline), from the second at most 2.2.
    phase_offset : array_like, shape (I, J, K), optional
        Phase offset in radians, subtracted before unwrapping (see above).
    seed : {'quality', 'center'} or tuple of 3 int
        Seed of the spatial step, see :func:`unwrap_region_growing`.

    Returns
    -------
    numpy.ndarray, shape (I, J, K, E)
        Unwrapped phases in radians, dtype of ``phases``; ``phases + 2*pi*k`` with integer ``k``
        inside the mask, unchanged outside. If ``phase_offset`` is given, it is still included:
        subtract it to get ``2*pi*gamma_bar*B0*field*TE``.

    Raises
    ------
    ValueError
        For non-4-D phases, echo times that do not match the echo axis (or in ms), a bad
        template index, shape mismatches, or non-finite values inside the mask.
    """
    p, out_dtype = _check_phase(phases, "phases", ndim=4)
    n_echoes = p.shape[-1]
    tes = check_echo_times(echo_times, n_echoes)
    spatial = p.shape[:3]
    m = _check_mask(mask, spatial)
    check_voxel_size(voxel_size)
    if isinstance(template_echo, str) and template_echo == "auto":
        template_echo = 1 if n_echoes >= 2 else 0
    if isinstance(template_echo, bool) or not isinstance(template_echo, (int, np.integer)) \
            or not -n_echoes <= template_echo < n_echoes:
        raise ValueError(f"template_echo must be \"auto\" or an echo index in [0, {n_echoes}), got {template_echo!r}")
    t = int(template_echo) % n_echoes
    _check_finite(p, m[..., None], "phases")
    mag = None
    if magnitude is not None:
        ma = np.asarray(magnitude)
        if ma.shape == p.shape:
            ma = ma[..., t]
        elif ma.shape != spatial:
            raise ValueError(f"magnitude shape {ma.shape} matches neither the phases {p.shape} nor {spatial}")
        mag = _check_aux(ma, spatial, m, "magnitude", nonnegative=True)
    off = _check_aux(phase_offset, spatial, m, "phase_offset")
    q = np.where(m[..., None], p, 0).astype(np.float64)
    if off is not None:
        q -= off[..., None]
    gref, gscale = None, 1.0
    if n_echoes > 1:
        e2 = t + 1 if t + 1 < n_echoes else t - 1
        gref, gscale = q[..., e2], tes[t] / tes[e2]
    k = np.zeros(p.shape, dtype=np.int64)
    k[..., t] = _region_grow_k(q[..., t], m, mag=mag, gref=gref, gscale=gscale, seed=seed,
                               align_components=True, correct_global=True)
    ut = q[..., t] + _TWO_PI * k[..., t]
    ratios = tes / tes[t]
    others = [e for e in range(n_echoes) if e != t]
    if others:
        k[..., t] += _global_consistency_shift(ut[m], q[m][:, others], ratios[others])
        ut = q[..., t] + _TWO_PI * k[..., t]
        for e in others:
            pred = ut * ratios[e]
            k[..., e] = np.round((pred - q[..., e]) / _TWO_PI).astype(np.int64)
    k[~m] = 0
    return (p + (_TWO_PI * k).astype(out_dtype)).astype(out_dtype)


def _global_consistency_shift(ut, qe, ratios, max_shift=4, max_voxels=200_000):
    """Integer n minimising the temporal misfit of the other echoes for template ``ut + 2*pi*n``.

    With integer TE ratios every n fits equally well and 0 is kept.
    """
    if ut.size > max_voxels:
        step = int(np.ceil(ut.size / max_voxels))
        ut, qe = ut[::step], qe[::step]
    costs = []
    for n in range(-max_shift, max_shift + 1):
        r = wrap((ut[:, None] + _TWO_PI * n) * ratios[None, :] - qe)
        costs.append(np.mean(r * r) + 1e-6 * abs(n))
    return int(np.argmin(costs)) - max_shift


def unalias_field(field_hz, mask, voxel_size, *, echo_times, magnitude=None):
    """Undo the ``1 / dTE`` aliasing of a field fitted from wrapped multi-echo phase.

    A complex fit (:func:`chimap.field.combine.fit_field_complex`) knows the frequency only
    modulo ``1 / dTE`` (``dTE`` the smallest echo spacing). The phase ``2 pi f dTE`` is
    unwrapped spatially (:func:`unwrap_region_growing`): it wraps far less often than any echo.

    Parameters
    ----------
    field_hz : array_like, shape (I, J, K)
        Fitted (aliased) field in Hz.
    mask : array_like of bool, shape (I, J, K)
    voxel_size : float or array_like, shape (3,)
        mm.
    echo_times : array_like, shape (E,)
        Seconds, E >= 2.
    magnitude : array_like, shape (I, J, K), optional
        Magnitude guiding the region growing.

    Returns
    -------
    numpy.ndarray of float64, shape (I, J, K)
        The field in Hz, differing from ``field_hz`` by whole multiples of ``1 / dTE``.
    """
    tes = np.asarray(echo_times, dtype=np.float64)
    if tes.size < 2:
        raise ValueError("unaliasing a fitted field needs at least two echo times")
    dte = float(np.min(np.diff(np.sort(tes))))
    cycles = _TWO_PI * np.asarray(field_hz, np.float64) * dte
    return unwrap_region_growing(wrap(cycles), mask, voxel_size, magnitude=magnitude) / (_TWO_PI * dte)


def unwrap_complex_guided(phases, mask, voxel_size, *, echo_times, magnitude=None):
    """Multi-echo unwrapping guided by a nonlinear complex fit of all echoes.

    :func:`unwrap_temporal` predicts the later echoes from the first one by the TE ratio, which
    multiplies any error of the first echo (noise, a residual phase offset) by up to
    ``TE_last / TE_1``; where that exceeds pi a later echo is wrapped wrongly. Here every echo
    is predicted from a fit to all of them:

    1. the nonlinear complex fit ``S_e = |S_e| exp(i (phi0 + omega TE_e))`` on the wrapped phase
       (:func:`chimap.field.combine.fit_field_complex`, MEDI's model), which knows ``omega``
       modulo ``2 pi / dTE`` only;
    2. that aliasing is undone by :func:`unalias_field` (region growing on ``omega dTE``, a
       phase with far fewer wraps than the last echo's);
    3. each echo gets the integer number of turns that brings it nearest to the fitted
       ``phi0 + omega TE_e``.

    The output differs from the input by exact multiples of 2 pi, so the field is then fitted
    (linearly, :func:`chimap.field.combine.fit_field_linear`) on the measured phase itself. A
    phase offset is kept in the output (it is part of ``phi0``); remove it before, e.g. with
    :func:`chimap.field.offsets.mcpc3ds`, for a fit through the origin.

    Parameters
    ----------
    phases : array_like, shape (I, J, K, E)
        Wrapped phase in radians, E >= 2 echoes.
    mask : array_like of bool, shape (I, J, K)
    voxel_size : float or array_like, shape (3,)
        mm.
    echo_times : array_like, shape (E,)
        Seconds.
    magnitude : array_like, shape (I, J, K, E), optional
        Echo magnitudes (weights of the fit; uniform without).

    Returns
    -------
    numpy.ndarray, shape (I, J, K, E)
        ``phases + 2 pi k`` with integer ``k`` inside the mask, unchanged outside; dtype of
        ``phases``.
    """
    from .combine import fit_field_complex

    p, out_dtype = _check_phase(phases, "phases", ndim=4)
    n_echoes = p.shape[-1]
    if n_echoes < 2:
        raise ValueError("complex-guided unwrapping needs at least two echoes; use region_growing")
    tes = check_echo_times(echo_times, n_echoes)
    m = _check_mask(mask, p.shape[:3])
    _check_finite(p, m[..., None], "phases")
    mag = np.ones(p.shape, np.float32) if magnitude is None else np.asarray(magnitude, dtype=np.float32)
    if mag.shape != p.shape:
        raise ValueError(f"magnitude shape {mag.shape} does not match the phases {p.shape}")
    field_hz, phi0, _ = fit_field_complex(mag, p, m, voxel_size, echo_times=tes)
    omega = _TWO_PI * unalias_field(field_hz, m, voxel_size, echo_times=tes, magnitude=mag[..., 0])  # rad/s
    q = np.where(m[..., None], p, 0).astype(np.float64)
    pred = np.asarray(phi0, np.float64)[..., None] + omega[..., None] * tes
    k = np.round((pred - q) / _TWO_PI).astype(np.int64)
    k[~m] = 0
    return (p + (_TWO_PI * k).astype(out_dtype)).astype(out_dtype)
