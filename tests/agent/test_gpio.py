"""Digital I/O driven through the real agent loop (issue 17): a trigger edge in, a verdict line
out. The in-memory chip stands in for the hardware; the kernel's gpio-sim runs the gpiod
backend where this machine has it."""
from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from agent.gpio.lines import GpioError, MemoryChip, open_chip
from agent.service import Agent
from agent.settings import load_settings
from tests.agent.conftest import Subscriber, agent_config
from tests.agent.conftest import poll as wait
from tests.agent.mqtt.test_faults import send
from tests.agent.test_service import mixed_folder

TRIGGER, OK, NG, ERROR, BUSY, READY = range(6)


def gpio_config(tmp_path, broker, calibrated, folder, chip: str, mode: str = "hold") -> Path:
    bundle, thresholds = calibrated
    return agent_config(tmp_path, broker.port, bundle, thresholds, f'type = "folder"\npath = "{folder}"\nfps = 0',
                        trigger="gpio", extra=f"""\
                            [gpio]
                            enabled = true
                            backend = "memory"
                            chip = "{chip}"
                            trigger_line = {TRIGGER}
                            ok_line = {OK}
                            ng_line = {NG}
                            error_line = {ERROR}
                            busy_line = {BUSY}
                            ready_line = {READY}
                            debounce_ms = 2
                            dead_time_ms = 40
                            output_mode = "{mode}"
                            pulse_ms = 30
                            """)


class Running:
    """The agent's own loop in a thread of this process (the memory chip is per process)."""

    def __init__(self, cfg: Path) -> None:
        self.agent = Agent(load_settings(cfg, env_file=None))
        self.agent.start()
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.agent.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


def events(sub):
    return sub.documents("adgan/st1/events")


def folder_station(broker, calibrated, synth_data, tmp_path, trigger: str = ""):
    """(samples, subscriber, running agent, chip): gpio mode replaying a folder of mixed samples
    (one per edge), once its ready line is active; `trigger`: settings added to [trigger]."""
    n = mixed_folder(synth_data, tmp_path / "samples")
    name = f"test-{uuid.uuid4()}"
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    cfg = gpio_config(tmp_path, broker, calibrated, tmp_path / "samples", name)
    cfg.write_text(cfg.read_text().replace("[trigger]\n", f"[trigger]\n{trigger}\n"))
    run = Running(cfg)
    chip = MemoryChip.named(name)
    assert wait(lambda: chip.outputs[READY].active), "ready never went active"
    return n, sub, run, chip


def test_an_edge_inspects_one_part_and_its_verdict_line_follows(broker, calibrated, synth_data, tmp_path):
    n, sub, run, chip = folder_station(broker, calibrated, synth_data, tmp_path)
    try:
        out = chip.outputs
        trig = chip.inputs[TRIGGER]
        seen = []
        for i in range(4):
            t0 = time.monotonic_ns()
            trig.drive(True, t0)
            trig.drive(False, t0 + 1_000)      # contact bounce within debounce_ms: one trigger
            trig.drive(True, t0 + 2_000)
            trig.drive(False, time.monotonic_ns() + 5_000_000)
            assert wait(lambda: len(events(sub)) == i + 1), run.agent.status()
            assert wait(lambda: not out[BUSY].active and (out[OK].active or out[NG].active))
            seen.append("ok" if out[OK].active else "anomaly")
            assert not (out[OK].active and out[NG].active) and not out[ERROR].active  # held until the next part
            time.sleep(0.05)  # past the dead time
        evs = events(sub)
        assert [e["verdict"] for e in evs] == seen and all(e["trigger"] == "gpio" for e in evs)
        assert [e["source"]["frame"] for e in evs] == [0, 1, 2, 3] and n > 4
        # an edge inside the dead time of the last one is ignored
        t0 = time.monotonic_ns()
        trig.drive(True, t0)
        trig.drive(False, t0 + 10_000_000)
        trig.drive(True, t0 + 20_000_000)
        assert wait(lambda: len(events(sub)) == 5)
        time.sleep(0.3)
        assert len(events(sub)) == 5
        counts = run.agent.status()["interfaces"]["gpio"]["counts"]
        assert counts["triggers"] == 5 and counts["bounces"] == 4 and counts["dead_time"] == 1
        busy = [v for _, v in out[BUSY].history]
        assert busy == [True, False] * 5  # busy from each counted edge to its verdict
    finally:
        run.stop()
        sub.close()
    assert not any(line.active for line in out.values())  # stopped: everything inactive, ready too


