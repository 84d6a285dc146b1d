"""A broker that takes events and does not deliver them: its ACL forbids this station the events
topic. Under MQTT 3.1.1 it acknowledges and drops them (nothing in the protocol says so); under
MQTT 5 its PUBACK says "not authorised". The default protocol ("auto") speaks 5, and 3.1.1 only
with a broker that refuses 5; a 3.1.1 link checks that acknowledged events come back.

Against a real mosquitto with an ACL (reloaded on SIGHUP, as an operator puts it right); the
3.1.1-only broker is the same mosquitto behind a relay that refuses MQTT 5 CONNECTs as the 3.1.1
standard says (conftest.Mqtt311Front)."""
from __future__ import annotations

import logging
import signal
import time

import pytest

from agent.mqtt import link, refusals
from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.settings import MqttSettings
from tests.agent.conftest import Broker, Mqtt311Front, Subscriber, free_port, poll

FORBIDDEN = ("topic readwrite adgan/st1/availability\ntopic readwrite adgan/st1/status\n"
             "topic readwrite adgan/st1/verdict\ntopic read adgan/#\n")
ALLOWED = "topic readwrite adgan/#\n"


@pytest.fixture
def acl_broker(broker, tmp_path):
    """A second broker, with an ACL file for anonymous clients (FORBIDDEN: no writing events).
    (`broker` for its check that mosquitto is installed.)"""
    (tmp_path / "acl").mkdir()
    b = Broker(tmp_path / "acl", free_port())
    b.acl = tmp_path / "acl" / "acl"
    b.acl.write_text(FORBIDDEN)
    # (run as root, mosquitto drops to its own user, which cannot read pytest's private folders)
    b.conf.write_text(b.conf.read_text() + f"acl_file {b.acl}\nuser root\n")
    b.start()
    yield b
    b.stop()


def acl_says(broker, topic: str, allowed: bool, timeout: float = 15.0) -> bool:
    """Wait until the broker's ACL allows (or refuses) an anonymous MQTT 5 client's publish on
    `topic`: mosquitto reloads its ACL file on SIGHUP when it comes round to it (a fixed half
    second was not always enough on a loaded machine)."""
    import paho.mqtt.client as mqtt
    codes: list = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_publish = lambda client, userdata, mid, reason_code, properties: codes.append(reason_code)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = len(codes)
            c.publish(topic, b"acl probe", qos=1)
            if poll(lambda: len(codes) > n, 2) and codes[-1].is_failure != allowed:
                return True
            time.sleep(0.1)
        return False
    finally:
        c.loop_stop()
        c.disconnect()


def allow_events(broker) -> None:
    broker.acl.write_text(ALLOWED)
    broker.proc.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL file
    assert acl_says(broker, "adgan/st1/acl-probe", True)  # (a topic only the new ACL allows)


def publish(pub: Publisher, n: int, first: int = 0) -> list[str]:
    ids = [f"e{i}" for i in range(first, first + n)]
    for i, e in enumerate(ids):
        pub.publish_event({"event_id": e, "seq": first + i + 1, "verdict": "ok"})
    return ids


def delivered(sub: Subscriber) -> list[str]:
    return [d["event_id"] for d in sub.documents("adgan/st1/events")]


def test_events_the_acl_refuses_stay_in_the_outbox_are_said_once_and_go_when_it_is_put_right(
        acl_broker, tmp_path, caplog, monkeypatch):
    """Before: the default was MQTT 3.1.1, and every event left the outbox unseen and unsaid."""
    monkeypatch.setattr(link, "HOLD_RELEASE_S", 1.0)
    caplog.set_level(logging.INFO)
    sub = Subscriber(acl_broker.port, "adgan/st1/#")
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=acl_broker.port))  # the default: auto
    try:
        assert sub.subscribed.wait(10)
        pub.start()
        assert pub.connected.wait(10) and pub.protocol == "5"
        ids = publish(pub, 20)
        assert poll(lambda: pub.counters["events_rejected"] >= 20, 15), pub.counters
        assert len(pub.outbox) == 20 and delivered(sub) == []
        refusals = [r for r in caplog.records if "refused event" in r.getMessage()]
        assert len(refusals) == 1 and "Not authorized" in refusals[0].getMessage()  # not 20 lines
        allow_events(acl_broker)
        # sent again after HOLD_RELEASE_S on the same connection: no reconnect needed
        assert sub.wait_for(lambda m: sorted(delivered(sub)) == sorted(ids), 20), (delivered(sub), pub.counters)
        assert pub.flush(10) and pub.counters["connects"] == 1
        assert "sending 20 event(s) the broker refused again" in caplog.text
    finally:
        pub.stop()
        sub.close()


