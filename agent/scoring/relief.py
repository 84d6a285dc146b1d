"""Depth relief: how far a part's surface is pushed in somewhere, against a smooth surface.

The generator's residual |G(z*) - x| is dominated by how well an instance is drawn: on a new
batch (a ball of another size, a can with another print) the whole part differs, and a dent or
a pit covering a tenth of the part does not move the image score (issue 15). A manufactured
part's faces are smooth at the model's scale, so local damage that pushes the surface away from
the camera (a dent, a hole, a pit) shows without any model: fit a plane to the depth of the
part's interior, robustly (outliers are left out of the fit, so the defect does not pull the
plane), and look for the largest window where the surface lies behind that plane.

- interior: the part (depth > 0), opened by a disk of `open_frac` of its equivalent radius so
  that what only touches it (a cable or a stand behind it) is left out, then eroded by `erode`
  pixels, so the rim, where the depth of a resized crop mixes part and background, is not read;
- the fit: least squares of depth on the `surface`'s terms, refitted `iterations` times on the
  pixels within 3 robust deviations (MAD) of the last fit. "plane": (1, x, y), for faces
  that are flat at the model's scale (the paper's spheres and cans, whose 8-bit depth on a
  fixed range barely curves); "quadric": (1, x, y, x², y², xy), for parts that show a curved
  face or two faces meeting at an edge (the paper's boxes seen at an angle), at the price of
  fitting away part of a wide, shallow dent;
- the score: the largest mean over a `window` x `window` box of the positive residual (behind
  the surface) inside the interior, in the model's depth units ([-1, 1] spans the 8-bit depth).

Depth is brighter farther away (`normalise_depth`), so "behind" is a positive residual. Parts
nearer the camera than the plane (a foreign body on top) are the search's job, not this one's.
Everything is numpy on one (4, S, S) model input: well under a millisecond, no graph and no
engine. `ReliefCheck` turns it into the part's image score beside the search's (the bundle's
"relief" block, written by `adgan export --relief` from the run's training parts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

DEPTH = 3  # the depth channel of a model input (R, G, B, depth)
# a pixel of a model input holds the part where its depth is above the background's -1
PART_LEVEL = -1.0 + 0.5 / 127.5


FIELDS = ("erode", "open_frac", "window", "iterations", "min_pixels", "surface")
# the fitted surface's terms in the interior's centred, size-normalised coordinates (u, v)
SURFACES = {
    "plane": lambda u, v: [np.ones_like(u), u, v],
    "quadric": lambda u, v: [np.ones_like(u), u, v, u * u, v * v, u * v],
}


@dataclass(frozen=True)
class Relief:
    """The relief check's parameters (the bundle manifest's "relief" block)."""
    erode: int = 2
    open_frac: float = 0.3
    window: int = 3
    iterations: int = 3
    min_pixels: int = 12  # fewer interior pixels: no fit, the score is 0
    surface: str = "plane"  # the smooth surface the depth is compared with: a key of SURFACES

    def __post_init__(self) -> None:
        for name in ("erode", "iterations"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"relief {name} must be an integer >= 0, got {v!r}")
        for name in ("window", "min_pixels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"relief {name} must be an integer >= 1, got {v!r}")
        if self.surface not in SURFACES:
            raise ValueError(f"relief surface must be one of {sorted(SURFACES)}, got {self.surface!r}")
        terms = self.terms
        if self.min_pixels < terms:
            raise ValueError(f"relief min_pixels must be at least {terms} (a {self.surface} has {terms} "
                             f"parameters), got {self.min_pixels}")
        if isinstance(self.open_frac, bool) or not isinstance(self.open_frac, (int, float)) \
                or not 0 <= self.open_frac < 1:
            raise ValueError(f"relief open_frac must be a number in [0, 1), got {self.open_frac!r}")

    @property
    def terms(self) -> int:
        """How many parameters the fitted surface has."""
        z = np.zeros(1)
        return len(SURFACES[self.surface](z, z))

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> "Relief":
        """The parameters of a manifest's relief block; one written before `surface` existed
        has a plane."""
        bad = set(d) - set(FIELDS)
        if bad:
            raise ValueError(f"unknown relief field(s) {sorted(bad)}")
        return cls(**d)


def robust_level(values) -> tuple[float, float]:
    """(median, 1.4826 * median absolute deviation): a normal sample's centre and spread."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) < 2 or not np.isfinite(v).all():
        raise ValueError(f"a reference needs at least two finite values, got {v.shape}")
    med = float(np.median(v))
    return med, 1.4826 * float(np.median(np.abs(v - med)))


