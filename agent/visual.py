"""Pictures for people: sample grids (RGB above depth, the paper's Figure 2) and depth views."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from agent.frame import Sample


def depth_view(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Depth (any dtype, 0 = none) -> RGB uint8 colour map with black where there is no depth."""
    d = depth.astype(np.float32)
    valid = d > 0
    if lo is None or hi is None:
        vals = d[valid]
        lo_, hi_ = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
        lo = lo_ if lo is None else lo
        hi = hi_ if hi is None else hi
    u8 = np.clip((d - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    rgb = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)[:, :, ::-1].copy()
    rgb[~valid] = 0
    return rgb


def label(img: np.ndarray, text: str, scale: float = 0.4) -> np.ndarray:
    """A copy of an RGB image with a text strip on top."""
    h = max(12, int(22 * scale))
    strip = np.zeros((h, img.shape[1], 3), np.uint8)
    cv2.putText(strip, text, (2, h - 4), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([strip, img])


def sample_tile(s: Sample, scale: int = 1) -> np.ndarray:
    """RGB above depth (grey), as the paper shows its samples."""
    t = np.vstack([s.rgb, np.repeat(s.depth[:, :, None], 3, 2)])
    return cv2.resize(t, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale != 1 else t


def sample_grid(rows: Sequence[Sequence[Sample]], row_labels: Sequence[str] | None = None,
                scale: int = 2, gap: int = 2) -> np.ndarray:
    """A grid image: one row of tiles per sequence, each tile RGB above depth."""
    if not rows or not any(rows):
        raise ValueError("nothing to draw: no samples")
    size = max(s.size for r in rows for s in r)
    tile_w = size * scale
    ncol = max(len(r) for r in rows)
    out_rows = []
    for i, r in enumerate(rows):
        tiles = [sample_tile(s, scale) if s.size == size else
                 cv2.resize(sample_tile(s), (tile_w, 2 * tile_w), interpolation=cv2.INTER_NEAREST) for s in r]
        tiles += [np.zeros((2 * tile_w, tile_w, 3), np.uint8)] * (ncol - len(tiles))
        line = np.hstack([np.pad(t, ((0, 0), (0, gap), (0, 0))) for t in tiles])
        if row_labels is not None:
            line = label(line, row_labels[i], scale=0.5)
        out_rows.append(np.pad(line, ((0, gap), (0, 0), (0, 0))))
    w = max(r.shape[1] for r in out_rows)
    return np.vstack([np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0))) for r in out_rows])


def write_png(path, rgb: np.ndarray) -> None:
    """Save an RGB uint8 image as PNG, raising if it cannot be written."""
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    if not ok:
        raise OSError(f"could not encode {path}")
    buf.tofile(str(path))