@pytest.mark.parametrize("silent", [False, True], ids=["refuses-5", "leaves-5-unanswered"])
def test_a_broker_that_refuses_mqtt_5_is_spoken_to_in_3_1_1(broker, tmp_path, caplog, monkeypatch, silent):
    """As the 3.1.1 standard says (CONNACK 'unacceptable protocol version'), or amqtt's way: no
    answer at all (AUTO_CONNACK_S, 10 s, made 1 s here)."""
    from agent.mqtt import protocol
    monkeypatch.setattr(protocol, "AUTO_CONNACK_S", 1.0)
    front = Mqtt311Front(broker.port, silent=silent)
    sub = Subscriber(broker.port, "adgan/st1/#")
    caplog.set_level(logging.INFO)
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=front.port, keepalive_s=5))
    try:
        assert sub.subscribed.wait(10)
        pub.start()
        assert poll(lambda: pub.connected.is_set(), 20) and pub.protocol == "3.1.1" and front.refused_5 >= 1
        assert ("did not answer an MQTT 5 CONNECT within 1 s" if silent else "does not speak MQTT 5") in caplog.text
        assert "takes MQTT 3.1.1, not 5" in caplog.text
        ids = publish(pub, 5)
        assert sub.wait_for(lambda m: delivered(sub) == ids) and pub.flush(10)
        # the events came back to the station too: nothing unconfirmed
        assert poll(lambda: pub.delivery.confirmed == 5, 10) and pub.counters["events_unconfirmed"] == 0
    finally:
        pub.stop()
        sub.close()
        front.close()
    with pytest.raises(ValueError, match="protocol"):
        MqttSettings(protocol="4")


@pytest.mark.parametrize("protocol", ["3.1.1", "auto"])
def test_on_mqtt_3_1_1_events_the_broker_acknowledges_and_drops_are_said(acl_broker, tmp_path, caplog,
                                                                         monkeypatch, protocol):
    """Nothing can keep them (the broker acknowledged them), but they must not go unsaid."""
    monkeypatch.setattr(refusals, "CONFIRM_S", 1.0)
    front = Mqtt311Front(acl_broker.port)
    caplog.set_level(logging.INFO)
    port = front.port if protocol == "auto" else acl_broker.port
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=port, protocol=protocol, keepalive_s=5))
    try:
        pub.start()
        assert poll(lambda: pub.connected.is_set(), 20) and pub.protocol == "3.1.1"
        publish(pub, 6)
        assert pub.flush(10)  # acknowledged: gone from the outbox
        assert poll(lambda: pub.counters["events_unconfirmed"] == 6, 15), pub.counters
        # (the count is set just before the line is said, on the pump's thread: wait for it, bounded)
        assert poll(lambda: any("did not deliver back" in r.getMessage() for r in caplog.records), 5)
        said = [r for r in caplog.records if "did not deliver back" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.ERROR and "adgan/st1/events" in said[0].getMessage()
        publish(pub, 3, first=6)  # a spell goes on: counted, not said again within CONFIRM_LOG_S
        assert poll(lambda: pub.counters["events_unconfirmed"] == 9, 15)
        assert len([r for r in caplog.records if "did not deliver back" in r.getMessage()]) == 1
        allow_events(acl_broker)
        publish(pub, 2, first=9)
        assert poll(lambda: "delivers this station's events again" in caplog.text, 15), pub.counters
        time.sleep(2 * refusals.CONFIRM_S)
        assert pub.counters["events_unconfirmed"] == 9
    finally:
        pub.stop()
        front.close()


def test_the_delivery_check_can_be_turned_off(acl_broker, tmp_path, monkeypatch):
    """For a broker whose ACL lets the station write its events but not read them back."""
    monkeypatch.setattr(refusals, "CONFIRM_S", 0.5)
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"),
                    MqttSettings(port=acl_broker.port, protocol="3.1.1", check_delivery=False))
    try:
        pub.start()
        assert pub.connected.wait(10)
        publish(pub, 3)
        assert pub.flush(10)
        time.sleep(1.5)
        assert pub.counters["events_unconfirmed"] == 0 and pub.delivery is None
    finally:
        pub.stop()


def test_the_delivery_check_pairs_copies_and_acknowledgements_in_either_order():
    d = refusals.DeliveryCheck()
    assert d.seen("a") is False          # the copy before the PUBACK
    assert d.acked("a", 0.0) is False    # (no failing spell to end)
    d.acked("b", 0.0)
    assert d.overdue(refusals.CONFIRM_S / 2) == (0, False)
    assert d.seen("b") is False and d.confirmed == 2
    d.acked("c", 0.0)
    assert d.overdue(refusals.CONFIRM_S + 1) == (1, True) and d.failing and d.unconfirmed == 1
    d.acked("d", 20.0)
    d.dropped()                          # a reconnect: "d" can no longer be confirmed, nor counted
    assert d.overdue(100.0) == (0, False) and d.unconfirmed == 1
    d.acked("e", 100.0)
    assert d.seen("e") is True and not d.failing  # the spell ends: said by the publisher
    d.acked("f", 100.0)
    assert d.overdue(200.0) == (1, True) and d.failing
    assert d.seen("g") is False and d.acked("g", 200.0) is True and not d.failing  # copy first, then the PUBACK
    for i in range(refusals.CONFIRM_KEEP + 10):
        d.seen(f"x{i}")
        d.acked(f"y{i}", 200.0)
    assert len(d._seen) == len(d._acked) == refusals.CONFIRM_KEEP


