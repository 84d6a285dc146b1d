"""The agent's log output (agent/logsink.py): an output that takes nothing stops no part."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

from agent.logsink import LogSink
from tests.agent.conftest import ROOT
from tests.agent.test_service_triggers import commands_ready, events, hang_up, mqtt_station, once


def _full_pipe() -> tuple[int, int]:
    """(read end, write end) of a pipe filled up: the next write to it waits."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    return r, w


def _read_all(r: int, until: bytes, timeout: float) -> bytes:
    """What the pipe gives until `until` shows (or the timeout)."""
    got, end = b"", time.monotonic() + timeout
    os.set_blocking(r, False)
    while until not in got and time.monotonic() < end:
        try:
            got += os.read(r, 1 << 16)
        except BlockingIOError:
            time.sleep(0.02)
    return got


def test_lines_beyond_the_buffer_are_dropped_counted_and_said_once_the_output_takes_them():
    r, w = _full_pipe()
    out = os.fdopen(w, "w")
    sink = LogSink(out, limit_bytes=1000)
    sink.setFormatter(logging.Formatter("%(message)s"))
    lg = logging.getLogger("test.logsink")
    lg.propagate, lg.handlers = False, [sink]
    t0 = time.monotonic()
    for i in range(100):  # ~20 fit in 1000 bytes beside the one being written; none waits
        lg.warning("line %03d %s", i, "y" * 30)
    assert time.monotonic() - t0 < 1.0
    st = sink.status()
    assert 70 <= st["dropped"] <= 90 and st["buffered_bytes"] <= 1000, st
    time.sleep(1.2)
    assert sink.status()["waiting_s"] >= 1.0
    got = _read_all(r, b"since the start", 10).decode()
    assert "line 000" in got and "line 099" not in got
    note = got.splitlines()[-1]
    head = (f"{st['dropped']} log line(s) dropped: the log's output (stderr; the journal under systemd) took "
            "nothing for ")
    assert note.startswith(head) and float(note[len(head):].split()[0]) >= 1.0, note
    lg.warning("after")  # the output takes lines again: as before, and not said again
    assert _read_all(r, b"after\n", 10).endswith(b"after\n")
    assert sink.status()["dropped"] == st["dropped"] and sink.status()["longest_wait_s"] >= 1.0
    sink.close()
    os.close(r)
    out.close()


def test_a_stop_waits_for_an_output_that_takes_nothing_only_so_long():
    from agent.logsink import DRAIN_S
    r, w = _full_pipe()
    sink = LogSink(os.fdopen(w, "w"), limit_bytes=1 << 16)
    sink.write("the last line\n")
    t0 = time.monotonic()
    sink.close()
    assert DRAIN_S - 0.5 <= time.monotonic() - t0 <= DRAIN_S + 2
    sink.write("after the stop\n")  # (dropped, counted: nothing writes any more)
    assert sink.status()["dropped"] == 1
    os.close(r)


