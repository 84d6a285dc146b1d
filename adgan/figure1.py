"""The paper's Figure 1 for one raw frame: original, background removed, surface removed
(`adgan dataset segment-preview`, and the demo's report)."""
from __future__ import annotations

import numpy as np

from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import SegmentationConfig, Segmenter, segment_depth
from agent.visual import depth_view, label


def segmentation_steps(frame, reference: SurfaceReference | None, cfg: SegmentationConfig) -> np.ndarray:
    """The paper's Figure 1: original, background removed, surface removed; RGB above depth."""
    ref_depth = reference.depth if reference is not None else Segmenter(cfg).reference_depth(frame)
    seg = segment_depth(frame.depth, ref_depth, cfg)
    no_bg = ~(seg.background | seg.invalid)
    lo, hi = 0.0, float(cfg.max_depth_mm)
    cols = []
    for title, keep in (("original", np.ones_like(no_bg)), ("background removed", no_bg),
                        ("surface removed", seg.object)):
        rgb = np.where(keep[..., None], frame.rgb, 0).astype(np.uint8)
        dep = depth_view(np.where(keep, frame.depth, 0), lo, hi)
        cols.append(label(np.vstack([rgb, dep]), title, scale=1.0))
    img = np.hstack([np.pad(c, ((0, 0), (0, 4), (0, 0))) for c in cols])
    return label(img, f"object {seg.object_area} px, max depth {cfg.max_depth_mm} mm, "
                      f"surface tolerance {cfg.surface_tolerance:.0%}", scale=1.0)