def check_reference(check: str, levels, spreads) -> None:
    """Refuse a check's reference (from a manifest) unless its levels are finite numbers and its
    spreads finite and > 0."""
    vals = (*levels, *spreads)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in vals):
        raise ValueError(f"{check} reference must be finite numbers, got {vals}")
    if any(v <= 0 for v in spreads):
        raise ValueError(f"{check} reference spreads must be > 0")


# Floors of the reference spreads: the relief's is one step of the 8-bit depth (a reference of
# identical parts must not make one level read as many deviations), the search's a small
# fraction of its median.
RELIEF_SCALE_FLOOR = 1 / 127.5
# A relief map reaches the anomaly map's full scale this many reference spreads above the training
# parts' median peak (ReliefCheck.heat). Blocked CV, pixel AUROC on damaged parts: 0.5-3 spreads
# agree within 0.01 (bench/RESULTS.md, "The relief check per class").
HEAT_SPREADS = 2.0
SEARCH_SCALE_FLOOR = 0.01


@dataclass(frozen=True)
class ReliefCheck:
    """The relief check of a bundle: its parameters and the training parts' reference.

    A part's image score is the larger of the search's score and its relief expressed in the
    search's units: the relief's deviations from the training parts' median, in their spread,
    mapped onto the search scores' median and spread on the same parts,

        score = max(search, search_median + search_scale * (relief - relief_median) / relief_scale)

    so a part whose surface is as smooth as the training parts' keeps the search's score, and a
    dent as unusual (in deviations) as a badly drawn part scores as high. (agent/scoring/bump.py's
    BumpCheck is the same with its own parameters: `PARAMS`, `NAME`.)"""
    PARAMS: ClassVar[type] = Relief
    NAME: ClassVar[str] = "relief"
    params: Relief
    search_median: float
    search_scale: float
    relief_median: float
    relief_scale: float
    samples: int = 0
    frames: str = ""

    def __post_init__(self) -> None:
        check_reference(self.NAME, (self.search_median, self.relief_median), (self.search_scale, self.relief_scale))

    @classmethod
    def from_samples(cls, params: Relief, search_scores, reliefs, frames: str = "") -> "ReliefCheck":
        """The reference of training parts' search scores and reliefs (the same parts)."""
        sm, ss = robust_level(search_scores)
        rm, rs = robust_level(reliefs)
        return cls(params, sm, max(ss, SEARCH_SCALE_FLOOR * abs(sm), 1e-12), rm, max(rs, RELIEF_SCALE_FLOOR),
                   len(np.asarray(search_scores)), frames)

    def in_search_units(self, relief: float) -> float:
        return self.search_median + self.search_scale * (relief - self.relief_median) / self.relief_scale

    def score(self, search: float, relief: float) -> float:
        return max(search, self.in_search_units(relief))

    def decides(self, search: float, relief: float) -> bool:
        """Whether the relief, not the search, gives the part its score."""
        return self.in_search_units(relief) > search

    def heat(self, relief_map: np.ndarray) -> np.ndarray:
        """A relief map in the anomaly map's units, [0, 1]: 0 where the surface lies no farther
        behind its fit than the training parts' median peak does, 1 from HEAT_SPREADS of their
        spreads above it. Only unusual relief shows, and it shows as strongly as the generator's
        largest differences do: raw depth units (a dent of 20 levels is 0.16) would leave a dent
        under a new instance's residuals on the part."""
        m = np.asarray(relief_map, np.float32)
        return np.clip((m - self.relief_median) / (HEAT_SPREADS * self.relief_scale), 0.0, 1.0).astype(np.float32)

    def to_dict(self) -> dict:
        return {**self.params.to_dict(),
                "reference": {"search_median": self.search_median, "search_scale": self.search_scale,
                              "relief_median": self.relief_median, "relief_scale": self.relief_scale,
                              "samples": self.samples, "frames": self.frames}}

    @classmethod
    def from_dict(cls, d: dict) -> "ReliefCheck":
        if not isinstance(d, dict) or not isinstance(d.get("reference"), dict):
            raise ValueError(f"the {cls.NAME} block needs its parameters and a 'reference'")
        ref = dict(d["reference"])
        params = cls.PARAMS.from_dict({k: v for k, v in d.items() if k != "reference"})
        bad = set(ref) - {"search_median", "search_scale", "relief_median", "relief_scale", "samples", "frames"}
        if bad:
            raise ValueError(f"unknown {cls.NAME} reference field(s) {sorted(bad)}")
        return cls(params, **ref)


