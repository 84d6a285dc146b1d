"""MQTT publishing per DESIGN.md: availability (retained, Last Will 'offline'), events
(QoS 1, through the durable outbox), verdict (OK/NG), status, and commands on
`<base>/<feature>/set` with their state echoed on `<base>/<feature>/state`. paho-mqtt 2.

Delivery (README "The delivery contract"; pump.py sends, link.py for failures and held-back
events, refusals.py for what the broker refuses):
- One pump thread sends events from the outbox in order, only while connected, at most
  WINDOW unacknowledged at a time. An event leaves the outbox only on the broker's PUBACK.
- On every connect paho's own queue is dropped and the pump starts again at the oldest
  unacknowledged event: each event id goes out at most once per connection (one the broker
  refused for now goes again after 60 s: refusals.py), and nothing queues in memory during an outage.
- The protocol: "auto" (the default) speaks MQTT 5, whose PUBACK says when the broker refuses
  an event, and falls back to 3.1.1 where the broker refuses 5. A 3.1.1 broker acknowledges
  and drops what its ACL forbids, so a 3.1.1 link reads its own events back and says when
  acknowledged ones do not come (refusals.DeliveryCheck).
- `verdict` is live: sent right after its event, never queued, never replayed (verdict.py).
- Commands are routed to their handler, or refused (commands.py); the broker keeps the session, and
  what it held while the station was away is told from new commands. `commands_ready` is set once the
  broker has granted every command subscription of this connection (one it refuses, its ACL: logged as
  an error, counted). What the broker drops beyond a client's queue is said (broker_drops.py).
- Why the link is down (refused, unreachable, TLS, authorisation, ...) is in `link`, said once per change.
"""
from __future__ import annotations

import json
import logging
import threading
import time

from agent.mqtt import link
from agent.mqtt.broker_drops import DROPPED_TOPIC, BrokerDrops
from agent.mqtt.commands import Commands, Handler
from agent.mqtt.link import ReportingClient, describe_connect_error
from agent.mqtt.outbox import Outbox
from agent.mqtt.protocol import AutoProtocol
from agent.mqtt.pump import EventPump
from agent.mqtt.refusals import DeliveryCheck, Refusals
from agent.mqtt.seqrecord import SeqRecord
from agent.mqtt.start_refused import TOPIC as START_REFUSED
from agent.mqtt.tls import TlsFiles, alert_of
from agent.mqtt.verdict import LiveVerdicts
from agent.settings import MqttSettings

log = logging.getLogger(__name__)

# MQTT 5 PUBACK reasons that no resend can change: packet too large, payload format invalid,
# topic name invalid
PERMANENT_REJECTIONS = {0x95, 0x99, 0x90}
MAX_EVENT_BACK = 1 << 20  # bytes: an event read back larger than this is someone else's
UNSUPPORTED_PROTOCOL = 0x84  # CONNACK: an MQTT 3.1.1 broker's answer to an MQTT 5 CONNECT (paho's reading)


