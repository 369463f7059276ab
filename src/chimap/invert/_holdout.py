"""Stopping iterations chosen by hold-out cross-validation (private): the pieces that RTS's
``lsmr_iter="auto"`` and NDI's ``max_iter="auto"`` share (:mod:`chimap.invert.autoreg`)."""

from __future__ import annotations

import numpy as np

from ._common import check_positive

#: Fewest held-out voxels a cross-validated choice accepts.
MIN_HELD_OUT = 20


def parse_iteration_count(value, name):
    """``None`` for ``"auto"`` (any case, surrounding blanks ignored), else ``value`` as a
    positive int (ValueError naming ``name`` otherwise)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return check_positive(value, name, integer=True)


def draw_held_out(region, fraction, name):
    """The voxels of ``region`` (bool, 3-D) held out: about ``fraction`` of them, drawn by
    :func:`chimap.invert.autoreg.holdout_mask` (seed 0). Returns ``(held, n_held)``; a
    ValueError naming the parameter ``name`` when too few (or all) voxels are drawn."""
    from .autoreg import holdout_mask

    held = region & holdout_mask(region.shape, fraction, 0)
    n_held = int(held.sum())
    if n_held < MIN_HELD_OUT or n_held == int(np.count_nonzero(region)):
        raise ValueError(f'{name}="auto" needs voxels to hold out for cross-validation; this mask has too '
                         f'few ({n_held}): give a number of iterations')
    return held, n_held


def past_minimum(errors, patience):
    """True once the last ``patience`` entries of ``errors`` all came after its minimum."""
    return len(errors) - 1 - int(np.argmin(errors)) >= patience


def selection_record(errors, fraction, n_held, name):
    """``(count, record)``: the iteration count of the least held-out error (``errors[k]`` is
    the error after ``k + 1`` iterations) and the selection record of the provenance."""
    chosen = int(np.argmin(errors)) + 1
    return chosen, {"criterion": "cv", "holdout": fraction, "seed": 0, "n_holdout": n_held,
                    "cv_rmse": errors, name: chosen}
