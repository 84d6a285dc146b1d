"""`adgan score`: score every sample of a folder with a bundle, write path,class,score rows."""
from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

from tqdm import tqdm

from agent.scoring.bundle import Bundle
from agent.segment.preprocess import sample_to_input
from agent.sources.folder import (check_preprocessing, class_folders, frame_numbers, parse_frames, read_model_sample,
                                  rgb_path)

log = logging.getLogger(__name__)


def engine_settings(backend: str, threads: int = 0, fp16: bool = False):
    """The agent's settings object of a named backend (None for the torch reference)."""
    if backend == "torch":
        return None
    if backend == "onnxruntime":
        from agent.scoring.onnxruntime import OnnxRuntimeSettings
        return OnnxRuntimeSettings(threads=threads)
    if backend == "tensorrt":
        from agent.scoring.tensorrt import TensorRTSettings
        return TensorRTSettings(fp16=fp16)
    raise ValueError(f"unknown backend {backend!r}")


def engine_id(backend: str, fp16: bool = False) -> str:
    """The engine a score comes from, as thresholds record it (agent settings' `engine`)."""
    s = engine_settings(backend, fp16=fp16)
    return "torch" if s is None else s.engine


def make_scorer(bundle: Bundle, backend: str, seed: int = 0, threads: int = 0, fp16: bool = False, **overrides):
    """An object with .score(x) -> ScoreResult for the named backend."""
    if backend == "torch":
        from export.reference import ReferenceSearcher
        return ReferenceSearcher(bundle, seed, **overrides)
    from agent.scoring.search import Searcher, open_backend
    settings = engine_settings(backend, threads, fp16)
    return Searcher(bundle, open_backend(bundle, settings), seed, **overrides)


def score_folder(scorer, bundle: Bundle, samples: str | Path, frames=None, progress: bool = True):
    """Yield (path, class, score) for every sample under a class folder or dataset root."""
    folders = class_folders(samples)
    todo = []
    for folder in folders:
        rec = check_preprocessing(folder, bundle.preprocessing)
        todo += [(folder, n, rec) for n in frame_numbers(folder, frames)]
    if not todo:
        raise ValueError(f"{samples}: no samples to score" + (f" in frames {frames[0]}:{frames[1]}" if frames else ""))
    for folder, n, rec in tqdm(todo, desc="score", unit="sample", disable=not progress):
        x = sample_to_input(read_model_sample(folder, n, bundle.preprocessing, rec), bundle.size)
        yield str(rgb_path(folder, n)), folder.name, scorer.score(x).score


def cmd_score(a: argparse.Namespace) -> int:
    bundle = Bundle.load(a.bundle)
    scorer = make_scorer(bundle, a.backend, a.seed, a.threads, n_seed=a.n_seed, k=a.k, lr_z=a.lr_z,
                         lr_theta=a.lr_theta)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, n = time.perf_counter(), 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "class", "score"])
        for path, cls, s in score_folder(scorer, bundle, a.samples, parse_frames(a.frames), not a.quiet):
            w.writerow([path, cls, f"{s:.9g}"])
            n += 1
    tmp.replace(out)
    dt = time.perf_counter() - t0
    print(f"scored {n} samples with {bundle.describe()} on {a.backend} in {dt:.1f} s "
          f"({1e3 * dt / max(n, 1):.0f} ms each) -> {out}")
    return 0


def add_parser(sub) -> None:
    q = sub.add_parser("score", help="score samples with a bundle (Algorithm 1) and write scores.csv",
                       description="Score every sample of a class folder (rgb/ + depth/) or of a dataset root "
                                   "(class folders) with a bundle, and write path,class,score rows. Higher scores "
                                   "are more anomalous.")
    q.add_argument("bundle", help="bundle folder")
    q.add_argument("samples", help="class folder or dataset root (the paper's layout or ours)")
    q.add_argument("--backend", choices=("onnxruntime", "tensorrt", "torch"), default="onnxruntime",
                   help="engine: onnxruntime (default), tensorrt (Jetson) or torch (the autograd reference)")
    q.add_argument("--out", required=True, help="CSV to write")
    q.add_argument("--seed", type=int, default=0, help="seed of the initial latents z (same seed, same scores)")
    q.add_argument("--frames", default=None, help="LO:HI frame numbers (half-open)")
    q.add_argument("--n-seed", type=int, default=None, help="override the bundle's n_seed")
    q.add_argument("--k", type=int, default=None, help="override the bundle's k")
    q.add_argument("--lr-z", type=float, default=None, help="override the bundle's lr_z")
    q.add_argument("--lr-theta", type=float, default=None, help="override the bundle's lr_theta")
    q.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_score)
