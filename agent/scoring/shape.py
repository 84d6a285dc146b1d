"""Surface shape: does the part's depth have the shape of the training parts' surfaces?

A generator trained on cans can draw a plain box seen face-on (a rectangle of one colour), so
the search scores some parts of other classes as low as the class's own new instances (issue
15: blocked CV, class swaps 0.62-0.66 for cans and boxes). What tells a can from a box or a ball
at the model's scale is the shape of the surface, not its colours: a can's side curves one way,
a ball's both ways, a box's faces are flat or meet at an edge. That needs no model either:

- read at one resolution (`size`, 32 px by default: the paper's parts span 14-27 source pixels),
  so that the pixels the interior's erosion counts mean the same at any model input size;
- interior: the part's pixels, opened and eroded as the relief check does
  (agent/scoring/relief.py `interior`), so the rim and what only touches the part are left out;
- normalised: pixel coordinates by the interior's own spread (the crop's size and the part's
  distance do not count), depth by its own spread (the per-image min-max depth has no scale);
- the fit: a robust quadric (1, u, v, u², v², uv), refitted on the pixels within 3 robust
  deviations, as the relief check's;
- the features (FEATURES): the two curvatures (eigenvalues of the quadric's Hessian, sorted, so a
  part turned on the table reads the same), the slope, how much of the depth the quadric explains,
  and the interior's aspect (x spread over y spread);
- the distance: the mean over the `k` nearest training parts' features, each feature
  standardised by the training parts' spread.

`ShapeCheck` holds the training parts' features (the bank, in the manifest's "shape" block,
written by `adgan export --shape`) and a reference for the distance: each training part's
distance to the parts of the other contiguous frame blocks (cross-fitted, so the reference is a
new instance's distance, not a near-duplicate's). A part's score is raised by as many of the
training parts' search-score spreads as its distance lies reference spreads above the reference
median: a part shaped like the training parts keeps its score. Numpy on one (4, S, S) input,
about a millisecond (1.1 ms at 64 px with 218 training parts, bench/RESULTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.scoring.relief import DEPTH, check_reference, interior, robust_fit, robust_level

FEATURES = ("curvature_min", "curvature_max", "slope", "explained", "aspect")
FIELDS = ("erode", "open_frac", "iterations", "min_pixels", "k", "size")
# Floor of the distance reference's spread: identical training parts must not make a small
# distance read as many spreads.
SHAPE_SCALE_FLOOR = 0.05


@dataclass(frozen=True)
class Shape:
    """The shape check's parameters (the bundle manifest's "shape" block)."""
    erode: int = 1
    open_frac: float = 0.3
    iterations: int = 2   # refits after the first, on the pixels within 3 robust deviations
    min_pixels: int = 12  # fewer interior pixels: no features, the check adds nothing
    k: int = 5            # nearest training parts averaged
    size: int = 32        # the depth is read at size x size (nearest), whatever the model's input size

    def __post_init__(self) -> None:
        for name, lo in (("erode", 0), ("iterations", 0), ("min_pixels", 6), ("k", 1), ("size", 8)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"shape {name} must be an integer >= {lo}, got {v!r}")
        if isinstance(self.open_frac, bool) or not isinstance(self.open_frac, (int, float)) \
                or not 0 <= self.open_frac < 1:
            raise ValueError(f"shape open_frac must be a number in [0, 1), got {self.open_frac!r}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in FIELDS}


def shape_features(x: np.ndarray, p: Shape = Shape()) -> np.ndarray | None:
    """(len(FEATURES),) float64 of a (4, S, S) model input, or None when its interior has fewer
    than `p.min_pixels` pixels or lies on one row or column."""
    if x.ndim != 3 or x.shape[0] <= DEPTH:
        raise ValueError(f"shape needs a (4, S, S) model input, got shape {x.shape}")
    depth = x[DEPTH]
    if depth.shape != (p.size, p.size):
        # erosion and opening count pixels: at one resolution, a 64 px input reads like a 32 px one
        depth = cv2.resize(depth, (p.size, p.size), interpolation=cv2.INTER_NEAREST)
    inside = interior(depth, p.erode, p.open_frac)
    ys, xs = np.nonzero(inside)
    if len(ys) < p.min_pixels:
        return None
    z = depth[inside].astype(np.float64)
    su, sv, sz = xs.std(), ys.std(), z.std()
    if su == 0 or sv == 0:
        return None
    # a face of one depth level is flat: all zero after centring, whatever its spread
    u, v, z = (xs - xs.mean()) / su, (ys - ys.mean()) / sv, (z - np.median(z)) / (sz if sz > 0 else 1.0)
    a = np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], axis=1)
    c, r, keep = robust_fit(a, z, p.iterations)
    if not keep.any():
        keep = np.ones(len(z), bool)
    hessian = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
    lo, hi = np.linalg.eigvalsh(hessian)
    return np.array([lo, hi, np.hypot(c[1], c[2]), 1.0 - float(np.mean(r[keep] ** 2)), su / sv])


def distances(query: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """(Q,) mean distance of each query's features (Q, F) to its k nearest in `bank` (N, F), each
    feature standardised by the bank's spread."""
    bank = np.asarray(bank, np.float64)
    sd = bank.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    q = (np.asarray(query, np.float64) - bank.mean(0)) / sd
    b = (bank - bank.mean(0)) / sd
    d = np.linalg.norm(q[:, None, :] - b[None, :, :], axis=-1)
    return np.sort(d, axis=1)[:, :min(k, len(bank))].mean(1)


