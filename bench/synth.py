"""Synthetic scene speed at 640x480 on one core, and the data pipeline after it.

Prints frames/s per stage and, as a machine-independent ratio, each stage's cost in
units of one full-frame float32 multiply-add (the cheapest thing a frame can cost).

    .venv/bin/python bench/synth.py [--frames 200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from agent.segment.preprocess import Preprocessing, make_sample, sample_to_input  # noqa: E402
from agent.segment.reference import SurfaceReference  # noqa: E402
from agent.segment.segmentation import SegmentationConfig, segment_depth  # noqa: E402
from agent.sources.synthetic import DEFECTS, SyntheticSource  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    cv2.setNumThreads(1)
    src = SyntheticSource(seed=0, defects=DEFECTS, defect_rate=0.3)
    ref = SurfaceReference.from_frames(src.empty_frames(15))
    cfg, prep = SegmentationConfig(), Preprocessing()
    x = np.random.default_rng(0).random((480, 640), np.float32)
    frames = [src.frame(i) for i in range(a.frames)]
    stages = {"render": [], "segment": [], "preprocess": [], "unit (x*1.5+1)": []}
    per = a.frames
    for r in range(a.repeats):  # interleaved, medians over repeats
        t = time.perf_counter()
        for i in range(per):
            src.frame(r * per + i)
        stages["render"].append((time.perf_counter() - t) / per)
        t = time.perf_counter()
        segs = [segment_depth(f.depth, ref.depth, cfg) for f in frames]
        stages["segment"].append((time.perf_counter() - t) / per)
        t = time.perf_counter()
        for f, s in zip(frames, segs):
            if s.object_area:
                sample_to_input(make_sample(f, s, prep))
        stages["preprocess"].append((time.perf_counter() - t) / per)
        t = time.perf_counter()
        for _ in range(per):
            x * np.float32(1.5) + np.float32(1.0)
        stages["unit (x*1.5+1)"].append((time.perf_counter() - t) / per)
    unit = statistics.median(stages["unit (x*1.5+1)"])
    print(f"640x480, one core, {a.frames} frames x {a.repeats} repeats (medians)")
    print(f"{'stage':<16}{'ms/frame':>10}{'frames/s':>10}{'x unit':>10}")
    for k, v in stages.items():
        m = statistics.median(v)
        print(f"{k:<16}{m * 1e3:>10.2f}{1 / m:>10.0f}{m / unit:>10.1f}")


if __name__ == "__main__":
    main()
