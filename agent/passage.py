"""When to inspect on a continuous stream: object passages (trigger mode `continuous`).

`continuous` mode sees every frame's segmented object area. An object is present when
the area reaches `min_area_px`. One passage gives one inspection: the object is scored
on the first frame after it has stayed `settle_frames` frames with its area changing by
less than `settle_tolerance` (it has stopped moving) and, given its masks, each overlapping
the one its still run began with by at least 1 - 2 x settle_tolerance (intersection over
union; 0.8 by default: a part sliding along at a constant area is not still; until
2026-12-06 it was, and was inspected while moving), and nothing more is scored until the
area has stayed below `min_area_px` for `clear_frames` frames (it has left). An object
that leaves before it settles is reported once, as an error, so no passage goes unseen.

Parts that follow each other without the view clearing between them (touching on a
conveyor, swapped by a robot or a hand that stays in view) were one passage until
2026-12-06: the first was inspected and the others went unseen, with no word. Given the
object masks and depth (`update(area, mask, depth)`), a passage also ends when under half
of the inspected part's own pixels still show it for `clear_frames` frames (it has left its
place, or a lower part stands there) while something stays in view; that something is then
a new passage. A pixel shows it while it is object and no farther than inspected (within
`FARTHER`): a hand over the part, or grasping it, is nearer and hides it; it does not end
it. Since a hand carrying the part away is such a something too, a passage begun this way
that leaves without settling is not an error (nor is it said: on a belt that never stops no
part is ever still; such a belt needs trigger mode gpio or mqtt). A part put down where the
inspected one stood, covering half of its place or more as high or higher, without the view
clearing (touching identical parts on an indexing belt), still cannot be told from it: such
stations inspect on request (trigger mode mqtt or gpio) or leave a gap between parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class Passage(Enum):
    NONE = "none"            # nothing to do for this frame
    SCORE = "score"          # a settled object: inspect this frame
    UNSETTLED = "unsettled"  # an object left without settling


@dataclass
class PassageTrigger:
    min_area_px: int = 1500
    settle_frames: int = 3
    settle_tolerance: float = 0.1
    clear_frames: int = 2
    LEFT_BELOW = 0.5   # under this fraction of the inspected part's pixels still showing it: it has left its place
    FARTHER = 0.02     # a pixel still shows the inspected part: object, no more than 2% farther than inspected

    def __post_init__(self) -> None:
        if self.min_area_px < 1 or self.settle_frames < 1 or self.clear_frames < 1:
            raise ValueError("min_area_px, settle_frames and clear_frames must be >= 1")
        if not 0 < self.settle_tolerance < 1:
            raise ValueError(f"settle_tolerance must be in (0, 1), got {self.settle_tolerance}")
        self.reset()

    def reset(self) -> None:
        self.present = False   # inside a passage
        self.scored = False    # this passage has been inspected
        self._stable = 0       # consecutive frames with a stable area
        self._absent = 0       # consecutive frames without an object
        self._last_area = 0
        self._footprint: tuple | None = None  # the inspected part's pixels (flat indices), mask shape, depth
        self._gone = 0         # consecutive frames with the inspected part gone from its place
        self.following = False  # this passage began as the last one's part left, the view not clearing
        self._anchor: np.ndarray | None = None     # the mask the still run began with, given masks

    def update(self, area: int, mask: np.ndarray | None = None, depth: np.ndarray | None = None) -> Passage:
        """What to do with a frame whose segmented object has `area` pixels; `mask` (that
        object, boolean HxW) and `depth` (the frame's, HxW), where given, also end a passage
        whose part has left its place."""
        if area < self.min_area_px:
            if not self.present:
                return Passage.NONE
            self._absent += 1
            if self._absent < self.clear_frames:
                return Passage.NONE  # a one-frame dropout does not end the passage
            unsettled = not self.scored and not self.following
            self.reset()
            return Passage.UNSETTLED if unsettled else Passage.NONE
        self._absent = 0
        if self.scored and mask is not None and self._footprint is not None and self._left(mask, depth):
            self.reset()  # the inspected part has left its place, and something else is in view
            self.following = True
        if not self.present:
            self.present, self._stable, self._last_area, self._anchor = True, 1, area, mask
        elif not self.scored:
            change = abs(area - self._last_area) / max(self._last_area, 1)
            if change <= self.settle_tolerance and self._holds_still(mask):
                self._stable += 1
            else:  # a new still run begins with this frame
                self._stable, self._anchor = 1, mask
            self._last_area = area
        if not self.scored and self._stable >= self.settle_frames:
            self.scored = True
            if mask is not None and mask.any():
                fp = np.flatnonzero(mask)
                d = depth.ravel()[fp].astype(np.float32) if depth is not None and depth.shape == mask.shape else None
                self._footprint = (fp, mask.shape, d)
            return Passage.SCORE
        return Passage.NONE

    def _left(self, mask: np.ndarray, depth: np.ndarray | None) -> bool:
        """Whether the inspected part has been gone from its place for clear_frames frames."""
        fp, shape, d0 = self._footprint
        kept = 0
        if mask.shape == shape:
            shows = mask.ravel()[fp]
            if d0 is not None and depth is not None and depth.shape == shape:
                shows &= depth.ravel()[fp] <= (1 + self.FARTHER) * d0
            kept = np.count_nonzero(shows)
        self._gone = self._gone + 1 if kept < self.LEFT_BELOW * len(fp) else 0
        return self._gone >= self.clear_frames

    def _holds_still(self, mask: np.ndarray | None) -> bool:
        """Given masks, whether `mask` still overlaps the one the still run began with (a part
        sliding along, or a hand carrying one away, keeps its area but moves)."""
        if mask is None:
            return True
        a = self._anchor
        return a is not None and a.shape == mask.shape and \
            np.count_nonzero(mask & a) >= (1 - 2 * self.settle_tolerance) * np.count_nonzero(mask | a)