class Publisher(EventPump, AutoProtocol, SeqRecord):
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
                         "events_sent": 0, "events_rejected": 0, "events_held": 0, "subscriptions_refused": 0,
                         "events_unconfirmed": 0, "messages_refused": 0}
        self.commands = Commands(self.base, commands, self.counters)
        self.commands_ready = self.commands.ready  # every command subscription granted, this connection
        self.drops = BrokerDrops(self.counters, s.broker_drops)  # what the broker says it dropped
        self._init_record()  # the broker's record of this station's sequence numbers (seqrecord.py)
        self.verdicts = LiveVerdicts(s.verdict_max_age_s, self.counters)
        self.link = {"state": "connecting", "reason": f"connecting to {s.host}:{s.port}", "since": time.time()}
        # message id -> (event id or None, time handed to paho). Never call paho while holding
        # _lock: paho calls on_publish under its own locks, so the opposite order would deadlock.
        self._inflight: dict[int, tuple[str | None, float]] = {}
        self._sending = 0                  # publish() calls in progress; their events: thread -> (time, event id)
        self._handing: dict[int, tuple[float, str]] = {}  # (the broker may hang up on one before publish() returns)
        self._early: dict[int, object] = {}  # PUBACKs (their reason codes) that arrived during a publish() call
        self._topics: dict[int, str] = {}    # message id -> topic, for what is in flight and is not an event
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
        self.client_id = client_id or f"adgan-{station_id}"
        self._states: dict[str, str] = {}  # feature -> last state echoed (again on every connect)
        # "auto" speaks MQTT 5 and falls back to 3.1.1 where the broker refuses 5 (_on_connect)
        self.protocol = "3.1.1" if s.protocol == "3.1.1" else "5"
        self._switch_to: str | None = None  # protocol "auto": the pump reconnects with this version,
        self._switch_at, self._switch_wait = 0.0, 0.0  # ... at this time (backoff once both versions hang up)
        self._hung: set[str] = set()        # "auto": versions the broker hung up on before accepting
        self._accepted = False              # a connection was accepted: "auto" keeps its version
        self._unanswered_since: float | None = None  # "auto": a CONNECT on an open socket, not answered
        self.delivery = DeliveryCheck() if s.check_delivery else None
        self._loopback_mid: int | None = None  # the subscription to this station's own events (3.1.1)
        self._loopback_refused = False         # ... refused on this connection: nothing can be checked
        self._loopback_refusal_said = False
        self.refusals = Refusals()          # events refused for now (MQTT 5): sent again
        self.tls = bool(s.tls_ca)
        self._closed = link.ClosedHint(s.host, s.port)  # why a plain port closes before accepting
        self.tls_files = TlsFiles(s.tls_ca, s.tls_cert, s.tls_key) if s.tls_ca else None
        self.client = self._make_client()

    def _make_client(self) -> ReportingClient:
        client = link.make_client(self.settings, self.client_id, self.protocol, self.topic("availability"),
                                  self.tls_files, keep_session=True)
        client.on_connect = link.guarded(self._on_connect)
        client.on_connect_fail = link.guarded(self._on_connect_fail)
        client.on_disconnect = link.guarded(self._on_disconnect)
        client.on_publish = link.guarded(self._on_publish)
        client.on_message = link.guarded(self._on_message)
        client.on_subscribe = link.guarded(self._on_subscribe)
        client.before_write = self.commands.before_write
        return client

    @property
    def _checking(self) -> bool:
        """Whether acknowledged events are checked for coming back (3.1.1 links: DeliveryCheck)."""
        return self.delivery is not None and self.protocol == "3.1.1" and not self._loopback_refused

    def topic(self, name: str) -> str:
        return f"{self.base}/{name}"

    # -- link state ----------------------------------------------------------------------
    def _set_link(self, state: str, reason: str, level: int = logging.WARNING) -> None:
        """A new state or reason is said; one that differs only in the clock reading it quotes
        (a certificate's dates, at each attempt) replaces the reason quietly."""
        if (state, link.unclocked(reason)) != (self.link["state"], link.unclocked(self.link["reason"])):
            self.link = {"state": state, "reason": reason, "since": time.time()}
            log.log(level, "MQTT %s: %s", state, reason)
        elif reason != self.link["reason"]:
            self.link = {**self.link, "reason": reason}

    # -- paho callbacks (network thread) --------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = True
        if reason_code.is_failure:
            name = str(reason_code)
            if getattr(reason_code, "value", None) == UNSUPPORTED_PROTOCOL and self._auto_switch("3.1.1"):
                self._set_link("refused", f"{self.host}:{self.port} does not speak MQTT 5 ({name}); trying "
                                          "MQTT 3.1.1", logging.WARNING)
                return
            auth = any(w in name.lower() for w in ("authori", "user name", "password", "banned"))
            self._set_link("auth" if auth else "refused",
                           f"{self.host}:{self.port} refused the connection: {name}{link.refusal_hint(name)}",
                           logging.ERROR)
            return
        # paho would resend what it still holds from the last connection; the outbox is the
        # one source of truth, so drop paho's copy (stale verdicts included) and let the pump
        # resend from the oldest unacknowledged event.
        client.drop_out_messages()
        if not self._accepted and self.settings.protocol == "auto" and self.protocol == "3.1.1":
            log.warning("MQTT: %s:%d takes MQTT 3.1.1, not 5. Under 3.1.1 a broker does not say when it refuses an "
                        "event (its ACL, its message size limit): it acknowledges it and drops it. %s", self.host,
                        self.port, "Acknowledged events are checked for coming back to this station "
                        "(mqtt.check_delivery)" if self._checking else
                        "mqtt.check_delivery is off: such events would be lost unseen")
        self._accepted = True
        self._max_packet = getattr(properties, "MaximumPacketSize", None)  # MQTT 5 brokers say it
        with self._lock:
            self._inflight.clear()
            self._early.clear()
            self._topics.clear()
            self._conn_no += 1
            self._cursor = 0
        self.refusals.clear()
        self.counters["connects"] += 1
        self._connected_at = time.monotonic()
        self._subscribe_record(client)  # before anything is published on this connection
        self.connected.set()
        self._publish(self.topic("availability"), "online", qos=1, retain=True)
        if self.counters["connects"] == 1:  # a refused start's reason is old now (an ACL without it: not said)
            self._publish(self.topic(START_REFUSED), b"", qos=1, retain=True)
        for feature, value in list(self._states.items()):
            self._publish(self.topic(f"{feature}/state"), value, qos=1, retain=True)
        self.commands.subscribe(client, flags.session_present, self._publish)  # (held commands: commands.py)
        self.drops.subscribe(client)
        self._loopback_refused = False
        if self._checking:  # 3.1.1: the events the broker acknowledges must come back (refusals.py)
            self._loopback_mid = client.subscribe(self.topic("events"), qos=1)[1]
        if not self._flaps.flapping:  # (while it flaps, the link says so until a connection holds)
            self._set_link("connected", f"connected to {self.host}:{self.port}" + (" (TLS)" if self.tls else ""),
                           logging.INFO)
        pending = len(self.outbox)
        if pending:
            log.log(logging.DEBUG if self._flaps.flapping else logging.INFO,
                    "%d unacknowledged events in the outbox are sent, oldest first", pending)
        self._wake.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if self._record_subacked(mid, reason_codes) or self.drops.subacked(mid, reason_codes):
            return
        if mid != self._loopback_mid or self._loopback_mid is None:
            self.commands.subscribed(mid, reason_codes)
        elif any(getattr(rc, "is_failure", False) for rc in reason_codes):
            # A broker whose ACL lets the station write its events but not read them (EMQX and
            # HiveMQ say so; mosquitto 2.0 grants it and delivers nothing): no check, no false alarm
            self._loopback_refused = True
            self.delivery.dropped()
            if not self._loopback_refusal_said:
                self._loopback_refusal_said = True
                log.warning("the broker refused this station reading its own events (%s): acknowledged events "
                            "cannot be checked for delivery on this MQTT 3.1.1 link", self.topic("events"))

    def _on_connect_fail(self, client, userdata) -> None:
        e = getattr(client, "last_connect_error", None)
        if e is None:
            self._set_link("error", f"connecting to {self.host}:{self.port} failed")
        else:
            self._set_link(*describe_connect_error(e, self.host, self.port, self.tls_files))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.commands_ready.clear()
        self._record_dropped()
        if was_connected:
            self.counters["disconnects"] += 1
            self._strike_poison()
        if self.delivery is not None:
            self.delivery.dropped()
        if self._stopping.is_set():
            return
        taken = getattr(reason_code, "value", None) == link.SESSION_TAKEN_OVER
        if was_connected and (self._flaps.dropped(time.monotonic() - self._connected_at, taken,
                                                  self._holdback.repeated) or self._flaps.flapping):
            self._set_link("taken_over", self._flaps.reason(f"{self.host}:{self.port}", self.client_id, taken),
                           logging.ERROR if self.link["state"] != "taken_over" else logging.DEBUG)
        elif not self._connack:
            # A 3.1.1 broker may hang up on an MQTT 5 CONNECT without a CONNACK (amqtt does): "auto"
            # tries the other version at each such hang-up until one is accepted. Once both have
            # been hung up on, the version is not the matter (a TLS port, a proxy without a broker
            # behind it): said once, and both are tried in turn with backoff, not twice a second.
            other = "3.1.1" if self.protocol == "5" else "5"
            refused = self.tls_files.hint(alert_of(client.last_socket_error)) if self.tls_files else ""
            if refused:  # a TLS 1.3 broker refuses a client certificate after the handshake
                self._set_link("tls", f"{self.host}:{self.port}: {refused}", logging.ERROR)
                self._connack = False
                return
            hint = "" if self.tls else self._closed.hint()
            self._hung.add(self.protocol)
            if self._hung >= {"5", "3.1.1"} and self._auto_switch(other, backoff=True):
                self._set_link("closed", f"{self.host}:{self.port} closes the connection before accepting it, "
                                         f"with MQTT 5 and 3.1.1 alike{hint}; both are tried in turn, with backoff")
            else:
                self._set_link("closed", f"{self.host}:{self.port} closed the connection before accepting it "
                                         f"({reason_code}){hint}" +
                                         (f"; trying MQTT {other}" if self._auto_switch(other) else ""))
        elif was_connected:
            self._set_link("disconnected", f"lost the connection to {self.host}:{self.port} ({reason_code}); "
                                           "reconnecting with backoff")
        self._connack = False

    def _strike_poison(self) -> None:
        now = time.monotonic()
        with self._lock:
            unacked = [(t, e) for e, t in self._inflight.values() if e is not None] + list(self._handing.values())
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
            topic = self._topics.pop(mid, None)
            if entry is None and self._sending:
                self._early[mid] = reason_code  # acknowledged before publish() returned its id
        if entry is not None:
            self._answered(entry[0], topic, reason_code)
        with self._lock:
            self._inflight.pop(mid, None)

    def _answered(self, event_id: str | None, topic: str | None, reason_code) -> None:
        """The broker's PUBACK (or PUBCOMP) of an event (`event_id`) or another message (`topic`)."""
        if getattr(reason_code, "is_failure", False):  # MQTT 5: the broker took it but refuses it
            if event_id is not None:
                self._rejected(event_id, str(reason_code), getattr(reason_code, "value", 0) in PERMANENT_REJECTIONS)
            elif topic == self.topic(START_REFUSED):
                log.debug("the broker refused clearing %s: %s", topic, reason_code)
            else:
                self.counters["messages_refused"] += 1
                if not self.commands.fence_refused(topic or "", str(reason_code)):  # (a fence: said there)
                    self.refusals.other(topic or "?", str(reason_code), self.counters["messages_refused"])
        elif event_id is not None:
            self._acked(event_id)
            self._wake.set()

    def _rejected(self, event_id: str, reason: str, permanent: bool) -> None:
        """An event the broker refuses (MQTT 5). One that can never be accepted (too large,
        malformed) leaves the outbox, said and counted; any other stays (refusals.py)."""
        self.counters["events_rejected"] += 1
        self.refusals.refused(event_id, reason, permanent, self.counters["events_rejected"])
        if permanent:
            self.outbox.ack(event_id)

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == self.topic("events"):
            self._delivered(msg.payload)
        elif msg.topic == self.topic("status"):
            self._record_message(msg.payload, msg.retain)
        elif msg.topic == DROPPED_TOPIC:
            self.drops.message(msg.payload)
        else:
            self.commands.handle(msg.topic, msg.payload, msg.retain, msg.mid, msg.dup, msg.qos)

    def _delivered(self, payload: bytes) -> None:
        """An event delivered back to this station (3.1.1 links: refusals.DeliveryCheck)."""
        # (a huge or malformed payload is not ours: someone else publishes there; not parsed, or
        # not an error, on paho's network thread)
        if not self._checking or len(payload) > MAX_EVENT_BACK:
            return
        try:
            event_id = json.loads(payload)["event_id"]
        except (ValueError, TypeError, KeyError, RecursionError):
            return
        if isinstance(event_id, str) and self.delivery.seen(event_id):
            self.delivery.say_resumed()

    def _check_delivery(self) -> None:
        """Acknowledged events that did not come back within refusals.CONFIRM_S are counted and said."""
        if not self._checking or not self.connected.is_set():
            return
        late, say = self.delivery.overdue(time.monotonic())
        self.counters["events_unconfirmed"] = self.delivery.unconfirmed
        if say:
            self.delivery.say_overdue(late, self.topic("events"), self.client_id)

    # -- API -------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; paho reconnects by itself after an outage."""
        self._start_record()
        self._pump_thread = threading.Thread(target=self._pump, name="mqtt-pump", daemon=True)
        self._pump_thread.start()
        self._connect()

    def _connect(self) -> None:
        kept = {"clean_start": False, "properties": link.session_properties()} if self.protocol == "5" else {}
        self.client.connect_async(self.host, self.port, self.keepalive, **kept)  # (the session is kept: link.py)
        self.client.loop_start()

    def publish_event(self, event: dict, decided: float | None = None, answers: int = 0) -> None:
        """Store the event durably (or hold it in memory while the disk fails), then let the
        pump publish it; it leaves the outbox on the broker's acknowledgement. `decided`: the
        monotonic time of its decision, from which its verdict's age counts (default now); `answers`:
        the number of the request it answers (agent/request_journal.py)."""
        payload = json.dumps(event, separators=(",", ":")).encode()
        self.verdicts.decided(event, decided)
        self.outbox.put(event["event_id"], self.topic("events"), payload, self.qos, answers)
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
        self.commands.close()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout)
