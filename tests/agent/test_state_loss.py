"""A station whose state folder was lost (a replaced SD card, a reimaged Jetson) or restored
from an older copy: its sequence numbers continue above the broker's record of them, and the
loss is said (agent/mqtt/numbering.py, agent/mqtt/seqrecord.py)."""
from __future__ import annotations

import json
import logging
import time

import paho.mqtt.client as mqtt
import pytest

from agent.mqtt.numbering import MARGIN, MARGIN_S
from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.settings import MqttSettings
from tests.agent.conftest import AgentProcess, Subscriber, agent_config, poll


def retain(port: int, topic: str, payload) -> None:
    """Publish `payload` retained (QoS 1) and wait for it to be taken."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"retain-{time.monotonic_ns()}")
    c.connect("127.0.0.1", port, 5)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        c.loop_stop()
        c.disconnect()


def status(seq, events=600, uptime_s=60.0, station="st1") -> str:
    return json.dumps({"station": station, "time": "2026-12-01T08:00:00Z", "uptime_s": uptime_s,
                       "counters": {"events": events}, "outbox": {"depth": 0, "seq": seq}})


def publisher(tmp_path, broker, name="o") -> Publisher:
    pub = Publisher("st1", Outbox(tmp_path / f"{name}.sqlite"), MqttSettings(port=broker.port))
    pub.client.reconnect_delay_set(0.2, 1)
    return pub


def test_a_new_outbox_continues_above_the_brokers_record(broker, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    retain(broker.port, "adgan/st1/status", status(500))        # the previous run: 10 events a second
    pub = publisher(tmp_path, broker)
    try:
        assert pub.outbox.fresh
        pub.start()
        assert pub.seq_checked.wait(10)
        expected = 500 + MARGIN + int(10 * MARGIN_S) + 1
        assert pub.outbox.next_seq() == expected
        assert pub.outbox.status()["continued"]["record"] == 500
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "went back" in errors[0] and "is new" in errors[0] and str(expected) in errors[0]
        # a later connection does not read it again (a second agent with this station_id would
        # otherwise push the numbers up at every reconnect)
        retain(broker.port, "adgan/st1/status", status(10 ** 6))
        n = pub.counters["connects"]
        thief = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=pub.client_id)  # takes its session over
        thief.connect("127.0.0.1", broker.port, 5)
        thief.disconnect()
        assert poll(lambda: pub.counters["connects"] > n and pub.connected.is_set(), 20)
        time.sleep(1.0)
        assert pub.outbox.next_seq() == expected + 1
    finally:
        pub.stop(1)
    outbox = Outbox(tmp_path / "o.sqlite")                         # stored: a restart keeps counting above it
    assert outbox.next_seq() == expected + 2 and not outbox.fresh
    outbox.close()


def test_the_record_is_applied_before_the_numbers_are_said_to_be_checked(broker, tmp_path, caplog, monkeypatch):
    """seq_checked (what a new outbox's first number waits for) was set before the record was read
    and applied: on a loaded station (this test's older twin above failed so beside three busy
    loops) the first events could still be numbered 1, 2, ... under a record of 500. Here
    applying it takes half a second."""
    caplog.set_level(logging.INFO)
    retain(broker.port, "adgan/st1/status", status(500))
    pub = publisher(tmp_path, broker)
    real = pub.outbox.continue_after

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(pub.outbox, "continue_after", slow)
    try:
        pub.start()
        assert pub.seq_checked.wait(10)
        assert pub.outbox.next_seq() == 500 + MARGIN + int(10 * MARGIN_S) + 1
        assert any("went back" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    finally:
        pub.stop(1)


@pytest.mark.parametrize("record", [
    status(3),                                                   # below this outbox: nothing lost
    status(True), status("900"), status(2 ** 40), status(2 ** 31 - 10),   # (past 32 bits with the margin)
    "not json", json.dumps({"station": "st1"}), json.dumps([1, 2]),
    status(900, events=10 ** 400), status(900, uptime_s=-10 ** 400),  # (an OverflowError in paho's callback)
])
def test_a_record_behind_or_untrustworthy_changes_nothing(broker, tmp_path, record, caplog):
    pub = publisher(tmp_path, broker)
    for _ in range(5):
        pub.outbox.next_seq()
    retain(broker.port, "adgan/st1/status", record)
    try:
        pub.start()
        assert pub.seq_checked.wait(10)
        assert pub.outbox.next_seq() == 6 and pub.outbox.continued is None
    finally:
        pub.stop(1)
    assert not [r for r in caplog.records if "callback failed" in r.getMessage()]  # (after paho's thread ended)


def test_without_a_record_the_check_ends_soon_and_a_live_status_is_not_read(broker, tmp_path):
    """While the station reads its record, another client publishes its status topic live (not
    retained) every 20 ms: those are not the broker's record, and change nothing."""
    import threading
    stop = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="live-status")
    c.connect("127.0.0.1", broker.port, 5)
    c.loop_start()

    def flood() -> None:
        while not stop.is_set():
            c.publish("adgan/st1/status", status(10 ** 5), qos=0, retain=False)
            time.sleep(0.02)
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    pub = publisher(tmp_path, broker)
    got_live = []
    on_message = pub.client.on_message
    pub.client.on_message = lambda cl, u, m: (got_live.append(m.topic), on_message(cl, u, m))
    try:
        pub.start()
        assert poll(pub.connected.is_set, 10)
        t0 = time.monotonic()
        assert pub.seq_checked.wait(5) and time.monotonic() - t0 < 2.0
        assert "adgan/st1/status" in got_live          # live ones did arrive while it read
        assert pub.outbox.next_seq() == 1 and pub.outbox.continued is None
    finally:
        stop.set()
        thread.join(5)
        pub.stop(1)
        c.loop_stop()
        c.disconnect()


