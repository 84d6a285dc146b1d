"""Files a station writes survive a power cut: each is written under a temporary name, its data
flushed (fsync) before the rename, and the rename flushed (fsync of its folder) after. A power
cut cannot be made here; what is checked is that order, recorded from the system calls, for
every writer of a station's files, and that an error leaves the old file whole."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from agent import durable


class Calls:
    """os.fsync and os.replace as they happen: ("fsync", path) and ("replace", src, dst)."""

    def __init__(self, monkeypatch) -> None:
        self.log: list[tuple] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst, **kw):
            self.log.append(("replace", str(src), str(dst)))
            return real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def assert_durable(self, path: Path) -> None:
        """`path` came into place by a rename of a flushed file, and the rename was flushed."""
        path = Path(path)
        renames = [i for i, c in enumerate(self.log) if c[0] == "replace" and c[2] == str(path)]
        assert renames, f"{path} was not written through a rename: {self.log}"
        i = renames[-1]
        tmp = self.log[i][1]
        assert ("fsync", tmp) in self.log[:i], f"{tmp} was not flushed before its rename: {self.log}"
        assert ("fsync", str(path.parent)) in self.log[i + 1:], f"{path.parent} was not flushed: {self.log}"


def test_the_data_is_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = Calls(monkeypatch)
    durable.write_bytes(tmp_path / "a.bin", b"new")
    calls.assert_durable(tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"new" and os.listdir(tmp_path) == ["a.bin"]


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_one(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        durable.write_with(tmp_path / "a.bin", half)
    assert (tmp_path / "a.bin").read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def frame():
    from agent.frame import Intrinsics, RGBDFrame
    intr = Intrinsics(width=8, height=6, fx=5.0, fy=5.0, cx=4.0, cy=3.0)
    return RGBDFrame(rgb=np.zeros((6, 8, 3), np.uint8), depth=np.full((6, 8), 500, np.uint16), timestamp=1.0,
                     intrinsics=intr)


def test_every_file_a_station_writes_is_durable(tmp_path, monkeypatch):
    from agent.decide.thresholds import write_threshold
    from agent.segment.preprocess import Preprocessing
    from agent.segment.reference import SurfaceReference
    from agent.sources.dataset import write_preprocessing, write_raw_frame, write_sample
    calls = Calls(monkeypatch)
    f = frame()
    SurfaceReference(depth=f.depth, intrinsics=f.intrinsics, n_frames=1).save(tmp_path / "ref.npz")
    calls.assert_durable(tmp_path / "ref.npz")                        # capture-reference
    write_threshold(tmp_path / "thresholds.json", "sphere", {"threshold": 0.1})
    calls.assert_durable(tmp_path / "thresholds.json")                # calibrate
    write_raw_frame(tmp_path / "frames", 7, f)                        # capture-frames
    for sub, ext in (("meta", ".json"), ("rgb", ".png"), ("depth", ".png")):
        calls.assert_durable(tmp_path / "frames" / sub / f"7{ext}")
    write_preprocessing(tmp_path / "data", Preprocessing())           # dataset prepare
    calls.assert_durable(tmp_path / "data" / "preprocessing.json")
    from agent.frame import Sample
    write_sample(tmp_path / "data", 3, Sample(rgb=np.zeros((4, 4, 3), np.uint8), depth=np.zeros((4, 4), np.uint8)))
    calls.assert_durable(tmp_path / "data" / "depth" / "3.png")


def test_a_training_checkpoint_its_encoder_and_its_bundle_are_durable(synth_data, tmp_path, monkeypatch):
    """A power cut in a days-long training must leave the last checkpoint to resume from; an
    exported bundle (a folder renamed into place) is flushed whole before its rename."""
    from adgan.cli import main
    calls = Calls(monkeypatch)
    run, bundle = tmp_path / "run", tmp_path / "bundles" / "sphere"
    assert main(["train", str(synth_data / "train"), "--class", "sphere", "--kind", "gan", "--size", "32",
                 "--features-g", "4", "--features-d", "4", "--batch-size", "6", "--epochs", "1", "--out",
                 str(run), "--quiet", "--encoder-epochs", "0", "--framing", "frame"]) == 0
    calls.assert_durable(run / "checkpoint.pt")
    assert main(["train-encoder", str(run), "--epochs", "1", "--features", "4", "--quiet"]) == 0
    calls.assert_durable(run / "encoder.pt")
    for again in (False, True):  # a second export (--force) replaces the first
        assert main(["export", str(run), "--out", str(bundle)] + ["--force"] * again) == 0
        calls.assert_durable(bundle)
        flushed = {c[1] for c in calls.log if c[0] == "fsync"}
        tmp = next(c[1] for c in reversed(calls.log) if c[0] == "replace" and c[2] == str(bundle))
        assert {f"{tmp}/manifest.json", f"{tmp}/step.onnx", f"{tmp}/theta.npz"} <= flushed
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["sphere"]  # (the old one removed after)


def test_an_outbox_rebuilt_after_its_deletion_is_durable(tmp_path, monkeypatch):
    from agent.mqtt.outbox import Outbox
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    ob.put("a0", "adgan/st1/events", b"x")
    calls = Calls(monkeypatch)
    os.unlink(path)
    ob.check()
    calls.assert_durable(path)
    ob.close()


def test_the_cost_benchmark_runs(tmp_path):
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "bench/durable_writes.py", "--frames", "4", "--dir", str(tmp_path)], cwd=root,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
    assert "4 raw frames of 640x480" in r.stdout and "ratio" in r.stdout and os.listdir(tmp_path) == []


def test_folders_that_killed_runs_left_beside_an_output_are_removed_and_no_others(tmp_path, caplog):
    """A kill (or a power cut) during an export or a damage set left its hidden folder beside the
    output, and nothing removed it: a bundle's worth of disk at each. The next run removes those of
    processes that are gone, once untouched for LEFTOVER_AGE_S."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a process that has ended
    out = tmp_path / "bundle"
    old = os.path.getmtime(tmp_path) - 2 * durable.LEFTOVER_AGE_S
    names = {f".bundle.new-{gone}-x1": True, f".bundle.old-{gone}": True, f".bundle.stats-{gone}-x2": True,
             f".bundle.new-{os.getppid()}-x3": False,   # its process runs: it may be writing
             f".other.new-{gone}-x4": False,            # another output's
             f".bundle.new-{gone}-x5": False}           # touched recently (set below)
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "step.onnx").write_bytes(b"x")
        if not name.endswith("x5"):
            os.utime(tmp_path / name, (old, old))
    (tmp_path / f".bundle.new-{gone}-file").write_text("not a folder")
    made = durable.folder_beside(out)
    assert made.name.startswith(f".bundle.new-{os.getpid()}-") and made.is_dir()
    left = {p.name for p in tmp_path.iterdir()}
    assert {n for n, removed in names.items() if not removed} | {made.name, f".bundle.new-{gone}-file"} == left
    assert sum("left by a run that was stopped" in r.getMessage() for r in caplog.records) == 3


def test_a_folder_written_whole_through_a_link_replaces_what_it_points_to_and_never_the_current_one(
        tmp_path, monkeypatch):
    """A bundle named by a link (`bundles/current -> v3`, as a station's settings may name it)
    exported again with --force: the link was moved aside, a folder put in its place, and the
    command failed ("Cannot call rmtree on a symbolic link"), the link's target left as it was.
    `--out .` failed after the work (PosixPath('.') has an empty name) or would have left the
    shell in a deleted folder."""
    v3 = tmp_path / "v3"
    v3.mkdir()
    (v3 / "manifest.json").write_text("old")
    link = tmp_path / "current"
    link.symlink_to("v3")
    tmp = durable.folder_beside(link)
    assert tmp.parent == tmp_path and tmp.name.startswith(".v3.new-")
    (tmp / "manifest.json").write_text("new")
    durable.replace_folder(tmp, link)
    assert link.is_symlink() and (link / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v3"]
    monkeypatch.chdir(v3)
    for here in (Path("."), v3, tmp_path, link):
        with pytest.raises(ValueError, match="is the folder you are in"):
            durable.folder_beside(here)
