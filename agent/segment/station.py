"""The station's segmentation: the configured surface reference (reloaded when the file
changes, so `adgan agent capture-reference` takes effect without a restart), sanity checks
on each frame, and the object mask. Every problem with a frame is a `FrameError`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from agent.frame import FrameError, RGBDFrame
from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import Segmentation, SegmentationConfig, Segmenter

log = logging.getLogger(__name__)


class StationSegmenter:
    def __init__(self, cfg: SegmentationConfig, reference: str | Path | None = None,
                 min_valid_fraction: float = 0.05) -> None:
        self.cfg = cfg
        self.reference_path = Path(reference) if reference else None
        self.min_valid_fraction = min_valid_fraction
        self._segmenter = Segmenter(cfg, None)
        self._ref_stamp: tuple[int, int] | None = None
        self._roi_warned: tuple[int, int] | None = None

    @classmethod
    def from_settings(cls, seg) -> "StationSegmenter":
        """The station's segmenter from its `segmentation` settings."""
        return cls(SegmentationConfig(seg.max_depth_mm, seg.surface_tolerance, seg.roi, seg.opening_px),
                   seg.reference)

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

    def _check_roi(self, shape: tuple[int, ...]) -> None:
        """The region of interest against this frame: outside it, no part could be seen (a camera
        set to another resolution than the one the region was drawn on); partly outside, said once."""
        x, y, w, h = self.cfg.roi
        fh, fw = shape[:2]
        if x >= fw or y >= fh:
            raise FrameError(f"segmentation.roi {[x, y, w, h]} lies outside the {fw}x{fh} frame: no part can be "
                             "seen; draw it again on this camera's frames")
        if (x + w > fw or y + h > fh) and self._roi_warned != (fw, fh):
            self._roi_warned = (fw, fh)
            log.warning("segmentation.roi %s reaches past the %dx%d frame: only %dx%d pixels of it are inspected",
                        [x, y, w, h], fw, fh, min(w, fw - x), min(h, fh - y))

    def __call__(self, frame: RGBDFrame) -> Segmentation:
        if self.cfg.roi is not None:
            self._check_roi(frame.depth.shape)
        valid = float(np.count_nonzero(frame.depth)) / frame.depth.size
        if valid < self.min_valid_fraction:
            raise FrameError(f"only {100 * valid:.1f}% of the depth pixels hold a measurement: "
                             "the camera is blocked, too close, or its depth stream failed")
        if self.reference_path is not None:
            self._refresh_reference()
        try:
            return self._segmenter(frame)
        except ValueError as e:
            raise FrameError(str(e)) from None
