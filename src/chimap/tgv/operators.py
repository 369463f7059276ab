"""Discrete operators of single-step TGV-QSM, as plain numpy (reference implementation).

The fused numba iteration of :mod:`chimap.tgv._kernels` applies the same operators; these
versions define them, serve the tests (adjoint identities, one fused iteration against the
reference) and estimate the operator norm that sets the primal-dual step sizes.

Conventions (arrays ``(I, J, K)``, voxel sizes ``h`` in mm, values outside the array are zero;
the solver pads its arrays with one voxel of zeros and keeps the masks two voxels inside, so the
array edge never meets the data):

- ``grad``: forward differences ``(x[i+1] - x[i]) / h``; ``div = -grad^T`` (backward
  differences ``(p[i] - p[i-1]) / h``).
- ``sym_grad`` (``epsilon``): forward differences of the vector field ``w``, components
  ``(xx, yy, zz, xy, xz, yz)`` with ``e_ab = (d_b w_a + d_a w_b) / 2``; the inner product of
  such tensors counts each off-diagonal component twice (Frobenius); ``div2 = -sym_grad^T``
  under that inner product.
- ``laplacian``: the 7-point Laplacian with zero values outside the array (symmetric).
- ``dipole_laplacian`` ("box"): ``Laplacian * D`` in the image domain, ``(1/3) Laplacian -
  (b . grad)^2`` for the unit B0 direction ``b`` in voxel axes: second differences along each
  axis with weights ``(1/3 - b_a^2) / h_a^2`` and, for oblique B0, centred mixed differences
  ``-2 b_a b_c d_a d_c`` (4-point cross stencils, weight ``-b_a b_c / (2 h_a h_c)``); symmetric.
  For B0 along an axis this is the original TGV-QSM 7-point stencil ``(1/3, 1/3, -2/3) / h^2``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_k", "apply_kt", "dipole_laplacian", "dipole_stencil", "div", "div2", "grad",
           "laplacian", "operator_norm", "sym_grad"]

#: Order of the components of a symmetric tensor field.
TENSOR_COMPONENTS = ("xx", "yy", "zz", "xy", "xz", "yz")
_PAIRS = ((0, 1), (0, 2), (1, 2))  # axes of the off-diagonal components xy, xz, yz


def _fwd(x, axis, h):
    """Forward difference along ``axis``, ``(x[i+1] - x[i]) / h`` with zero beyond the array."""
    e = [0, 0, 0]
    e[axis] = 1
    return (_shift(x, e) - x) / h


def _bwd(v, axis, h):
    """``-(forward difference)^T``: ``(v[i] - v[i-1]) / h`` with zero before the array."""
    e = [0, 0, 0]
    e[axis] = -1
    return (v - _shift(v, e)) / h


def grad(x, voxel_size):
    """Forward-difference gradient, shape ``(3, I, J, K)``."""
    return np.stack([_fwd(x, a, voxel_size[a]) for a in range(3)])


def div(p, voxel_size):
    """Divergence ``-grad^T p`` of a vector field ``(3, I, J, K)``."""
    return sum(_bwd(p[a], a, voxel_size[a]) for a in range(3))


def sym_grad(w, voxel_size):
    """Symmetrised forward-difference gradient of ``w`` (3, ...), shape ``(6, I, J, K)``."""
    out = [_fwd(w[a], a, voxel_size[a]) for a in range(3)]
    for a, c in _PAIRS:
        out.append(0.5 * (_fwd(w[a], c, voxel_size[c]) + _fwd(w[c], a, voxel_size[a])))
    return np.stack(out)


def div2(q, voxel_size):
    """``-sym_grad^T q`` under the Frobenius inner product (off-diagonals twice), shape (3, ...)."""
    out = [_bwd(q[a], a, voxel_size[a]) for a in range(3)]
    for n, (a, c) in enumerate(_PAIRS):
        off = q[3 + n]
        out[a] = out[a] + _bwd(off, c, voxel_size[c])
        out[c] = out[c] + _bwd(off, a, voxel_size[a])
    return np.stack(out)


def _shift(x, offsets):
    """``y[i] = x[i + offsets]`` with zeros beyond the array."""
    out = np.zeros_like(x)
    src = []
    dst = []
    for o, n in zip(offsets, x.shape):
        if o >= 0:
            src.append(slice(o, n))
            dst.append(slice(0, n - o))
        else:
            src.append(slice(0, n + o))
            dst.append(slice(-o, n))
    out[tuple(dst)] = x[tuple(src)]
    return out


def laplacian(x, voxel_size):
    """7-point Laplacian, zero outside the array."""
    out = np.zeros_like(x)
    for a in range(3):
        e = [0, 0, 0]
        e[a] = 1
        minus = [-v for v in e]
        out += (_shift(x, e) + _shift(x, minus) - 2 * x) / voxel_size[a] ** 2
    return out


def dipole_stencil(voxel_size, b0_direction):
    """``(axial, mixed)`` weights of the dipole Laplacian: ``axial[a] = (1/3 - b_a^2) / h_a^2``
    on the second difference along axis ``a``; ``mixed[n] = -b_a b_c / (2 h_a h_c)`` on the cross
    stencil ``x[+,+] - x[+,-] - x[-,+] + x[-,-]`` of the pair ``(a, c)`` = xy, xz, yz."""
    h = np.asarray(voxel_size, dtype=np.float64)
    b = np.asarray(b0_direction, dtype=np.float64)
    b = b / np.linalg.norm(b)
    axial = (1.0 / 3.0 - b * b) / h ** 2
    mixed = np.array([-b[a] * b[c] / (2.0 * h[a] * h[c]) for a, c in _PAIRS])
    return axial, mixed


def dipole_laplacian(x, voxel_size, b0_direction):
    """``(1/3) Laplacian x - (b . grad)^2 x`` (the "box" operator), zero outside the array."""
    axial, mixed = dipole_stencil(voxel_size, b0_direction)
    out = np.zeros_like(x)
    for a in range(3):
        e = [0, 0, 0]
        e[a] = 1
        out += axial[a] * (_shift(x, e) + _shift(x, [-v for v in e]) - 2 * x)
    for n, (a, c) in enumerate(_PAIRS):
        if mixed[n] == 0:
            continue
        def off(sa, sc):
            o = [0, 0, 0]
            o[a], o[c] = sa, sc
            return _shift(x, o)
        out += mixed[n] * (off(1, 1) - off(1, -1) - off(-1, 1) + off(-1, -1))
    return out


def apply_k(chi, psi, w, voxel_size, b0_direction, m, m0):
    """The linear operator of the saddle-point problem on the primal ``(chi, psi, w)``:
    ``(m0 (box chi - lap psi), m0 grad chi - m w, m0 sym_grad w)``."""
    eta = m0 * (dipole_laplacian(chi, voxel_size, b0_direction) - laplacian(psi, voxel_size))
    p = m0 * grad(chi, voxel_size) - m * w
    q = m0 * sym_grad(w, voxel_size)
    return eta, p, q


def apply_kt(eta, p, q, voxel_size, b0_direction, m, m0):
    """Adjoint of :func:`apply_k` (tensor inner product with off-diagonals twice)."""
    e = m0 * eta
    chi = dipole_laplacian(e, voxel_size, b0_direction) - div(m0 * p, voxel_size)
    psi = -laplacian(e, voxel_size)
    w = -m * p - div2(m0 * q, voxel_size)
    return chi, psi, w


def operator_norm(voxel_size, b0_direction, *, size=20, iterations=200, seed=0):
    """Largest singular value of :func:`apply_k` with full masks, by power iteration on a small
    grid (the operator is translation invariant away from the edges, so the grid size hardly
    matters). Returns a value at least the estimate (it converges from below: callers add a
    margin)."""
    rng = np.random.default_rng(seed)
    shape = (size, size, size)
    m = np.ones(shape)
    chi, psi, w = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal((3,) + shape)
    weights = np.array([1, 1, 1, 2, 2, 2], dtype=np.float64).reshape(6, 1, 1, 1)
    norm = 0.0
    for _ in range(iterations):
        n = np.sqrt(np.sum(chi ** 2) + np.sum(psi ** 2) + np.sum(w ** 2))
        chi, psi, w = chi / n, psi / n, w / n
        eta, p, q = apply_k(chi, psi, w, voxel_size, b0_direction, m, m)
        norm = float(np.sqrt(np.sum(eta ** 2) + np.sum(p ** 2) + np.sum(weights * q ** 2)))
        chi, psi, w = apply_kt(eta, p, q, voxel_size, b0_direction, m, m)
    return norm
