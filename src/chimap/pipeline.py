"""The chimap pipeline: magnitude and wrapped phase in, a referenced chi map out.

Plain sequential calls of the step functions named by a configuration (see
:mod:`chimap.config`): mask -> phase offsets -> unwrapping -> echo combination (field, ppm) ->
background removal (local field, ppm) -> dipole inversion (chi, ppm) -> referencing.
I/O and provenance live in :func:`run_files`; :func:`run` works on arrays.
"""

from __future__ import annotations

import inspect
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .invert.autoreg import AUTOMATIC_PARAMETERS, invert_recording_choices
from .config import ONE_STEP_INVERSIONS, expand_defaults, method_function, resolve, step_kwargs, validate
from .reference import csf_mask_from_r2star, reference_chi
from .geometry import check_b0_direction, check_voxel_size
from .units import check_echo_times, check_field_strength, ppm_to_rad

__all__ = ["PipelineResult", "run", "run_files"]

log = logging.getLogger("chimap")


@dataclass
class PipelineResult:
    """Outputs of :func:`run` (arrays on the input grid).

    Attributes
    ----------
    chi : numpy.ndarray of float32
        Referenced susceptibility (ppm), zero outside ``mask``.
    mask : numpy.ndarray of bool
        Voxels where chi is valid (brain mask after background removal).
    brain_mask : numpy.ndarray of bool
        Brain mask before background removal.
    field : numpy.ndarray of float32 or None
        Total field (ppm); None after TGV-QSM from the wrapped phase (``[invert] input =
        "phase"``), which computes none.
    local_field : numpy.ndarray of float32 or None
        Local field (ppm); None after TGV-QSM, which has no separate background step.
    reliability : numpy.ndarray or None
        Noise/reliability map of the field fit.
    inversion : dict
        After TGV-QSM its record (iterations, convergence, parameters); otherwise what the
        inversion chose from the data: with ``alpha = "auto"`` the chosen ``alpha``
        and its ``alpha_selection`` record (:mod:`chimap.invert.autoreg`); likewise MEDI's
        ``lam`` and NDI's ``max_iter`` (:data:`chimap.invert.autoreg.AUTOMATIC_PARAMETERS`).
    reference_offset : float
        ppm subtracted by the referencing.
    config : dict
        Resolved configuration.
    timings : dict
        Seconds per step.
    """

    chi: np.ndarray
    mask: np.ndarray
    brain_mask: np.ndarray
    field: np.ndarray
    local_field: np.ndarray
    reliability: np.ndarray | None
    reference_offset: float
    config: dict
    timings: dict = field(default_factory=dict)
    inversion: dict = field(default_factory=dict)


def _step(timings, name):
    """Times one step; reports it on the log (the terminal progress of ``chimap run``)."""
    class _Timer:
        def __enter__(self):
            self.t0 = time.perf_counter()
            log.debug("  %s ...", name)

        def __exit__(self, exc_type, *exc):
            seconds = time.perf_counter() - self.t0
            timings[name] = round(seconds, 3)
            if exc_type is None:
                log.info("  %-20s %7.1f s", name, seconds)

    return _Timer()


