"""Write a simulated head as a BIDS-like folder with its ground truth beside the inputs.

Layout (``sub`` defaults to ``sim``)::

    DIR/dataset_description.json
    DIR/README.md
    DIR/sub-sim/anat/sub-sim_acq-gre_echo-1_part-mag_MEGRE.nii.gz (+ .json)   one per echo
    DIR/sub-sim/anat/sub-sim_acq-gre_echo-1_part-phase_MEGRE.nii.gz (+ .json)
    DIR/sub-sim/anat/sub-sim_T1w.nii.gz
    DIR/derivatives/truth/sub-sim/anat/sub-sim_Chimap.nii.gz         true chi (ppm), brain only
    ...                                _desc-fullhead_Chimap.nii.gz  whole-head model chi
    ...                                _desc-total_fieldmap.nii.gz   total field (ppm)
    ...                                _desc-local_fieldmap.nii.gz   local field (ppm)
    ...                                _desc-background_fieldmap.nii.gz
    ...                                _desc-brain_mask.nii.gz, _dseg.nii.gz (+ _dseg.tsv)
    ...                                _desc-lesions_mask.nii.gz (ids), _lesions.tsv, _lesions.json
    ...                                _R2starmap.nii.gz, _M0map.nii.gz, _desc-phaseoffset_phase.nii.gz
    DIR/derivatives/truth/simulation.json   every parameter, timings, chimap version

The phase sidecars carry ``EchoTime`` (s), ``MagneticFieldStrength`` (T), ``EchoNumber`` and the
chimap key ``B0Direction`` (unit vector in voxel axes, also derivable from the affine).
"""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path

import numpy as np

from .. import __version__
from ..io import atomic_path, save_nifti, write_json
from .tissues import label_names

__all__ = ["write_simulated_head"]


def _write_tsv(path, rows, columns):
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, delimiter="\t", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("n/a" if row.get(k) is None else row.get(k)) for k in columns})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def write_simulated_head(head, out_dir, *, subject="sim"):
    """Write ``head`` (a :class:`~chimap.sim.head.SimulatedHead`) to ``out_dir``.

    Returns
    -------
    dict
        Paths of the main outputs (``magnitude``/``phase``: lists per echo, ``chi``, ...).
    """
    out = Path(out_dir)
    sub = f"sub-{subject}"
    anat = out / sub / "anat"
    truth = out / "derivatives" / "truth" / sub / "anat"
    acq = head.params.get("protocol", "gre")
    aff = head.affine
    common = {
        "MagneticFieldStrength": head.field_strength,
        "B0Direction": [float(v) for v in head.b0_direction],
        "Manufacturer": "chimap simulator",
        "MRAcquisitionType": "3D",
        "PulseSequenceType": "segmented 3D-EPI" if acq == "epi" else "multi-echo GRE",
        "ChimapVersion": __version__,
    }
    if acq == "epi":
        common.update(EffectiveEchoSpacing=head.params["echo_spacing"] / head.params["segments"],
                      PhaseEncodingDirection="ijk"[int(head.params["pe_axis"])])
    paths = {"magnitude": [], "phase": []}
    for e, te in enumerate(head.echo_times):
        for part, data in (("mag", head.magnitude[..., e]), ("phase", head.phase[..., e])):
            stem = f"{sub}_acq-{acq}_echo-{e + 1}_part-{part}_MEGRE"
            nii = anat / f"{stem}.nii.gz"
            save_nifti(nii, data, aff)
            meta = dict(common, EchoTime=float(te), EchoNumber=e + 1)
            if part == "phase":
                meta["Units"] = "rad"
            write_json(anat / f"{stem}.json", meta)
            paths["magnitude" if part == "mag" else "phase"].append(nii)
    save_nifti(anat / f"{sub}_T1w.nii.gz", head.t1w, aff)
    write_json(anat / f"{sub}_T1w.json", {"MagneticFieldStrength": head.field_strength,
                                            "Description": "synthetic T1-weighted contrast from labels"})

    items = {
        "chi": (f"{sub}_Chimap.nii.gz", head.chi),
        "chi_full": (f"{sub}_desc-fullhead_Chimap.nii.gz", head.chi_full),
        "total_field": (f"{sub}_desc-total_fieldmap.nii.gz", head.total_field),
        "local_field": (f"{sub}_desc-local_fieldmap.nii.gz", head.local_field),
        "background_field": (f"{sub}_desc-background_fieldmap.nii.gz", head.background_field),
        "brain_mask": (f"{sub}_desc-brain_mask.nii.gz", head.brain_mask.astype(np.uint8)),
        "labels": (f"{sub}_dseg.nii.gz", head.labels),
        "lesion_map": (f"{sub}_desc-lesions_mask.nii.gz", head.lesion_map),
        "r2star": (f"{sub}_R2starmap.nii.gz", head.r2star),
        "m0": (f"{sub}_M0map.nii.gz", head.m0),
        "phase_offset": (f"{sub}_desc-phaseoffset_phase.nii.gz", head.phase_offset),
    }
    for key, (name, data) in items.items():
        paths[key] = save_nifti(truth / name, data, aff)
    names = label_names()
    present = sorted(int(v) for v in np.unique(head.labels))
    _write_tsv(truth / f"{sub}_dseg.tsv", [{"index": i, "name": names[i]} for i in present], ["index", "name"])
    columns = ["lesion_id", "kind", "central_vein", "n_voxels", "volume_mm3", "mean_chi_ppm",
               "chi_core", "chi_rim", "center_voxel", "center_world_mm", "radii_mm"]
    rows = [dict(r, center_voxel=" ".join(map(str, r["center_voxel"])),
                 center_world_mm=" ".join(map(str, r["center_world_mm"])),
                 radii_mm=" ".join(map(str, r["radii_mm"]))) for r in head.lesions]
    _write_tsv(truth / f"{sub}_lesions.tsv", rows, columns)
    paths["lesions"] = truth / f"{sub}_lesions.tsv"
    write_json(truth / f"{sub}_lesions.json", head.lesions)
    write_json(out / "derivatives" / "truth" / "simulation.json",
               {"chimap_version": __version__, "parameters": head.params, "timings_s": head.timings,
                "noise_sigma": head.noise_sigma, "units": {"chi": "ppm (relative to water/CSF)",
                                                           "fields": "ppm of B0", "echo_times": "s"}})
    write_json(out / "derivatives" / "truth" / "dataset_description.json",
               {"Name": "chimap simulation ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "chimap", "Version": __version__}]})
    write_json(out / "dataset_description.json",
               {"Name": "chimap simulated head", "BIDSVersion": "1.9.0", "DatasetType": "raw",
                "GeneratedBy": [{"Name": "chimap", "Version": __version__}]})
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(_README.format(sub=sub, acq=acq, version=__version__))
    return paths


_README = """# chimap simulated head

Generated by chimap {version}. Inputs are in `{sub}/anat/` (one magnitude and one wrapped phase
image per echo, `acq-{acq}`, with BIDS sidecars: EchoTime in s, MagneticFieldStrength in T,
B0Direction in voxel axes). The ground truth is in `derivatives/truth/{sub}/anat/`:
susceptibility (`_Chimap`, ppm relative to water, brain only), total, local and background
fields (ppm), brain mask, tissue labels (`_dseg` + `.tsv`), lesion ids and the lesion table.
`derivatives/truth/simulation.json` holds every simulation parameter.
"""
