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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from competing import report  # noqa: E402
from latent_density import arguments, screen  # noqa: E402


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
    a = arguments(__doc__)
    res = screen(a, lambda bundle: outlines, "outline")
    print(f"{a.run}: silhouette screen, {a.folds} blocks, every {a.every}, purge {a.purge}")
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
