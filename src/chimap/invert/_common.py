"""Input validation and the padded computation domain shared by the dipole inversions (private).

Every inversion works on the bounding box of the mask, zero padded on every axis to at least
``pad_factor`` times the box length (an FFT-friendly size, :func:`chimap.forward.padded_shape`).
The field is set to zero outside the mask before any FFT, so cropping to the box only removes
zeros; the padding keeps the periodic images of the long-range dipole (and of its inverse) from
wrapping back into the brain. The result is put back into an array of the input's shape and
set to zero outside the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..forward import padded_shape
from ..geometry import check_b0_direction, check_voxel_size

__all__ = ["Domain", "check_inversion_inputs", "check_positive", "check_weight"]


@dataclass(frozen=True)
class Domain:
    """Where an inversion computes: the mask's bounding box inside a zero-padded FFT grid.

    Attributes
    ----------
    shape : tuple of 3 int
        Shape of the input arrays.
    box : tuple of 3 slice
        Bounding box of the mask in the input arrays.
    padded : tuple of 3 int
        Shape of the FFT grid; the box sits at its origin (zeros follow on every axis).
    dtype : numpy.dtype
        Floating dtype of the computation (that of the input field).
    """

    shape: tuple
    box: tuple
    padded: tuple
    dtype: np.dtype

    @classmethod
    def from_mask(cls, mask, pad_factor, dtype):
        idx = np.argwhere(mask)
        lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        padded = padded_shape(tuple(int(b - a) for a, b in zip(lo, hi)), pad_factor)
        return cls(tuple(mask.shape), box, padded, np.dtype(dtype))

    @property
    def box_shape(self) -> tuple:
        return tuple(s.stop - s.start for s in self.box)

    def pad(self, x) -> np.ndarray:
        """Copy the box of ``x`` (input shape) into a new zero array of the padded shape."""
        out = np.zeros(self.padded, dtype=self.dtype)
        b = self.box_shape
        out[: b[0], : b[1], : b[2]] = x[self.box]
        return out

    def unpad(self, x, mask) -> np.ndarray:
        """Crop a padded array back to the input shape, zero outside ``mask``."""
        out = np.zeros(self.shape, dtype=self.dtype)
        b = self.box_shape
        out[self.box] = x[: b[0], : b[1], : b[2]]
        out[~mask] = 0
        return out


def check_positive(value, name: str, *, allow_none: bool = False, integer: bool = False):
    """Return ``value`` as a positive finite float (or int), else raise a ValueError naming it."""
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    if integer:
        if v != int(v):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return int(v)
    return v


def check_dipole_threshold(value, name: str = "threshold"):
    """``value`` as a float in (0, 2/3), the range of ``|D|``; else a ValueError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 2/3), got {value!r}") from None
    if not 0.0 < v < 2.0 / 3.0:
        raise ValueError(f"{name} must be in (0, 2/3) (|D| <= 2/3), got {value!r}")
    return v