def run(magnitude, phase, *, voxel_size, echo_times, field_strength, b0_direction=(0.0, 0.0, 1.0),
        mask=None, config=None, preset="default", reference_labels=None, phase_encoding=None,
        effective_echo_spacing=None) -> PipelineResult:
    """Run the QSM pipeline on arrays.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (I, J, K, E) or (I, J, K), or None
        Magnitude (needed for the automatic mask and magnitude weighting).
    phase : numpy.ndarray, shape (I, J, K, E) or (I, J, K)
        Wrapped phase in radians.
    voxel_size : sequence of 3 float
        mm.
    echo_times : sequence of float
        Seconds, one per echo.
    field_strength : float
        Tesla.
    b0_direction : sequence of 3 float
        B0 in voxel axes.
    mask : numpy.ndarray of bool, optional
        External brain mask (replaces the automatic one).
    config : dict, optional
        Resolved configuration (:func:`chimap.config.resolve`); default: ``preset``.
    preset : str
        Preset used when ``config`` is None.
    reference_labels : numpy.ndarray of int, shape (I, J, K), optional
        Segmentation (or a binary mask) on the image grid, for ``[reference] method =
        "labels"``: chi is referenced to the mean over the labels listed in ``[reference]
        values`` (all non-zero labels when ``values`` is not set).
    phase_encoding : str, optional
        EPI phase-encoding direction (BIDS ``PhaseEncodingDirection``, e.g. ``"j"``).
    effective_echo_spacing : float, optional
        EPI effective echo spacing in seconds. With ``phase_encoding`` and ``[distortion] method
        = "auto"``, the images are unwarped along the phase-encode axis with the measured field
        after echo combination (:mod:`chimap.field.distortion`); chi and the masks are then on
        the undistorted grid.

    Returns
    -------
    PipelineResult
    """
    cfg = validate(config) if config is not None else resolve(preset)
    phase = np.asarray(phase)
    if phase.ndim == 3:
        phase = phase[..., None]
    if phase.ndim != 4:
        raise ValueError(f"phase must be 3-D or 4-D (echoes last), got shape {phase.shape}")
    if magnitude is not None:
        magnitude = np.asarray(magnitude)
        if magnitude.ndim == 3:
            magnitude = magnitude[..., None]
        if magnitude.shape != phase.shape:
            raise ValueError(f"magnitude shape {magnitude.shape} does not match phase shape {phase.shape}")
    vs = check_voxel_size(voxel_size)
    te = check_echo_times(echo_times, n_echoes=phase.shape[3])
    b0t = check_field_strength(field_strength)
    b0 = check_b0_direction(b0_direction)
    if not np.all(np.isfinite(phase)):
        raise ValueError("phase contains NaN or infinite values; mask them or replace them with 0")
    if np.nanmax(np.abs(phase)) > np.pi + 1e-3:
        raise ValueError(f"phase reaches {np.abs(phase).max():.4g}, outside [-pi, pi]: it is not in radians; "
                         "rescale it (chimap run --phase-units ...)")
    ref_region = _reference_region(cfg, reference_labels, phase.shape[:3])
    timings: dict = {}
    chosen: dict = {}

    with _step(timings, "mask"):
        if mask is not None:
            brain = np.asarray(mask).astype(bool)
            if brain.shape != phase.shape[:3]:
                raise ValueError(f"mask shape {brain.shape} does not match image shape {phase.shape[:3]}")
        elif cfg["mask"]["method"] == "external":
            raise ValueError("the configuration asks for an external mask: pass --mask MASK.nii.gz")
        else:
            if magnitude is None:
                raise ValueError("an automatic brain mask needs the magnitude: pass --magnitude or --mask")
            kw = step_kwargs(cfg, "mask")
            if cfg["mask"].get("quality", "phase") == "phase":
                # low phase quality marks skull, sinus and vessel edges whose strong sources
                # would otherwise enter the mask and corrupt background removal
                kw["quality"] = _phase_quality(phase, magnitude, vs, te)
            brain = method_function("mask", cfg["mask"]["method"])(magnitude, None, vs, **kw)
        if not brain.any():
            raise ValueError("the brain mask is empty: check the magnitude or pass --mask")

    mag_weight = None
    if magnitude is not None:
        mag_weight = np.sqrt(np.mean(magnitude.astype(np.float32) ** 2, axis=3))

    with _step(timings, "phase offsets"):
        corrected = phase
        if cfg["offsets"]["method"] == "mcpc3ds" and phase.shape[3] >= 2:
            from .field.offsets import remove_phase_offset

            offset = method_function("offsets", "mcpc3ds")(
                phase, brain, vs, magnitude=magnitude, echo_times=te, **step_kwargs(cfg, "offsets"))
            corrected = remove_phase_offset(phase, offset)

    one_step = cfg["invert"]["method"] in ONE_STEP_INVERSIONS
    if one_step and cfg["invert"].get("input", "phase") == "phase":
        chi, valid = _one_step(corrected, brain, vs, te, b0t, b0, cfg, timings, chosen)
        return _referenced_result(chi, valid, brain, None, None, None, cfg, magnitude, te, vs, ref_region,
                                  timings, chosen)

    combine = cfg["combine"]["method"]
    with _step(timings, "unwrapping"):
        unwrapped = None
        if combine != "complex_fit":  # the complex fit works on wrapped phase
            method = cfg["unwrap"]["method"]
            kw = step_kwargs(cfg, "unwrap")
            if method == "complex_guided" and phase.shape[3] < 2:
                log.info("  single echo: region-growing unwrapping instead of complex-guided")
                method, kw = "region_growing", {}
            if method in ("region_growing", "complex_guided"):
                unwrapped = method_function("unwrap", method)(
                    corrected, brain, vs, echo_times=te, magnitude=magnitude, **kw)
            else:
                unwrapped = np.stack([method_function("unwrap", method)(corrected[..., e], brain, vs, **kw)
                                      for e in range(phase.shape[3])], axis=3)

    with _step(timings, "echo combination"):
        if combine == "complex_fit":
            total, reliability = _complex_field(magnitude, phase, brain, vs, te, b0t, cfg)
        else:
            result = method_function("combine", combine)(
                unwrapped, brain, vs, echo_times=te, magnitude=magnitude, field_strength=b0t,
                **step_kwargs(cfg, "combine"))
            total, reliability = result if isinstance(result, tuple) else (result, None)
        total = np.where(brain, total, 0).astype(np.float32)

    if (cfg.get("distortion", {}).get("method", "none") == "auto" and phase_encoding is not None
            and effective_echo_spacing is not None):
        with _step(timings, "distortion correction"):
            absolute_unknown = phase.shape[3] < 2 or cfg["offsets"]["method"] == "none"
            reference = cfg["distortion"].get("reference", "auto")
            if reference == "auto":
                reference = "median" if absolute_unknown else "none"
            if cfg["mask"].get("two_pass", False) and reliability is None:
                # the two-pass masks need a phase-quality map; wrapped phase cannot be resampled
                from .field.distortion import epi_displacement, parse_phase_encoding, unwarp_epi
                from .units import hz_per_ppm

                axis, polarity = parse_phase_encoding(phase_encoding)
                disp = epi_displacement(total * hz_per_ppm(b0t), brain, pe_axis=axis, polarity=polarity,
                                        effective_echo_spacing=effective_echo_spacing, reference=reference)
                two_pass_quality = unwarp_epi(_phase_quality(phase, magnitude, vs, te), disp, pe_axis=axis)
            brain, total, magnitude, mag_weight, reliability = _unwarp(
                brain, total, magnitude, mag_weight, reliability, b0t=b0t, phase_encoding=phase_encoding,
                effective_echo_spacing=effective_echo_spacing, reference=reference)
            phase = None  # distorted; every later step uses the unwarped maps

    if one_step:
        chi, valid = _one_step(total, brain, vs, te, b0t, b0, cfg, timings, chosen)
        return _referenced_result(chi, valid, brain, total, None, reliability, cfg, magnitude, te, vs, ref_region,
                                  timings, chosen)

    if cfg["mask"].get("two_pass", False):
        from .mask import artefact_reduction_masks, combine_two_pass, quality_from_noise

        with _step(timings, "two-pass masks"):
            if reliability is not None:
                quality = quality_from_noise(reliability, brain)
            else:
                quality = two_pass_quality if phase is None else _phase_quality(phase, magnitude, vs, te)
            reliable, filled = artefact_reduction_masks(quality, brain, vs)
        chi1, valid1, local1 = _local_and_chi(total, reliable, vs, b0, cfg, mag_weight, reliability, timings,
                                              chosen)
        chi2, valid2, local2 = _local_and_chi(total, filled, vs, b0, cfg, mag_weight, reliability, timings,
                                              chosen)
        chi = combine_two_pass(np.where(valid1, chi1, 0), chi2, valid1, filled_mask=valid2)
        valid = valid2 | valid1
        local = np.where(valid1, local1, local2)
    else:
        chi, valid, local = _local_and_chi(total, brain, vs, b0, cfg, mag_weight, reliability, timings, chosen)

    return _referenced_result(chi, valid, brain, total, local, reliability, cfg, magnitude, te, vs, ref_region,
                              timings, chosen)


