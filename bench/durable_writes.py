"""What the power-cut safety of station files costs (agent/durable.py): raw frames written as
`capture-frames` writes them (640x480 RGB PNG, 16-bit depth PNG, metadata), with the fsyncs and
with them turned off, alternating in one run.

    .venv/bin/python bench/durable_writes.py [--frames 60] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from agent import durable
from agent.frame import Intrinsics, RGBDFrame
from agent.sources.dataset import write_raw_frame


def frame(rng: np.random.Generator) -> RGBDFrame:
    """A camera-like frame: smooth depth with noise, a textured colour image (PNG does not squash it to nothing)."""
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    depth = (600 + 0.2 * xx + 0.1 * yy + rng.normal(0, 2, (h, w))).astype(np.uint16)
    rgb = np.clip(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1) + rng.integers(0, 24, (h, w, 3)), 0, 255)
    return RGBDFrame(rgb=rgb.astype(np.uint8), depth=depth, timestamp=time.time(),
                     intrinsics=Intrinsics(width=w, height=h, fx=600.0, fy=600.0, cx=320.0, cy=240.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder on /tmp)")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(dir=a.dir, prefix="durable-bench-"))
    f = frame(np.random.default_rng(0))
    real = (durable.sync_file, durable.sync_folder)
    times: dict[str, list[float]] = {"fsync": [], "no fsync": []}
    try:
        for i in range(a.frames):
            arm = "fsync" if i % 2 == 0 else "no fsync"
            durable.sync_file, durable.sync_folder = real if arm == "fsync" else (lambda p: None, lambda p: None)
            t0 = time.perf_counter()
            write_raw_frame(root, i, f)
            times[arm].append(1e3 * (time.perf_counter() - t0))
    finally:
        durable.sync_file, durable.sync_folder = real
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / a.frames
        shutil.rmtree(root)
    print(f"{a.frames} raw frames of 640x480, {size / 1e3:.0f} kB each, on {root.parent} ({os.uname().sysname})")
    for arm, ts in times.items():
        print(f"  {arm:9s} median {statistics.median(ts):6.1f} ms per frame (p90 {sorted(ts)[int(0.9 * len(ts))]:.1f})")
    print(f"  ratio {statistics.median(times['fsync']) / statistics.median(times['no fsync']):.2f}")


if __name__ == "__main__":
    main()
