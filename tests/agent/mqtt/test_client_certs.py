"""A station's client certificate (mutual TLS): delivery through a broker that requires one,
a certificate renewed on disk while the agent runs, a renewal caught half written, a broker
asking for a certificate the station lacks, and the end date said ahead (agent/mqtt/tls.py)."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time

import pytest

from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.mqtt.tls import WARN_DAYS, CertificateError, TlsFiles, cert_dates
from agent.settings import MqttSettings
from tests.agent.conftest import Broker, Subscriber, free_port, poll

pytest.importorskip("cryptography.x509")
from tests.agent.pki import NOW, Pki  # noqa: E402


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


@pytest.fixture
def mtls_broker(tmp_path, pki):
    """mosquitto with a TLS listener that requires a client certificate from the CA, and a
    plain one for the test's subscriber. `.tls_port`, `.port` (plain)."""
    plain, tls = free_port(), free_port()
    b = Broker(tmp_path, plain)
    d = pki.d
    b.conf.write_text(f"per_listener_settings false\nallow_anonymous true\npersistence false\n"
                      f"listener {plain} 127.0.0.1\n"
                      f"listener {tls} 127.0.0.1\ncafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\n"
                      f"keyfile {d / 'server.key'}\nrequire_certificate true\n"
                      + ("user root\n" if os.geteuid() == 0 else ""))
    b.tls_port = tls
    b.start()
    yield b
    b.stop()


def station(tmp_path, broker, pki, name="o", cert="station") -> Publisher:
    d = pki.d
    files = {"tls_cert": str(d / f"{cert}.crt"), "tls_key": str(d / f"{cert}.key")} if cert else {}
    s = MqttSettings(port=broker.tls_port, tls_ca=str(d / "ca.crt"), **files)
    pub = Publisher("st1", Outbox(tmp_path / f"{name}.sqlite"), s)
    pub.client.reconnect_delay_set(0.2, 1)
    return pub


@contextlib.contextmanager
def linked(tmp_path, broker, pki):
    """(subscriber on the plain port, a started station connected through the TLS one)."""
    sub = Subscriber(broker.port, "adgan/st1/events")
    pub = station(tmp_path, broker, pki)
    try:
        assert sub.subscribed.wait(10)
        pub.start()
        assert poll(pub.connected.is_set), pub.link
        yield sub, pub
    finally:
        pub.stop(1)
        sub.close()


def restart(broker, pub) -> None:
    """Restart the broker; return once `pub` has connected again."""
    n = pub.counters["connects"]
    broker.stop()
    broker.start()
    assert poll(lambda: pub.counters["connects"] > n and pub.connected.is_set()), pub.link


def received(sub) -> list[str]:
    return [json.loads(p)["event_id"] for t, p, _ in sub.messages if t == "adgan/st1/events"]


def test_the_end_date_is_read_from_the_certificate(pki):
    """UTCTime before 2050 and GeneralizedTime after it (RFC 5280); the first certificate of a
    chain file is the station's own."""
    for end in (NOW + dt.timedelta(days=3), dt.datetime(2061, 7, 1, 12, 30, 5, tzinfo=dt.timezone.utc)):
        pki.issue("st", end)
        assert cert_dates(pki.d / "st.crt") == ((NOW - dt.timedelta(days=1)).timestamp(), end.timestamp())
    chain = pki.d / "chain.crt"
    chain.write_bytes((pki.d / "st.crt").read_bytes() + (pki.d / "ca.crt").read_bytes())
    assert cert_dates(chain)[1] == dt.datetime(2061, 7, 1, 12, 30, 5, tzinfo=dt.timezone.utc).timestamp()
    (pki.d / "bad.crt").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    for bad in (pki.d / "st.key", pki.d / "bad.crt"):
        with pytest.raises(CertificateError):
            cert_dates(bad)


def test_mutual_tls_delivers_and_shows_the_end_date(mtls_broker, pki, tmp_path):
    pki.issue("station", NOW + dt.timedelta(days=90))
    with linked(tmp_path, mtls_broker, pki) as (sub, pub):
        pub.publish_event({"event_id": "a", "seq": 1, "verdict": "ok"})
        assert sub.wait_for(lambda m: "a" in received(sub), 15)
        st = pub.tls_files.status()
        assert st["client_cert"].endswith("station.crt") and 89 < st["days_left"] < 91 and st["reloads"] == 0, st