def check_inversion_inputs(local_field, mask, voxel_size, b0_direction, pad_factor):
    """Validate the common inputs of a dipole inversion.

    Returns
    -------
    field : numpy.ndarray
        The local field (ppm) in its floating dtype (float64 for integer input), zero outside
        the mask (a copy; the input is never modified). NaN/inf outside the mask are allowed
        and ignored, like every value there.
    mask : numpy.ndarray of bool
    voxel_size : numpy.ndarray, shape (3,)
    b0_direction : numpy.ndarray, shape (3,), unit norm
    domain : Domain

    Raises
    ------
    ValueError
        Wrong dimensionality or dtype, shape mismatch, empty mask, NaN/inf inside the mask,
        invalid voxel size, B0 direction or padding factor.
    """
    f = np.asarray(local_field)
    if f.ndim != 3:
        raise ValueError(f"local_field must be a 3-D array (I, J, K), got shape {f.shape}")
    if f.dtype == bool or np.issubdtype(f.dtype, np.complexfloating) or not np.issubdtype(
        f.dtype, np.number
    ):
        raise ValueError(f"local_field must be a real array (ppm), got dtype {f.dtype}")
    if not np.issubdtype(f.dtype, np.floating) or f.dtype.itemsize < 4:
        f = f.astype(np.float64)
    if mask is None:
        raise ValueError("mask is required: pass the (eroded) brain mask of the local field")
    m = np.asarray(mask)
    if m.shape != f.shape:
        raise ValueError(f"mask shape {m.shape} does not match local_field shape {f.shape}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or not np.all(np.isfinite(m)):
            raise ValueError("mask must be boolean or numeric without NaN")
        m = m != 0
    if not m.any():
        raise ValueError("mask is empty: there is no voxel to invert")
    if not np.all(np.isfinite(f[m])):
        n_bad = int(np.count_nonzero(~np.isfinite(f[m])))
        raise ValueError(
            f"local_field holds {n_bad} NaN/inf value(s) inside the mask; fix them or exclude "
            "those voxels from the mask"
        )
    vs = check_voxel_size(voxel_size)
    b = check_b0_direction(b0_direction)
    field = np.where(m, f, f.dtype.type(0))
    domain = Domain.from_mask(m, pad_factor, f.dtype)
    return field, m, vs, b, domain


def _non_negative_in_mask(values, mask, name):
    """``(array, values inside mask as float64)`` of a real per-voxel map that must be finite
    and >= 0 inside ``mask``; ValueError naming ``name`` otherwise (shape, dtype, NaN/inf,
    negative values)."""
    a = np.asarray(values)
    if a.shape != mask.shape:
        raise ValueError(f"{name} shape {a.shape} does not match local_field shape {mask.shape}")
    if a.dtype == bool:
        a = a.astype(np.float64)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name} must be a real array, got dtype {a.dtype}")
    inside = a[mask].astype(np.float64)
    if not np.all(np.isfinite(inside)):
        raise ValueError(f"{name} holds NaN/inf inside the mask")
    if np.any(inside < 0):
        raise ValueError(f"{name} must be non-negative")
    return a, inside


def check_weight(weight, mask, dtype):
    """Validate a data-fidelity weight and normalise it to unit root-mean-square in the mask.

    Returns a ``dtype`` array that is zero outside ``mask``. Raises ValueError for a shape
    mismatch, NaN/inf or negative values inside the mask, or a weight that is zero everywhere
    in the mask.
    """
    _, wm = _non_negative_in_mask(weight, mask, "weight")
    rms = float(np.sqrt(np.mean(wm * wm)))
    if rms == 0.0:
        raise ValueError("weight is zero everywhere inside the mask")
    out = np.zeros(mask.shape, dtype=dtype)
    out[mask] = (wm / rms).astype(dtype)
    return out


def padded_gradient_weight(gradient_weight, mask, dom):
    """Validate a per-voxel TV weight and put it on the padded grid of ``dom``.

    ``gradient_weight`` (input shape, finite, >= 0 inside ``mask``) is kept inside the mask;
    the padded grid holds 1 outside it (chi there is regularised as without a weight). None
    gives :data:`chimap.invert._admm_kernels.UNIFORM`. Raises ValueError for a shape mismatch,
    a non-real dtype, NaN/inf or negative values inside the mask.
    """
    from ._admm_kernels import UNIFORM

    if gradient_weight is None:
        return UNIFORM
    g, _ = _non_negative_in_mask(gradient_weight, mask, "gradient_weight")
    inside = np.where(mask, g, 1).astype(dom.dtype)
    out = dom.pad(inside - 1)
    out += 1
    return out


def filter_in_kspace(field, mask, dom, voxel_size, b0_direction, kernel_filter):
    """``chi = IFFT(kernel_filter(D) * FFT(field))`` on the padded grid of ``dom``, cut back to
    the input grid and zeroed outside ``mask``: the common core of the closed-form inversions.

    ``kernel_filter`` maps the real-FFT dipole kernel ``D`` (dtype of ``dom``) to the k-space
    filter; ``field`` is the validated local field of :func:`check_inversion_inputs`.
    """
    import scipy.fft as sfft

    from ..kernels import dipole_kernel, fft_workers

    workers = fft_workers()
    spec = sfft.rfftn(dom.pad(field), workers=workers)
    d = dipole_kernel(dom.padded, voxel_size, b0_direction=b0_direction, real_fft=True, dtype=dom.dtype)
    spec *= kernel_filter(d)
    del d
    chi = box_irfft(dom.padded, dom.box_shape, dom.dtype)(spec, overwrite=True)
    return dom.unpad(chi, mask)


