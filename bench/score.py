"""Scoring speed: the autograd oracle vs the ONNX Runtime scorer, per theta scope.

One process, methods interleaved, medians over repeats. For each model size (the paper's
features_g 64 and a small 16) it prints ms per score (n_seed 3, k 19, the paper's
Algorithm 1), the speed-up over the reference, the achieved GFLOP/s (analytic count of
the convolutions: forward, input gradient, weight gradient where theta adapts) and that
as a fraction of a large float32 matmul measured in the same run. It also times theta
scope `all` with the seeds batched into grouped convolutions against a loop of one-seed
calls.

    .venv/bin/python bench/score.py [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agent.scoring.bundle import Bundle, SearchDefaults
from agent.scoring.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeSettings
from agent.scoring.search import Searcher
from agent.segment.preprocess import Preprocessing
from export.bundle import write_generator_bundle
from export.graphs import layers_of
from export.autograd import AutogradSearcher
from training.model import Architecture, Generator


def conv_macs(arch: Architecture) -> list[int]:
    """Multiply-accumulates of each ConvTranspose for one seed."""
    out, hw = [], 1
    for i, l in enumerate(layers_of(arch)):
        out.append(l.cin * l.cout * 16 * hw * hw)
        hw = 4 if i == 0 else hw * 2
    return out


def flops_per_score(arch: Architecture, scope: str, n_seed: int, k: int) -> float:
    macs = sum(conv_macs(arch))
    per_step = 2 * macs * (1 + 1 + (1 if scope == "all" else 0))  # forward, dL/dh, dL/dW
    return n_seed * (k * per_step + 2 * macs)


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def make_generator(features_g: int) -> Generator:
    torch.manual_seed(0)
    g = Generator(Architecture(size=64, features_g=features_g))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    return g.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="64,16", help="features_g values to measure")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    info = {"class": "bench", "kind": "gan", "preprocessing": Preprocessing().to_dict()}
    x = np.full((4, 64, 64), -1.0, np.float32)
    x[:, 24:40, 20:44] = 0.3
    peak = matmul_gflops()
    print(f"threads {a.threads}; float32 2048^3 matmul: {peak:.1f} GFLOP/s; n_seed 3, k 19; "
          f"medians of {a.repeats} interleaved repeats")
    print(f"{'features_g':>10} {'method':<34}{'ms/score':>10}{'x ref':>8}{'GFLOP/s':>9}{'of matmul':>10}")
    for fg in (int(v) for v in a.sizes.split(",")):
        g = make_generator(fg)
        methods = {}
        for scope in ("all", "bn", "none"):
            for batch in ((3, 1) if scope == "all" else (3,)):
                p = tmp / f"{fg}-{scope}-{batch}"
                write_generator_bundle(g, p, SearchDefaults(theta_scope=scope, seeds_per_call=batch), info)
                b = Bundle.load(p)
                be = OnnxRuntimeBackend(b, OnnxRuntimeSettings(threads=a.threads))
                be.warmup(b)
                name = f"onnxruntime {scope}" + (" (loop of 1-seed calls)" if batch == 1 else "")
                methods[name] = (Searcher(b, be), scope)
                if batch == 3:
                    methods[f"reference {scope}"] = (AutogradSearcher(b), scope)
        times: dict[str, list[float]] = {m: [] for m in methods}
        for m, (s, _) in methods.items():
            s.score(x)  # warm-up
        for _ in range(a.repeats):
            for m, (s, _) in methods.items():
                t = time.perf_counter()
                s.score(x)
                times[m].append(time.perf_counter() - t)
        for m, (s, scope) in methods.items():
            med = statistics.median(times[m])
            ref = statistics.median(times[f"reference {scope}"])
            gf = flops_per_score(g.arch, scope, 3, 19) / med / 1e9
            print(f"{fg:>10} {m:<34}{med * 1e3:>10.1f}{ref / med:>8.2f}{gf:>9.1f}{gf / peak:>10.1%}")


if __name__ == "__main__":
    main()