def test_a_client_certificate_renewed_on_disk_is_used_without_a_restart(mtls_broker, pki, tmp_path, caplog):
    """The certificate expires while the link is up; the broker restarts and refuses it. Before,
    the link read "closed the connection before accepting it" for good: paho had read the
    files once. Now the refusal names the certificate and its end date, and the renewed files
    are loaded at the next attempt; the events stored meanwhile go out."""
    caplog.set_level(logging.INFO)
    end = NOW + dt.timedelta(seconds=4)
    while dt.datetime.now(dt.timezone.utc) > end - dt.timedelta(seconds=2):  # room to connect before it
        end += dt.timedelta(seconds=1)
    pki.issue("station", end)
    with linked(tmp_path, mtls_broker, pki) as (sub, pub):
        time.sleep(max(0.0, end.timestamp() - time.time()) + 1.1)
        mtls_broker.stop()
        mtls_broker.start()
        assert poll(lambda: pub.link["state"] == "tls"), pub.link
        reason = pub.link["reason"]
        assert "client certificate" in reason and "station.crt" in reason and "expired at" in reason, reason
        pub.publish_event({"event_id": "while-refused", "seq": 1, "verdict": "ok"})
        time.sleep(1.5)
        assert not pub.connected.is_set() and received(sub) == []
        pki.issue("station", NOW + dt.timedelta(days=30))          # the renewal, on the same paths
        assert poll(pub.connected.is_set), pub.link
        assert sub.wait_for(lambda m: "while-refused" in received(sub), 15)
        assert pub.tls_files.reloads == 1 and pub.tls_files.status()["days_left"] > 29
    said = [r.getMessage() for r in caplog.records]
    assert sum("renewed TLS files loaded" in m for m in said) == 1, said
    assert sum("expired at" in m and r.levelno == logging.ERROR for m, r in zip(said, caplog.records)) <= 3, said


