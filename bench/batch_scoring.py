"""Batch scoring (issue 18): parts per second when P parts share one search (`adgan export
--parts-per-call P`), for a station that sees several parts per frame or a re-inspection queue.

Bundles of the default recipe (and, with --paper, the paper's search: theta scope all, mse,
3 seeds) at 64 px and --features (default 32, adgan train's), for P = 1, 2, 4, 8; each scores
the same queue of part-like inputs with `Searcher.score_batch`, bundles interleaved call by
call; medians. Scores agree with P = 1 (checked, relative difference printed).

    .venv/bin/python bench/batch_scoring.py --threads 2
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
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--parts", default="1,2,4,8", help="parts per call (default 1,2,4,8)")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default 0: all cores)")
    ap.add_argument("--budget-s", type=float, default=40.0, help="timing per recipe (default 40)")
    ap.add_argument("--paper", action="store_true", help="also the paper's search")
    a = ap.parse_args()

    from agent.scoring.bundle import Bundle
    from agent.scoring.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeSettings
    from agent.scoring.search import Searcher
    from costing import CostModel
    from export.bundle import PAPER_SEARCH, RECIPE_SEARCH

    model = CostModel(64, a.features)
    queue = model.inputs(8)
    parts = [int(p) for p in a.parts.split(",")]
    recipes = [("default", RECIPE_SEARCH)] + ([("paper", PAPER_SEARCH)] if a.paper else [])
    print(f"64 px, features {a.features}, ONNX Runtime {a.threads or 'all'} thread(s)")
    print(f"{'recipe':<9}{'parts/call':>11}{'ms/call':>10}{'ms/part':>9}{'parts/s':>9}{'x batch 1':>10}{'max rel diff':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, search in recipes:
            searchers, times, ref = {}, {}, None
            for p in parts:
                b = Bundle.load(model.bundle(Path(tmp) / f"{name}-{p}", replace(
                    search, parts_per_call=p, seeds_per_call=p * search.n_seed)))
                searchers[p] = Searcher(b, OnnxRuntimeBackend(b, OnnxRuntimeSettings(threads=a.threads)), seed=0)
                times[p] = []
            scores = {p: np.array([r.score for r in s.score_batch(queue)]) for p, s in searchers.items()}  # warm-up
            ref = scores[parts[0]]
            t_end, i = time.perf_counter() + a.budget_s, 0
            while i < 3 or time.perf_counter() < t_end:
                for p, s in searchers.items():
                    t = time.perf_counter()
                    s.score_batch(queue[:p])
                    times[p].append(time.perf_counter() - t)
                i += 1
            base = None
            for p in parts:
                ms = 1e3 * float(np.median(times[p]))
                pps = 1e3 * p / ms
                base = base or pps
                rel = float(np.max(np.abs(scores[p] - ref) / np.abs(ref)))
                print(f"{name:<9}{p:>11}{ms:>10.1f}{ms / p:>9.1f}{pps:>9.2f}{pps / base:>9.2f}x{rel:>14.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