def _one_step(phase, brain, vs, te, b0t, b0, cfg, timings, chosen):
    """Single-step inversion (TGV-QSM): (chi, mask).

    ``phase`` is the offset-corrected wrapped phase (I, J, K, E) with ``[invert] input =
    "phase"``, or the unwrapped, echo-combined total field (I, J, K) in ppm with ``input =
    "field"``; the field enters as unwrapped phase at the mean echo time, for which the TGV
    weights hold, with the ordinary Laplacian (background removal and inversion stay one step).
    """
    func = method_function("invert", cfg["invert"]["method"])

    def progress(it, total, change):
        log.info("  TGV iteration %5d / %d, relative change of chi %.2e", it, total, change)

    kw = step_kwargs(cfg, "invert")
    what = "unwrapping, background removal and inversion"
    if phase.ndim == 3:
        te = float(np.mean(te))
        phase = ppm_to_rad(phase, echo_time=te, field_strength=b0t).astype(np.float32)
        kw["laplacian"] = "plain"  # the configuration refuses any other with input = "field"
        what = "background removal and inversion"
    elif phase.shape[3] >= 2 and cfg["offsets"]["method"] == "mcpc3ds":
        # the receiver offsets are gone: fit the echoes' Laplacians through the origin in TE
        kw.setdefault("echo_combination", "laplacian_origin")
    with _step(timings, f"TGV-QSM ({what} in one)"):
        chi, info = func(phase, brain, vs, echo_time=te, field_strength=b0t, b0_direction=b0, progress=progress,
                         return_info=True, **kw)
    chosen.update({k: v for k, v in info.items() if k != "mask"})
    return chi, info["mask"]


