"""MQTT publishing per DESIGN.md: availability (retained, Last Will 'offline'), events
(QoS 1, through the durable outbox), verdict (OK/NG), status, and commands on
`<base>/<feature>/set` with their state echoed on `<base>/<feature>/state`. paho-mqtt 2.

Delivery (README "The delivery contract"; link.py for failures and held-back events):
- One pump thread sends events from the outbox in order, only while connected, at most
  WINDOW unacknowledged at a time. An event leaves the outbox only on the broker's PUBACK.
- On every connect paho's own queue is dropped and the pump starts again at the oldest
  unacknowledged event: each event id goes out at most once per connection, and nothing
  queues in memory during an outage.
- `verdict` is live: sent right after its event, never queued, never replayed (verdict.py).
- Commands are routed to their handler, or refused (commands.py). `commands_ready` is set once
  the broker has granted every command subscription of this connection; a subscription it
  refuses (its ACL) is logged as an error and counted, since no command on it would arrive.
- Why the link is down (refused, unreachable, TLS, authorisation, ...) is in `link` and logged
  once per change.
"""
from __future__ import annotations

import json
import logging
import ssl
import threading
import time

import paho.mqtt.client as mqtt

from agent.mqtt import link
from agent.mqtt.commands import Commands, Handler
from agent.mqtt.link import ReportingClient, describe_connect_error
from agent.mqtt.outbox import Outbox
from agent.mqtt.verdict import LiveVerdicts
from agent.settings import MqttSettings

log = logging.getLogger(__name__)

WINDOW = 100  # events handed to paho and not yet acknowledged, at most
# MQTT 5 PUBACK reasons that no resend can change: packet too large, payload format invalid,
# topic name invalid
PERMANENT_REJECTIONS = {0x95, 0x99, 0x90}


