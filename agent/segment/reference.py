"""The empty-surface reference: per-pixel median of empty-scene frames, or a fitted plane."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from agent import durable
from agent.frame import Intrinsics, RGBDFrame

REFERENCE_FORMAT = 1


@dataclass(frozen=True, eq=False)
class SurfaceReference:
    """Expected depth (uint16 mm, 0 = unknown) of the empty station, per pixel."""

    depth: np.ndarray
    intrinsics: Intrinsics
    n_frames: int
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.depth.dtype != np.uint16 or self.depth.ndim != 2:
            raise ValueError(f"reference depth must be uint16 HxW, got {self.depth.dtype} {self.depth.shape}")
        if (self.intrinsics.height, self.intrinsics.width) != self.depth.shape:
            raise ValueError("reference intrinsics do not match its depth map size")

    @classmethod
    def from_frames(cls, frames: Iterable[RGBDFrame], fill_holes: bool = True,
                    max_depth_mm: int = 700) -> "SurfaceReference":
        """Per-pixel median of the valid (non-zero) depths of empty-scene frames.

        Pixels never measured are filled from the fitted table plane where it lies within
        `max_depth_mm` (so speckle holes in the reference do not become 'object').
        """
        stack, intr = [], None
        for f in frames:
            if intr is None:
                intr = f.intrinsics
            elif f.intrinsics != intr:
                raise ValueError("reference frames come from cameras with different intrinsics")
            stack.append(f.depth)
        if not stack:
            raise ValueError("a surface reference needs at least one empty-scene frame")
        d = np.stack(stack).astype(np.float32)  # (N, H, W)
        d[d == 0] = np.nan
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
                med = np.nanmedian(d, axis=0)
        holes = ~np.isfinite(med)
        med = np.where(holes, 0, np.rint(med)).astype(np.uint16)
        if fill_holes and holes.any() and (~holes).sum() >= 3:
            plane, _ = fit_table_plane(med, intr, max_depth_mm)
            fill = plane_depth_map(plane, intr)
            fill = np.where((fill > 0) & (fill <= max_depth_mm), fill, 0)
            med[holes] = np.rint(fill[holes]).astype(np.uint16)
        return cls(depth=med, intrinsics=intr, n_frames=len(stack))

    def save(self, path: str | Path) -> None:
        meta = {"format": REFERENCE_FORMAT, "n_frames": self.n_frames, "created": self.created,
                "intrinsics": self.intrinsics.to_dict()}
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, depth=self.depth, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        durable.write_with(path, write)

    @classmethod
    def load(cls, path: str | Path) -> "SurfaceReference":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"surface reference {path} does not exist "
                                    "(record one with 'adgan agent capture-reference' or 'adgan dataset reference')")
        try:
            with np.load(path, allow_pickle=False) as z:
                depth = z["depth"]
                meta = json.loads(bytes(z["meta"]).decode())
        except PermissionError as e:  # (not "not a reference file": one left by a command run with sudo)
            raise PermissionError(e.errno, durable.permission_words(e)) from None
        except Exception as e:  # zip, key or JSON errors all mean the same to the user
            raise ValueError(f"{path} is not a surface reference file: {e}") from e
        if meta.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"{path}: unsupported reference format {meta.get('format')!r}")
        return cls(depth=depth, intrinsics=Intrinsics.from_dict(meta["intrinsics"]),
                   n_frames=int(meta["n_frames"]), created=float(meta["created"]))


def backproject(depth: np.ndarray, intr: Intrinsics, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """3D points (N, 3) in camera coordinates (mm) of the pixels sampled every `stride`."""
    v, u = np.mgrid[0:depth.shape[0]:stride, 0:depth.shape[1]:stride]
    z = depth[::stride, ::stride].astype(np.float64)
    x = (u - intr.cx) / intr.fx * z
    y = (v - intr.cy) / intr.fy * z
    return np.stack([x, y, z], axis=-1).reshape(-1, 3), z.reshape(-1)


def fit_table_plane(depth: np.ndarray, intr: Intrinsics, max_depth_mm: int = 700,
                    iterations: int = 200, seed: int = 0) -> tuple[np.ndarray, float]:
    """RANSAC fit of the dominant plane among valid pixels within `max_depth_mm`.

    Returns (plane [nx, ny, nz, d] with n.p + d = 0, |n| = 1, and the inlier fraction).
    """
    pts, z = backproject(depth, intr, stride=4)
    ok = (z > 0) & (z <= max_depth_mm)
    pts = pts[ok]
    if len(pts) < 3:
        raise ValueError("cannot fit a table plane: fewer than 3 valid depth pixels within "
                         f"{max_depth_mm} mm")
    rng = np.random.default_rng(seed)
    sample = pts[rng.choice(len(pts), size=min(len(pts), 4000), replace=False)]
    tri = sample[rng.integers(0, len(sample), size=(iterations, 3))]  # (I, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1)
    good = norm > 1e-9
    if not good.any():
        raise ValueError("cannot fit a table plane: the valid depth pixels are collinear")
    n = n[good] / norm[good, None]
    d = -np.einsum("ij,ij->i", n, tri[good, 0])
    # Inlier band grows with depth like the sensor noise: 1% of depth, at least 3 mm.
    tol = np.maximum(3.0, 0.01 * sample[:, 2])
    dist = np.abs(sample @ n.T + d)  # (S, I)
    best = int(np.argmax((dist < tol[:, None]).sum(0)))
    inl = np.abs(pts @ n[best] + d[best]) < np.maximum(3.0, 0.01 * pts[:, 2])
    # Least-squares refinement on all inliers.
    c = pts[inl].mean(0)
    _, _, vt = np.linalg.svd(pts[inl] - c, full_matrices=False)
    nr = vt[2] if vt[2][2] < 0 else -vt[2]  # normal facing the camera
    plane = np.array([*nr, -nr @ c])
    return plane, float(inl.mean())


def plane_depth_map(plane: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """Depth (mm, float32) at which each pixel's ray meets the plane; 0 where it never does."""
    v, u = np.mgrid[0:intr.height, 0:intr.width]
    rx = (u - intr.cx) / intr.fx
    ry = (v - intr.cy) / intr.fy
    denom = plane[0] * rx + plane[1] * ry + plane[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = -plane[3] / denom
    return np.where(np.isfinite(z) & (z > 0), z, 0).astype(np.float32)
