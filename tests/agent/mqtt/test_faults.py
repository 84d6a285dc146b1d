"""The publisher and outbox under the faults an operator meets (issue 14): retained and
oversized commands, message-id wrap, a full disk, a frozen and a killed broker, stale
verdicts, and connection failures that must be said."""
from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from agent.mqtt.files import SeqFile
from agent.mqtt.outbox import Outbox
from agent.mqtt.commands import MAX_COMMAND_BYTES
from agent.mqtt.publisher import Publisher
from agent.settings import MqttSettings
from tests.agent.conftest import Broker, Subscriber, fill_file_system, free_port


def events_received(msgs, topic="adgan/st1/events"):
    return [json.loads(p)["event_id"] for t, p, _ in msgs if t == topic]


def wait(pred, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def send(port: int, topic: str, payload, retain=False) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cmd-{time.monotonic_ns()}")
    c.connect("127.0.0.1", port, 5)
    c.loop_start()
    try:
        info = c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(30)  # a 5 MB payload on a loaded machine: the broker must have it before we hang up
        assert info.is_published(), f"the broker did not acknowledge {len(payload)} bytes on {topic} within 30 s"
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.fixture
def started(broker, tmp_path):
    """A connected publisher with a class handler that records its payloads."""
    got: list[bytes] = []
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=broker.port, keepalive_s=5),
                    commands={"class": got.append, "trigger": got.append})
    pub.start()
    assert pub.commands_ready.wait(10)  # subscribed: a command sent now reaches the handler
    yield pub, got
    pub.stop()


def test_a_retained_command_is_refused_and_does_not_come_back_on_reconnect(broker, tmp_path, caplog):
    got: list[bytes] = []

    def publisher():
        p = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=broker.port, keepalive_s=5),
                      commands={"class": got.append})
        p.start()
        assert p.commands_ready.wait(10)
        return p

    pub = publisher()
    try:
        assert wait(lambda: pub.link["state"] == "connected")
        send(broker.port, "adgan/st1/class/set", "sphere", retain=True)   # live: a command like any other
        send(broker.port, "adgan/st1/class/set", "cylinder")
        assert wait(lambda: got == [b"sphere", b"cylinder"])
    finally:
        pub.stop()
    for _ in range(2):                                            # the agent restarts, twice
        pub = publisher()
        try:
            time.sleep(1.0)
            assert got == [b"sphere", b"cylinder"], got           # the retained 'sphere' is not applied again
            assert pub.counters["commands_refused"] == 1
        finally:
            pub.stop()
    assert "retained" in caplog.text


def test_oversized_commands_are_refused_with_a_short_log_line(broker, started, caplog):
    pub, got = started
    caplog.set_level(logging.WARNING)
    # one hostile 5 MB payload and two of 64 KiB. (The first one used to be lost in CI now and then:
    # the fixture waited for the connection only, and the agent had not subscribed yet.) Over MQTT 5
    # the 5 MB one never reaches the agent: its CONNECT says it takes at most MAX_INCOMING_BYTES.
    for size in (5 << 20, 64 << 10, 64 << 10):
        send(broker.port, "adgan/st1/class/set", b"x" * size)
    send(broker.port, "adgan/st1/class/set", b"x" * MAX_COMMAND_BYTES)
    assert wait(lambda: got == [b"x" * MAX_COMMAND_BYTES], 30)
    # each send is its own connection, so the last big one may reach the agent after the small one
    assert wait(lambda: pub.counters["commands_refused"] == 2, 30), dict(pub.counters)  # connects, disconnects
    time.sleep(1.0)
    assert pub.counters["commands_refused"] == 2 and pub.protocol == "5"
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1                       # rate-limited: once per 10 s per feature
    assert len(refusals[0].getMessage()) < 300      # the payload is not written to the log


