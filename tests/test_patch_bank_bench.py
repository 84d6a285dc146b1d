"""bench/patch_bank.py: patches hold what the input holds, the nearest-patch distance is the
brute-force one, and a part with a patch unlike any training patch scores above one made of
training patches put elsewhere."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import patch_bank as pb  # noqa: E402


def test_patches_are_the_windows_at_half_stride_and_know_the_part():
    x = np.full((1, 4, 8, 8), -1.0, np.float32)
    x[0, :, 6:, 6:] = 0.5  # the part: the bottom-right 2x2 pixels
    f, part = pb.patches(x, 4)
    assert f.shape == (1, 9, 64) and part.shape == (1, 9)
    assert part[0].tolist() == [False] * 8 + [True]  # only the window at (4, 4) reaches the part
    win = x[0, :, 4:8, 4:8].reshape(-1)
    assert np.array_equal(f[0, 8], win)
    d, dpart = pb.patches(x, 4, pb.CHANNELS["depth"])  # the part is still found by depth
    assert d.shape == (1, 9, 16) and np.array_equal(dpart, part)
    assert np.array_equal(d[0, 8], x[0, 3, 4:8, 4:8].reshape(-1))


def test_nearest_is_the_brute_force_distance_and_honours_keep():
    rng = np.random.default_rng(0)
    q, bank = rng.normal(size=(7, 16)).astype(np.float32), rng.normal(size=(30, 16)).astype(np.float32)
    brute = ((q[:, None] - bank[None]) ** 2).mean(2)
    assert np.allclose(pb.nearest(q, bank, chunk=3), brute.min(1), atol=1e-5)
    keep = np.arange(30) % 2 == 0
    assert np.allclose(pb.nearest(q, bank, keep=keep), brute[:, keep].min(1), atol=1e-5)


def test_an_unfamiliar_patch_scores_above_familiar_patches_anywhere():
    rng = np.random.default_rng(1)
    train = np.full((3, 4, 32, 32), -1.0, np.float32)
    train[:, :, 8:24, 8:24] = rng.uniform(-0.5, 0.5, (3, 4, 1, 1))  # flat parts of three colours
    f, part = pb.patches(train, 8)
    bank = f[part]
    moved = np.roll(train[1:2], 4, axis=3)  # a training part 4 px (one stride) further right
    foreign = train[1:2].copy()
    foreign[0, :3, 12:20, 12:20] = 0.95  # a bright body on it
    s = pb.bank_scores(np.concatenate([moved, foreign]), bank, 8)
    assert s[0] == pytest.approx(0.0, abs=1e-5)
    assert s[1] > 0.05


def test_level_is_median_and_spread_to_the_90th_percentile():
    m, q = pb.level(np.arange(11.0))
    assert (m, q) == (5.0, pytest.approx(4.0))
    assert pb.level(np.ones(5))[1] > 0  # a flat level still divides


def test_fold_rows_score_every_group_and_combine_on_training_levels():
    rng = np.random.default_rng(2)
    looks = np.full((2, 4, 16, 16), -1.0, np.float32)
    looks[:, :, 4:12, 4:12] = np.array([-0.3, 0.3])[:, None, None, None]
    train = {"x": np.concatenate([looks[[i % 2]] for i in range(12)]), "n": np.arange(0, 120, 10),
             "s": rng.normal(1.0, 0.1, 4)}
    g = {}
    for name in ("intact", "stain", "swap_cylinder"):
        x = np.concatenate([looks[[i % 2]] for i in range(10)])
        if name == "stain":
            x[:, :3, 5:8, 5:8] = 0.9
        if name == "swap_cylinder":
            x[:, :, 4:12, 4:12] = rng.uniform(-0.9, 0.9, (10, 4, 8, 8))
        g[name] = {"x": x, "s": rng.normal(1.0, 0.1, 10)}
    assert set(pb.fold_rows(g, train, [4], channels="depth")) == {"bundle", "bank4-depth", "combined4-depth"}
    rows = pb.fold_rows(g, train, [4])
    assert set(rows) == {"bundle", "bank4", "combined4"}
    swap, damage, per = rows["bank4"]
    assert swap == 1.0 and damage == 1.0 and per == {"stain": 1.0}
    assert rows["combined4"][1] > rows["bundle"][1]


def test_dumps_of_other_damage_in_one_out_folder_are_kept_apart(tmp_path):
    from map_scores import dump_path
    assert dump_path(tmp_path, "sphere", 1) == tmp_path / "sphere-f1.npz"  # blocked_cv.py's own damage
    assert dump_path(tmp_path, "sphere", 1, "damaged-s8") == tmp_path / "sphere-f1-damaged-s8.npz"


def test_odd_patch_sizes_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="even sizes"):
        pb.main([str(tmp_path / "cv"), "--patch", "5", "--out", str(tmp_path)])
