"""Unit conversions between phase (rad), frequency (Hz) and field (ppm of B0).

Sign convention (design.md section 3): ``phase = +2*pi * gamma_bar * B0 * dB * TE`` with
``dB`` the relative field in ppm * 1e-6, so a positive field gives a positive phase.
"""

from __future__ import annotations

import numpy as np

from .constants import GAMMA_BAR_HZ_PER_T

__all__ = [
    "larmor_hz",
    "hz_per_ppm",
    "ppm_to_hz",
    "hz_to_ppm",
    "rad_to_hz",
    "hz_to_rad",
    "rad_to_ppm",
    "ppm_to_rad",
    "check_echo_times",
    "check_field_strength",
]


def check_field_strength(field_strength: float) -> float:
    """Validate a main field strength in tesla and return it as a float.

    Raises
    ------
    ValueError
        If it is not a finite positive number, or is implausibly large (a value in mT or gauss).
    """
    try:
        b0 = float(field_strength)
    except (TypeError, ValueError):
        raise ValueError(f"field strength must be a number in tesla, got {field_strength!r}") from None
    if not np.isfinite(b0) or b0 <= 0:
        raise ValueError(f"field strength must be positive and finite (tesla), got {b0}")
    if b0 > 30:
        raise ValueError(
            f"field strength {b0} T is implausible: give it in tesla (e.g. 3 or 7), not mT or gauss"
        )
    return b0


def check_echo_times(echo_times, n_echoes: int | None = None) -> np.ndarray:
    """Validate echo times in seconds and return them as a float64 array of shape (E,).

    Parameters
    ----------
    echo_times : float or sequence of float
        Echo times in seconds.
    n_echoes : int, optional
        Number of echoes on the data's echo axis; the lists must agree.

    Raises
    ------
    ValueError
        With a hint when the times look like milliseconds (> 1 s), are not positive and finite,
        or do not match the echo axis.
    """
    te = np.atleast_1d(np.asarray(echo_times, dtype=np.float64)).ravel()
    if te.size == 0:
        raise ValueError("no echo times given")
    if not np.all(np.isfinite(te)) or np.any(te <= 0):
        raise ValueError(f"echo times must be positive and finite (seconds), got {te.tolist()}")
    if np.any(te > 1.0):
        raise ValueError(
            f"echo times {te.tolist()} exceed 1 s: they look like milliseconds. "
            "chimap takes echo times in seconds (e.g. 0.02 for 20 ms); divide by 1000."
        )
    if n_echoes is not None and te.size != n_echoes:
        raise ValueError(
            f"{te.size} echo time(s) given but the data has {n_echoes} echo(es) on its last axis"
        )
    return te


def larmor_hz(field_strength: float) -> float:
    """Proton Larmor frequency in Hz at ``field_strength`` tesla."""
    return GAMMA_BAR_HZ_PER_T * check_field_strength(field_strength)


def hz_per_ppm(field_strength: float) -> float:
    """Frequency offset in Hz of a 1 ppm field change at ``field_strength`` tesla."""
    return larmor_hz(field_strength) * 1e-6


def ppm_to_hz(field_ppm, *, field_strength: float):
    """Convert a field in ppm of B0 to a frequency offset in Hz."""
    return np.multiply(field_ppm, hz_per_ppm(field_strength))


def hz_to_ppm(field_hz, *, field_strength: float):
    """Convert a frequency offset in Hz to a field in ppm of B0."""
    return np.divide(field_hz, hz_per_ppm(field_strength))


def hz_to_rad(field_hz, *, echo_time: float):
    """Phase in radians accrued by a frequency offset in Hz at ``echo_time`` seconds."""
    te = float(check_echo_times(echo_time)[0])
    return np.multiply(field_hz, 2.0 * np.pi * te)


def rad_to_hz(phase, *, echo_time: float):
    """Frequency offset in Hz that accrues ``phase`` radians at ``echo_time`` seconds."""
    te = float(check_echo_times(echo_time)[0])
    return np.divide(phase, 2.0 * np.pi * te)


def ppm_to_rad(field_ppm, *, echo_time: float, field_strength: float):
    """Phase in radians accrued at ``echo_time`` (s) by a field in ppm at ``field_strength`` (T)."""
    te = float(check_echo_times(echo_time)[0])
    return np.multiply(field_ppm, 2.0 * np.pi * te * hz_per_ppm(field_strength))


def rad_to_ppm(phase, *, echo_time: float, field_strength: float):
    """Field in ppm of B0 that accrues ``phase`` radians at ``echo_time`` (s), ``field_strength`` (T)."""
    te = float(check_echo_times(echo_time)[0])
    return np.divide(phase, 2.0 * np.pi * te * hz_per_ppm(field_strength))
