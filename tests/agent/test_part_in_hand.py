"""The part in hand is answered whatever happens to it: an engine or library failing in the
middle of its inspection (ONNX Runtime's own exception classes, which are not RuntimeErrors;
OpenCV's), after which the agent goes on; a stop, or a replay's end, after its request was
taken. Mocked only where the failure itself cannot be made here (an allocation failure inside
ONNX Runtime, OpenCV failing)."""
from __future__ import annotations

import threading

from agent.service import Agent
from agent.settings import load_settings
from tests.agent.conftest import Subscriber, agent_config
from tests.agent.conftest import poll as wait
from tests.agent.test_service import mixed_folder


class FailingSession:
    """An ONNX Runtime session whose runs fail on the calls numbered in `failing` (1-based)."""

    def __init__(self, sess, failing: set[int], error: BaseException) -> None:
        self.sess, self.failing, self.error, self.calls = sess, failing, error, 0

    def run_with_iobinding(self, io, *a, **kw):
        self.calls += 1
        if self.calls in self.failing:
            raise self.error
        return self.sess.run_with_iobinding(io, *a, **kw)

    def __getattr__(self, name):
        return getattr(self.sess, name)


def station(broker, calibrated, synth_data, tmp_path, pace: str = "fps = 0\nloop = true"):
    """(agent, its loop's thread, subscriber): an mqtt-triggered station replaying samples."""
    bundle, thresholds = calibrated
    mixed_folder(synth_data, tmp_path / "samples")
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds,
                       f'type = "folder"\npath = "{tmp_path / "samples"}"\n{pace}', trigger="mqtt")
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = Agent(load_settings(cfg, env_file=None))
    agent.start()
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, thread, sub


def events(sub):
    return sub.documents("adgan/st1/events")


