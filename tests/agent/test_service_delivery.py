"""Nothing is lost: broker outages, SIGKILL, SIGTERM; TLS with a password."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.agent.conftest import AgentProcess, Broker, Subscriber, agent_config, free_port


def event_ids(sub, station="st1"):
    return [json.loads(p)["event_id"] for t, p, _ in sub.messages if t == f"adgan/{station}/events"]


def outbox_ids(path):
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT event_id FROM events ORDER BY seq")]


def looping_samples(synth_data):
    return f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 5'


def test_a_broker_outage_and_a_sigkill_lose_no_event(broker, calibrated, synth_data, tmp_path):
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, looping_samples(synth_data))
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(lambda m: len(m) >= 3, timeout=60), agent.output()
        broker.stop()                       # outage: events go on being produced into the outbox
        time.sleep(6)
        agent.kill()                        # SIGKILL during the outage
        time.sleep(4)                       # 10 s of outage in all
        before = set(event_ids(sub))
        stranded = outbox_ids(tmp_path / "outbox.sqlite")
        assert len(stranded) >= 10, agent.output()  # ~5 events/s were produced while the broker was away
        broker.start()
        assert sub.subscribed.wait(15) and sub.wait_for(lambda m: True)
        agent2 = AgentProcess(cfg, tmp_path / "agent2.log")
        try:
            assert sub.wait_for(lambda m: set(stranded) <= set(event_ids(sub)), timeout=30), agent2.output()
        finally:
            agent2.terminate()
            agent2.stop()
    finally:
        agent.stop()
    got = event_ids(sub)
    assert before | set(stranded) <= set(got)
    payloads = {}
    for t, p, _ in sub.messages:
        e = json.loads(p)
        assert payloads.setdefault(e["event_id"], p) == p  # a resend is the same event, same id and content
    seqs = sorted(json.loads(p)["seq"] for p in payloads.values())
    assert len(seqs) == len(set(seqs))  # sequence numbers continue across the restart, never reused
    sub.close()


def test_a_full_disk_an_outage_and_a_sigkill_lose_no_event_within_the_reserve(broker, calibrated, synth_data,
                                                                                small_fs, tmp_path):
    """The case that used to lose events: the disk fills while the broker is away, and the agent
    is killed. With the outbox's reserve its events stay on disk; the next start sends them all."""
    import re
    from tests.agent.conftest import fill_file_system, poll
    bundle, thresholds = calibrated
    source = looping_samples(synth_data).replace("fps = 5", "fps = 20")
    away = free_port()                      # nothing listens there: an outage
    cfg = agent_config(tmp_path, away, bundle, thresholds, source)
    outbox = small_fs / "outbox.sqlite"
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "outbox.sqlite"), str(outbox))
                   .replace("reserve_mb = 1", "reserve_mb = 0.5"))
    agent = AgentProcess(cfg, tmp_path / "agent.log")

    def seqs() -> list[int]:
        return [int(n) for n in re.findall(r" INFO agent\.service: #(\d+) ", agent.output())]
    try:
        assert poll(lambda: len(seqs()) >= 5, 60), agent.output()
        filler = fill_file_system(small_fs)
        assert poll(lambda: "its reserve" in agent.output() and "is released" in agent.output(), 30), agent.output()
        n = len(seqs())
        assert poll(lambda: len(seqs()) >= n + 40, 60), agent.output()
        agent.kill()                        # SIGKILL, the disk full, the broker away
    finally:
        agent.stop()
    produced = seqs()
    assert "held in memory" not in agent.output(), agent.output()  # every event found room on disk
    filler.unlink()
    cfg.write_text(cfg.read_text().replace(f"port = {away}", f"port = {broker.port}"))  # the broker is back
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    again = AgentProcess(cfg, tmp_path / "again.log")
    try:
        got = lambda: {json.loads(p)["seq"] for t, p, _ in sub.messages}  # noqa: E731
        assert sub.wait_for(lambda m: set(produced) <= got(), timeout=60), (sorted(set(produced) - got()),
                                                                            again.output())
    finally:
        again.terminate()
        again.stop()
        sub.close()
    assert produced == list(range(1, len(produced) + 1))


