"""What the class check costs a score (issue 15; agent/decide/class_check.py), CPU.

A station's score with the default recipe (export/bundle.py RECIPE_SEARCH at 64 px, features 32,
untrained weights: cost does not depend on them) against the same score plus the class check
against --rivals other classes' bundles of the same size: each class's bundle scored at k 0
(its encoder and one loss-graph run), as ClassModel.decide runs them on the station's engines;
and the check with each class's PCA instead (model "pca", agent/scoring/class_pca.py: 16 axes,
pooled 2, fitted here on the timed parts themselves: cost does not depend on them). Medians over
--n parts of a paper class folder, after a warm-up pass; one run, so the ratio holds.

    .venv/bin/python bench/class_check_cost.py ../shared/data/paper-rgbd/sphere --threads 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import numpy as np  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", help="a class folder of samples (the paper's layout)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    ap.add_argument("--n", type=int, default=40, help="parts timed (default 40)")
    ap.add_argument("--rivals", type=int, default=2, help="other classes checked against (default 2)")
    a = ap.parse_args()

    from agent.decide.class_check import CheckRecord, ClassCheck, by_searcher
    from agent.scoring.class_pca import ClassPCA
    from agent.decide.inspector import at_k0
    from agent.scoring.backend import backend_settings, open_backend
    from agent.scoring.bundle import Bundle
    from agent.scoring.search import Searcher
    from agent.segment.preprocess import Preprocessing, sample_to_input
    from agent.sources.dataset import check_preprocessing, frame_numbers, read_model_sample
    from costing import CostModel
    from export.bundle import RECIPE_SEARCH

    pre = Preprocessing(size=64, framing="object")
    folder = Path(a.samples)
    rec = check_preprocessing(folder, pre)
    nums = frame_numbers(folder)[: a.n]
    settings = backend_settings("onnxruntime", threads=a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        searchers = []
        for i in range(1 + a.rivals):  # own class first; each class its own weights
            b = Bundle.load(CostModel(64, 32, seed=i).bundle(Path(tmp) / f"b{i}", RECIPE_SEARCH, pre.to_dict()))
            searchers.append(Searcher(b, open_backend(b, settings), 0))
        own = searchers[0]
        names = {f"c{i}": "h" for i in range(1, 1 + a.rivals)}
        check = ClassCheck(CheckRecord(0.0, names), by_searcher(at_k0(own)),
                           {f"c{i}": by_searcher(at_k0(s)) for i, s in enumerate(searchers[1:], 1)})
        xs = [sample_to_input(read_model_sample(folder, n, own.bundle.preprocessing, rec), 64) for n in nums]
        pcas = [ClassPCA.fit(np.stack(xs) * (1 - 0.1 * i)) for i in range(1 + a.rivals)]
        pca_check = ClassCheck(CheckRecord(0.0, names, "pca"), pcas[0].error,
                               {f"c{i}": p.error for i, p in enumerate(pcas[1:], 1)})
        t = {"score": [], "check": [], "pca": []}
        for rnd in range(2):  # the first pass warms caches
            for x in xs:
                t0 = time.perf_counter()
                own.score(x)
                t1 = time.perf_counter()
                check(x)
                t2 = time.perf_counter()
                pca_check(x)
                t3 = time.perf_counter()
                if rnd:
                    t["score"].append(1e3 * (t1 - t0))
                    t["check"].append(1e3 * (t2 - t1))
                    t["pca"].append(1e3 * (t3 - t2))
        s, c, q = (float(np.median(t[k])) for k in ("score", "check", "pca"))
        p = own.bundle.search
        print(f"default search (64 px, features 32, {p.n_seed} seed(s), k {p.k}), {a.threads} thread(s), "
              f"{len(xs)} parts of {folder}")
        print(f"score {s:.1f} ms; class check against {a.rivals} rivals {c:.1f} ms (own and rivals at k 0); "
              f"together {s + c:.1f} ms = {(s + c) / s:.3f} x the score alone")
        print(f"class check with each class's PCA (model pca) {q:.2f} ms; together {s + q:.1f} ms = "
              f"{(s + q) / s:.3f} x the score alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
