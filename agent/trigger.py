"""When to inspect: object passages on a continuous stream, or commands over MQTT.

`continuous` mode sees every frame's segmented object area. An object is present when
the area reaches `min_area_px`. One passage gives one inspection: the object is scored
on the first frame after it has stayed `settle_frames` frames with its area changing by
less than `settle_tolerance` (it has stopped moving), and nothing more is scored until the
area has stayed below `min_area_px` for `clear_frames` frames (it has left). An object
that leaves before it settles is reported once, as an error, so no passage goes unseen.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum


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

    def update(self, area: int) -> Passage:
        if area < self.min_area_px:
            if not self.present:
                return Passage.NONE
            self._absent += 1
            if self._absent < self.clear_frames:
                return Passage.NONE  # a one-frame dropout does not end the passage
            unsettled = not self.scored
            self.reset()
            return Passage.UNSETTLED if unsettled else Passage.NONE
        self._absent = 0
        if not self.present:
            self.present, self._stable, self._last_area = True, 1, area
        else:
            change = abs(area - self._last_area) / max(self._last_area, 1)
            self._stable = self._stable + 1 if change <= self.settle_tolerance else 1
            self._last_area = area
        if not self.scored and self._stable >= self.settle_frames:
            self.scored = True
            return Passage.SCORE
        return Passage.NONE


class CommandTrigger:
    """Inspections requested over MQTT (`.../trigger/set`), counted, thread-safe. At most
    `max_pending` wait at a time: more requests in a burst are coalesced into those."""

    def __init__(self, max_pending: int = 1) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._pending = 0

    def request(self) -> bool:
        """Ask for one inspection; False when max_pending already wait (the request is coalesced)."""
        with self._cond:
            if self._pending >= self.max_pending:
                return False
            self._pending += 1
            self._cond.notify_all()
            return True

    def take(self, timeout: float) -> bool:
        """Wait up to `timeout` s for a request; True (and one request consumed) if there was one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending > 0, timeout):
                return False
            self._pending -= 1
            return True

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending
