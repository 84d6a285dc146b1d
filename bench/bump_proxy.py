"""What a bump check would add to a bundle's score: a proxy from `adgan evaluate`'s own scores.

bench/local_relief.py screens the part's depth against its local median; its `nearer` feature
(k 15, depth dropouts left out) sees bumps towards the camera, which the relief check cannot.
Before anything is built, this proxy asks what it would do to a bundle's image score: each part's
final score (evaluate's `scores/*.csv`: search, relief and shape checks) is maxed with the bump
feature in the search's units, as the relief check enters it,

    score' = max(score, search_median + search_scale * (bump - bump_median) / bump_spread)

(search_median and search_scale: the bundle's relief reference; bump_median and bump_spread: the
class's training frames 0:680, median and MAD, floor one depth level), and prints image AUROC of
damaged twins against intact parts before and after, per defect, for both damage sets.

    .venv/bin/python bench/bump_proxy.py   # reads runs/oh-* (bench/RESULTS.md, "Damage made by another hand")

Class swaps are not in evaluate's damage scores, so they are not measured here.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_relief import features  # noqa: E402
from symmetry_screen import auroc  # noqa: E402

DATA = Path("../shared/data/paper-rgbd")
K, DROPOUT = 15, 40.0
# class: (bundle, our damage, the other hand's, evaluate's report on ours, on the other hand's), under runs/
SETS = {"sphere": ("oh-sphere-bundle", "our-damage", "other-damage", "oh-eval-our", "oh-eval-other"),
        "cylinder": ("oh-cylinder-bundle", "our-damage-cyl", "other-damage-cyl", "oh-eval-our-cyl",
                     "oh-eval-other-cyl"),
        "rectangle": ("oh-box-bundle", "our-damage-box", "other-damage-box", "oh-eval-our-box", "oh-eval-other-box")}


def main() -> int:
    for c, (bundle, ours, theirs, ev_ours, ev_theirs) in SETS.items():
        ref = json.loads(Path(f"runs/{bundle}/manifest.json").read_text())["relief"]["reference"]
        sm, ss = ref["search_median"], ref["search_scale"]
        train = np.array([f[1] for f in features(DATA / c, (0, 680), K, DROPOUT).values()])
        bm = float(np.median(train))
        bs = max(1.4826 * float(np.median(np.abs(train - bm))), 1.0)
        print(f"{c}: bump reference median {bm:.2f} spread {bs:.2f} levels over {len(train)} training parts")
        for label, dmg, ev in (("ours", ours, ev_ours), ("other hand's", theirs, ev_theirs)):
            scores = {(r["folder"], int(r["frame"])): float(r["score"])
                      for f in Path(f"runs/{ev}/scores").glob("*.csv") for r in csv.DictReader(open(f))}

            def before_after(folder: str) -> tuple[np.ndarray, np.ndarray]:
                pairs = [(scores[(folder, n)], max(scores[(folder, n)], sm + ss * (f[1] - bm) / bs))
                         for n, f in features(Path(f"runs/{dmg}") / folder, None, K, DROPOUT).items()
                         if (folder, n) in scores]
                return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            ib, ia = before_after(c)
            rows, all_b, all_a = [], [], []
            for d in sorted({k[0] for k in scores if k[0] != c}):
                db, da = before_after(d)
                all_b.append(db)
                all_a.append(da)
                rows.append(f"{d.split('_', 1)[1]} {auroc(ib, db):.3f}->{auroc(ia, da):.3f}")
            print(f"  {label}: all {auroc(ib, np.concatenate(all_b)):.3f}->{auroc(ia, np.concatenate(all_a)):.3f} | "
                  + ", ".join(rows) + f" (intact {len(ib)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