def _referenced_result(chi, valid, brain, total, local, reliability, cfg, magnitude, te, vs, ref_region, timings,
                       chosen):
    """Reference chi as configured and assemble the :class:`PipelineResult`."""
    with _step(timings, "referencing"):
        region = cfg["reference"]["method"]
        offset_ppm = 0.0
        if region == "brain":
            chi, offset_ppm = reference_chi(chi, valid, region="brain")
        elif region == "csf":
            if magnitude is None or magnitude.shape[3] < 2:
                raise ValueError("a CSF reference needs multi-echo magnitude (R2* map); use reference 'brain'")
            csf = csf_mask_from_r2star(_r2star(magnitude, te, valid), valid, vs)
            chi, offset_ppm = reference_chi(chi, valid, region=csf)
        elif region == "labels":
            if not (ref_region & valid).any():
                raise ValueError("the reference labels do not overlap the chi mask: check the label image "
                                 "and [reference] values")
            chi, offset_ppm = reference_chi(chi, valid, region=ref_region)
        chi = np.where(valid, chi, 0).astype(np.float32)

    return PipelineResult(chi=chi, mask=valid, brain_mask=brain, field=total,
                          local_field=None if local is None else np.where(valid, local, 0).astype(np.float32),
                          reliability=reliability, reference_offset=offset_ppm, config=cfg, timings=timings,
                          inversion=chosen)


def _unwarp(brain, total, magnitude, mag_weight, reliability, *, b0t, phase_encoding, effective_echo_spacing,
            reference):
    """EPI distortion correction of every map the later steps use (distorted -> undistorted)."""
    from .field.distortion import epi_displacement, extend_nearest, parse_phase_encoding, unwarp_epi
    from .units import hz_per_ppm

    axis, polarity = parse_phase_encoding(phase_encoding)
    disp = epi_displacement(total * hz_per_ppm(b0t), brain, pe_axis=axis, polarity=polarity,
                            effective_echo_spacing=effective_echo_spacing, reference=reference)
    inside = np.abs(disp[brain])
    log.info("  EPI unwarping along axis %d: displacement median %.2f, max %.2f voxels", axis,
             float(np.median(inside)), float(inside.max()))
    new_brain = unwarp_epi(brain.astype(np.float32), disp, pe_axis=axis) > 0.5
    if not new_brain.any():
        raise ValueError("EPI distortion correction left an empty mask: check PhaseEncodingDirection and "
                         "EffectiveEchoSpacing, or set [distortion] method = \"none\"")
    total = np.where(new_brain, unwarp_epi(extend_nearest(total, brain), disp, pe_axis=axis), 0).astype(np.float32)
    if magnitude is not None:
        magnitude = unwarp_epi(magnitude.astype(np.float32), disp, pe_axis=axis, jacobian=True)
    if mag_weight is not None:
        mag_weight = unwarp_epi(mag_weight, disp, pe_axis=axis, jacobian=True)
    if reliability is not None:
        reliability = np.where(new_brain, unwarp_epi(extend_nearest(reliability, brain), disp, pe_axis=axis), 0)
    return new_brain, total, magnitude, mag_weight, reliability


