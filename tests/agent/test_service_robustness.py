"""Bad frames become events and the agent keeps going; bad models keep it from starting."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time

import cv2
import numpy as np
import pytest

from adgan.cli import main
from agent.segment.reference import SurfaceReference
from agent.sources.dataset import write_raw_frame
from agent.sources.synthetic import SyntheticSource
from tests.agent.conftest import AgentProcess, Subscriber, agent_config, poll


def events(sub, station="st1"):
    return sub.documents(f"adgan/{station}/events")


@pytest.fixture(scope="module")
def raw_station(tmp_path_factory):
    """A raw-layout folder: good, all-zero depth, NaN float depth, wrong size, corrupt file, good;
    and the empty-surface reference of the station."""
    root = tmp_path_factory.mktemp("raw")
    src = SyntheticSource(("sphere",), seed=11)
    folder = root / "frames"
    good = [src.frame(0), src.frame(1)]
    write_raw_frame(folder, 0, good[0])
    zero = good[0]
    write_raw_frame(folder, 1, type(zero)(rgb=zero.rgb, depth=np.zeros_like(zero.depth), timestamp=1.0,
                                          intrinsics=zero.intrinsics))
    write_raw_frame(folder, 2, good[1])
    (folder / "depth" / "2.png").unlink()
    assert cv2.imwrite(str(folder / "depth" / "2.tiff"), np.full(zero.depth.shape, np.nan, np.float32))
    write_raw_frame(folder, 3, SyntheticSource(("sphere",), seed=11, width=320, height=240).frame(0))
    write_raw_frame(folder, 4, good[1])
    (folder / "rgb" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    write_raw_frame(folder, 5, good[1])
    ref = root / "reference.npz"
    SurfaceReference.from_frames(src.empty_frames(5)).save(ref)
    return folder, ref


def run_to_end(tmp_path, broker, cfg, n_expected):
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert agent.wait(120) == 0, agent.output()
        assert sub.wait_for(lambda m: len(events(sub)) >= n_expected), agent.output()
        return events(sub), agent.output()
    finally:
        agent.stop()
        sub.close()


def test_bad_frames_are_error_events_and_the_agent_keeps_running(broker, calibrated, raw_station, tmp_path):
    bundle, thresholds = calibrated
    folder, ref = raw_station
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, f'type = "folder"\npath = "{folder}"\nfps = 0',
                       extra=f'[segmentation]\nreference = "{ref}"\n')
    evs, log = run_to_end(tmp_path, broker, cfg, 6)
    assert [e["source"]["frame"] for e in evs] == [0, 1, 2, 3, 4, 5]
    v = [e["verdict"] for e in evs]
    assert v[0] in ("ok", "anomaly") and v[5] in ("ok", "anomaly"), log
    assert evs[0]["score"] is not None and evs[0]["object_area_px"] >= 1500
    assert v[1:5] == ["error"] * 4
    assert "depth pixels hold a measurement" in evs[1]["error"]        # all-zero depth
    assert "depth pixels hold a measurement" in evs[2]["error"]        # NaN float depth
    assert "does not match the surface reference" in evs[3]["error"]   # 320x240 frame
    assert "not a readable image" in evs[4]["error"]                   # corrupt PNG
    for e in evs[1:5]:
        assert e["score"] is None and e["model"] is None


def test_a_part_the_colour_image_does_not_show_is_an_error_event_not_a_verdict(broker, calibrated, tmp_path):
    """The station's light off (or the colour lens covered, its stream failed), the camera's
    infrared depth still finds each part: the model scored what it could not see, and this one
    passed every part as OK (the default sphere bundle on the paper's frames at 5% light: 69% OK,
    bench/lighting_drift.py). Now an error event that says why; a blown-out image too. Lit frames
    are scored as before."""
    from agent.frame import RGBDFrame
    src = SyntheticSource(("sphere",), seed=11)
    folder = tmp_path / "frames"
    lit = [src.frame(i) for i in range(4)]
    for n, f in enumerate(lit):
        rgb = {1: (f.rgb * 0.05).astype(np.uint8), 2: np.full_like(f.rgb, 255)}.get(n, f.rgb)
        write_raw_frame(folder, n, RGBDFrame(rgb=rgb, depth=f.depth, timestamp=f.timestamp, intrinsics=f.intrinsics))
    ref = tmp_path / "reference.npz"
    SurfaceReference.from_frames(src.empty_frames(5)).save(ref)
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, f'type = "folder"\npath = "{folder}"\nfps = 0',
                       extra=f'[segmentation]\nreference = "{ref}"\n')
    evs, log = run_to_end(tmp_path, broker, cfg, 4)
    assert [e["verdict"] for e in evs][1:3] == ["error", "error"], log
    assert evs[1]["error"].startswith("the colour image is black (its brightest pixels under 32 of 255): the "
                                      "station's light is off, the colour lens is covered"), evs[1]
    assert evs[2]["error"].startswith("the colour image is blown out (over 90% of it white)"), evs[2]
    assert evs[1]["object_area_px"] >= 1500 and evs[1]["score"] is None  # depth found the part
    assert evs[0]["verdict"] in ("ok", "anomaly") and evs[3]["verdict"] in ("ok", "anomaly"), log


def test_a_part_not_wholly_in_view_is_an_error_event_not_a_verdict(broker, calibrated, tmp_path):
    """A part stopped short of its place (or pushed aside) reaches the edge of the view: the model
    judged what it saw of it, and passed it (here: the same part scored 0.234 whole and 0.202 cut, OK
    under a threshold of 0.288). Now an error event naming the edge; the part seen whole is scored as
    before. Frames: one camera frame seen through two windows, the part wholly inside the first and
    cut by the second's left edge; then cut by a region of interest."""
    from tests.agent.conftest import window
    f = SyntheticSource(("sphere",), seed=11).frame(0)  # its part spans x 306-437, y 125-253
    folder = tmp_path / "frames"
    for n, x0 in enumerate((200, 350, 200)):  # whole, cut off, whole
        write_raw_frame(folder, n, window(f, x0))
    bundle, thresholds = calibrated
    src = f'type = "folder"\npath = "{folder}"\nfps = 0'
    evs, log = run_to_end(tmp_path, broker, agent_config(tmp_path, broker.port, bundle, thresholds, src), 3)
    assert [e["verdict"] for e in evs][1] == "error" and evs[0]["verdict"] in ("ok", "anomaly"), log
    assert evs[1]["error"].startswith("the part reaches the left edge of the view (the frame): it is not wholly "
                                      "seen, so it is not judged"), evs[1]
    assert evs[1]["score"] is None and evs[1]["object_area_px"] > 1000 and evs[2]["score"] == evs[0]["score"]
    (tmp_path / "outbox.sqlite").unlink()
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src, extra='[segmentation]\nroi = [0, 0, 200, 300]\n')
    evs, log = run_to_end(tmp_path, broker, cfg, 3)  # the part of the first frame spans x 106-237: cut at x 199
    assert evs[0]["verdict"] == "error" and "reaches the right edge of the view (segmentation.roi)" in evs[0]["error"]