def cross_fitted(features: np.ndarray, frames, k: int, blocks: int = 5) -> np.ndarray:
    """(N,) each training part's distance to the parts of the other `blocks` contiguous runs of
    frame numbers: a neighbouring frame is a near-duplicate, so the reference must come from
    parts the way a new instance meets them."""
    features = np.asarray(features, np.float64)
    order = np.argsort(np.asarray(frames), kind="stable")
    chunks = [c for c in np.array_split(order, min(blocks, len(order))) if len(c)]
    if len(chunks) < 2:
        raise ValueError(f"the shape reference needs at least 2 training parts, got {len(order)}")
    out = np.zeros(len(features))
    for c in chunks:
        rest = np.setdiff1d(order, c)
        out[c] = distances(features[c], features[rest], k)
    return out


@dataclass(frozen=True)
class ShapeCheck:
    """The shape check of a bundle: its parameters, the training parts' features and reference.

        score = base + search_scale * max(0, (distance - shape_median) / shape_scale)

    where base is the search's score (or the relief check's larger one) and search_scale the
    spread of the training parts' search scores: a part shaped like the training parts keeps its
    score, one shaped like nothing in training gains as many search spreads as its distance lies
    reference spreads above the reference median."""
    params: Shape
    bank: np.ndarray  # (N, len(FEATURES)) the training parts' features
    search_scale: float
    shape_median: float
    shape_scale: float
    samples: int = 0
    frames: str = ""

    def __post_init__(self) -> None:
        b = np.asarray(self.bank, np.float64)
        if b.ndim != 2 or b.shape[1] != len(FEATURES) or len(b) < 2 or not np.isfinite(b).all():
            raise ValueError(f"the shape bank must be finite (N >= 2, {len(FEATURES)}) features, got {b.shape}")
        object.__setattr__(self, "bank", b)
        check_reference("shape", (self.shape_median,), (self.search_scale, self.shape_scale))

    @classmethod
    def from_samples(cls, params: Shape, features: np.ndarray, frames, search_scores,
                     frame_range: str = "") -> "ShapeCheck":
        """The check from the training parts' features (N, F) with their frame numbers, and the
        search scores of (some of) the training parts."""
        from agent.scoring.relief import SEARCH_SCALE_FLOOR
        sm, ss = robust_level(search_scores)
        dm, ds = robust_level(cross_fitted(features, frames, params.k))
        return cls(params, np.asarray(features, np.float64), max(ss, SEARCH_SCALE_FLOOR * abs(sm), 1e-12),
                   dm, max(ds, SHAPE_SCALE_FLOOR), len(features), frame_range)

    def distance(self, x: np.ndarray) -> float | None:
        """The part's distance to the training parts' shapes; None when it has none to compare."""
        f = shape_features(x, self.params)
        return None if f is None else float(distances(f[None], self.bank, self.params.k)[0])

    def excess(self, distance: float | None) -> float:
        """What the shape adds to a score, in the search's units (0 for a usual shape)."""
        if distance is None:
            return 0.0
        return self.search_scale * max(0.0, (distance - self.shape_median) / self.shape_scale)

    def to_dict(self) -> dict:
        return {**self.params.to_dict(), "features": list(FEATURES),
                "bank": [[round(float(v), 6) for v in row] for row in self.bank],
                "reference": {"search_scale": self.search_scale, "shape_median": self.shape_median,
                              "shape_scale": self.shape_scale, "samples": self.samples, "frames": self.frames}}

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeCheck":
        if not isinstance(d, dict) or not isinstance(d.get("reference"), dict) or "bank" not in d:
            raise ValueError("the shape block needs its parameters, a 'bank' and a 'reference'")
        if d.get("features", list(FEATURES)) != list(FEATURES):
            raise ValueError(f"the shape block's features {d.get('features')} are not this version's {list(FEATURES)}")
        params = Shape(**{k: d[k] for k in FIELDS if k in d})
        bad = set(d) - set(FIELDS) - {"features", "bank", "reference"}
        if bad:
            raise ValueError(f"unknown shape field(s) {sorted(bad)}")
        ref = dict(d["reference"])
        bad = set(ref) - {"search_scale", "shape_median", "shape_scale", "samples", "frames"}
        if bad:
            raise ValueError(f"unknown shape reference field(s) {sorted(bad)}")
        return cls(params, np.asarray(d["bank"], np.float64), **ref)
