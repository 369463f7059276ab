"""From fine-grid tissue properties to output-grid images and fields: the acquisition core.

Shared by the built-in head (:mod:`chimap.sim.head`) and label-map phantoms
(:mod:`chimap.sim.segmented`). Fields are computed on the fine grid without wrap-around
(:func:`chimap.sim.fields.two_scale_dipole_field`), the complex signal per echo on the fine grid
(with its intravoxel dephasing) and band-limited to the output grid by k-space cropping; EPI
readouts, the receiver phase offset and noise are applied on the output grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..constants import CHI_AIR_REL_WATER_PPM
from ..units import check_echo_times, check_field_strength
from .fields import block_mean, fourier_downsample, two_scale_dipole_field
from .signal import (
    add_complex_noise,
    complex_exponent,
    epi_readout,
    gre_echo,
    noise_sigma,
    receiver_phase_offset,
)

__all__ = ["Acquired", "acquire", "check_acquisition", "check_memory", "DEFAULT_ECHO_TIMES", "DEFAULT_EPI_ECHO_TIMES"]

#: Default echo times (s) of a 4-echo 3 T GRE protocol.
DEFAULT_ECHO_TIMES = (0.005, 0.012, 0.019, 0.026)

#: Default echo times (s) of a 4-echo segmented 3D-EPI protocol (one train per echo).
DEFAULT_EPI_ECHO_TIMES = (0.008, 0.018, 0.028, 0.038)


#: Peak memory per fine-grid voxel of the simulation, bytes (measured: 4.1 GB for a
#: 384x456x408 fine grid, ``benchmarks/bench_simulate_head.py``).
BYTES_PER_FINE_VOXEL = 60


def check_memory(fine_shape, *, available_bytes=None):
    """Refuse a fine grid whose simulation would not fit in the machine's memory.

    Raises
    ------
    MemoryError
        With the estimate and how to reduce it (larger voxels or a smaller ``oversample``).
    """
    import os

    need = BYTES_PER_FINE_VOXEL * float(np.prod(fine_shape))
    if available_bytes is None:
        try:
            available_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
            return
    if need > 0.9 * available_bytes:
        raise MemoryError(
            f"simulating a {tuple(int(n) for n in fine_shape)} fine grid needs about {need / 2**30:.1f} GiB "
            f"but this machine has {available_bytes / 2**30:.1f} GiB: use larger voxels or --oversample 1"
        )


def check_acquisition(*, protocol, echo_times, field_strength, snr, oversample):
    """Validate the acquisition settings before any simulation work.

    Returns
    -------
    echo_times : numpy.ndarray
        Seconds (the protocol's defaults when None was given).
    field_strength : float
    oversample : int
    """
    if protocol not in ("gre", "epi"):
        raise ValueError(f"protocol must be 'gre' or 'epi', got {protocol!r}")
    if echo_times is None:
        echo_times = DEFAULT_EPI_ECHO_TIMES if protocol == "epi" else DEFAULT_ECHO_TIMES
    te = check_echo_times(echo_times)
    b0t = check_field_strength(field_strength)
    # NaN would pass a plain "<= 0" test and give an all-NaN noise level at the very end
    if snr is not None and not (float(snr) > 0):
        raise ValueError(f"SNR must be positive (or None for no noise), got {snr}")
    oversample = int(oversample)
    if oversample < 1 or oversample > 4:
        raise ValueError(f"oversample must be 1..4, got {oversample}")
    return te, b0t, oversample


@dataclass
class Acquired:
    """Output-grid results of :func:`acquire` (float32 arrays; fields in ppm, chi in ppm)."""

    magnitude: np.ndarray
    phase: np.ndarray
    total_field: np.ndarray
    local_field: np.ndarray
    chi_full: np.ndarray
    m0: np.ndarray
    r2star: np.ndarray
    phase_offset: np.ndarray
    noise_sigma: float


def acquire(fine, brain_out, *, fine_voxel_size, oversample, echo_times, field_strength, b0_direction,
            protocol="gre", snr=None, phase_offset_amplitude=np.pi, echo_spacing=0.0008, segments=1,
            pe_axis=1, phase_rng=None, noise_rng=None, timings=None, say=None) -> Acquired:
    """Simulate fields and the acquired multi-echo images from fine-grid tissue properties.

    Parameters
    ----------
    fine : dict
        Fine-grid arrays, consumed (popped) to free memory as the simulation goes:
        ``"chi"`` (ppm relative to water, air = +9.2), ``"m0"``, ``"r2star"`` (1/s) as float32 and
        ``"brain"`` (bool) whose susceptibility makes the local field.
    brain_out : numpy.ndarray of bool
        Brain mask on the output grid (defines the SNR).
    fine_voxel_size : sequence of 3 float
        mm.
    oversample : int
        Fine voxels per output voxel along each axis.
    echo_times : numpy.ndarray
        Seconds (validated by the caller).
    field_strength : float
        Tesla.
    b0_direction : numpy.ndarray
        Unit vector in voxel axes.
    protocol : {"gre", "epi"}
    snr : float or None
    phase_offset_amplitude : float
        Radians; 0 disables the receiver phase offset.
    echo_spacing, segments, pe_axis
        EPI readout (validated by the caller with :func:`chimap.sim.signal.epi_train`).
    phase_rng, noise_rng : numpy.random.Generator
    timings : dict, optional
        Receives the seconds per stage.
    say : callable, optional
        Progress messages.

    Returns
    -------
    Acquired
    """
    say = say or (lambda msg: None)
    timings = {} if timings is None else timings
    vs_f = np.asarray(fine_voxel_size, dtype=np.float64)
    te = np.asarray(echo_times, dtype=np.float64)

    say("computing fields")
    t0 = time.perf_counter()
    chi_f = fine.pop("chi")
    brain_f = fine.pop("brain")
    # Sources relative to the air outside the head (air -> 0), so zero padding is the same medium.
    src = chi_f - np.float32(CHI_AIR_REL_WATER_PPM)
    total_f = two_scale_dipole_field(src, vs_f, oversample, b0_direction=b0_direction)
    np.multiply(chi_f, brain_f, out=src)
    local = block_mean(two_scale_dipole_field(src, vs_f, oversample, b0_direction=b0_direction), oversample)
    del src, brain_f
    total = block_mean(total_f, oversample)
    chi_full = block_mean(chi_f, oversample)
    del chi_f
    timings["fields_s"] = time.perf_counter() - t0

    say("simulating the signal")
    t0 = time.perf_counter()
    m0_f = fine.pop("m0")
    r2_f = fine.pop("r2star")
    z_f = complex_exponent(total_f, r2_f, field_strength=field_strength)
    del total_f
    m0 = block_mean(m0_f, oversample)
    r2 = block_mean(r2_f, oversample)
    del r2_f
    echoes = []
    for t in te:
        s_f = gre_echo(m0_f, z_f, echo_time=t)
        echoes.append(fourier_downsample(s_f, oversample) if oversample > 1 else s_f)
        del s_f
    del z_f, m0_f
    if protocol == "epi":
        z_c = complex_exponent(total, r2, field_strength=field_strength)
        echoes = [epi_readout(e, z_c, echo_time=t, echo_spacing=echo_spacing, segments=segments,
                              pe_axis=pe_axis) for e, t in zip(echoes, te)]
        del z_c
    shape = total.shape
    vs_out = vs_f * np.broadcast_to(np.asarray(oversample), (3,))
    phase_offset = (receiver_phase_offset(shape, vs_out, rng=phase_rng, amplitude=phase_offset_amplitude)
                    if phase_offset_amplitude else np.zeros(shape, np.float32))
    sigma = noise_sigma(echoes[0], brain_out, snr=snr)
    rot = np.exp(1j * phase_offset).astype(np.complex64)
    mag = np.empty(shape + (len(te),), np.float32)
    pha = np.empty_like(mag)
    for e in range(len(echoes)):
        sig = add_complex_noise(echoes[e] * rot, sigma, rng=noise_rng)
        echoes[e] = None
        mag[..., e] = np.abs(sig)
        pha[..., e] = np.angle(sig)
    timings["signal_s"] = time.perf_counter() - t0
    return Acquired(magnitude=mag, phase=pha, total_field=total, local_field=local, chi_full=chi_full,
                    m0=m0, r2star=r2, phase_offset=phase_offset, noise_sigma=float(sigma))