def test_an_edge_read_long_after_its_inspection_was_due_is_a_part_not_inspected(broker, calibrated, synth_data,
                                                                                  tmp_path):
    """The agent's process did not run (stopped, frozen, the machine suspended) while a part passed: the
    kernel kept its edge and time, read when the process runs again. Until 2026-12-07 its inspection was
    requested then, as if on time, and the part had the verdict of whatever the camera showed."""
    _, sub, run, chip = folder_station(broker, calibrated, synth_data, tmp_path)
    try:
        out, trig = chip.outputs, chip.inputs[TRIGGER]
        t0 = time.monotonic_ns() - 5_000_000_000  # its edge, 5 s before it is read
        trig.drive(True, t0)
        trig.drive(False, t0 + 5_000_000)
        assert wait(lambda: len(events(sub)) == 1), run.agent.status()
        late = events(sub)[0]
        assert late["verdict"] == "error" and late["trigger"] == "gpio", late
        assert late["error"].startswith("a part not inspected: its trigger edge was read 5.") and \
            "did not run" in late["error"], late
        assert wait(lambda: out[ERROR].active and not out[BUSY].active)
        time.sleep(0.05)  # past the dead time
        t1 = time.monotonic_ns()  # the next part, on time: inspected
        trig.drive(True, t1)
        trig.drive(False, t1 + 5_000_000)
        assert wait(lambda: len(events(sub)) == 2), run.agent.status()
        assert events(sub)[1]["verdict"] in ("ok", "anomaly"), events(sub)[1]
        counts = run.agent.status()["interfaces"]["gpio"]["counts"]
        assert counts["triggers"] == 2 and counts["late"] == 1, counts
    finally:
        run.stop()
        sub.close()


def test_an_edge_read_late_within_max_wait_s_is_inspected(broker, calibrated, synth_data, tmp_path):
    """Where the line holds each part until its verdict (trigger.max_wait_s raised to 10 s), an edge
    read 5 s after its inspection was due is inspected: the late edge follows the same setting as a
    request's wait for its turn."""
    _, sub, run, chip = folder_station(broker, calibrated, synth_data, tmp_path, trigger="max_wait_s = 10")
    try:
        t0 = time.monotonic_ns() - 5_000_000_000  # its edge, 5 s before it is read
        chip.inputs[TRIGGER].drive(True, t0)
        chip.inputs[TRIGGER].drive(False, t0 + 5_000_000)
        assert wait(lambda: len(events(sub)) == 1), run.agent.status()
        assert events(sub)[0]["verdict"] in ("ok", "anomaly"), events(sub)[0]
        assert run.agent.status()["interfaces"]["gpio"]["counts"]["late"] == 0
    finally:
        run.stop()
        sub.close()


