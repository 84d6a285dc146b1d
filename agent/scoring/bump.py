"""Bump check: surface pushed *towards* the camera, against the part's own local depth.

The relief check (agent/scoring/relief.py) sees a part's surface pushed away from the camera (a
dent, a hole) against a smooth surface fitted to it; a protrusion the same size towards the
camera (a bump, a blister, a bead of glue) scores at chance there, and a two-sided residual
against the fitted surface fails, because normal parts lie in front of it in places
(bench/RESULTS.md, "Damage made by another hand"). Here the reference is local: the depth's
median over a `k` x `k` window, which follows the part's own shape at scales above k and leaves
what is smaller. Intact parts hold spots far nearer than their surroundings too, and they are
depth dropouts, not surface (the camera measured nothing there, and resizing mixed the hole into
the part): pixels more than `dropout` nearer than their median, and 2 px around them, are left out.
The price: a narrow protrusion more than `dropout` (40 levels of the 8-bit depth) above its
surroundings is left out too (one 6 px wide at 64 px: 45 levels read as 36, 60 as 7), and left to
the search; a wider one is followed in part by the median and still reads.

The map is how far the interior lies in front of its local median, box-averaged over `window`;
the score its largest value, in the model's depth units. `BumpCheck` enters it into the part's
image score as the relief check does (the larger of the two, in the search's units against the
run's training parts). Blocked CV screen and a proxy on three bundles: bench/RESULTS.md, "A local
relief screen". Opt-in (`adgan export --bump`), not a default. Numpy only, ~0.2 ms per part.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from agent.scoring.relief import DEPTH, ReliefCheck, interior

FIELDS = ("k", "dropout", "erode", "open_frac", "window", "min_pixels")
LEVEL = 1 / 127.5  # one level of the 8-bit depth in the model's units


@dataclass(frozen=True)
class Bump:
    """The bump check's parameters (the bundle manifest's "bump" block)."""
    k: int = 15  # the local median's window, pixels of the model input (odd)
    dropout: float = 40 * LEVEL  # nearer than the median by more: a depth dropout, left out
    erode: int = 4
    open_frac: float = 0.3
    window: int = 3
    min_pixels: int = 12

    def __post_init__(self) -> None:
        for name in ("k", "erode", "window", "min_pixels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "erode" else 1):
                raise ValueError(f"bump {name} must be a whole number >= {0 if name == 'erode' else 1}, got {v!r}")
        if self.k % 2 == 0 or self.k < 3:
            raise ValueError(f"bump k must be odd and at least 3, got {self.k}")
        for name, top in (("dropout", 2.0), ("open_frac", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < top or not np.isfinite(v):
                raise ValueError(f"bump {name} must be a number in [0, {top:g}), got {v!r}")
        if self.dropout <= 0:
            raise ValueError(f"bump dropout must be above 0, got {self.dropout!r}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> "Bump":
        bad = set(d) - set(FIELDS)
        if bad:
            raise ValueError(f"unknown bump field(s) {sorted(bad)}")
        return cls(**d)


def bump_map(x: np.ndarray, p: Bump = Bump()) -> np.ndarray:
    """(S, S) float32: how far in front of its local median each interior pixel lies (model depth units),
    box-averaged over the window; 0 outside the interior, at depth dropouts and behind the median."""
    if x.ndim != 3 or x.shape[0] <= DEPTH:
        raise ValueError(f"the bump check needs a (4, S, S) model input, got shape {x.shape}")
    depth = x[DEPTH]
    inside = interior(depth, p.erode, p.open_frac)
    levels = np.clip(np.rint((depth + 1.0) * 127.5), 0, 255).astype(np.uint8)
    nearer = (cv2.medianBlur(levels, p.k).astype(np.float32) - levels.astype(np.float32)) * LEVEL
    holes = cv2.dilate((nearer > p.dropout).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    inside &= ~holes
    if inside.sum() < p.min_pixels:
        return np.zeros(depth.shape, np.float32)
    front = np.where(inside, np.maximum(nearer, 0.0), 0.0).astype(np.float32)
    box = cv2.boxFilter(front, -1, (p.window, p.window), normalize=True, borderType=cv2.BORDER_CONSTANT)
    return np.where(inside, box, 0.0).astype(np.float32)


def bump_score(x: np.ndarray, p: Bump = Bump()) -> float:
    """The largest window of bump_map: 0 for a part with nothing in front of its local surface."""
    return float(bump_map(x, p).max())


@dataclass(frozen=True)
class BumpCheck(ReliefCheck):
    """The bump check of a bundle: its parameters and the training parts' reference, entered into
    the image score as the relief check's is (ReliefCheck: the larger, in the search's units)."""
    PARAMS: ClassVar[type] = Bump
    NAME: ClassVar[str] = "bump"
    params: Bump
