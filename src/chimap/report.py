"""Self-contained HTML reports with orthogonal slice views (no plotting library needed).

Images are encoded as PNG with :mod:`zlib` and embedded as data URIs, so a report is one file
that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import struct
import zlib

import numpy as np

from .io import atomic_path

__all__ = ["encode_png", "orthogonal_views", "write_html_report"]


def encode_png(image) -> bytes:
    """Encode a 2-D uint8 (grey) or (H, W, 3) uint8 (RGB) array as PNG bytes."""
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8:
        raise ValueError("encode_png needs uint8 data")
    if img.ndim == 2:
        colour, channels = 0, 1
    elif img.ndim == 3 and img.shape[2] == 3:
        colour, channels = 2, 3
    else:
        raise ValueError(f"encode_png needs (H, W) or (H, W, 3), got {img.shape}")
    h, w = img.shape[:2]
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    del channels
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _to_uint8(a, vmin, vmax):
    a = np.clip((np.asarray(a, np.float64) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return (a * 255 + 0.5).astype(np.uint8)


def orthogonal_views(volume, *, vmin=None, vmax=None, center=None) -> bytes:
    """PNG of the three orthogonal mid-slices of a 3-D volume side by side (display only).

    Slices are shown with the second array axis up for the first view and the third axis up for
    the others; axes are never renamed or transposed in the data.
    """
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim != 3:
        raise ValueError(f"orthogonal_views needs a 3-D volume, got shape {v.shape}")
    finite = v[np.isfinite(v)]
    if vmin is None or vmax is None:
        lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    c = [n // 2 for n in v.shape] if center is None else center
    views = [v[:, :, c[2]].T[::-1], v[:, c[1], :].T[::-1], v[c[0], :, :].T[::-1]]
    h = max(s.shape[0] for s in views)
    tiles = [np.pad(s, ((0, h - s.shape[0]), (0, 2))) for s in views]
    return encode_png(_to_uint8(np.nan_to_num(np.hstack(tiles)), vmin, vmax))


def write_html_report(path, title, sections):
    """Write an HTML report atomically.

    Parameters
    ----------
    path : str or Path
    title : str
    sections : list of (heading, items)
        ``items`` is a list of ``("text", str)``, ``("table", dict)`` or ``("image", (caption, png_bytes))``.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%;"
             "image-rendering:pixelated}td,th{padding:2px 10px;text-align:left}"
             "figure{display:inline-block;margin:0 1em 1em 0}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for kind, content in items:
            if kind == "text":
                parts.append(f"<p>{html.escape(content)}</p>")
            elif kind == "table":
                rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in content.items())
                parts.append(f"<table>{rows}</table>")
            elif kind == "image":
                caption, png = content
                b64 = base64.b64encode(png).decode()
                parts.append(f"<figure><img src='data:image/png;base64,{b64}'>"
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            else:
                raise ValueError(f"unknown report item kind {kind!r}")
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path