def test_a_part_whose_frame_comes_after_max_wait_s_is_answered_as_not_inspected(broker, calibrated, synth_data,
                                                                               tmp_path):
    """A camera slow to deliver (a USB link that stalls, then recovers within frame_timeout_s): the
    part's request was taken on time, and its frame came 1 s after it, past trigger.max_wait_s
    (0.5 s). Until 2026-12-07 that frame was inspected, under the part's id: by then another part
    may stand there."""
    _, sub, run, chip = folder_station(broker, calibrated, synth_data, tmp_path, trigger="max_wait_s = 0.5")
    source = run.agent.feed.source
    read = source.read

    def stalling():
        time.sleep(1.0)
        return read()
    try:
        source.read = stalling
        chip.inputs[TRIGGER].drive(True)
        chip.inputs[TRIGGER].drive(False)
        assert wait(lambda: len(events(sub)) == 1), run.agent.status()
        late = events(sub)[0]
        assert late["verdict"] == "error" and re.match(
            r"a part not inspected: its frame came 1\.\d s after its request, more than trigger.max_wait_s "
            r"\(0.5 s\)", late["error"]), late
        assert wait(lambda: chip.outputs[ERROR].active)
        source.read = read  # the camera well again: the next part is inspected
        time.sleep(0.05)    # (past the dead time)
        chip.inputs[TRIGGER].drive(True)
        chip.inputs[TRIGGER].drive(False)
        assert wait(lambda: len(events(sub)) == 2), run.agent.status()
        assert events(sub)[1]["verdict"] in ("ok", "anomaly"), events(sub)[1]
        assert run.agent.status()["counters"]["requests_late"] == 1
    finally:
        source.read = read
        run.stop()
        sub.close()


def test_pulses_and_the_active_level(broker, calibrated, synth_data, tmp_path):
    mixed_folder(synth_data, tmp_path / "samples")
    name = f"test-{uuid.uuid4()}"
    cfg = gpio_config(tmp_path, broker, calibrated, tmp_path / "samples", name, mode="pulse")
    cfg.write_text(cfg.read_text() + "active_low = true\n")
    run = Running(cfg)
    chip = MemoryChip.named(name)
    try:
        out = chip.outputs
        assert wait(lambda: out[READY].active) and not out[READY].physical_high  # active low: ready is low
        chip.inputs[TRIGGER].drive(True)
        assert wait(lambda: out[OK].active or out[NG].active)
        line = out[OK] if out[OK].active else out[NG]
        assert wait(lambda: not line.active, 5)  # the pulse ends by itself
        (t_on, on), (t_off, off) = line.history[:2]
        assert on and not off and 25e6 <= t_off - t_on <= 500e6
    finally:
        run.stop()


def live_station(broker, calibrated, tmp_path):
    """(subscriber, running agent, chip): gpio mode on a live (synthetic) camera at 2 frames a
    second (the loop waits for each frame: a burst of edges always comes while one waits), 5 ms
    dead time."""
    name = f"test-{uuid.uuid4()}"
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    cfg = gpio_config(tmp_path, broker, calibrated, tmp_path, name)
    cfg.write_text(cfg.read_text().replace("dead_time_ms = 40", "dead_time_ms = 5").replace(
        f'type = "folder"\npath = "{tmp_path}"\nfps = 0', 'type = "synthetic"\nclasses = ["sphere"]\nfps = 2'))
    run = Running(cfg)
    chip = MemoryChip.named(name)
    assert wait(lambda: chip.outputs[READY].active), "ready never went active"
    return sub, run, chip


def parts_at_once(chip, n: int) -> None:
    """n parts past the light barrier 10 ms apart, their edges delivered at once."""
    t0 = time.monotonic_ns() - 100_000_000
    for i in range(n):
        chip.inputs[TRIGGER].drive(True, t0 + i * 10_000_000)
        chip.inputs[TRIGGER].drive(False, t0 + i * 10_000_000 + 4_000_000)