def test_commands_ready_waits_for_the_brokers_grant_and_a_refused_subscription_is_said(broker, tmp_path, caplog):
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=broker.port, keepalive_s=5),
                    commands={"class": lambda b: None, "trigger": lambda b: None})
    assert not pub.commands_ready.is_set()
    pub.start()
    try:
        assert pub.commands_ready.wait(10) and pub.counters["subscriptions_refused"] == 0
        # a broker that refuses one (an MQTT 5 ACL: 0x87 not authorised); mosquitto 2.0 grants
        # every subscription, so the SUBACK is handed to the callback as paho would
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.reasoncodes import ReasonCode
        caplog.set_level(logging.ERROR)
        pub.commands_ready.clear()
        pub.commands._subacks = {901: "adgan/st1/class/set", 902: "adgan/st1/trigger/set"}
        pub._on_subscribe(pub.client, None, 901, [ReasonCode(PacketTypes.SUBACK, identifier=0x87)], None)
        pub._on_subscribe(pub.client, None, 902, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None)
        assert not pub.commands_ready.is_set() and pub.counters["subscriptions_refused"] == 1
        assert "refused the subscription to adgan/st1/class/set" in caplog.text
        broker.stop()                                   # the link drops: not ready
        assert wait(lambda: not pub.commands_ready.is_set() and not pub.connected.is_set())
        broker.start()                                  # a new connection subscribes again
        assert pub.commands_ready.wait(30)
    finally:
        pub.stop()


def test_message_ids_that_wrap_do_not_acknowledge_an_event(broker, started):
    """Status publishes (QoS 0) used to leave their ids behind as 'early acks'; after 65,535 of
    them an event took a stale id and left the outbox without the broker having it."""
    pub, _ = started
    for i in range(66_000):
        pub.publish_status({"n": i})
    assert len(pub._early) == 0 and len(pub._inflight) <= 1
    os.kill(broker.proc.pid, signal.SIGSTOP)        # frozen broker: nothing is acknowledged now
    try:
        pub.publish_event({"event_id": "e1", "seq": 1, "verdict": "ok"})
        time.sleep(1.0)
        assert len(pub.outbox) == 1                 # still waiting for the broker's PUBACK
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert wait(lambda: len(pub.outbox) == 0)


def test_events_in_flight_when_the_broker_dies_are_delivered_once(broker, tmp_path):
    """Before: paho resent its own queue and on_connect republished the outbox, so every
    event in flight at a disconnect arrived twice."""
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=broker.port, keepalive_s=5))
    try:
        pub.start()
        assert pub.connected.wait(10)
        for i in range(20):
            pub.publish_event({"event_id": f"a{i}", "seq": i + 1, "verdict": "ok"})
        assert sub.wait_for(lambda m: len(events_received(m)) == 20)
        os.kill(broker.proc.pid, signal.SIGSTOP)
        for i in range(40):                         # in flight: written to the socket, never acknowledged
            pub.publish_event({"event_id": f"b{i}", "seq": 21 + i, "verdict": "ok"})
        time.sleep(1.0)
        assert len(pub.outbox) == 40
        broker.proc.kill()
        broker.proc.wait(5)
        broker.proc = None
        broker.start()
        assert sub.subscribed.wait(15)
        want = {f"a{i}" for i in range(20)} | {f"b{i}" for i in range(40)}
        assert sub.wait_for(lambda m: set(events_received(m)) == want, 30), len(set(events_received(sub.messages)))
        assert wait(lambda: len(pub.outbox) == 0)
        time.sleep(1.0)
        got = events_received(sub.messages)
        assert len(got) == len(set(got)) == 60      # no duplicates
    finally:
        pub.stop()
        sub.close()


