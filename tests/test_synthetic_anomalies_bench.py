"""bench/synthetic_anomalies.py: made-up damage changes a stored frame only where its label says,
the label lies on the part (or on material the damage added), and a batch is half normal, its
labels cropped with the inputs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import synthetic_anomalies as sa  # noqa: E402


def frame(rng, cx=32, cy=30, r=10):
    """A stored 64 px frame: a disc of a part with a slope of depth and some print, 0 around it."""
    yy, xx = np.mgrid[:64, :64]
    part = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    depth = np.where(part, 60 + xx // 2, 0).astype(np.uint8)
    rgb = np.where(part[..., None], rng.integers(80, 200, (64, 64, 3)), 0).astype(np.uint8)
    return rgb, depth


def test_made_up_damage_changes_only_what_its_label_covers():
    rng = np.random.default_rng(0)
    kinds = 0
    for i in range(40):
        rgb, depth = frame(rng)
        other = frame(rng, cx=20 + i % 20, cy=40, r=6)
        r2, d2, label = sa.made_up(rgb, depth, other, rng)
        changed = (np.abs(r2.astype(int) - rgb).max(2) > 0) | (d2 != depth)
        assert not (changed & ~label).any()
        assert label.any() and not (label & (depth == 0) & (d2 == 0)).any()  # where material is, or was
        kinds += changed.any()
    assert kinds >= 30  # (a blend may leave a region of the same colour unchanged)


def test_a_batch_is_half_normal_and_its_labels_follow_the_crop():
    rng = np.random.default_rng(1)
    frames = [frame(rng, cx=20 + 3 * k, cy=25 + k, r=8 + k % 4) for k in range(6)]
    x, y = sa.batch(frames, rng, 8)
    assert x.shape == (8, 4, sa.SIZE, sa.SIZE) and y.shape == (8, sa.SIZE, sa.SIZE)
    assert not y[0::2].any() and y[1::2].reshape(4, -1).any(1).sum() >= 3
    assert -1.0 <= x.min() and x.max() <= 1.0
