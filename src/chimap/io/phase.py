"""Phase scaling: vendor and converter conventions to radians.

Scanners and converters store phase in many ways. chimap works in radians only, so every phase
image passes through :func:`scale_phase_to_radians` on input.

Conventions (``units=``), stored range -> radians:

- ``rad``: radians, any range (``[-pi, pi]``, ``[0, 2pi]`` or unwrapped) -> unchanged.
- ``siemens``: 0..4095 -> ``(v - 2048) * pi / 2048``; -4096..4095 (dcm2niix after
  RescaleSlope 2, Intercept -4096) -> ``v * pi / 4096``.
- ``milliradians``: -3142..3142 (Philips/GE style) -> ``v / 1000``, the few values beyond
  +-pi wrapped by 2*pi.
- ``uint16``: 0..65535 -> ``(v - 32768) * pi / 32768``.
- ``degrees``: -180..180 or 0..360 -> ``v * pi / 180``.
- ``range``: anything -> the data's ``[min, max]`` mapped linearly onto ``[-pi, pi]``.
- ``auto``: detected, see below; ``vendor``: detected among the integer conventions only.

``auto`` accepts a convention only when the data *fill* its range: the minimum and maximum
both lie within 10 % of the range's ends, and no value lies outside it. With this rule the
ranges above cannot be confused with each other; degrees are never chosen automatically
(0..360 could as well be integers of another scale), and integer-valued data are never taken
as radians. Whatever is not recognised raises ``ValueError`` naming the ``units=`` to pass.
A detected vendor convention is rescaled with a :class:`PhaseScalingWarning` that names it.

Sign: chimap's phase grows with the field (design.md section 3). Vendors that store the opposite
sign (e.g. GE) need ``phase_sign=-1``, which multiplies the radians by -1.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PHASE_UNITS",
    "PhaseScalingWarning",
    "detect_phase_units",
    "scale_phase_to_radians",
]

log = logging.getLogger(__name__)

PHASE_UNITS = ("auto", "vendor", "rad", "siemens", "milliradians", "uint16", "degrees", "range")
_ALIASES = {
    "radians": "rad",
    "radian": "rad",
    "mrad": "milliradians",
    "milliradian": "milliradians",
    "deg": "degrees",
    "degree": "degrees",
    "minmax": "range",
}
_FILL = 0.10  # the data's min and max must lie within 10 % of the range ends for auto-detection
_EPS = 1e-3  # tolerance outside the range, relative to its width


class PhaseScalingWarning(UserWarning):
    """Phase was rescaled from a detected vendor convention to radians."""


@dataclass(frozen=True)
class _Convention:
    name: str  # value for units=
    lo: float
    hi: float
    description: str
    auto: bool  # may be chosen by units="auto"
    radians: bool

    def contains(self, vmin, vmax):
        eps = _EPS * (self.hi - self.lo)
        return self.lo - eps <= vmin and vmax <= self.hi + eps

    def fills(self, vmin, vmax):
        w = self.hi - self.lo
        return self.contains(vmin, vmax) and vmin <= self.lo + _FILL * w and vmax >= self.hi - _FILL * w


_CONVENTIONS = {
    "rad_pm_pi": _Convention("rad", -np.pi, np.pi, "radians in [-pi, pi]", True, True),
    "rad_0_2pi": _Convention("rad", 0.0, 2 * np.pi, "radians in [0, 2pi]", True, True),
    "siemens_signed": _Convention(
        "siemens", -4096.0, 4095.0, "Siemens 12-bit phase rescaled to -4096..4095 (dcm2niix)", True, False
    ),
    "siemens_unsigned": _Convention("siemens", 0.0, 4095.0, "Siemens 12-bit phase 0..4095", True, False),
    "milliradians": _Convention(
        "milliradians", -1000 * np.pi, 1000 * np.pi, "milliradians -3142..3142 (Philips/GE style)", True, False
    ),
    "uint16": _Convention("uint16", 0.0, 65535.0, "16-bit unsigned phase 0..65535", True, False),
    "degrees_pm": _Convention("degrees", -180.0, 180.0, "degrees in [-180, 180]", False, False),
    "degrees_0_360": _Convention("degrees", 0.0, 360.0, "degrees in [0, 360]", False, False),
}


def _finite_range(phase):
    finite = phase[np.isfinite(phase)]
    if finite.size == 0:
        raise ValueError("phase has no finite values (all NaN or inf): nothing to scale")
    return finite, float(finite.min()), float(finite.max())


def _is_integer_valued(a):
    if np.issubdtype(a.dtype, np.integer):
        return True
    return bool(np.all(np.mod(a, 1.0) == 0.0))


def _options_hint():
    return (
        "pass units='rad' (already radians, also unwrapped), units='siemens' (0..4095 or -4096..4095), "
        "units='milliradians' (-3142..3142), units='uint16' (0..65535), units='degrees', or "
        "units='range' (data min..max mapped onto 2*pi)"
    )


def _detect(phase, *, allow_radians=True):
    """Return the key of the detected convention in ``_CONVENTIONS``; raise if none or several."""
    finite, vmin, vmax = _finite_range(phase)
    matches = [k for k, c in _CONVENTIONS.items() if c.fills(vmin, vmax)]
    if any(_CONVENTIONS[k].radians for k in matches):
        if not allow_radians or _is_integer_valued(finite):
            matches = [k for k in matches if not _CONVENTIONS[k].radians]
    rng = f"[{vmin:.6g}, {vmax:.6g}]"
    if len(matches) == 1 and _CONVENTIONS[matches[0]].auto:
        return matches[0]
    if len(matches) == 1:  # degrees
        raise ValueError(
            f"phase values span {rng}, which looks like {_CONVENTIONS[matches[0]].description} but "
            "could be integers of another scale: pass units='degrees' if it is degrees, or "
            "units='range' to map min..max onto 2*pi"
        )
    if len(matches) > 1:
        names = ", ".join(_CONVENTIONS[k].description for k in matches)
        raise ValueError(f"phase values span {rng}, which fits several conventions ({names}): {_options_hint()}")
    if vmax - vmin <= 2 * np.pi * (1 + _EPS) and not _is_integer_valued(finite):
        why = "within 2*pi but not filling [-pi, pi] or [0, 2pi] (arbitrary scaling, or a small phase range?)"
    else:
        why = "not a known vendor range"
    raise ValueError(f"cannot tell the units of phase values spanning {rng}: {why}; {_options_hint()}")


def detect_phase_units(phase) -> str:
    """Detect how a phase image is stored.

    Parameters
    ----------
    phase : array_like
        Phase values as stored (any shape; NaN and inf are ignored).

    Returns
    -------
    str
        The ``units=`` value for :func:`scale_phase_to_radians`: ``'rad'``, ``'siemens'``,
        ``'milliradians'`` or ``'uint16'``.

    Raises
    ------
    ValueError
        When the range is ambiguous or matches no known convention; the message names the
        ``units=`` options.
    """
    return _CONVENTIONS[_detect(np.asarray(phase))].name


def _out_dtype(phase):
    return np.float64 if phase.dtype == np.float64 else np.float32


def _check_within(conv_keys, vmin, vmax, units):
    if not any(_CONVENTIONS[k].contains(vmin, vmax) for k in conv_keys):
        ranges = " or ".join(f"[{_CONVENTIONS[k].lo:.6g}, {_CONVENTIONS[k].hi:.6g}]" for k in conv_keys)
        raise ValueError(
            f"units={units!r} expects phase values in {ranges}, but they span [{vmin:.6g}, {vmax:.6g}]; "
            f"check the data or {_options_hint()}"
        )


def scale_phase_to_radians(phase, *, units="auto", phase_sign=1):
    """Convert stored phase values to radians.

    Parameters
    ----------
    phase : array_like
        Phase as stored by the scanner or converter, any shape. NaN stays NaN.
    units : str
        ``'auto'`` (default) detects the convention from the data range (see the module notes);
        ``'vendor'`` detects among the integer vendor conventions only; or one of ``'rad'``,
        ``'siemens'``, ``'milliradians'``, ``'uint16'``, ``'degrees'``, ``'range'``.
    phase_sign : {1, -1}
        Multiply the radians by this sign; ``-1`` for vendors whose phase decreases with the
        field (e.g. GE), so that chimap's convention (phase grows with the field) holds.

    Returns
    -------
    numpy.ndarray
        Phase in radians, float64 for float64 input and float32 otherwise. A new array; the input
        is never modified.

    Raises
    ------
    ValueError
        For an unknown ``units`` or ``phase_sign``, values outside the range of an explicit
        convention, or (``'auto'``) a range that is ambiguous or unknown; the message names the
        ``units=`` to pass.

    Warns
    -----
    PhaseScalingWarning
        When ``'auto'`` or ``'vendor'`` rescales a detected vendor convention.

    Examples
    --------
    >>> scale_phase_to_radians(np.array([-4096, 0, 4094]), units="siemens")
    array([-3.1415927,  0.       ,  3.1400588], dtype=float32)
    """
    if not isinstance(units, str):
        raise ValueError(f"units must be a string, one of {PHASE_UNITS}, got {units!r}")
    u = _ALIASES.get(units.lower(), units.lower())
    if u not in PHASE_UNITS:
        raise ValueError(f"unknown phase units {units!r}: use one of {', '.join(PHASE_UNITS)}")
    if phase_sign not in (1, -1):
        raise ValueError(f"phase_sign must be +1 or -1, got {phase_sign!r}")
    phase = np.asarray(phase)
    if not (np.issubdtype(phase.dtype, np.integer) or np.issubdtype(phase.dtype, np.floating)):
        raise ValueError(f"phase must be a real integer or float array, got dtype {phase.dtype}")
    dtype = _out_dtype(phase)
    v = phase.astype(dtype)  # always a copy

    if u in ("auto", "vendor"):
        key = _detect(phase, allow_radians=(u == "auto"))
        conv = _CONVENTIONS[key]
        if not conv.radians:
            msg = (
                f"phase values look like {conv.description}; rescaled to radians. "
                f"Pass units={conv.name!r} to confirm this (and silence the warning) or another units= "
                "to override."
            )
            warnings.warn(msg, PhaseScalingWarning, stacklevel=2)
            log.info(msg)
        u = {"siemens_signed": "siemens", "siemens_unsigned": "siemens"}.get(key, conv.name)

    if u == "rad":
        out = v
    elif u == "range":
        _, vmin, vmax = _finite_range(phase)
        if vmax <= vmin:
            raise ValueError(f"units='range' needs varying phase, but all finite values equal {vmin:.6g}")
        out = (v - dtype(vmin)) * dtype(2 * np.pi / (vmax - vmin)) - dtype(np.pi)
    else:
        _, vmin, vmax = _finite_range(phase)
        if u == "siemens":
            _check_within(["siemens_unsigned", "siemens_signed"], vmin, vmax, units)
            if vmin < 0:
                out = v * dtype(np.pi / 4096)
            else:
                out = (v - dtype(2048)) * dtype(np.pi / 2048)
        elif u == "milliradians":
            _check_within(["milliradians"], vmin, vmax, units)
            out = v / dtype(1000)
            # +-3142 mrad lies just beyond +-pi: wrap those few values by 2*pi (the same angle)
            two_pi, pi = dtype(2 * np.pi), dtype(np.pi)
            out[out > pi] -= two_pi
            out[out < -pi] += two_pi
        elif u == "uint16":
            _check_within(["uint16"], vmin, vmax, units)
            out = (v - dtype(32768)) * dtype(np.pi / 32768)
        else:  # degrees
            if vmin < -360 or vmax > 360:
                raise ValueError(
                    f"units='degrees' expects values within [-360, 360], but they span [{vmin:.6g}, {vmax:.6g}]"
                )
            out = v * dtype(np.pi / 180)
    if phase_sign == -1:
        np.negative(out, out=out)  # out is a fresh array, never the input
    return out.astype(dtype, copy=False)