def test_parts_that_come_faster_than_they_are_inspected_each_get_a_verdict_in_order(broker, calibrated, tmp_path):
    """A burst of parts past the light barrier while an inspection waits (max_pending 1): each
    part beyond is answered, in its turn, with an error event and the error line. Until
    2026-12-06 they were dropped without a word or a count, and the PLC's verdicts fell behind."""
    sub, run, chip = live_station(broker, calibrated, tmp_path)
    try:
        out = chip.outputs
        parts_at_once(chip, 6)
        assert wait(lambda: len(events(sub)) == 6), (events(sub), run.agent.status())
        time.sleep(0.3)
        evs = events(sub)
        counters = run.agent.status()["counters"]
        error_line = [v for _, v in out[ERROR].history]
        error_rose = next(t for t, v in out[ERROR].history if v)
        busy_fell = [t for t, v in out[BUSY].history if not v]
    finally:
        run.stop()
        sub.close()
    verdicts = [e["verdict"] for e in evs]
    assert len(evs) == 6 and run.agent.interfaces.gpio.counts["triggers"] == 6
    assert verdicts[0] in ("ok", "anomaly")  # the first part is inspected, the five after it answered in turn
    for e in evs[1:]:
        assert (e["error"] or "").startswith("a part not inspected: the trigger came while 1 inspection(s) waited"), \
            [(x["verdict"], x["seq"], (x["error"] or "")[:20]) for x in evs]
    assert counters["parts_not_inspected"] == 5 and counters["triggers_coalesced"] == 0
    assert error_line[-1] is True  # held until the next part
    # busy until the last part waiting is answered (until 2026-12-06 it fell at the first verdict,
    # five parts still to come: a PLC reading it saw the station idle)
    assert len(busy_fell) == 1 and busy_fell[0] > error_rose, (busy_fell, error_rose)


def test_parts_still_waiting_when_the_agent_stops_are_answered(broker, calibrated, synth_data, tmp_path):
    """A stop (SIGTERM: systemd stopping the unit) while parts wait: each is answered with an
    error event before the agent goes. Until 2026-12-06 they were left without a word."""
    mixed_folder(synth_data, tmp_path / "samples")
    name = f"test-{uuid.uuid4()}"
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = Agent(load_settings(gpio_config(tmp_path, broker, calibrated, tmp_path / "samples", name), env_file=None))
    agent.start()  # (its loop is not run: the three parts' edges wait, the second and third beyond max_pending)
    try:
        assert [agent._on_part_edge() for _ in range(3)] == [True, False, False]
        agent.request_stop(signal.SIGTERM)
    finally:
        agent.shutdown()
    assert wait(lambda: len(events(sub)) == 3), events(sub)
    sub.close()
    assert [e["error"].split(":")[0] for e in events(sub)] == [
        "requested inspection not made", "a part not inspected", "a part not inspected"]
    assert events(sub)[0]["error"] == "requested inspection not made: the agent stopped (SIGTERM)"
    assert agent.counters.get("parts_not_inspected") == 3


def test_a_part_whose_turn_comes_after_max_wait_s_is_answered_as_not_inspected(broker, calibrated, synth_data,
                                                                              tmp_path):
    """A part requested (its edge, after delay_ms) whose turn comes more than trigger.max_wait_s later
    (the loop held: a slow flush, a stuck engine call) is answered, in its turn, as not inspected;
    with max_wait_s 0 it is taken however late. Until 2026-12-07 it was inspected
    on the frame of its late turn."""
    mixed_folder(synth_data, tmp_path / "samples")
    cfg = gpio_config(tmp_path, broker, calibrated, tmp_path / "samples", f"test-{uuid.uuid4()}")
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    for limit, expect_taken in ((0.2, False), (0.0, True)):
        cfg.write_text(re.sub(r'mode = "gpio"\n(max_wait_s = .*\n)?', f'mode = "gpio"\nmax_wait_s = {limit}\n',
                              cfg.read_text()))
        agent = Agent(load_settings(cfg, env_file=None))
        agent.start()  # (its loop is not run: the part waits)
        try:
            assert agent._on_part_edge(at=time.monotonic())
            time.sleep(0.4)
            taken = agent._take(0)
            assert (taken is not None) == expect_taken, (limit, taken)
            if taken is not None:
                agent.commands.give_back(taken)  # (answered at the stop)
            counters = agent.status()["counters"]
        finally:
            agent.shutdown()
        assert counters["requests_late"] == (0 if expect_taken else 1), counters
    assert wait(lambda: len(events(sub)) == 2), events(sub)
    sub.close()
    late, stopped = events(sub)
    assert late["verdict"] == "error" and re.match(r"a part not inspected: it waited \d+\.\d s for its turn, more "
                                                   r"than trigger.max_wait_s \(0.2 s\)", late["error"]), late
    assert stopped["error"] == "requested inspection not made: the agent stopped (asked to)", stopped


