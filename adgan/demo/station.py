"""The demo's station: its settings (the agent's own settings object, written as agent.toml
once the broker's port is known), the stream of parts it sees with their ground truth, its
empty-table reference, and the paper's Figure 1 for its first frame."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import tomli_w

from adgan.broker import free_port
from adgan.demo.data import Plan
from agent.settings import AgentSettings, load_settings
from agent.sources.synthetic import CLASSES

STATION = "demo"
Truth = Callable[[dict], "dict | None"]  # event -> {class, defect, anomalous}, None if unknown


def station_settings(plan: Plan, bundles: dict[str, Path], th: Path, workdir: Path) -> tuple[dict, Truth]:
    """The station's settings (the tables of agent.toml, the broker's port still to set) and the
    stream's ground truth."""
    a = plan.a
    settings: dict = {
        "station_id": STATION,
        "model": {"expected_class": a.expected, "thresholds": str(th), "seed": 0,
                  "bundles": {c: str(p) for c, p in bundles.items()}, "backend": {"type": "onnxruntime"}},
        "mqtt": {"host": "127.0.0.1"},
        "outbox": {"path": str(workdir / "outbox.sqlite")},
        "health": {"status_interval_s": 2},
        "metrics": {"enabled": True, "port": free_port()},
        "web": {"enabled": True, "port": free_port()},
    }
    if a.data:
        stream, truth_of = replay_stream(plan, workdir / "stream")
        settings["source"] = {"type": "folder", "path": str(stream), "fps": a.fps}
        settings["trigger"] = {"mode": "every_frame"}
        return settings, truth_of
    # new parts passing the station the training data came from (same station seed)
    others = [c for c in plan.classes if c != a.expected]
    settings["source"] = {"type": "synthetic", "seed": a.seed, "variety": a.variety,
                          "classes": [a.expected] * 4 + others,
                          "defect_rate": 0.3, "frames_per_part": 4, "gap_frames": 2, "count": a.parts * 6,
                          "fps": a.fps}  # two in three parts are of the expected class
    settings["segmentation"] = {"reference": str(workdir / "reference.npz")}
    settings["trigger"] = {"mode": "continuous"}

    def truth_of(e: dict) -> dict | None:
        t = e["source"].get("truth")
        if not t or t.get("class") is None:
            return None
        return {"class": t["class"], "defect": t.get("defect"),
                "anomalous": t["class"] != a.expected or t.get("defect") is not None}
    return settings, truth_of


def replay_stream(plan: Plan, stream: Path) -> tuple[Path, Truth]:
    """With --data: a replay of held-out frames, the expected class 60 %, the others 40 %."""
    from agent.sources.dataset import frame_numbers, rgb_path
    a = plan.a
    shutil.rmtree(stream, ignore_errors=True)
    (stream / "rgb").mkdir(parents=True)
    (stream / "depth").mkdir()
    rng = random.Random(a.seed)
    pools = {c: frame_numbers(plan.test_root / c, plan.frames("test")) for c in plan.classes}
    truth = {}
    for i in range(a.parts):
        c = a.expected if rng.random() < 0.6 else rng.choice([x for x in plan.classes if x != a.expected])
        n = rng.choice(pools[c])
        src = rgb_path(plan.test_root / c, n)
        shutil.copy(src, stream / "rgb" / f"{i}{src.suffix}")
        shutil.copy(plan.test_root / c / "depth" / f"{n}.png", stream / "depth" / f"{i}.png")
        truth[i] = {"class": c, "defect": None, "anomalous": c != a.expected, "source": str(src)}
    (stream / "truth.json").write_text(json.dumps(truth, indent=1))
    return stream, lambda e: truth.get(e["source"]["frame"])


def write_station_config(path: Path, settings: dict) -> AgentSettings:
    """agent.toml from the settings' tables, loaded back exactly as `adgan agent run` will load
    it (the environment aside): a mistake here fails now, naming the setting."""
    path.write_text("# The demo station's configuration, written by adgan demo.\n" + tomli_w.dumps(settings))
    return load_settings(path, env_file=None)


def capture_reference(cfg: Path, env: dict[str, str]) -> None:
    """The station's first job: record the empty table (the synthetic station, emptied)."""
    env = {**env, "ADGAN_SOURCE__EMPTY_RATE": "1"}
    r = subprocess.run([sys.executable, "-m", "adgan_edge", "agent", "capture-reference", "--config", str(cfg),
                        "--count", "10", "--env-file", os.devnull], env=env, capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"capture-reference failed: {r.stderr}")
    print("station: " + r.stdout.strip())


def segmentation_figure(seed: int, workdir: Path, rep: Path, variety: str = "family") -> None:
    """The paper's Figure 1 for the first frame the station saw."""
    from adgan.figure1 import segmentation_steps
    from agent.segment.reference import SurfaceReference
    from agent.segment.segmentation import SegmentationConfig
    from agent.sources.synthetic import SyntheticSource
    from agent.visual import write_png
    frame = SyntheticSource(CLASSES, seed=seed, variety=variety).frame(0)
    ref = SurfaceReference.load(workdir / "reference.npz")
    write_png(rep / "segmentation.png", segmentation_steps(frame, ref, SegmentationConfig()))
