"""`adgan agent capture-frames`: a station records its own raw frames for training."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from adgan.cli import main
from agent.capture import CaptureError, capture_frames, next_frame_number
from agent.segment.preprocess import Preprocessing, make_sample
from agent.segment.segmentation import SegmentationConfig, Segmenter
from agent.settings import load_settings
from agent.sources.dataset import frame_numbers, read_raw_frame, read_sample, write_raw_frame, write_sample
from agent.sources.folder import FolderSource
from agent.sources.open import open_source
from agent.sources.synthetic import SyntheticSource
from tests.agent.conftest import agent_config, fill_file_system


def station_config(tmp_path, source: str):
    """An agent.toml as a new station has it before training: no [model] section yet."""
    cfg = agent_config(tmp_path, 1883, tmp_path / "not-yet" / "sphere", tmp_path / "not-yet" / "thresholds.json",
                       source, trigger="continuous")
    text = cfg.read_text()
    cfg.write_text(text[:text.index("[model]\n")] + text[text.index("[trigger]\n"):])
    return cfg


def test_a_station_without_a_model_captures_and_cannot_inspect(tmp_path, capsys):
    cfg = station_config(tmp_path, SYNTH)
    assert "[model" not in cfg.read_text()
    assert main(["agent", "capture-reference", "--config", str(cfg), "--out", str(tmp_path / "ref.npz"),
                 "--frames", "3", "--env-file", "/nonexistent"]) == 0
    assert main(["agent", "capture-frames", "--config", str(cfg), "--out", str(tmp_path / "f"), "--count", "2",
                 "--env-file", "/nonexistent"]) == 0
    assert frame_numbers(tmp_path / "f") == [0, 1]
    capsys.readouterr()
    for command in ("validate-config", "run"):
        assert main(["agent", command, "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
        assert "model: missing: inspecting needs a [model] section" in capsys.readouterr().err


SYNTH = 'type = "synthetic"\nclasses = ["sphere", "cylinder"]\nseed = 4\nframes_per_part = 4\ngap_frames = 2\n' \
        'count = 36\nfps = 0'


def same_frame(got, want) -> bool:
    return np.array_equal(got.rgb, want.rgb) and np.array_equal(got.depth, want.depth) \
        and got.intrinsics == want.intrinsics and got.timestamp == want.timestamp


def test_one_frame_per_settled_part_then_more_after_them_and_prepare_reads_them(tmp_path, capsys):
    cfg, out = station_config(tmp_path, SYNTH), tmp_path / "frames"
    assert main(["agent", "capture-frames", "--config", str(cfg), "--out", str(out), "--count", "4", "--parts",
                 "--env-file", "/nonexistent"]) == 0
    said = capsys.readouterr()
    assert "4 frame(s) written" in said.out and "frames 0-3" in said.out and "adgan dataset prepare" in said.out
    # 6 frames a part (4 on the table, 2 empty): each part is recorded once, on the frame where
    # it settled (its third still frame), the frame the agent would inspect
    stream = open_source(load_settings(cfg).source)  # the same synthetic station, to compare with
    assert frame_numbers(out) == [0, 1, 2, 3]
    for n in range(4):
        got, want = read_raw_frame(out, n), stream.frame(6 * n + 2)
        assert same_frame(got, want) and got.meta["class"] == want.meta["class"]

    # a second run continues the numbering: nothing is overwritten
    assert main(["agent", "capture-frames", "--config", str(cfg), "--out", str(out), "--count", "3",
                 "--every", "5", "--env-file", "/nonexistent"]) == 0
    assert "frames 4-6" in capsys.readouterr().out
    assert frame_numbers(out) == list(range(7))
    assert same_frame(read_raw_frame(out, 0), stream.frame(2))
    for n, i in zip((4, 5, 6), (0, 5, 10)):  # every 5th frame read, from the first
        assert same_frame(read_raw_frame(out, n), stream.frame(i))

    # the recorded frames are what `adgan dataset prepare` turns into training samples
    assert main(["dataset", "prepare", str(out), "--out", str(tmp_path / "samples"), "--frames", "0:4"]) == 0
    assert frame_numbers(tmp_path / "samples") == [0, 1, 2, 3]
    assert read_sample(tmp_path / "samples", 0).rgb.shape == (64, 64, 3)


def test_a_part_that_leaves_before_settling_and_a_short_source_are_said(tmp_path, capsys):
    src = SYNTH.replace("frames_per_part = 4", "frames_per_part = 2").replace("count = 36", "count = 12")
    cfg = station_config(tmp_path, src)
    # two frames a part never settle (three still frames are needed): nothing is recorded, said
    assert main(["agent", "capture-frames", "--config", str(cfg), "--out", str(tmp_path / "f"), "--count", "5",
                 "--parts", "--env-file", "/nonexistent"]) == 1
    said = capsys.readouterr().out
    assert "0 frame(s) written" in said and "12 read; source ended" in said and "3 part(s) left before settling" in said


def test_a_torn_frame_of_a_killed_run_is_never_a_frame_nor_overwritten(tmp_path):
    out = tmp_path / "frames"
    f = SyntheticSource(("sphere",), seed=1).frame(0)
    write_raw_frame(out, 0, f)
    # a run killed while writing frame 1: its metadata and RGB are there, its depth is not
    (out / "meta" / "1.json").write_text("{}")
    (out / "rgb" / "1.png").write_bytes(b"")
    (out / "depth" / "1.png.tmp").write_bytes(b"\x89PNG")
    assert frame_numbers(out) == [0] and next_frame_number(out) == 2
    r = capture_frames(SyntheticSource(("sphere",), seed=2, count=3), out, 2)
    assert r.written == [2, 3] and r.ended == "count" and frame_numbers(out) == [0, 2, 3]
    assert r.summary() == f"2 frame(s) written to {out} (frames 2-3; 2 read; the count reached)"
    assert (out / "depth" / "1.png.tmp").read_bytes() == b"\x89PNG"
    assert next_frame_number(tmp_path / "new") == 0


class _Held(SyntheticSource):
    """A camera whose next frame waits until `go` is set, after `first` frames."""

    def __init__(self, first: int, **kw) -> None:
        import threading
        super().__init__(("sphere",), **kw)
        self.first, self.go = first, threading.Event()

    def read(self):
        if self.first <= 0:
            assert self.go.wait(30)
        self.first -= 1
        return super().read()


def test_a_second_capture_into_a_folder_being_written_is_refused(tmp_path, capsys):
    """Two captures into one folder each numbered from the same next frame, and overwrote each
    other's frames (5 of 10 kept, and one run failed on the other's temporary file)."""
    import threading
    out = tmp_path / "frames"
    held = _Held(2, seed=1, count=4)
    first = {}
    t = threading.Thread(target=lambda: first.update(r=capture_frames(held, out, 4)))
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not (out / "depth" / "1.png").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(ValueError, match="another capture is writing into it"):
            capture_frames(SyntheticSource(("sphere",), seed=2, count=3), out, 3)
        cfg = station_config(tmp_path, SYNTH)
        assert main(["agent", "capture-frames", "--config", str(cfg), "--out", str(out), "--count", "2",
                     "--env-file", "/nonexistent"]) == 2
        assert "another capture is writing into it" in capsys.readouterr().err
    finally:
        held.go.set()
        t.join(30)
    assert first["r"].written == [0, 1, 2, 3] and frame_numbers(out) == [0, 1, 2, 3]
    assert capture_frames(SyntheticSource(("sphere",), seed=2, count=3), out, 1).written == [4]  # free again


def test_bad_frames_are_skipped_and_counted(tmp_path):
    raw = tmp_path / "raw"
    frames = [SyntheticSource(("sphere",), seed=3).frame(i) for i in range(3)]
    for i, f in enumerate(frames):
        write_raw_frame(raw, i, f)
    (raw / "depth" / "1.png").write_bytes(b"not a png")
    r = capture_frames(FolderSource(raw), tmp_path / "out", 5)
    assert r.written == [0, 1] and r.bad_frames == 1 and r.ended == "source ended"
    assert same_frame(read_raw_frame(tmp_path / "out", 1), frames[2])


def test_a_full_disk_stops_the_capture_keeps_what_was_written_and_leaves_no_half_frame(small_fs):
    out = small_fs / "frames"
    src = SyntheticSource(("sphere",), seed=5)
    assert capture_frames(src, out, 1).written == [0]
    filler = fill_file_system(small_fs)
    with pytest.raises(CaptureError, match="could not write frame 1 to") as e:
        capture_frames(src, out, 3)
    assert e.value.report.written == [] and e.value.report.first == 1
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["0.json", "0.png", "0.png"]
    assert frame_numbers(out) == [0] and read_raw_frame(out, 0).depth.any()
    filler.unlink()  # space comes back: the next run goes on after frame 0
    assert capture_frames(src, out, 1).written == [1]


def test_a_disk_out_of_inodes_stops_the_capture_naming_them(tmp_path):
    """A disk full of files, not bytes (frames are three files each): the capture stopped with
    'No space left on device' where `df -h` shows room; the error names the inodes now."""
    from tests.agent.conftest import fill_inodes, tmpfs
    src = SyntheticSource(("sphere",), seed=5)
    with tmpfs(tmp_path / "fs", size="64m", inodes=64) as fs:
        assert capture_frames(src, fs / "frames", 1).written == [0]
        fill_inodes(fs)
        with pytest.raises(CaptureError, match="could not write frame 1 to") as e:
            capture_frames(src, fs / "frames", 3)
        assert "; no inode is free on its file system (all 64 used, `df -i`)" in str(e.value), e.value
        assert frame_numbers(fs / "frames") == [0]


def test_a_segmented_source_and_bad_counts_are_refused(tmp_path, capsys):
    samples = tmp_path / "samples"
    write_sample(samples, 0, a_sample())
    cfg = station_config(tmp_path, f'type = "folder"\npath = "{samples}"')
    assert main(["agent", "capture-frames", "--config", str(cfg), "--out", str(tmp_path / "f"),
                 "--env-file", "/nonexistent"]) == 2
    assert "replays segmented samples" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # (argparse's refusal, as the command line is read: exit 2)
        main(["agent", "capture-frames", "--config", str(cfg), "--out", str(tmp_path / "f"), "--count", "0",
              "--env-file", "/nonexistent"])
    assert e.value.code == 2 and "--count: must be a whole number >= 1, got 0" in capsys.readouterr().err
    cfg = station_config(tmp_path, SYNTH)
    assert main(["agent", "capture-frames", "--config", str(cfg), "--out", str(tmp_path / "f"), "--parts",
                 "--every", "3", "--env-file", "/nonexistent"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()
    (tmp_path / "a-file").write_text("")
    assert main(["agent", "capture-frames", "--config", str(cfg), "--out", str(tmp_path / "a-file"),
                 "--env-file", "/nonexistent"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def a_sample():
    f = SyntheticSource(("sphere",), seed=1).frame(0)
    return make_sample(f, Segmenter(SegmentationConfig(), None)(f), Preprocessing())


def test_sigterm_stops_after_the_frame_being_written_and_keeps_every_frame(tmp_path):
    src = 'type = "synthetic"\nclasses = ["sphere"]\nseed = 6\nfps = 20'
    cfg, out = station_config(tmp_path, src), tmp_path / "frames"
    p = subprocess.Popen([sys.executable, "-m", "adgan", "agent", "capture-frames", "--config", str(cfg),
                          "--out", str(out), "--count", "100000", "--env-file", "/nonexistent"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "depth" / "3.png").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert p.returncode == 0, stderr
    assert "stop requested" in stdout
    nums = frame_numbers(out)
    assert len(nums) >= 4 and nums == list(range(len(nums))) and f"frames 0-{nums[-1]}" in stdout
    assert not list(out.rglob("*.tmp"))
    for n in nums:
        assert read_raw_frame(out, n).depth.any()


def test_frames_of_a_realsense_recording_are_written_with_their_millimetres_and_origin(tmp_path):
    pytest.importorskip("pyrealsense2")
    from tests.agent.sources.rs_recording import record
    src = SyntheticSource(("sphere", "rectangle"), seed=3, width=320, height=240)
    frames = [src.frame(i) for i in range(6)]
    rec = tmp_path / "station.db3"
    record(rec, [(f.rgb, f.depth, f.intrinsics) for f in frames])
    cfg = station_config(tmp_path, f'type = "realsense"\nrecording = "{rec}"\nreal_time = false\n'
                                   'width = 320\nheight = 240')
    out = tmp_path / "frames"
    assert main(["agent", "capture-frames", "--config", str(cfg), "--out", str(out), "--count", "50",
                 "--env-file", "/nonexistent"]) == 0
    nums = frame_numbers(out)
    # the syncer may hold back a pair and rs.pipeline may drop some (see test_realsense.py)
    assert len(nums) >= 3 and nums == list(range(len(nums)))
    for n in nums:
        got = read_raw_frame(out, n)
        want = frames[got.meta["source_frame"]]
        assert np.array_equal(got.rgb, want.rgb) and got.depth.dtype == np.uint16
        both = (got.depth > 0) & (want.depth > 0)
        assert np.mean(got.depth[both] == want.depth[both]) > 0.99
        assert abs(got.intrinsics.fx - want.intrinsics.fx) < 1e-3


def test_warnings_of_a_kind_thin_out_as_they_repeat(tmp_path, caplog):
    raw = tmp_path / "raw"
    write_raw_frame(raw, 119, SyntheticSource(("sphere",), seed=3).frame(0))
    for i in range(119):  # 119 unreadable frames before the good one
        (raw / "rgb" / f"{i}.png").write_bytes(b"x")
        (raw / "depth" / f"{i}.png").write_bytes(b"x")
    with caplog.at_level("WARNING", logger="agent.capture"):
        r = capture_frames(FolderSource(raw), tmp_path / "out", 1)
    assert r.written == [0] and r.bad_frames == 119
    assert [m.split("(")[-1] for m in caplog.messages] == ["1 so far)", "10 so far)", "100 so far)"]


def test_a_part_not_wholly_in_view_is_not_recorded_and_is_said(tmp_path, caplog):
    """A part that settles reaching the edge of the view (stopped short of its place) was recorded
    as a training frame of the product: the model would learn parts cut off. Now counted and said.
    Frames: one camera frame seen through two windows, the part wholly inside the first and cut by
    the second's left edge, with empty views between the parts."""
    from agent.passage import PassageTrigger
    from agent.segment.station import StationSegmenter
    from tests.agent.conftest import window
    src = SyntheticSource(("sphere",), seed=11)
    f, empty, n = src.frame(0), next(iter(src.empty_frames(1))), 0
    for x0, frame, times in ((200, f, 4), (200, empty, 2), (350, f, 4), (350, empty, 2), (200, f, 4)):
        for _ in range(times):  # whole, cut off, whole
            write_raw_frame(tmp_path / "frames", n, window(frame, x0))
            n += 1
    report = capture_frames(FolderSource(tmp_path / "frames"), tmp_path / "kept", 5, passage=PassageTrigger(
        min_area_px=300), segmenter=StationSegmenter(SegmentationConfig(), None))
    assert len(report.written) == 2 and report.cut_off == 1, report
    assert "1 part(s) not wholly in view, not recorded" in report.summary()
    assert any("the part reaches the left edge of the view (the frame)" in r.getMessage() for r in caplog.records)


