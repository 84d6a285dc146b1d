"""A silhouette screen, by blocked cross-validation (issue 15).

The camera looks down on the table from one place, and each product lies on it its own way: balls
are round, cans stand upright, boxes lie wide. The part's outline (its depth mask) is free of its
distance once taken as ratios, and a swapped part or a chunk off the rim may change it where the
generator's residuals do not. Two scores, on the bundles of a bench/blocked_cv.py run of all three
classes (their evaluate reports hold the full scores), with rules written before the numbers
(bench/RESULTS.md):

    A  the Mahalanobis distance (squared) of the outline's features from a Gaussian of the class's
       training frames' (0:1000 outside the block and its purge gap, every `--every` frame;
       Ledoit-Wolf shrinkage). Features of the mask (agent.segment.preprocess.part_mask, holes
       filled): ln(h / w) of its box, extent (area / box), solidity (area / convex hull),
       circularity (4 pi area / perimeter^2), ln(long / short side) of its least rotated box
    B  zA + zS: ln A and ln(the bundle's full score), each standardised by its mean and standard
       deviation over the same training frames

    .venv/bin/python bench/silhouette.py ../shared/data/paper-rgbd runs/cv/compete-q

Class swaps: a class's block frames (every `--every`) against the other classes'; damage: each
class's damaged twins (the run's fold*/damaged) against their intact copies.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.covariance import LedoitWolf  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from competing import CLASSES, DEFECTS, blocks, report  # noqa: E402
from latent_density import full_scores, inputs, numbers_in  # noqa: E402


def outline(depth8: np.ndarray) -> np.ndarray:
    """The five features of the part's outline in a stored depth image."""
    from agent.segment.preprocess import part_mask
    m = part_mask(depth8).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    filled = np.zeros_like(m)
    cv2.drawContours(filled, [c], -1, 1, thickness=cv2.FILLED)
    area = float(filled.sum())
    x, y, w, h = cv2.boundingRect(c)
    hull = max(cv2.contourArea(cv2.convexHull(c)), 1.0)
    perim = max(cv2.arcLength(c, True), 1.0)
    (_, _), (rw, rh), _ = cv2.minAreaRect(c)
    return np.array([np.log(h / w), area / (w * h), min(area / hull, 1.0), 4 * np.pi * area / perim ** 2,
                     np.log(max(rw, rh, 1.0) / max(min(rw, rh), 1.0))])


def outlines(folder: Path, numbers) -> np.ndarray:
    from agent.sources.dataset import read_sample
    return np.stack([outline(read_sample(folder, n).depth) for n in numbers])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("run")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--purge", type=int, default=20)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--variant", default="def")
    a = p.parse_args()
    from agent.scoring.bundle import Bundle
    from agent.sources.dataset import rgb_path
    data, out, res = Path(a.data), Path(a.run), {}
    for f, (b0, b1) in enumerate(blocks(a.folds)):
        fold = out / f"fold{f}"
        block = {c: numbers_in(data / c, lambda n: b0 <= n < b1 and (n - b0) % a.every == 0) for c in CLASSES}
        for c in CLASSES:
            b = Bundle.load(fold / c / f"bundle-{a.variant}")
            tr = numbers_in(data / c, lambda n: (n < b0 - a.purge or n >= b1 + a.purge) and n % a.every == 0)
            ft = outlines(data / c, tr)
            lw = LedoitWolf().fit(ft)
            la_t = np.log(lw.mahalanobis(ft))
            ls_t = np.log(full_scores(b, inputs(b, data / c, tr)))

            def combined(la, ls):
                return (la - la_t.mean()) / la_t.std() + (ls - ls_t.mean()) / ls_t.std()
            scores = fold / c / f"report-{a.variant}-every{a.every}" / "scores"
            with open(scores / f"{c}-{b.kind}-{b.bundle_hash[:8]}.csv") as fh:
                full = {r["path"]: float(r["score"]) for r in csv.DictReader(fh)}
            la, ls, y = [], [], []
            for o in CLASSES:
                la.append(np.log(lw.mahalanobis(outlines(data / o, block[o]))))
                ls.append(np.log([full[str(rgb_path(data / o, n))] for n in block[o]]))
                y += [int(o != c)] * len(block[o])
            la, ls, y = np.concatenate(la), np.concatenate(ls), np.array(y)
            for name, s in (("own", ls), ("A outline", la), ("B combined", combined(la, ls))):
                res.setdefault((c, f"swap {name}"), []).append(roc_auc_score(y, s))
            with open(scores / f"damage-{c}-{b.kind}-{b.bundle_hash[:8]}.csv") as fh:
                dfull = {(r["folder"], int(r["frame"])): float(r["score"]) for r in csv.DictReader(fh)}
            by_folder: dict[str, list[int]] = {}
            for folder, n in sorted(dfull):
                by_folder.setdefault(folder, []).append(n)
            dla, dls, lab = [], [], []
            for folder, ns in by_folder.items():
                dla.append(np.log(lw.mahalanobis(outlines(fold / "damaged" / folder, ns))))
                dls.append(np.log([dfull[(folder, n)] for n in ns]))
                lab += [folder] * len(ns)
            dla, dls, lab = np.concatenate(dla), np.concatenate(dls), np.array(lab)
            for d in (*DEFECTS, "all"):
                m = (lab == c) | ((lab == f"{c}_{d}") if d != "all" else np.char.startswith(lab, c + "_"))
                yy = (lab[m] != c).astype(int)
                for name, s in (("own", dls), ("A outline", dla), ("B combined", combined(dla, dls))):
                    res.setdefault((c, f"dmg {d} {name}"), []).append(roc_auc_score(yy, s[m]))
            print(f"fold {f} {c} done", flush=True)
    print(f"{out}: silhouette screen, {a.folds} blocks, every {a.every}, purge {a.purge}")
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
