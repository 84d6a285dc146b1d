"""Quick held-out check of generators trained on the paper's data: AUROC per class.

Train frames 0:700, evaluate frames 700:1000 of all three classes: a class's own samples
are normal, the other two classes anomalous (the paper's protocol). Scores come from the
bundles through ONNX Runtime, as the device would compute them. The full evaluation
(Table 2, figures, thresholds) belongs to `adgan evaluate`; this is the sanity check.

    .venv/bin/python bench/paper_quick_auc.py RUN_DIR_PATTERN [--scopes none] [--losses mse,fg,fg_input]
        [--fg-thresholds=-0.9,-0.5] [--z-inits random,encoder] [--k 19,40] [--depth-weights 1,3] [--pools 1,4,8]
        [--frames 700:1000]

Every option taking a comma list adds an axis; each combination is one row. Choose
hyperparameters on frames held out from training (e.g. generators trained on 0:600,
--frames 600:700), not on 700:1000.
e.g. bench/paper_quick_auc.py 'runs/paper-gan-{cls}'
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from calibration.scoring import make_scorer
from agent.scoring.bundle import Bundle, SearchDefaults
from agent.segment.preprocess import sample_to_input
from agent.sources.dataset import iter_samples
from calibration.metrics import auc as auroc
from export.bundle import write_bundle

CLASSES = ("rectangle", "cylinder", "sphere")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", help="run folder pattern with {cls}")
    ap.add_argument("--data", default="../shared/data/paper-rgbd")
    ap.add_argument("--frames", default="700:1000")
    ap.add_argument("--classes", default=",".join(CLASSES), help="comma list: the classes taken as normal in turn")
    ap.add_argument("--scopes", default="none")
    ap.add_argument("--losses", default="mse,fg")
    ap.add_argument("--k", default="19", help="comma list of Adam steps")
    ap.add_argument("--depth-weights", default="1", help="comma list of depth-channel weights")
    ap.add_argument("--pools", default="1", help="comma list of cell sizes of the loss (1: per pixel)")
    ap.add_argument("--n-seeds", default="3", help="comma list of seeds per sample")
    ap.add_argument("--z-noises", default="0", help="comma list: with the encoder start, E(x) + this * N(0, I)")
    ap.add_argument("--fg-thresholds", default="-0.9", help="comma list: G(z) depth above this is foreground")
    ap.add_argument("--z-inits", default="random", help="comma list of random, encoder (adgan train-encoder)")
    a = ap.parse_args()
    lo, hi = (int(v) for v in a.frames.split(":"))
    tests = [(c, sample_to_input(s)) for c, _, s in iter_samples(a.data, (lo, hi))]
    labels = np.array([c for c, _ in tests])
    print(f"{len(tests)} held-out samples (frames {a.frames}); AUROC with each class as normal")
    normal = a.classes.split(",")
    print(f"{'z_init':<8}{'scope':<6}{'loss':<9}{'fg_thr':>7}{'k':>4}{'d_w':>5}{'pool':>5}{'seeds':>6}{'noise':>6}" + "".join(f"{c:>11}" for c in normal)
          + f"{'mean':>8}{'ms/score':>10}")
    tmp = Path(tempfile.mkdtemp(prefix="quick-auc-"))
    configs = [(zi, scope, lo, float(t), int(k), float(dw), int(pl), ns, zn) for zi in a.z_inits.split(",")
               for scope in a.scopes.split(",") for lo in a.losses.split(",")
               for t in (a.fg_thresholds.split(",") if lo == "fg" else ["-0.9"])
               for k in a.k.split(",") for dw in a.depth_weights.split(",") for pl in a.pools.split(",")
               for ns in a.n_seeds.split(",") for zn in (a.z_noises.split(",") if zi == "encoder" else ["0"])]
    for z_init, scope, loss, fg_thr, k, dw, pl, ns, zn in configs:
        ns, zn = int(ns), float(zn)
        aucs, t_all, n_all = [], 0.0, 0
        for cls in normal:
            p = tmp / f"{cls}-{z_init}-{scope}-{loss}-{fg_thr}-{k}-{dw}-{pl}-{ns}-{zn}"
            write_bundle(a.runs.format(cls=cls), p, SearchDefaults(theta_scope=scope, loss=loss, k=k,
                                                                   fg_threshold=fg_thr, z_init=z_init,
                                                                   depth_weight=dw, n_seed=ns, seeds_per_call=ns,
                                                                   z_init_noise=zn, pool=pl))
            scorer = make_scorer(Bundle.load(p), "onnxruntime", seed=0)
            t = time.perf_counter()
            scores = np.array([scorer.score(x).score for _, x in tests])
            t_all += time.perf_counter() - t
            n_all += len(tests)
            aucs.append(auroc(scores[labels == cls], scores[labels != cls]))
        print(f"{z_init:<8}{scope:<6}{loss:<9}{fg_thr if loss == 'fg' else '':>7}{k:>4}{dw:>5g}{pl:>5}{ns:>6}{zn:>6g}"
              + "".join(f"{v:>11.3f}" for v in aucs) + f"{np.mean(aucs):>8.3f}{1e3 * t_all / n_all:>10.1f}",
              flush=True)


if __name__ == "__main__":
    main()