def _reference_region(cfg, labels, shape):
    """Boolean reference region from a label image, for ``[reference] method = "labels"``."""
    method = cfg["reference"]["method"]
    if method != "labels":
        if labels is not None:
            raise ValueError('reference labels were given but [reference] method is not "labels"')
        return None
    if labels is None:
        raise ValueError('[reference] method "labels" needs a label image: pass --reference-labels LABELS.nii.gz')
    lab = np.asarray(labels)
    if lab.shape != shape:
        raise ValueError(f"reference label image shape {lab.shape} does not match the images {shape}")
    if not np.all(np.isfinite(lab)):
        raise ValueError("the reference label image contains NaN or infinite values")
    values = cfg["reference"].get("values")
    if values is None:
        region = lab != 0
    else:
        values = [values] if np.isscalar(values) else list(values)
        if not values or not all(isinstance(v, (int, float)) and float(v) == int(v) for v in values):
            raise ValueError(f"[reference] values must be integer labels, got {values!r}")
        region = np.isin(np.rint(lab).astype(np.int64), np.asarray(values, dtype=np.int64))
    if not region.any():
        raise ValueError(f"no voxel of the reference label image has the label(s) {values}")
    return region


def _phase_quality(phase, magnitude, vs, te):
    from .mask import phase_quality

    return phase_quality(phase, None, vs, magnitude=magnitude, echo_times=te if phase.shape[3] > 1 else None)


def _complex_field(magnitude, phase, brain, vs, te, b0t, cfg):
    """Nonlinear complex fit (MEDI-style), then spatial unwrapping of the fitted field, which the
    fit only knows modulo 1/dTE for evenly spaced echoes. Returns (field ppm, noise ppm)."""
    from .field import fit_field_complex, unalias_field
    from .units import hz_per_ppm

    if magnitude is None or phase.shape[3] < 2:
        raise ValueError("the complex fit needs magnitude and at least two echoes; use linear_fit")
    field_hz, _, noise_hz = fit_field_complex(magnitude, phase, brain, vs, echo_times=te,
                                              **step_kwargs(cfg, "combine"))
    field_hz = unalias_field(field_hz, brain, vs, echo_times=te, magnitude=magnitude[..., 0])
    scale = hz_per_ppm(b0t)
    return (field_hz / scale).astype(np.float32), (np.asarray(noise_hz, np.float64) / scale).astype(np.float32)


