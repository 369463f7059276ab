"""MR signal models: multi-echo GRE and segmented 3D-EPI, receiver phase offsets and noise.

Phase convention (design.md): ``phase = +2*pi*gamma_bar*B0*field*TE (+ offset)``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..kernels import fft_workers
from ..units import check_echo_times, hz_per_ppm

__all__ = [
    "epi_train",
    "complex_exponent",
    "gre_echo",
    "epi_readout",
    "receiver_phase_offset",
    "add_complex_noise",
    "noise_sigma",
]


def complex_exponent(field_ppm, r2star, *, field_strength):
    """Per-voxel exponent ``z = -R2* + i*omega`` (1/s) so that the signal is ``M0 * exp(z * t)``.

    Parameters
    ----------
    field_ppm : numpy.ndarray
        Field in ppm of B0.
    r2star : numpy.ndarray
        R2* in 1/s.
    field_strength : float
        Tesla.

    Returns
    -------
    numpy.ndarray of complex64
    """
    omega = (2.0 * np.pi * hz_per_ppm(field_strength)) * field_ppm.astype(np.float32)
    z = np.empty(field_ppm.shape, dtype=np.complex64)
    z.real = -r2star
    z.imag = omega
    return z


def gre_echo(m0, z, *, echo_time, chunk=16):
    """Complex GRE signal ``M0 * exp(z * TE)`` (complex64), computed in slabs to bound memory."""
    te = np.float32(check_echo_times(echo_time)[0])
    out = np.empty(z.shape, dtype=np.complex64)
    for i in range(0, z.shape[0], chunk):
        s = slice(i, i + chunk)
        np.exp(z[s] * te, out=out[s])
        out[s] *= m0[s]
    return out


def epi_train(n_lines, echo_times, *, echo_spacing, segments=None):
    """Check (or choose) the segmentation of a 3D-EPI echo train.

    Each echo is read by its own train of ``ceil(n_lines / segments)`` lines centred (at the
    k-space centre line) on its echo time. The train must start after the excitation and must not
    overlap the next echo's train.

    Parameters
    ----------
    n_lines : int
        Phase-encode lines along the EPI axis.
    echo_times : sequence of float
        Seconds.
    echo_spacing : float
        Seconds between lines.
    segments : int, optional
        Shots per partition; None picks the fewest that fit.

    Returns
    -------
    int
        The number of segments.

    Raises
    ------
    ValueError
        If the given segmentation does not fit, with the number of segments that would.
    """
    te = check_echo_times(echo_times)
    if not 0 < echo_spacing <= 0.01:
        raise ValueError(f"echo spacing must be in seconds and in (0, 10 ms], got {echo_spacing}")
    gaps = np.diff(te)

    def fits(s):
        etl = -(-n_lines // s)
        before = ((n_lines // 2) // s) * echo_spacing  # time from train start to the centre line
        after = (etl - 1 - (n_lines // 2) // s) * echo_spacing
        ok_start = te[0] - before > 0
        ok_gap = np.all(gaps >= before + after + echo_spacing) if gaps.size else True
        return bool(ok_start and ok_gap)

    needed = next((s for s in range(1, n_lines + 1) if fits(s)), None)
    if needed is None:
        raise ValueError("no EPI segmentation fits these echo times: lengthen TE or the echo gaps, "
                         "or shorten the echo spacing")
    if segments is None:
        return needed
    segments = int(segments)
    if segments < 1 or segments > n_lines:
        raise ValueError(f"segments must be in 1..{n_lines}, got {segments}")
    if not fits(segments):
        raise ValueError(
            f"with {segments} segments the {n_lines}-line EPI train starts before the excitation or "
            f"overlaps the next echo (echo spacing {echo_spacing * 1e3:.2f} ms, echo times "
            f"{[round(t * 1e3, 2) for t in te]} ms): use at least {needed} segments"
        )
    return segments


def epi_readout(image_te, z, *, echo_time, echo_spacing, segments, pe_axis=1):
    """Segmented (interleaved) 3D-EPI acquisition of an image whose signal evolves during the train.

    Each shot plays one echo train of ``ceil(N / segments)`` phase-encode lines along ``pe_axis``
    (interleaved: line ``m`` goes to shot ``m % segments`` at train position ``m // segments``); the
    partition axis is stepped shot by shot and has no time evolution. Line ``m`` is acquired at
    ``t_m = TE + (m // segments - p0) * echo_spacing`` with ``p0`` the train position of the
    k-space centre. Off-resonance therefore shifts and R2* blurs the image along ``pe_axis``.

    Parameters
    ----------
    image_te : numpy.ndarray of complex, shape (I, J, K)
        Signal at ``echo_time`` (on the output grid).
    z : numpy.ndarray of complex64
        ``-R2* + i*omega`` (1/s) on the same grid (see :func:`complex_exponent`).
    echo_time, echo_spacing : float
        Seconds.
    segments : int
        Number of shots (interleaves) per partition.
    pe_axis : int

    Returns
    -------
    numpy.ndarray of complex64
        The reconstructed (inverse-FFT) EPI image.

    Notes
    -----
    The evolution during the train is applied to the image already sampled on the output grid
    (intravoxel dephasing is exact at TE and first-order accurate across the train); a full
    per-line simulation on the fine grid would cost one fine-grid FFT per train position.
    """
    te = float(check_echo_times(echo_time)[0])
    if echo_spacing <= 0 or echo_spacing > 0.01:
        raise ValueError(f"echo spacing must be in seconds and in (0, 10 ms], got {echo_spacing}")
    segments = int(segments)
    n = image_te.shape[pe_axis]
    if segments < 1 or segments > n:
        raise ValueError(f"segments must be in 1..{n}, got {segments}")
    workers = fft_workers()
    # linear (centre-out symmetric) line order: line m covers ky = m - n//2
    m = np.arange(n)
    ky = m - n // 2
    position = m // segments
    p0 = (n // 2) // segments
    dt = (position - p0) * float(echo_spacing)
    kspace = np.zeros(image_te.shape, dtype=np.complex64)
    for p in np.unique(position):
        lines = np.mod(ky[position == p], n)  # indices in fft order
        evolved = image_te * np.exp(z * np.float32(dt[position == p][0]))
        spec = sfft.fft(evolved, axis=pe_axis, workers=workers)
        idx = [slice(None)] * 3
        idx[pe_axis] = lines
        kspace[tuple(idx)] = spec[tuple(idx)]
    del te
    return sfft.ifft(kspace, axis=pe_axis, workers=workers).astype(np.complex64)


def receiver_phase_offset(shape, voxel_size, *, rng=None, amplitude=np.pi):
    """A smooth receiver (transceiver) phase offset phi0 in radians, shape ``shape``.

    Constant plus linear and quadratic terms across the field of view with random coefficients,
    as left by coil combination against a reference coil; values up to about ``amplitude``.
    """
    rng = np.random.default_rng(rng)
    coords = []
    for ax, n in enumerate(shape):
        u = np.linspace(-1.0, 1.0, n)
        view = [1, 1, 1]
        view[ax] = n
        coords.append(u.reshape(view))
    phi = np.full(shape, rng.uniform(-np.pi, np.pi), dtype=np.float64)
    for ax in range(3):
        phi = phi + amplitude * 0.4 * rng.uniform(-1, 1) * coords[ax]
        phi = phi + amplitude * 0.2 * rng.uniform(-1, 1) * coords[ax] ** 2
    return phi.astype(np.float32)


def noise_sigma(signal_first_echo, mask, *, snr):
    """Noise standard deviation per real/imaginary channel for SNR = mean|S| in ``mask`` / sigma."""
    if snr is None or np.isinf(snr):
        return 0.0
    if not snr > 0:  # also rejects NaN
        raise ValueError(f"SNR must be positive, got {snr}")
    mean_signal = float(np.abs(signal_first_echo[mask]).mean())
    return mean_signal / float(snr)


def add_complex_noise(signal, sigma, *, rng=None):
    """Add complex Gaussian noise of standard deviation ``sigma`` per channel (new array)."""
    if sigma == 0:
        return signal.copy()
    rng = np.random.default_rng(rng)
    noise = rng.standard_normal(signal.shape, dtype=np.float32) + 1j * rng.standard_normal(
        signal.shape, dtype=np.float32
    )
    return (signal + np.float32(sigma) * noise).astype(signal.dtype)