def test_a_renewal_caught_half_written_keeps_the_old_files(mtls_broker, pki, tmp_path, caplog):
    """A renewal writes the certificate, then the key: between the two, the files do not match.
    The old ones stay loaded (said once), and the new ones load once the key is there."""
    pki.issue("station", NOW + dt.timedelta(days=30))
    pub = station(tmp_path, mtls_broker, pki)
    try:
        pub.start()
        assert poll(pub.connected.is_set), pub.link
        new_key = pki.issue("station", NOW + dt.timedelta(days=60), write_key=False)   # the key not yet
        for _ in range(2):                                 # reconnects with the old files, twice
            restart(mtls_broker, pub)
        assert pub.tls_files.reloads == 0 and "do not load" in pub.tls_files.status()["refused"]
        pki.write_key("station", new_key)
        restart(mtls_broker, pub)
        st = pub.tls_files.status()
        assert st["reloads"] == 1 and st["refused"] is None and st["days_left"] > 59, st
    finally:
        pub.stop(1)
    refused = [r for r in caplog.records if "do not load" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR, [r.getMessage() for r in refused]


def test_a_broker_that_asks_for_a_client_certificate_is_said(mtls_broker, pki, tmp_path):
    pub = station(tmp_path, mtls_broker, pki, cert=None)
    pub.start()
    try:
        assert poll(lambda: pub.link["state"] == "tls"), pub.link
        assert "asks for a client certificate" in pub.link["reason"] and "mqtt.tls_cert" in pub.link["reason"]
    finally:
        pub.stop(1)


def test_a_certificate_from_another_ca_is_said(mtls_broker, pki, tmp_path):
    other = Pki(tmp_path / "other", "another CA")
    other.issue("station", NOW + dt.timedelta(days=30))
    for f in ("station.crt", "station.key"):
        (pki.d / f).write_bytes((other.d / f).read_bytes())
    pub = station(tmp_path, mtls_broker, pki)
    pub.start()
    try:
        assert poll(lambda: pub.link["state"] == "tls"), pub.link
        reason = pub.link["reason"]
        assert "refused this station's client certificate" in reason and "broker's cafile" in reason, reason
    finally:
        pub.stop(1)


def test_the_end_date_is_said_ahead_once_a_day(pki, caplog):
    clock = {"wall": time.time(), "mono": 1000.0}
    pki.issue("station", NOW + dt.timedelta(days=WARN_DAYS + 2))
    files = TlsFiles(pki.d / "ca.crt", pki.d / "station.crt", pki.d / "station.key",
                     wall=lambda: clock["wall"], mono=lambda: clock["mono"])

    def said() -> list[tuple[int, str]]:
        out = [(r.levelno, r.getMessage()) for r in caplog.records if "mqtt.tls_cert" in r.getMessage()]
        caplog.clear()
        return out

    caplog.set_level(logging.INFO)
    files.check_expiry()
    assert said() == []                                         # more than WARN_DAYS left
    clock["wall"] += 3 * 86400
    files.check_expiry()
    first = said()
    assert len(first) == 1 and first[0][0] == logging.WARNING and "valid until" in first[0][1], first
    for step in (3600, 3600 * 10):
        clock["wall"] += step
        clock["mono"] += step
        files.check_expiry()
        assert said() == []
    clock["wall"] += 86400
    clock["mono"] += 86400
    files.check_expiry()
    assert len(said()) == 1
    clock["wall"] += (WARN_DAYS + 1) * 86400
    clock["mono"] += 3600
    files.check_expiry()
    files.check_expiry()
    expired = said()
    assert len(expired) == 1 and expired[0][0] == logging.ERROR and "expired at" in expired[0][1], expired
    assert files.status()["days_left"] < 0


def test_the_end_date_is_a_metric(pki):
    from agent.metrics import _StateCollector
    pki.issue("station", NOW + dt.timedelta(days=20))
    files = TlsFiles(pki.d / "ca.crt", pki.d / "station.crt", pki.d / "station.key")
    st = {"counters": {"frames": 0, "error": 0, "errors_suppressed": 0}, "outbox": {}, "mqtt_connected": True,
          "mqtt": {"tls": files.status()}, "source": {"state": "running", "failures": 0}}
    got = {m.name: m.samples[0].value for m in _StateCollector(lambda: st, lambda: True).collect()}
    assert got["adgan_mqtt_client_cert_expiry_timestamp_seconds"] == (NOW + dt.timedelta(days=20)).timestamp()
    st["mqtt"] = {}
    got = {m.name for m in _StateCollector(lambda: st, lambda: True).collect()}
    assert "adgan_mqtt_client_cert_expiry_timestamp_seconds" not in got   # no client certificate, no series


def test_a_ca_added_to_tls_ca_is_trusted_and_one_taken_out_is_not_without_a_restart(pki, tmp_path, caplog):
    """The broker's certificate is reissued by a new CA, and the new CA is added to the
    station's tls_ca: the next attempt trusts it (before, verification failed until a restart).
    Then the old CA is taken out: the next attempt no longer trusts it."""
    caplog.set_level(logging.INFO)
    port = free_port()
    b = Broker(tmp_path, port)
    served = tmp_path / "served"
    served.mkdir()
    for f in ("server.crt", "server.key"):
        (served / f).write_bytes((pki.d / f).read_bytes())
    b.tls(served / "server.crt", served / "server.key")
    trusted = tmp_path / "trusted.crt"
    trusted.write_bytes((pki.d / "ca.crt").read_bytes())
    b.start()
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=port, tls_ca=str(trusted)))
    pub.client.reconnect_delay_set(0.2, 1)
    try:
        pub.start()
        assert poll(pub.connected.is_set), pub.link
        new = Pki(tmp_path / "new", "the new CA")
        for f in ("server.crt", "server.key"):
            (served / f).write_bytes((new.d / f).read_bytes())
        b.stop()
        b.start()
        assert poll(lambda: pub.link["state"] == "tls"), pub.link
        assert "verification" in pub.link["reason"], pub.link
        trusted.write_bytes((pki.d / "ca.crt").read_bytes() + (new.d / "ca.crt").read_bytes())
        assert poll(pub.connected.is_set), pub.link
        assert pub.tls_files.reloads == 1
        # the old CA taken out (compromised, say), and a broker certificate it signed served again:
        # refused from the next attempt (loading into paho's one context only ever added CAs)
        trusted.write_bytes((new.d / "ca.crt").read_bytes())
        for f in ("server.crt", "server.key"):
            (served / f).write_bytes((pki.d / f).read_bytes())
        b.stop()
        b.start()
        assert poll(lambda: pub.link["state"] == "tls"), pub.link
        time.sleep(1.5)
        assert not pub.connected.is_set() and pub.tls_files.reloads == 2, (pub.link, pub.tls_files.status())
    finally:
        pub.stop(1)
        b.stop()


