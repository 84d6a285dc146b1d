"""A model-free screen: does the depth's local relief see damage pushed either way?

The relief check (agent/scoring/relief.py) fits a smooth surface to the part's interior and
looks only for surface pushed *away* from the camera: it carries our dents and holes, and a
bump of the same size towards the camera scores at chance (bench/RESULTS.md, "Damage made by
another hand"); a two-sided residual against the fitted surface fails because normal parts lie
in front of it in places. A local reference instead, the depth's median over a k x k window,
follows the part's own shape at scales above k and leaves what is smaller: a bump, a dent, a
hole, a crack. This screen measures it by blocked cross-validation (the folds and purge gap of
bench/blocked_cv.py), without a model:

- each part is read as a crop-to-part model input (Preprocessing(framing="object"), 64 px);
- r = depth - median_k(depth) (8-bit levels) over the relief check's interior (eroded 4 px), with
  `--dropout D` less the pixels D levels or more nearer than their median (depth the camera did not
  measure, mixed into the part by resizing) and 2 px around them;
  three features: the largest 3 x 3 window mean of |r| (`both`), of max(-r, 0) (`nearer`: a
  bump) and of max(r, 0) (`farther`: a dent, a hole);
- reference: the fold's training frames (outside the block and its purge gap), median and MAD
  per feature; the score is the robust z-score;
- per fold: AUROC of damaged twins against the block's intact parts, for `adgan dataset damage`'s
  five defects and bench/other_damage.py's five (both made on the block, seed 7).

    .venv/bin/python bench/local_relief.py ../shared/data/paper-rgbd --out runs/local-relief           # k 7
    .venv/bin/python bench/local_relief.py ../shared/data/paper-rgbd --out runs/local-relief --k 15   # (same damage)
    .venv/bin/python bench/local_relief.py ../shared/data/paper-rgbd --out runs/local-relief --k 15 --dropout 40
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from blocked_cv import blocks, damage_command, run, screen_arguments
from symmetry_screen import auroc, zscore
from symmetry_screen import features as part_features

FEATURES = ("both", "nearer", "farther")
OTHER = ("scratch", "crack", "notch", "bump", "smudge")


def local_relief(x: np.ndarray, k: int = 7, erode: int = 4, dropout: float | None = None) -> np.ndarray | None:
    """(both, nearer, farther) of one (4, S, S) model input; None without an interior. `dropout`:
    pixels more than so many levels nearer than their median (the camera measured nothing there,
    and resizing mixed it into the part) and their 2 px neighbourhood are left out."""
    from agent.scoring.relief import DEPTH, interior
    inside = interior(x[DEPTH], erode, 0.3)
    d8 = np.clip(np.rint((x[DEPTH] + 1) * 127.5), 0, 255).astype(np.uint8)
    r = d8.astype(np.float32) - cv2.medianBlur(d8, k).astype(np.float32)
    if dropout is not None:
        holes = cv2.dilate((r < -dropout).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        inside &= ~holes
    if inside.sum() < 12:
        return None
    out = []
    for part in (np.abs(r), np.maximum(-r, 0), np.maximum(r, 0)):
        w = cv2.blur(np.where(inside, part, 0).astype(np.float32), (3, 3))
        out.append(float(w[inside].max()))
    return np.array(out)


def features(folder: Path, frames: tuple[int, int] | None, k: int = 7, dropout: float | None = None
             ) -> dict[int, np.ndarray]:
    return part_features(folder, frames, lambda x: local_relief(x, k, dropout=dropout))


def main(argv=None) -> int:
    ap = screen_arguments(__doc__)
    ap.add_argument("--k", type=int, default=7, help="the median's window (odd, pixels at 64 px)")
    ap.add_argument("--dropout", type=float, default=None, help="leave out pixels this many levels nearer than "
                    "their median, and their 2 px neighbourhood (depth dropouts)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = (int(v) for v in a.frames.split(":"))
    classes = a.classes.split(",")
    data = Path(a.data)
    from calibration.damage import DAMAGE_DEFECTS
    here = Path(__file__).resolve().parent
    rows = []
    for b0, b1 in blocks(lo, hi, a.folds):
        ours, theirs = out / f"damaged-{b0}-{b1}", out / f"other-{b0}-{b1}"
        if not (ours / "damage.json").exists():
            run(damage_command(str(data), ours, (b0, b1), a.damage_seed), out / "log.txt", out / "commands.txt")
        if not (theirs / "damage.json").exists():
            run([sys.executable, str(here / "other_damage.py"), str(data), "--out", str(theirs),
                 "--frames", f"{b0}:{b1}", "--seed", str(a.damage_seed)], out / "log.txt", out / "commands.txt")
        for c in classes:
            train = {n: f for n, f in features(data / c, (lo, hi), a.k, a.dropout).items()
                     if not max(lo, b0 - a.purge) <= n < min(hi, b1 + a.purge)}
            ref = np.array(list(train.values()))
            # (the intact parts as written beside their twins)
            intact = zscore(np.array(list(features(ours / c, None, a.k, a.dropout).values())), ref)
            row = {"fold": f"{b0}:{b1}", "class": c, "n_train": len(ref), "n_intact": len(intact)}
            sets = [(d, ours / f"{c}_{d}") for d in DAMAGE_DEFECTS] + [(d, theirs / f"{c}_{d}") for d in OTHER]
            for d, folder in sets:
                z = zscore(np.array(list(features(folder, None, a.k, a.dropout).values())), ref)
                for i, f in enumerate(FEATURES):
                    row[f"{f}:{d}"] = auroc(intact[:, i], z[:, i])
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    tag = f"k{a.k}" + ("" if a.dropout is None else f"_dropout{a.dropout:g}")
    (out / f"local_relief_{tag}.json").write_text(json.dumps(rows, indent=1))
    print("\nworst fold per class and defect (ours: chunk hole stain foreign dent; the other hand's: "
          + " ".join(OTHER) + "):")
    for f in FEATURES:
        for c in classes:
            rs = [r for r in rows if r["class"] == c]
            print(f"{f:8s} {c:10s}", " ".join(f"{k.split(':')[1]}={min(r[k] for r in rs):.3f}"
                                                for k in rows[0] if k.startswith(f + ":")))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
