"""The demo's Python broker (amqtt, when mosquitto is absent or --embedded-broker) carries the agent's
MQTT: QoS 1 with PUBACKs, retained messages, the Last Will."""
from __future__ import annotations

import socket
import time

import paho.mqtt.client as mqtt
import pytest

from adgan.broker import BrokerProcess
from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.settings import MqttSettings
from tests.agent.conftest import Subscriber


pytest.importorskip("amqtt", reason="the broker extra (amqtt) is not installed")


def test_publisher_and_subscriber_through_the_python_broker(tmp_path):
    with BrokerProcess(tmp_path, embedded=True) as b:
        assert b.kind == "amqtt"
        sub = Subscriber(b.port, "adgan/st1/#")
        pub = Publisher("st1", Outbox(tmp_path / "o.sqlite"), MqttSettings(port=b.port))
        try:
            assert sub.subscribed.wait(10)
            pub.start()
            # amqtt speaks MQTT 3.1.1 and leaves an MQTT 5 CONNECT unanswered: the default protocol
            # ("auto") tries 3.1.1 after AUTO_CONNACK_S (10 s)
            assert pub.connected.wait(30) and pub.protocol == "3.1.1"
            for i in range(20):
                pub.publish_event({"event_id": f"e{i}", "seq": i + 1, "verdict": "ok"})
            ids = lambda m: [p for t, p, _ in m if t == "adgan/st1/events"]  # noqa: E731
            assert sub.wait_for(lambda m: len(ids(m)) == 20)
            assert [p.decode() for p in ids(sub.messages)] == [f'{{"event_id":"e{i}","seq":{i + 1},"verdict":"ok"}}'
                                                              for i in range(20)]
            deadline = time.monotonic() + 10
            while len(pub.outbox) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(pub.outbox) == 0  # PUBACKs arrived
        finally:
            sub.close()
        # retained messages reach a late subscriber, flagged as retained
        late = Subscriber(b.port, "adgan/st1/+")
        try:
            assert late.wait_for(lambda m: ("adgan/st1/availability", b"online", True) in m
                                 and ("adgan/st1/verdict", b"OK", True) in m)
        finally:
            late.close()
        # the Last Will goes out when a client vanishes without DISCONNECT
        watcher = Subscriber(b.port, "adgan/st1/availability")
        try:
            assert watcher.subscribed.wait(10)
            pub.client._sock_close()  # the network dies under the client
            pub.client.loop_stop()
            assert watcher.wait_for(lambda m: any(p == b"offline" for _, p, _ in m), timeout=10)
        finally:
            watcher.close()
    assert b.proc.poll() is not None  # stopped by PID


def test_ping_and_a_garbage_client_do_not_hurt(tmp_path):
    with BrokerProcess(tmp_path, embedded=True) as b:
        s = socket.create_connection(("127.0.0.1", b.port), timeout=2)
        s.sendall(b"\xff\xff\xff\xff\xff garbage")
        s.close()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pinger")
        c.connect("127.0.0.1", b.port, keepalive=5)
        c.loop_start()
        try:
            got = []
            c.on_message = lambda cl, u, m: got.append(m.payload)
            c.subscribe("x/y", qos=1)
            time.sleep(0.3)
            c.publish("x/y", "hello", qos=2).wait_for_publish(5)
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                time.sleep(0.05)
            assert got == [b"hello"]
        finally:
            c.loop_stop()
            c.disconnect()
