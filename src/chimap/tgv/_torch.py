"""The TGV-QSM primal-dual iteration in torch, for GPUs (private; ``tgv_qsm(device=...)``).

The same iteration as the fused numba loops of :mod:`chimap.tgv._kernels`, on the same padded
working arrays (one voxel of zeros on each side; vector fields ``(3, ...)``, symmetric tensors
``(6, ...)`` in the order xx, yy, zz, xy, xz, yz), written as whole-array tensor operations on
the interior: outside the spans the numba loops visit every update is zero, so the results
agree to float32 rounding. torch is imported only when this module is, never by ``import
chimap``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_device", "solve"]

_INNER = (slice(1, -1),) * 3


def check_device(device):
    """``torch.device`` for ``device``, with a clear message when torch or the GPU is missing."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ValueError(f"device={device!r} needs torch: pip install 'chimap[dl]' (or leave device unset "
                         "for the numba implementation)") from exc
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cuda', 'cuda:1' or 'cpu', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: torch finds no CUDA GPU here; leave device unset to run on the CPU")
    return dev


def _shift(x, axis, step):
    """The interior of ``x`` (last three axes) shifted by ``step`` (-1, 0 or 1) along ``axis``
    (0, 1, 2): ``x[..., i + step, j, k]`` for the interior ``(i, j, k)``."""
    index = [slice(1, -1)] * 3
    index[axis] = slice(1 + step, x.shape[-3 + axis] - 1 + step)
    return x[(...,) + tuple(index)]


def _cross(x, a, b, sa, sb):
    """``x`` at interior offsets ``sa`` along axis ``a`` and ``sb`` along axis ``b``."""
    index = [slice(1, -1)] * 3
    index[a] = slice(1 + sa, x.shape[a] - 1 + sa)
    index[b] = slice(1 + sb, x.shape[b] - 1 + sb)
    return x[tuple(index)]


def _second_differences(x):
    c = 2.0 * x[_INNER]
    return [_shift(x, a, 1) + _shift(x, a, -1) - c for a in range(3)]


def _box(x, d2, axial, mixed):
    """The dipole stencil on the interior from the second differences ``d2`` of ``x``."""
    out = axial[0] * d2[0] + axial[1] * d2[1] + axial[2] * d2[2]
    for weight, (a, b) in zip(mixed, ((0, 1), (0, 2), (1, 2))):
        if weight != 0.0:
            out = out + weight * (_cross(x, a, b, 1, 1) - _cross(x, a, b, 1, -1) - _cross(x, a, b, -1, 1)
                                  + _cross(x, a, b, -1, -1))
    return out


def _project(components, radius, weights=None):
    """Scale the stacked vectors in ``components`` (first axis) onto the ball of ``radius``
    (Euclidean norm; ``weights`` count components twice, as for the off-diagonal of a
    symmetric tensor), in place."""
    sq = components * components
    if weights is not None:
        sq = sq * weights
    norm = sq.sum(dim=0).sqrt_()
    components.mul_((radius / norm.clamp_(min=radius)).unsqueeze(0))


