"""The realistic simulated head: anatomy -> susceptibility -> fields -> GRE/EPI signal.

Everything is simulated on a grid ``oversample`` times finer than the output (0.5 mm for 1 mm
output by default): the susceptibility, the field (without wrap-around, see
:mod:`chimap.sim.fields`), and the complex signal with its intravoxel dephasing. The signal is
then band-limited to the output grid by k-space cropping, as an acquisition would, so a
reconstruction on the output grid does not commit the "inverse crime" of using the simulator's
own discretisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..geometry import affine_with_b0_direction, b0_direction_from_tilt, check_b0_direction, check_voxel_size
from .anatomy import HEAD_EXTENT_MM, HeadAnatomy, sample_separable
from .acquire import DEFAULT_ECHO_TIMES, DEFAULT_EPI_ECHO_TIMES, acquire, check_acquisition, check_memory
from .lesions import Lesion, paint_lesions, place_lesions
from .shapes import Grid
from .signal import epi_train
from .tissues import LABELS, lookup_tables

__all__ = ["SimulatedHead", "simulate_head", "DEFAULT_ECHO_TIMES", "DEFAULT_EPI_ECHO_TIMES", "T1W_INTENSITY"]


#: Relative T1-weighted (MPRAGE-like) intensity per label, for a synthetic T1w image.
T1W_INTENSITY = {0: 0.0, 1: 1.0, 2: 0.62, 3: 0.12, 4: 0.70, 5: 0.74, 6: 0.82, 7: 0.80, 8: 0.78,
                 9: 0.76, 10: 0.80, 11: 0.45, 12: 0.30, 13: 0.08, 14: 0.65, 15: 0.0, 16: 0.45,
                 17: 0.15}

_TEXTURE_SPACING_MM = 2.0


@dataclass
class SimulatedHead:
    """Inputs and ground truth of one simulated head, on the output grid.

    Attributes
    ----------
    magnitude, phase : numpy.ndarray of float32, shape (I, J, K, E)
        Magnitude (a.u.) and wrapped phase (rad, in [-pi, pi]).
    echo_times : numpy.ndarray, shape (E,)
        Seconds.
    field_strength : float
        Tesla.
    voxel_size : numpy.ndarray, shape (3,)
        mm.
    b0_direction : numpy.ndarray, shape (3,)
        Unit vector in voxel axes.
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-scanner affine; world +z is B0.
    chi : numpy.ndarray of float32, shape (I, J, K)
        True susceptibility (ppm, relative to water/CSF) inside the brain mask, 0 outside.
    chi_full : numpy.ndarray of float32
        Susceptibility of the whole head model (air = +9.2 ppm relative to water).
    total_field, local_field, background_field : numpy.ndarray of float32
        Fields in ppm of B0. ``local`` is the field of the brain's susceptibility (relative to
        water) inside the brain mask; ``background = total - local``.
    brain_mask : numpy.ndarray of bool
    labels : numpy.ndarray of uint8
        Tissue labels (see :mod:`chimap.sim.tissues`).
    lesion_map : numpy.ndarray of uint16
        Lesion ids (0 = none).
    lesions : list of dict
        One record per lesion (kind, central vein, centre, size, true mean chi).
    m0, r2star, t1w : numpy.ndarray of float32
        Proton density, R2* (1/s) and a synthetic T1-weighted image.
    phase_offset : numpy.ndarray of float32
        Receiver phase offset (rad) added to every echo.
    noise_sigma : float
        Noise standard deviation per channel.
    params : dict
        Every simulation parameter, for provenance.
    """

    magnitude: np.ndarray
    phase: np.ndarray
    echo_times: np.ndarray
    field_strength: float
    voxel_size: np.ndarray
    b0_direction: np.ndarray
    affine: np.ndarray
    chi: np.ndarray
    chi_full: np.ndarray
    total_field: np.ndarray
    local_field: np.ndarray
    background_field: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    lesion_map: np.ndarray
    lesions: list
    m0: np.ndarray
    r2star: np.ndarray
    t1w: np.ndarray
    phase_offset: np.ndarray
    noise_sigma: float
    params: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def _output_grid(voxel_size, scale) -> Grid:
    ext = np.asarray(HEAD_EXTENT_MM, dtype=np.float64) * np.asarray(scale)[:, None]
    shape = tuple(int(np.ceil((hi - lo) / v - 1e-6)) for (lo, hi), v in zip(ext, voxel_size))
    # centre the grid on the extent
    origin = tuple((lo + hi) / 2.0 - (n - 1) / 2.0 * v for (lo, hi), n, v in zip(ext, shape, voxel_size))
    return Grid(shape, tuple(float(v) for v in voxel_size), origin)


def _texture(grid: Grid, rng, amplitude):
    """Smooth random susceptibility texture (ppm), a continuous function of head position."""
    if amplitude == 0:
        return None
    lattice = Grid((110, 130, 110), (_TEXTURE_SPACING_MM,) * 3, (-110.0, -140.0, -110.0))
    noise = rng.standard_normal(lattice.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, 1.5)
    noise *= np.float32(amplitude / (noise.std() or 1.0))
    return sample_separable(noise, lattice.origin, lattice.spacing, grid)


def _mixed(lut, labels, mix, gm_f, wm_f, csf_f):
    """Per-label values from ``lut``, with the GM/WM/CSF partial-volume blend where ``mix``."""
    L = LABELS
    v = lut[labels]
    blend = gm_f * lut[L["cortical_grey_matter"]] + wm_f * lut[L["white_matter"]] + csf_f * lut[L["csf"]]
    v[mix] = blend[mix]
    return v


def _render_properties(anatomy, grid, lesions, *, field_strength, chi_overrides, texture_rng,
                       texture_amplitude):
    """Labels, chi (ppm rel. water), M0, R2* and brain mask on ``grid``."""
    labels, brain, (gm, wm) = anatomy.render(grid)
    lesion_map = np.zeros(grid.shape, dtype=np.uint16)
    chi_lut, m0_lut, r2_lut = lookup_tables(field_strength=field_strength, chi_overrides=chi_overrides)
    L = LABELS
    # GM/WM/CSF keep their partial-volume mixture; everything else takes its label's value.
    mix = np.isin(labels, (L["white_matter"], L["cortical_grey_matter"], L["csf"])) & brain
    total = np.maximum(gm + wm, np.float32(1.0))
    gm_f = gm / total
    wm_f = wm / total
    del gm, wm, total
    csf_f = 1.0 - gm_f - wm_f

    chi, m0, r2 = (_mixed(lut, labels, mix, gm_f, wm_f, csf_f) for lut in (chi_lut, m0_lut, r2_lut))
    del gm_f, wm_f, csf_f, mix
    tex = _texture(grid, texture_rng, texture_amplitude)
    if tex is not None:
        tissue = np.isin(labels, (1, 2, 4, 5, 6, 7, 8, 9, 10))
        chi[tissue] += tex[tissue]
        del tex, tissue
    if lesions:
        before = labels.copy()
        paint_lesions(lesions, grid, anatomy, labels, lesion_map, chi, chi_vein=float(chi_lut[L["vein"]]))
        changed = labels != before
        m0[changed] = m0_lut[labels[changed]]
        r2[changed] = r2_lut[labels[changed]]
        # paramagnetic rims carry iron: raise their R2*
        rim = changed & (labels == L["ms_lesion"]) & (chi > chi_lut[L["white_matter"]] + 0.03)
        r2[rim] *= np.float32(1.4)
    return labels, brain, lesion_map, chi, m0, r2


def simulate_head(
    *,
    voxel_size=1.0,
    echo_times=None,
    field_strength: float = 3.0,
    protocol: str = "gre",
    snr: float | None = 100.0,
    b0_direction=None,
    b0_tilt_deg: float = 0.0,
    lesions: int = 0,
    oversample: int = 2,
    rng=0,
    anatomy_scale=(1.0, 1.0, 1.0),
    vary_anatomy: bool = False,
    texture_amplitude: float = 0.004,
    phase_offset_amplitude: float = np.pi,
    echo_spacing: float = 0.0008,
    segments: int | None = None,
    pe_axis: int = 1,
    progress=None,
) -> SimulatedHead:
    """Simulate a whole head acquired with multi-echo GRE or segmented 3D-EPI.

    Parameters
    ----------
    voxel_size : float or sequence of 3 float
        Output voxel size in mm (anisotropic allowed).
    echo_times : sequence of float, optional
        Seconds; default :data:`DEFAULT_ECHO_TIMES` (GRE) or :data:`DEFAULT_EPI_ECHO_TIMES` (EPI).
    field_strength : float
        Tesla (R2* and the field in Hz scale with it).
    protocol : {"gre", "epi"}
    snr : float or None
        Mean first-echo brain magnitude over the noise standard deviation; None: no noise.
    b0_direction : sequence of 3 float, optional
        B0 in voxel axes; overrides ``b0_tilt_deg``.
    b0_tilt_deg : float
        Head pitch (rotation about voxel axis I) relative to B0, in degrees.
    lesions : int
        Number of MS lesions (kinds cycle through rim / hyperintense / isointense).
    oversample : int
        Fine-grid factor (>= 2 avoids the inverse crime; 1 only for quick tests).
    rng : None, int or numpy.random.Generator
        Seed for lesion placement, texture, anatomy jitter, phase offset and noise.
    anatomy_scale : sequence of 3 float
        Stretch of the head relative to MNI152.
    vary_anatomy : bool
        Jitter deep-grey nuclei and tissue susceptibilities (+-10 %) with ``rng``.
    texture_amplitude : float
        Standard deviation (ppm) of the smooth susceptibility texture in brain tissue.
    phase_offset_amplitude : float
        Scale (rad) of the smooth receiver phase offset (0 disables it).
    echo_spacing, segments, pe_axis
        3D-EPI readout: echo spacing (s), shots per partition (None: the fewest for which each
        echo's train fits between excitation and the next echo) and phase-encode axis.
    progress : callable, optional
        Called with a short message at each stage.

    Returns
    -------
    SimulatedHead
    """
    t_start = time.perf_counter()
    timings = {}
    say = progress or (lambda msg: None)
    vs = check_voxel_size(voxel_size)
    te, b0t, oversample = check_acquisition(protocol=protocol, echo_times=echo_times,
                                            field_strength=field_strength, snr=snr, oversample=oversample)
    b0 = check_b0_direction(b0_direction) if b0_direction is not None else b0_direction_from_tilt(b0_tilt_deg)
    seeds = np.random.SeedSequence(rng if not isinstance(rng, np.random.Generator) else rng.integers(2**63))
    s_anat, s_les, s_tex, s_phase, s_noise, s_chi = seeds.spawn(6)

    anatomy = HeadAnatomy(scale=anatomy_scale, rng=np.random.default_rng(s_anat), jitter=vary_anatomy)
    out_grid = _output_grid(vs, anatomy.scale)
    fine_grid = out_grid.refined(oversample)
    check_memory(fine_grid.shape)
    if protocol == "epi":
        if pe_axis not in (0, 1, 2):
            raise ValueError(f"pe_axis must be 0, 1 or 2, got {pe_axis}")
        segments = epi_train(out_grid.shape[pe_axis], te, echo_spacing=echo_spacing, segments=segments)
    chi_overrides = None
    if vary_anatomy:
        r = np.random.default_rng(s_chi)
        chi_lut, _, _ = lookup_tables(field_strength=b0t)
        chi_overrides = {lab: float(chi_lut[lab] * r.uniform(0.9, 1.1)) for lab in range(1, 13)}
    wm_chi = (chi_overrides or {}).get(LABELS["white_matter"], float(lookup_tables()[0][LABELS["white_matter"]]))
    say("placing lesions")
    lesion_list: list[Lesion] = place_lesions(lesions, anatomy, rng=np.random.default_rng(s_les), chi_wm=wm_chi) if lesions else []

    vs_f = np.asarray(fine_grid.spacing)
    timings["setup_s"] = time.perf_counter() - t_start

    say("rendering ground truth on the output grid")
    t0 = time.perf_counter()
    tex_seed = s_tex.generate_state(1)[0]
    labels, brain, lesion_map, _, _, _ = _render_properties(
        anatomy, out_grid, lesion_list, field_strength=b0t, chi_overrides=chi_overrides,
        texture_rng=np.random.default_rng(tex_seed), texture_amplitude=0.0)
    timings["truth_s"] = time.perf_counter() - t0

    say(f"rendering the head on a {fine_grid.shape} fine grid")
    t0 = time.perf_counter()
    _, brain_f, _, chi_f, m0_f, r2_f = _render_properties(
        anatomy, fine_grid, lesion_list, field_strength=b0t, chi_overrides=chi_overrides,
        texture_rng=np.random.default_rng(tex_seed), texture_amplitude=texture_amplitude)
    fine = {"chi": chi_f, "m0": m0_f, "r2star": r2_f, "brain": brain_f}
    del chi_f, m0_f, r2_f, brain_f
    timings["render_fine_s"] = time.perf_counter() - t0

    acq = acquire(fine, brain, fine_voxel_size=vs_f, oversample=oversample, echo_times=te,
                  field_strength=b0t, b0_direction=b0, protocol=protocol, snr=snr,
                  phase_offset_amplitude=phase_offset_amplitude, echo_spacing=echo_spacing,
                  segments=segments, pe_axis=pe_axis, phase_rng=np.random.default_rng(s_phase),
                  noise_rng=np.random.default_rng(s_noise), timings=timings, say=say)
    t1w = np.vectorize(T1W_INTENSITY.get, otypes=[np.float32])(np.arange(max(T1W_INTENSITY) + 1))[labels]
    t1w = ndimage.gaussian_filter(t1w, 0.5)
    chi = np.where(brain, acq.chi_full, np.float32(0.0)).astype(np.float32)
    # head-space origin (MNI 0, near the anterior commissure) at the scanner's isocentre
    affine = affine_with_b0_direction(vs, b0)
    affine[:3, 3] = affine[:3, :3] @ (np.asarray(out_grid.origin) / vs)
    records = _lesion_records(lesion_list, lesion_map, chi, affine, vs, anatomy)
    timings["total_s"] = time.perf_counter() - t_start

    params = dict(
        voxel_size=vs.tolist(), echo_times=te.tolist(), field_strength=b0t, protocol=protocol,
        snr=snr, b0_direction=b0.tolist(), b0_tilt_deg=float(b0_tilt_deg), lesions=int(lesions),
        oversample=oversample, rng=rng if isinstance(rng, (int, type(None))) else "generator",
        anatomy_scale=list(anatomy.scale), vary_anatomy=vary_anatomy,
        texture_amplitude=texture_amplitude, phase_offset_amplitude=float(phase_offset_amplitude),
        echo_spacing=echo_spacing if protocol == "epi" else None,
        segments=segments if protocol == "epi" else None,
        pe_axis=pe_axis if protocol == "epi" else None,
        shape=list(out_grid.shape), fine_shape=list(fine_grid.shape),
    )
    return SimulatedHead(
        magnitude=acq.magnitude, phase=acq.phase, echo_times=te, field_strength=b0t, voxel_size=vs,
        b0_direction=b0, affine=affine, chi=chi, chi_full=acq.chi_full, total_field=acq.total_field,
        local_field=acq.local_field, background_field=(acq.total_field - acq.local_field).astype(np.float32),
        brain_mask=brain, labels=labels, lesion_map=lesion_map, lesions=records, m0=acq.m0,
        r2star=acq.r2star, t1w=t1w.astype(np.float32), phase_offset=acq.phase_offset,
        noise_sigma=acq.noise_sigma, params=params, timings=timings,
    )


def _lesion_records(lesions, lesion_map, chi, affine, voxel_size, anatomy):
    voxel_volume = float(np.prod(voxel_size))
    records = []
    scale = np.asarray(anatomy.scale)
    for lesion in lesions:
        vox = lesion_map == lesion.lesion_id
        n = int(vox.sum())
        centre_ijk = np.argwhere(vox).mean(axis=0) if n else np.full(3, np.nan)
        centre_world = affine[:3, :3] @ centre_ijk + affine[:3, 3] if n else np.full(3, np.nan)
        rec = lesion.to_record()
        rec.update(
            center_mm=[round(float(v), 3) for v in np.asarray(lesion.center_mm) * scale],
            center_voxel=[round(float(v), 2) for v in centre_ijk],
            center_world_mm=[round(float(v), 2) for v in centre_world],
            n_voxels=n,
            volume_mm3=round(n * voxel_volume, 3),
            mean_chi_ppm=round(float(chi[vox].mean()), 5) if n else None,
        )
        records.append(rec)
    return records
