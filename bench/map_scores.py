"""Image scores made from the anomaly maps, by blocked cross-validation (issue 15).

The maps |G(z*) - x| see local damage (pixel AUROC 0.90-0.98) where the image score does
not. This asks whether any function of one part's residual map scores damage (and class
swaps) better than the search's loss, on the folds of `bench/blocked_cv.py`: each fold's
bundle (--point) scores every --every-th frame of its block (the class's intact samples,
their damaged twins, the other classes' samples) through the agent's own search; the input
x and the best seed's reconstruction G(z*) are kept (OUT/<class>-f<fold>.npz, reused when
there), and every score of SCORES is computed from them. The table gives, per class and
score, the worst and the mean fold of class swaps and of damage over all defect types, the
lowest defect type, and each defect in the fold where damage is worst.

    .venv/bin/python bench/map_scores.py runs/cv/sphere-object runs/cv/cylinder-object \\
        runs/cv/rectangle-object --point seeds3-k5 --out runs/map-scores

Nothing here is exported: a score that wins would go into the explicit graphs (the loss
graph), the autograd reference and the manifest, like `--score-cells`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from blocked_cv import blocks  # noqa: E402

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (X, Y) (N, 4, S, S) -> (N,)


def fg(x: np.ndarray) -> np.ndarray:
    """(N, S, S) 1 on the sample's own part pixels (fg_input's mask)."""
    return (x[:, 3] > -1.0).astype(np.float32)


def energy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, S, S) squared residual summed over channels, on the part."""
    return (((y - x) ** 2).sum(1) * fg(x)).astype(np.float32)


def mean_pixels(x, y):
    """The per-pixel loss (pool 1) over the part: training.losses.reconstruction_loss fg_input."""
    return energy(x, y).sum((1, 2)) / (np.maximum(fg(x).sum((1, 2)), 1) * x.shape[1])


