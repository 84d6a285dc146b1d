"""Where a score's time goes at the default recipe (issue 18, CPU): per stage, per thread count.

A bundle of `adgan export`'s default recipe (export/bundle.py RECIPE_SEARCH: start around E(x),
4x4 cells, theta scope none; 1 seed, k 19; for a few hours of 2026-12-01 3 seeds, k 5; loss fg_input
until 2026-12-02, fg with depth weight 3 since)
at the default training's generator size (64 px, features 32; --features 64 is the paper's;
untrained weights, cost does not depend on them). Stages of one score, as the agent runs them:

  preprocess   a paper frame's sample -> the model input (crop to the part, resize)
  encoder      z0 = E(x) (its own ONNX Runtime session)
  reset        host -> engine copies of x, z and the Adam moments
  steps        k step-graph calls (forward, explicit backward, Adam)
  final        the loss graph (score and G(z)) and its copies back

Medians over --n scores, for each ONNX Runtime thread count given.

    .venv/bin/python bench/score_stages.py ../shared/data/paper-rgbd/sphere --threads 1,2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import numpy as np  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", help="a class folder of samples (the paper's layout), e.g. ../shared/data/paper-rgbd/sphere")
    ap.add_argument("--threads", default="1,2", help="ONNX Runtime thread counts (default 1,2)")
    ap.add_argument("--n", type=int, default=40, help="scores per thread count (default 40)")
    ap.add_argument("--framing", default="object", choices=("frame", "object"))
    ap.add_argument("--point", default=None,
                    help="a point of bench/frontier.py (e.g. k19, the default before 2026-12-01) instead of the default")
    ap.add_argument("--features", type=int, default=32,
                    help="generator width (default 32: adgan train's default; the paper's is 64)")
    a = ap.parse_args()

    from agent.scoring.backend import backend_settings, open_backend
    from agent.scoring.bundle import Bundle
    from agent.scoring.encoder import LatentEncoder
    from agent.segment.preprocess import Preprocessing, sample_to_input
    from agent.sources.dataset import frame_numbers, read_model_sample, check_preprocessing
    from costing import CostModel
    from agent.scoring.search import start_latents
    from export.bundle import RECIPE_SEARCH
    from frontier import POINTS

    if a.point and a.point not in POINTS:
        raise SystemExit(f"unknown point {a.point!r} (known: {', '.join(POINTS)})")
    search = replace(RECIPE_SEARCH, **POINTS[a.point]) if a.point else RECIPE_SEARCH
    search = replace(search, seeds_per_call=search.n_seed)

    model = CostModel(64, a.features)
    pre = Preprocessing(size=64, framing=a.framing)
    folder = Path(a.samples)
    rec = check_preprocessing(folder, pre)
    nums = frame_numbers(folder)[: a.n]
    print(f"{a.point or 'default'} search at 64 px, features {a.features}, {search.n_seed} seed(s), k {search.k}; "
          f"{len(nums)} samples of {folder}, "
          f"framing {a.framing}")
    print(f"{'threads':>7} {'preprocess':>11} {'encoder':>8} {'reset':>7} {'steps':>8} {'per step':>9} "
          f"{'final':>7} {'total':>8}  ms")
    with tempfile.TemporaryDirectory() as tmp:
        b = Bundle.load(model.bundle(Path(tmp) / "b", search, pre.to_dict()))
        p = b.search
        if p.n_seed != p.seeds_per_call:
            raise SystemExit(f"the stages are timed for one graph call per score; this search has {p.n_seed} seeds "
                             f"of {p.seeds_per_call} per call")
        for threads in (int(t) for t in a.threads.split(",")):
            be = open_backend(b, backend_settings("onnxruntime", threads=threads))
            enc = LatentEncoder(b, threads=threads)
            t = {k: [] for k in ("preprocess", "encoder", "reset", "steps", "final")}
            for i, n in enumerate(nums * 2):
                t0 = time.perf_counter()
                x = sample_to_input(read_model_sample(folder, n, b.preprocessing, rec), b.size)
                t1 = time.perf_counter()
                z0 = start_latents(p, 0, p.seeds_per_call, b.nz, x, enc)  # E(x) (+ noise) for every seed
                t2 = time.perf_counter()
                be.reset(x, z0)
                t3 = time.perf_counter()
                for s in range(1, p.k + 1):
                    be.step(s, p.lr_z, p.lr_theta)
                t4 = time.perf_counter()
                be.final()
                t5 = time.perf_counter()
                if i >= len(nums):  # the first pass warms caches
                    for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                        t[k].append(1e3 * v)
            med = {k: float(np.median(v)) for k, v in t.items()}
            print(f"{threads:>7} {med['preprocess']:>11.2f} {med['encoder']:>8.2f} {med['reset']:>7.3f} "
                  f"{med['steps']:>8.1f} {med['steps'] / p.k:>9.2f} {med['final']:>7.2f} {sum(med.values()):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