def test_a_region_of_interest_outside_a_frame_is_an_error_event(broker, calibrated, raw_station, tmp_path):
    """A region drawn on the 640x480 frames lies outside the 320x240 one: that frame says so (the
    station was blind to it without a word: no event in continuous mode, no_object otherwise)."""
    bundle, thresholds = calibrated
    folder, _ = raw_station
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, f'type = "folder"\npath = "{folder}"\nfps = 0',
                       extra='[segmentation]\nroi = [330, 0, 310, 480]\n')  # (no reference: its size is not the check)
    evs, _ = run_to_end(tmp_path, broker, cfg, 6)
    assert [e["source"]["frame"] for e in evs] == [0, 1, 2, 3, 4, 5]
    assert evs[3]["verdict"] == "error" and "segmentation.roi [330, 0, 310, 480] lies outside the 320x240 frame" \
        in evs[3]["error"], evs[3]
    assert not any("outside" in (e.get("error") or "") for e in evs[:3] + evs[4:])


@pytest.mark.parametrize("alternate", [False, True])
def test_in_continuous_mode_a_problem_is_said_once_whatever_its_numbers(broker, calibrated, tmp_path, alternate):
    """Six frames whose colour files are all corrupt: one problem, said once and counted after. Each
    message names its file (and a blocked camera's named its measured fraction), so until 2026-12-06
    each was an event of its own: 30 a second from a live camera. With `alternate`, every other frame
    has no depth instead: two problems, two events (the rule compared with the previous one only, so
    two problems that alternate were an event a frame)."""
    bundle, thresholds = calibrated
    src = SyntheticSource(("sphere",), seed=11)
    folder = tmp_path / "frames"
    for i in range(6):
        f = src.frame(i)
        if alternate and i % 2:
            f = type(f)(rgb=f.rgb, depth=np.zeros_like(f.depth), timestamp=float(i), intrinsics=f.intrinsics)
        write_raw_frame(folder, i, f)
        if not (alternate and i % 2):
            (folder / "rgb" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, f'type = "folder"\npath = "{folder}"\nfps = 0',
                       trigger="continuous")
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    said = 2 if alternate else 1
    try:
        assert agent.wait(120) == 0, agent.output()

        def counted(m):
            st = sub.documents("adgan/st1/status")
            return st and st[-1]["counters"]["errors_suppressed"] == 6 - said
        assert sub.wait_for(counted), agent.output()
        evs = events(sub)
    finally:
        agent.stop()
        sub.close()
    assert [e["verdict"] for e in evs] == ["error"] * said and "0.png: not a readable image" in evs[0]["error"]
    if alternate:
        assert "depth pixels hold a measurement" in evs[1]["error"]


