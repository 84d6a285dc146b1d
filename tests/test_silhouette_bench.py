"""bench/silhouette.py: the outline's features are the shapes' (a ball, a wide box, a ring with a
speck beside it), free of the part's size."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import silhouette  # noqa: E402


def test_the_outline_features_are_the_shapes_and_free_of_size():
    disc = np.zeros((64, 64), np.uint8)
    cv2.circle(disc, (32, 32), 12, 200, -1)
    log_hw, extent, solidity, circularity, elong = silhouette.outline(disc)
    assert abs(log_hw) < 0.05 and abs(extent - np.pi / 4) < 0.05 and solidity > 0.95 and elong < 0.1
    assert circularity > 0.85
    box = np.zeros((64, 64), np.uint8)
    box[28:38, 10:50] = 120
    log_hw, extent, solidity, circularity, elong = silhouette.outline(box)
    assert abs(log_hw - np.log(10 / 40)) < 0.01 and extent == 1.0 and solidity == 1.0
    assert abs(elong - np.log(4)) < 0.15 and circularity < 0.75
    small = np.zeros((64, 64), np.uint8)
    cv2.circle(small, (32, 32), 6, 200, -1)
    assert np.allclose(silhouette.outline(small), silhouette.outline(disc), atol=0.12)  # (a quarter the area)
    ring = disc.copy()
    cv2.circle(ring, (32, 32), 4, 0, -1)  # a hole (no depth read there) is filled; a speck is not the part
    ring[2, 2] = 90
    assert np.allclose(silhouette.outline(ring), silhouette.outline(disc))
