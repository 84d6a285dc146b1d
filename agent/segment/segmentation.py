"""Separate the object from table and background by depth, as the paper does.

A pixel is
- invalid when its depth is 0 (the camera had no measurement),
- background when its depth is over `max_depth_mm`,
- the empty surface when |d - d_ref| < tolerance * max(d, d_ref), d_ref being the
  empty-scene reference depth at that pixel,
- the object otherwise (inside the region of interest).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from agent.frame import Intrinsics, RGBDFrame
from agent.segment.reference import SurfaceReference, fit_table_plane, plane_depth_map

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationConfig:
    """Station-side segmentation parameters (the paper's values by default)."""

    max_depth_mm: int = 700
    surface_tolerance: float = 0.1
    # (x, y, w, h) in frame pixels; None means the whole frame.
    roi: tuple[int, int, int, int] | None = None
    # Morphological opening radius in pixels to drop speckle; 0 keeps the paper's raw mask.
    opening_px: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.max_depth_mm <= 65535:
            raise ValueError(f"max_depth_mm must be in 1..65535, got {self.max_depth_mm}")
        if not 0 < self.surface_tolerance < 1:
            raise ValueError(f"surface_tolerance must be in (0, 1), got {self.surface_tolerance}")
        if self.opening_px < 0:
            raise ValueError(f"opening_px must be >= 0, got {self.opening_px}")
        if self.roi is not None:
            x, y, w, h = self.roi
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"roi must be (x>=0, y>=0, w>0, h>0), got {self.roi}")


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Boolean HxW masks; exactly one of them is true at every pixel."""

    object: np.ndarray
    surface: np.ndarray
    background: np.ndarray
    invalid: np.ndarray

    @property
    def object_area(self) -> int:
        return int(np.count_nonzero(self.object))


def segment_depth(depth: np.ndarray, reference_depth: np.ndarray | None,
                  cfg: SegmentationConfig) -> Segmentation:
    """Classify every pixel of a uint16 millimetre depth map against a reference depth map.

    `reference_depth` is the expected empty-surface depth (mm, any numeric dtype, 0 or
    non-finite where unknown); None means there is no surface to remove.
    """
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise ValueError(f"depth must be uint16 HxW (millimetres), got {depth.dtype} {depth.shape}")
    invalid = depth == 0
    background = depth > cfg.max_depth_mm
    candidate = ~(invalid | background)
    if reference_depth is not None:
        if reference_depth.shape != depth.shape:
            raise ValueError(f"frame {depth.shape[1]}x{depth.shape[0]} does not match the surface "
                             f"reference {reference_depth.shape[1]}x{reference_depth.shape[0]}")
        d = depth.astype(np.float32)
        ref = np.nan_to_num(reference_depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        # A reference of 0 means "unknown": never surface there (the paper's rule gives the same).
        surface = candidate & (np.abs(d - ref) < cfg.surface_tolerance * np.maximum(d, ref)) & (ref > 0)
    else:
        surface = np.zeros_like(candidate)
    obj = candidate & ~surface
    if cfg.roi is not None:
        x, y, w, h = cfg.roi
        inside = np.zeros_like(obj)
        inside[y:y + h, x:x + w] = True
        obj &= inside
    if cfg.opening_px > 0:
        k = 2 * cfg.opening_px + 1
        opened = cv2.morphologyEx(obj.view(np.uint8), cv2.MORPH_OPEN,
                                  cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).view(bool)
        # Pixels removed by the opening are speckle on the surface, not background.
        surface = surface | (obj & ~opened)
        obj = opened
    return Segmentation(object=obj, surface=surface, background=background, invalid=invalid)


class Segmenter:
    """Segments frames of one station: against a stored reference, or a fitted table plane.

    Without a reference the first frame's dominant plane (RANSAC) stands in for the
    empty surface; that is logged, since a plane misses anything that is not flat.
    """

    def __init__(self, cfg: SegmentationConfig, reference: SurfaceReference | None = None,
                 seed: int = 0) -> None:
        self.cfg = cfg
        self.reference = reference
        self._seed = seed
        self._plane_ref: np.ndarray | None = None
        self._plane_key: Intrinsics | None = None

    def reference_depth(self, frame: RGBDFrame) -> np.ndarray:
        if self.reference is not None:
            return self.reference.depth
        if self._plane_ref is None or self._plane_key != frame.intrinsics:
            plane, inliers = fit_table_plane(frame.depth, frame.intrinsics,
                                             self.cfg.max_depth_mm, seed=self._seed)
            log.warning("no surface reference: fitted the table plane by RANSAC instead "
                        "(normal %s, offset %.1f mm, %.0f%% of valid pixels are inliers); "
                        "capture a reference for reliable surface removal",
                        np.round(plane[:3], 3).tolist(), plane[3], 100 * inliers)
            self._plane_ref = plane_depth_map(plane, frame.intrinsics)
            self._plane_key = frame.intrinsics
        return self._plane_ref

    def __call__(self, frame: RGBDFrame) -> Segmentation:
        return segment_depth(frame.depth, self.reference_depth(frame), self.cfg)


def standing_on(ref: SurfaceReference, cfg: SegmentationConfig, min_area_px: int) -> list[tuple[int, ...]]:
    """What stands out of a surface reference's own table plane, as the plane fit segments it: each
    region of at least `min_area_px` pixels as (x, y, w, h, area). A part left on the table while
    the reference was recorded is one (its pixels then count as surface, so a part placed there
    later is not seen); so is a fixture, which may stay. [] when no plane can be fitted."""
    try:
        plane, _ = fit_table_plane(ref.depth, ref.intrinsics, cfg.max_depth_mm)
    except ValueError:
        return []
    obj = segment_depth(ref.depth, plane_depth_map(plane, ref.intrinsics), cfg).object
    n, _, stats, _ = cv2.connectedComponentsWithStats(obj.view(np.uint8), connectivity=8)
    return [tuple(int(v) for v in stats[i, :5]) for i in range(1, n) if stats[i, 4] >= min_area_px]


def standing_words(regions: list[tuple[int, ...]]) -> str:
    """One line about `standing_on`'s regions."""
    where = "; ".join(f"{a} pixels at x {x}, y {y} ({w}x{h})" for x, y, w, h, a in regions[:3])
    return (f"something stands on the recorded surface ({where}{'; ...' if len(regions) > 3 else ''}): a part "
            "left there hides the parts placed on that spot later (their pixels count as surface); take it "
            "away and record the reference again ('adgan agent capture-reference'). A fixture may stay.")