def real_fft_pair(shape, dtype):
    """``(fft, ifft)``: real FFT of a padded-grid array and its inverse (returned in ``dtype``),
    both with chimap's FFT workers; ``ifft(x, overwrite=True)`` may destroy ``x``."""
    import scipy.fft as sfft

    from ..kernels import fft_workers

    workers = fft_workers()

    def fft(x):
        return sfft.rfftn(x, workers=workers)

    def ifft(x, overwrite=False):
        # overwrite=True lets the transform use x as scratch (callers that discard x)
        return sfft.irfftn(x, s=shape, workers=workers, overwrite_x=overwrite).astype(dtype, copy=False)

    return fft, ifft


class DataSplitRegion:
    """Where an ADMM data split is computed, on the padded grid of a :class:`Domain`.

    The TV inversions split ``z2 = D chi`` (weak-harmonic TV also ``q = L phi``) and need, in
    each chi update, the spectrum of ``z2 - u2``. The split's data weight is zero outside the
    mask, where its update without over-relaxation gives ``z2 = D chi`` and ``u2 = 0``: there
    ``z2 - u2`` is the previous ``D chi``, whose spectrum the iteration already holds. So the
    split is computed on the mask's box only: ``D chi`` there by a pruned inverse transform
    (:func:`box_irfft`), and the spectrum of ``z2 - u2`` as that of ``D chi`` plus the pruned
    transform (:func:`box_rfft`) of the gap ``z2 - u2 - D chi``, which is zero outside the box.
    Exact (to float rounding) and two full FFTs cheaper per iteration. With over-relaxation
    (``relax != 1``) ``z2 - u2`` differs from ``D chi`` outside the box, and the region is the
    whole grid.

    Parameters
    ----------
    dom : Domain
        The inversion's domain; the box sits at the origin of its padded grid.
    relax : float
        The ADMM over-relaxation factor of the split's update.
    """

    def __init__(self, dom, relax=1.0):
        self.shape = tuple(dom.box_shape) if float(relax) == 1.0 else tuple(dom.padded)
        self.slices = tuple(slice(0, n) for n in self.shape)
        self.dtype = dom.dtype
        self._fft = box_rfft(dom.padded, self.shape)
        self._ifft = box_irfft(dom.padded, self.shape, dom.dtype)

    def zeros(self):
        """A zero array of the region's shape."""
        return np.zeros(self.shape, dtype=self.dtype)

    def crop(self, x_pad):
        """The region of a padded-grid array (a contiguous copy)."""
        return np.ascontiguousarray(x_pad[self.slices])

    def crop_data(self, f_pad, w2_pad):
        """The split's data on the region: ``(f, W^2, W^2 f)`` from the padded field and squared
        weight."""
        f, w2 = self.crop(f_pad), self.crop(w2_pad)
        return f, w2, w2 * f

    def field(self, spec):
        """The region of ``irfftn(spec)`` (contiguous); ``spec`` is left unchanged."""
        return np.ascontiguousarray(self._ifft(spec))

    def spectrum(self, target, model, model_spec):
        """Spectrum of the padded array equal to ``target`` on the region and to the model
        outside it: ``model_spec + F(target - model)``, where ``model`` is the region of the
        inverse transform of ``model_spec`` (``model_spec`` None: the model is zero)."""
        spec = self._fft(target, minus=model)
        if model_spec is not None:
            spec += model_spec
        return spec


