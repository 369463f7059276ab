"""Load multi-echo magnitude and phase into ``(I, J, K, E)`` arrays with an :class:`Acquisition`.

Inputs are either one 4-D NIfTI per contrast (echoes last) or one 3-D NIfTI per echo. Per-echo
files are sorted by their sidecars' ``EchoNumber`` (or, where absent, ``EchoTime``). Sidecars are
found next to the images (``x.nii.gz`` -> ``x.json``) unless given. Phase is converted to radians
with :func:`chimap.io.scale_phase_to_radians`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..units import check_echo_times
from .acquisition import Acquisition
from .nifti import load_nifti
from .phase import scale_phase_to_radians
from .sidecar import SidecarInfo, parse_sidecar, sidecar_path_for

__all__ = ["load_multiecho", "NAN_POLICIES"]

NAN_POLICIES = ("raise", "zero")


def _as_paths(x, what):
    if isinstance(x, (str, Path)):
        return [Path(x)], False
    if isinstance(x, Sequence) and len(x) > 0 and all(isinstance(p, (str, Path)) for p in x):
        return [Path(p) for p in x], True
    raise ValueError(f"{what} must be a NIfTI path or a non-empty list of paths (one 3-D file per echo), got {x!r}")


def _load_series(paths, is_list, what, affine_atol):
    """Load files; return data (I,J,K,E) unsorted per-file volumes, affine, on-disk float64 flag."""
    vols, affines, all_f64 = [], [], True
    for p in paths:
        data, affine, header = load_nifti(p)
        all_f64 &= header.get_data_dtype() == np.float64
        if is_list:
            if data.ndim == 4 and data.shape[3] == 1:
                data = data[..., 0]
            if data.ndim != 3:
                raise ValueError(
                    f"{what} file {p} has shape {data.shape}: a list of {what} files needs one 3-D volume per echo "
                    "(or pass a single 4-D file with echoes last)"
                )
        else:
            if data.ndim == 3:
                data = data[..., None]
            if data.ndim != 4:
                raise ValueError(f"{what} file {p} has shape {data.shape}: expected 3-D (I,J,K) or 4-D (I,J,K,E)")
        vols.append(data)
        affines.append(affine)
    for p, v, a in zip(paths[1:], vols[1:], affines[1:]):
        if v.shape != vols[0].shape:
            raise ValueError(f"{what} echo files differ in shape: {paths[0]} is {vols[0].shape}, {p} is {v.shape}")
        _check_affines(affines[0], a, f"{what} {paths[0]}", f"{what} {p}", affine_atol)
    return vols, affines[0], bool(all_f64)


def _check_affines(a, b, name_a, name_b, atol):
    diff = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    if diff > atol:
        raise ValueError(
            f"affines differ by up to {diff:.4g} (tolerance {atol:g}) between {name_a} and {name_b}: the images "
            f"are not on the same grid.\n{name_a}:\n{np.round(a, 5)}\n{name_b}:\n{np.round(b, 5)}"
        )


def _discover(paths):
    found = [sidecar_path_for(p) for p in paths]
    have = [s.exists() for s in found]
    if all(have):
        return [parse_sidecar(s) for s in found]
    if any(have):
        missing = [str(s) for s, h in zip(found, have) if not h]
        raise ValueError(f"sidecar(s) missing: {missing}; add them, or pass json= / echo_times= explicitly")
    return None


def _as_infos(json):
    if isinstance(json, (str, Path, Mapping, SidecarInfo)):
        json = [json]
    if not isinstance(json, Sequence) or len(json) == 0:
        raise ValueError(f"json must be a sidecar path, a dict, or a list of them, got {json!r}")
    return [j if isinstance(j, SidecarInfo) else parse_sidecar(j) for j in json]


def _sort_order(infos, te_per_file, n):
    """Permutation sorting per-echo files: by EchoNumber where all have it, else by echo time."""
    if infos is not None and len(infos) == n and all(i.echo_number is not None for i in infos):
        keys, by = [i.echo_number for i in infos], "EchoNumber"
    elif te_per_file is not None:
        keys, by = list(te_per_file), "EchoTime"
    else:
        return list(range(n))
    if len(set(keys)) != len(keys):
        raise ValueError(f"echo files share an {by} ({keys}): each echo file needs its own echo")
    return sorted(range(n), key=lambda k: keys[k])


def _per_file_te(infos, n, source):
    if infos is None or len(infos) != n:
        return None
    tes = [i.echo_times for i in infos]
    if any(t is None for t in tes):
        return None
    if any(t.size != 1 for t in tes):
        bad = [i.source for i in infos if i.echo_times.size != 1]
        raise ValueError(f"{source} sidecar(s) {bad} give several EchoTime values for a single-echo file")
    return np.array([t[0] for t in tes])


def _order_list(vols, infos, explicit_te, n, what):
    """Sort per-echo volumes; returns (data (I,J,K,E), sorted infos or None, sorted TEs or None, order)."""
    if infos is not None and len(infos) not in (1, n):
        raise ValueError(f"{len(infos)} sidecars given for {n} {what} echo files: give one per file, or one in all")
    per_file = infos if infos is not None and len(infos) == n else None
    if explicit_te is not None:
        te = check_echo_times(explicit_te, n_echoes=n)
    elif infos is not None and per_file is None:
        te = infos[0].echo_times  # one sidecar listing all echoes, in file order
        if te is not None:
            te = check_echo_times(te, n_echoes=n)
    else:
        te = _per_file_te(per_file, n, what)
    order = _sort_order(per_file, te, n)
    data = np.stack([vols[k] for k in order], axis=-1)
    if per_file is not None:
        infos = [per_file[k] for k in order]
    if te is not None:
        te = np.asarray(te)[order]
    return data, infos, te, order


def _nan_check(arr, what, te, nan_policy):
    bad = ~np.isfinite(arr)
    if not bad.any():
        return bad
    per_echo = bad.reshape(-1, arr.shape[-1]).sum(axis=0)
    detail = ", ".join(
        f"echo {e + 1}" + (f" (TE {te[e] * 1e3:.4g} ms)" if te is not None else "") + f": {int(c)}"
        for e, c in enumerate(per_echo)
        if c
    )
    if nan_policy == "raise":
        raise ValueError(
            f"{what} has NaN/inf voxels ({detail} of {arr[..., 0].size} per echo); "
            "pass nan_policy='zero' to set them to 0 (and the magnitude there to 0, so masks exclude them)"
        )
    warnings.warn(f"{what}: set {int(per_echo.sum())} NaN/inf voxel(s) to 0 ({detail})", UserWarning, stacklevel=3)
    return bad


def load_multiecho(*, phase, magnitude=None, json=None, echo_times=None, field_strength=None, b0_direction=None,
                   phase_units="auto", phase_sign=1, nan_policy="raise", affine_atol=1e-3):
    """Load multi-echo phase (and magnitude) as ``(I, J, K, E)`` arrays with their acquisition.

    Parameters
    ----------
    phase : str or Path or list of them
        One 4-D NIfTI (echoes last; a 3-D file is one echo) or one 3-D NIfTI per echo. Per-echo
        files are sorted by their sidecars' ``EchoNumber``, else by echo time (sidecar or
        ``echo_times``); without either they are taken in the order given.
    magnitude : str or Path or list of them, optional
        The same layout as ``phase``; ``None`` to load phase only. Per-echo magnitude files are
        sorted by their own sidecars where these tell the echo (and their echo times must agree
        with the phase's), else put in the phase files' order.
    json : path, dict, or list of them, optional
        BIDS sidecars: one for all echoes (``EchoTime`` list) or one per echo file. Default: the
        sidecars next to the phase files (``x.nii.gz`` -> ``x.json``), else next to the magnitude.
    echo_times : array_like, optional
        Seconds, in the order of the echo axis (4-D input) or of the files as given (list input);
        overrides the sidecars.
    field_strength : float, optional
        Tesla; overrides ``MagneticFieldStrength``.
    b0_direction : array_like, shape (3,), optional
        B0 in voxel axes; default the sidecar's ``B0Direction``, else derived from the affine.
    phase_units : str
        ``units=`` of :func:`scale_phase_to_radians` (``'auto'``, ``'rad'``, ``'siemens'``,
        ``'milliradians'``, ``'uint16'``, ``'degrees'``, ``'range'``, ``'vendor'``). With ``'auto'``,
        a sidecar's ``PhaseUnits`` is used where present.
    phase_sign : {1, -1}
        ``-1`` for vendors whose phase decreases with the field (e.g. GE).
    nan_policy : {'raise', 'zero'}
        NaN/inf in phase or magnitude: ``'raise'`` a ``ValueError`` naming the echoes and voxel
        counts, or ``'zero'``: set them to 0 with a warning, and set the magnitude of voxels with
        non-finite phase to 0 as well.
    affine_atol : float
        Largest allowed difference (mm) between the affines of the files.

    Returns
    -------
    magnitude : numpy.ndarray or None
        Shape (I, J, K, E); float64 when stored as float64, else float32.
    phase : numpy.ndarray
        Radians, shape (I, J, K, E); float64 when stored as float64, else float32.
    acquisition : Acquisition
        Echo times (s, in echo-axis order), field strength (T), voxel size, B0 direction, the
        phase image's affine and shape.

    Raises
    ------
    ValueError
        For mismatched shapes or affines (both named), echo times that do not match the echo
        axis or look like milliseconds, missing echo times or field strength, NaNs under
        ``nan_policy='raise'``, or phase whose units cannot be told (see
        :func:`scale_phase_to_radians`).
    FileNotFoundError
        For a missing image or sidecar path.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if phase is None:
        raise ValueError("phase is required: pass phase= a NIfTI path or a list of per-echo paths")
    ppaths, plist = _as_paths(phase, "phase")
    pvols, paffine, pf64 = _load_series(ppaths, plist, "phase", affine_atol)
    infos = _as_infos(json) if json is not None else _discover(ppaths)
    te = None  # echo times in sorted echo order, known for per-echo files only
    if plist:
        pdata, infos, te, order = _order_list(pvols, infos, echo_times, len(ppaths), "phase")
    else:
        pdata = pvols[0]

    mdata = None
    if magnitude is not None:
        mpaths, mlist = _as_paths(magnitude, "magnitude")
        if mlist != plist or len(mpaths) != len(ppaths):
            raise ValueError(
                f"magnitude and phase must have the same layout: got {len(mpaths)} magnitude and "
                f"{len(ppaths)} phase file(s)"
            )
        mvols, maffine, mf64 = _load_series(mpaths, mlist, "magnitude", affine_atol)
        minfos = _discover(mpaths) if json is None else None
        if plist:
            mte = _per_file_te(minfos, len(mpaths), "magnitude")
            if minfos is not None and (mte is not None or all(i.echo_number is not None for i in minfos)):
                # per-echo magnitude files follow their own sidecars ...
                mdata, minfos, mte, _ = _order_list(mvols, minfos, None, len(mpaths), "magnitude")
                if mte is not None and te is not None and not np.allclose(mte, te, rtol=1e-3):
                    raise ValueError(
                        f"magnitude echo times {(mte * 1e3).tolist()} ms differ from phase echo times "
                        f"{(te * 1e3).tolist()} ms"
                    )
                te = te if te is not None else mte
            else:  # ... else the phase order
                mdata = np.stack([mvols[k] for k in order], axis=-1)
        else:
            mdata = mvols[0]
        if infos is None:
            infos = minfos
        if mdata.shape != pdata.shape:
            raise ValueError(
                f"magnitude shape {mdata.shape} differs from phase shape {pdata.shape}: give images of the same "
                "grid and number of echoes"
            )
        _check_affines(paffine, maffine, f"phase {ppaths[0]}", f"magnitude {mpaths[0]}", affine_atol)

    te = te if te is not None else echo_times
    if infos is not None:
        acq = Acquisition.from_sidecars(infos, affine=paffine, shape=pdata.shape, echo_times=te,
                                        field_strength=field_strength, b0_direction=b0_direction)
    else:
        if te is None:
            raise ValueError(
                "no echo times: no JSON sidecar was found next to the images; pass json= (BIDS sidecar with "
                "EchoTime in seconds) or echo_times= (seconds)"
            )
        if field_strength is None:
            raise ValueError("no field strength: pass json= (sidecar with MagneticFieldStrength) or field_strength= (tesla)")
        acq = Acquisition.from_affine(paffine, pdata.shape, echo_times=te, field_strength=field_strength,
                                      b0_direction=b0_direction)

    bad_phase = _nan_check(pdata, "phase", acq.echo_times, nan_policy)
    bad_mag = _nan_check(mdata, "magnitude", acq.echo_times, nan_policy) if mdata is not None else None

    units = phase_units
    if isinstance(units, str) and units.lower() == "auto" and infos:
        side_units = {i.phase_units for i in infos if i.phase_units is not None}
        if len(side_units) == 1:
            units = side_units.pop()
    out_dtype = np.float64 if pf64 else np.float32
    phase_rad = scale_phase_to_radians(pdata, units=units, phase_sign=phase_sign).astype(out_dtype, copy=False)
    if bad_phase.any():
        phase_rad[bad_phase] = 0

    if mdata is not None:
        mag = np.asarray(mdata).astype(np.float64 if mf64 else np.float32)
        if bad_mag.any():
            mag[bad_mag] = 0
        if bad_phase.any():
            mag[bad_phase] = 0
    else:
        mag = None
    return mag, phase_rad, acq