def test_a_request_waiting_while_the_machine_slept_is_answered_as_not_inspected(broker, calibrated, synth_data,
                                                                                 tmp_path, monkeypatch):
    """The machine suspended for a minute with a part's request waiting: the monotonic clock stops
    meanwhile, and the wait looked like nothing (its part inspected on the frame after the wake).
    The wait is on the boot clock, which counts the sleep."""
    import agent.requests as requests_module
    from agent.mqtt.frozen import boot_clock
    mixed_folder(synth_data, tmp_path / "samples")
    cfg = gpio_config(tmp_path, broker, calibrated, tmp_path / "samples", f"test-{uuid.uuid4()}")
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    agent = Agent(load_settings(cfg, env_file=None))
    agent.start()  # (its loop is not run: the part waits)
    try:
        assert agent._on_part_edge(at=time.monotonic())
        monkeypatch.setattr(requests_module, "boot_clock", lambda: boot_clock() + 60.0)  # a minute asleep
        assert agent._take(0) is None
    finally:
        agent.shutdown()
    assert wait(lambda: len(events(sub)) == 1), events(sub)
    sub.close()
    assert re.match(r"a part not inspected: it waited 60\.\d s for its turn", events(sub)[0]["error"]), events(sub)


def test_an_answer_that_fails_at_the_stop_does_not_stop_the_shutdown(broker, calibrated, synth_data, tmp_path,
                                                                     caplog, monkeypatch):
    mixed_folder(synth_data, tmp_path / "samples")
    cfg = gpio_config(tmp_path, broker, calibrated, tmp_path / "samples", f"test-{uuid.uuid4()}")
    agent = Agent(load_settings(cfg, env_file=None))
    agent.start()
    agent._on_part_edge()

    def fails(*a, **k):
        raise RuntimeError("the disk is gone")
    monkeypatch.setattr(agent, "_emit", fails)
    with caplog.at_level("ERROR", logger="agent.requests"):
        agent.shutdown()
    assert "1 requests still waiting at the stop could not all be answered" in caplog.text
    assert agent.outbox is None and agent.publisher is None  # the rest of the shutdown happened
    lock = Agent(load_settings(cfg, env_file=None)).lock
    lock.acquire()  # and the outbox's lock was let go (else: OutboxInUse)
    lock.release()


def test_a_busy_line_is_reported_and_inspection_goes_on(broker, calibrated, synth_data, tmp_path):
    mixed_folder(synth_data, tmp_path / "samples")
    name = f"test-{uuid.uuid4()}"
    MemoryChip.named(name).busy.add(NG)  # another program holds the NG line
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    run = Running(gpio_config(tmp_path, broker, calibrated, tmp_path / "samples", name))
    try:
        st = run.agent.status()["interfaces"]["gpio"]
        assert st["state"] == "error" and f"line {NG} is busy" in st["error"]
        assert wait(lambda: run.agent.status()["mqtt_connected"])
        for _ in range(30):  # inspection on request still works, over MQTT (once its subscription is active)
            send(broker.port, "adgan/st1/trigger/set", b"")
            if wait(lambda: len(events(sub)) >= 1, 1.0):
                break
        assert events(sub) and events(sub)[0]["trigger"] == "gpio"
    finally:
        run.stop()
        sub.close()


def test_gpio_settings_are_checked():
    from pydantic import ValidationError

    from agent.settings import GpioSettings
    with pytest.raises(ValidationError, match="each line offset may be used once"):
        GpioSettings(enabled=True, trigger_line=3, ok_line=3)
    with pytest.raises(GpioError, match="not a GPIO chip"):
        open_chip("gpiod", "/dev/null")


GPIO_SIM = Path("/sys/kernel/config/gpio-sim")