def test_an_agent_whose_state_folder_was_lost_numbers_on_above_its_last_event(broker, calibrated, synth_data,
                                                                               tmp_path):
    """Before, the second run numbered its events from 1 again: a gateway tracking the last number
    took them for old ones, and nothing said that the first run's stored events were lost."""
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds,
                       f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nfps = 5\nloop = true')
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)

    def seqs(run: set | None = None) -> list[int]:
        return [e["seq"] for e in sub.documents("adgan/st1/events") if run is None or e["event_id"] not in run]

    first = AgentProcess(cfg, tmp_path / "first.log")
    try:
        assert poll(lambda: len(seqs()) >= 5 and any(s["outbox"].get("seq", 0) >= 5
                                                     for s in sub.documents("adgan/st1/status")), 60), first.output()
        assert first.terminate() == 0, first.output()
    finally:
        first.stop()
    before = {e["event_id"] for e in sub.documents("adgan/st1/events")}
    last = max(seqs())
    for f in tmp_path.glob("outbox.sqlite*"):                   # the state folder lost
        f.unlink()
    second = AgentProcess(cfg, tmp_path / "second.log")
    try:
        assert poll(lambda: len(seqs(before)) >= 3, 60), second.output()
        assert second.terminate() == 0, second.output()
    finally:
        second.stop()
    assert min(seqs(before)) > last, (last, seqs(before))
    out = second.output()
    assert "sequence numbers went back" in out and "is new" in out, out


def test_a_new_outbox_waits_for_the_broker_only_briefly(broker, tmp_path, caplog, monkeypatch):
    import agent.mqtt.seqrecord as seqrecord
    from tests.agent.conftest import free_port
    caplog.set_level(logging.INFO)
    pub = Publisher("st1", Outbox(tmp_path / "a.sqlite"), MqttSettings(port=free_port()))   # nothing listens
    try:
        pub.start()
        t0 = time.monotonic()
        pub.await_record()                                        # not while it cannot be reached
        assert time.monotonic() - t0 < 2.0 and pub.link["state"] == "refused"
        assert any("no record of this station's sequence numbers" in r.getMessage() for r in caplog.records)
        t0 = time.monotonic()
        pub.await_record()                                        # once only
        assert time.monotonic() - t0 < 0.1 and pub.outbox.next_seq() == 1
    finally:
        pub.stop(1)
    pub = publisher(tmp_path, broker, "b")                        # a broker without a record: the grace
    try:
        t0 = time.monotonic()  # (before start: the grace counts from the SUBACK, which may come before await_record)
        pub.start()
        pub.await_record()
        took = time.monotonic() - t0
        assert seqrecord.RECORD_WAIT_S <= took < seqrecord.RECORD_WAIT_S + 1.5 and pub.seq_checked.is_set(), took
    finally:
        pub.stop(1)
    monkeypatch.setattr(seqrecord, "RECORD_START_WAIT_S", 0.3)  # a broker that takes long: the deadline
    pub = publisher(tmp_path, broker, "c")
    monkeypatch.setattr(pub, "_subscribe_record", lambda client: None)   # (no SUBACK comes)
    try:
        pub.start()
        t0 = time.monotonic()
        pub.await_record()
        assert 0.2 < time.monotonic() - t0 < 1.0 and not pub.seq_checked.is_set()
    finally:
        pub.stop(1)