def _local_and_chi(total, brain, vs, b0, cfg, mag_weight, reliability, timings, chosen):
    """Background removal and dipole inversion on one mask: (chi, valid mask, local field).

    With an automatic ``alpha`` the chosen weight and its selection record go into ``chosen``.
    """
    from .background import fill_mask_holes

    with _step(timings, "background removal"):
        # low-quality voxels inside the brain (a calcification, a vein core) are holes of the
        # mask; filled, with the field interpolated into them, their sources stay local
        filled_field, filled, holes = fill_mask_holes(total, brain, vs)
        local, valid = method_function("background", cfg["background"]["method"])(
            filled_field, filled, vs, **_with_b0(cfg, "background", b0))
        valid = valid & filled
        erode = float(cfg["background"].get("erode_mm", 0.0))
        if erode > 0:
            from .mask import erode_mm

            # the outermost layer keeps the largest background-removal errors
            valid = erode_mm(valid, vs, radius_mm=erode)
        if not valid.any():
            raise ValueError("no voxel is left after background removal: the brain mask is too small "
                             "for this method/erosion (try [background] erode_mm = 0)")

    with _step(timings, "dipole inversion"):
        kw = step_kwargs(cfg, "invert")
        weight_kind = cfg["invert"].get("weight", "none")
        invert = method_function("invert", cfg["invert"]["method"])
        if _accepts_weight(invert, kw):
            # voxels without a measured local field (holes; with domain "brain" also the rim that
            # background removal could not reach) get zero data weight: chi there is fitted to
            # the field around them
            measured = valid & ~holes
            if cfg["invert"].get("domain", "brain") == "brain":
                valid = filled
            weight = None if weight_kind == "none" else _inversion_weight(weight_kind, mag_weight, reliability,
                                                                         valid)
            if weight is not None or not np.array_equal(measured, valid):
                kw["weight"] = measured.astype(np.float32) if weight is None else np.where(measured, weight, 0)
            local = np.where(measured, local, 0)
            refinements = int(cfg["background"].get("boundary_refinement", 0))
            if refinements > 0 and cfg["background"]["method"] == "lbv" and \
                    "refine_field" in inspect.signature(invert).parameters:
                from .background.boundary import lbv_boundary_loss

                lbv_local = local

                def refine(chi_now):
                    loss = lbv_boundary_loss(chi_now, filled, vs, b0_direction=b0)
                    return np.where(measured, lbv_local + loss, 0)

                kw["refine_field"] = refine
                kw["refine_times"] = refinements
        if cfg["invert"].get("edges", "none") == "magnitude":
            from .invert.edges import DEFAULT_EDGE_FRACTION, magnitude_edge_weight

            if mag_weight is None:
                raise ValueError('[invert] edges = "magnitude" needs the magnitude: pass --magnitude or set '
                                 'edges = "none"')
            kw["gradient_weight"] = magnitude_edge_weight(
                mag_weight, valid, vs, edge_fraction=cfg["invert"].get("edge_fraction", DEFAULT_EDGE_FRACTION))
        if mag_weight is not None and "magnitude" in inspect.signature(invert).parameters:
            kw["magnitude"] = mag_weight  # MEDI's edge mask
        chi, picked = invert_recording_choices(invert, local, valid, vs, b0_direction=b0, **kw)
        for key, value in picked.items():
            chosen[key] = _json_safe(value)
            if key in AUTOMATIC_PARAMETERS:
                log.info("  %s %s chose %.3g", key, kw[key], float(value))
    return chi, valid, local


