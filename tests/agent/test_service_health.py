"""systemd notify and watchdog, the status heartbeat, and a camera that comes and goes."""
from __future__ import annotations

import shutil
import socket
import time

import pytest

from agent.health import SystemdNotifier
from agent.sources.synthetic import SyntheticSource
from tests.agent.conftest import AgentProcess, Subscriber, agent_config


class NotifySocket:
    """What systemd listens on: a datagram socket named by NOTIFY_SOCKET."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def collect(self, until, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until(self.messages):
                return True
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return until(self.messages)


def test_notifier_speaks_the_sd_notify_protocol(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    n = SystemdNotifier({"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "100000"})
    assert n.enabled and n.watchdog_interval == pytest.approx(0.05)
    n.ready("warm")
    n.watchdog()
    n.watchdog()  # rate-limited: only one ping within half the period
    time.sleep(0.06)
    n.watchdog()
    n.stopping()
    assert ns.collect(lambda m: len(m) >= 4, 2)
    assert ns.messages == ["READY=1\nSTATUS=warm", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]
    assert not SystemdNotifier({}).enabled  # outside systemd: no-ops
    SystemdNotifier({}).ready()
    other = SystemdNotifier({"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is meant for another process


def test_ready_after_warm_up_then_watchdog_pings_from_the_loop(broker, calibrated, synth_data, tmp_path):
    bundle, thresholds = calibrated
    ns = NotifySocket(tmp_path / "notify")
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 5'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src)
    agent = AgentProcess(cfg, tmp_path / "agent.log", env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "400000"})
    try:
        assert ns.collect(lambda m: sum(x == "WATCHDOG=1" for x in m) >= 5, 60), agent.output()
        assert agent.terminate(30) == 0
        assert ns.collect(lambda m: "STOPPING=1" in m, 5)
    finally:
        agent.stop()
    ready = next(i for i, m in enumerate(ns.messages) if m.startswith("READY=1"))
    assert "class sphere" in agent.output().split("ready")[0]  # the model was loaded and warmed up first
    assert ready < ns.messages.index("WATCHDOG=1")
    assert any(m.startswith("STATUS=") and "events" in m for m in ns.messages)


def test_a_camera_that_is_missing_is_retried_with_backoff_and_reported(broker, calibrated, tmp_path):
    """A RealSense recording stands in for the camera: absent at start, it appears later."""
    pytest.importorskip("pyrealsense2")
    from tests.agent.sources.rs_recording import record
    bundle, thresholds = calibrated
    rec = tmp_path / "camera.db3"
    src = f'type = "realsense"\nrecording = "{rec}"\nreal_time = false'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src)
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")

    def statuses():
        return sub.documents("adgan/st1/status")

    try:
        assert sub.wait_for(lambda m: any(s["source"]["consecutive_failures"] >= 3 for s in statuses()),
                            timeout=60), agent.output()
        s = statuses()[-1]
        assert s["source"]["state"] == "reconnecting" and "does not exist" in s["source"]["last_error"]
        assert agent.proc.poll() is None  # still running, heartbeat going
        frames = [f for f in SyntheticSource(("sphere",), seed=2, width=320, height=240).empty_frames(1)]
        part = SyntheticSource(("sphere",), seed=2, width=320, height=240).frame(0)
        tmp = tmp_path / "tmp.db3"
        # playback may drop a frame or two at the ends (colour and depth synced by pyrealsense2):
        # six part frames leave room for that and still show the recovered camera streaming
        record(tmp, [(f.rgb, f.depth, f.intrinsics) for f in frames + [part] * 6])
        shutil.move(tmp, rec)
        assert agent.wait(60) == 0, agent.output()  # the recording ends, so does the agent
        assert sub.wait_for(lambda m: any(t.endswith("/events") for t, _, _ in m)), agent.output()
    finally:
        agent.stop()
        sub.close()
    last = statuses()[-1]
    assert last["source"]["reconnects"] == 1 and last["source"]["failures"] >= 3
    assert last["mqtt"]["commands_ready"] is True and last["mqtt"]["subscriptions_refused"] == 0
    assert last["counters"]["frames"] >= 3
    # the failures were paced, doubling from 0.2 s: three failures take at least 0.2 + 0.4 s
    assert "reopening in 0.2 s" in agent.output() and "reopening in 0.4 s" in agent.output()


def test_uptime_and_the_pages_hourly_rates_do_not_follow_the_wall_clock(calibrated, tmp_path, monkeypatch):
    """A Jetson has no clock battery: it boots at the time it last saved, and NTP then sets the
    wall clock hours or years ahead. Uptime and the operator page's last hour must not jump."""
    from agent.service import Agent
    from agent.settings import load_settings
    from agent.web.page import OperatorPage
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, 1883, bundle, thresholds, 'type = "synthetic"')
    agent = Agent(load_settings(cfg, env_file=None))
    page = OperatorPage(agent.s.web, agent.status, lambda: True)
    page._server = object()  # (serving is not what is tested here: the rates are)
    page.event({"seq": 1, "event_id": "e1", "verdict": "ok"}, None)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3 * 365 * 86400)
    assert 0 <= agent.status()["uptime_s"] < 60
    assert page.snapshot()["per_hour"]["ok"] == 1
    assert agent.clock.check() > 3 * 365 * 86400 - 60  # the jump is said, and counted in status
    assert agent.status()["clock"] == {"jumps": 1, "last_jump_s": pytest.approx(3 * 365 * 86400, abs=60)}