class Publisher:
    """The station's MQTT link. `settings` is the agent's `[mqtt]` table; `commands` maps a
    feature to the handler of the payload of <base>/<feature>/set (called on paho's thread)."""

    def __init__(self, station_id: str, outbox: Outbox, settings: MqttSettings | None = None,
                 commands: dict[str, Handler] | None = None, client_id: str | None = None) -> None:
        s = self.settings = settings or MqttSettings()
        self.base = f"{s.topic_prefix}/{station_id}"
        self.outbox, self.qos, self.verdict_max_age_s = outbox, s.qos, s.verdict_max_age_s
        self.host, self.port, self.keepalive = s.host, s.port, s.keepalive_s
        self.connected = threading.Event()
        self.counters = {"connects": 0, "disconnects": 0, "commands_refused": 0, "verdicts_skipped": 0,
                         "events_sent": 0, "events_rejected": 0, "events_held": 0, "subscriptions_refused": 0}
        self.commands = Commands(self.base, commands, self.counters)
        self.commands_ready = self.commands.ready  # every command subscription granted, this connection
        self.verdicts = LiveVerdicts(s.verdict_max_age_s, self.counters)
        self.link = {"state": "connecting", "reason": f"connecting to {s.host}:{s.port}", "since": time.time()}
        # message id -> (event id or None, time handed to paho). Never call paho while holding
        # _lock: paho calls on_publish under its own locks, so the opposite order would deadlock.
        self._inflight: dict[int, tuple[str | None, float]] = {}
        self._sending = 0                  # publish() calls in progress
        self._early: set[int] = set()      # PUBACKs that arrived during a publish() call
        self._lock = threading.Lock()
        self._conn_no = 0                  # connections so far; the pump restarts at each
        self._cursor = 0                   # outbox position of the last event sent on this connection
        self._outbox_gen = outbox.generation
        self._max_packet: int | None = None  # the broker's limit (MQTT 5 CONNACK), None if unknown
        self._holdback = link.HoldBack()     # events the broker hangs up on (link.py)
        self._connected_at = 0.0
        self._flaps = link.Flapping()        # another client taking this station's connection
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pump_thread: threading.Thread | None = None
        self._connack = False
        self._states: dict[str, str] = {}  # feature -> last state echoed (again on every connect)
        self.protocol = s.protocol
        cid = self.client_id = client_id or f"adgan-{station_id}"
        if s.protocol == "5":  # a clean start, like 3.1.1's clean session: commands are not kept offline
            self.client = ReportingClient(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        else:
            self.client = ReportingClient(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=True,
                                          protocol=mqtt.MQTTv311)
        self.client.will_set(self.topic("availability"), "offline", qos=1, retain=True)
        if s.username:
            self.client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        if s.tls_ca:
            self.client.tls_set(ca_certs=str(s.tls_ca), certfile=str(s.tls_cert) if s.tls_cert else None,
                                keyfile=str(s.tls_key) if s.tls_key else None, cert_reqs=ssl.CERT_REQUIRED,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.tls = bool(s.tls_ca)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def topic(self, name: str) -> str:
        return f"{self.base}/{name}"

    # -- link state ----------------------------------------------------------------------
    def _set_link(self, state: str, reason: str, level: int = logging.WARNING) -> None:
        if (state, reason) != (self.link["state"], self.link["reason"]):
            self.link = {"state": state, "reason": reason, "since": time.time()}
            log.log(level, "MQTT %s: %s", state, reason)

    # -- paho callbacks (network thread) --------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = True
        if reason_code.is_failure:
            name = str(reason_code)
            auth = any(w in name.lower() for w in ("authori", "user name", "password", "banned"))
            self._set_link("auth" if auth else "refused",
                           f"{self.host}:{self.port} refused the connection: {name}", logging.ERROR)
            return
        # paho would resend what it still holds from the last connection; the outbox is the
        # one source of truth, so drop paho's copy (stale verdicts included) and let the pump
        # resend from the oldest unacknowledged event.
        client.drop_out_messages()
        self._max_packet = getattr(properties, "MaximumPacketSize", None)  # MQTT 5 brokers say it
        with self._lock:
            self._inflight.clear()
            self._early.clear()
            self._conn_no += 1
            self._cursor = 0
        self.counters["connects"] += 1
        self._connected_at = time.monotonic()
        self.connected.set()
        self._publish(self.topic("availability"), "online", qos=1, retain=True)
        for feature, value in list(self._states.items()):
            self._publish(self.topic(f"{feature}/state"), value, qos=1, retain=True)
        self.commands.subscribe(client)
        if not self._flaps.flapping:  # (while it flaps, the link says so until a connection holds)
            self._set_link("connected", f"connected to {self.host}:{self.port}" + (" (TLS)" if self.tls else ""),
                           logging.INFO)
        pending = len(self.outbox)
        if pending:
            log.log(logging.DEBUG if self._flaps.flapping else logging.INFO,
                    "%d unacknowledged events are sent again, oldest first", pending)
        self._wake.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.commands.subscribed(mid, reason_codes)

    def _on_connect_fail(self, client, userdata) -> None:
        e = getattr(client, "last_connect_error", None)
        if e is None:
            self._set_link("error", f"connecting to {self.host}:{self.port} failed")
        else:
            self._set_link(*describe_connect_error(e, self.host, self.port))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.commands_ready.clear()
        if was_connected:
            self.counters["disconnects"] += 1
            self._strike_poison()
        if self._stopping.is_set():
            return
        taken = getattr(reason_code, "value", None) == link.SESSION_TAKEN_OVER
        if was_connected and (self._flaps.dropped(time.monotonic() - self._connected_at, taken,
                                                  self._holdback.repeated) or self._flaps.flapping):
            self._set_link("taken_over", self._flaps.reason(f"{self.host}:{self.port}", self.client_id, taken),
                           logging.ERROR if self.link["state"] != "taken_over" else logging.DEBUG)
        elif not self._connack:
            hint = "" if self.tls else "; is it a TLS port? (set mqtt.tls_ca)"
            self._set_link("closed", f"{self.host}:{self.port} closed the connection before accepting it "
                                     f"({reason_code}){hint}")
        elif was_connected:
            self._set_link("disconnected", f"lost the connection to {self.host}:{self.port} ({reason_code}); "
                                           "reconnecting with backoff")
        self._connack = False

    def _strike_poison(self) -> None:
        now = time.monotonic()
        with self._lock:
            unacked = [(t, e) for e, t in self._inflight.values() if e is not None]
        held = self._holdback.dropped(unacked, now)
        if held is not None:
            self.counters["events_held"] += 1
            log.error("event %s: the broker hung up right after it %d times in a row; it is held back (kept in the "
                      "outbox) and tried again after %.0f s of a stable link. Is it larger than the broker's "
                      "message size limit?", held, link.POISON_STRIKES, link.HOLD_RELEASE_S)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # The entry leaves _inflight only after the outbox has the ack: a pump that went back to
        # the oldest event (outbox reopened, held event released) must never see an acknowledged
        # event neither in flight nor gone from the outbox, or it would send it again.
        with self._lock:
            entry = self._inflight.get(mid)
            if entry is None and self._sending:
                self._early.add(mid)  # acknowledged before publish() returned its id
        if entry is not None and entry[0] is not None:
            if getattr(reason_code, "is_failure", False):  # MQTT 5: the broker took it but refuses it
                self._rejected(entry[0], str(reason_code),
                               getattr(reason_code, "value", 0) in PERMANENT_REJECTIONS)
            else:
                self.outbox.ack(entry[0])
                self._wake.set()
        with self._lock:
            self._inflight.pop(mid, None)

    def _rejected(self, event_id: str, reason: str, permanent: bool) -> None:
        """An event the broker refuses (MQTT 5). One that can never be accepted (too large,
        malformed) leaves the outbox, said and counted; any other (not authorised, quota)
        stays and is sent again on the next connection."""
        self.counters["events_rejected"] += 1
        log.error("the broker refused event %s: %s (%d refused so far); %s", event_id, reason,
                  self.counters["events_rejected"],
                  "it is dropped: it can never be accepted" if permanent else
                  "it stays in the outbox and is sent again on the next connection")
        if permanent:
            self.outbox.ack(event_id)

    def _on_message(self, client, userdata, msg) -> None:
        self.commands.handle(msg.topic, msg.payload, msg.retain)

    # -- sending -------------------------------------------------------------------------
    def _publish(self, topic: str, payload, qos: int, retain: bool = False, event_id: str | None = None) -> bool:
        """Hand one message to paho; True if paho took it. Registers its message id so the
        PUBACK can be matched, even when it arrives before publish() returns."""
        with self._lock:
            self._sending += 1
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
        except BaseException:
            with self._lock:
                self._sending -= 1
                if not self._sending:
                    self._early.clear()
            raise
        ok, acked_early = info.rc == mqtt.MQTT_ERR_SUCCESS, False
        with self._lock:
            self._sending -= 1
            if ok and (qos > 0 or event_id is not None):
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    acked_early = True
                else:
                    self._inflight[info.mid] = (event_id, time.monotonic())
            if not self._sending:
                self._early.clear()  # ids of messages nobody waits for (status, state)
        if acked_early and event_id is not None:
            self.outbox.ack(event_id)
        return ok

    def _link_stalled(self) -> bool:
        """True when something handed to paho has waited longer than verdict_max_age_s for its
        acknowledgement: the broker may be frozen, and a verdict would arrive late."""
        now = time.monotonic()
        with self._lock:
            return any(now - t > self.verdict_max_age_s for _, t in self._inflight.values())

    def _pump(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(Outbox.RETRY_S)
            self._wake.clear()
            try:
                self._pump_once()
            except Exception:  # the pump must survive anything; the outbox keeps the events
                log.exception("MQTT event pump failed; retrying")
                self._stopping.wait(1.0)

    def _pump_once(self) -> None:
        self.outbox.check()  # a database file deleted while open (outbox.py)
        if self.outbox.needs_sync:
            self.outbox.sync()
        self.verdicts.expire()
        self._stable_link()
        gen = self.outbox.generation
        if gen != self._outbox_gen:  # the database opened late: older stored events to send too
            with self._lock:
                self._outbox_gen, self._cursor = gen, 0
        while self.connected.is_set() and not self._stopping.is_set():
            with self._lock:
                conn, cursor, room = self._conn_no, self._cursor, WINDOW - len(self._inflight)
                sent = {e for e, _ in self._inflight.values() if e is not None}
            if room <= 0:
                return
            batch = self.outbox.pending(after=cursor, limit=room)
            if not batch:
                return
            for p in batch:
                with self._lock:
                    if conn != self._conn_no:
                        return  # reconnected meanwhile: start again at the oldest
                size = len(p.payload) + len(p.topic) + 16  # fixed header, topic length, id, properties
                if self._max_packet and size > self._max_packet and p.event_id not in sent:
                    # sending it would make the broker hang up, again at every reconnect
                    self._rejected(p.event_id, f"{size} bytes, more than the broker's maximum packet size "
                                               f"{self._max_packet}", True)
                elif p.event_id in self._holdback.held:
                    pass  # held back: the broker hung up on it repeatedly
                elif p.event_id not in sent:  # (sent: on this connection, before the outbox reopened)
                    if not self._publish(p.topic, p.payload, p.qos, event_id=p.event_id):
                        return  # not connected any more: the next connection sends it
                    self.counters["events_sent"] += 1
                    self._maybe_verdict(p.event_id)
                with self._lock:
                    if conn == self._conn_no:
                        self._cursor = max(self._cursor, p.seq)

    def _stable_link(self) -> None:
        """On a link that has held: a flapping link is said to be stable again, and held-back
        events get one more try (back to the oldest event)."""
        if not self.connected.is_set():
            return
        up_s = time.monotonic() - self._connected_at
        if self._flaps.held(up_s):
            self._set_link("connected", f"connected to {self.host}:{self.port}; the connection has held "
                                        f"{link.FLAP_LIVED_S:.0f} s again", logging.INFO)
        n = self._holdback.release(up_s)
        if n:
            log.warning("trying %d held-back event(s) again on a stable link", n)
            with self._lock:
                self._cursor = 0

    def _maybe_verdict(self, event_id: str) -> None:
        verdict = self.verdicts.take(event_id, self._link_stalled)
        if verdict is not None:
            self._publish(self.topic("verdict"), verdict, qos=1, retain=True)

    # -- API -------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; paho reconnects by itself after an outage."""
        self._pump_thread = threading.Thread(target=self._pump, name="mqtt-pump", daemon=True)
        self._pump_thread.start()
        if self.protocol == "5":
            self.client.connect_async(self.host, self.port, self.keepalive, clean_start=True)
        else:
            self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()

    def publish_event(self, event: dict) -> None:
        """Store the event durably (or hold it in memory while the disk fails), then let the
        pump publish it; it leaves the outbox on the broker's acknowledgement."""
        payload = json.dumps(event, separators=(",", ":")).encode()
        self.verdicts.decided(event)
        self.outbox.put(event["event_id"], self.topic("events"), payload, self.qos)
        self._wake.set()

    def publish_status(self, status: dict) -> None:
        """The heartbeat (QoS 0, retained); skipped while disconnected: the next one is newer."""
        if self.connected.is_set():
            self._publish(self.topic("status"), json.dumps(status), qos=0, retain=True)

    def publish_state(self, feature: str, value: str) -> None:
        """Echo a feature's state on <base>/<feature>/state (retained). While disconnected it is
        not queued: the last state of every feature is echoed again on each connect."""
        self._states[feature] = value
        if self.connected.is_set():
            self._publish(self.topic(f"{feature}/state"), value, qos=1, retain=True)

    def flush(self, timeout: float) -> bool:
        """Wait (bounded) until the broker has acknowledged every stored event."""
        deadline = time.monotonic() + timeout
        while len(self.outbox):
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Publish 'offline', let in-flight messages finish (bounded), disconnect."""
        if self.connected.is_set():
            info = self.client.publish(self.topic("availability"), "offline", qos=1, retain=True)
            info.wait_for_publish(timeout)
        self._stopping.set()
        self._wake.set()
        self.client.disconnect()
        self.client.loop_stop()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout)