def _cells(x, y, p):
    m = fg(x)
    d = (y - x) * m[:, None]
    n_, c, h, w = d.shape
    a = d.reshape(n_, c, h // p, p, w // p, p).sum((3, 5))
    n = np.maximum(m.reshape(n_, h // p, p, w // p, p).sum((2, 4)), 1)[:, None]
    return a, n, m


def pooled(p: int) -> Score:
    """The search's pooled loss on p x p cells (the default score, on the best seed)."""
    def f(x, y):
        a, n, m = _cells(x, y, p)
        return (a * a / n).sum((1, 2, 3)) / (np.maximum(m.sum((1, 2)), 1) * x.shape[1])
    return f


def top_cells(p: int, k: int) -> Score:
    """The mean of the k p x p cells whose mean residual differs most (`--score-cells k`)."""
    def f(x, y):
        a, n, _ = _cells(x, y, p)
        e = ((a / n) ** 2).mean(1).reshape(len(x), -1)
        return np.sort(e, 1)[:, -k:].mean(1)
    return f


def _erode(m, r):
    k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    return np.stack([cv2.erode(a.astype(np.uint8), k) for a in m]).astype(np.float32)


def box_max(w: int, erode: int = 0) -> Score:
    """The largest w x w sliding-window mean of the energy, on the part (eroded by `erode` px:
    the outline left out)."""
    def f(x, y):
        b = np.stack([cv2.blur(a, (w, w)) for a in energy(x, y)])
        m = _erode(fg(x), erode) if erode else fg(x)
        return (b * m).reshape(len(x), -1).max(1)
    return f


def blob(s1: float, s2: float, erode: int = 0) -> Score:
    """Centre against surround: the largest difference of Gaussians (s1, s2 px) of the energy."""
    def f(x, y):
        e = energy(x, y)
        d = np.stack([cv2.GaussianBlur(a, (0, 0), s1) - cv2.GaussianBlur(a, (0, 0), s2) for a in e])
        m = _erode(fg(x), erode) if erode else fg(x)
        return (d * m).reshape(len(x), -1).max(1)
    return f


def complexity(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    """How hard a part is to reconstruct for any model: the mean squared difference, over the part's
    pixels and the 4 channels, between x and x blurred by a Gaussian of `sigma` px inside the part
    (normalised convolution: the background does not bleed in, so the outline is not detail).
    A plain can is simple and a ball with printing is not; a reconstruction score ranks simple parts
    of another class below detailed ones of its own (the input-complexity bias of likelihoods, Serra
    et al. 2020). Dividing by this asks how much worse G does than detail alone explains."""
    def f(x):
        m = fg(x)
        blur = lambda a: cv2.GaussianBlur(a, (0, 0), sigma)  # noqa: E731
        b = np.stack([np.stack([blur(c * mi) for c in xi]) / np.maximum(blur(mi), 1e-3) for xi, mi in zip(x, m)])
        return (((x - b) ** 2).sum(1) * m).sum((1, 2)) / (np.maximum(m.sum((1, 2)), 1) * x.shape[1])
    return f


def relative(score: Score, sigma: float) -> Score:
    """`score` divided by the part's own complexity (`complexity`)."""
    c = complexity(sigma)
    return lambda x, y: score(x, y) / np.maximum(c(x), 1e-6)


def on_channels(score: Score, chans: tuple[int, ...]) -> Score:
    """`score` of the residual in `chans` only (0-2 RGB, 3 depth): G(z*) is taken as x elsewhere.
    Depth is the part's shape, min-max normalised per part, so it does not carry the instance's
    colour or printing; four of the five defects change it (all but the stain)."""
    keep = np.zeros(4, bool)
    keep[list(chans)] = True

    def f(x, y):
        return score(x, np.where(keep[None, :, None, None], y, x))
    return f


def silhouette(y: np.ndarray) -> np.ndarray:
    """(N, S, S) 1 where G drew a part: any channel above the background's -1 by a margin (the
    nearest point of a part has depth 1 of 255, about -0.99, so depth alone cannot tell it)."""
    return (y.max(1) > -0.9).astype(np.float32)


def outline_mismatch(w: int = 0) -> Score:
    """Where x's part and G's drawn part disagree (either way), over the part's area; with w, the
    largest w x w window of the disagreement. The part's own pixels (the search's loss) never see a
    bite taken out of the rim: the bite is background in x."""
    def f(x, y):
        d = np.abs(fg(x) - silhouette(y))
        if not w:
            return d.sum((1, 2)) / np.maximum(fg(x).sum((1, 2)), 1)
        return np.stack([cv2.blur(a, (w, w)) for a in d]).reshape(len(x), -1).max(1)
    return f


def depth_gradient(erode: int = 1, w: int = 0) -> Score:
    """Squared difference of the depth's Sobel gradients (the surface's slope) of x and G(z*), inside
    the part eroded by `erode` px (the outline's step left out); mean, or the largest w x w window.
    A dent or a pit changes the slope where the depth's level may still be within G's error."""
    def grad(d):
        return np.stack([np.stack([cv2.Sobel(a, cv2.CV_32F, 1, 0), cv2.Sobel(a, cv2.CV_32F, 0, 1)]) for a in d])

    def f(x, y):
        m = _erode(fg(x), erode)
        e = ((grad(y[:, 3]) - grad(x[:, 3])) ** 2).sum(1) * m
        if not w:
            return e.sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)
        return (np.stack([cv2.blur(a, (w, w)) for a in e]) * m).reshape(len(x), -1).max(1)
    return f


def union_pixels(x, y):
    """The per-pixel loss where x's part or G's part (its depth above -0.9) is: the search's `fg`
    loss (training.losses.reconstruction_loss), here on the residual of a search that fitted x's
    own pixels."""
    m = np.maximum(fg(x), (y[:, 3] > -0.9).astype(np.float32))
    return (((y - x) ** 2).sum(1) * m).sum((1, 2)) / (np.maximum(m.sum((1, 2)), 1) * x.shape[1])


RGB, DEPTH = (0, 1, 2), (3,)

SCORES: dict[str, Score | None] = {
    "bundle": None,  # the bundle's own score: the search's loss, mean over seeds
    "pixels": mean_pixels, "pool2": pooled(2), "pool4": pooled(4),
    "top4of4": top_cells(4, 4), "top1of2": top_cells(2, 1),
    "box3": box_max(3), "box5": box_max(5), "box5-er1": box_max(5, 1),
    "dog1-4": blob(1, 4), "dog1.5-6": blob(1.5, 6), "dog1-4-er1": blob(1, 4, 1),
    "box5/pixels": lambda x, y: box_max(5)(x, y) / np.maximum(mean_pixels(x, y), 1e-6),
    "pool4/detail1": relative(pooled(4), 1.0), "pool4/detail2": relative(pooled(4), 2.0),
    "pixels/detail1": relative(mean_pixels, 1.0), "box5-er1/detail1": relative(box_max(5, 1), 1.0),
    **{f"{n}-{cn}": on_channels(fn, ch) for cn, ch in (("rgb", RGB), ("depth", DEPTH))
       for n, fn in (("pixels", mean_pixels), ("pool4", pooled(4)), ("top4of4", top_cells(4, 4)),
                     ("box5-er1", box_max(5, 1)))},
    "pixels-fg": union_pixels, "outline": outline_mismatch(), "outline-box5": outline_mismatch(5),
    "dgrad-er1": depth_gradient(1), "dgrad-er1-box5": depth_gradient(1, 5),
}


def cv_folds(cv_dirs: list[Path], point: str, lo: int, hi: int, folds: int):
    """(cv_dir, class, fold, block) for every class with a bundle-POINT in each blocked_cv.py folder."""
    for cv_dir in cv_dirs:
        classes = sorted({p.name for p in (cv_dir / "fold0").iterdir() if (p / f"bundle-{point}").is_dir()})
        if not classes:
            raise SystemExit(f"{cv_dir}/fold0 has no <class>/bundle-{point}")
        for cls in classes:
            for i, block in enumerate(blocks(lo, hi, folds)):
                yield cv_dir, cls, i, block


def dump_path(out: Path, cls: str, fold: int, damaged_name: str = "damaged") -> Path:
    """Where dump keeps a fold's samples: named by the damaged folder too, unless it is blocked_cv.py's own,
    so that dumps of other damage in the same OUT are never taken for each other."""
    return out / (f"{cls}-f{fold}.npz" if damaged_name == "damaged" else f"{cls}-f{fold}-{damaged_name}.npz")


def model_inputs(folder: Path, frames: list[int], bundle) -> list[np.ndarray]:
    """The samples `frames` of a sample folder as the bundle's model inputs (its reframing and size)."""
    from agent.segment.preprocess import reframe, sample_to_input
    from agent.sources.dataset import check_preprocessing, read_sample
    rec = check_preprocessing(folder, bundle.preprocessing)
    return [sample_to_input(reframe(read_sample(folder, n), rec, bundle.preprocessing), bundle.size) for n in frames]


def dump(cv_dir: Path, cls: str, fold: int, block: tuple[int, int], point: str, every: int, out: Path,
         threads: int, damaged_name: str = "damaged") -> Path:
    """Score the fold's samples with its bundle; keep x, G(z*), the score and the frame number per sample."""
    from agent.scoring.bundle import Bundle
    from agent.sources.dataset import class_folders, frame_numbers
    from calibration.damage_eval import damage_folders
    from calibration.scoring import make_scorer
    path = dump_path(out, cls, fold, damaged_name)
    if path.exists():
        return path
    root = cv_dir / f"fold{fold}"
    b = Bundle.load(root / cls / f"bundle-{point}")
    scorer = make_scorer(b, "onnxruntime", seed=0, threads=threads)
    damaged = root / damaged_name
    groups = {"intact": damaged / cls, **damage_folders(damaged, cls),
              **{f"swap_{p.name}": p for p in class_folders(damaged) if "_" not in p.name and p.name != cls}}
    rec = {}
    for name, folder in groups.items():
        xs, ys, ss = [], [], []
        ns = frame_numbers(folder, (block[0], block[1], every))
        for x in model_inputs(folder, ns, b):
            r = scorer.score(x)
            xs.append(x), ys.append(r.reconstruction), ss.append(r.score)
        rec[name] = (np.stack(xs), np.stack(ys), np.array(ss), np.array(ns))
        print(f"{cls} fold {fold} {name}: {len(ss)}", flush=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **{f"{g}.{k}": v for g, t in rec.items() for k, v in zip("xysn", t)})
    tmp.replace(path)
    return path


def auc(neg, pos) -> float:
    from calibration.metrics import auc as _auc
    return float(_auc(np.asarray(neg), np.asarray(pos)))


def load_dump(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """A fold's dump (see dump) as {group: {"x", "y", "s", "n": array}}."""
    z = np.load(path)
    g: dict[str, dict[str, np.ndarray]] = {}
    for k in z.files:
        a, b = k.split(".")
        g.setdefault(a, {})[b] = z[k]
    return g


def job_aucs(sc: dict[str, np.ndarray]) -> tuple[float, float, dict[str, float]]:
    """One score per group ("intact", "swap_<class>"..., one per defect): (class-swap AUROC, damage
    AUROC over all defects, AUROC per defect), each against the intact parts."""
    defects = [k for k in sc if k != "intact" and not k.startswith("swap_")]
    swap = auc(sc["intact"], np.concatenate([sc[k] for k in sc if k.startswith("swap_")]))
    damage = auc(sc["intact"], np.concatenate([sc[d] for d in defects]))
    return swap, damage, {d: auc(sc["intact"], sc[d]) for d in defects}


def fold_rows(path: Path, names: list[str]) -> dict[str, tuple[float, float, dict[str, float]]]:
    g = load_dump(path)
    out = {}
    for name in names:
        fn = SCORES[name]
        out[name] = job_aucs({k: (v["s"] if fn is None else fn(v["x"], v["y"])) for k, v in g.items()})
    return out


def table(results: dict[tuple[str, str], list]) -> list[str]:
    lines = ["| class | score | class swaps worst (mean) | damage worst (mean) | lowest defect | per defect, "
             "worst damage fold |", "|---|---|---|---|---|---|"]
    for (cls, name), v in results.items():
        sw, dm = [r[0] for r in v], [r[1] for r in v]
        w = int(np.argmin(dm))
        per = ", ".join(f"{d} {a:.2f}" for d, a in sorted(v[w][2].items()))
        lines.append(f"| {cls} | {name} | {min(sw):.3f} ({np.mean(sw):.3f}) | {min(dm):.3f} ({np.mean(dm):.3f}) | "
                     f"{min(min(r[2].values()) for r in v):.3f} | {per} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cv", nargs="+", type=Path, help="bench/blocked_cv.py output folders (one class each)")
    ap.add_argument("--point", default="k19", help="the bundle of each fold: bundle-POINT (default k19, adgan export's search)")
    ap.add_argument("--frames", default="0:1000", help="the frame range the folds cut (default 0:1000)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--every", type=int, default=3, help="every N-th frame of a block (default 3)")
    ap.add_argument("--scores", default=",".join(SCORES), help="comma-separated from: " + ", ".join(SCORES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    names = [s for s in a.scores.split(",") if s]
    bad = [s for s in names if s not in SCORES]
    if bad:
        raise SystemExit(f"unknown score(s) {', '.join(bad)}; choose from {', '.join(SCORES)}")
    lo, hi = (int(v) for v in a.frames.split(":"))
    a.out.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], list] = {}
    for cv_dir, cls, i, block in cv_folds(a.cv, a.point, lo, hi, a.folds):
        rows = fold_rows(dump(cv_dir, cls, i, block, a.point, a.every, a.out, a.threads), names)
        for name, r in rows.items():
            results.setdefault((cls, name), []).append(r)
    lines = table(results)
    text = "\n".join([f"map scores of bundle-{a.point}, every {a.every} frame(s), {len(names)} scores compared", "",
                      *lines]) + "\n"
    (a.out / "map_scores.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
