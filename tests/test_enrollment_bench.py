"""bench/enrollment.py: golden sets leave the sample's own frame out, and the patch distance
finds local damage that an intact neighbour does not have, up to the shifts it searches."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import enrollment as en  # noqa: E402


def test_the_golden_set_is_the_nearest_frames_without_the_sample_itself():
    intact = np.array([0, 3, 6, 9, 12])
    idx = en.golden_index(np.array([6, 7, 0]), intact, 2)
    assert [sorted(intact[i]) for i in idx] == [[3, 9], [6, 9], [3, 6]]
    before = en.golden_index(np.array([6, 3]), intact, 2, before=True)
    assert [sorted(intact[i]) for i in before] == [[0, 3], [0, 6]]  # frame 3 has one before it: 6 makes up
    with pytest.raises(ValueError, match="needs more than 5"):
        en.golden_index(np.array([6]), intact, 5)


def test_shifted_moves_the_image_and_fills_the_border():
    a = np.arange(16.0).reshape(1, 4, 4)
    s = en.shifted(a, 1, -1, -1.0)[0]
    assert s[0].tolist() == [-1.0] * 4 and s[:, -1].tolist() == [-1.0] * 4
    assert s[1, 0] == a[0, 0, 1] and s[3, 2] == a[0, 2, 3]
    assert np.array_equal(en.shifted(a, 0, 0, 9.0), a)


def test_patch_means_average_each_patch_at_half_stride():
    e = np.zeros((1, 16, 16))
    e[0, 4:8, 4:8] = 1.0
    pm = en.patch_means(e, 8)
    assert pm.shape == (1, 3, 3)
    want = np.zeros((3, 3))
    want[:2, :2] = 16 / 64  # the 8x8 patches at 0 and 4 cover the 4x4 square, those at 8 miss it
    assert np.allclose(pm[0], want)


def test_a_local_defect_scores_above_its_intact_twin_and_a_shift_is_forgiven():
    rng = np.random.default_rng(0)
    golden = rng.uniform(-1, 1, (4, 4, 32, 32)).astype(np.float32)
    twin = en.shifted(golden[1], 2, -2, -1.0)  # the same part, moved by 2 pixels
    damaged = twin.copy()
    damaged[:, 12:20, 12:20] = 0.9             # a stain inside the part
    idx = np.array([[1, 2], [1, 2]])
    s = en.golden_score(np.stack([twin, damaged]), golden, idx, 8, 4, 2, -1.0)
    assert s[0] == pytest.approx(0.0, abs=1e-9)
    assert s[1] > 0.1
    # without shifts the moved twin no longer matches
    assert en.golden_score(twin[None], golden, idx[:1], 8, 0, 2, -1.0)[0] > 0.1


def fold_file(path, rng, n, looks, run_of):
    """A fold's dump as map_scores.dump writes it: intact parts (frame f looks like looks[run_of(f)]),
    their stained twins, another class's parts, and bundle scores drawn alike for every group."""
    arrays = {}
    for g in ("intact", "stain", "swap_cylinder"):
        x = np.stack([looks[run_of(f)] + rng.normal(0, 0.02, looks[0].shape).astype(np.float32) for f in n])
        if g == "stain":
            x[:, :3, 4:8, 4:8] = 0.95
        if g == "swap_cylinder":
            x = rng.uniform(-0.9, 0.9, x.shape).astype(np.float32)
        arrays.update({f"{g}.x": x, f"{g}.y": x + 0.01, f"{g}.s": rng.normal(1.0, 0.1, len(n)), f"{g}.n": n})
    np.savez(path, **arrays)
    return arrays


def test_a_fold_file_scores_damage_above_intact_and_needs_frame_numbers(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "sphere-f0.npz"
    arrays = fold_file(path, rng, np.arange(0, 60, 3), [rng.uniform(-0.9, 0.9, (4, 16, 16)).astype(np.float32)],
                       lambda f: 0)
    rows = en.rows(en.fold_scores(path, k=4, p=4, shift=2, step=1))
    assert set(rows) == set(en.SCORES)
    swap, damage, per = rows["golden-input"]
    assert swap > 0.99 and damage > 0.99 and set(per) == {"stain"}
    assert abs(rows["bundle"][1] - 0.5) < 0.3  # the bundle's scores were drawn alike for every group
    assert rows["golden-combined"][1] > 0.99
    old = tmp_path / "old-f0.npz"
    np.savez(old, **{k: v for k, v in arrays.items() if not k.endswith(".n")})
    with pytest.raises(SystemExit, match="no frame numbers"):
        en.fold_scores(old, k=4, p=4, shift=2, step=1)


def test_a_station_enrols_the_first_parts_of_each_run_and_scores_only_later_ones():
    intact = np.array([0, 3, 6, 9, 12, 15, 18, 21])
    starts = [0, 10]                        # runs 0-9 and 10-21
    n = np.array([0, 6, 9, 12, 15, 21, -3])
    idx, scored = en.first_index(n, intact, starts, 2)
    assert scored.tolist() == [False, True, True, False, False, True, False]
    assert intact[idx[1]].tolist() == [0, 3] and intact[idx[2]].tolist() == [0, 3]
    assert intact[idx[5]].tolist() == [12, 15]
    # a run with no more intact samples than k scores nothing
    _, scored = en.first_index(np.array([6, 9]), intact, [0, 7], 2)
    assert scored.tolist() == [True, False]  # run 7-21 has 5 intact; 9 is not after its first two (9, 12)
    _, none = en.first_index(np.array([3]), np.array([0, 3]), [0], 2)
    assert not none.any()


def test_a_station_fold_scores_only_the_parts_after_each_runs_golden_set(tmp_path):
    rng = np.random.default_rng(2)
    n = np.arange(0, 60, 3)                      # runs 0-27 and 30-57, ten intact samples each
    path = tmp_path / "sphere-f0.npz"
    fold_file(path, rng, n, [rng.uniform(-0.9, 0.9, (4, 16, 16)).astype(np.float32) for _ in range(2)],
              lambda f: int(f >= 30))
    sc = en.fold_scores(path, k=4, p=4, shift=2, step=1, golden="first", starts=[0, 30])
    assert sc["intact"]["scored"].tolist() == [f not in (0, 3, 6, 9, 30, 33, 36, 39) for f in n]
    # an intact part of the run scores like its golden parts do against each other (each against the
    # other three, never against itself, which would divide by 0): a ratio near 1
    combined = sc["intact"]["golden-combined"][sc["intact"]["scored"]]
    assert np.all(np.isfinite(combined)) and np.all(combined < 3)
    swap, damage, _ = en.rows(sc)["golden-combined"]
    assert swap > 0.99 and damage > 0.99
    with pytest.raises(ValueError, match="needs the objects' runs"):
        en.fold_scores(path, k=4, p=4, shift=2, step=1, golden="first")