def test_a_missing_reference_gives_error_events_until_it_is_recorded(broker, calibrated, raw_station, tmp_path):
    bundle, thresholds = calibrated
    folder, _ = raw_station
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, f'type = "folder"\npath = "{folder}"\nfps = 0',
                       extra=f'[segmentation]\nreference = "{tmp_path / "missing.npz"}"\n')
    evs, _ = run_to_end(tmp_path, broker, cfg, 6)
    assert [e["verdict"] for e in evs] == ["error"] * 6
    for good in (evs[0], evs[3], evs[5]):  # frames that would have been inspected
        assert "missing.npz is missing: record it with 'adgan agent capture-reference'" in good["error"]


def test_a_tampered_bundle_or_foreign_thresholds_stop_the_start(calibrated, bundles, tmp_path, capsys):
    bundle, thresholds = calibrated
    bad = tmp_path / "bundle"
    shutil.copytree(bundle, bad)
    onnx = next(bad.glob("*.onnx"))
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    cfg = agent_config(tmp_path, 1, bad, thresholds, 'type = "synthetic"')
    assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
    assert "sha256" in capsys.readouterr().err
    other = bundles[("all", "mse")]  # another sphere bundle: the thresholds were not made with it
    cfg = agent_config(tmp_path, 1, other, thresholds, 'type = "synthetic"')
    assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
    assert "recalibrate" in capsys.readouterr().err