def box_rfft(shape, box_shape):
    """Real FFT of an array that is zero outside the box at the origin of the padded grid.

    ``box_rfft(shape, box_shape)(x) == rfftn(xp)`` where ``xp`` is ``x`` (shape ``box_shape``)
    zero padded to ``shape``, transformed without forming ``xp``: the real transform of the last
    axis runs only on the ``b0 * b1`` lines of the box, the second axis only on the ``b0`` kept
    rows, and only the first axis on the whole grid (the forward counterpart of
    :func:`box_irfft`). The padded spectrum is assembled once in the output array and the two
    complex passes run in place on it. On a 1 mm head (box 140 x 176 x 178 in a 216 x 270 x 270
    grid, 2 cores) ``benchmarks/bench_box_split.py --methods`` printed 49.4 ms against 61.7 ms
    for ``rfftn`` of the padded array (the first axis, transformed in full, dominates). Agrees
    with the full transform to float rounding.

    Parameters
    ----------
    shape : tuple of 3 int
        Shape of the real (padded) grid.
    box_shape : tuple of 3 int
        Shape of the box at the origin of that grid, each at most the grid's.

    Returns
    -------
    callable
        ``fft(x, minus=None)`` for a real array ``x`` of ``box_shape`` (and optionally
        ``minus``, same shape: the transform of ``x - minus`` without forming the difference);
        returns a new half spectrum of shape ``(shape[0], shape[1], shape[2] // 2 + 1)``
        (complex64 for float32 input). Not reentrant: one call at a time per ``fft``.
    """
    import scipy.fft as sfft

    from ..kernels import fft_workers

    workers = fft_workers()
    n0, n1, n2 = (int(n) for n in shape)
    box_shape = tuple(int(n) for n in box_shape)
    b0, b1, b2 = box_shape
    lines = {}  # dtype -> the box's lines zero padded to n2 (the padding stays zero)

    def fft(x, minus=None):
        if x.shape != box_shape or (minus is not None and minus.shape != box_shape):
            raise ValueError(f"box_rfft expects arrays of shape {box_shape}, got "
                             f"{x.shape if minus is None else (x.shape, minus.shape)}")
        dtype = np.result_type(x, minus) if minus is not None else x.dtype
        if dtype.kind != "f":
            dtype = np.dtype(np.float64)
        if dtype not in lines:
            lines[dtype] = np.zeros((b0, b1, n2), dtype)
        line = lines[dtype]
        if minus is None:
            line[:, :, :b2] = x
        else:
            np.subtract(x, minus, out=line[:, :, :b2])
        a = sfft.rfft(line, axis=2, workers=workers)
        # the padded spectrum is assembled once and transformed in place (no padded copies)
        out = np.empty((n0, n1, a.shape[2]), a.dtype)
        out[:b0, :b1] = a
        out[:b0, b1:] = 0
        out[b0:] = 0
        rows = sfft.fft(out[:b0], axis=1, workers=workers, overwrite_x=True)
        if not np.shares_memory(rows, out):  # scipy chose not to work in place
            out[:b0] = rows
        full = sfft.fft(out, axis=0, workers=workers, overwrite_x=True)
        return full
    return fft


def box_irfft(shape, box_shape, dtype):
    """Inverse real FFT cut to the box at the origin: ``irfftn(x, s=shape)[:b0, :b1, :b2]``.

    Where only the box of the result is used (the mask's bounding box of :class:`Domain`), the
    transform is pruned: the first axis is transformed in full and cut to the box, the second
    only along the kept rows and cut, and the real transform of the last axis only on the
    ``b0 * b1`` lines that remain. On a 1 mm head (box 140 x 176 x 178 in a 216 x 270 x 270 grid)
    this halves the cost of the inverse transform (ad-hoc timing, 2 cores: 26-29 ms against
    57-68 ms for ``irfftn`` and a crop). Agrees with the full transform to float rounding.

    Parameters
    ----------
    shape : tuple of 3 int
        Shape of the real (padded) grid.
    box_shape : tuple of 3 int
        Shape of the box at the origin of that grid, each at most the grid's.
    dtype : numpy.dtype
        Real dtype of the result.

    Returns
    -------
    callable
        ``ifft(x, overwrite=False)`` for a half spectrum ``x`` of shape
        ``(shape[0], shape[1], shape[2] // 2 + 1)``; returns an array of ``box_shape`` (a view
        into a larger array: it may not be contiguous). ``overwrite=True`` lets the transform
        use ``x`` as scratch.
    """
    import scipy.fft as sfft

    from ..kernels import fft_workers

    workers = fft_workers()
    b0, b1, b2 = (int(n) for n in box_shape)
    n2 = int(shape[2])

    def ifft(x, overwrite=False):
        a = sfft.ifft(x, axis=0, workers=workers, overwrite_x=overwrite)[:b0]
        a = sfft.ifft(a, axis=1, workers=workers, overwrite_x=True)[:, :b1]
        return sfft.irfft(a, n=n2, axis=2, workers=workers)[:, :, :b2].astype(dtype, copy=False)

    return ifft