def test_an_agent_with_a_client_certificate_delivers_and_reports_its_end_date(mtls_broker, pki, calibrated,
                                                                                synth_data, tmp_path):
    from tests.agent.conftest import AgentProcess, agent_config
    pki.issue("station", NOW + dt.timedelta(days=10))
    bundle, thresholds = calibrated
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nfps = 5\nloop = true'
    cfg = agent_config(tmp_path, mtls_broker.tls_port, bundle, thresholds, src)
    d = pki.d
    cfg.write_text(cfg.read_text().replace(
        f"port = {mtls_broker.tls_port}\n", f'port = {mtls_broker.tls_port}\ntls_ca = "{d / "ca.crt"}"\n'
        f'tls_cert = "{d / "station.crt"}"\ntls_key = "{d / "station.key"}"\n'))
    sub = Subscriber(mtls_broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(lambda m: len(received(sub)) >= 3 and any(
            "tls" in s["mqtt"] for s in sub.documents("adgan/st1/status")), 60), agent.output()
        assert agent.terminate() == 0, agent.output()
        tls = [s["mqtt"]["tls"] for s in sub.documents("adgan/st1/status") if "tls" in s["mqtt"]]
        assert tls and tls[-1]["client_cert"] == str(d / "station.crt") and 9 < tls[-1]["days_left"] <= 10, tls
    finally:
        agent.stop()
        sub.close()
    out = agent.output()
    assert "mqtt.tls_cert" in out and "valid until" in out and "renew it" in out, out   # 10 days: said ahead


def test_an_expired_broker_certificate_is_named_rather_than_the_clock(pki, tmp_path):
    """A broker whose certificate was not renewed: the reason blamed this station's clock (NTP).
    The broker's certificate is read without verifying it, and its end date named."""
    from agent.mqtt.events import utc_seconds
    end = NOW - dt.timedelta(hours=1)
    pki.issue("server", end, san=True)
    port = free_port()
    b = Broker(tmp_path, port).tls(pki.d / "server.crt", pki.d / "server.key")
    b.start()
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=port, tls_ca=str(pki.d / "ca.crt")))
    try:
        pub.start()
        assert poll(lambda: pub.link["state"] == "tls"), pub.link
        reason = pub.link["reason"]
        assert f"the broker's certificate expired at {utc_seconds(end.timestamp())}" in reason, reason
        assert "Renew it on the broker" in reason and "by this station's clock, which reads 20" in reason, reason
    finally:
        pub.stop(1)
        b.stop()


def test_an_encrypted_key_is_refused_by_name_without_a_prompt(pki, tmp_path, capfd):
    """OpenSSL asks for a key's passphrase on the terminal ("Enter PEM pass phrase:") when none
    is given: an agent run by hand blocked there, and under systemd it failed as "Invalid
    argument". The agent never asks; it says the key is encrypted."""
    from cryptography.hazmat.primitives import serialization
    key = pki.issue("station", NOW + dt.timedelta(days=30))
    files = TlsFiles(pki.d / "ca.crt", pki.d / "station.crt", pki.d / "station.key")
    (pki.d / "station.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    assert files.refresh() is False                      # a renewal written encrypted: the old files stay
    assert "is encrypted" in files.status()["refused"], files.status()
    with pytest.raises(ValueError, match="is encrypted"):
        TlsFiles(pki.d / "ca.crt", pki.d / "station.crt", pki.d / "station.key")
    assert "pass phrase" not in capfd.readouterr().err


def test_under_tls_12_the_refusal_of_an_expired_certificate_is_said_the_same(pki, tmp_path):
    """TLS 1.3 refuses a client certificate after the handshake (the client sees it on its first
    read); under TLS 1.2 the refusal is the handshake's last step. Both are named."""
    pki.issue("station", NOW - dt.timedelta(hours=1))
    port = free_port()
    b = Broker(tmp_path, port).tls(pki.d / "server.crt", pki.d / "server.key",
                                   f"cafile {pki.d / 'ca.crt'}\nrequire_certificate true\ntls_version tlsv1.2\n")
    b.tls_port = port
    b.start()
    pub = station(tmp_path, b, pki)
    try:
        pub.start()
        assert poll(lambda: pub.link["state"] == "tls" and "client certificate" in pub.link["reason"], 20), pub.link
        reason = pub.link["reason"]
        assert "station.crt" in reason and "expired at" in reason, reason
    finally:
        pub.stop(1)
        b.stop()
