"""A patch memory bank, a feasibility study on blocked cross-validation (issue 15).

No generator score has caught stains, chunks or foreign bodies on new instances of the paper's
boxes and cylinders. This measures a different kind of model, PatchCore's idea (Roth et al.
2022) on raw pixels (bench/feature_bank.py does the same with pretrained features): keep every
P x P patch (stride P/2, the 4 channels of the 64 x 64 input, or --channels rgb or depth) of every
training part, and score a part by its least familiar patch: the largest, over its patches, of the
mean squared difference to the nearest patch in the bank, at any place in any training part. A new
intact instance is made of familiar local patches (surfaces, rims, print strokes); a bite out of the rim, a hole, a
foreign body or a stain's edge may not be. Only patches holding part pixels (depth above the
background's -1) are kept and scored.

Each fold's bank is its training frames (--frames minus the block and --purge frames on
each side, as bench/blocked_cv.py trains), through the fold bundle's own preprocessing. The
test samples are bench/map_scores.py's dumps (map_scores.dump_path, reused when there),
so `bundle` (the fold bundle's own score) is the baseline on the very same inputs. `combinedP`
(exploratory: conceived after bankP alone was seen) is the larger of the two, each put on the
scale of the fold's training parts (see memory_rows). The bank, the folds and the table are
shared with bench/feature_bank.py (memory_rows, fold_inputs, write_table).

    .venv/bin/python bench/patch_bank.py runs/cv/sphere-e300 runs/cv/cyl-e300 runs/cv/rectangle-e300 \\
        --point def --patch 8,4 --out runs/enrollment

Nothing here ships: it says whether a memory of patches is worth building.
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from map_scores import cv_folds, dump, job_aucs, load_dump, model_inputs, table  # noqa: E402


CHANNELS = {"rgbd": (0, 1, 2, 3), "rgb": (0, 1, 2), "depth": (3,)}


def patches(x: np.ndarray, p: int, chans: tuple[int, ...] = CHANNELS["rgbd"]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4, H, W) -> (N, L, len(chans)*p*p) patches of `chans` at stride p/2 and (N, L) whether each
    holds a part pixel (depth above the background's -1)."""
    s = p // 2
    n = len(x)
    win = np.lib.stride_tricks.sliding_window_view(x, (p, p), axis=(2, 3))[:, :, ::s, ::s]  # N C Ly Lx p p
    ly, lx = win.shape[2:4]
    part = (win[:, 3] > -1.0).any((-2, -1)).reshape(n, ly * lx)
    flat = win[:, list(chans)].transpose(0, 2, 3, 1, 4, 5).reshape(n, ly * lx, len(chans) * p * p)
    return np.ascontiguousarray(flat, dtype=np.float32), part


def nearest(q: np.ndarray, bank: np.ndarray, chunk: int = 2048, keep: np.ndarray | None = None) -> np.ndarray:
    """(M,) the mean squared difference of each row of q to its nearest row of bank (of bank[keep])."""
    bb = (bank * bank).sum(1)
    if keep is not None:
        bb = np.where(keep, bb, np.inf)
    out = np.empty(len(q), np.float32)
    for i in range(0, len(q), chunk):
        a = q[i:i + chunk]
        d = (a * a).sum(1)[:, None] + bb[None, :] - 2.0 * (a @ bank.T)
        out[i:i + chunk] = np.maximum(d.min(1), 0.0)
    return out / q.shape[1]


Describe = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # x -> (N, L, D) descriptors, (N, L) part


