"""Edge-to-verdict-line latency of a GPIO-triggered station (issue 17).

Runs the real agent loop in-process on the synthetic station at 640x480 and 30 frames/s (the
camera), trigger mode `gpio` on the in-memory chip, with the default recipe of `adgan export`
(theta scope none, 4x4 cells, from the encoder's E(x), loss fg_input until 2026-12-02; RECIPE_SEARCH: 1 seed,
k 19; 3 seeds, k 5 for a few hours of 2026-12-01, no result recorded with it here) at the
paper's generator size (64 px, features 64; untrained weights: the cost does not depend on
them). Each edge is driven on the trigger line at a random phase of the camera; the latency
runs from the edge's timestamp to the ok or ng line going active: waiting for the next frame,
segmentation, preprocessing, the search, the outbox and the line. Prints p50, p99 and max.

    .venv/bin/python bench/gpio_latency.py [--parts 60] [--fps 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from adgan.broker import BrokerProcess
from agent.decide.thresholds import write_threshold
from agent.gpio.lines import MemoryChip
from agent.scoring.bundle import Bundle
from agent.segment.preprocess import Preprocessing
from agent.segment.reference import SurfaceReference
from agent.service import Agent
from agent.settings import AgentSettings
from agent.sources.synthetic import SyntheticSource
from export.bundle import RECIPE_SEARCH, write_generator_bundle
from training.encoder import Encoder
from training.model import Architecture, Generator

TRIGGER, OK, NG, BUSY = 0, 1, 2, 3


def make_bundle(root: Path) -> Path:
    torch.manual_seed(0)
    arch = Architecture(size=64, features_g=64)
    p = root / "bundle"
    write_generator_bundle(Generator(arch).eval(), p, RECIPE_SEARCH,
                           {"class": "cylinder", "kind": "gan", "preprocessing": Preprocessing(size=64).to_dict()},
                           encoder=Encoder(arch).eval())
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=60)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-gpio-"))
    SurfaceReference.from_frames(SyntheticSource(seed=7).empty_frames(10)).save(root / "reference.npz")
    bundle = make_bundle(root)
    b = Bundle.load(bundle)
    write_threshold(root / "thresholds.json", "cylinder", {"threshold": 0.1, "bundle_hash": b.bundle_hash, "seed": 0,
                                                                "engine": "onnxruntime/CPUExecutionProvider"})
    chip = f"bench-{uuid.uuid4()}"
    with BrokerProcess(root) as broker:
        s = AgentSettings(
            station_id="bench",
            source={"type": "synthetic", "seed": 7, "classes": ["cylinder"], "frames_per_part": 1000,
                    "gap_frames": 0, "fps": a.fps},
            segmentation={"reference": str(root / "reference.npz")},
            model={"bundles": {"cylinder": str(bundle)}, "expected_class": "cylinder",
                   "thresholds": str(root / "thresholds.json"),
                   "backend": {"type": "onnxruntime", "threads": a.threads}},
            trigger={"mode": "gpio", "min_area_px": 500}, mqtt={"port": broker.port},
            outbox={"path": str(root / "outbox.sqlite")}, health={"status_interval_s": 60},
            gpio={"enabled": True, "backend": "memory", "chip": chip, "trigger_line": TRIGGER, "ok_line": OK,
                  "ng_line": NG, "busy_line": BUSY, "output_mode": "pulse", "pulse_ms": 20, "dead_time_ms": 50})
        agent = Agent(s)
        agent.start()
        loop = threading.Thread(target=agent.run, daemon=True)
        loop.start()
        lines = MemoryChip.named(chip)
        trig, ok, ng, busy = (lines.inputs[TRIGGER], lines.outputs[OK], lines.outputs[NG], lines.outputs[BUSY])
        rng = random.Random(0)
        lat = []
        try:
            for i in range(a.parts + 3):  # the first three warm the loop up
                time.sleep(0.1 + rng.random() / a.fps)
                n_ok, n_ng = len(ok.history), len(ng.history)
                t0 = time.monotonic_ns()
                trig.drive(True, t0)
                deadline = time.monotonic() + 30
                while len(ok.history) == n_ok and len(ng.history) == n_ng:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no verdict line 30 s after edge {i}: {agent.status()}")
                    time.sleep(0.0005)
                t1 = (ok.history[n_ok] if len(ok.history) > n_ok else ng.history[n_ng])[0]
                if i >= 3:
                    lat.append((t1 - t0) / 1e6)
                trig.drive(False)
                while busy.active:
                    time.sleep(0.001)
        finally:
            agent.request_stop()
            loop.join(30)
    ms = np.array(lat)
    print(f"gpio trigger -> verdict line, {len(ms)} parts, synthetic camera 640x480 at {a.fps:g} frames/s, "
          f"default recipe at 64 px / features 64, ONNX Runtime {a.threads} threads")
    print(f"{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'min':>8}  (ms)")
    print(f"{np.percentile(ms, 50):>8.1f}{np.percentile(ms, 90):>8.1f}{np.percentile(ms, 99):>8.1f}"
          f"{ms.max():>8.1f}{ms.min():>8.1f}")
    st = agent.stage_s
    print("time per inspected frame (ms): " + ", ".join(f"{k} {1e3 * v / max(agent.counters.snapshot()['events'], 1):.1f}"
                                                         for k, v in st.items()))


if __name__ == "__main__":
    main()