def test_an_engine_failure_mid_inspection_is_an_error_event_for_that_part_and_the_agent_goes_on(
        broker, calibrated, synth_data, tmp_path):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException
    agent, thread, sub = station(broker, calibrated, synth_data, tmp_path)
    try:
        engine = agent.models["sphere"].searcher.backend
        engine.step_sess = FailingSession(engine.step_sess, {3}, RuntimeException(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"))
        for pid in ("P1", "P2"):
            agent._on_trigger_command(f'{{"part_id": "{pid}"}}'.encode())
            assert wait(lambda: len(events(sub)) >= int(pid[1:]), 30), (events(sub), thread.is_alive())
        assert thread.is_alive()
    finally:
        agent.request_stop()
        thread.join(30)
        sub.close()
    p1, p2 = events(sub)[:2]
    assert p1["part_id"] == "P1" and p1["verdict"] == "error" and "Failed to allocate memory" in p1["error"]
    assert p1["error"].startswith("scoring failed: RuntimeException: ")
    assert p2["part_id"] == "P2" and p2["verdict"] in ("ok", "anomaly")
    assert agent.counters.get("internal_errors") == 1


def test_an_engine_that_keeps_failing_ends_the_agent_with_code_1_and_every_part_answered(
        broker, calibrated, synth_data, tmp_path):
    """A broken engine (a GPU context lost) fails every inspection: each part is answered, and
    after EngineFailures.RESTART_AFTER in a row the agent stops with exit code 1 (systemd's
    Restart=on-failure starts it afresh), answering what still waits."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from agent.health import EngineFailures
    agent, thread, sub = station(broker, calibrated, synth_data, tmp_path)
    engine = agent.models["sphere"].searcher.backend
    engine.step_sess = FailingSession(engine.step_sess, set(range(1, 10 ** 6)), Fail("CUDA failure 999: unknown"))
    try:
        agent.commands.max_pending = 10
        with agent.commands._cond:  # one burst, before the loop takes any (its lock is reentrant)
            for i in range(EngineFailures.RESTART_AFTER + 2):
                agent._on_trigger_command(f'{{"part_id": "P{i}"}}'.encode())
        assert wait(lambda: not thread.is_alive(), 60), events(sub)
    finally:
        agent.request_stop()
        thread.join(30)
    assert wait(lambda: len(events(sub)) == EngineFailures.RESTART_AFTER + 2, 10), events(sub)
    sub.close()
    evs = events(sub)
    assert [e["part_id"] for e in evs] == [f"P{i}" for i in range(EngineFailures.RESTART_AFTER + 2)]
    n = EngineFailures.RESTART_AFTER
    assert all(e["error"] == "scoring failed: Fail: CUDA failure 999: unknown" for e in evs[:n])
    assert all(e["error"].startswith("requested inspection not made: the agent stopped (5 inspections in a row "
                                     "failed in the engine") for e in evs[n:])
    assert agent.exit_code == 1 and agent.counters.get("internal_errors") == n


def test_a_library_failing_on_one_frame_is_an_error_event_and_the_agent_goes_on(
        broker, calibrated, synth_data, tmp_path, monkeypatch):
    import cv2

    from agent import service
    calls = []
    real = service.reframe

    def reframe(*a, **kw):  # OpenCV failing on the second sample
        calls.append(1)
        if len(calls) == 2:
            raise cv2.error("OpenCV(4.10.0) resize.cpp:4152: error: (-215:Assertion failed) !ssize.empty()")
        return real(*a, **kw)
    monkeypatch.setattr(service, "reframe", reframe)
    agent, thread, sub = station(broker, calibrated, synth_data, tmp_path)
    try:
        for pid in ("A", "B", "C"):
            agent._on_trigger_command(f'{{"part_id": "{pid}"}}'.encode())
            assert wait(lambda: len(events(sub)) >= "ABC".index(pid) + 1, 30), (events(sub), thread.is_alive())
    finally:
        agent.request_stop()
        thread.join(30)
        sub.close()
    a, b, c = events(sub)
    assert a["verdict"] in ("ok", "anomaly") and c["verdict"] in ("ok", "anomaly") and agent.exit_code == 0
    assert b["part_id"] == "B" and b["error"].startswith("inspection failed: error: OpenCV(4.10.0) resize.cpp")
    assert agent.counters.get("internal_errors") == 1


def test_a_request_taken_when_the_agent_is_asked_to_stop_is_answered(broker, calibrated, synth_data, tmp_path):
    """A SIGTERM while the loop, a request in hand, waits for the replay's next frame (fps): the
    request is answered at the stop like those still waiting. Until 2026-12-06 it was dropped."""
    import signal
    import time
    agent, thread, sub = station(broker, calibrated, synth_data, tmp_path, pace="fps = 0.2")
    try:
        agent._on_trigger_command(b'{"part_id": "A"}')
        assert wait(lambda: len(events(sub)) == 1, 30)
        agent._on_trigger_command(b'{"part_id": "B"}')  # taken at once; the next frame is 5 s away
        assert wait(lambda: agent.commands.status()["inspections"] == 0, 5)
        time.sleep(0.2)
        agent.request_stop(signal.SIGTERM)
        thread.join(30)
    finally:
        agent.request_stop()
        thread.join(30)
    assert wait(lambda: len(events(sub)) == 2, 10), events(sub)
    sub.close()
    b = events(sub)[1]
    assert (b["part_id"], b["error"]) == ("B", "requested inspection not made: the agent stopped (SIGTERM)")


def test_a_request_left_when_a_replay_ends_is_answered(broker, calibrated, synth_data, tmp_path):
    """More parts requested than a finite replay holds: the request that finds no frame is
    answered when the agent stops at the replay's end. Until 2026-12-06 it was dropped."""
    bundle, thresholds = calibrated
    n = mixed_folder(synth_data, tmp_path / "samples")
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds,
                       f'type = "folder"\npath = "{tmp_path / "samples"}"\nfps = 0', trigger="mqtt")
    cfg.write_text(cfg.read_text().replace('mode = "mqtt"', f'mode = "mqtt"\nmax_pending = {n + 5}'))
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = Agent(load_settings(cfg, env_file=None))
    agent.start()
    for i in range(n + 2):
        agent._on_trigger_command(f'{{"part_id": "P{i}"}}'.encode())
    assert agent.run() == 0  # (the replay ends)
    assert wait(lambda: len(events(sub)) == n + 2, 30), len(events(sub))
    sub.close()
    evs = events(sub)
    assert [e["part_id"] for e in evs] == [f"P{i}" for i in range(n + 2)]
    assert all(e["verdict"] in ("ok", "anomaly") for e in evs[:n])
    assert {e["error"] for e in evs[n:]} == {
        "requested inspection not made: the agent stopped (the source has no more frames)"}