def test_a_refused_start_is_said_on_mqtt_and_the_next_start_clears_it(broker, calibrated, bundles, tmp_path,
                                                                        capsys):
    """Until 2026-12-06 a refused start was said only in the station's journal: the SCADA saw
    `offline` and the last good run's retained status, with no reason."""
    bundle, thresholds = calibrated
    topic = "adgan/refusing/start_refused"

    def retained():
        sub = Subscriber(broker.port, topic)
        try:
            assert sub.subscribed.wait(10)
            time.sleep(0.5)  # (a retained message comes right after the subscription is granted)
            return [json.loads(p) for t, p, r in sub.messages if t == topic and r and p]
        finally:
            sub.close()

    other = bundles[("all", "mse")]  # thresholds not made with this bundle: refused after loading it
    cfg = agent_config(tmp_path, broker.port, other, thresholds, 'type = "synthetic"', station="refusing")
    assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
    assert "the refusal was said on MQTT" in capsys.readouterr().err
    (doc,) = retained()
    assert doc["station"] == "refusing" and doc["exit_code"] == 2 and "recalibrate" in doc["problems"][0], doc
    # validate-config says it only when asked (--mqtt: the unit's ExecStartPre); a missing bundle here
    cfg = agent_config(tmp_path, broker.port, tmp_path / "nowhere", thresholds, 'type = "synthetic"',
                       station="refusing")
    assert main(["agent", "validate-config", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
    assert "said on MQTT" not in capsys.readouterr().err and "recalibrate" in retained()[0]["problems"][0]
    assert main(["agent", "validate-config", "--mqtt", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
    assert "the refusal was said on MQTT" in capsys.readouterr().err
    assert "model.bundles.sphere" in retained()[0]["problems"][0]
    # a bad setting elsewhere in the file (the most common refusal): said through station_id and [mqtt] alone
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, 'type = "synthetic"\nfps = -1', station="refusing")
    assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
    assert "the refusal was said on MQTT" in capsys.readouterr().err
    assert "source.synthetic.fps: Input should be greater than or equal to 0" in retained()[0]["problems"][0]
    bad_mqtt = cfg.read_text().replace("[mqtt]", "[mqtt]\nqos = 7")
    cfg.write_text(bad_mqtt)
    assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
    assert "not said on MQTT: station_id or [mqtt] cannot be used either" in capsys.readouterr().err
    # no broker to tell: said so, within a second or two, not a hang
    cfg = agent_config(tmp_path, 1, tmp_path / "nowhere", thresholds, 'type = "synthetic"', station="refusing")
    t0 = time.monotonic()
    assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
    assert "the refusal was not said on MQTT (127.0.0.1:1)" in capsys.readouterr().err
    assert time.monotonic() - t0 < 4
    # a start clears it
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, 'type = "synthetic"\ncount = 2\nfps = 0',
                       station="refusing")
    assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 0
    assert retained() == []


def test_an_engine_that_fails_to_start_is_a_refused_start_said_as_one_line(broker, calibrated, tmp_path, capsys,
                                                                          monkeypatch):
    """The engine failing in its warm-up run (ONNX Runtime out of memory, a TensorRT context not
    created: RuntimeErrors and ONNX Runtime's own classes, which are neither ValueErrors nor
    BackendUnavailable) ended `adgan agent run` with a traceback, exit 1, said neither as a refusal
    nor on `start_refused`. Mocked where the failure cannot be made here (memory exhausted)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from agent.scoring.onnxruntime import OnnxRuntimeBackend
    closed = []

    def failing_warmup(self, bundle):
        raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory")

    monkeypatch.setattr(OnnxRuntimeBackend, "warmup", failing_warmup)
    monkeypatch.setattr(OnnxRuntimeBackend, "close", lambda self: closed.append(self))
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, 'type = "synthetic"', station="oom")
    sub = Subscriber(broker.port, "adgan/oom/start_refused")
    try:
        assert sub.subscribed.wait(10)
        assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
        err = capsys.readouterr().err
        assert "the onnxruntime engine could not start: RuntimeException: " in err and "Failed to allocate" in err
        assert "Traceback" not in err and "the refusal was said on MQTT" in err
        assert sub.wait_for(lambda m: sub.documents("adgan/oom/start_refused"))
        (doc,) = sub.documents("adgan/oom/start_refused")
        assert doc["exit_code"] == 2 and "could not start: RuntimeException" in doc["problems"][0], doc
        assert len(closed) == 1  # the engine opened is closed, not left holding its memory
    finally:
        sub.close()


def test_a_bad_setting_stops_the_start_naming_the_field(calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, 1, bundle, thresholds, 'type = "synthetic"\nfps = -1')
    assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "source.synthetic.fps" in err and "greater than or equal to 0" in err


def test_a_second_agent_on_the_same_outbox_is_refused_and_said(broker, calibrated, tmp_path, capsys):
    """Started by hand beside the service, a second agent would repeat the first one's sequence
    numbers (both count from the same file) and send its events too."""
    from agent.mqtt.files import AgentLock
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, 'type = "synthetic"\nfps = 5')
    first = AgentProcess(cfg, tmp_path / "first.log")
    try:
        assert poll(lambda: " ready: " in first.output(), 60), first.output()
        holder = f"pid {first.proc.pid}, since "
        assert main(["agent", "validate-config", "--config", str(cfg), "--env-file", "/nonexistent"]) == 0
        said = capsys.readouterr()
        assert f"is in use by a running agent ({holder}" in said.out + said.err
        assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
        err = capsys.readouterr().err
        assert f"outbox {tmp_path / 'outbox.sqlite'} is in use by another agent ({holder}" in err, err
        assert first.proc.poll() is None  # the first one goes on
    finally:
        first.stop()  # SIGKILL: the kernel releases its lock
    lock = AgentLock(tmp_path / "outbox.sqlite")
    assert lock.holder() is None
    lock.acquire()
    lock.release()


def test_a_lock_file_deleted_while_the_agent_runs_is_taken_again(broker, calibrated, tmp_path, capsys):
    """A person 'cleaning up a stale lock' deleted <outbox>.lock under a running agent: its
    lock stayed on the deleted file, so a second agent made a new one, took it and ran beside
    the first, repeating its sequence numbers. The running agent takes the lock again."""
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, 'type = "synthetic"\nfps = 5')
    lock = tmp_path / "outbox.sqlite.lock"
    first = AgentProcess(cfg, tmp_path / "first.log")
    try:
        assert poll(lambda: " ready: " in first.output(), 60), first.output()
        lock.unlink()
        assert poll(lambda: "taken again" in first.output(), 10), first.output()
        assert f"pid {first.proc.pid}" in lock.read_text()
        assert main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
        assert "is in use by another agent" in capsys.readouterr().err
        assert first.proc.poll() is None
        lock.unlink()                                  # replaced by a file of the same name
        lock.write_text("")
        assert poll(lambda: first.output().count("taken again") == 2, 10), first.output()
    finally:
        first.stop()


def test_a_lock_taken_by_another_agent_after_a_deletion_is_an_error_until_it_lets_go(tmp_path, caplog,
                                                                                      monkeypatch):
    from agent.mqtt.files import AgentLock
    monkeypatch.setattr(AgentLock, "CHECK_S", 0.0)
    caplog.set_level(logging.WARNING)
    first = AgentLock(tmp_path / "outbox.sqlite")
    first.acquire()
    first.path.unlink()
    second = AgentLock(tmp_path / "outbox.sqlite")
    second.acquire()                     # before the first one looked: it made a new file and took it
    for _ in range(3):
        first.check()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "in use by another agent" in errors[0] and f"pid {os.getpid()}" in errors[0], errors
    second.release()
    first.check()
    assert "taken again" in caplog.records[-1].getMessage()
    fd = os.open(first.path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held again, by the first
    finally:
        os.close(fd)
    first.release()


def test_a_configuration_edited_while_the_agent_runs_is_said_once(broker, calibrated, synth_data, tmp_path):
    """agent.toml is read only at start: an operator's edit on a running station waited, silently,
    for the next restart. Now it is said (once per edit), and the agent goes on as it was."""
    from tests.agent.conftest import free_port, scrape
    bundle, thresholds = calibrated
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 20'
    port = free_port()
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src,
                       extra=f"[metrics]\nenabled = true\nport = {port}\n")
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")

    def config():
        return sub.documents("adgan/st1/status")[-1]["config"]

    try:
        assert sub.wait_for(lambda m: len(sub.documents("adgan/st1/events")) >= 2, 60), agent.output()
        assert config() == {"edited": []}
        assert "adgan_config_edited 0.0" in scrape(f"http://127.0.0.1:{port}/metrics")
        cfg.write_text(cfg.read_text().replace("status_interval_s = 0.5", "status_interval_s = 2"))
        said = f"{cfg} changed since the agent started: it is read only at start, so the change is not in force"
        assert poll(lambda: said in agent.output(), 20), agent.output()[-3000:]
        assert sub.wait_for(lambda m: config()["edited"], 10)
        assert [e["path"] for e in config()["edited"]] == [str(cfg)]  # (until a restart; the status still 0.5 s)
        assert "adgan_config_edited 1.0" in scrape(f"http://127.0.0.1:{port}/metrics")
        n = len(sub.documents("adgan/st1/events"))
        assert sub.wait_for(lambda m: len(sub.documents("adgan/st1/events")) >= n + 20, 30)  # it goes on
        assert agent.output().count(said) == 1
        assert agent.terminate() == 0
    finally:
        agent.stop()
        sub.close()


def test_a_settings_file_written_again_as_it_was_is_no_edit(tmp_path, caplog):
    """A configuration tool (Ansible, Puppet) rewrites a file with what it held at every run, and
    an operator may undo an edit: neither is an edit waiting for a restart."""
    from agent import config_watch
    caplog.set_level(logging.INFO, "agent.config_watch")
    cfg = tmp_path / "agent.toml"
    cfg.write_text('station_id = "st1"\n')
    watch = config_watch.ConfigWatch([cfg, None, tmp_path / "no.env"])

    def looked() -> list[str]:
        watch.look()
        watch.look()  # (a change is taken once it looks the same twice)
        return [e["path"] for e in config_watch.status()["edited"]]
    os.utime(cfg, (1, 1))
    cfg.write_text('station_id = "st1"\n')  # the same bytes, a new file time
    assert looked() == [] and caplog.text == ""
    cfg.write_text('station_id = "st2"\n')
    assert looked() == [str(cfg)] and "changed since the agent started" in caplog.text
    cfg.write_text('station_id = "st1"\n')  # undone
    assert looked() == [] and "is again as the agent read it at start" in caplog.text