def test_verdicts_are_not_replayed_after_an_outage(broker, tmp_path):
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), 
                    MqttSettings(port=broker.port, keepalive_s=5, verdict_max_age_s=1.0))
    try:
        pub.start()
        assert pub.connected.wait(10)
        pub.publish_event({"event_id": "live", "seq": 1, "verdict": "anomaly"})
        assert sub.wait_for(lambda m: ("adgan/st1/verdict", b"NG", False) in m)
        broker.stop()
        assert wait(lambda: not pub.connected.is_set())
        for i in range(30):                         # decided during the outage
            pub.publish_event({"event_id": f"o{i}", "seq": 2 + i, "verdict": "ok" if i % 2 else "anomaly"})
        time.sleep(1.5)                             # older than verdict_max_age_s when the broker returns
        n_before = len(sub.messages)
        broker.start()
        assert sub.subscribed.wait(15)
        assert sub.wait_for(lambda m: len(events_received(m)) == 31, 30)
        late = [p for t, p, r in sub.messages[n_before:] if t == "adgan/st1/verdict" and not r]
        assert late == []                           # none of the 30 stale verdicts
        assert pub.counters["verdicts_skipped"] == 30
        pub.publish_event({"event_id": "fresh", "seq": 40, "verdict": "ok"})
        assert sub.wait_for(lambda m: ("adgan/st1/verdict", b"OK", False) in m[n_before:])
    finally:
        pub.stop()
        sub.close()


# -- a full disk: a real, small tmpfs (small_fs, tests/agent/conftest.py) -------------------
def test_a_full_disk_loses_no_event_and_seq_never_repeats(broker, small_fs, caplog):
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    ob = Outbox(small_fs / "outbox.sqlite")
    pub = Publisher("st1", ob, MqttSettings(port=broker.port, keepalive_s=5))
    produced, seqs = [], []

    def produce(n):
        for _ in range(n):
            seq = ob.next_seq()
            eid = f"e{seq}"
            pub.publish_event({"event_id": eid, "seq": seq, "verdict": "ok", "pad": "x" * 800})
            produced.append(eid)
            seqs.append(seq)

    try:
        pub.start()
        assert pub.connected.wait(10)
        produce(20)
        assert sub.wait_for(lambda m: len(events_received(m)) == 20)
        filler = fill_file_system(small_fs)
        broker.stop()                               # and the broker goes away while the disk is full
        produce(300)
        st = ob.status()
        assert st["unsaved"] > 0 and "full" in (st["error"] or ""), st
        assert st["dropped"] == 0
        assert "cannot rollback" not in caplog.text
        filler.unlink()                             # space again
        produce(5)
        assert wait(lambda: ob.status()["unsaved"] == 0, 10), ob.status()
        assert ob.status()["error"] is None
        broker.start()
        assert sub.subscribed.wait(15)
        assert sub.wait_for(lambda m: set(produced) <= set(events_received(m)), 30), \
            len(set(produced) - set(events_received(sub.messages)))
        assert wait(lambda: len(ob) == 0)
    finally:
        pub.stop()
        sub.close()
    assert seqs == list(range(1, len(produced) + 1))   # never repeats, never goes back
    ob.close()
    again = Outbox(small_fs / "outbox.sqlite")
    assert again.next_seq() == len(produced) + 1       # and goes on after a restart
    again.close()


def test_an_agent_restarted_on_a_full_disk_runs_and_stores_its_events_when_space_returns(broker, small_fs):
    """At start SQLite must create its WAL index: on a full disk that fails, and the agent
    used to exit. It now starts with the events held in memory and opens the database later."""
    ob = Outbox(small_fs / "outbox.sqlite")
    for i in range(3):
        ob.put(f"old{i}", "adgan/st1/events", json.dumps({"event_id": f"old{i}", "seq": ob.next_seq()}).encode())
    ob.close()                                      # three events from before, never delivered
    filler = fill_file_system(small_fs)
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    ob = Outbox(small_fs / "outbox.sqlite")         # restart on the full disk
    assert ob.status()["error"] and ob.status()["error"].startswith("open"), ob.status()
    pub = Publisher("st1", ob, MqttSettings(port=broker.port, keepalive_s=5))
    try:
        pub.start()
        assert pub.connected.wait(10)
        seqs = [ob.next_seq() for _ in range(5)]
        assert seqs == [4, 5, 6, 7, 8]              # from the sequence file: no repeat
        for s_ in seqs:
            pub.publish_event({"event_id": f"new{s_}", "seq": s_, "verdict": "ok"})
        assert sub.wait_for(lambda m: {f"new{s_}" for s_ in seqs} <= set(events_received(m)))
        filler.unlink()                             # space again: the database opens
        pub.publish_event({"event_id": "after", "seq": ob.next_seq(), "verdict": "ok"})
        want = {f"old{i}" for i in range(3)} | {f"new{s_}" for s_ in seqs} | {"after"}
        assert sub.wait_for(lambda m: want <= set(events_received(m)), 20), sorted(events_received(sub.messages))
        assert wait(lambda: len(ob) == 0) and ob.status()["error"] is None and ob.generation == 1
        got = events_received(sub.messages)
        assert len(got) == len(set(got))            # each once
    finally:
        pub.stop()
        sub.close()
    ob.close()


