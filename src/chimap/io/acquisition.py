"""The acquisition record: echo times, field strength and geometry of one multi-echo series.

:class:`Acquisition` is what ``chimap.io`` hands to the algorithms' callers: every value is in
chimap's units (seconds, tesla, mm) and checked once, here. ``b0_direction`` is derived from the
affine (B0 = world +z) unless given explicitly; after a resampling it must be carried explicitly
(sidecar key ``B0Direction``), because the new affine no longer tells it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..geometry import b0_direction_from_affine, check_b0_direction, check_voxel_size, parse_phase_encoding, voxel_sizes
from ..units import check_echo_times, check_field_strength
from .sidecar import B0_DIRECTION_KEY, SidecarInfo, parse_sidecar

__all__ = ["Acquisition"]


def _readonly(a):
    a = np.array(a, dtype=np.float64)  # copy
    a.setflags(write=False)
    return a


def _check_affine(affine):
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("affine has NaN or inf entries")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise ValueError(f"affine's last row must be [0, 0, 0, 1], got {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError("affine is singular (its 3x3 part has zero determinant)")
    return a


def _check_shape(shape, n_echoes):
    try:
        s = tuple(int(n) for n in shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of ints, got {shape!r}") from None
    if len(s) == 4:
        if s[3] != n_echoes:
            raise ValueError(
                f"shape {s} has {s[3]} echo(es) on its last axis but {n_echoes} echo time(s) are given"
            )
        s = s[:3]
    if len(s) != 3 or any(n < 1 for n in s):
        raise ValueError(f"shape must be (I, J, K) or (I, J, K, E) with positive sizes, got {tuple(shape)}")
    return s


@dataclass(frozen=True, eq=False)
class Acquisition:
    """Acquisition parameters of a multi-echo GRE series, in chimap units.

    Parameters
    ----------
    echo_times : array_like, shape (E,)
        Echo times in seconds (an error above 1 s: milliseconds are not converted).
    field_strength : float
        Main field in tesla.
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm; must agree with the affine's column lengths.
    b0_direction : array_like, shape (3,)
        Direction of B0 in voxel axes; normalised on construction.
    affine : array_like, shape (4, 4)
        Voxel-to-world (scanner RAS+, mm) affine of the data.
    shape : tuple of int
        Spatial shape ``(I, J, K)``; a 4-D ``(I, J, K, E)`` is accepted when ``E`` equals the
        number of echo times, and stored as ``(I, J, K)``.

    Notes
    -----
    Arrays are stored as read-only float64 copies. Use :meth:`from_affine` to derive
    ``voxel_size`` and ``b0_direction`` from an affine, and :func:`dataclasses.replace` to
    change a field (it is validated again).
    """

    echo_times: np.ndarray
    field_strength: float
    voxel_size: np.ndarray
    b0_direction: np.ndarray
    affine: np.ndarray
    shape: tuple
    phase_encoding: str | None = None
    effective_echo_spacing: float | None = None

    def __post_init__(self):
        te = check_echo_times(self.echo_times)
        affine = _check_affine(self.affine)
        vs = check_voxel_size(self.voxel_size)
        vs_aff = voxel_sizes(affine)
        if not np.allclose(vs, vs_aff, rtol=1e-3, atol=1e-5):
            raise ValueError(
                f"voxel_size {vs.tolist()} mm disagrees with the affine's voxel sizes {vs_aff.tolist()} mm; "
                "use Acquisition.from_affine to derive it"
            )
        set_ = object.__setattr__
        set_(self, "echo_times", _readonly(te))
        set_(self, "field_strength", check_field_strength(self.field_strength))
        set_(self, "voxel_size", _readonly(vs))
        set_(self, "b0_direction", _readonly(check_b0_direction(self.b0_direction)))
        set_(self, "affine", _readonly(affine))
        set_(self, "shape", _check_shape(self.shape, te.size))
        if self.phase_encoding is not None:
            axis, polarity = parse_phase_encoding(self.phase_encoding)
            set_(self, "phase_encoding", "ijk"[axis] + ("-" if polarity < 0 else ""))
        if self.effective_echo_spacing is not None:
            ees = float(self.effective_echo_spacing)
            if not 0 < ees < 5e-3:
                raise ValueError(f"effective echo spacing must be in seconds (0 < EES < 5 ms), got "
                                 f"{self.effective_echo_spacing}")
            set_(self, "effective_echo_spacing", ees)

    # ---------------------------------------------------------------- derived values
    @property
    def n_echoes(self) -> int:
        """Number of echoes."""
        return int(self.echo_times.size)

    @property
    def obliquity_deg(self) -> float:
        """Angle in degrees between B0 and the closest voxel axis (0 for a straight acquisition).

        Uses ``b0_direction`` (which may have been given explicitly), not the affine.
        """
        # same definition as chimap.geometry.obliquity_deg, applied to the carried direction
        return float(np.degrees(np.arccos(np.clip(np.max(np.abs(self.b0_direction)), -1.0, 1.0))))

    @property
    def b0_matches_affine(self) -> bool:
        """Whether ``b0_direction`` equals the one derived from the affine (within 1e-6)."""
        return bool(np.allclose(self.b0_direction, b0_direction_from_affine(self.affine), atol=1e-6))

    def __eq__(self, other):
        if not isinstance(other, Acquisition):
            return NotImplemented
        return (
            self.shape == other.shape
            and self.field_strength == other.field_strength
            and all(
                np.array_equal(getattr(self, f), getattr(other, f))
                for f in ("echo_times", "voxel_size", "b0_direction", "affine")
            )
        )

    __hash__ = object.__hash__

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_affine(cls, affine, shape, *, echo_times, field_strength, b0_direction=None, phase_encoding=None,
                    effective_echo_spacing=None):
        """Build an acquisition from an affine, deriving voxel sizes and (by default) B0.

        Parameters
        ----------
        affine : array_like, shape (4, 4)
        shape : tuple of int
            ``(I, J, K)`` or ``(I, J, K, E)``.
        echo_times : float or array_like
            Seconds.
        field_strength : float
            Tesla.
        b0_direction : array_like, shape (3,), optional
            B0 in voxel axes; default ``normalize(R.T @ (0, 0, 1))`` from the affine. Give it
            explicitly for resampled data.
        phase_encoding : str, optional
            EPI phase-encoding direction, BIDS style (``"j"``, ``"j-"``, ...).
        effective_echo_spacing : float, optional
            EPI effective echo spacing in seconds (BIDS ``EffectiveEchoSpacing``).

        Returns
        -------
        Acquisition
        """
        affine = _check_affine(affine)
        if b0_direction is None:
            b0_direction = b0_direction_from_affine(affine)
        return cls(
            echo_times=echo_times,
            field_strength=field_strength,
            voxel_size=voxel_sizes(affine),
            b0_direction=b0_direction,
            affine=affine,
            shape=shape,
            phase_encoding=phase_encoding,
            effective_echo_spacing=effective_echo_spacing,
        )

    @classmethod
    def from_sidecars(cls, sidecars, *, affine, shape, echo_times=None, field_strength=None, b0_direction=None):
        """Build an acquisition from BIDS sidecars and an image's geometry.

        Parameters
        ----------
        sidecars : path, dict, SidecarInfo, or a sequence of them
            One sidecar with all echo times (``EchoTime`` list), or one per echo in echo order.
        affine : array_like, shape (4, 4)
        shape : tuple of int
            ``(I, J, K)`` or ``(I, J, K, E)``.
        echo_times, field_strength, b0_direction : optional
            Explicit values; they take precedence over the sidecars (with a ``UserWarning`` when
            they disagree). ``b0_direction`` falls back to the sidecars' ``B0Direction``, then to
            the affine.

        Returns
        -------
        Acquisition

        Raises
        ------
        ValueError
            When sidecars disagree on the field strength or B0 direction, or a value is missing
            and not given explicitly.
        """
        infos = _as_infos(sidecars)
        te_side = [i.echo_times for i in infos if i.echo_times is not None]
        if te_side and len(te_side) != len(infos):
            missing = [i.source for i in infos if i.echo_times is None]
            raise ValueError(f"sidecar(s) {missing} have no EchoTime while others do; add it or pass echo_times=")
        te_side = np.concatenate(te_side) if te_side else None
        b0_side = _agreeing([i.field_strength for i in infos], infos, "MagneticFieldStrength")
        dir_side = _agreeing([i.b0_direction for i in infos], infos, B0_DIRECTION_KEY)

        te = _pick(echo_times, te_side, "echo_times", "EchoTime", "pass echo_times= (seconds)")
        b0 = _pick(field_strength, b0_side, "field_strength", "MagneticFieldStrength",
                   "pass field_strength= (tesla)")
        if b0_direction is not None:
            b0_direction = check_b0_direction(b0_direction)
            if dir_side is not None:
                _pick(b0_direction, dir_side, "b0_direction", B0_DIRECTION_KEY, "")
        bdir = b0_direction if b0_direction is not None else dir_side
        pe, ees = _epi_readout(infos, shape)
        return cls.from_affine(affine, shape, echo_times=te, field_strength=b0, b0_direction=bdir,
                               phase_encoding=pe, effective_echo_spacing=ees)

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """A JSON-able dict of all fields (lists and floats); inverse of :meth:`from_dict`."""
        return {
            "echo_times": self.echo_times.tolist(),
            "field_strength": float(self.field_strength),
            "voxel_size": self.voxel_size.tolist(),
            "b0_direction": self.b0_direction.tolist(),
            "affine": self.affine.tolist(),
            "shape": list(self.shape),
            "phase_encoding": self.phase_encoding,
            "effective_echo_spacing": self.effective_echo_spacing,
        }

    @classmethod
    def from_dict(cls, d):
        """Rebuild an acquisition from :meth:`to_dict` output; unknown or missing keys are errors."""
        if not isinstance(d, Mapping):
            raise ValueError(f"Acquisition.from_dict needs a dict, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        optional = {"phase_encoding", "effective_echo_spacing"}
        unknown = sorted(set(d) - set(names))
        missing = [n for n in names if n not in d and n not in optional]
        if unknown or missing:
            raise ValueError(
                f"Acquisition.from_dict: unknown key(s) {unknown}, missing key(s) {missing}; expected {names}"
            )
        return cls(**{n: d[n] for n in names if n in d})

    def to_sidecar(self) -> dict:
        """BIDS sidecar keys: ``EchoTime`` (s), ``MagneticFieldStrength`` (T), ``B0Direction``."""
        te = self.echo_times.tolist()
        out = {
            "EchoTime": te[0] if len(te) == 1 else te,
            "MagneticFieldStrength": float(self.field_strength),
            B0_DIRECTION_KEY: self.b0_direction.tolist(),
        }
        if self.phase_encoding is not None:
            out["PhaseEncodingDirection"] = self.phase_encoding
        if self.effective_echo_spacing is not None:
            out["EffectiveEchoSpacing"] = self.effective_echo_spacing
        return out


def _as_infos(sidecars):
    if isinstance(sidecars, (str, Path, Mapping, SidecarInfo)):
        sidecars = [sidecars]
    if not isinstance(sidecars, Sequence) or len(sidecars) == 0:
        raise ValueError("sidecars must be a path, a dict, or a non-empty list of them")
    return [s if isinstance(s, SidecarInfo) else parse_sidecar(s) for s in sidecars]


def _epi_readout(infos, shape):
    """Phase-encoding direction and effective echo spacing from the sidecars (None where absent).

    ``PhaseEncodingDirection`` (BIDS) or chimap's older ``PhaseEncodingAxis`` (an int, positive
    polarity); ``EffectiveEchoSpacing``, else ``TotalReadoutTime / (N_pe - 1)`` (BIDS definition).
    """
    raw = infos[0].raw
    pe = raw.get("PhaseEncodingDirection")
    if pe is None and raw.get("PhaseEncodingAxis") is not None:
        pe = raw["PhaseEncodingAxis"]
    if pe is not None:
        try:
            axis, polarity = parse_phase_encoding(pe)
        except ValueError as exc:
            raise ValueError(f"{infos[0].source}: {exc}") from None
        pe = "ijk"[axis] + ("-" if polarity < 0 else "")
    ees = raw.get("EffectiveEchoSpacing")
    if ees is None and raw.get("TotalReadoutTime") is not None and pe is not None:
        n_pe = int(shape["ijk".index(pe[0])])
        if n_pe > 1:
            ees = float(raw["TotalReadoutTime"]) / (n_pe - 1)
    if ees is not None:
        if isinstance(ees, bool) or not isinstance(ees, (int, float)) or not 0 < ees < 5e-3:
            raise ValueError(f"{infos[0].source}: EffectiveEchoSpacing must be in seconds (0 < EES < 5 ms), "
                             f"got {ees!r}")
        ees = float(ees)
    return pe, ees


def _agreeing(values, infos, key):
    given = [(v, i.source) for v, i in zip(values, infos) if v is not None]
    if not given:
        return None
    ref, src = given[0]
    for v, s in given[1:]:
        if not np.allclose(v, ref, rtol=1e-3, atol=1e-6):
            raise ValueError(f"sidecars disagree on {key}: {np.asarray(ref).tolist()} in {src}, "
                             f"{np.asarray(v).tolist()} in {s}")
    return ref


def _pick(explicit, from_sidecar, name, key, hint):
    if explicit is None:
        if from_sidecar is None:
            raise ValueError(f"no {name}: the sidecar(s) have no {key}; {hint}")
        return from_sidecar
    if from_sidecar is not None:
        a = np.atleast_1d(np.asarray(explicit, dtype=np.float64)).ravel()
        b = np.atleast_1d(np.asarray(from_sidecar, dtype=np.float64)).ravel()
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-9):
            warnings.warn(
                f"{name}={a.tolist()} given explicitly overrides the sidecar's {key}={b.tolist()}",
                UserWarning,
                stacklevel=3,
            )
    return explicit
