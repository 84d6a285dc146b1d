"""Training wall time per epoch on the paper's data, per GAN kind, at paper size and small.

    .venv/bin/python bench/train.py [--data ../shared/data/paper-rgbd] [--threads 2]

One class (cylinder, frames 0:700, 236 samples), the median of --repeats epochs after
one warm-up epoch. A WGAN generator step costs n_critic (5) critic steps, so the table
also gives seconds per generator step, which is what training length is counted in.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from training.data import load_class
from training.train import TrainConfig, Trainer

CONFIGS = [  # (kind, features_g, features_d, batch)
    ("gan", 64, 64, 64), ("wgan", 64, 64, 64), ("wgan-gp", 64, 64, 64),
    ("gan", 32, 32, 32), ("wgan-gp", 32, 32, 64),
    ("gan", 16, 16, 32), ("wgan", 16, 16, 64), ("wgan-gp", 16, 16, 64),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/paper-rgbd")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load_class(a.data, "cylinder", 64, (0, 700))
    print(f"{len(data.frames)} samples, 64 px, {a.threads} threads, median of {a.repeats} epochs")
    print(f"{'kind':<8}{'f_g':>5}{'f_d':>5}{'batch':>6}{'s/epoch':>9}{'G steps/epoch':>14}{'s/G step':>10}")
    for kind, fg, fd, bs in CONFIGS:
        cfg = TrainConfig(data=a.data, cls="cylinder", kind=kind, epochs=1, batch_size=bs, features_g=fg,
                          features_d=fd, frames=(0, 700))
        t = Trainer(cfg, data, tempfile.mkdtemp())
        t.train_epoch()
        ts, g0 = [], t.g_steps
        for _ in range(a.repeats):
            s = time.perf_counter()
            t.train_epoch()
            ts.append(time.perf_counter() - s)
        per_epoch = (t.g_steps - g0) / a.repeats
        med = statistics.median(ts)
        print(f"{kind:<8}{fg:>5}{fd:>5}{bs:>6}{med:>9.2f}{per_epoch:>14.1f}{med / max(per_epoch, 1e-9):>10.2f}")


if __name__ == "__main__":
    main()