def _json_safe(value):
    """``value`` with numpy scalars and arrays turned into Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 10000 else f"array {value.shape}"
    if isinstance(value, np.generic):
        return value.item()
    return value


def _accepts_weight(func, kwargs):
    """Whether an inversion fits the field with a data weight (TKD and closed-form TV do not)."""
    return "weight" in inspect.signature(func).parameters and kwargs.get("solver") != "closed_form"


def _r2star(magnitude, echo_times, mask):
    """Log-linear R2* fit (1/s) over echoes, for the CSF reference."""
    logm = np.log(np.maximum(magnitude.astype(np.float64), 1e-12))
    t = np.asarray(echo_times) - np.mean(echo_times)
    slope = np.tensordot(logm - logm.mean(axis=3, keepdims=True), t, axes=([3], [0])) / np.dot(t, t)
    return np.where(mask, -slope, 0).astype(np.float32)


def _with_b0(cfg, step, b0):
    kw = step_kwargs(cfg, step)
    func = method_function(step, cfg[step]["method"])
    if "b0_direction" in inspect.signature(func).parameters:
        kw["b0_direction"] = b0
    return kw


def _inversion_weight(kind, magnitude, reliability, mask):
    """Data-fidelity weight normalised to mean 1 in the mask."""
    if kind == "magnitude":
        if magnitude is None:
            return None
        w = magnitude.astype(np.float32)
    elif kind == "reliability":
        if reliability is None:
            return None
        w = 1.0 / np.maximum(reliability.astype(np.float32), np.float32(1e-6))
    else:
        raise ValueError(f"[invert] weight must be 'magnitude', 'reliability' or 'none', got {kind!r}")
    w = np.where(mask, w, 0)
    mean = float(w[mask].mean()) if mask.any() else 1.0
    return (w / (mean or 1.0)).astype(np.float32)


def run_files(*, phase, magnitude=None, json=None, echo_times=None, field_strength=None, b0_direction=None,
              mask=None, output, preset="default", config_file=None, overrides=None, phase_units="auto",
              phase_sign=1, intermediates=None, reference_labels=None, phase_encoding=None,
              effective_echo_spacing=None, argv=None) -> Path:
    """Load inputs, run the pipeline and write ``chi.nii.gz``, ``mask.nii.gz`` and ``chimap.json``.

    ``phase_encoding`` and ``effective_echo_spacing`` (EPI) override the sidecars' values.

    Every output is validated and written atomically; the output folder receives nothing when an
    input is rejected.
    """
    from .io import load_multiecho, load_nifti, save_nifti, write_json
    from .provenance import consensus_report

    t0 = time.perf_counter()
    cfg = resolve(preset, config_file=config_file, overrides=overrides)
    mag, pha, acq = load_multiecho(phase=phase, magnitude=magnitude, json=json, echo_times=echo_times,
                                   field_strength=field_strength, b0_direction=b0_direction,
                                   phase_units=phase_units, phase_sign=phase_sign)
    if phase_encoding is not None or effective_echo_spacing is not None:
        import dataclasses

        acq = dataclasses.replace(
            acq, phase_encoding=acq.phase_encoding if phase_encoding is None else phase_encoding,
            effective_echo_spacing=(acq.effective_echo_spacing if effective_echo_spacing is None
                                    else effective_echo_spacing))
    ext_mask = None
    if mask is not None:
        ext_mask, mask_affine, _ = load_nifti(mask)
        if ext_mask.shape[:3] != pha.shape[:3]:
            raise ValueError(f"mask shape {ext_mask.shape} does not match the images {pha.shape[:3]}")
        ext_mask = ext_mask.reshape(pha.shape[:3]) > 0
    ref_labels = None
    if reference_labels is not None:
        ref_labels, _, _ = load_nifti(reference_labels)
        if ref_labels.shape[:3] != pha.shape[:3] or ref_labels.size != int(np.prod(pha.shape[:3])):
            raise ValueError(f"reference label image shape {ref_labels.shape} does not match the images "
                             f"{pha.shape[:3]}")
        ref_labels = ref_labels.reshape(pha.shape[:3])
    log.info("chimap run: %s, %d echo(es), %.3g T, B0 (voxel axes) %s", pha.shape[:3], pha.shape[3],
             acq.field_strength, np.round(acq.b0_direction, 4).tolist())
    result = run(mag, pha, voxel_size=acq.voxel_size, echo_times=acq.echo_times,
                 field_strength=acq.field_strength, b0_direction=acq.b0_direction, mask=ext_mask, config=cfg,
                 reference_labels=ref_labels, phase_encoding=acq.phase_encoding,
                 effective_echo_spacing=acq.effective_echo_spacing)
    out = Path(output)
    save_nifti(out / "chi.nii.gz", result.chi, acq.affine)
    save_nifti(out / "mask.nii.gz", result.mask.astype(np.uint8), acq.affine)
    want = cfg.get("output", {}).get("intermediates", False) if intermediates is None else intermediates
    if want:
        # TGV-QSM computes no local field (nor a total field from the wrapped phase)
        if result.field is not None:
            save_nifti(out / "field.nii.gz", result.field, acq.affine)
        if result.local_field is not None:
            save_nifti(out / "local_field.nii.gz", result.local_field, acq.affine)
        save_nifti(out / "brain_mask.nii.gz", result.brain_mask.astype(np.uint8), acq.affine)
        if result.reliability is not None:
            save_nifti(out / "field_reliability.nii.gz", np.asarray(result.reliability, np.float32), acq.affine)
    timings = dict(result.timings, total=round(time.perf_counter() - t0, 3))
    write_json(out / "chimap.json", {
        "chimap_version": __version__,
        "command": argv,
        "inputs": {"phase": [str(p) for p in np.atleast_1d(phase)],
                   "magnitude": None if magnitude is None else [str(p) for p in np.atleast_1d(magnitude)],
                   "mask": None if mask is None else str(mask),
                   "reference_labels": None if reference_labels is None else str(reference_labels)},
        "acquisition": acq.to_dict(),
        "configuration": expand_defaults(cfg),
        "timings_s": timings,
        "inversion": result.inversion,
        "consensus_report": consensus_report(cfg, acq, result),
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "platform": platform.platform()},
    })
    return out
