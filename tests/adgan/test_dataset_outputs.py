"""`adgan dataset synth`, `synth-raw` and `prepare` write their output folder whole, or not at
all: a second run into a folder that is not empty would mix its samples with the first one's
(samples of the same numbers overwritten, the others left under the new run's record), so it is
refused; `--force` replaces, whole, only a folder such a command made."""
from __future__ import annotations

import json

import pytest

from adgan.cli import main
from agent.sources.dataset import class_folders, frame_numbers, read_preprocessing

RAW = ["--empty", "3", "--width", "320", "--height", "240", "--classes", "cylinder"]


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_hidden(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")] == []


def test_synth_refuses_a_second_run_and_force_replaces_it_whole(tmp_path, capsys):
    out = tmp_path / "s"
    opts = ["--classes", "cylinder", "--test", "0", "--workers", "1"]
    args = ["dataset", "synth", str(out), *opts]
    assert main([*args, "--train", "4", "--size", "32"]) == 0
    first = _files(out)
    assert json.loads((out / "synth.json").read_text())["train"] == 4
    assert main([*args, "--train", "2", "--size", "64", "--framing", "object"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and _files(out) == first
    assert main([*args, "--train", "2", "--size", "64", "--framing", "object", "--force"]) == 0
    assert frame_numbers(out / "train" / "cylinder") == [0, 1]  # (the first run's 2 and 3 are gone with it)
    assert read_preprocessing(out / "train" / "cylinder").framing == "object"
    assert json.loads((out / "synth.json").read_text())["train"] == 2 and _no_hidden(tmp_path)
    # --force never removes a folder this command did not make
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    assert main(["dataset", "synth", str(other), *opts, "--train", "1", "--force"]) == 2
    assert "holds no synth.json" in capsys.readouterr().err and (other / "todo.txt").read_text() == "keep me"


def test_synth_raw_refuses_a_second_run_and_force_replaces_it_whole(tmp_path, capsys):
    out = tmp_path / "station"
    assert main(["dataset", "synth-raw", str(out), "--count", "3", "--seed", "1", *RAW]) == 0
    first = _files(out)
    assert main(["dataset", "synth-raw", str(out), "--count", "1", "--seed", "3", *RAW]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and _files(out) == first
    assert main(["dataset", "synth-raw", str(out), "--count", "1", "--seed", "3", "--force", *RAW]) == 0
    assert frame_numbers(out / "frames") == [0]  # the reference and the frames come from one station again
    assert json.loads((out / "synth-raw.json").read_text())["seed"] == 3 and _no_hidden(tmp_path)


@pytest.fixture(scope="module")
def two_captures(tmp_path_factory):
    """Two capture sessions of a station, each numbered from 0 (Monday's and Tuesday's)."""
    root = tmp_path_factory.mktemp("captures")
    for name, seed, count in (("mon", "1", "3"), ("tue", "2", "2")):
        assert main(["dataset", "synth-raw", str(root / name), "--count", count, "--seed", seed, *RAW]) == 0
    return root


def _prepare(raw, out, *more):
    return main(["dataset", "prepare", str(raw / "frames"), "--reference", str(raw / "reference.npz"),
                 "--out", str(out), "--size", "32", *more])


def test_prepare_never_overwrites_the_samples_of_another_capture(two_captures, tmp_path, capsys):
    mon, tue, out = two_captures / "mon", two_captures / "tue", tmp_path / "data" / "cylinder"
    assert _prepare(mon, out) == 0
    monday = _files(out)
    # Tuesday's frames 0 and 1 would have replaced Monday's, and Monday's 2 stayed: refused
    assert _prepare(tue, out) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "--force" in err and _files(out) == monday
    assert _prepare(tue, out, "--force") == 0  # prepared again, whole, from one capture
    assert frame_numbers(out) == [0, 1] and _no_hidden(out.parent)
    assert class_folders(out.parent) == [out]


def test_prepare_force_replaces_only_sample_folders_adgan_made_and_never_its_input(two_captures, tmp_path, capsys):
    mon = two_captures / "mon"
    paper = tmp_path / "paper" / "cylinder"  # the paper's own layout: no preprocessing.json
    for sub in ("rgb", "depth"):
        (paper / sub).mkdir(parents=True)
        (paper / sub / "1.png").write_bytes(b"x")
    assert _prepare(mon, paper, "--force") == 2
    assert "holds no preprocessing.json" in capsys.readouterr().err and (paper / "rgb" / "1.png").is_file()
    assert _prepare(mon, mon, "--force") == 2
    assert "holds this run's input" in capsys.readouterr().err and frame_numbers(mon / "frames") == [0, 1, 2]
    # a folder prepared once, where someone has put other files since: --force would remove them
    out = tmp_path / "cylinder"
    assert _prepare(mon, out) == 0
    (out / "notes.txt").write_text("shift 2: lens cleaned")
    assert _prepare(mon, out, "--force") == 2
    err = capsys.readouterr().err
    assert "holds notes.txt, which" in err and "move it out first" in err
    assert (out / "notes.txt").is_file() and frame_numbers(out) == [0, 1, 2]


def test_force_keeps_a_damage_set_or_a_synthetic_dataset_that_holds_other_things(tmp_path, capsys):
    dmg = tmp_path / "damaged"
    args = ["dataset", "synth-damage", str(dmg), "--classes", "sphere", "--n", "1", "--defects", "hole",
            "--workers", "1", "--size", "32"]
    assert main(args) == 0
    (dmg / "sphere" / "review").mkdir()  # someone's notes on the parts
    assert main([*args, "--force"]) == 2
    assert "holds sphere, which" in capsys.readouterr().err and (dmg / "sphere" / "review").is_dir()
    synth = tmp_path / "synth"
    args = ["dataset", "synth", str(synth), "--classes", "cylinder", "--train", "1", "--test", "0", "--workers", "1"]
    assert main(args) == 0
    for name in ("a", "b", "c", "d"):
        (synth / name).write_text("mine")
    assert main([*args, "--force"]) == 2
    assert "holds a, b, c and more, which" in capsys.readouterr().err and (synth / "d").is_file()


def test_prepare_that_fails_half_way_leaves_the_folder_as_it_was(two_captures, tmp_path, capsys):
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(two_captures / "mon", raw)
    out = tmp_path / "cylinder"
    assert _prepare(raw, out) == 0
    before = _files(out)
    (raw / "frames" / "depth" / "2.png").write_bytes(b"not a png")  # the last frame cannot be read
    assert _prepare(raw, out, "--force") != 0
    assert _files(out) == before and _no_hidden(tmp_path)
    # a run in which no frame has an object writes nothing either (it would empty the folder)
    assert _prepare(raw, out, "--force", "--roi", "0,0,4,4", "--frames", "0:2") == 2
    assert "has an object" in capsys.readouterr().err and _files(out) == before


def test_hidden_folders_are_not_classes(tmp_path):
    for name in ("cylinder", ".cylinder.new-1-x"):
        for sub in ("rgb", "depth"):
            (tmp_path / name / sub).mkdir(parents=True)
    assert [p.name for p in class_folders(tmp_path)] == ["cylinder"]


def test_prepare_skips_parts_the_agent_would_not_judge_and_says_so(tmp_path, capsys, caplog):
    """Raw frames recorded before capture-frames filtered them (or by other tools): a part cut off
    by the view's edge, and one the colour image does not show (the light off), were prepared as
    training samples; the agent refuses to judge both. Skipped, counted and said."""
    from agent.sources.dataset import write_raw_frame
    from agent.sources.synthetic import SyntheticSource
    from tests.agent.conftest import window
    f = SyntheticSource(("sphere",), seed=11).frame(0)
    for n, (x0, light) in enumerate(((200, 1.0), (350, 1.0), (200, 0.05))):  # whole, cut off, dark
        write_raw_frame(tmp_path / "raw", n, window(f, x0, light))
    assert main(["dataset", "prepare", str(tmp_path / "raw"), "--out", str(tmp_path / "part"), "--size", "32"]) == 0
    said = capsys.readouterr()
    assert "wrote 1 samples" in said.out and "; 2 whose part is cut off by the view or not shown by the colour " \
        "image)" in said.out, said
    assert frame_numbers(tmp_path / "part") == [0]
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("frame 1: the part reaches the left edge of the view (the frame)") for m in logged)
    assert any(m.startswith("frame 2: the colour image is black") for m in logged), logged
    # none of them whole: nothing written, and the error does not say they had no object
    assert main(["dataset", "prepare", str(tmp_path / "raw"), "--out", str(tmp_path / "none"), "--size", "32",
                 "--frames", "1:3"]) != 0
    err = capsys.readouterr().err
    assert "none of its 2 frames gave a sample (0 without an object, 2 whose part is cut off by the view or not " \
        "shown by the colour image); nothing written" in err, err
    assert not (tmp_path / "none").exists()