def test_on_a_disk_out_of_inodes_the_agent_runs_names_them_and_stores_its_events_once_there_is_room(
        broker, calibrated, synth_data, tmp_path):
    """A disk full of files, not bytes (`df -i`; `df -h` shows room), met at a restart. The agent
    refused to start ('cannot write in ... (No space left on device)'), where on a disk full of
    bytes it runs. Now it runs, says the inodes, holds its events in memory (SQLite cannot make its
    -wal and -shm files) and stores them once files are removed; none is lost."""
    import shutil
    from tests.agent.conftest import fill_inodes, poll, tmpfs
    bundle, thresholds = calibrated
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    with tmpfs(tmp_path / "fs", size="64m", inodes=400) as fs:
        cfg = agent_config(tmp_path, broker.port, bundle, thresholds, looping_samples(synth_data))
        cfg.write_text(cfg.read_text().replace(str(tmp_path / "outbox.sqlite"), str(fs / "outbox.sqlite")))
        first = AgentProcess(cfg, tmp_path / "first.log")
        try:
            assert poll(lambda: len(event_ids(sub)) >= 3, 60), first.output()
            assert first.terminate(30) == 0, first.output()  # a clean stop removes SQLite's -wal and -shm
        finally:
            first.stop()
        filler = fill_inodes(fs)
        agent = AgentProcess(cfg, tmp_path / "agent.log")
        try:
            n = len(event_ids(sub))
            assert poll(lambda: len(event_ids(sub)) >= n + 10, 60), agent.output()  # it runs, and delivers
            said = agent.output()
            assert f"outbox.path: {fs} is full (No space left on device; no inode is free on its file system" in said
            assert "cannot be written (open: OperationalError: unable to open database file; no inode is free" in said
            shutil.rmtree(filler)
            assert poll(lambda: "opened;" in agent.output(), 30), agent.output()  # stored on disk again
            assert agent.terminate(30) == 0, agent.output()
        finally:
            agent.stop()
        assert outbox_ids(fs / "outbox.sqlite") == []
    got = sorted(json.loads(p)["seq"] for t, p, _ in sub.messages if t == "adgan/st1/events")
    assert sorted(set(got)) == list(range(1, max(got) + 1)), got  # none lost, numbers never repeat
    assert "stopped: every event was acknowledged by the broker" in agent.output()
    sub.close()


def test_events_left_by_a_run_as_root_are_kept_and_sent_once_the_files_are_given_back(broker, synth_data,
                                                                                      station_user, tmp_path):
    """An agent run by hand with sudo, killed while the broker was away, leaves its outbox's files root's; the
    unit runs it as its own user. It was refused as 'not an outbox database (unable to open database file)'
    with only the database given back, words that ask for it to be deleted, with the events in it. Now the
    refusal names the files, their owner and `chown`, on MQTT too; once given back, every event is sent."""
    import shutil
    from tests.agent.conftest import NOBODY, poll
    wrap, base = station_user
    shutil.copytree(synth_data / "test" / "sphere", base / "samples")
    for p in [base / "samples", *(base / "samples").rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    state = base / "state"
    cfg = agent_config(base, broker.port, base / "bundle", base / "thresholds.json",
                       f'type = "folder"\npath = "{base / "samples"}"\nloop = true\nfps = 5')
    cfg.write_text(cfg.read_text().replace(str(base / "outbox.sqlite"), str(state / "outbox.sqlite")))
    cfg.chmod(0o644)
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    by_hand = AgentProcess(cfg, tmp_path / "by-hand.log")  # as root
    try:
        assert poll(lambda: len(event_ids(sub)) >= 3, 60), by_hand.output()
        broker.stop()
        time.sleep(3)  # events stored while the broker is away
        by_hand.kill()
    finally:
        by_hand.stop()
    held = outbox_ids(state / "outbox.sqlite")
    assert held, by_hand.output()
    broker.start()
    assert sub.subscribed.wait(10)
    os.chown(state / "outbox.sqlite", NOBODY, NOBODY)  # a person gave back the one file they knew of
    unit = AgentProcess(cfg, tmp_path / "unit.log", wrap=wrap)
    try:
        assert unit.wait(60) == 2
    finally:
        unit.stop()
    said = unit.output()
    assert "not an outbox database" not in said, said
    assert "outbox.sqlite-wal" in said and "(owner root (uid 0), mode 0600) cannot be written by this agent's user, " \
        f"nobody (uid {NOBODY})" in said and f"`chown nobody: {state}/outbox.sqlite*`" in said, said
    assert sub.wait_for(lambda m: any(t == "adgan/st1/start_refused" and b"chown nobody" in p for t, p, _ in m), 10)
    for p in state.iterdir():
        os.chown(p, NOBODY, NOBODY)
    unit = AgentProcess(cfg, tmp_path / "unit-again.log", wrap=wrap)
    try:
        assert poll(lambda: set(held) <= set(event_ids(sub)), 60), unit.output()
        assert unit.terminate(30) == 0, unit.output()
    finally:
        unit.stop()
    got = sorted({json.loads(p)["seq"] for t, p, _ in sub.messages if t == "adgan/st1/events"})
    assert got == list(range(1, got[-1] + 1)), got  # none lost, numbering goes on
    sub.close()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])  # SIGHUP: the terminal of a hand-started agent closed