def test_a_failing_callback_is_said_and_does_not_stop_the_network_loop(broker, tmp_path, caplog, monkeypatch):
    """paho re-raises a callback's exception out of its network loop, which ends its thread for
    good: no more acknowledgements or reconnects, and nothing said. No input is known to make
    ours fail; a fault is injected into the outbox's acknowledgement to show what would happen."""
    sub = Subscriber(broker.port, "adgan/st1/#")
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=broker.port))
    real_ack, failures = pub.outbox.ack, []

    def ack(event_id):
        if not failures:
            failures.append(event_id)
            raise RuntimeError("injected")
        real_ack(event_id)
    monkeypatch.setattr(pub.outbox, "ack", ack)
    caplog.set_level(logging.INFO)
    try:
        assert sub.subscribed.wait(10)
        pub.start()
        assert pub.connected.wait(10)
        publish(pub, 1)
        assert poll(lambda: failures == ["e0"] and "callback failed" in caplog.text, 10)
        ids = publish(pub, 3, first=1)
        assert sub.wait_for(lambda m: set(ids) <= set(delivered(sub))), (delivered(sub), pub.counters)
        assert poll(lambda: len(pub.outbox) == 1, 10)  # e0 stays: it is sent again on the next connection
        broker.stop()
        broker.start()
        assert pub.flush(30) and delivered(sub).count("e0") == 2
    finally:
        pub.stop()
        sub.close()


def test_a_refused_verdict_is_said_per_topic(acl_broker, tmp_path, caplog):
    """A PLC gateway reads `verdict`: an ACL that lets the station publish its events but not
    its verdict left the gateway without verdicts, and nothing said so."""
    acl_broker.acl.write_text("topic readwrite adgan/st1/events\ntopic readwrite adgan/st1/availability\n"
                              "topic readwrite adgan/st1/status\ntopic read adgan/#\n")
    acl_broker.proc.send_signal(signal.SIGHUP)
    assert acl_says(acl_broker, "adgan/st1/verdict", False)  # (the old ACL allowed it)
    caplog.set_level(logging.INFO)
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=acl_broker.port))
    try:
        pub.start()
        assert pub.connected.wait(10)
        for i in range(3):
            pub.publish_event({"event_id": f"e{i}", "seq": i + 1, "verdict": "anomaly"})
            assert pub.flush(10)
        assert poll(lambda: pub.counters["messages_refused"] >= 3, 10), pub.counters
        said = [r for r in caplog.records if "refused a message on adgan/st1/verdict" in r.getMessage()]
        assert len(said) == 1 and "Not authorized" in said[0].getMessage()
        assert pub.counters["events_rejected"] == 0  # the events themselves were taken
    finally:
        pub.stop()


def test_a_refusal_that_arrives_before_publish_returns_keeps_the_event(tmp_path):
    """paho may call on_publish before publish() has returned the message id (a fast broker);
    such an early answer used to count as an acknowledgement whatever it said, so an event the
    broker refused left the outbox. The race is made certain here: the broker's answer is
    handed to the callback from inside publish()."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=free_port()))
    real = pub.client.publish
    answer = {"code": ReasonCode(PacketTypes.PUBACK, identifier=0x87)}  # not authorised

    def publish(topic, payload, qos=0, retain=False):
        info = real(topic, payload, qos=qos, retain=retain)  # (not connected: queued by paho, with an id)
        pub._on_publish(pub.client, None, info.mid, answer["code"], None)
        return type("Info", (), {"rc": 0, "mid": info.mid})()
    pub.client.publish = publish
    pub.outbox.put("e1", "adgan/st1/events", b"{}")
    assert pub._publish("adgan/st1/events", b"{}", 1, event_id="e1")
    assert len(pub.outbox) == 1 and pub.counters["events_rejected"] == 1
    answer["code"] = ReasonCode(PacketTypes.PUBACK, identifier=0)  # success
    assert pub._publish("adgan/st1/events", b"{}", 1, event_id="e1")
    assert len(pub.outbox) == 0
    pub.outbox.close()


def test_a_refused_read_of_the_stations_own_events_turns_the_check_off_and_is_said(acl_broker, tmp_path, caplog,
                                                                                 monkeypatch):
    """EMQX and HiveMQ refuse a subscription their ACL denies (SUBACK 0x80); mosquitto 2.0 grants
    it and delivers nothing, so its SUBACK is handed to the callback as such a broker's would be.
    Without this, every acknowledged event would be called unconfirmed."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode
    monkeypatch.setattr(refusals, "CONFIRM_S", 0.5)
    caplog.set_level(logging.INFO)
    pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=acl_broker.port, protocol="3.1.1"))
    try:
        pub.start()
        assert poll(lambda: pub._loopback_mid is not None, 10)  # (subscribed on connect)
        pub._on_subscribe(pub.client, None, pub._loopback_mid, [ReasonCode(PacketTypes.SUBACK, identifier=0x80)], None)
        assert not pub._checking
        publish(pub, 3)
        assert pub.flush(10)
        time.sleep(1.5)
        assert pub.counters["events_unconfirmed"] == 0
        assert "refused this station reading its own events" in caplog.text
    finally:
        pub.stop()
