"""The station's segmentation: the configured surface reference (reloaded when the file
changes, so `adgan agent capture-reference` takes effect without a restart), sanity checks
on each frame, and the object mask. Every problem with a frame is a `FrameError`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from agent.frame import FrameError, RGBDFrame
from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import Segmentation, SegmentationConfig, Segmenter, standing_on, standing_words

log = logging.getLogger(__name__)

MIN_SURFACE_SEEN = 0.2  # of the recorded surface's pixels measured in a frame, seen as surface there
MIN_SURFACE_VIEW = 0.3  # ... checked where that surface is at least this much of the frame (a table, not a stand)


def cut_off(obj: np.ndarray, roi: tuple[int, int, int, int] | None, roi_name: str = "segmentation.roi") -> str | None:
    """Why the part to inspect (`obj`, its mask) is not wholly in view (None: it is): it reaches an
    edge of the view (the frame's, or `roi`'s within it, said as `roi_name`), so the model would
    judge a part cut off there: one stopped short of its place, or pushed aside; or something
    besides it stands out of the surface there (a fixture, a wall: not in the surface reference).
    Specks of depth noise at an edge do not count: only regions of at least a tenth of the largest."""
    fh, fw = obj.shape
    x, y, w, h = roi if roi is not None else (0, 0, fw, fh)
    x1, y1 = min(x + w, fw) - 1, min(y + h, fh) - 1
    if not (obj[y, x:x1 + 1].any() or obj[y1, x:x1 + 1].any() or obj[y:y1 + 1, x].any() or obj[y:y1 + 1, x1].any()):
        return None  # (most frames: nothing on an edge, and no need to find regions)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(obj.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= 0.1 * stats[1:, cv2.CC_STAT_AREA].max()
    keep[0] = False  # (label 0: all that is not object)
    edges = {"top": labels[y, x:x1 + 1], "bottom": labels[y1, x:x1 + 1], "left": labels[y:y1 + 1, x],
             "right": labels[y:y1 + 1, x1]}
    reached = [side for side, line in edges.items() if keep[line].any()]
    if not reached:
        return None
    view = roi_name if roi is not None else "the frame"
    return (f"the part reaches the {' and '.join(reached)} edge of the view ({view}): it is not wholly seen, so it is "
            "not judged. A part stopped short of its place, or pushed aside; or something besides it stands out of "
            "the surface there (record the surface reference again: 'adgan agent capture-reference')")


class StationSegmenter:
    def __init__(self, cfg: SegmentationConfig, reference: str | Path | None = None,
                 min_valid_fraction: float = 0.05, min_area_px: int = 0) -> None:
        self.cfg = cfg
        self.min_area_px = min_area_px  # the trigger's: a frame (or region) smaller cannot show a part
        self.reference_path = Path(reference) if reference else None
        self.min_valid_fraction = min_valid_fraction
        self._segmenter = Segmenter(cfg, None)
        self._ref_stamp: tuple[int, int] | None = None
        self._roi_warned: tuple[int, int] | None = None
        self._surface_of: np.ndarray | None = None  # the reference depth _surface was made from
        self._surface: np.ndarray | None = None     # where it is a known surface within max_depth_mm

    @classmethod
    def from_settings(cls, seg, min_area_px: int = 0) -> "StationSegmenter":
        """The station's segmenter from its `segmentation` settings (and trigger.min_area_px)."""
        return cls(SegmentationConfig(seg.max_depth_mm, seg.surface_tolerance, seg.roi, seg.opening_px),
                   seg.reference, min_area_px=min_area_px)

    def _refresh_reference(self) -> None:
        p = self.reference_path
        try:
            st = p.stat()
        except FileNotFoundError:
            self._ref_stamp, self._segmenter = None, Segmenter(self.cfg, None)
            raise FrameError(f"surface reference {p} is missing: record it with 'adgan agent capture-reference'") \
                from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._ref_stamp:
            return
        try:
            ref = SurfaceReference.load(p)
        except (OSError, ValueError, KeyError) as e:
            self._ref_stamp = None
            raise FrameError(f"surface reference {p} cannot be read: {e}") from None
        self._segmenter, self._ref_stamp = Segmenter(self.cfg, ref), stamp
        log.info("surface reference %s loaded (%dx%d)", p, ref.depth.shape[1], ref.depth.shape[0])
        standing = standing_on(ref, self.cfg, self.min_area_px) if self.min_area_px else []
        if standing:
            log.warning("surface reference %s: %s", p, standing_words(standing))

    def _check_view(self, shape: tuple[int, ...]) -> None:
        """What this frame lets a part show: outside the region of interest no part could be seen (a
        camera set to another resolution than the one the region was drawn on), and a view smaller
        than trigger.min_area_px could never hold one that counts; a region partly outside is said once."""
        fh, fw = shape[:2]
        x, y, w, h = self.cfg.roi if self.cfg.roi is not None else (0, 0, fw, fh)
        if x >= fw or y >= fh:
            raise FrameError(f"segmentation.roi {[x, y, w, h]} lies outside the {fw}x{fh} frame: no part can be "
                             "seen; draw it again on this camera's frames")
        vw, vh = min(w, fw - x), min(h, fh - y)
        if (vw, vh) != (w, h) and self._roi_warned != (fw, fh):
            self._roi_warned = (fw, fh)
            log.warning("segmentation.roi %s reaches past the %dx%d frame: only %dx%d pixels of it are inspected",
                        [x, y, w, h], fw, fh, vw, vh)
        if vw * vh < self.min_area_px:
            where = f"the {fw}x{fh} frame"
            if self.cfg.roi is not None:
                where = f"segmentation.roi {[x, y, w, h]} in {where}"
            raise FrameError(f"trigger.min_area_px ({self.min_area_px}) is more than the {vw * vh} pixels of {where}: "
                             "no part could count as present")

    def __call__(self, frame: RGBDFrame) -> Segmentation:
        self._check_view(frame.depth.shape)
        valid = float(np.count_nonzero(frame.depth)) / frame.depth.size
        if valid < self.min_valid_fraction:
            # (the threshold, not the fraction: in continuous mode an error that repeats the last one is
            # counted, not sent, and a blocked camera's fraction differs in every frame: 30 events a second)
            raise FrameError(f"under {100 * self.min_valid_fraction:g}% of the depth pixels hold a measurement: "
                             "the camera is blocked, too close, or its depth stream failed")
        if self.reference_path is not None:
            self._refresh_reference()
        try:
            seg = self._segmenter(frame)
        except ValueError as e:
            raise FrameError(str(e)) from None
        self._check_surface(frame, seg)
        return seg

    def cut_off(self, seg: Segmentation) -> str | None:
        """`cut_off` of this frame's part, in this station's view."""
        return cut_off(seg.object, self.cfg.roi)

    def _check_surface(self, frame: RGBDFrame, seg: Segmentation) -> None:
        """The surface must still be where it was recorded (or fitted). A camera bumped or a table
        moved makes most of the view differ from it: one 'object' over most of the frame, present
        for good, so after one inspection of it a station in continuous mode inspects nothing more,
        without a word. No part covers most of a view that must show the table around it."""
        ref = self._segmenter.reference_depth(frame)
        if self._surface_of is not ref:  # (once per reference, not per frame)
            self._surface_of, self._surface = ref, (ref > 0) & (ref <= self.cfg.max_depth_mm)
        known = self._surface & (frame.depth > 0)
        n = int(np.count_nonzero(known))
        if n < MIN_SURFACE_VIEW * known.size:  # a small stand, or a surface beyond max_depth_mm: a part may
            return                               # cover most of it, and nothing tells that from a moved camera
        if np.count_nonzero(seg.surface & known) < MIN_SURFACE_SEEN * n:
            if self.reference_path is not None:
                what, fix = f"reference {self.reference_path}", "record the reference again"
            else:
                what, fix = "plane fitted at the first frame", "restart the agent, or record a reference"
            raise FrameError(f"the view no longer matches the surface {what}: under {100 * MIN_SURFACE_SEEN:.0f}% "
                             f"of it is where it was. Has the camera or the table moved? Then {fix} "
                             "('adgan agent capture-reference')")