@pytest.fixture
def gpio_sim():
    """A simulated chip of 8 lines from the kernel's gpio-sim (configfs), removed afterwards."""
    if not GPIO_SIM.is_dir():
        pytest.skip("the kernel's gpio-sim is not available here (modprobe gpio-sim, as root, with configfs "
                    "mounted); the gpiod backend is tested where it is")
    dev = GPIO_SIM / f"adgan-{uuid.uuid4().hex[:8]}"
    bank = dev / "bank0"
    try:
        dev.mkdir()
        bank.mkdir()
        (bank / "num_lines").write_text("8")
        (dev / "live").write_text("1")
    except OSError as e:
        pytest.skip(f"cannot create a gpio-sim chip here: {e}")
    chip = (bank / "chip_name").read_text().strip()
    lines = Path("/sys/devices/platform") / (dev / "dev_name").read_text().strip() / chip
    try:
        yield f"/dev/{chip}", lines
    finally:
        (dev / "live").write_text("0")
        bank.rmdir()
        dev.rmdir()


def test_the_gpiod_backend_on_the_kernels_gpio_sim(gpio_sim):
    from agent.gpio.station import StationIO
    from agent.settings import GpioSettings
    path, lines = gpio_sim
    triggered = threading.Event()
    io = StationIO(GpioSettings(enabled=True, backend="gpiod", chip=path, trigger_line=0, ok_line=1, ng_line=2,
                                busy_line=3, ready_line=4, output_mode="hold"), lambda at: triggered.set())
    io.start()
    try:
        assert io.state["state"] == "running", io.state
        io.ready(True)
        assert (lines / "sim_gpio4" / "value").read_text().strip() == "1"
        (lines / "sim_gpio0" / "pull").write_text("pull-up")  # the light barrier: a rising edge
        assert triggered.wait(5)
        assert (lines / "sim_gpio3" / "value").read_text().strip() == "1"  # busy
        io.verdict("anomaly")
        assert [(lines / f"sim_gpio{i}" / "value").read_text().strip() for i in (1, 2, 3)] == ["0", "1", "0"]
    finally:
        io.close()


class FakeJetsonGPIO:
    """Jetson.GPIO's API (RPi.GPIO's), for a machine without a Jetson's header: it records the
    pins' levels and calls the edge callback like the library's event thread."""
    BOARD, IN, OUT, HIGH, LOW, BOTH = "BOARD", "IN", "OUT", 1, 0, "BOTH"

    def __init__(self):
        self.levels, self.modes, self.callbacks, self.mode = {}, {}, {}, None

    def setmode(self, mode):
        self.mode = mode

    def setwarnings(self, on):
        pass

    def setup(self, pin, direction, initial=None):
        self.modes[pin] = direction
        self.levels[pin] = initial if initial is not None else self.LOW

    def add_event_detect(self, pin, edge, callback, bouncetime):
        assert edge == self.BOTH and bouncetime >= 1
        self.callbacks[pin] = callback

    def remove_event_detect(self, pin):
        self.callbacks.pop(pin)

    def input(self, pin):
        return self.levels[pin]

    def output(self, pin, level):
        assert self.modes[pin] == self.OUT
        self.levels[pin] = level

    def cleanup(self, pin):
        self.modes.pop(pin, None)

    def wire(self, pin, level):  # the light barrier
        self.levels[pin] = level
        self.callbacks[pin](pin)


def test_the_jetson_gpio_backend_through_its_api(monkeypatch):
    import sys
    import types

    from agent.gpio.station import StationIO
    from agent.settings import GpioSettings
    fake = FakeJetsonGPIO()
    pkg = types.ModuleType("Jetson")
    pkg.GPIO = fake
    monkeypatch.setitem(sys.modules, "Jetson", pkg)
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", fake)
    triggered = threading.Event()
    io = StationIO(GpioSettings(enabled=True, backend="jetson", trigger_line=7, ok_line=11, ng_line=13,
                                active_low=True, output_mode="hold"), lambda at: triggered.set())
    io.start()
    try:
        assert io.state["state"] == "running" and fake.mode == "BOARD"
        assert fake.levels[11] == fake.HIGH and fake.levels[13] == fake.HIGH  # active low: inactive is high
        fake.wire(7, fake.HIGH)
        assert triggered.wait(5)
        io.verdict("anomaly")
        assert fake.levels[13] == fake.LOW and fake.levels[11] == fake.HIGH
    finally:
        io.close()
    assert fake.modes == {}  # every pin cleaned up


