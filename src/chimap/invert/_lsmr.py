"""LSMR iterates one by one, for choosing an early stop by cross-validation (private).

Reference
---------
Fong DC-L, Saunders M. LSMR: an iterative algorithm for sparse least-squares problems. SIAM J
Sci Comput 2011;33:2950-2971 (Algorithm LSMR, no damping).

:func:`scipy.sparse.linalg.lsmr` returns only its last iterate; choosing the number of
iterations from the data needs every iterate of one run, which this generator yields. With the
same operator and right-hand side its iterates are scipy's ``lsmr(..., maxiter=k)`` results
(``tests/test_invert_rts.py`` compares them).
"""

from __future__ import annotations

import math

import numpy as np

from .ilsqr import _dot  # inner product accumulated in float64, shared with iLSQR's LSQR

__all__ = ["lsmr_iterates"]


def lsmr_iterates(apply_a, apply_at, b, max_iter, observe=None):
    """Yield ``x_k``, ``k = 1 .. max_iter``, of LSMR for ``min ||A x - b||`` from ``x = 0``.

    Parameters
    ----------
    apply_a, apply_at : callable
        ``x -> A x`` and ``y -> A^T y`` (any shape; both spaces real), returning new arrays in
        the dtype of ``b``.
    b : numpy.ndarray
        Right-hand side (float32 or float64: the vectors keep its dtype; the scalar
        recurrences are in float64).
    max_iter : int
        Iterations at most; fewer when the Krylov space is exhausted (``A^T r = 0``).
    observe : callable, optional
        ``() -> S v`` for the vector ``v`` of the last ``apply_a(v)`` call, with ``S`` a linear
        map the caller evaluates as a by-product of ``A v`` (e.g. ``D v`` at held-out voxels
        when ``A = W D``). The generator then also yields ``S x_k``, updated by the same
        recurrences as ``x``, without applying ``S`` to ``x``.

    Yields
    ------
    x : numpy.ndarray
        The current iterate. The same array is updated in place by the next step: copy it to
        keep it.
    sx : numpy.ndarray or None
        ``S x_k`` with ``observe``, else None (same in-place caveat).
    """
    beta = math.sqrt(_dot(b, b))
    if beta == 0.0:
        return
    u = b * b.dtype.type(1.0 / beta)
    v = apply_at(u)
    alpha = math.sqrt(_dot(v, v))
    if alpha == 0.0:
        return
    v /= alpha
    x = np.zeros_like(v)
    h = v.copy()
    hbar = np.zeros_like(v)
    # S h and S hbar follow h and hbar; S h_k = S v_k - c S h_(k-1) is completed once S v_k is
    # known, i.e. after apply_a(v_k) at the start of iteration k (h_coef holds c)
    sx = sh = shbar = None
    h_coef = 0.0
    # scalars of the two QR factorisations (the paper's notation)
    alphabar, zetabar = alpha, alpha * beta
    rho, rhobar, cbar, sbar = 1.0, 1.0, 1.0, 0.0
    for _ in range(int(max_iter)):
        # bidiagonalisation: beta_{k+1} u_{k+1} = A v_k - alpha_k u_k, then v_{k+1}
        u *= -alpha
        u += apply_a(v)
        if observe is not None:
            sv = np.asarray(observe(), dtype=np.float64)
            if sx is None:
                sx, sh, shbar = np.zeros_like(sv), sv.copy(), np.zeros_like(sv)
            else:
                sh *= h_coef
                sh += sv
        beta = math.sqrt(_dot(u, u))
        if beta > 0.0:
            u /= beta
        v_next = apply_at(u)
        v_next -= beta * v
        alpha = math.sqrt(_dot(v_next, v_next))
        if alpha > 0.0:
            v_next /= alpha
        # first rotation (on the lower bidiagonal B_k)
        rho_old = rho
        rho = math.hypot(alphabar, beta)
        c, s = alphabar / rho, beta / rho
        theta_next = s * alpha
        alphabar = c * alpha
        # second rotation (on R_k^T)
        rhobar_old = rhobar
        thetabar = sbar * rho
        rhotemp = cbar * rho
        rhobar = math.hypot(rhotemp, theta_next)
        cbar, sbar = rhotemp / rhobar, theta_next / rhobar
        zeta = cbar * zetabar
        zetabar = -sbar * zetabar
        # updates of h, hbar and x
        hbar_coef, x_coef, h_coef = -thetabar * rho / (rho_old * rhobar_old), zeta / (rho * rhobar), -theta_next / rho
        hbar *= hbar_coef
        hbar += h
        x += x_coef * hbar
        h *= h_coef
        h += v_next
        v = v_next
        if observe is not None:
            shbar *= hbar_coef
            shbar += sh
            sx += x_coef * shbar
        yield x, sx
        if alpha == 0.0:  # A^T r = 0: x is the least-squares solution
            return
