"""BIDS-style JSON sidecars: read acquisition parameters, write them back.

Keys read (BIDS names, SI units as BIDS prescribes):

- ``EchoTime``: seconds; a number (one echo per file) or a list (all echoes in one sidecar).
  Where it is absent, ``EchoTime1``, ``EchoTime2``, ... (dcm2niix phase-difference style) are
  read as the list of echo times.
- ``EchoNumber``: 1-based echo index, used to sort one-file-per-echo inputs.
- ``MagneticFieldStrength``: tesla.
- ``B0Direction`` (chimap-specific): the B0 direction in voxel axes, written after resampling or
  by the simulator, where it cannot be recomputed from the affine.
- ``PhaseUnits`` (chimap-specific): how the phase is stored, a ``units=`` value of
  :func:`chimap.io.scale_phase_to_radians`; a BIDS ``Units`` of ``"rad"`` counts as well.

Echo times above 1 s are rejected with a hint that they look like milliseconds; nothing is
converted silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry import check_b0_direction
from ..units import check_echo_times, check_field_strength
from .nifti import write_json

__all__ = ["SidecarInfo", "read_sidecar", "parse_sidecar", "sidecar_path_for", "write_sidecar"]

B0_DIRECTION_KEY = "B0Direction"
PHASE_UNITS_KEY = "PhaseUnits"


@dataclass(frozen=True)
class SidecarInfo:
    """Acquisition parameters read from one sidecar; ``None`` where the sidecar has no value.

    Attributes
    ----------
    echo_times : numpy.ndarray or None
        Echo times in seconds, shape (E,).
    echo_number : int or None
        ``EchoNumber`` (1-based).
    field_strength : float or None
        Tesla.
    b0_direction : numpy.ndarray or None
        Unit vector in voxel axes (``B0Direction``).
    phase_units : str or None
        ``PhaseUnits``, or ``'rad'`` from a BIDS ``Units`` of radians.
    source : str
        Where it came from (path or ``'<dict>'``), for messages.
    raw : dict
        The whole JSON object.
    """

    echo_times: np.ndarray | None = None
    echo_number: int | None = None
    field_strength: float | None = None
    b0_direction: np.ndarray | None = None
    phase_units: str | None = None
    source: str = "<dict>"
    raw: dict = field(default_factory=dict, repr=False, compare=False)


def read_sidecar(path) -> dict:
    """Read a JSON sidecar into a dict.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not valid JSON or not a JSON object.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such sidecar: {path}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path} as JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object ({{...}}), got {type(meta).__name__}")
    return meta


def _echo_times(meta, source):
    if "EchoTime" in meta:
        te, key = meta["EchoTime"], "EchoTime"
    else:
        numbered = sorted(
            (int(k[len("EchoTime"):]), k) for k in meta if k.startswith("EchoTime") and k[len("EchoTime"):].isdigit()
        )
        if not numbered:
            return None
        te, key = [meta[k] for _, k in numbered], "/".join(k for _, k in numbered)
    try:
        return check_echo_times(te)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: {key}: {exc} (BIDS sidecars give EchoTime in seconds)") from None


def parse_sidecar(meta, *, source=None) -> SidecarInfo:
    """Extract and validate the acquisition parameters of a sidecar.

    Parameters
    ----------
    meta : Mapping or str or Path
        A sidecar dict, or the path of a JSON file.
    source : str, optional
        Name used in messages; default the path, or ``'<dict>'``.

    Returns
    -------
    SidecarInfo

    Raises
    ------
    ValueError
        For echo times above 1 s ("look like milliseconds"), non-positive values, an implausible
        field strength, a malformed ``B0Direction`` or ``EchoNumber``.
    """
    if not isinstance(meta, Mapping):
        source = source or str(meta)
        meta = read_sidecar(meta)
    source = source or "<dict>"
    te = _echo_times(meta, source)
    b0 = meta.get("MagneticFieldStrength")
    if b0 is not None:
        try:
            b0 = check_field_strength(b0)
        except ValueError as exc:
            raise ValueError(f"{source}: MagneticFieldStrength: {exc}") from None
    num = meta.get("EchoNumber")
    if num is not None:
        if isinstance(num, bool) or not isinstance(num, (int, float)) or num != int(num) or num < 1:
            raise ValueError(f"{source}: EchoNumber must be a positive integer, got {num!r}")
        num = int(num)
    bdir = meta.get(B0_DIRECTION_KEY)
    if bdir is not None:
        try:
            bdir = check_b0_direction(bdir)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: {B0_DIRECTION_KEY}: {exc}") from None
    units = meta.get(PHASE_UNITS_KEY)
    if units is None and str(meta.get("Units", "")).lower() in ("rad", "radian", "radians"):
        units = "rad"
    if units is not None and not isinstance(units, str):
        raise ValueError(f"{source}: {PHASE_UNITS_KEY} must be a string such as 'rad', got {units!r}")
    return SidecarInfo(
        echo_times=te,
        echo_number=num,
        field_strength=b0,
        b0_direction=bdir,
        phase_units=units,
        source=source,
        raw=dict(meta),
    )


def sidecar_path_for(image_path) -> Path:
    """The BIDS sidecar path of an image: ``x.nii.gz`` or ``x.nii`` -> ``x.json``."""
    p = Path(image_path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".gz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return p.with_name(name + ".json")


def write_sidecar(path, metadata=None, *, echo_times=None, field_strength=None, b0_direction=None,
                  echo_number=None, phase_units=None, extra=None):
    """Write a BIDS-style JSON sidecar atomically.

    Parameters
    ----------
    path : str or Path
        Destination ``.json``.
    metadata : Mapping or Acquisition, optional
        Base content; an :class:`~chimap.io.Acquisition` contributes ``EchoTime``,
        ``MagneticFieldStrength`` and ``B0Direction``.
    echo_times : float or sequence of float, optional
        Seconds; a single value is written as a number, several as a list.
    field_strength : float, optional
        Tesla.
    b0_direction : array_like, shape (3,), optional
        Written as ``B0Direction`` (unit vector, voxel axes).
    echo_number : int, optional
    phase_units : str, optional
        Written as ``PhaseUnits``.
    extra : Mapping, optional
        More keys, written last.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If the resulting ``EchoTime`` or ``MagneticFieldStrength`` fails the unit checks (a
        sidecar in milliseconds is never written).
    """
    if metadata is None:
        meta = {}
    elif isinstance(metadata, Mapping):
        meta = dict(metadata)
    elif hasattr(metadata, "to_sidecar"):
        meta = metadata.to_sidecar()
    else:
        raise ValueError(f"metadata must be a dict or an Acquisition, got {type(metadata).__name__}")
    if echo_times is not None:
        te = check_echo_times(echo_times)
        meta["EchoTime"] = float(te[0]) if te.size == 1 else te.tolist()
    if field_strength is not None:
        meta["MagneticFieldStrength"] = check_field_strength(field_strength)
    if b0_direction is not None:
        meta[B0_DIRECTION_KEY] = check_b0_direction(b0_direction).tolist()
    if echo_number is not None:
        meta["EchoNumber"] = int(echo_number)
    if phase_units is not None:
        meta[PHASE_UNITS_KEY] = str(phase_units)
    if extra:
        meta.update(extra)
    parse_sidecar(meta, source=str(path))  # validate what is about to be written
    return write_json(path, meta)
