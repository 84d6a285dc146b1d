"""The station pipeline's throughput and where its time goes.

Runs the real agent loop in-process (agent.service.Agent) on the synthetic station at
640x480: capture (rendering stands in for the camera), segmentation and preprocessing,
scoring (Algorithm 1 on ONNX Runtime, theta scope none, n_seed 3, k 19) and publishing
(SQLite outbox + a real broker on loopback). Parts pass the station as in production:
each stays 4 frames, then 2 empty frames, one inspection per part (trigger continuous);
every frame is captured and segmented, one per part is scored and published.

Prints frames/s, parts/s and each stage's share of the time per part, for a generator of
the paper's size (features_g 64, 64 px) and the demo's (16, 32 px). Target: everything but
scoring under 5% of the time per part.

    .venv/bin/python bench/pipeline.py [--parts 20]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from adgan.broker import BrokerProcess
from agent.decide.thresholds import write_threshold
from agent.scoring.bundle import Bundle, SearchDefaults
from agent.segment.preprocess import Preprocessing
from agent.segment.reference import SurfaceReference
from agent.service import Agent
from agent.settings import AgentSettings
from agent.sources.synthetic import SyntheticSource
from export.bundle import write_generator_bundle
from training.model import Architecture, Generator


def make_bundle(root: Path, size: int, features_g: int) -> Path:
    torch.manual_seed(0)
    g = Generator(Architecture(size=size, features_g=features_g)).eval()
    p = root / f"bundle-{size}-{features_g}"
    write_generator_bundle(g, p, SearchDefaults(theta_scope="none", loss="fg"),
                           {"class": "cylinder", "kind": "gan", "preprocessing": Preprocessing(size=size).to_dict()})
    return p


def run(root: Path, bundle: Path, port: int, parts: int, threads: int) -> dict:
    b = Bundle.load(bundle)
    th = root / f"thresholds-{b.bundle_hash[:8]}.json"
    write_threshold(th, "cylinder", {"threshold": 0.1, "bundle_hash": b.bundle_hash, "seed": 0,
                                     "engine": "onnxruntime/CPUExecutionProvider"})
    s = AgentSettings(
        station_id="bench",
        source={"type": "synthetic", "seed": 7, "classes": ["cylinder"], "defect_rate": 0.2, "frames_per_part": 4,
                "gap_frames": 2, "count": parts * 6, "fps": 0},
        segmentation={"reference": str(root / "reference.npz")},
        model={"bundles": {"cylinder": str(bundle)}, "expected_class": "cylinder", "thresholds": str(th),
               "backend": {"type": "onnxruntime", "threads": threads}},
        trigger={"mode": "continuous"}, mqtt={"port": port},
        outbox={"path": str(root / f"outbox-{b.bundle_hash[:8]}.sqlite")}, health={"status_interval_s": 60})
    agent = Agent(s)
    agent.start()
    t = time.perf_counter()
    agent.run()
    wall = time.perf_counter() - t
    c = agent.counters.snapshot()
    return {"wall": wall, "frames": c["frames"], "events": c["events"], "stages": dict(agent.stage_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    SurfaceReference.from_frames(SyntheticSource(seed=7).empty_frames(10)).save(root / "reference.npz")
    with BrokerProcess(root) as broker:
        print(f"synthetic station 640x480, {a.parts} parts x (4 frames + 2 empty), trigger continuous, "
              f"ONNX Runtime {a.threads} threads, broker {broker.kind}")
        print(f"{'generator':<22}{'frames/s':>9}{'parts/s':>8}{'ms/part':>9}  "
              f"{'capture':>8}{'segment':>8}{'score':>8}{'publish':>8}  {'not scoring':>11}")
        for size, fg in ((64, 64), (32, 16)):
            r = run(root, make_bundle(root, size, fg), broker.port, a.parts, a.threads)
            per_part = r["wall"] / r["events"]
            st = r["stages"]
            total = sum(st.values())
            share = {k: v / total for k, v in st.items()}
            print(f"{f'{size} px, features {fg}':<22}{r['frames'] / r['wall']:>9.1f}{r['events'] / r['wall']:>8.2f}"
                  f"{1e3 * per_part:>9.1f}  {share['capture']:>8.1%}{share['segment']:>8.1%}{share['score']:>8.1%}"
                  f"{share['publish']:>8.1%}  {1 - share['score']:>11.1%}")


if __name__ == "__main__":
    main()