def test_the_sequence_file_survives_a_full_disk_and_a_torn_slot(small_fs):
    s = SeqFile(small_fs / "o.seq")
    s.set(5)
    filler = fill_file_system(small_fs)
    for v in range(6, 50):
        s.set(v)                                    # in place: no new blocks needed
    s.close()
    filler.unlink()
    assert SeqFile(small_fs / "o.seq").value == 49
    with open(small_fs / "o.seq", "r+b") as f:      # a torn write of the newest slot
        f.seek(0 if SeqFile(small_fs / "o.seq")._next_slot == 1 else 16)
        f.write(b"\xff" * 16)
    assert SeqFile(small_fs / "o.seq").value == 48  # the other slot: one behind, never garbage
    with pytest.raises(ValueError, match="never goes backwards"):
        SeqFile(small_fs / "o.seq").set(3)


def test_outbox_files_are_private(tmp_path):
    ob = Outbox(tmp_path / "box" / "outbox.sqlite")
    ob.put("e1", "t", b"x")
    ob.next_seq()
    for p in (tmp_path / "box" / "outbox.sqlite", tmp_path / "box" / "outbox.sqlite.seq"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE((tmp_path / "box").stat().st_mode) == 0o700
    ob.close()


# -- why the link is down: said once per change ---------------------------------------------
def link_after(pub: Publisher, states: set[str], timeout=15.0) -> dict:
    pub.start()
    try:
        assert wait(lambda: pub.link["state"] in states, timeout), pub.link
        return dict(pub.link)
    finally:
        pub.stop(1)


def test_a_broker_that_is_down_is_said_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=port))
    pub.start()
    try:
        assert wait(lambda: pub.link["state"] == "refused")
        time.sleep(3.5)                             # paho retries every 1-2 s meanwhile
    finally:
        pub.stop(1)
    lines = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], lines


class HangingUp:
    """A port that takes each connection, reads its CONNECT and hangs up: a TLS port spoken to in
    plain MQTT, a proxy or load balancer with no broker behind it. Notes each CONNECT's protocol
    level (4: MQTT 3.1.1, 5: MQTT 5)."""

    def __init__(self) -> None:
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port, self.levels, self._stop = self.sock.getsockname()[1], [], threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import socket
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            with c:
                c.settimeout(2)
                try:
                    head = c.recv(64)  # fixed header, remaining length, 00 04 'MQTT', level
                    if head[:1] == b"\x10" and b"MQTT" in head:
                        self.levels.append(head[head.index(b"MQTT") + 4])
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def test_a_port_that_hangs_up_on_both_versions_is_said_once_and_retried_with_backoff(tmp_path, caplog):
    """With protocol "auto", each hang-up before a CONNACK switched to the other version at once:
    on a TLS port without mqtt.tls_ca, two log lines and two connections a second, for good."""
    caplog.set_level(logging.INFO)
    port = HangingUp()
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=port.port))
    pub.start()
    try:
        time.sleep(8)
    finally:
        pub.stop(1)
        port.close()
    said = [r.getMessage() for r in caplog.records if "before accepting it" in r.getMessage()]
    assert len(said) == 2, said                  # it was 2 a second
    assert "it does not speak TLS" in said[0] and said[0].endswith("; trying MQTT 3.1.1"), said  # (asked)
    assert "with MQTT 5 and 3.1.1 alike" in said[1] and "both are tried in turn, with backoff" in said[1], said
    assert {4, 5} <= set(port.levels), port.levels  # both versions are still tried (a 3.1.1 broker may come)
    assert len(port.levels) <= 12, port.levels   # paced: 1, 2, 4 s between switches (it was ~18 in 8 s)


