"""A model-free screen: does a part's mirror asymmetry see the damage the search misses?

Cans, balls and boxes seen face-on are mirror symmetric about a principal axis of their
silhouette; a chunk off the rim, a foreign body on it, or a stain off the axis breaks that. The
generator's residual misses those on a new batch because the whole instance is new (bench/
RESULTS.md, "Why image scores miss damage"); a new instance of a symmetric product stays
symmetric. This screen measures it before anything is built, by blocked cross-validation (the
folds and purge gap of bench/blocked_cv.py), without training a model:

- each part is read as a crop-to-part model input (Preprocessing(framing="object"), 64 px);
- for each of the two principal axes of its silhouette (through the centroid) the input is
  reflected; a_sil = 1 - IoU(silhouette, reflected silhouette), a_depth = mean |depth - its
  reflection| and a_rgb = mean |RGB - its reflection| over the pixels both cover; each is the
  larger over the two axes (a symmetric part is symmetric about both);
- reference: the fold's training frames (outside the block and its purge gap), median and
  MAD per feature; the score is the largest robust z-score of the three;
- per fold: AUROC of damaged twins (adgan dataset damage on the block) against the block's
  intact parts per defect type, and of the other classes' block parts (class swaps).

    .venv/bin/python bench/symmetry_screen.py ../shared/data/paper-rgbd --out runs/symmetry
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from blocked_cv import blocks, damage_command, run, screen_arguments

FEATURES = ("a_sil", "a_depth", "a_rgb")


def reflect(img: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """`img` (H, W[, C]) mirrored about the line through (cx, cy) at `angle` (radians)."""
    c, s = np.cos(2 * angle), np.sin(2 * angle)
    m = np.array([[c, s], [s, -c]])
    t = np.array([cx, cy]) - m @ np.array([cx, cy])
    a = np.hstack([m, t[:, None]]).astype(np.float64)
    h, w = img.shape[:2]
    return cv2.warpAffine(img, a, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def asymmetry(x: np.ndarray) -> np.ndarray | None:
    """(a_sil, a_depth, a_rgb) of one (4, S, S) model input; None without a part."""
    from agent.scoring.relief import PART_LEVEL
    mask = x[3] > PART_LEVEL
    ys, xs = np.nonzero(mask)
    if len(ys) < 12:
        return None
    cx, cy = xs.mean(), ys.mean()
    cov = np.cov(np.stack([xs - cx, ys - cy]))
    _, vecs = np.linalg.eigh(cov)
    out = np.zeros(3)
    m8 = mask.astype(np.uint8)
    img = np.ascontiguousarray(x.transpose(1, 2, 0))
    for v in vecs.T:
        ang = np.arctan2(v[1], v[0])
        rm = reflect(m8, cx, cy, ang).astype(bool)
        ri = reflect(img, cx, cy, ang)
        both = mask & rm
        union = mask | rm
        a_sil = 1.0 - both.sum() / max(union.sum(), 1)
        if both.sum() < 6:
            a_d = a_c = 1.0
        else:
            a_d = float(np.abs(img[..., 3] - ri[..., 3])[both].mean())
            a_c = float(np.abs(img[..., :3] - ri[..., :3])[both].mean())
        out = np.maximum(out, [a_sil, a_d, a_c])
    return out


def features(folder: Path, frames: tuple[int, int] | None, of=asymmetry) -> dict[int, np.ndarray]:
    """{frame: of(x)} over the folder's parts read as crop-to-part model inputs (64 px); parts with no
    object, or whose `of` is None, left out. (bench/local_relief.py reads its parts the same way.)"""
    from agent.frame import NoObjectError
    from agent.segment.preprocess import Preprocessing, sample_to_input
    from agent.sources.dataset import frame_numbers, read_model_sample
    want = Preprocessing(framing="object", size=64)
    out = {}
    for n in frame_numbers(folder, frames):
        try:
            x = sample_to_input(read_model_sample(folder, n, want))
        except NoObjectError:
            continue
        f = of(x)
        if f is not None:
            out[n] = f
    return out


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(pos > neg), ties half."""
    neg, pos = np.asarray(neg), np.asarray(pos)
    if not len(neg) or not len(pos):
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def zscore(f: np.ndarray, ref: np.ndarray) -> np.ndarray:
    med = np.median(ref, 0)
    mad = 1.4826 * np.median(np.abs(ref - med), 0)
    return (f - med) / np.maximum(mad, 1e-6)


def main(argv=None) -> int:
    a = screen_arguments(__doc__).parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = (int(v) for v in a.frames.split(":"))
    classes = a.classes.split(",")
    data = Path(a.data)
    from calibration.damage import DAMAGE_DEFECTS
    rows = []
    for b0, b1 in blocks(lo, hi, a.folds):
        damaged = out / f"damaged-{b0}-{b1}"
        if not (damaged / "damage.json").exists():
            run(damage_command(str(data), damaged, (b0, b1), a.damage_seed), out / "log.txt", out / "commands.txt")
        block = {c: features(data / c, (b0, b1)) for c in classes}
        for c in classes:
            train = {n: f for n, f in features(data / c, (lo, hi)).items()
                     if not max(lo, b0 - a.purge) <= n < min(hi, b1 + a.purge)}
            ref = np.array(list(train.values()))
            intact = zscore(np.array(list(block[c].values())), ref)
            row = {"fold": f"{b0}:{b1}", "class": c, "n_train": len(ref), "n_intact": len(intact)}
            for name, col in [("score", None)] + [(f, i) for i, f in enumerate(FEATURES)]:
                pick = (lambda z: z.max(1)) if col is None else (lambda z, i=col: z[:, i])
                other = np.concatenate([zscore(np.array(list(block[o].values())), ref) for o in classes if o != c])
                row[f"{name}:swaps"] = auroc(pick(intact), pick(other))
                for d in DAMAGE_DEFECTS:
                    dam = features(damaged / f"{c}_{d}", None)
                    z = zscore(np.array(list(dam.values())), ref)
                    row[f"{name}:{d}"] = auroc(pick(intact), pick(z))
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    (out / "symmetry.json").write_text(json.dumps(rows, indent=1))
    print("\nworst fold per class (score = the largest z of the three; others diagnostics):")
    keys = [k for k in rows[0] if ":" in k]
    for c in classes:
        rs = [r for r in rows if r["class"] == c]
        print(c, " ".join(f"{k}={min(r[k] for r in rs):.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
