"""Find multi-echo magnitude and phase files in a BIDS subject folder.

BIDS stores one file per echo and part: ``sub-01[_ses-x][_acq-y]_echo-1_part-phase_MEGRE.nii.gz``
(and ``part-mag``), each with a JSON sidecar holding ``EchoTime`` (s).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["find_subject_echoes"]

_PART = re.compile(r"_part-(mag|phase)")
_ECHO = re.compile(r"_echo-(\d+)")


def find_subject_echoes(folder):
    """Return ``(magnitude_files, phase_files, None)`` of the one multi-echo series in ``folder``.

    Parameters
    ----------
    folder : str or Path
        A subject folder (``sub-01``), a session folder or its ``anat`` folder.

    Returns
    -------
    magnitude : list of Path or None
        Sorted by echo number; None when the series has no magnitude.
    phase : list of Path
    json : None
        Sidecars are found next to the images by the loader.

    Raises
    ------
    ValueError
        When no phase files are found, or several series are present (name them explicitly).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    files = sorted(p for p in root.rglob("*_part-*") if p.name.endswith((".nii", ".nii.gz")))
    series: dict[str, dict[str, dict[int, Path]]] = {}
    for f in files:
        part = _PART.search(f.name)
        echo = _ECHO.search(f.name)
        if not part:
            continue
        key = str(f.parent / _ECHO.sub("", _PART.sub("", f.name)))
        n = int(echo.group(1)) if echo else 1
        series.setdefault(key, {}).setdefault(part.group(1), {})[n] = f
    with_phase = {k: v for k, v in series.items() if "phase" in v}
    if not with_phase:
        raise ValueError(f"no *_part-phase_* NIfTI files under {root}")
    if len(with_phase) > 1:
        names = "\n  ".join(sorted(with_phase))
        raise ValueError(f"several phase series under {root}; pass --phase/--magnitude explicitly:\n  {names}")
    parts = next(iter(with_phase.values()))
    phase = [parts["phase"][n] for n in sorted(parts["phase"])]
    mag = None
    if "mag" in parts:
        if sorted(parts["mag"]) != sorted(parts["phase"]):
            raise ValueError(f"magnitude echoes {sorted(parts['mag'])} do not match phase echoes {sorted(parts['phase'])}")
        mag = [parts["mag"][n] for n in sorted(parts["mag"])]
    return mag, phase, None
