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


def test_channel_scores_split_the_residual():
    x, y = pair(np.random.default_rng(3))
    rgb, depth = ms.SCORES["pixels-rgb"](x, y), ms.SCORES["pixels-depth"](x, y)
    assert np.allclose(rgb + depth, ms.mean_pixels(x, y), rtol=1e-5)
    y2 = y.copy()
    y2[:, :3] += 0.5                              # a worse colour, the same shape
    assert np.allclose(ms.SCORES["pool4-depth"](x, y2), ms.SCORES["pool4-depth"](x, y))
    assert (ms.SCORES["pool4-rgb"](x, y2) > ms.SCORES["pool4-rgb"](x, y)).all()


def disk_part(s=32, r=10.0):
    yy, xx = np.mgrid[:s, :s]
    d2 = (xx - s / 2) ** 2 + (yy - s / 2) ** 2
    x = -np.ones((1, 4, s, s), np.float32)
    inside = d2 <= r * r
    x[0, :3, inside] = 0.2
    x[0, 3, inside] = (-0.99 + 0.9 * d2 / (r * r))[inside]  # a dome: nearest (darkest) in the middle
    return x, inside


def test_the_outline_sees_a_bite_that_the_parts_own_pixels_do_not():
    y, _ = disk_part()
    bitten = y.copy()
    bitten[0, :, 6:13, 12:20] = -1.0                # a chunk off the rim: background now
    assert ms.mean_pixels(bitten, y)[0] < 1e-9      # G drew the whole ball: the part's own pixels agree
    assert ms.SCORES["outline"](bitten, y)[0] > 0.05 and ms.SCORES["outline"](y, y)[0] == 0
    assert ms.SCORES["outline-box5"](bitten, y)[0] == 1.0


def test_the_depth_gradient_sees_a_dent_not_a_level_offset():
    x, inside = disk_part()
    offset = x.copy()
    offset[0, 3, inside] += 0.05                    # the whole part a little farther: the same shape
    dent = x.copy()
    yy, xx = np.mgrid[:32, :32]
    dent[0, 3] += 0.3 * np.exp(-((xx - 18) ** 2 + (yy - 14) ** 2) / 4.0) * inside
    g = ms.SCORES["dgrad-er1"]
    assert g(offset, x)[0] < 1e-6 < g(dent, x)[0]
    assert ms.SCORES["dgrad-er1-box5"](dent, x)[0] > g(dent, x)[0]


def test_the_union_score_is_the_search_fg_loss():
    x, y = pair(np.random.default_rng(11))
    y[:, 3, :2] = 0.5                               # G draws part of the background rows
    ref = reconstruction_loss(torch.from_numpy(y), torch.from_numpy(x), "fg", pool=1).numpy()
    assert np.allclose(ms.SCORES["pixels-fg"](x, y), ref, rtol=1e-5)
