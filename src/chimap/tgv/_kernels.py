"""Fused numba loops of the TGV-QSM primal-dual iteration (private).

All arrays and scalars are float32 (the caller's duty: float64 step sizes or weights would
make numba compute in float64). Every array carries one voxel of zero padding on each side (shape ``(n0 + 2, n1 + 2, n2 + 2)``,
vector fields ``(3, ...)``, symmetric tensors ``(6, ...)`` in the order xx, yy, zz, xy, xz, yz)
and the loops run over the interior only, so every neighbour read is in bounds and the padding
stays zero: the operators are those of :mod:`chimap.tgv.operators` (zero beyond the array).
One iteration is two passes over memory: :func:`dual_step` (eta, p, q from the extrapolated
primal variables) and :func:`primal_step` (chi, psi, w and their extrapolations from the new
duals). Each pass visits, per grid row ``(i, j)``, only the span ``span[i, j, 0] <= k <
span[i, j, 1]`` where its updates can be non-zero (the mask for the dual pass, the mask dilated
by one voxel for the primal pass; :func:`chimap.tgv.solver.row_spans`): elsewhere every
variable keeps its value, zero.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["dual_step", "laplacian_of_wrapped_phase", "primal_step", "relative_change"]

# float32 constants: with the float32 arrays and float32 step sizes, weights and stencils the
# solver passes, the iteration's arithmetic stays in float32 (a float64 literal would promote
# every expression it enters; the passes ran about 1.6 times slower that way)
_ZERO = np.float32(0.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)


@njit(cache=True, inline="always")
def _second_differences(x, i, j, k):
    """``x[+1] + x[-1] - 2 x`` along each axis at ``(i, j, k)``."""
    c = _TWO * x[i, j, k]
    return (x[i + 1, j, k] + x[i - 1, j, k] - c, x[i, j + 1, k] + x[i, j - 1, k] - c,
            x[i, j, k + 1] + x[i, j, k - 1] - c)


@njit(cache=True, inline="always")
def _mixed_differences(x, i, j, k, mixed):
    """The oblique part of the dipole Laplacian: ``mixed`` weights (xy, xz, yz) on the cross
    stencils ``x[+,+] - x[+,-] - x[-,+] + x[-,-]``."""
    out = _ZERO
    if mixed[0] != 0.0:
        out += mixed[0] * (x[i + 1, j + 1, k] - x[i + 1, j - 1, k] - x[i - 1, j + 1, k] + x[i - 1, j - 1, k])
    if mixed[1] != 0.0:
        out += mixed[1] * (x[i + 1, j, k + 1] - x[i + 1, j, k - 1] - x[i - 1, j, k + 1] + x[i - 1, j, k - 1])
    if mixed[2] != 0.0:
        out += mixed[2] * (x[i, j + 1, k + 1] - x[i, j + 1, k - 1] - x[i, j - 1, k + 1] + x[i, j - 1, k - 1])
    return out


@njit(parallel=True, cache=True, fastmath=True)
def dual_step(chib, psib, wb, eta, p, q, lapphi, m, m0, inv_h, inv_h2, axial, mixed, sigma,
              alpha1, alpha0, span):
    # sigma: dual steps (eta, p, q) (diagonal preconditioning, Pock and Chambolle 2011)
    """Dual ascent and projection:
    ``eta += sigma m0 (box chib - lap psib - lapphi)``;
    ``p = proj_{|p| <= alpha1}(p + sigma (m0 grad chib - m wb))``;
    ``q = proj_{|q|_F <= alpha0}(q + sigma m0 sym_grad wb)``."""
    n0, n1, n2 = chib.shape
    hx, hy, hz = inv_h[0], inv_h[1], inv_h[2]
    for i in prange(1, n0 - 1):
        for j in range(1, n1 - 1):
            for k in range(span[i, j, 0], span[i, j, 1]):
                mv = m[i, j, k]
                m0v = m0[i, j, k]
                c = chib[i, j, k]
                if m0v != 0:
                    ps = psib[i, j, k]
                    d2x, d2y, d2z = _second_differences(chib, i, j, k)
                    box = axial[0] * d2x + axial[1] * d2y + axial[2] * d2z + _mixed_differences(chib, i, j, k, mixed)
                    lap = ((psib[i + 1, j, k] + psib[i - 1, j, k] - _TWO * ps) * inv_h2[0]
                           + (psib[i, j + 1, k] + psib[i, j - 1, k] - _TWO * ps) * inv_h2[1]
                           + (psib[i, j, k + 1] + psib[i, j, k - 1] - _TWO * ps) * inv_h2[2])
                    eta[i, j, k] += sigma[0] * (box - lap - lapphi[i, j, k])
                # p: first-order term
                w0 = wb[0, i, j, k]
                w1 = wb[1, i, j, k]
                w2 = wb[2, i, j, k]
                sp = sigma[1]
                px = p[0, i, j, k] + sp * (m0v * (chib[i + 1, j, k] - c) * hx - mv * w0)
                py = p[1, i, j, k] + sp * (m0v * (chib[i, j + 1, k] - c) * hy - mv * w1)
                pz = p[2, i, j, k] + sp * (m0v * (chib[i, j, k + 1] - c) * hz - mv * w2)
                nrm = np.sqrt(px * px + py * py + pz * pz)
                if nrm > alpha1:
                    s = alpha1 / nrm
                    px *= s
                    py *= s
                    pz *= s
                p[0, i, j, k] = px
                p[1, i, j, k] = py
                p[2, i, j, k] = pz
                # q: second-order term (symmetrised gradient of w, forward differences)
                if m0v != 0:
                    sxx = (wb[0, i + 1, j, k] - w0) * hx
                    syy = (wb[1, i, j + 1, k] - w1) * hy
                    szz = (wb[2, i, j, k + 1] - w2) * hz
                    sxy = _HALF * ((wb[0, i, j + 1, k] - w0) * hy + (wb[1, i + 1, j, k] - w1) * hx)
                    sxz = _HALF * ((wb[0, i, j, k + 1] - w0) * hz + (wb[2, i + 1, j, k] - w2) * hx)
                    syz = _HALF * ((wb[1, i, j, k + 1] - w1) * hz + (wb[2, i, j + 1, k] - w2) * hy)
                    sq = sigma[2]
                    qxx = q[0, i, j, k] + sq * sxx
                    qyy = q[1, i, j, k] + sq * syy
                    qzz = q[2, i, j, k] + sq * szz
                    qxy = q[3, i, j, k] + sq * sxy
                    qxz = q[4, i, j, k] + sq * sxz
                    qyz = q[5, i, j, k] + sq * syz
                    nrm = np.sqrt(qxx * qxx + qyy * qyy + qzz * qzz
                                  + _TWO * (qxy * qxy + qxz * qxz + qyz * qyz))
                    if nrm > alpha0:
                        s = alpha0 / nrm
                        qxx *= s
                        qyy *= s
                        qzz *= s
                        qxy *= s
                        qxz *= s
                        qyz *= s
                    q[0, i, j, k] = qxx
                    q[1, i, j, k] = qyy
                    q[2, i, j, k] = qzz
                    q[3, i, j, k] = qxy
                    q[4, i, j, k] = qxz
                    q[5, i, j, k] = qyz


@njit(parallel=True, cache=True, fastmath=True)
def primal_step(eta, p, q, chi, psi, w, chib, psib, wb, m, m0, inv_h, inv_h2, axial, mixed, tau, span):
    # tau: primal steps (chi, psi, w_x, w_y, w_z)
    """Primal descent and extrapolation (``x_bar = 2 x_new - x_old``):
    ``psi = (psi + tau lap(m0 eta)) / (1 + tau m)``;
    ``chi = chi + tau (div(m0 p) - box(m0 eta))``; ``w = w + tau (m p + div2(m0 q))``.
    ``eta`` and ``q`` vanish outside ``m0`` (the dual step keeps them there), so ``m0 eta = eta``
    and ``m0 q = q``."""
    n0, n1, n2 = chi.shape
    hx, hy, hz = inv_h[0], inv_h[1], inv_h[2]
    for i in prange(1, n0 - 1):
        for j in range(1, n1 - 1):
            for k in range(span[i, j, 0], span[i, j, 1]):
                d2x, d2y, d2z = _second_differences(eta, i, j, k)
                lap = d2x * inv_h2[0] + d2y * inv_h2[1] + d2z * inv_h2[2]
                box = axial[0] * d2x + axial[1] * d2y + axial[2] * d2z + _mixed_differences(eta, i, j, k, mixed)
                m0v = m0[i, j, k]
                divp = ((m0v * p[0, i, j, k] - m0[i - 1, j, k] * p[0, i - 1, j, k]) * hx
                        + (m0v * p[1, i, j, k] - m0[i, j - 1, k] * p[1, i, j - 1, k]) * hy
                        + (m0v * p[2, i, j, k] - m0[i, j, k - 1] * p[2, i, j, k - 1]) * hz)
                mv = m[i, j, k]
                # psi
                old = psi[i, j, k]
                new = (old + tau[1] * lap) / (_ONE + tau[1] * mv)
                psi[i, j, k] = new
                psib[i, j, k] = _TWO * new - old
                # chi
                old = chi[i, j, k]
                new = old + tau[0] * (divp - box)
                chi[i, j, k] = new
                chib[i, j, k] = _TWO * new - old
                # w: div2 of q (xx, yy, zz, xy, xz, yz)
                dx = ((q[0, i, j, k] - q[0, i - 1, j, k]) * hx + (q[3, i, j, k] - q[3, i, j - 1, k]) * hy
                      + (q[4, i, j, k] - q[4, i, j, k - 1]) * hz)
                dy = ((q[3, i, j, k] - q[3, i - 1, j, k]) * hx + (q[1, i, j, k] - q[1, i, j - 1, k]) * hy
                      + (q[5, i, j, k] - q[5, i, j, k - 1]) * hz)
                dz = ((q[4, i, j, k] - q[4, i - 1, j, k]) * hx + (q[5, i, j, k] - q[5, i, j - 1, k]) * hy
                      + (q[2, i, j, k] - q[2, i, j, k - 1]) * hz)
                old = w[0, i, j, k]
                new = old + tau[2] * (mv * p[0, i, j, k] + dx)
                w[0, i, j, k] = new
                wb[0, i, j, k] = _TWO * new - old
                old = w[1, i, j, k]
                new = old + tau[3] * (mv * p[1, i, j, k] + dy)
                w[1, i, j, k] = new
                wb[1, i, j, k] = _TWO * new - old
                old = w[2, i, j, k]
                new = old + tau[4] * (mv * p[2, i, j, k] + dz)
                w[2, i, j, k] = new
                wb[2, i, j, k] = _TWO * new - old


@njit(parallel=True, cache=True)
def relative_change(x, ref, m):
    """``||x - ref|| / ||x||`` over the voxels where ``m`` is set; copies ``x`` into ``ref``."""
    n0, n1, n2 = x.shape
    num = np.zeros(n0)
    den = np.zeros(n0)
    for i in prange(n0):
        a = 0.0
        b = 0.0
        for j in range(n1):
            for k in range(n2):
                v = np.float64(x[i, j, k])
                if m[i, j, k] != 0:
                    d = v - ref[i, j, k]
                    a += d * d
                    b += v * v
                ref[i, j, k] = v
        num[i] = a
        den[i] = b
    total = den.sum()
    return np.sqrt(num.sum() / total) if total > 0 else 0.0


@njit(parallel=True, cache=True)
def laplacian_of_wrapped_phase(phase, inv_h2, wrapped, out):
    """Laplacian of the unwrapped phase from the wrapped one (7-point, replicated border),
    written into ``out`` (same shape as ``phase``).

    ``wrapped=False``: ``cos(phi) lap(sin phi) - sin(phi) lap(cos phi)`` = the sum over the six
    neighbours of ``sin(phi_n - phi) / h^2`` (Schofield and Zhu 2003; TGV.jl's default).
    ``wrapped=True``: the sum of the neighbour differences wrapped into [-pi, pi), ``/ h^2``
    (original TGV-QSM ``get_laplace_phase3``, whose choice of 2 pi offsets per difference
    minimises the same squared differences)."""
    n0, n1, n2 = phase.shape
    for i in prange(n0):
        im, ip = max(i - 1, 0), min(i + 1, n0 - 1)
        for j in range(n1):
            jm, jp = max(j - 1, 0), min(j + 1, n1 - 1)
            for k in range(n2):
                km, kp = max(k - 1, 0), min(k + 1, n2 - 1)
                p0 = phase[i, j, k]
                out[i, j, k] = (
                    (_phase_step(phase[im, j, k], p0, wrapped) + _phase_step(phase[ip, j, k], p0, wrapped)) * inv_h2[0]
                    + (_phase_step(phase[i, jm, k], p0, wrapped) + _phase_step(phase[i, jp, k], p0, wrapped)) * inv_h2[1]
                    + (_phase_step(phase[i, j, km], p0, wrapped) + _phase_step(phase[i, j, kp], p0, wrapped)) * inv_h2[2])


@njit(cache=True, inline="always")
def _phase_step(v, p0, wrapped):
    """The phase difference ``v - p0`` wrapped into [-pi, pi), or its sine
    (``cos(p0) (sin v - sin p0) - sin(p0) (cos v - cos p0) = sin(v - p0)``)."""
    d = v - p0
    if wrapped:
        return d - 2.0 * np.pi * np.floor((d + np.pi) / (2.0 * np.pi))
    return np.sin(d)