def interior(depth: np.ndarray, erode: int, open_frac: float = 0.0) -> np.ndarray:
    """The part's pixels at least `erode` pixels inside its outline (a (S, S) bool mask); with
    `open_frac`, the part is first opened by a disk of that fraction of its equivalent radius
    sqrt(area / pi), which removes what only touches it (a cable, a stand, a strip of table
    edge behind it: farther than the part, they would read as relief where they join it)."""
    part = (depth > PART_LEVEL).astype(np.uint8)
    if open_frac > 0 and part.any():
        r = int(round(open_frac * np.sqrt(part.sum() / np.pi)))
        if r > 0:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            part = cv2.morphologyEx(part, cv2.MORPH_OPEN, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if erode == 0:
        return part.astype(bool)
    k = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)
    return cv2.erode(part, k, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def robust_fit(a: np.ndarray, z: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares of z (N,) on the columns of a (N, T), refitted `iterations` times on the values
    within 3 robust deviations of the last fit: (coefficients, residuals z - a @ coef, the values
    kept for the last fit). With fewer than T values kept, the last fit stands (before any fit:
    coefficients 0, residuals from the median)."""
    keep = np.ones(len(z), bool)
    coef = np.zeros(a.shape[1])
    r = z - np.median(z)
    for _ in range(iterations + 1):
        if keep.sum() < a.shape[1]:
            break
        coef, *_ = np.linalg.lstsq(a[keep], z[keep], rcond=None)
        r = z - a @ coef
        mad = 1.4826 * float(np.median(np.abs(r[keep])))
        keep = np.abs(r) <= 3.0 * mad + 1e-6
    return coef, r, keep


def surface_residual(depth: np.ndarray, inside: np.ndarray, iterations: int, surface: str = "plane") -> np.ndarray:
    """(S, S): depth minus a robust `surface` (a key of SURFACES) fitted over `inside`; 0 outside it."""
    ys, xs = np.nonzero(inside)
    z = depth[inside].astype(np.float64)
    h, w = depth.shape
    a = np.stack(SURFACES[surface]((xs - w / 2) / w, (ys - h / 2) / h), axis=1)
    _, r, _ = robust_fit(a, z, iterations)
    out = np.zeros(depth.shape, np.float32)
    out[inside] = r
    return out


def relief_map(x: np.ndarray, p: Relief = Relief()) -> np.ndarray:
    """(S, S) float32: how far behind the part's fitted surface each interior pixel lies, box-averaged over
    the window (0 outside the interior and in front of the surface)."""
    if x.ndim != 3 or x.shape[0] <= DEPTH:
        raise ValueError(f"relief needs a (4, S, S) model input, got shape {x.shape}")
    depth = x[DEPTH]
    inside = interior(depth, p.erode, p.open_frac)
    if inside.sum() < p.min_pixels:
        return np.zeros(depth.shape, np.float32)
    behind = np.maximum(surface_residual(depth, inside, p.iterations, p.surface), 0.0)
    box = cv2.boxFilter(behind, -1, (p.window, p.window), normalize=True, borderType=cv2.BORDER_CONSTANT)
    return np.where(inside, box, 0.0).astype(np.float32)


def relief_score(x: np.ndarray, p: Relief = Relief()) -> float:
    """The largest window of relief_map: 0 for a part whose interior lies on its surface."""
    return float(relief_map(x, p).max())