def least_familiar(f: np.ndarray, part: np.ndarray, bank: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """(N,) each image's least familiar part location (0 for an image without part pixels), given its
    descriptors f (N, L, D) and which locations hold the part (N, L)."""
    d = np.zeros(part.shape, np.float32)
    d[part] = nearest(f[part], bank, keep=keep)
    return d.max(1)


def bank_scores(x: np.ndarray, bank: np.ndarray, p: int, keep: np.ndarray | None = None,
                chans: tuple[int, ...] = CHANNELS["rgbd"]) -> np.ndarray:
    """(N,) each image's least familiar part patch (0 for an image without part pixels)."""
    return least_familiar(*patches(x, p, chans), bank, keep)


def level(v: np.ndarray) -> tuple[float, float]:
    """(median, p90 - median): a score's level and spread over a station's training parts."""
    m = float(np.median(v))
    return m, max(float(np.percentile(v, 90)) - m, 1e-9)


def train_inputs(cv_dir: Path, cls: str, fold: int, block: tuple[int, int], point: str, data: Path,
                 frames: tuple[int, int], purge: int, out: Path) -> dict[str, np.ndarray]:
    """The fold's training parts of `cls` through its bundle's preprocessing: x, their frame numbers n,
    and s, the bundle's score of every 3rd of them (cached in OUT)."""
    path = out / f"{cls}-f{fold}-train.npz"
    if path.exists():
        return dict(np.load(path))
    from agent.scoring.bundle import Bundle
    from agent.sources.dataset import frame_numbers
    b = Bundle.load(cv_dir / f"fold{fold}" / cls / f"bundle-{point}")
    folder = data / cls
    lo, hi = max(frames[0], block[0] - purge), min(frames[1], block[1] + purge)
    ns = [n for n in frame_numbers(folder, frames) if not lo <= n < hi]
    x = np.stack(model_inputs(folder, ns, b))
    # the bundle's own score on every 3rd training part: its level, as a station calibrates at training
    from calibration.scoring import make_scorer
    scorer = make_scorer(b, "onnxruntime", seed=0, threads=1)
    s = np.array([scorer.score(xi).score for xi in x[::3]])
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, x=x, n=np.array(ns), s=s)
    tmp.replace(path)
    return dict(np.load(path))


