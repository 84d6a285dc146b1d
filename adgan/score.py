"""`adgan score`: score every sample of a folder with a bundle, write path,class,score rows."""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from agent import durable
from agent.scoring.bundle import Bundle
from agent.sources.dataset import parse_frames
from calibration.scoring import SCORER_BACKENDS, make_scorer, score_folder


def cmd_score(a: argparse.Namespace) -> int:
    bundle = Bundle.load(a.bundle)
    scorer = make_scorer(bundle, a.backend, a.seed, a.threads, n_seed=a.n_seed, k=a.k, lr_z=a.lr_z,
                         lr_theta=a.lr_theta)
    out = Path(a.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: name the CSV to write (e.g. {out / 'scores.csv'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, n = time.perf_counter(), 0
    frames = parse_frames(a.frames, allow_step=True)

    def write(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "class", "score"])
            for path, cls, s in score_folder(scorer, bundle, a.samples, frames, not a.quiet):
                w.writerow([path, cls, f"{s:.9g}"])
                n += 1
    # the rows under a name of this run's own, replacing --out whole at the end: an interrupted
    # run leaves the previous file, and two runs writing one file at once each write a whole one
    durable.write_with(out, write, private=True)
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
    q.add_argument("--backend", choices=SCORER_BACKENDS, default="onnxruntime",
                   help="engine: onnxruntime (default), tensorrt (Jetson) or torch (the autograd oracle)")
    q.add_argument("--out", required=True, help="CSV to write")
    q.add_argument("--seed", type=int, default=0, help="seed of the initial latents z (same seed, same scores)")
    q.add_argument("--frames", default=None, help="LO:HI frame numbers (half-open); LO:HI:STEP every STEP-th")
    q.add_argument("--n-seed", type=int, default=None, help="override the bundle's n_seed")
    q.add_argument("--k", type=int, default=None, help="override the bundle's k")
    q.add_argument("--lr-z", type=float, default=None, help="override the bundle's lr_z")
    q.add_argument("--lr-theta", type=float, default=None, help="override the bundle's lr_theta")
    q.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_score)