def test_a_trigger_line_that_fails_is_said_and_opened_again_and_a_failed_request_is_said(caplog, monkeypatch):
    """Before, a failed wait for edges ended the watch for good (no part inspected on an edge
    until a restart), and a request that raised ended it without a word, its state 'running'."""
    import logging

    from agent.gpio import station
    from agent.gpio.station import StationIO
    from agent.settings import GpioSettings
    monkeypatch.setattr(station, "REOPEN_S", (0.2, 0.4))
    caplog.set_level(logging.INFO)
    name, requests = f"fail-{uuid.uuid4().hex[:8]}", []

    def on_trigger(at):
        requests.append(time.monotonic())
        if len(requests) == 2:
            raise RuntimeError("injected")
    io = StationIO(GpioSettings(enabled=True, backend="memory", chip=name, trigger_line=TRIGGER, ok_line=OK,
                                debounce_ms=0, dead_time_ms=0), on_trigger)
    io.start()
    chip = MemoryChip.named(name)

    def pulse():
        line = chip.inputs[TRIGGER]
        line.drive(True)
        line.drive(False)
    try:
        assert io.status()["state"] == "running"
        pulse()
        assert wait(lambda: len(requests) == 1, 5)
        pulse()                                         # the request raises: said, the watch goes on
        assert wait(lambda: len(requests) == 2 and "requesting the inspection failed" in caplog.text, 5)
        pulse()
        assert wait(lambda: len(requests) == 3, 5) and io.status()["counts"]["trigger_failures"] == 1
        failed = chip.inputs[TRIGGER]
        failed.fail("injected: the line's file descriptor is gone")
        assert wait(lambda: io.status()["state"] == "error", 5)
        assert "GPIO trigger line 0 failed (injected" in caplog.text
        assert wait(lambda: io.status()["state"] == "running" and chip.inputs.get(TRIGGER) not in (None, failed), 5)
        assert "is open again" in caplog.text
        pulse()                                         # the new line's edges are watched
        assert wait(lambda: len(requests) == 4, 5)
    finally:
        io.close()


def test_an_output_that_fails_is_said_once_counted_and_its_recovery_said(caplog):
    """Before, each verdict on a dead line logged an error (one per part), and the state stayed
    'error' after the line worked again."""
    import logging

    from agent.gpio.station import StationIO
    from agent.settings import GpioSettings
    caplog.set_level(logging.INFO)
    name = f"out-{uuid.uuid4().hex[:8]}"
    io = StationIO(GpioSettings(enabled=True, backend="memory", chip=name, ok_line=OK, ng_line=NG,
                                output_mode="hold"))
    io.start()
    ok = MemoryChip.named(name).outputs[OK]
    try:
        ok.failing = "injected: the expander is gone"
        for _ in range(5):
            io.verdict("ok")
        said = [r for r in caplog.records if "GPIO output ok failed" in r.getMessage()]
        assert len(said) == 1 and io.status()["state"] == "error" and io.status()["counts"]["output_failures"] == 5
        ok.failing = None
        io.verdict("anomaly")  # (ok goes inactive: a write that works)
        assert "GPIO output ok works again" in caplog.text and io.status()["state"] == "running"
        io.verdict("ok")
        assert ok.active
    finally:
        io.close()


