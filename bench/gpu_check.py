"""GPU check (issue 18): score parity and speed of the explicit step graphs on ONNX Runtime's
CUDA provider against its CPU provider, on bundles made here on the CPU.

Bundles, at the paper's generator size (64 px, features 64, untrained weights: cost and parity
do not depend on them):
  default   `adgan export`'s recipe: theta scope none, 4x4 cells, from E(x) (RECIPE_SEARCH:
            1 seed, k 19; loss fg_input until 2026-12-02, fg with depth weight 3 since)
  paper     the paper's search: theta scope all, mse, 3 seeds, k 19
each at batch 1 and 8 (`--parts-per-call 8`: eight parts scored in one search). For each: the
largest relative difference of the scores (target: < 1e-3 in fp32) and the median ms per score
(a call's time over its parts) on each provider, in one table.

    bench/gpu_check.sh                                   # on a machine with an NVIDIA GPU
    .venv/bin/python bench/gpu_check.py --provider CPUExecutionProvider   # the same path, CPU only
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
import torch  # noqa: E402

from agent.scoring.bundle import Bundle  # noqa: E402
from agent.scoring.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeSettings  # noqa: E402
from agent.scoring.search import Searcher  # noqa: E402
from costing import CostModel  # noqa: E402
from export.bundle import PAPER_SEARCH, RECIPE_SEARCH  # noqa: E402


def bundles(root: Path, model: CostModel) -> dict[str, Path]:
    out = {}
    for name, search in (("default", RECIPE_SEARCH), ("paper", PAPER_SEARCH)):
        for parts in (1, 8):
            out[f"{name}, batch {parts}"] = model.bundle(root / f"{name}-{parts}", replace(
                search, parts_per_call=parts, seeds_per_call=parts * search.n_seed))
    return out


def timed(searcher: Searcher, xs: list[np.ndarray], budget_s: float) -> tuple[list[float], float]:
    """(scores of xs, median ms per score): calls of the bundle's parts per call, at least one
    timed, three when they fit the budget."""
    parts = searcher.bundle.parts_per_call
    scores = [r.score for r in searcher.score_batch(xs)]  # also the warm-up
    batch = [xs[i % len(xs)] for i in range(parts)]
    times, t_end = [], time.perf_counter() + budget_s
    while not times or (time.perf_counter() < t_end and len(times) < 50) or \
            (len(times) < 3 and time.perf_counter() < t_end + budget_s):
        t = time.perf_counter()
        searcher.score_batch(batch)
        times.append((time.perf_counter() - t) / parts)
    return scores, 1e3 * float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--provider", default="CUDAExecutionProvider", help="the provider to check against the CPU")
    ap.add_argument("--samples", type=int, default=8, help="inputs scored for parity")
    ap.add_argument("--budget-s", type=float, default=15.0, help="timing per bundle and provider")
    a = ap.parse_args()
    import onnxruntime as ort
    gpu = "none"
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}, GPU: {gpu}")
    model = CostModel(64, 64)  # the paper's generator size
    xs = model.inputs(a.samples)
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in bundles(Path(tmp), model).items():
            b = Bundle.load(path)
            res = {}
            for prov in dict.fromkeys(("CPUExecutionProvider", a.provider)):  # once when both are the CPU
                settings = OnnxRuntimeSettings(providers=[prov] if prov == "CPUExecutionProvider" else
                                               [prov, "CPUExecutionProvider"])
                backend = OnnxRuntimeBackend(b, settings)
                res[prov] = (*timed(Searcher(b, backend, seed=0), xs, a.budget_s), backend.device)
            (s_cpu, ms_cpu, _), (s_dev, ms_dev, device) = res["CPUExecutionProvider"], res[a.provider]
            rel = max(abs(p - q) / max(abs(p), 1e-12) for p, q in zip(s_cpu, s_dev))
            ok &= rel < 1e-3
            rows.append((name, ms_cpu, ms_dev, device, ms_cpu / ms_dev, rel))
    print(f"{'bundle (64 px, features 64)':<28}{'CPU ms':>9}{a.provider[:-17] + ' ms':>10}{'device':>8}"
          f"{'speed-up':>10}{'max rel diff':>14}")
    for name, c, d, dev, sp, rel in rows:
        print(f"{name:<28}{c:>9.1f}{d:>10.2f}{dev:>8}{sp:>9.1f}x{rel:>14.2e}")
    print("parity " + ("ok" if ok else "FAILED") + " (relative difference < 1e-3)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
