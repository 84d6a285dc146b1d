"""The class's appearance as a PCA of its training parts: the class check's model of a product.

The class check (agent/decide/class_check.py) asks whether another of the station's products
reproduces a part better than the expected one. With generators at k 0 it lifted the blocked-CV
worst fold of class swaps on cans and boxes but missed its confirmation on a second training seed
(bench/RESULTS.md, "Competing generators"); the same margin over per-class PCA reconstruction
errors did better in every class, and is the same on every training seed, because it has none
("A PCA class model in the bundle"). `adgan export` fits it on the run's training parts and
writes it into the bundle (`class_pca.npz`, the manifest's "class_pca" block):

- the model input (C x S x S in [-1, 1], as the search sees it), averaged over pool x pool
  pixels (POOL: 2, so 64 px parts are compared at 32 px, where the screen measured it);
- the training parts' mean and the first `components` principal axes (COMPONENTS: 16);
- a part's error: the mean square of its pooled input's residual off that affine subspace.

About 0.15 ms per part and class in numpy at 64 px (bench/class_check_cost.py: 0.46 ms for three classes).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

COMPONENTS = 16
POOL = 2
FILE = "class_pca.npz"


@dataclass(frozen=True)
class ClassPCA:
    """A class's PCA of pooled model inputs."""

    mean: np.ndarray   # (D,) float32, D = C * (S / pool) ** 2
    axes: np.ndarray   # (K, D) float32, orthonormal rows
    pool: int
    shape: tuple[int, int, int]  # the model input (C, S, S) it reads

    def __post_init__(self) -> None:
        c, h, w = self.shape
        p = self.pool
        if not isinstance(p, int) or isinstance(p, bool) or p < 1 or h % p or w % p:
            raise ValueError(f"the class PCA's pool {p!r} does not divide its input of {h} x {w} pixels")
        d = c * (h // p) * (w // p)
        if self.mean.shape != (d,) or self.axes.ndim != 2 or self.axes.shape[1] != d or not 0 < len(self.axes) < d:
            raise ValueError(f"the class PCA's mean {self.mean.shape} and axes {self.axes.shape} do not fit an "
                             f"input of {self.shape} pooled {p}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.axes).all()):
            raise ValueError("the class PCA holds non-finite numbers")

    @classmethod
    def fit(cls, x: np.ndarray, components: int = COMPONENTS, pool: int = POOL) -> "ClassPCA":
        """The PCA of model inputs x (N, C, S, S): at most N - 1 axes (fewer parts than
        `components` + 1 fit fewer)."""
        if x.ndim != 4 or len(x) < 2:
            raise ValueError(f"the class PCA needs at least 2 model inputs (N, C, S, S), got shape {x.shape}")
        if not isinstance(components, int) or isinstance(components, bool) or components < 1:
            raise ValueError(f"the class PCA's components must be a positive integer, got {components!r}")
        shape = tuple(int(v) for v in x.shape[1:])
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1 or shape[1] % pool or shape[2] % pool:
            raise ValueError(f"the class PCA's pool {pool!r} does not divide its input of {shape[1]} x {shape[2]} "
                             "pixels")
        flat = pooled(x.astype(np.float64), pool)
        mean = flat.mean(0)
        axes = np.linalg.svd(flat - mean, full_matrices=False)[2][: min(components, len(x) - 1, flat.shape[1] - 1)]
        return cls(mean.astype(np.float32), np.ascontiguousarray(axes, np.float32), pool, shape)

    def error(self, x: np.ndarray) -> float:
        """The mean squared residual of model input x (C, S, S) off the class's subspace."""
        if tuple(x.shape) != self.shape:
            raise ValueError(f"the class PCA reads inputs of shape {self.shape}, got {tuple(x.shape)}")
        r = pooled(x[None].astype(np.float32), self.pool)[0] - self.mean
        r = r - (self.axes @ r) @ self.axes
        return float(np.mean(r * r))

    def info(self, samples: int, frames: str) -> dict:
        """The manifest's "class_pca" block."""
        return {"file": FILE, "components": int(len(self.axes)), "pool": self.pool, "samples": int(samples),
                "frames": frames}

    def save(self, folder: Path) -> None:
        np.savez(Path(folder) / FILE, mean=self.mean, axes=self.axes, pool=np.int64(self.pool),
                 shape=np.asarray(self.shape, np.int64))

    @classmethod
    def load(cls, folder: Path, block: dict, shape: tuple[int, int, int]) -> "ClassPCA":
        """The bundle's class PCA (its hash already checked); ValueError where it does not fit the
        manifest's block or the bundle's model input."""
        if not isinstance(block, dict) or block.get("file") != FILE:
            raise ValueError(f"'class_pca' must name {FILE}, got {block!r}")
        with np.load(Path(folder) / FILE, allow_pickle=False) as z:
            got = cls(z["mean"].astype(np.float32), z["axes"].astype(np.float32), int(z["pool"]),
                      tuple(int(v) for v in z["shape"]))
        if got.shape != tuple(shape) or got.pool != block.get("pool") or len(got.axes) != block.get("components"):
            raise ValueError(f"{FILE} (input {got.shape}, pool {got.pool}, {len(got.axes)} axes) does not fit the "
                             f"manifest's {block} for the bundle's input {tuple(shape)}")
        return got


def pooled(x: np.ndarray, pool: int) -> np.ndarray:
    """Model inputs (N, C, S, S) averaged over pool x pool pixels, flattened to (N, D)."""
    n, c, h, w = x.shape
    if pool > 1:
        x = x.reshape(n, c, h // pool, pool, w // pool, pool).mean((3, 5))
    return x.reshape(n, -1)
