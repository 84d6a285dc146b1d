"""bench/map_scores.py: its scores are what they say, and its table reads the folds."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import map_scores as ms  # noqa: E402
from training.losses import local_score, reconstruction_loss  # noqa: E402


def pair(rng, n=3, s=16):
    x = rng.uniform(-0.9, 0.9, (n, 4, s, s)).astype(np.float32)
    x[:, 3, :3] = -1.0  # background rows: not the part
    return x, (x + rng.normal(0, 0.1, x.shape)).astype(np.float32)


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_pooled_and_pixel_scores_are_the_search_loss(pool):
    x, y = pair(np.random.default_rng(pool))
    ref = reconstruction_loss(torch.from_numpy(y), torch.from_numpy(x), "fg_input", pool=pool).numpy()
    got = ms.mean_pixels(x, y) if pool == 1 else ms.pooled(pool)(x, y)
    assert np.allclose(got, ref, rtol=1e-5)


def test_top_cells_are_the_exported_local_score():
    x, y = pair(np.random.default_rng(7))
    ref = local_score(torch.from_numpy(y), torch.from_numpy(x), "fg_input", cells=4, pool=4).numpy()
    assert np.allclose(ms.top_cells(4, 4)(x, y), ref, rtol=1e-5)


def test_a_compact_blob_scores_above_the_same_energy_spread_out():
    x = np.zeros((2, 4, 16, 16), np.float32)
    y = x.copy()
    y[0, :3, 6:9, 6:9] = 0.6                      # a 3x3 defect
    y[1, :3] = 0.6 * np.sqrt(9 / 256)             # the same energy over the whole part
    assert np.isclose(*ms.energy(x, y).sum((1, 2)))
    for name in ("box3", "box5", "dog1-4"):
        s = ms.SCORES[name](x, y)
        assert s[0] > 2 * s[1], name


def test_the_table_takes_the_worst_fold(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for f, shift in enumerate((1.0, 0.0)):  # fold 1: damage scores like intact
        arrays = {}
        for g, mu in (("intact", 0.0), ("hole", shift), ("dent", shift), ("swap_cylinder", 2.0)):
            x, y = pair(rng, n=20, s=8)
            arrays.update({f"{g}.x": x, f"{g}.y": y, f"{g}.s": rng.normal(mu, 0.1, 20)})
        paths.append(tmp_path / f"sphere-f{f}.npz")
        np.savez(paths[-1], **arrays)
    rows = {("sphere", "bundle"): [ms.fold_rows(p, ["bundle"])["bundle"] for p in paths]}
    assert rows[("sphere", "bundle")][0][1] > 0.99 and abs(rows[("sphere", "bundle")][1][1] - 0.5) < 0.2
    line = ms.table(rows)[2]
    worst = rows[("sphere", "bundle")][1][1]
    assert line.startswith("| sphere | bundle | 1.000 (1.000) | " + f"{worst:.3f}")


def test_complexity_is_the_parts_own_detail_not_its_outline():
    x = -np.ones((3, 4, 32, 32), np.float32)
    x[:, :, 8:24, 8:24] = 0.3                     # a plain square part
    x[1, :, 8:12, 20:24] = -1.0                   # the same, with a notch in its outline: still plain
    x[2, :3, 8:24:2, 8:24] = 0.9                  # printing on it
    c = ms.complexity(1.0)(x)
    assert c[0] < 1e-6 and c[1] < 1e-6 and c[2] > 0.01
    y = x + 0.1
    assert np.allclose(ms.relative(ms.pooled(4), 1.0)(x, y)[2], ms.pooled(4)(x, y)[2] / c[2])
