"""EPI distortion correction from the sample's own field map (phase-encode shift unwarping).

In an EPI readout the phase-encode lines are acquired one effective echo spacing apart, so an
off-resonance ``df`` (Hz) accrues a phase that grows linearly along k_pe and shifts the signal of a
voxel along the phase-encode axis by::

    d = -polarity * df * effective_echo_spacing * N_pe      (voxels)

with ``N_pe`` the reconstructed matrix size along that axis (Jezzard and Balaban, MRM
1995;34:65-73). The QSM field map of an EPI acquisition is measured in the distorted image, so
``d`` is known at distorted positions ``y'`` and the undistorted position of the signal there is
``y = y' - d(y')``. :func:`unwarp_epi` inverts that map line by line (it is monotonic wherever
the distortion does not fold, ``d' > -1``) and resamples images from distorted to undistorted
space; intensities can be scaled by the Jacobian of the map (signal pile-up and stretching).

Polarity convention (BIDS ``PhaseEncodingDirection``): ``"j"`` means k_pe is traversed from
negative to positive during the echo train, ``"j-"`` the opposite. With chimap's phase sign
(``phase = +2 pi df t``) and an image reconstructed by the inverse DFT, line ``k`` acquired at
``t = TE + k * EES`` carries ``exp(2 pi i df k EES)``, which moves the signal to
``y - df * EES * N_pe``: for ``"j"`` a positive off-resonance moves signal towards decreasing
voxel index. chimap's simulator uses ``"j"``. Vendors differ in how they traverse k-space and
in their phase sign; where unwarping visibly worsens the geometry, the polarity is the other
one (or the phase sign, ``chimap run --phase-sign``).

The absolute frequency of a single-echo field map is unknown (the receiver phase offset adds a
constant and smooth terms); :func:`epi_displacement` can therefore reference the field to its
median in the mask, which is what the scanner's frequency adjustment on the tissue water does.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import ndimage

from ..geometry import parse_phase_encoding

__all__ = ["epi_displacement", "extend_nearest", "parse_phase_encoding", "unwarp_epi"]


def epi_displacement(field_hz, mask, *, pe_axis, effective_echo_spacing, polarity=1, reference="none"):
    """Phase-encode displacement (voxels) of the signal at every distorted voxel.

    Parameters
    ----------
    field_hz : numpy.ndarray, shape (I, J, K)
        Off-resonance in Hz, measured in the distorted image; used inside ``mask``.
    mask : numpy.ndarray of bool, shape (I, J, K)
        Where ``field_hz`` is valid. Outside it the field is extended from the nearest masked
        voxel, so the displacement is defined on the whole grid.
    pe_axis : int
        Phase-encode axis (0, 1 or 2).
    effective_echo_spacing : float
        Seconds between adjacent phase-encode lines (BIDS ``EffectiveEchoSpacing``), e.g. 2e-4.
    polarity : {1, -1}
        See the module docstring.
    reference : {"none", "median"}
        ``"median"``: subtract the field's median in the mask first (unknown absolute frequency).

    Returns
    -------
    numpy.ndarray of float32, shape (I, J, K)
        Displacement in voxels along ``pe_axis``.
    """
    f = np.asarray(field_hz, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if f.ndim != 3 or m.shape != f.shape:
        raise ValueError(f"field_hz and mask must be 3-D arrays of one shape, got {f.shape} and {m.shape}")
    if not m.any():
        raise ValueError("mask is empty: no field to compute the EPI displacement from")
    if pe_axis not in (0, 1, 2):
        raise ValueError(f"pe_axis must be 0, 1 or 2, got {pe_axis}")
    ees = float(effective_echo_spacing)
    if not 0 < ees < 5e-3:
        raise ValueError(f"effective echo spacing must be in seconds (0 < EES < 5 ms), got {effective_echo_spacing}"
                         " -- a value above 1 is probably in ms")
    if polarity not in (1, -1):
        raise ValueError(f"polarity must be 1 or -1, got {polarity}")
    if reference not in ("none", "median"):
        raise ValueError(f"reference must be 'none' or 'median', got {reference!r}")
    if not np.all(np.isfinite(f[m])):
        raise ValueError("field_hz holds NaN/inf inside the mask")
    if reference == "median":
        f = f - float(np.median(f[m]))
    f = extend_nearest(f, m)
    return (-polarity * ees * f.shape[pe_axis] * f).astype(np.float32)


def extend_nearest(values, mask):
    """``values`` inside ``mask``, and outside it the value of the nearest voxel in ``mask``.

    Used before resampling so that interpolation next to the mask edge never mixes in the
    arbitrary values (zeros) outside it.
    """
    m = np.asarray(mask, dtype=bool)
    if m.all():
        return np.array(values, copy=True)
    idx = ndimage.distance_transform_edt(~m, return_distances=False, return_indices=True)
    return np.asarray(values)[tuple(idx)]


@numba.njit(cache=True, parallel=True)
def _unwarp_lines(img, disp, out, jac, use_jacobian):  # pragma: no cover - compiled
    """Lines are the last axis: img (L, N) distorted samples, disp (L, N) displacement at them."""
    n_lines, n = img.shape
    for line in numba.prange(n_lines):
        # undistorted position of each distorted sample, made monotonic (folds are not invertible)
        g = np.empty(n)
        for p in range(n):
            g[p] = p - disp[line, p]
        for p in range(1, n):
            if g[p] < g[p - 1] + 1e-3:
                g[p] = g[p - 1] + 1e-3
        p = 0
        for y in range(n):
            if y < g[0] or y > g[n - 1]:
                out[line, y] = 0.0
                jac[line, y] = 0.0
                continue
            while p < n - 2 and g[p + 1] < y:
                p += 1
            w = (y - g[p]) / (g[p + 1] - g[p])
            if w < 0.0:
                w = 0.0
            elif w > 1.0:
                w = 1.0
            val = (1.0 - w) * img[line, p] + w * img[line, p + 1]
            dy_dp = g[p + 1] - g[p]  # undistorted spacing per distorted sample
            j = 1.0 / dy_dp
            jac[line, y] = j
            out[line, y] = val * j if use_jacobian else val


def unwarp_epi(image, displacement, *, pe_axis, jacobian=False):
    """Resample a distorted EPI image onto the undistorted grid.

    Parameters
    ----------
    image : numpy.ndarray, shape (I, J, K) or (I, J, K, E)
        Real image in distorted space (a field map, a magnitude, a mask as float); several
        volumes along a 4th axis share the displacement.
    displacement : numpy.ndarray, shape (I, J, K)
        Voxels along ``pe_axis`` at each distorted voxel (:func:`epi_displacement`).
    pe_axis : int
    jacobian : bool
        Scale by the Jacobian ``dy'/dy`` of the map (True for signal intensities, which pile
        up where the distortion compresses; False for fields, masks and weights).

    Returns
    -------
    numpy.ndarray of float32
        Same shape as ``image``; zero where no distorted sample maps (beyond the line's ends).
    """
    img = np.asarray(image)
    d = np.asarray(displacement, dtype=np.float64)
    if d.ndim != 3 or img.shape[:3] != d.shape or img.ndim not in (3, 4):
        raise ValueError(f"image {img.shape} and displacement {d.shape} must share their first three axes")
    if pe_axis not in (0, 1, 2):
        raise ValueError(f"pe_axis must be 0, 1 or 2, got {pe_axis}")
    vols = img[..., None] if img.ndim == 3 else img
    n = d.shape[pe_axis]
    dl = np.moveaxis(d, pe_axis, -1)
    line_shape = dl.shape
    dl = np.ascontiguousarray(dl.reshape(-1, n))
    out = np.empty(vols.shape, dtype=np.float32)
    for e in range(vols.shape[3]):
        vl = np.ascontiguousarray(np.moveaxis(vols[..., e], pe_axis, -1).reshape(-1, n), dtype=np.float64)
        res = np.empty_like(vl)
        jac = np.empty_like(vl)
        _unwarp_lines(vl, dl, res, jac, bool(jacobian))
        out[..., e] = np.moveaxis(res.reshape(line_shape), -1, pe_axis)
    return out[..., 0] if img.ndim == 3 else out