def solve(lapphi, m, m0, inv_h, axial, mixed, sigma, tau, alpha1, alpha0, n_iter, tol, check_every, progress,
          chi0=None, *, device):
    """The primal-dual iterations on ``device``; arguments as ``chimap.tgv.solver._solve``.

    Returns chi (rad, float64 numpy, working grid) and a record of the run.
    """
    import torch

    from .solver import Monitor

    dev = check_device(device)
    f32 = torch.float32

    def tensor(a):
        return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32), device=dev)

    phi_lap, mk, mk0 = tensor(lapphi), tensor(m), tensor(m0)
    shape = tuple(lapphi.shape)
    chi, chib, psi, psib, eta = (torch.zeros(shape, dtype=f32, device=dev) for _ in range(5))
    if chi0 is not None:
        chi.copy_(tensor(chi0))
        chib.copy_(chi)
    w, wb, p = (torch.zeros((3,) + shape, dtype=f32, device=dev) for _ in range(3))
    q = torch.zeros((6,) + shape, dtype=f32, device=dev)
    ref = torch.zeros(shape, dtype=torch.float64, device=dev)
    hx, hy, hz = (float(v) for v in inv_h)
    h2 = [v * v for v in (hx, hy, hz)]
    axial = [float(v) for v in axial]
    mixed = [float(v) for v in mixed]
    s_eta, s_p, s_q = (float(v) for v in sigma)
    t_chi, t_psi = float(tau[0]), float(tau[1])
    t_w = torch.tensor([float(v) for v in tau[2:]], dtype=f32, device=dev).view(3, 1, 1, 1)
    q_weights = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], dtype=f32, device=dev).view(6, 1, 1, 1)
    inner_m, inner_m0 = mk[_INNER], mk0[_INNER]
    mask_bool = mk > 0
    inv = (hx, hy, hz)
    monitor = Monitor(n_iter, tol, check_every, progress)
    it = 0
    with torch.no_grad():
        for it in range(1, n_iter + 1):
            # dual step: eta, p, q from the extrapolated primal variables
            d2 = _second_differences(chib)
            box = _box(chib, d2, axial, mixed)
            ps = psib[_INNER]
            lap = sum((_shift(psib, a, 1) + _shift(psib, a, -1) - 2.0 * ps) * h2[a] for a in range(3))
            eta[_INNER].add_(s_eta * inner_m0 * (box - lap - phi_lap[_INNER]))
            c = chib[_INNER]
            pin = p[(slice(None),) + _INNER]
            for a in range(3):
                pin[a].add_(s_p * (inner_m0 * (_shift(chib, a, 1) - c) * inv[a] - inner_m * wb[(a,) + _INNER]))
            _project(pin, alpha1)
            wi = [wb[(a,) + _INNER] for a in range(3)]
            sym = (
                (_shift(wb[0], 0, 1) - wi[0]) * hx,
                (_shift(wb[1], 1, 1) - wi[1]) * hy,
                (_shift(wb[2], 2, 1) - wi[2]) * hz,
                0.5 * ((_shift(wb[0], 1, 1) - wi[0]) * hy + (_shift(wb[1], 0, 1) - wi[1]) * hx),
                0.5 * ((_shift(wb[0], 2, 1) - wi[0]) * hz + (_shift(wb[2], 0, 1) - wi[2]) * hx),
                0.5 * ((_shift(wb[1], 2, 1) - wi[1]) * hz + (_shift(wb[2], 1, 1) - wi[2]) * hy),
            )
            qin = q[(slice(None),) + _INNER]
            for c_, s in enumerate(sym):
                qin[c_].add_(s_q * inner_m0 * s)
            _project(qin, alpha0, q_weights)

            # primal step: chi, psi, w and their extrapolations from the new duals
            d2 = _second_differences(eta)
            lap = d2[0] * h2[0] + d2[1] * h2[1] + d2[2] * h2[2]
            box = _box(eta, d2, axial, mixed)
            mp = p * mk0
            divp = sum((mp[(a,) + _INNER] - _shift(mp[a], a, -1)) * inv[a] for a in range(3))
            old = psi[_INNER].clone()
            psi[_INNER].add_(t_psi * lap).div_(1.0 + t_psi * inner_m)
            psib[_INNER] = 2.0 * psi[_INNER] - old
            old = chi[_INNER].clone()
            chi[_INNER].add_(t_chi * (divp - box))
            chib[_INNER] = 2.0 * chi[_INNER] - old
            qi = [q[(c_,) + _INNER] for c_ in range(6)]

            def dq(comp, axis):
                return (qi[comp] - _shift(q[comp], axis, -1)) * inv[axis]

            div2 = torch.stack((dq(0, 0) + dq(3, 1) + dq(4, 2),
                                dq(3, 0) + dq(1, 1) + dq(5, 2),
                                dq(4, 0) + dq(5, 1) + dq(2, 2)))
            win = w[(slice(None),) + _INNER]
            old = win.clone()
            win.add_(t_w * (inner_m * p[(slice(None),) + _INNER] + div2))
            wb[(slice(None),) + _INNER] = 2.0 * win - old

            if monitor.due(it):
                x = chi.to(torch.float64)
                num = ((x - ref)[mask_bool] ** 2).sum()
                den = (x[mask_bool] ** 2).sum()
                change = float((num / den).sqrt()) if float(den) > 0 else 0.0
                ref.copy_(x)
                if monitor.stop(it, change):
                    break
    return chi.cpu().numpy().astype(np.float64), monitor.record(it)