def test_an_unresolvable_host_is_said(tmp_path):
    link = link_after(Publisher("st1", Outbox(tmp_path / "o.sqlite"), 
                                MqttSettings(host="no-such-broker.invalid", port=1883)),
                      {"unresolvable"})
    assert "no-such-broker.invalid" in link["reason"]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_files(tmp_path):
    import shutil
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed (make install)")
    d = tmp_path / "tls"
    d.mkdir()
    for ca in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=adgan {ca} CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-copy_extensions", "copy", cwd=d)
    return d


@pytest.fixture
def tls_only_broker(tmp_path, tls_files):
    port = free_port()
    b = Broker(tmp_path, port)
    d = tls_files
    b.tls(d / "server.crt", d / "server.key", f"cafile {d / 'ca.crt'}\n")
    b.start()
    yield b, d
    b.stop()


def test_tls_failures_are_said(tls_only_broker, tmp_path):
    b, d = tls_only_broker
    wrong_ca = link_after(Publisher("st1", Outbox(tmp_path / "1.sqlite"), 
                                    MqttSettings(port=b.port, tls_ca=str(d / "other.crt"))), {"tls"})
    assert wrong_ca["reason"].startswith(f"TLS verification of 127.0.0.1:{b.port} failed"), wrong_ca
    mismatch = link_after(Publisher("st1", Outbox(tmp_path / "2.sqlite"), 
                                    MqttSettings(host="localhost", port=b.port, tls_ca=str(d / "ca.crt"))),
                          {"tls"})
    assert "mismatch" in mismatch["reason"].lower() or "localhost" in mismatch["reason"], mismatch
    plain = link_after(Publisher("st1", Outbox(tmp_path / "3.sqlite"), MqttSettings(port=b.port)), {"closed"})
    assert "TLS port" in plain["reason"], plain
    ok = link_after(Publisher("st1", Outbox(tmp_path / "4.sqlite"), 
                                MqttSettings(port=b.port, tls_ca=str(d / "ca.crt"))),
                    {"connected"})
    assert "TLS" in ok["reason"]


def _cert_not_yet_valid(d):
    """A CA, and a server certificate for 127.0.0.1 valid from tomorrow (cryptography comes with asyncua)."""
    import datetime as dt
    import ipaddress
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject, issuer, key, sign_key, start, ca, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(start)
             .not_valid_after(start + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "adgan clock CA")])
    ca = cert(ca_name, ca_name, ca_key, ca_key, now - dt.timedelta(days=1), True)
    server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name, key, ca_key,
                  now + dt.timedelta(days=1), False, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pem = serialization.Encoding.PEM
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "server.crt").write_bytes(server.public_bytes(pem))
    (d / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                     serialization.NoEncryption()))


def test_a_certificate_outside_its_dates_names_the_clock(tmp_path):
    """A Jetson has no clock battery: until NTP sets it, its clock may read a time before the
    broker's certificate was issued. The reason must point at the clock, not at tls_ca."""
    d = tmp_path / "tls"
    d.mkdir()
    _cert_not_yet_valid(d)
    port = free_port()
    b = Broker(tmp_path, port)
    b.tls(d / "server.crt", d / "server.key", f"cafile {d / 'ca.crt'}\n")
    b.start()
    try:
        link = link_after(Publisher("st1", Outbox(tmp_path / "o.sqlite"),
                                    MqttSettings(port=port, tls_ca=str(d / "ca.crt"))), {"tls"})
    finally:
        b.stop()
    assert "not yet valid" in link["reason"] and "by this station's clock, which reads 20" in link["reason"], link
    assert "NTP" in link["reason"] and "tls_ca" not in link["reason"], link