def test_frames_whose_colour_image_shows_nothing_are_not_recorded_and_are_said(tmp_path, caplog):
    """The station's light off while it records its training frames: they were recorded, and
    prepared they would teach the model black parts. Every mode: counted, said, not recorded."""
    from agent.frame import RGBDFrame
    src = SyntheticSource(("sphere",), seed=11)
    for n in range(3):
        f = src.frame(n)
        rgb = (f.rgb * 0.05).astype(np.uint8) if n == 1 else f.rgb
        write_raw_frame(tmp_path / "frames", n, RGBDFrame(rgb, f.depth, f.timestamp, f.intrinsics))
    report = capture_frames(FolderSource(tmp_path / "frames"), tmp_path / "kept", 5)
    assert len(report.written) == 2 and report.unlit == 1, report
    assert "1 frame(s) whose colour image shows nothing, not recorded" in report.summary()
    assert any(r.getMessage().startswith("the colour image is black") for r in caplog.records)
    assert np.array_equal(read_raw_frame(tmp_path / "kept", 1).rgb, src.frame(2).rgb)


def test_capture_reference_refuses_an_output_it_cannot_write_before_recording_and_says_a_full_disk(
        tmp_path, small_fs, capsys):
    """Until 2026-12-07 capture-reference recorded the empty surface first and then ended in a
    traceback where it could not write --out (a folder there, a missing folder, a full disk)."""
    cfg = station_config(tmp_path, SYNTH)
    args = ["--frames", "2", "--config", str(cfg), "--env-file", "/nonexistent"]
    (tmp_path / "a-folder").mkdir()
    assert main(["agent", "capture-reference", "--out", str(tmp_path / "a-folder"), *args]) == 2
    err = capsys.readouterr().err
    assert "is a folder; give a file's path" in err and "recording" not in err, err
    assert main(["agent", "capture-reference", "--out", str(tmp_path / "new" / "ref.npz"), *args]) == 0
    assert (tmp_path / "new" / "ref.npz").is_file()  # (its folder made, as capture-frames makes its own)
    capsys.readouterr()
    filler = fill_file_system(small_fs)
    assert main(["agent", "capture-reference", "--out", str(small_fs / "ref.npz"), *args]) == 1
    err = capsys.readouterr().err
    assert "the surface reference was not written: " in err and "No space left on device" in err, err
    assert f"nothing was written to {small_fs / 'ref.npz'}" in err and "Traceback" not in err, err
    assert not (small_fs / "ref.npz").exists() and not list(small_fs.glob("ref.npz*"))
    assert filler.exists()


