"""Synthetic inspection scenes as a frame source: parts of the synthetic station
(synthetic_station.py) passing one at a time, with empty-table gaps, for tests and demos."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from agent.frame import RGBDFrame
from agent.sources.base import FrameSource
from agent.sources.synthetic_station import CLASSES, DEFECTS, VARIETIES, SyntheticStation

__all__ = ["CLASSES", "DEFECTS", "VARIETIES", "SyntheticSource", "SyntheticStation"]


class SyntheticSource(FrameSource):
    """An endless (or `count`-long) stream of synthetic frames from one station.

    Part p is drawn from seed (seed, p): class uniformly from `classes`, a defect with
    probability `defect_rate`, an empty table with probability `empty_rate`. Each part
    stays on the table for `frames_per_part` frames, followed by `gap_frames` frames of
    the empty table, like parts passing a station (the defaults, 1 and 0, give one new
    part every frame). `variety` says what a class's parts are (synthetic_station.py): new
    products of its shape ("family") or the station's one product, made to a tolerance
    ("product").
    """

    segmented = False
    live = True

    def __init__(self, classes: Sequence[str] = CLASSES, seed: int = 0, count: int | None = None,
                 width: int = 640, height: int = 480, defects: Sequence[str] = (),
                 defect_rate: float = 0.0, empty_rate: float = 0.0, fps: float = 30.0,
                 station: SyntheticStation | None = None, frames_per_part: int = 1, gap_frames: int = 0,
                 variety: str = "family") -> None:
        for c in classes:
            if c not in CLASSES:
                raise ValueError(f"unknown synthetic class {c!r}; choose from {', '.join(CLASSES)}")
        for d in defects:
            if d not in DEFECTS:
                raise ValueError(f"unknown defect {d!r}; choose from {', '.join(DEFECTS)}")
        if not classes:
            raise ValueError("need at least one class")
        if defect_rate > 0 and not defects:
            raise ValueError("defect_rate > 0 needs at least one defect kind")
        if not (0 <= defect_rate <= 1 and 0 <= empty_rate <= 1):
            raise ValueError("defect_rate and empty_rate must be within [0, 1]")
        if frames_per_part < 1 or gap_frames < 0:
            raise ValueError(f"need frames_per_part >= 1 and gap_frames >= 0, got {frames_per_part}, {gap_frames}")
        self.frames_per_part, self.gap_frames = frames_per_part, gap_frames
        self._held: tuple[int, RGBDFrame] | None = None
        self.classes, self.defects = tuple(classes), tuple(defects)
        self.defect_rate, self.empty_rate = defect_rate, empty_rate
        self.seed, self.count, self.fps = seed, count, fps
        self.station = station or SyntheticStation(width, height, seed, variety)
        self._i = 0

    def frame(self, i: int) -> RGBDFrame:
        """Frame number i of this stream (the same every time)."""
        part_no, phase = divmod(i, self.frames_per_part + self.gap_frames)
        ts = i / self.fps
        if phase >= self.frames_per_part:  # the gap between two parts
            f = self.station.render(np.random.default_rng([self.seed, 3, i]), None, timestamp=ts)
            f.meta.update(frame=i, part=None)
            return f
        if self._held is not None and self._held[0] == part_no:
            # The same part standing still renders to the same image (frame i depends only on
            # the part): reuse it instead of rendering it again.
            f0 = self._held[1]
            return RGBDFrame(rgb=f0.rgb, depth=f0.depth, timestamp=ts, intrinsics=f0.intrinsics,
                             meta={**f0.meta, "frame": i})
        rng = np.random.default_rng([self.seed, 1, part_no])
        if rng.random() < self.empty_rate:
            f = self.station.render(rng, None, timestamp=ts)
        else:
            cls = self.classes[int(rng.integers(len(self.classes)))]
            defect = None
            if self.defects and rng.random() < self.defect_rate:
                defect = self.defects[int(rng.integers(len(self.defects)))]
            f = self.station.render(rng, self.station.random_part(rng, cls), defect, timestamp=ts)
        f.meta.update(frame=i, part=part_no)
        if self.frames_per_part > 1:
            f.rgb.flags.writeable = False  # shared by the frames of this part
            f.depth.flags.writeable = False
            self._held = (part_no, f)
        return f

    def empty_frames(self, n: int) -> Iterator[RGBDFrame]:
        """n frames of the empty station (for a surface reference)."""
        for j in range(n):
            yield self.station.render(np.random.default_rng([self.seed, 2, j]), None, timestamp=j / self.fps)

    def read(self) -> RGBDFrame | None:
        if self.count is not None and self._i >= self.count:
            return None
        f = self.frame(self._i)
        self._i += 1
        return f
