"""`adgan demo`: the main job end to end on embedded defaults.

Today: synthesise a small dataset of the three classes with defects, write a grid of
its samples, record raw frames of the synthetic station with their surface reference,
and show the segmentation steps. It grows into the full inspection pipeline (train,
export, calibrate, agent over MQTT) as those parts land.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from adgan.dataset import segmentation_steps, synth_dataset, synth_raw
from agent.segment.preprocess import Preprocessing
from agent.segment.segmentation import SegmentationConfig
from agent.sources.folder import class_folders, frame_numbers, read_raw_frame, read_sample
from agent.sources.synthetic import CLASSES, DEFECTS
from agent.visual import sample_grid, write_png


def run_demo(out: Path, n_train: int, n_test: int, seed: int, progress: bool = True) -> dict[str, Path]:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    print(f"[1/3] synthesising {n_train} training and {n_test} normal + {n_test} defective test "
          f"samples per class into {data}")
    synth_dataset(data, CLASSES, n_train, n_test, seed, Preprocessing(), DEFECTS, progress=progress)
    rows, names = [], []
    for split in ("train", "test"):
        for folder in class_folders(data / split):
            nums = frame_numbers(folder)[:10]
            rows.append([read_sample(folder, n) for n in nums])
            names.append(f"{split}/{folder.name}")
    grid = out / "samples.png"
    write_png(grid, sample_grid(rows, names, scale=2))
    print(f"[2/3] sample grid (RGB above depth) -> {grid}")
    raw = out / "station"
    ref = synth_raw(raw, count=6, n_empty=15, seed=seed, defects=DEFECTS, defect_rate=0.5, progress=progress)
    steps = out / "segmentation.png"
    write_png(steps, segmentation_steps(read_raw_frame(raw / "frames", 0), ref, SegmentationConfig()))
    print(f"[3/3] raw station frames and surface reference -> {raw}; segmentation steps -> {steps}")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s. Open {grid} and {steps} to look at the data.")
    return {"data": data, "grid": grid, "segmentation": steps, "raw": raw}


def cmd_demo(a: argparse.Namespace) -> int:
    run_demo(Path(a.out), a.train, a.test, a.seed)
    return 0


def add_parser(sub) -> None:
    q = sub.add_parser("demo", help="run the main job end to end on embedded defaults",
                       description="Synthesise a small RGB-D dataset of boxes, cylinders and spheres with "
                                   "defects, draw its samples, record raw station frames with a surface "
                                   "reference and show the segmentation steps.")
    q.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    q.add_argument("--train", type=int, default=60, help="training samples per class (default 60)")
    q.add_argument("--test", type=int, default=20, help="test samples per class (default 20)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_demo)
