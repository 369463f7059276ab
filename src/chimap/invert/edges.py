"""Morphology prior: a per-voxel TV weight that spares the magnitude image's edges.

MEDI (Liu et al., "Morphology enabled dipole inversion (MEDI) from a single-angle acquisition",
MRM 2011;66:777; de Rochefort et al. MRM 2010;63:194) does not penalise the gradient of chi
where the magnitude image has an edge: tissue boundaries that the magnitude shows are allowed to
be boundaries of chi, so the sparsity prior stops shrinking the contrast between structures
(deep-grey nuclei against white matter, grey against white matter). MEDI thresholds each
gradient component of the magnitude and applies its prior to each component (anisotropic L1).
For the isotropic TV of :func:`chimap.invert.tv_admm` and :func:`chimap.invert.tv_admm_wh`
the weight is per voxel, on the Euclidean norm of the magnitude's forward differences (chimap's
adaptation; the difference stencil is that of the solvers' TV, so the weight of voxel ``i``
acts on the differences that start at ``i``).

In ``chimap run`` it is ``[invert] edges = "magnitude"`` (with ``edge_fraction``), for the TV
inversions. It is off in every preset: on the simulated heads of
``benchmarks/bench_pipeline.py`` (measured when the option was added) it made the default
pipeline worse, because the cross-validated TV weight rises to compensate for the
unregularised edge voxels, and the field errors that background removal leaves are not where
the magnitude has edges. NRMSE (%) with edge fractions 0 (preset) / 0.08 / 0.15 / 0.3: GRE
1 mm 38.1 / 38.9 / 41.7 / 43.2; 3D-EPI 1 x 1 x 2 mm, SNR 45 49.5 / 54.4 / 57.9 / 59.5.
On a noise-free two-sphere problem it does what it is for: at a strong TV weight it keeps the
contrast that uniform TV shrinks (``tests/test_invert_edges.py``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_EDGE_FRACTION", "magnitude_edge_weight"]

#: Fraction of the mask's voxels treated as edges: MEDI's default, 0.9 edge gradient
#: components per voxel out of 3 (toolbox ``percentage = 0.9``), is 30 % of the components.
DEFAULT_EDGE_FRACTION = 0.3


def magnitude_edge_weight(magnitude, mask, voxel_size, *, edge_fraction=DEFAULT_EDGE_FRACTION, edge_weight=0.0):
    """Per-voxel TV weight: ``edge_weight`` on the magnitude's strongest edges, 1 elsewhere.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (I, J, K)
        Magnitude image (any scale; echoes combined, e.g. root mean square).
    mask : numpy.ndarray of bool, shape (I, J, K)
        Brain mask. Only differences between two mask voxels count, so the mask's own
        boundary is not an edge.
    voxel_size : array_like, shape (3,)
        Voxel sizes in mm (differences are per mm).
    edge_fraction : float
        Fraction of the mask's voxels, in [0, 1), that are edges: those with the largest
        gradient norm ``|G m|`` (per mm). 0 gives a uniform weight.
    edge_weight : float
        TV weight on the edges, in [0, 1): 0 (MEDI) does not penalise them at all.

    Returns
    -------
    numpy.ndarray of float32, shape (I, J, K)
        1 inside the mask off the edges, ``edge_weight`` on them, 1 outside the mask.

    Raises
    ------
    ValueError
        Shape mismatch, an empty mask, NaN/inf magnitude inside the mask, a bad voxel size,
        ``edge_fraction`` outside [0, 1) or ``edge_weight`` outside [0, 1).
    """
    mag = np.asarray(magnitude)
    mask = np.asarray(mask)
    if mag.ndim != 3:
        raise ValueError(f"magnitude must be 3D (echoes combined), got shape {mag.shape}")
    if mask.shape != mag.shape:
        raise ValueError(f"mask shape {mask.shape} does not match magnitude shape {mag.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("the mask is empty")
    vs = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if vs.shape != (3,) or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise ValueError(f"voxel_size must be 3 positive numbers in mm, got {voxel_size!r}")
    edge_fraction = float(edge_fraction)
    if not 0.0 <= edge_fraction < 1.0:
        raise ValueError(f"edge_fraction must be in [0, 1), got {edge_fraction!r}")
    edge_weight = float(edge_weight)
    if not 0.0 <= edge_weight < 1.0:
        raise ValueError(f"edge_weight must be in [0, 1), got {edge_weight!r}")
    if np.issubdtype(mag.dtype, np.complexfloating) or not np.issubdtype(mag.dtype, np.number):
        raise ValueError(f"magnitude must be real, got dtype {mag.dtype}")
    m = np.where(mask, mag, 0).astype(np.float32)
    if not np.all(np.isfinite(m)):
        raise ValueError("magnitude holds NaN/inf inside the mask")
    out = np.ones(mag.shape, dtype=np.float32)
    if edge_fraction == 0.0:
        return out
    g2 = np.zeros(mag.shape, dtype=np.float32)
    for ax in range(3):
        here = [slice(None)] * 3
        there = [slice(None)] * 3
        here[ax] = slice(0, -1)
        there[ax] = slice(1, None)
        here, there = tuple(here), tuple(there)
        diff = (m[there] - m[here]) * np.float32(1.0 / vs[ax])
        both = mask[here] & mask[there]
        g2[here] += np.where(both, diff * diff, 0)
    inside = g2[mask]
    n_edges = int(round(edge_fraction * inside.size))
    if n_edges == 0:
        return out
    thr = np.partition(inside, inside.size - n_edges)[inside.size - n_edges]
    # ties at the threshold (flat images) must not make every voxel an edge
    edges = mask & (g2 >= thr) & (g2 > 0)
    out[edges] = edge_weight
    return out
