"""What the broker drops beyond a client's queue is said (agent/mqtt/broker_drops.py). Until
2026-12-07 a PLC that sent trigger/sets faster than the station took them lost the parts beyond
mosquitto's queue (max_queued_messages) without a word: 3,000 sent at once to a running station,
1,431 never answered, and nothing said so."""
from __future__ import annotations

import json
import logging
import time

import paho.mqtt.client as mqtt

from agent.mqtt import broker_drops
from agent.mqtt.broker_drops import DROPPED_TOPIC, BrokerDrops
from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.settings import MqttSettings
from tests.agent.mqtt.test_faults import wait
from tests.agent.test_held_commands import held_backlog


class _Client:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def subscribe(self, topic, qos):
        self.topics.append(topic)
        return mqtt.MQTT_ERR_SUCCESS, len(self.topics)


def test_rises_of_the_count_are_said_and_counted_a_restart_counts_from_zero(caplog, monkeypatch):
    counters: dict = {}
    d = BrokerDrops(counters)
    client = _Client()
    d.subscribe(client)
    granted = mqtt.ReasonCode(mqtt.PacketTypes.SUBACK, "Granted QoS 0")
    assert client.topics == [DROPPED_TOPIC] and d.subacked(1, [granted]) and not d.subacked(1, [granted])
    clock = [1000.0]
    monkeypatch.setattr(broker_drops.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="agent.mqtt.broker_drops")
    d.message(b"7")  # first sight: what the broker dropped before this station watched
    assert counters == {"broker_dropped": 0, "broker_dropped_seen": True}
    assert "the broker has dropped 7 messages since it started" in caplog.text
    caplog.clear()
    d.message(b"7")
    d.message(b"12")
    assert counters["broker_dropped"] == 5 and "the broker dropped 5 more messages (5 counted" in caplog.text
    caplog.clear()
    clock[0] += 1
    d.message(b"20")  # within SAY_EVERY_S of the last warning: counted, said later
    assert counters["broker_dropped"] == 13 and caplog.text == ""
    for junk in (b"", b"-3", b"1e9", b"nan", b"4" * 40, b"\xff"):
        d.message(junk)
    assert counters["broker_dropped"] == 13 and d.total == 20
    clock[0] += broker_drops.SAY_EVERY_S
    d.say()  # (the pump's turn: mosquitto sends the count only when it changes)
    assert "the broker dropped 8 more messages (13 counted" in caplog.text
    d.message(b"3")  # the broker restarted: its count began again at 0
    assert counters["broker_dropped"] == 16
    off = BrokerDrops({}, enabled=False)
    off.subscribe(client)
    assert client.topics == [DROPPED_TOPIC]
    caplog.set_level(logging.INFO, logger="agent.mqtt.broker_drops")
    d.subscribe(client)  # (an ACL that forbids $SYS: noted, nothing to watch)
    assert d.subacked(2, [mqtt.ReasonCode(mqtt.PacketTypes.SUBACK, "Not authorized")])
    assert "the broker refused this station its count of dropped messages" in caplog.text


def test_commands_beyond_the_brokers_queue_are_each_taken_or_counted_as_dropped(broker, tmp_path, caplog):
    """A flood of trigger/sets faster than the station takes them: mosquitto keeps 5 beyond those in
    flight here (max_queued_messages), and drops the rest; the station counts and says every one."""
    broker.stop()
    broker.conf.write_text(broker.conf.read_text() + "sys_interval 1\nmax_queued_messages 5\nmax_inflight_messages 5\n")
    broker.start()
    taken = []

    def slow(payload):
        time.sleep(0.05)
        taken.append(payload)
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=broker.port),
                    commands={"trigger": slow})
    caplog.set_level(logging.WARNING, logger="agent.mqtt.broker_drops")
    pub.start()
    plc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc")
    plc.connect("127.0.0.1", broker.port)
    plc.loop_start()
    try:
        assert pub.commands_ready.wait(10) and wait(lambda: pub.counters["broker_dropped_seen"], 10)
        sent = [plc.publish("adgan/st1/trigger/set", json.dumps({"part_id": f"P{i}"}), qos=1) for i in range(100)]
        for info in sent:
            info.wait_for_publish(10)
        assert wait(lambda: len(taken) + pub.counters["broker_dropped"] >= 100, 20), (len(taken), pub.counters)
        time.sleep(1.0)  # (what the broker still held for the station is taken)
        # (the count is broker-wide: a $SYS message the broker dropped at the full queue counts too)
        assert 0 < len(taken) < 100 and 100 <= len(taken) + pub.counters["broker_dropped"] <= 110, \
            (len(taken), pub.counters)
        assert "the broker dropped " in caplog.text and "max_queued_messages" in caplog.text
    finally:
        plc.loop_stop()
        plc.disconnect()
        pub.stop()


def test_commands_dropped_while_the_station_was_away_are_said_when_it_is_back(broker, tmp_path, caplog):
    """The broker holds what comes for the stopped station, up to its queue (5 here), and drops the
    rest: the run that starts next says it, from the broker's count."""
    broker.stop()
    broker.conf.write_text(broker.conf.read_text() + "sys_interval 1\nmax_queued_messages 5\n")
    broker.start()
    caplog.set_level(logging.WARNING, logger="agent.mqtt.broker_drops")
    plc = held_backlog(broker, tmp_path, 30)
    held: list = []
    again = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=broker.port),
                      commands={"trigger": held.append})
    again.commands.on_held = {"trigger": held.append}
    try:
        again.start()
        assert wait(lambda: again.drops.total is not None and len(held) + again.drops.total >= 30, 20), \
            (len(held), again.drops.total)
        assert 5 <= len(held) < 30 and again.drops.total <= 30 - len(held) + 10, (len(held), again.drops.total)
        # (said at the first sight of the count, or, if that read 0 yet, by the pump's next round: a rise)
        assert wait(lambda: "the broker has dropped" in caplog.text or "the broker dropped" in caplog.text, 10)
    finally:
        plc.loop_stop()
        plc.disconnect()
        again.stop()
