"""How the run before ended is said at start (agent/run_record.py): a kill, a crash or a power
cut is a failure too, and until 2026-12-07 only the init system's journal said it."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from agent import run_record
from agent.run_record import RunRecord
from adgan.cli import main
from agent.mqtt.files import AgentLock
from tests.agent.conftest import (ROOT, AgentProcess, Subscriber, agent_config, fill_file_system, free_port, scrape,
                                  tmpfs)


def started(tmp_path) -> RunRecord:
    r = RunRecord(tmp_path / "outbox.sqlite")
    r.start()
    return r


def started_after_a_crash(cfg, sub, log) -> tuple[AgentProcess, dict]:
    """An agent started after the one before crashed (SIGSEGV), and its status's `previous_run` once it
    says the crash (`sub`: a subscriber to the station's status); stopped if it does not."""
    sub.messages.clear()
    agent = AgentProcess(cfg, log)
    try:
        assert sub.wait_for(lambda m: sub.documents("adgan/st1/status"), 30), agent.output()
        st = sub.documents("adgan/st1/status")[-1]["previous_run"]
        assert st["ended"] == "killed or crashed" and st["fatal"] == "Fatal Python error: Segmentation fault", st
    except BaseException:
        agent.stop()
        raise
    return agent, st


def line(tmp_path) -> dict:
    return json.loads((tmp_path / "outbox.sqlite.run").read_text())


def test_a_stop_a_kill_and_a_restart_of_the_machine_are_told_apart(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, "agent.run_record")
    first = started(tmp_path)
    assert first.status() is None  # (the first run on this outbox)
    me = line(tmp_path)
    assert me["pid"] == os.getpid() and me["stopped"] is None and me["alive"] and me["boot"] == run_record.boot_id()
    first.stopped("SIGTERM")
    assert line(tmp_path)["cause"] == "SIGTERM" and line(tmp_path)["stopped"]

    second = started(tmp_path)
    assert second.status() == {**{k: me[k] for k in ("pid", "started")}, "alive": me["alive"],
                               "stopped": second.previous["stopped"], "cause": "SIGTERM", "ended": "stopped",
                               "runs_ended_without_stop": 0}
    assert "stopped at" in caplog.text and "without stopping" not in caplog.text
    second._next_alive = 0.0  # (its start wrote the first: the next turn writes again)
    second.alive()
    alive = line(tmp_path)["alive"]
    os.close(second._fd)  # killed: no stop written

    third = started(tmp_path)
    st = third.status()
    assert st["ended"] == "killed or crashed" and st["alive"] == alive and st["runs_ended_without_stop"] == 1
    said = [r for r in caplog.records if "ended without stopping" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert f"last seen alive at {alive}" in said[0].getMessage() and "was killed" in said[0].getMessage()
    assert line(tmp_path)["ended_without_stop"] == 1  # (counted across runs)
    os.close(third._fd)

    monkeypatch.setattr(run_record, "boot_id", lambda: "another-boot")  # the machine restarted under it
    fourth = started(tmp_path)
    assert fourth.status()["ended"] == "the machine restarted" and fourth.status()["runs_ended_without_stop"] == 2
    assert "did not stop before the machine restarted" in caplog.text
    (tmp_path / "outbox.sqlite.run").unlink()  # deleted under a running agent: its stop still reaches the next start
    fourth.stopped(None)
    assert started(tmp_path).status()["cause"] == "asked to"


def test_a_crashs_stacks_are_said_once_by_the_next_start_also_without_its_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, "agent.run_record")
    crash = ('Fatal Python error: Segmentation fault\n\nThread 0x2 (most recent call first):\n  File "a.py", line 1 '
             'in wait\n\nCurrent thread 0x1 (most recent call first):\n  File "engine.py", line 9 in run\n')
    with run_record.open_stacks(tmp_path / "state" / "outbox.sqlite") as f:  # (its folder not made yet)
        f.write(crash.replace("engine.py", "old.py").encode() + b"x\n" * 50_000 + crash.encode())  # (a crash loop)
    r = RunRecord(tmp_path / "state" / "outbox.sqlite")
    r.start()
    assert r.status() == {"ended": "unknown", "fatal": "Fatal Python error: Segmentation fault",
                          "where": 'File "engine.py", line 9 in run', "runs_ended_without_stop": 0}
    assert "the run before wrote these stacks as it ended" in caplog.text and crash.rstrip() in caplog.text
    assert (tmp_path / "state" / "outbox.sqlite.stacks").stat().st_size == 0
    caplog.clear()
    r.stopped("SIGTERM")
    assert started(tmp_path / "state").status()["ended"] == "stopped" and "stacks" not in caplog.text


def test_a_damaged_or_unwritable_record_is_said_and_the_agent_goes_on(tmp_path, caplog):
    (tmp_path / "outbox.sqlite.run").write_bytes(b"\x93{pid")
    r = started(tmp_path)
    assert r.status()["ended"] == "unknown" and "cannot be read" in caplog.text
    r.stopped("SIGTERM")
    assert started(tmp_path).status()["ended"] == "stopped"  # (written anew)

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # (root writes anyway: a file in the way instead)
            (ro / "outbox.sqlite.run").mkdir()
        r = RunRecord(ro / "outbox.sqlite")
        r.start()
        r.alive()
        r.stopped("SIGTERM")
    finally:
        ro.chmod(0o700)
    assert [m for m in caplog.messages if "cannot write" in m or "cannot read" in m]


def test_how_systemd_saw_the_run_end_is_recorded_for_the_next_start(calibrated, tmp_path, capsys, caplog,
                                                                     monkeypatch):
    """The unit's ExecStopPost (`adgan agent record-exit`) adds systemd's $SERVICE_RESULT,
    $EXIT_CODE and $EXIT_STATUS to the run's line: the next start names the watchdog, the OOM
    killer or a crash's signal instead of guessing."""
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, 1, bundle, thresholds, 'type = "synthetic"\ncount = 1')
    args = ["agent", "record-exit", "--config", str(cfg), "--env-file", "/nonexistent"]
    assert main(args) == 2 and "$SERVICE_RESULT is not set" in capsys.readouterr().err  # (not under systemd)
    for result, code, status, said in (("watchdog", "dumped", "ABRT", "was killed by systemd's watchdog"),
                                       ("oom-kill", "killed", "KILL", "was killed by the kernel's OOM killer"),
                                       ("core-dump", "dumped", "SEGV", "crashed (signal SEGV)"),
                                       ("timeout", "killed", "KILL", "was killed by systemd: it did not stop"),
                                       ("resources", "killed", "TERM", "was killed or crashed; systemd says resources "
                                                                       "(killed TERM)")):
        os.close(started(tmp_path)._fd)  # a run killed
        monkeypatch.setenv("SERVICE_RESULT", result)
        monkeypatch.setenv("EXIT_CODE", code)
        monkeypatch.setenv("EXIT_STATUS", status)
        assert main(args) == 0, capsys.readouterr().err
        assert (tmp_path / "outbox.sqlite.run").stat().st_mode & 0o777 == 0o600  # (kept private, as the run made it)
        caplog.clear()
        r = started(tmp_path)
        st = r.status()
        assert st["systemd"] == {"result": result, "exit_code": code, "exit_status": status}, st
        assert f"ended without stopping: it {said}" in caplog.text, caplog.text
        r.stopped("SIGTERM")
    # what is not this end's: a run that stopped itself (and an ExecStartPre refusal after it), an
    # account given already, a line of another boot
    assert main(args) == 0 and "nothing recorded: the run record" in capsys.readouterr().err
    monkeypatch.setenv("SERVICE_RESULT", "exit-code")
    monkeypatch.setenv("EXIT_CODE", "exited")
    monkeypatch.setenv("EXIT_STATUS", "2")
    os.close(started(tmp_path)._fd)
    assert main(args) == 0 and "systemd" not in line(tmp_path)
    assert capsys.readouterr().err == ""  # (not said: every `systemctl stop` comes here)
    monkeypatch.setenv("SERVICE_RESULT", "watchdog")
    assert main(args) == 0 and main(args) == 0
    assert "nothing recorded: the run record" in capsys.readouterr().err
    assert line(tmp_path)["systemd"]["result"] == "watchdog"
    os.close(started(tmp_path)._fd)
    this_boot = run_record.boot_id
    monkeypatch.setattr(run_record, "boot_id", lambda: "another-boot")
    assert main(args) == 0 and "nothing recorded: the run record" in capsys.readouterr().err
    assert "systemd" not in line(tmp_path)
    monkeypatch.setattr(run_record, "boot_id", this_boot)
    # a start refused because another agent holds the outbox: that agent's record is left alone
    lock = AgentLock(tmp_path / "outbox.sqlite")
    lock.acquire()
    try:
        assert main(args) == 0 and "in use by a running agent" in capsys.readouterr().err
        assert "systemd" not in line(tmp_path)
    finally:
        lock.release()