def test_a_failing_output_is_counted_and_a_bad_line_said_in_the_log():
    class Failing:
        def __init__(self):
            self.fail, self.text = True, ""

        def write(self, s):
            if self.fail:
                raise OSError(5, "Input/output error")
            self.text += s

        def flush(self):
            pass

    out = Failing()
    sink = LogSink(out, limit_bytes=1 << 16)
    sink.setFormatter(logging.Formatter("%(message)s"))
    lg = logging.getLogger("test.logsink.failing")
    lg.propagate, lg.handlers = False, [sink]
    lg.warning("lost")
    deadline = time.monotonic() + 5
    while sink.status()["dropped"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.status()["dropped"] == 1 and sink.status()["error"] == "OSError: [Errno 5] Input/output error"
    out.fail = False
    lg.warning("a %d", "not a number")  # a bad format: said through the sink, not on stderr
    sink.close()
    assert out.text.startswith("--- Logging error ---\n") and "Message: 'a %d'" in out.text, out.text
    assert "1 log line(s) dropped: the log's output failed (OSError: [Errno 5] Input/output error)" in out.text


def _goes_on(body: str, what: str) -> None:
    """Run `body` in a process whose `w` is the write end of a full pipe; it must print that its
    main thread goes on, within 20 s."""
    code = (f"import os, sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom tests.agent.test_log_output import _full_pipe\n"
            f"r, w = _full_pipe()\n{textwrap.dedent(body)}\nos._exit(0)\n")
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the process stopped while {what} waited for the output") from None
    assert p.returncode == 0 and "the main thread goes on" in p.stdout and "False" not in p.stdout, p.stderr


def test_the_threads_stacks_into_an_output_that_takes_nothing_hold_no_other_thread():
    """health.dump_stacks (a stalled loop, SIGUSR1) wrote with faulthandler, which waits in
    write(2) holding the interpreter lock: into a stderr that takes nothing, every thread of the
    agent stopped for good. Now the stacks are taken into memory, then written like a line."""
    _goes_on("""
        import threading, time
        from agent.health import dump_stacks
        threading.Thread(target=dump_stacks, args=(os.fdopen(w, "w"),), daemon=True).start()
        time.sleep(0.5)
        print("the main thread goes on", flush=True)
    """, "its stacks")


def test_a_library_warning_into_an_output_that_takes_nothing_holds_no_thread():
    """A warning (numpy's 'invalid value encountered', say) was printed to stderr directly: it
    goes through the log's writer too."""
    _goes_on("""
        import logging, warnings
        from agent import logsink
        os.dup2(w, 2)
        logsink.install("info", 64 * 1024)
        for i in range(2000):
            warnings.warn(f"warning {i}", RuntimeWarning)
            logging.getLogger("x").warning("line %d", i)
        print("the main thread goes on", logsink.status()["dropped"] > 0, flush=True)
    """, "a warning")


def test_a_log_output_that_takes_nothing_stops_no_part(broker, two_classes, synth_data, tmp_path):
    """The agent's stderr into a pipe nobody reads (journald stuck on a slow disk, a container's
    log driver in its default blocking mode with its server down): every part is still answered,
    lines beyond health.log_buffer_kb are dropped and counted in status.log, and said once the
    output takes lines again. Until 2026-12-07 the agent stopped at its next log line: 160 parts
    answered, then none."""
    cfg, sub, cmd, state = mqtt_station(broker, two_classes, synth_data, tmp_path, loop=True)
    cfg.write_text(cfg.read_text().replace("stop_flush_s = 5", "stop_flush_s = 5\nlog_buffer_kb = 64"))
    r, w = os.pipe()
    code = ("import sys; sys.modules['torch'] = None\nfrom adgan.cli import main\n"
            f"sys.exit(main(['agent', 'run', '--config', {str(cfg)!r}, '--env-file', '/nonexistent']))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=w, stderr=w)
    os.close(w)
    try:
        assert sub.wait_for(commands_ready, 60)
        def answered() -> list[str]:  # (in order; a flood's one answer may name several parts, joined by commas)
            return [p for e in once(events(sub)) for p in e["part_id"].split(",")]
        n = 1200  # a line each: ~200 kB, beyond the pipe (64 kB) and the buffer (64 kB)
        for i in range(0, n, 100):
            for j in range(i, i + 100):
                cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": f"p{j}"}), qos=1)
            assert sub.wait_for(lambda m: len(answered()) >= i + 100, 30), f"{len(answered())} of {i + 100} answered"
        assert answered() == [f"p{j}" for j in range(n)]  # each part once, in order

        def log_status() -> dict:
            docs = [json.loads(p) for t, p, _ in sub.messages if t == "adgan/st1/status"]
            return docs[-1]["log"] if docs else {}
        assert sub.wait_for(lambda m: log_status().get("dropped", 0) > 0 and log_status()["waiting_s"] > 0, 10)
        st = log_status()
        assert st["buffered_bytes"] <= 64 * 1024 and st["error"] is None, st
        got = _read_all(r, b"since the start)", 30).decode(errors="replace")  # the output takes lines again
        assert "INFO agent.service: #" in got and "log line(s) dropped: the log's output (stderr; the journal under " \
            "systemd) took nothing for " in got, got[-2000:]
        proc.send_signal(15)
        assert proc.wait(30) == 0
        got += _read_all(r, b"stopped: every event", 10).decode(errors="replace")
        assert "stopped: every event was acknowledged by the broker" in got, got[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(r)
        hang_up(cmd, sub)


def test_an_agent_started_with_its_standard_streams_closed_runs(broker, calibrated, synth_data, tmp_path):
    """`adgan agent run 2>&-` (or a wrapper that closes the streams) exited 1 without a word:
    faulthandler refused the missing stderr. The streams are now opened on /dev/null first, so
    no file the agent opens takes their numbers (what writes to stderr by number would write
    into it)."""
    from tests.agent.conftest import Subscriber, agent_config
    bundle, thresholds = calibrated
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 20'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src)
    sub = Subscriber(broker.port, "adgan/st1/events")
    code = ("import sys; sys.modules['torch'] = None\nfrom adgan.cli import main\n"
            f"sys.exit(main(['agent', 'run', '--config', {str(cfg)!r}, '--env-file', '/nonexistent']))")
    assert sub.subscribed.wait(10)
    p = subprocess.Popen(["bash", "-c", 'exec "$0" -c "$1" 0<&- 1>&- 2>&-', sys.executable, code], cwd=ROOT)
    try:
        assert sub.wait_for(lambda m: len(sub.documents("adgan/st1/events")) >= 5, 60), p.poll()
        p.terminate()
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            p.kill()
        sub.close()
    # in any command: the first file opened does not take a closed stream's number
    probe = ("from adgan.cli import standard_streams\nstandard_streams()\nimport sys\n"
             "f = open(sys.argv[1], 'w')\nf.write(str(f.fileno()))\nf.close()\nprint('said', file=sys.stderr)")
    r = subprocess.run(["bash", "-c", 'exec "$0" -c "$1" "$2" 2>&- 1>&-', sys.executable, probe,
                        str(tmp_path / "fd")], cwd=ROOT, timeout=60)
    assert r.returncode == 0 and int((tmp_path / "fd").read_text()) > 2