def test_a_wrong_password_is_an_authorisation_failure(tmp_path):
    import shutil
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd is needed (make install)")
    port = free_port()
    b = Broker(tmp_path, port)
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "station", "right"], check=True, capture_output=True)
    pw.chmod(0o600)
    b.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\npersistence false\n"
                      + ("user root\n" if os.geteuid() == 0 else ""))
    b.start()
    try:
        link = link_after(Publisher("st1", Outbox(tmp_path / "o.sqlite"), 
                                    MqttSettings(port=port, username="station", password="wrong")), {"auth"})
        assert "refused" in link["reason"]
    finally:
        b.stop()


def test_an_event_the_broker_hangs_up_on_is_held_back_and_the_rest_flows(tmp_path, monkeypatch):
    """mosquitto with message_size_limit drops an MQTT 5 client that sends a larger message,
    and would again at every reconnect, where the oldest unacknowledged event goes first."""
    _hung_up_on(tmp_path, monkeypatch)


def test_a_hang_up_seen_before_publish_returns_is_the_events_too(tmp_path, monkeypatch):
    """paho's network thread may see the broker hang up on an event before publish() has
    returned its message id to the pump (a loaded station: the test above failed once in make test,
    and in 2 of 6 runs beside three busy loops). That drop was nobody's: the event's strikes started again, and three such
    drops within 10 s read as another station taking this one's connection ("taken_over"). Here
    publish() returns only after the drop was seen, every time."""
    _hung_up_on(tmp_path, monkeypatch, late_return=True)


def _hung_up_on(tmp_path, monkeypatch, late_return: bool = False) -> None:
    import agent.mqtt.link as link
    monkeypatch.setattr(link, "HOLD_RELEASE_S", 2.0)
    port = free_port()
    b = Broker(tmp_path, port)
    b.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      "message_size_limit 2000\n")
    b.start()
    sub = Subscriber(port, "adgan/st1/events")
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=port, keepalive_s=5, protocol="5"))
    pub.client.reconnect_delay_set(0.2, 1)
    if late_return:
        real, late = pub.client.publish, []

        def publish(topic, payload=None, *args, **kwargs):
            info = real(topic, payload, *args, **kwargs)
            if b'"big"' in (payload if isinstance(payload, bytes) else str(payload).encode()):
                late.append(wait(lambda: not pub.connected.is_set(), 5))  # the drop is seen first
            return info
        monkeypatch.setattr(pub.client, "publish", publish)
    try:
        assert sub.subscribed.wait(10)
        pub.start()
        assert pub.connected.wait(10)
        pub.publish_event({"event_id": "big", "seq": 1, "verdict": "ok", "pad": "x" * 5000})
        for i in range(5):
            pub.publish_event({"event_id": f"e{i}", "seq": 2 + i, "verdict": "ok"})
        assert sub.wait_for(lambda m: {f"e{i}" for i in range(5)} <= set(events_received(m)), 30)
        assert wait(lambda: pub.counters["events_held"] >= 1), pub.counters
        assert wait(lambda: len(pub.outbox) == 1)                             # kept, said, not lost
        assert wait(lambda: pub.counters["events_held"] >= 2, 20)             # tried again on a stable link
        assert "big" not in events_received(sub.messages)
        assert pub.link["state"] != "taken_over", pub.link  # its drops are the event's, not another client's
        assert not late_return or (len(late) >= 2 and all(late)), late
    finally:
        pub.stop()
        sub.close()
        b.stop()


def test_mqtt_5_connects_and_delivers_like_3_1_1(broker, tmp_path):
    sub = Subscriber(broker.port, "adgan/st1/#")
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=broker.port, protocol="5"),
                    commands={"class": print})
    try:
        assert sub.subscribed.wait(10)
        pub.start()
        assert pub.connected.wait(10)
        pub.publish_event({"event_id": "e1", "seq": 1, "verdict": "anomaly"})
        assert sub.wait_for(lambda m: events_received(m) == ["e1"] and ("adgan/st1/verdict", b"NG", False) in m)
        assert pub.flush(10)
    finally:
        pub.stop()
        sub.close()
    with pytest.raises(ValueError, match="protocol"):
        Publisher("st1", Outbox(tmp_path / "o2.sqlite"), MqttSettings(protocol="4"))