def test_an_agent_killed_is_said_by_its_next_start(broker, calibrated, synth_data, tmp_path):
    """The agent's process killed (SIGKILL), started again: its log and status say how the run
    before ended, and the metric counts it; a stop (SIGTERM) is said as one, with its cause."""
    bundle, thresholds = calibrated
    port = free_port()
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 20'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src,
                       extra=f"[metrics]\nenabled = true\nport = {port}\n")
    sub = Subscriber(broker.port, "adgan/st1/status")

    def previous_run():
        sub.messages.clear()
        assert sub.wait_for(lambda m: sub.documents("adgan/st1/status"), 30)
        return sub.documents("adgan/st1/status")[-1]["previous_run"]

    try:
        assert sub.subscribed.wait(10)
        agent = AgentProcess(cfg, tmp_path / "1.log")
        try:
            assert previous_run() is None
        finally:
            agent.kill()
        # the unit's ExecStopPost: how systemd saw the run end
        env = {**os.environ, "SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}
        r = subprocess.run([sys.executable, "-m", "adgan_edge", "agent", "record-exit", "--config", str(cfg),
                            "--env-file", "/nonexistent"], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        agent = AgentProcess(cfg, tmp_path / "2.log")
        try:
            st = previous_run()
            assert st["ended"] == "killed or crashed" and st["runs_ended_without_stop"] == 1 and st["alive"], st
            assert st["systemd"] == {"result": "signal", "exit_code": "killed", "exit_status": "KILL"}
            assert "ended without stopping: it was killed by signal KILL; last seen alive at" in agent.output()
            assert "adgan_runs_ended_without_stop_total 1.0" in scrape(f"http://127.0.0.1:{port}/metrics", 30)
            assert agent.terminate(30) == 0
        finally:
            agent.stop()
        agent = AgentProcess(cfg, tmp_path / "3.log")
        try:
            st = previous_run()
            assert st["ended"] == "stopped" and st["cause"] == signal.SIGTERM.name, st
            assert st["runs_ended_without_stop"] == 1 and "without stopping" not in agent.output()
        finally:
            agent.stop()
    finally:
        sub.close()


def test_a_crash_into_a_stuck_log_output_ends_at_once_and_its_stacks_are_said_by_the_next_start(
        broker, calibrated, synth_data, tmp_path):
    """A crash in native code (SIGSEGV) of an agent whose stderr takes nothing (journald stuck on
    a slow disk): faulthandler wrote the stacks to stderr from the signal handler and waited there
    for good, the crashed process holding the station until systemd's timeouts killed it, and the
    stacks were lost. They go to <outbox>.stacks now, and the next start says them."""
    bundle, thresholds = calibrated
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 0'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src)
    stacks = tmp_path / "outbox.sqlite.stacks"
    sub = Subscriber(broker.port, "adgan/st1/status")
    r, w = os.pipe()
    code = ("import sys; sys.modules['torch'] = None\nfrom adgan.cli import main\n"
            f"sys.exit(main(['agent', 'run', '--config', {str(cfg)!r}, '--env-file', '/nonexistent']))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=w, stderr=w)
    os.close(w)  # (the read end is never read: the pipe fills)
    try:
        assert sub.subscribed.wait(10)
        assert sub.wait_for(lambda m: any(s["log"]["waiting_s"] > 1 for s in sub.documents("adgan/st1/status")),
                            60), "the log's output never filled"
        proc.send_signal(signal.SIGSEGV)
        try:
            assert proc.wait(10) == -signal.SIGSEGV
        except subprocess.TimeoutExpired:
            raise AssertionError("the crashed agent did not end: its stacks waited on the log's output") from None
        text = stacks.read_text()
        assert text.startswith("Fatal Python error: Segmentation fault") and 'File "' in text, text
        # faulthandler reads the other threads' frames while they run: now and then (1 run in ~10 of
        # make test) its dump ends early, before the crashed thread's own ("Current thread")
        whole = "Current thread" in text
        agent, st = started_after_a_crash(cfg, sub, tmp_path / "2.log")
        try:
            assert st["where"].startswith('File "') if whole else st["where"] == "", st
            out = agent.output()
            assert "it crashed: Fatal Python error: Segmentation fault (its stacks follow)" in out, out
            assert "the run before wrote these stacks as it ended" in out and text.splitlines()[2] in out, out
            assert stacks.stat().st_size == 0  # (said once: emptied for this run's)
            assert agent.terminate(30) == 0
        finally:
            agent.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(r)
        sub.close()


def test_a_crash_on_a_full_disk_still_writes_its_stacks(broker, calibrated, synth_data, tmp_path):
    """The state folder's disk full (no outbox reserve to give back) when the agent crashes in native
    code: the stacks' write failed (ENOSPC, in the signal handler) and the next start could say only
    "killed or crashed". Their blocks are set aside at the start now, so they are written and said."""
    bundle, thresholds = calibrated
    with tmpfs(tmp_path / "state", "4m") as mnt:
        src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 10'
        cfg = agent_config(mnt, broker.port, bundle, thresholds, src)
        cfg.write_text(cfg.read_text().replace("reserve_mb = 1", "reserve_mb = 0"))
        stacks = mnt / "outbox.sqlite.stacks"
        sub = Subscriber(broker.port, "adgan/st1/status")
        assert sub.subscribed.wait(10)
        agent = AgentProcess(cfg, tmp_path / "1.log")
        try:
            assert sub.wait_for(lambda m: any(s["counters"]["events"] >= 3 for s in sub.documents("adgan/st1/status")),
                                60), agent.output()
            filler = fill_file_system(mnt)
            with pytest.raises(OSError):  # (full: not even a block for a new file)
                (mnt / "probe").write_bytes(b"x" * 4096)
            os.kill(agent.agent_pid(), signal.SIGSEGV)
            assert agent.proc.wait(10) == -signal.SIGSEGV
        finally:
            agent.stop()
        text = stacks.read_text()
        assert text.startswith("Fatal Python error: Segmentation fault") and 'File "' in text, (len(text), text[:200])
        filler.unlink()
        agent, _ = started_after_a_crash(cfg, sub, tmp_path / "2.log")
        try:
            assert "the run before wrote these stacks as it ended" in agent.output()
            st = stacks.stat()
            assert st.st_size == 0 and st.st_blocks * 512 >= run_record.MAX_STACKS  # (emptied, set aside again)
            assert agent.terminate(30) == 0
        finally:
            agent.stop()
            sub.close()
