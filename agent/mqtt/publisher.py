"""MQTT publishing per DESIGN.md: availability (retained, Last Will 'offline'), events
(QoS 1, through the durable outbox), verdict (OK/NG), status, and commands on
`<base>/<feature>/set` with their state echoed on `<base>/<feature>/state`. paho-mqtt 2.

An event leaves the outbox only in `on_publish`, the broker's PUBACK for its message id;
every (re)connect republishes whatever is still pending, with its original id.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import ssl
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt

from agent.mqtt.outbox import Outbox

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, station_id: str, outbox: Outbox, host: str = "127.0.0.1", port: int = 1883,
                 prefix: str = "adgan", qos: int = 1, keepalive: int = 30, username: str | None = None,
                 password: str | None = None, tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, client_id: str | None = None,
                 commands: dict[str, Callable[[bytes], None]] | None = None) -> None:
        self.base = f"{prefix}/{station_id}"
        self.outbox, self.qos = outbox, qos
        self.store_failures = 0  # events published without a durable copy (outbox write failed)
        # feature -> handler of the payload of <base>/<feature>/set (called on paho's thread)
        self.commands = dict(commands or {})
        self.host, self.port, self.keepalive = host, port, keepalive
        self.connected = threading.Event()
        # message id -> event id. Never call paho while holding _lock: paho calls on_publish
        # under its own lock, so the opposite order would deadlock.
        self._inflight: dict[int, str] = {}
        self._early_acks: set[int] = set()  # PUBACKs that arrived before their id was registered
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"adgan-{station_id}",
                                  clean_session=True)
        self.client.will_set(self.topic("availability"), "offline", qos=1, retain=True)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key, cert_reqs=ssl.CERT_REQUIRED,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def topic(self, name: str) -> str:
        return f"{self.base}/{name}"

    # -- paho callbacks (network thread) --------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT connection to %s:%d refused: %s", self.host, self.port, reason_code)
            return
        client.publish(self.topic("availability"), "online", qos=1, retain=True)
        for feature in self.commands:
            client.subscribe(self.topic(f"{feature}/set"), qos=1)
        self.connected.set()
        pending = self.outbox.pending()
        if pending:
            log.info("republishing %d unacknowledged events", len(pending))
        for p in pending:
            self._send(p.event_id, p.topic, p.payload, p.qos)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code != 0:
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            event_id = self._inflight.pop(mid, None)
            if event_id is None:
                self._early_acks.add(mid)
        if event_id is not None:
            self.outbox.ack(event_id)

    def _on_message(self, client, userdata, msg) -> None:
        prefix, suffix = self.base + "/", "/set"
        feature = msg.topic[len(prefix):-len(suffix)] if msg.topic.startswith(prefix) and msg.topic.endswith(suffix) else None
        handler = self.commands.get(feature) if feature else None
        if handler is None:
            return
        try:
            handler(bytes(msg.payload))
        except Exception:  # a bad command must not kill the network thread
            log.exception("command on %s failed", msg.topic)

    # -- API -------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; paho reconnects by itself after an outage."""
        self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()

    def _send(self, event_id: str, topic: str, payload: bytes, qos: int) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish of event %s failed (%s); it stays in the outbox", event_id, info.rc)
            return
        with self._lock:
            acked = info.mid in self._early_acks
            if acked:
                self._early_acks.discard(info.mid)
            else:
                self._inflight[info.mid] = event_id
        if acked:
            self.outbox.ack(event_id)

    def publish_event(self, event: dict) -> None:
        """Store the event durably, then publish it (QoS 1); it is acknowledged in on_publish."""
        payload = json.dumps(event, separators=(",", ":")).encode()
        try:
            self.outbox.put(event["event_id"], self.topic("events"), payload, self.qos)
        except sqlite3.Error as e:  # disk full or failing: still deliver, but say it is not durable
            self.store_failures += 1
            log.error("event %s could not be stored in the outbox (%s); publishing it without a durable copy",
                      event["event_id"], e)
        if self.connected.is_set():
            self._send(event["event_id"], self.topic("events"), payload, self.qos)
        verdict = event.get("verdict")
        if verdict in ("ok", "anomaly"):
            self.client.publish(self.topic("verdict"), "OK" if verdict == "ok" else "NG", qos=1, retain=True)

    def publish_status(self, status: dict) -> None:
        self.client.publish(self.topic("status"), json.dumps(status), qos=0, retain=True)

    def publish_state(self, feature: str, value: str) -> None:
        """Echo a feature's state on <base>/<feature>/state (retained)."""
        self.client.publish(self.topic(f"{feature}/state"), value, qos=1, retain=True)

    def flush(self, timeout: float) -> bool:
        """Wait (bounded) until the broker has acknowledged every stored event."""
        deadline = time.monotonic() + timeout
        while len(self.outbox):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Publish 'offline', let in-flight messages finish (bounded), disconnect."""
        if self.connected.is_set():
            info = self.client.publish(self.topic("availability"), "offline", qos=1, retain=True)
            info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