def test_sigterm_finishes_flushes_and_says_offline(broker, calibrated, synth_data, tmp_path, sig):
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, looping_samples(synth_data))
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(lambda m: len(event_ids(sub)) >= 3, timeout=60), agent.output()
        assert agent.terminate(30, getattr(signal, sig)) == 0, agent.output()
    finally:
        agent.stop()
    assert outbox_ids(tmp_path / "outbox.sqlite") == []  # everything acknowledged before exit
    said = agent.output()  # why it stopped, and that nothing was left behind
    assert f"stopping ({sig})" in said and "stopped: every event was acknowledged by the broker" in said, said
    assert sub.wait_for(lambda m: any(t == "adgan/st1/availability" and p == b"offline" for t, p, _ in m))
    status = sub.documents("adgan/st1/status")
    assert status and status[-1]["counters"]["events"] == len(set(event_ids(sub)))
    sub.close()


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_broker(tmp_path):
    """mosquitto with TLS only and a password file (no anonymous access)."""
    import shutil
    if not shutil.which("openssl") or not shutil.which("mosquitto_passwd"):
        pytest.skip("openssl and mosquitto_passwd are needed (make install)")
    d = tmp_path / "tls"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=adgan test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-copy_extensions", "copy", cwd=d)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "station", "s3cret word"], check=True,
                   capture_output=True)
    (d / "passwd").chmod(0o600)
    port = free_port()
    b = Broker(tmp_path, port)
    b.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {d / 'passwd'}\n"
                      f"cafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}\n"
                      "persistence false\n"
                      # as root, mosquitto would drop to user 'mosquitto', who cannot read the test's files
                      + ("user root\n" if os.geteuid() == 0 else ""))
    b.start()
    yield b, d
    b.stop()


def test_tls_with_a_password(tls_broker, calibrated, synth_data, tmp_path):
    broker, d = tls_broker
    bundle, thresholds = calibrated
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nfps = 0'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src)
    text = cfg.read_text().replace(
        f"port = {broker.port}\n", f'port = {broker.port}\ntls_ca = "{d / "ca.crt"}"\nusername = "station"\n')
    cfg.write_text(text)
    sub = Subscriber(broker.port, "adgan/st1/events", tls_ca=str(d / "ca.crt"), username="station",
                     password="s3cret word")
    assert sub.subscribed.wait(10)
    # the password comes from the environment, as a secret (never in the TOML file)
    agent = AgentProcess(cfg, tmp_path / "agent.log", env={"ADGAN_MQTT__PASSWORD": "s3cret word"})
    try:
        assert agent.wait(60) == 0, agent.output()
        assert sub.wait_for(lambda m: len(m) >= 3), agent.output()
    finally:
        agent.stop()
        sub.close()
    assert "s3cret" not in agent.output()
    # a wrong password is refused by the broker: the agent keeps its events in the outbox
    bad = AgentProcess(cfg, tmp_path / "bad.log", env={"ADGAN_MQTT__PASSWORD": "wrong"})
    try:
        deadline = time.monotonic() + 30
        while "refused" not in bad.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "refused" in bad.output()
        assert bad.wait(60) == 0
    finally:
        bad.stop()
    assert len(outbox_ids(tmp_path / "outbox.sqlite")) == 3
