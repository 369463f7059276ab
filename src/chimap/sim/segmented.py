"""Heads from a label map: any segmentation in chimap's tissue labels, e.g. the QSM challenge 2.0
head model (Marques et al. MRM 2021;86:526).

The label map is the fine simulation grid; the output grid has ``oversample`` times larger
voxels. Tissue values come from :mod:`chimap.sim.tissues`, with per-label susceptibility
overrides (for the challenge model, its own table). Lesions are not added here.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..geometry import affine_with_b0_direction, check_b0_direction, check_voxel_size
from .acquire import acquire, check_acquisition, check_memory
from .head import T1W_INTENSITY, SimulatedHead
from .signal import epi_train
from .tissues import LABELS, lookup_tables

__all__ = ["simulate_segmentation", "load_challenge_segmentation", "CHALLENGE_TO_CHIMAP"]

#: QSM challenge 2.0 head-model labels -> chimap tissue labels (fat and muscle -> soft tissue,
#: air inside and outside the head -> air).
CHALLENGE_TO_CHIMAP = {
    1: LABELS["caudate"], 2: LABELS["globus_pallidus"], 3: LABELS["putamen"], 4: LABELS["red_nucleus"],
    5: LABELS["dentate_nucleus"], 6: LABELS["substantia_nigra"], 7: LABELS["thalamus"],
    8: LABELS["white_matter"], 9: LABELS["cortical_grey_matter"], 10: LABELS["csf"], 11: LABELS["vein"],
    12: LABELS["soft_tissue"], 13: LABELS["skull"], 14: LABELS["air"], 15: LABELS["soft_tissue"],
    16: LABELS["calcification"],
}


def load_challenge_segmentation(folder):
    """Load the challenge 2.0 head-model segmentation and its susceptibility table.

    Parameters
    ----------
    folder : str or Path
        Holds ``SegmentedModel.nii.gz``, ``BrainMask.nii.gz`` and ``SusceptibilityValues.mat``
        (NeuroPoly's susceptibility-separation phantom distribution).

    Returns
    -------
    labels : numpy.ndarray of uint8
        chimap tissue labels.
    brain_mask : numpy.ndarray of bool
    voxel_size : numpy.ndarray, shape (3,)
        mm.
    chi_overrides : dict[int, float]
        chimap label -> susceptibility (ppm) from the model's ``chiref`` column; for labels that
        merge two model labels (soft tissue) the larger one wins.
    """
    import nibabel as nib
    from scipy.io import loadmat

    folder = Path(folder)
    missing = [n for n in ("SegmentedModel.nii.gz", "BrainMask.nii.gz", "SusceptibilityValues.mat")
               if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}")
    seg_img = nib.load(str(folder / "SegmentedModel.nii.gz"))
    seg = np.asarray(seg_img.dataobj).astype(np.int64)
    brain = np.asarray(nib.load(str(folder / "BrainMask.nii.gz")).dataobj) > 0.5
    lut = np.zeros(max(CHALLENGE_TO_CHIMAP) + 1, np.uint8)
    for src, dst in CHALLENGE_TO_CHIMAP.items():
        lut[src] = dst
    if seg.min() < 0 or seg.max() >= lut.size:
        raise ValueError(f"unexpected labels {seg.min()}..{seg.max()} in the challenge segmentation")
    labels = lut[seg]
    table = loadmat(str(folder / "SusceptibilityValues.mat"), squeeze_me=True, struct_as_record=False)["label"]
    present = set(np.unique(seg).tolist())
    chi = {}
    for index, entry in enumerate(table, start=1):
        if index in present and index in CHALLENGE_TO_CHIMAP:
            dst = CHALLENGE_TO_CHIMAP[index]
            chi[dst] = max(chi.get(dst, -np.inf), float(entry.chiref))
    return labels, brain, np.asarray(seg_img.header.get_zooms()[:3], dtype=np.float64), chi


def simulate_segmentation(labels, brain_mask, voxel_size, *, chi_overrides=None, oversample=2,
                          echo_times=None, field_strength=3.0, protocol="gre", snr=100.0,
                          b0_direction=(0.0, 0.0, 1.0), rng=0, phase_offset_amplitude=np.pi,
                          echo_spacing=0.0008, segments=None, pe_axis=1, progress=None) -> SimulatedHead:
    """Simulate an acquisition of a head given as a label map on the fine grid.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (I, J, K)
        chimap tissue labels (:data:`chimap.sim.tissues.LABELS`); 0 is the air around the head.
    brain_mask : numpy.ndarray of bool, shape (I, J, K)
        Brain; its susceptibility makes the local field.
    voxel_size : sequence of 3 float
        Voxel size of the label map in mm; the output voxels are ``oversample`` times larger.
    chi_overrides : dict[int, float], optional
        Susceptibility (ppm, relative to water) per label replacing the defaults.
    oversample : int
        Label-map voxels per output voxel along each axis (the map is cropped to a multiple).
    echo_times, field_strength, protocol, snr, b0_direction, rng, phase_offset_amplitude,
    echo_spacing, segments, pe_axis, progress
        As in :func:`chimap.sim.head.simulate_head`.

    Returns
    -------
    SimulatedHead
        With an empty lesion table. The affine places the volume centre at the origin with B0
        along ``b0_direction`` in voxel axes; the output labels are those at the centre voxel of
        each block.
    """
    t_start = time.perf_counter()
    labels = np.asarray(labels)
    brain_mask = np.asarray(brain_mask, dtype=bool)
    if labels.ndim != 3 or brain_mask.shape != labels.shape:
        raise ValueError(f"labels {labels.shape} and brain mask {brain_mask.shape} must be 3-D and equal")
    if labels.min() < 0 or labels.max() > max(LABELS.values()):
        raise ValueError(f"labels must be chimap tissue labels 0..{max(LABELS.values())}; "
                         f"got {labels.min()}..{labels.max()} (map your segmentation first)")
    vs_f = check_voxel_size(voxel_size)
    te, b0t, oversample = check_acquisition(protocol=protocol, echo_times=echo_times,
                                            field_strength=field_strength, snr=snr, oversample=oversample)
    b0 = check_b0_direction(b0_direction)
    crop = tuple(slice(0, (n // oversample) * oversample) for n in labels.shape)
    labels = labels[crop].astype(np.uint8)
    brain_mask = brain_mask[crop]
    out_shape = tuple(n // oversample for n in labels.shape)
    check_memory(labels.shape)
    vs = vs_f * oversample
    if protocol == "epi":
        segments = epi_train(out_shape[pe_axis], te, echo_spacing=echo_spacing, segments=segments)
    seeds = np.random.SeedSequence(rng if not isinstance(rng, np.random.Generator) else rng.integers(2**63))
    s_phase, s_noise = seeds.spawn(2)

    chi_lut, m0_lut, r2_lut = lookup_tables(field_strength=b0t, chi_overrides=chi_overrides)
    centre = tuple(slice(oversample // 2, None, oversample) for _ in range(3))
    labels_out = labels[centre]
    from .fields import block_mean

    brain_out = block_mean(brain_mask.astype(np.float32), oversample) >= 0.5
    timings = {}
    fine = {"chi": chi_lut[labels], "m0": m0_lut[labels], "r2star": r2_lut[labels], "brain": brain_mask}
    acq = acquire(fine, brain_out, fine_voxel_size=vs_f, oversample=oversample, echo_times=te,
                  field_strength=b0t, b0_direction=b0, protocol=protocol, snr=snr,
                  phase_offset_amplitude=phase_offset_amplitude, echo_spacing=echo_spacing, segments=segments,
                  pe_axis=pe_axis, phase_rng=np.random.default_rng(s_phase),
                  noise_rng=np.random.default_rng(s_noise), timings=timings, say=progress)
    t1w_lut = np.array([T1W_INTENSITY.get(i, 0.0) for i in range(max(T1W_INTENSITY) + 1)], np.float32)
    affine = affine_with_b0_direction(vs, b0, shape=out_shape)
    timings["total_s"] = time.perf_counter() - t_start
    params = dict(source="label map", voxel_size=vs.tolist(), echo_times=te.tolist(), field_strength=b0t,
                  protocol=protocol, snr=snr, b0_direction=b0.tolist(), oversample=oversample,
                  rng=rng if isinstance(rng, (int, type(None))) else "generator",
                  phase_offset_amplitude=float(phase_offset_amplitude),
                  echo_spacing=echo_spacing if protocol == "epi" else None,
                  segments=segments if protocol == "epi" else None,
                  pe_axis=pe_axis if protocol == "epi" else None, lesions=0,
                  chi_overrides={int(k): float(v) for k, v in (chi_overrides or {}).items()},
                  shape=list(out_shape), fine_shape=list(labels.shape))
    return SimulatedHead(
        magnitude=acq.magnitude, phase=acq.phase, echo_times=te, field_strength=b0t, voxel_size=vs,
        b0_direction=b0, affine=affine, chi=np.where(brain_out, acq.chi_full, np.float32(0)).astype(np.float32),
        chi_full=acq.chi_full, total_field=acq.total_field, local_field=acq.local_field,
        background_field=(acq.total_field - acq.local_field).astype(np.float32), brain_mask=brain_out,
        labels=labels_out, lesion_map=np.zeros(out_shape, np.uint16), lesions=[], m0=acq.m0,
        r2star=acq.r2star, t1w=t1w_lut[labels_out], phase_offset=acq.phase_offset,
        noise_sigma=acq.noise_sigma, params=params, timings=timings)
