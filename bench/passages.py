"""Continuous mode's passages on synthetic streams where the view never clears between parts.

For each stream: how many parts it shows, how many the trigger inspects given the object
masks (the agent since 2026-12-06) and with the area alone (before), and whether each
inspection is on a frame where its part stood still; then the trigger's cost per frame.

    .venv/bin/python bench/passages.py
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Iterator

import numpy as np

from agent.frame import RGBDFrame
from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import SegmentationConfig, Segmenter
from agent.sources.scene import Primitive
from agent.sources.synthetic import SyntheticSource
from agent.sources.synthetic_station import SyntheticStation
from agent.passage import Passage, PassageTrigger


def moved(part, dx: float):
    """`part` moved `dx` mm along the table's x axis."""
    p = part.prim
    return dataclasses.replace(part, prim=Primitive(p.shape, p.center + np.array([dx, 0.0, 0.0]), p.rotation, p.size))


def belt(station: SyntheticStation, classes, still: int = 5, step: float = 15.0) -> Iterator[RGBDFrame]:
    """A belt: each part slides in from the left `step` mm a frame, stands `still` frames, and
    slides out to the right as the next slides in, so that one part is always in view. Each
    frame's meta has `part` (its index) and `still` (the part stands)."""
    n = 0
    for k, cls in enumerate(classes):
        steps = list(np.arange(-60.0, 0.0, step)) + [0.0] * still + \
            ([] if k == len(classes) - 1 else list(np.arange(step, 61.0, step)))
        for dx in steps:
            f = station.render(np.random.default_rng([k, n]), moved(station.product(cls), dx))
            f.meta.update(part=k, still=bool(dx == 0.0))
            n += 1
            yield f


def count(frames: list[RGBDFrame], seg: Segmenter, min_area_px: int, masks: bool) -> str:
    """'N' parts inspected, with how many inspections were of a part already inspected or of
    one that was moving."""
    t, seen, again, moving = PassageTrigger(min_area_px=min_area_px), set(), 0, 0
    for f in frames:
        s = seg(f)
        p = t.update(s.object_area, s.object, f.depth) if masks else t.update(s.object_area)
        if p is Passage.SCORE:
            again += f.meta["part"] in seen
            moving += not f.meta.get("still", True)
            seen.add(f.meta["part"])
    notes = [f"{again} again"] * bool(again) + [f"{moving} while moving"] * bool(moving)
    return f"{len(seen)}" + (f" ({', '.join(notes)})" if notes else "")


def streams(parts: int):
    belt_station = SyntheticStation(320, 240, seed=5, variety="product")
    classes = [("cylinder", "sphere", "rectangle")[k % 3] for k in range(parts)]
    yield "belt, 320x240, one part always in view", belt_station, list(belt(belt_station, classes))
    src = SyntheticSource(("sphere", "cylinder", "rectangle"), seed=3, count=6 * parts, frames_per_part=6,
                          gap_frames=0, variety="product")
    yield "parts swapped between two frames, 640x480", src.station, [src.read() for _ in range(6 * parts)]
    src = SyntheticSource(("sphere", "cylinder", "rectangle"), seed=3, count=6 * parts, frames_per_part=4,
                          gap_frames=2, variety="product")
    yield "the demo's stream: 4 frames a part, 2 empty, 640x480", src.station, [src.read() for _ in range(6 * parts)]


def cost_ms(repeat: int = 2000) -> tuple[float, float]:
    """The trigger's update per frame at 640x480 (ms), with masks and with the area alone."""
    m = np.zeros((480, 640), bool)
    m[100:220, 200:320] = True
    d = np.where(m, 450, 500).astype(np.uint16)
    out = []
    for masks in (True, False):
        t = PassageTrigger()
        t0 = time.perf_counter()
        for _ in range(repeat):
            t.update(14400, m, d) if masks else t.update(14400)
        out.append(1e3 * (time.perf_counter() - t0) / repeat)
    return out[0], out[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=9, help="parts in each stream (default 9)")
    a = ap.parse_args(argv)
    print("| stream | parts | inspected, masks | inspected, area alone |\n|---|---|---|---|")
    for name, station, frames in streams(a.parts):
        ref = SurfaceReference.from_frames(station.render(np.random.default_rng([9, j]), None) for j in range(5))
        seg = Segmenter(SegmentationConfig(), ref)
        shown = len({f.meta["part"] for f in frames if f.meta.get("part") is not None})
        print(f"| {name} | {shown} | {count(frames, seg, 300, True)} | {count(frames, seg, 300, False)} |")
    with_masks, area = cost_ms()
    print(f"\ntrigger update per frame, 640x480: {with_masks:.3f} ms with masks, {area:.3f} ms the area alone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