def test_capture_commands_name_a_folder_that_is_another_users(station_user, tmp_path):
    """Run as the station's own user into a folder made with sudo: capture-reference ended in a
    traceback after recording, capture-frames said '[Errno 13] Permission denied'."""
    from tests.agent.conftest import NOBODY, ROOT
    wrap, base = station_user
    cfg = station_config(base, SYNTH)
    cfg.chmod(0o644)
    (base / "frames").mkdir()

    def as_user(*args) -> subprocess.CompletedProcess:
        code = ("import sys\nfrom adgan.cli import main\n"
                f"sys.exit(main(['agent', *{list(args)!r}, '--config', {str(cfg)!r}, '--env-file', '/nonexistent']))")
        return subprocess.run([*wrap, sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    owned = f"is owned by root (uid 0), mode 0755, and this agent runs as nobody (uid {NOBODY})"
    r = as_user("capture-reference", "--out", str(base / "ref.npz"), "--frames", "2")
    assert r.returncode == 2 and "recording" not in r.stderr, r.stderr
    assert f"{base} cannot be written by this agent's user (Permission denied; it {owned}): give it to that user " \
           f"(`chown nobody: {base}`)" in r.stderr, r.stderr
    r = as_user("capture-frames", "--out", str(base / "frames" / "sphere"), "--count", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"the capture stopped: {base / 'frames' / 'sphere'} cannot be written by this agent's user (Permission " \
           f"denied; {base / 'frames'} {owned}): give {base / 'frames'} to that user" in r.stderr, r.stderr
    # a folder this user may not even enter (root's, 0700): a traceback from the check for a folder at --out
    shut = base / "shut"
    shut.mkdir(mode=0o700)
    for args, rc in ((("capture-reference", "--out", str(shut / "sub" / "ref.npz"), "--frames", "2"), 2),
                     (("capture-frames", "--out", str(shut / "frames"), "--count", "2"), 1)):
        r = as_user(*args)
        assert r.returncode == rc and "Traceback" not in r.stderr, r.stderr
        assert f"cannot be written by this agent's user (Permission denied; {shut} is owned by root (uid 0), mode " \
               f"0700, and this agent runs as nobody (uid {NOBODY})): give {shut} to that user" in r.stderr, r.stderr