def memory_scores(g: dict[str, dict[str, np.ndarray]], train: dict[str, np.ndarray], describe: Describe,
                  gap: int = 20) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A memory bank of every part location of the training parts, as `describe` sees them: the
    least-familiar score of every group of the dump, and of every 3rd training part against the bank
    without the parts within `gap` frames of it (a stand-in for a new instance)."""
    f, part = describe(train["x"])
    bank = f[part]
    owner = np.broadcast_to(train["n"][:, None], part.shape)[part]  # each bank row's frame
    scores = {k: least_familiar(*describe(v["x"]), bank) for k, v in g.items()}
    own = np.array([least_familiar(f[j:j + 1], part[j:j + 1], bank, keep=np.abs(owner - n) > gap)[0]
                    for j, n in zip(range(0, len(f), 3), train["n"][::3])])
    return scores, own


def memory_rows(g: dict[str, dict[str, np.ndarray]], train: dict[str, np.ndarray],
                arms: list[tuple[str, str, Describe]], gap: int = 20,
                post: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, tuple[float, float, dict[str, float]]]:
    """Per score: (class-swap AUROC, damage AUROC over all defects, per-defect AUROC). `arms`: (name,
    combined name, describe) of each memory bank; `post` maps its scores (np.sqrt: Euclidean, up to a
    factor). A combined score is the larger of the bundle's score and the arm's, each as (v - median) /
    (p90 - median) over every 3rd training part (the arm's: see memory_scores; the bundle's: as scored,
    though its generator saw them)."""
    scores = {"bundle": {k: v["s"] for k, v in g.items()}}
    ms, qs = level(train["s"])
    transform = post or (lambda v: v)
    for name, combined, describe in arms:
        got, own = memory_scores(g, train, describe, gap)
        got, own = {k: transform(v) for k, v in got.items()}, transform(own)
        mb, qb = level(own)
        scores[name] = got
        scores[combined] = {k: np.maximum((scores["bundle"][k] - ms) / qs, (b - mb) / qb) for k, b in got.items()}
    return {name: job_aucs(s) for name, s in scores.items()}


def fold_rows(g: dict[str, dict[str, np.ndarray]], train: dict[str, np.ndarray], sizes: list[int],
              gap: int = 20, channels: str = "rgbd") -> dict[str, tuple[float, float, dict[str, float]]]:
    """memory_rows of a bank of raw P x P patches of `channels` per patch size P (bankP, combinedP)."""
    chans, tag = CHANNELS[channels], "" if channels == "rgbd" else f"-{channels}"
    arms = [(f"bank{p}{tag}", f"combined{p}{tag}", partial(patches, p=p, chans=chans)) for p in sizes]
    return memory_rows(g, train, arms, gap)


def add_fold_args(ap: argparse.ArgumentParser) -> None:
    """The folds, dumps and training parts' options a memory-bank study shares (fold_inputs)."""
    ap.add_argument("cv", nargs="+", type=Path, help="bench/blocked_cv.py output folders (one class each)")
    ap.add_argument("--point", default="def", help="the bundle of each fold: bundle-POINT (default def)")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "paper-rgbd",
                    help="the samples the folds were cut from (default ../shared/data/paper-rgbd)")
    ap.add_argument("--frames", default="0:1000", help="the frame range the folds cut (default 0:1000)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--purge", type=int, default=20, help="as bench/blocked_cv.py trained (default 20)")
    ap.add_argument("--every", type=int, default=3, help="every N-th frame of a block (default 3)")
    ap.add_argument("--damaged", default="damaged",
                    help="each fold's damaged folder's name (default damaged)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)


def fold_inputs(a: argparse.Namespace) -> Iterator[tuple[str, int, dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]]:
    """(class, fold, the fold's dump, its training parts) of every fold of a's folders, dumped and
    cached in a.out."""
    lo, hi = (int(v) for v in a.frames.split(":"))
    a.out.mkdir(parents=True, exist_ok=True)
    for cv_dir, cls, i, block in cv_folds(a.cv, a.point, lo, hi, a.folds):
        path = dump(cv_dir, cls, i, block, a.point, a.every, a.out, a.threads, a.damaged)
        train = train_inputs(cv_dir, cls, i, block, a.point, a.data, (lo, hi), a.purge, a.out)
        yield cls, i, load_dump(path), train


def record(results: dict[tuple[str, str], list], cls: str, fold: int,
           rows: dict[str, tuple[float, float, dict[str, float]]]) -> None:
    """Keep a fold's rows for the table and print them."""
    for score, r in rows.items():
        results.setdefault((cls, score), []).append(r)
        print(f"{cls} fold {fold} {score}: swaps {r[0]:.3f} damage {r[1]:.3f} "
              + " ".join(f"{d} {v:.2f}" for d, v in sorted(r[2].items())), flush=True)


def write_table(path: Path, results: dict[tuple[str, str], list], title: str) -> None:
    """The folds' table (worst and mean per class and score) under a title, to path and stdout."""
    text = "\n".join([title, "", *table(results)]) + "\n"
    path.write_text(text)
    print(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fold_args(ap)
    ap.add_argument("--patch", default="8", help="patch sizes, comma-separated, even (default 8)")
    ap.add_argument("--channels", choices=tuple(CHANNELS), default="rgbd",
                    help="the input channels a patch holds (default rgbd; depth: the part's shape only)")
    a = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in a.patch.split(",") if s]
    except ValueError:
        sizes = []
    if not sizes or any(p < 2 or p % 2 for p in sizes):
        raise SystemExit(f"--patch takes even sizes of at least 2, got {a.patch!r}")
    results: dict[tuple[str, str], list] = {}
    for cls, i, g, train in fold_inputs(a):
        t0 = time.time()
        record(results, cls, i, fold_rows(g, train, sizes, a.purge, a.channels))
        print(f"{cls} fold {i}: {len(train['x'])} training parts, {time.time() - t0:.0f} s", flush=True)
    write_table(a.out / f"patch-bank-{a.damaged}-{a.channels}.md", results,
                f"patch bank against bundle-{a.point}, every {a.every} frame(s) of a block, damage "
                f"'{a.damaged}', patches {a.patch} of {a.channels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