class Clocks:
    def __init__(self) -> None:
        self.wall, self.mono = 1.8e9, 100.0

    def tick(self, s: float, wall_extra: float = 0.0) -> None:
        self.mono += s
        self.wall += s + wall_extra


def test_a_jump_of_the_wall_clock_is_said_once_and_ntp_slewing_is_not_a_jump(caplog):
    from agent.health import ClockWatch
    c = Clocks()
    w = ClockWatch(wall=lambda: c.wall, mono=lambda: c.mono)
    for _ in range(1000):  # NTP's slew: 0.5 ms a second, 500 s in all
        c.tick(1.0, 0.0005)
        assert w.check() is None
    with caplog.at_level("WARNING", logger="agent.health"):
        c.tick(0.1, -3600.0)  # set back an hour
        assert w.check() == pytest.approx(-3600.0)
        c.tick(0.1)
        assert w.check() is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("the wall clock jumped -3600.0 s"), said
    assert w.status() == {"jumps": 1, "last_jump_s": -3600.0}


def test_a_clock_before_the_bundle_was_made_is_said(caplog):
    from agent.health import ClockWatch, iso_time
    made = iso_time("2026-12-04T10:00:00+00:00")
    assert made == 1796378400.0 and iso_time("yesterday") is None and iso_time("2026-12-04T10:00:00") is None
    with caplog.at_level("WARNING", logger="agent.health"):
        assert ClockWatch(wall=lambda: made + 3600).not_before(made, "the newest bundle")
        assert not ClockWatch(wall=lambda: made - 400 * 86400).not_before(made, "the newest bundle")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "before the newest bundle was made (2026-12-04T10:00:00Z): is it set (NTP)?" in said[0]


def test_a_stalled_loop_is_said_with_the_stacks_and_rate_limited(tmp_path, caplog):
    from agent.health import LoopWatch
    now = [100.0]
    out = open(tmp_path / "stacks.txt", "w")
    w = LoopWatch(20.0, out=out, mono=lambda: now[0])
    with caplog.at_level("WARNING", logger="agent.health"):
        for _ in range(10):       # a loop that comes round every 5 s is not stalled
            now[0] += 5
            assert not w.check()
            w.beat()
        now[0] += 21              # stuck
        assert w.check() and not w.check()  # once per stall
        now[0] += 4
        w.beat()
        for _ in range(2):        # two more stalls within the minute: counted, not said again
            now[0] += 21
            assert w.check()
            w.beat()
        now[0] += 60
        assert w.check()          # a minute on: said again, without the stacks (at most every 10 min)
        w.beat()
    out.close()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 4, said
    assert said[0].startswith("the inspection loop has not come round for 21 s (health.stall_s)"), said
    assert said[1] == "the inspection loop came round again after 25.0 s"
    assert said[2].startswith("the inspection loop has not come round for 60 s (health.stall_s)"), said
    assert said[3] == "the inspection loop came round again after 60.0 s"
    assert "Where each thread is follows" in said[0] and "Where each thread was is above" in said[2]
    assert "(4 stalls so far" in said[2]
    stacks = (tmp_path / "stacks.txt").read_text()
    assert stacks.count("(most recent call first)") >= 1 and "test_service_health.py" in stacks, stacks
    assert stacks.count("Current thread") == 1  # one dump
    assert w.status() == {"stalls": 4, "longest_s": 60.0}


def test_sigusr1_prints_every_threads_stack_and_systemds_watchdog_signal_too(broker, calibrated, synth_data,
                                                                              tmp_path):
    """`systemctl kill -s USR1 adgan-agent` shows where a hung agent is, and it goes on; systemd's
    watchdog kills with SIGABRT, which now leaves the stacks (in <outbox>.stacks) instead of nothing."""
    import signal
    bundle, thresholds = calibrated
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 50'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src)
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(lambda m: len(m) >= 2, timeout=60), agent.output()
        agent.proc.send_signal(signal.SIGUSR1)
        n = len(sub.messages)
        assert sub.wait_for(lambda m: len(m) >= n + 3, timeout=30), agent.output()  # it goes on
        dumped = agent.output()
        assert "(most recent call first)" in dumped and 'service.py", line' in dumped, dumped
        # again and again: faulthandler.register's dump, inside the signal handler, read the other
        # threads' frames as they ran, and an agent died of SIGSEGV within 150-400 signals (until 2026-12-06)
        for _ in range(600):
            assert agent.proc.poll() is None, agent.output()[-3000:]
            agent.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.01)
        n = len(sub.messages)
        assert sub.wait_for(lambda m: len(m) >= n + 3, timeout=30), agent.output()[-3000:]
        assert agent.terminate(30, sig=signal.SIGABRT) == -signal.SIGABRT
    finally:
        agent.stop()
        sub.close()
    stacks = (tmp_path / "outbox.sqlite.stacks").read_text()  # (the next start logs them: test_run_record.py)
    assert stacks.startswith("Fatal Python error: Aborted") and stacks.count("(most recent call first)") >= 4, stacks
