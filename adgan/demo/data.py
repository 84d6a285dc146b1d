"""The demo's data: synthetic parts (or a real dataset in the paper's layout) and damaged twins
for the report, cached so that a second run with the same settings skips the work."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from agent.segment.preprocess import Preprocessing
from agent.sources.dataset import class_folders, parse_frames
from agent.sources.synthetic import CLASSES, DEFECTS
from calibration.damage import DAMAGE_DEFECTS, damage_dataset

DEMO_CONFIG = "demo-config.json"


def cached(folder: Path, config: dict, marker: str) -> bool:
    p = folder / DEMO_CONFIG
    return (folder / marker).exists() and p.is_file() and json.loads(p.read_text()) == config


def mark(folder: Path, config: dict) -> None:
    (folder / DEMO_CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")


class Plan:
    """Where the training and test samples come from: synthetic (train/ and test/ folders) or
    a real dataset in the paper's layout (class folders, split by frame numbers)."""

    def __init__(self, a: argparse.Namespace, out: Path) -> None:
        self.a, self.out = a, out
        if a.data:
            root = Path(a.data)
            self.classes = sorted(p.name for p in class_folders(root))
            if len(self.classes) < 2:
                raise FileNotFoundError(f"{root} needs at least two class folders (<class>/rgb, <class>/depth)")
            self.train_root = self.test_root = root
            self.train_frames, self.test_frames = a.train_frames, a.test_frames
            self.fingerprint = {"data": str(root.resolve()), "train_frames": a.train_frames}
        else:
            self.classes = list(CLASSES)
            self.train_root, self.test_root = out / "cache" / "data" / "train", out / "cache" / "data" / "test"
            self.train_frames = self.test_frames = None
            self.fingerprint = {"synthetic": {"n_train": a.train, "n_test": a.test, "seed": a.seed, "size": a.size,
                                              "framing": a.framing, "variety": a.variety}}
        if a.expected not in self.classes:
            raise ValueError(f"--expected {a.expected!r} is not one of the classes {', '.join(self.classes)}")

    def frames(self, which: str) -> tuple[int, int] | None:
        return parse_frames(self.train_frames if which == "train" else self.test_frames)


def make_damage(plan: Plan, progress: bool) -> Path | None:
    """Intact test parts and their damaged twins with ground-truth masks, for the report's
    local-damage section: the renderer's own defects (synthetic), or `adgan dataset damage`
    of the test frames (--data). Cached like the rest."""
    a = plan.a
    if not a.damage_parts:
        return None
    folder = plan.out / "cache" / "damage"
    cfg = {**plan.fingerprint, "damage_parts": a.damage_parts, "test_frames": plan.test_frames}
    if cached(folder, cfg, "done"):
        print(f"[1/6] damaged twins: cached in {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    if a.data:
        print(f"[1/6] damaged twins: {', '.join(DAMAGE_DEFECTS)} on the test frames -> {folder}")
        damage_dataset(a.data, folder, DAMAGE_DEFECTS, a.seed, plan.frames("test"), progress)
    else:
        from adgan.synth import synth_damage_dataset
        print(f"[1/6] damaged twins: {a.damage_parts} new parts per class, each also with "
              f"{', '.join(DEFECTS)} -> {folder}")
        # the station of the training parts (its seed), other parts: the renderer draws twins from their own stream
        synth_damage_dataset(folder, CLASSES, a.damage_parts, a.seed,
                             Preprocessing(size=a.size, framing=a.framing), DEFECTS, progress=progress,
                             variety=a.variety)
    (folder / "done").write_text("ok\n")
    mark(folder, cfg)
    return folder


def make_data(plan: Plan, progress: bool) -> None:
    a = plan.a
    if a.data:
        print(f"[1/6] data: {a.data} (classes {', '.join(plan.classes)}; train frames {a.train_frames}, "
              f"test frames {a.test_frames})")
        return
    from adgan.synth import synth_dataset
    folder = plan.out / "cache" / "data"
    if cached(folder, plan.fingerprint, "test"):
        print(f"[1/6] data: cached in {folder}")
        return
    shutil.rmtree(folder, ignore_errors=True)
    print(f"[1/6] data: synthesising {a.train} training, {a.test} normal and {a.test} defective test samples "
          f"per class ({a.variety}) -> {folder}")
    synth_dataset(folder, CLASSES, a.train, a.test, a.seed, Preprocessing(size=a.size, framing=a.framing), DEFECTS,
                  progress=progress, variety=a.variety)
    mark(folder, plan.fingerprint)
