"""NIfTI load/save that keeps affine and header, with atomic writes.

Outputs are written to a temporary file in the destination folder and renamed into place, so an
interrupted or failed run never leaves a half-written file or overwrites good output with bad.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["load_nifti", "save_nifti", "write_json", "atomic_path"]


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_nifti(path, *, dtype=None):
    """Load a NIfTI image.

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz`` file.
    dtype : numpy dtype, optional
        Convert the (scaled) data to this dtype; default keeps float data as stored and
        returns scaled data as float.

    Returns
    -------
    data : numpy.ndarray
        Voxel data in NIfTI storage order (I, J, K[, E]).
    affine : numpy.ndarray, shape (4, 4)
    header : nibabel.Nifti1Header
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise ValueError(f"cannot read {path} as NIfTI: {exc}") from None
    if dtype is None:
        stored = img.get_data_dtype()
        slope, inter = img.header.get_slope_inter()
        scaled = (slope not in (None, 1.0) and not np.isnan(slope)) or (inter not in (None, 0.0) and not np.isnan(inter))
        if np.issubdtype(stored, np.floating) and not scaled:
            data = np.asanyarray(img.dataobj).astype(stored, copy=False)
        elif scaled:
            data = img.get_fdata(dtype=np.float32 if stored.itemsize <= 2 else np.float64)
        else:
            data = np.asanyarray(img.dataobj)
    else:
        data = np.asarray(img.dataobj).astype(dtype, copy=False)
    return np.asarray(data), img.affine.copy(), img.header.copy()


def save_nifti(path, data, affine, *, header=None, dtype=None):
    """Save ``data`` with ``affine`` atomically as NIfTI-1 (gzip for ``.nii.gz``).

    Parameters
    ----------
    path : str or Path
    data : numpy.ndarray
        Bool data are stored as uint8.
    affine : array_like, shape (4, 4)
    header : nibabel header, optional
        Template header (units, descriptions); its data type and scaling are reset.
    dtype : numpy dtype, optional
        On-disk dtype; default the array's dtype.
    """
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if data.dtype == np.float64:
        pass
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64), header=hdr)
    img.header.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path, obj, *, indent=2):
    """Write ``obj`` as JSON atomically (numpy scalars and arrays are converted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n")
    return Path(path)