def test_busy_stays_active_while_a_part_is_still_to_be_answered():
    """busy falls at the verdict that leaves nothing waiting: not while a counted edge's
    inspection is still to be requested (delay_ms), nor while the agent says more requests wait."""
    from agent.gpio.station import StationIO
    from agent.settings import GpioSettings
    name, requests = f"busy-{uuid.uuid4().hex[:8]}", []
    io = StationIO(GpioSettings(enabled=True, backend="memory", chip=name, trigger_line=TRIGGER, ok_line=OK,
                                busy_line=BUSY, debounce_ms=0, dead_time_ms=0, delay_ms=300),
                   lambda at: requests.append(at))
    io.start()
    chip = MemoryChip.named(name)
    busy = chip.outputs[BUSY]
    try:
        chip.inputs[TRIGGER].drive(True)
        chip.inputs[TRIGGER].drive(False)
        assert wait(lambda: busy.active, 5) and not requests
        io.verdict("ok")  # the part before's verdict, within this part's delay: busy stays
        assert busy.active and chip.outputs[OK].active
        assert wait(lambda: requests, 5)
        io.verdict("ok", more=True)  # answered, and another request waits: busy stays
        assert busy.active
        io.verdict("anomaly")
        assert not busy.active
    finally:
        io.close()


def test_a_pulse_is_not_cut_short_by_the_end_of_the_one_before():
    """Two NG parts in a row, the second's verdict while the first pulse's end was being written
    to the line (a write takes time on a real line: an ioctl, an I/O expander on I2C). The first
    pulse's timer wrote its "inactive" without the verdicts' lock, after the second verdict had
    made the line active: the second NG pulse lasted the rest of that write (~40 ms here) instead
    of pulse_ms (200 ms), short enough for a PLC scanning every 50 ms to miss the defective part."""
    from agent.gpio.station import StationIO
    from agent.settings import GpioSettings
    name = f"race-{uuid.uuid4().hex[:8]}"
    io = StationIO(GpioSettings(enabled=True, backend="memory", chip=name, ok_line=OK, ng_line=NG,
                                output_mode="pulse", pulse_ms=200))
    io.start()
    ng = MemoryChip.named(name).outputs[NG]
    plain, ending = ng.set, threading.Event()

    def slow(active: bool) -> None:  # (ending a pulse takes 60 ms)
        if not active:
            ending.set()
            time.sleep(0.06)
        plain(active)
    ng.set = slow
    try:
        io.verdict("anomaly")
        assert ending.wait(5)                 # the first pulse's end is being written...
        time.sleep(0.02)
        io.verdict("anomaly")                 # ...when the second part's verdict comes
        second = time.monotonic()
        time.sleep(0.1)
        assert ng.active, f"the second NG pulse ended {time.monotonic() - second:.3f} s after its verdict"
        assert wait(lambda: not ng.active, 5)  # and it ends by itself
        ups = [t for t, v in ng.history if v]
        downs = [t for t, v in ng.history if not v]
        assert len(ups) == 2 and len(downs) == 2 and (downs[1] - ups[1]) / 1e9 >= 0.2, ng.history
    finally:
        io.close()


def test_a_pulse_whose_end_cannot_be_timed_is_held_and_said(caplog, monkeypatch):
    """No thread for the pulse's timer (a unit's TasksMax= reached): the verdict raised out of the
    station's I/O; now the line is held until the next verdict, counted and said."""
    import logging

    from agent.gpio.station import StationIO
    from agent.settings import GpioSettings
    name = f"nothread-{uuid.uuid4().hex[:8]}"
    io = StationIO(GpioSettings(enabled=True, backend="memory", chip=name, ok_line=OK, ng_line=NG,
                                output_mode="pulse", pulse_ms=20))
    io.start()
    chip = MemoryChip.named(name)

    def no_thread(self) -> None:
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Timer, "start", no_thread)
    try:
        with caplog.at_level(logging.INFO):
            io.verdict("anomaly")
            time.sleep(0.1)
            assert chip.outputs[NG].active and io.status()["counts"]["output_failures"] == 1
            assert "GPIO output ng: its pulse cannot be ended (can't start new thread): it stays active until the " \
                   "next verdict" in caplog.text
            io.verdict("ok")
            assert not chip.outputs[NG].active and chip.outputs[OK].active
            assert io.status()["counts"]["output_failures"] == 2 and caplog.text.count("cannot be ended") == 1
            monkeypatch.undo()  # threads again
            io.verdict("anomaly")
            assert "GPIO pulses end again" in caplog.text
            assert wait(lambda: not chip.outputs[NG].active, 5)
    finally:
        io.close()
