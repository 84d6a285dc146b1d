"""`adgan dataset damage`: local defects made from the part's own mask, with ground truth."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from adgan.cli import main
from agent.frame import Sample
from agent.sources.dataset import frame_numbers, read_mask, read_sample
from calibration.damage import DAMAGE_DEFECTS, DamageError, RADIUS, damage_rng, make_defect, part_mask


def disc_part(size=64, r=14, with_line=True) -> Sample:
    """A round part (depth 100-140, brown) and, like the paper's frames, a 1-pixel line of
    table edge touching it."""
    yy, xx = np.mgrid[:size, :size]
    m = (xx - 30) ** 2 + (yy - 32) ** 2 <= r * r
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[m] = (150, 110, 70)
    depth = np.zeros((size, size), np.uint8)
    depth[m] = (100 + 40 * (xx[m] - 16) / 28).astype(np.uint8)
    if with_line:
        depth[32, 44:63] = 200
        rgb[32, 44:63] = 255
    return Sample(rgb=rgb, depth=depth)


def test_the_part_is_the_object_without_the_lines_that_touch_it():
    s = disc_part()
    m = part_mask(s)
    assert not m[32, 50:63].any()                      # the table-edge line is not part of the part
    assert abs(int(m.sum()) - int(np.pi * 14 ** 2)) < 40


@pytest.mark.parametrize("defect", DAMAGE_DEFECTS)
def test_each_defect_is_local_sized_from_the_part_and_visible(defect):
    s = disc_part()
    area = int(part_mask(s).sum())
    for n in range(5):
        bad, gt, p = make_defect(s, defect, damage_rng(3, "disc", defect, n))
        changed = (np.abs(bad.rgb.astype(int) - s.rgb).max(axis=2) > 0) | (bad.depth != s.depth)
        assert gt.any()
        assert not (changed & ~gt).any(), f"{defect}: pixels changed outside the ground truth"
        lo, hi = RADIUS[defect]
        R = np.sqrt(area / np.pi)
        assert lo * R <= p["radius"] <= hi * R
        assert 0.01 * area <= gt.sum() <= 0.5 * area, (defect, gt.sum(), area)  # local damage
        assert not gt[32, 50:63].any()                 # never on the line of table edge
        diff = np.abs(bad.rgb.astype(int) - s.rgb).mean(axis=2) + np.abs(bad.depth.astype(int) - s.depth)
        assert diff[gt].mean() > 10, f"{defect} is barely visible: {diff[gt].mean():.1f}"
    if defect == "chunk":
        assert (bad.depth[gt] == 0).all()              # removed, like background
    if defect == "foreign":
        assert (gt & ~part_mask(s)).any()              # it sticks out of the part


def test_a_speck_is_too_small_to_damage():
    s = disc_part(r=2, with_line=False)
    with pytest.raises(DamageError, match="too small"):
        make_defect(s, "hole", np.random.default_rng(0))


def test_damage_on_the_papers_frames_is_deterministic_and_intact_copies_share_the_encoding(paper_data, tmp_path,
                                                                                           capsys):
    out, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    args = ["dataset", "damage", str(paper_data / "sphere"), "--frames", "600:606", "--defects", "chunk,stain,dent"]
    assert main(args + ["--out", str(out), "--seed", "4", "--quiet"]) == 0
    assert "sphere_stain: " in capsys.readouterr().out
    assert main(args + ["--out", str(again), "--seed", "4", "--quiet"]) == 0
    assert main(args + ["--out", str(other), "--seed", "5", "--quiet"]) == 0
    names = {p.name for p in out.iterdir() if p.is_dir()}
    assert names == {"sphere", "sphere_chunk", "sphere_stain", "sphere_dent"}
    frames = frame_numbers(out / "sphere")
    assert frames and all(frame_numbers(out / n) == frames for n in names)
    same = all((out / n / "rgb" / f"{f}.jpg").read_bytes() == (again / n / "rgb" / f"{f}.jpg").read_bytes()
               for n in names for f in frames)
    assert same                                        # deterministic by seed
    assert any(not np.array_equal(read_mask(out / "sphere_stain", f), read_mask(other / "sphere_stain", f))
               for f in frames)                        # another seed, other defects
    for f in frames:
        intact, bad = read_sample(out / "sphere", f), read_sample(out / "sphere_dent", f)
        gt = read_mask(out / "sphere_dent", f)
        assert gt.any()
        far = ~cv2.dilate(gt.astype(np.uint8), np.ones((17, 17), np.uint8)).astype(bool)
        # the same encoding: away from the defect (beyond a JPEG block) the twins are the same pixels
        assert np.abs(intact.rgb.astype(int) - bad.rgb)[far].max() <= 2
        assert np.array_equal(intact.depth[~gt], bad.depth[~gt])
        src = read_sample(paper_data / "sphere", f)
        assert np.array_equal(intact.depth, src.depth)
    doc = json.loads((out / "damage.json").read_text())
    assert doc["seed"] == 4 and set(doc["samples"]["sphere_chunk"]) == {str(f) for f in frames}


def test_bad_defect_names_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["dataset", "damage", str(tmp_path), "--out", str(tmp_path / "o"), "--defects", "chunk,scratch"])
    assert e.value.code == 2 and "scratch" in capsys.readouterr().err


def test_a_size_scale_grows_the_same_defect():
    """--size-scale: the same draws, the radius times the scale (scale 1: the default defect)."""
    s = disc_part()
    for defect in DAMAGE_DEFECTS:
        one, gt1, p1 = make_defect(s, defect, damage_rng(3, "disc", defect, 0))
        same, gts, _ = make_defect(s, defect, damage_rng(3, "disc", defect, 0), 1.0)
        assert np.array_equal(gt1, gts) and np.array_equal(one.rgb, same.rgb)
        big, gt2, p2 = make_defect(s, defect, damage_rng(3, "disc", defect, 0), 1.6)
        assert p2["radius"] == pytest.approx(1.6 * p1["radius"], abs=0.02)
        assert gt2.sum() > 1.4 * gt1.sum(), (defect, gt1.sum(), gt2.sum())
    for bad in (0.0, 0.1, 5.0, float("nan"), True):
        with pytest.raises(ValueError, match="size scale"):
            make_defect(s, "hole", np.random.default_rng(0), bad)


def test_size_scale_on_the_command_line(paper_data, tmp_path, capsys):
    args = ["dataset", "damage", str(paper_data / "sphere"), "--frames", "600:604", "--defects", "hole", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a"), "--seed", "4"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--seed", "4", "--size-scale", "2"]) == 0
    a, b = (json.loads((tmp_path / d / "damage.json").read_text()) for d in "ab")
    assert a["size_scale"] == 1.0 and b["size_scale"] == 2.0
    pa, pb = a["samples"]["sphere_hole"], b["samples"]["sphere_hole"]
    assert set(pb) <= set(pa) and pb
    assert all(pb[f]["defect_px"] > pa[f]["defect_px"] for f in pb)
    with pytest.raises(SystemExit) as e:
        main(args + ["--out", str(tmp_path / "c"), "--size-scale", "0"])
    assert e.value.code == 2 and "--size-scale" in capsys.readouterr().err


def test_a_chunk_never_takes_most_of_the_part():
    """At the largest size scale a bite off the rim may cover most of a small part: that sample is
    skipped (DamageError, as a part too small to damage), never written as a part that is gone."""
    depth = np.zeros((64, 64), np.uint8)
    depth[30:34, 24:40] = 120                          # a thin bar, 16 x 4 px
    s = Sample(rgb=np.repeat(np.where(depth > 0, 150, 0).astype(np.uint8)[..., None], 3, axis=2), depth=depth)
    area = int(part_mask(s).sum())
    refused = 0
    for n in range(20):
        try:
            _, gt, _ = make_defect(s, "chunk", damage_rng(1, "disc", "chunk", n), 3.0)
        except DamageError as e:
            refused += 1
            assert "would take" in str(e)
            continue
        assert gt.sum() <= 0.5 * area
    assert refused > 0


def test_a_second_run_into_the_same_folder_is_refused_and_force_replaces_it_whole(paper_data, tmp_path, capsys):
    """A second run into a damage folder used to write over the first one's files and leave its
    other folders and frames: with --defects hole then --defects chunk, sphere_hole/ (seed 1)
    stayed beside sphere_chunk/ under a damage.json of seed 2 that named only chunks, and
    evaluate scored both."""
    out = tmp_path / "d"
    args = ["dataset", "damage", str(paper_data / "sphere"), "--out", str(out), "--quiet"]
    assert main(args + ["--frames", "600:610", "--defects", "hole", "--seed", "1"]) == 0
    first = (out / "damage.json").read_text()
    capsys.readouterr()
    assert main(args + ["--frames", "600:605", "--defects", "chunk", "--seed", "2"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and (out / "damage.json").read_text() == first
    assert main(args + ["--frames", "600:605", "--defects", "chunk", "--seed", "2", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["damage.json", "sphere", "sphere_chunk"]
    frames = frame_numbers(out / "sphere")
    assert frames and max(frames) < 605 and frame_numbers(out / "sphere_chunk") == frames  # none of the first run's
    assert json.loads((out / "damage.json").read_text())["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary or old folder left beside it

    other = tmp_path / "mine"
    (other / "notes").mkdir(parents=True)
    assert main(["dataset", "damage", str(paper_data / "sphere"), "--out", str(other), "--force", "--quiet"]) == 2
    assert "holds no damage.json" in capsys.readouterr().err and (other / "notes").is_dir()  # not ours: kept
    assert main(["dataset", "damage", str(out / "sphere"), "--out", str(out), "--force", "--quiet"]) == 2
    assert "holds the samples to damage" in capsys.readouterr().err and (out / "sphere_chunk").is_dir()


def test_a_run_stopped_half_way_leaves_the_folder_as_it_was(paper_data, tmp_path, monkeypatch):
    import calibration.damage as damage
    out = tmp_path / "d"
    damage.damage_dataset(paper_data / "sphere", out, ["hole"], 1, (600, 610), progress=False)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    real, written = damage.write_mask, []

    def write_mask(folder, n, gt):  # a Ctrl-C after the first damaged twin
        if written:
            raise KeyboardInterrupt
        written.append(real(folder, n, gt))

    monkeypatch.setattr(damage, "write_mask", write_mask)
    with pytest.raises(KeyboardInterrupt):
        damage.damage_dataset(paper_data / "sphere", out, ["hole"], 2, (600, 610), progress=False, force=True)
    assert written and sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert json.loads((out / "damage.json").read_text())["seed"] == 1 and [p.name for p in tmp_path.iterdir()] == ["d"]
