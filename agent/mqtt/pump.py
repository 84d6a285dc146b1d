"""The publisher's sending side (a mixin of `Publisher`, publisher.py): one pump thread hands
events from the outbox to paho in order, at most WINDOW unacknowledged at a time, and each
event's PUBACK, matched by message id, lets it leave the outbox. Held-back and refused events
go again from here (link.HoldBack, refusals.Refusals), and the live verdict follows its event.
"""
from __future__ import annotations

import logging
import threading
import time

import paho.mqtt.client as mqtt

from agent.mqtt import link
from agent.mqtt.outbox import Outbox

log = logging.getLogger(__name__)

WINDOW = 100  # events handed to paho and not yet acknowledged, at most


class EventPump:
    """Methods of `Publisher` (publisher.py), kept here so that each file reads whole."""

    def _publish(self, topic: str, payload, qos: int, retain: bool = False, event_id: str | None = None) -> bool:
        """Hand one message to paho; True if paho took it. Registers its message id so the
        PUBACK can be matched, even when it arrives before publish() returns."""
        me = threading.get_ident()
        with self._lock:
            self._sending += 1
            if event_id is not None:  # paho's thread may see the broker hang up on it before publish() returns
                self._handing[me] = (time.monotonic(), event_id)
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
        except BaseException:
            with self._lock:
                self._sending -= 1
                self._handing.pop(me, None)
                if not self._sending:
                    self._early.clear()
            raise
        ok, early = info.rc == mqtt.MQTT_ERR_SUCCESS, None
        with self._lock:
            self._sending -= 1
            self._handing.pop(me, None)
            if ok and (qos > 0 or event_id is not None):
                if info.mid in self._early:
                    early = self._early.pop(info.mid)  # (its reason code: a refusal may come this early too)
                else:
                    self._inflight[info.mid] = (event_id, time.monotonic())
                    if event_id is None:
                        self._topics[info.mid] = topic
            if not self._sending:
                self._early.clear()  # ids of messages nobody waits for (status, state)
        if early is not None:
            self._answered(event_id, topic, early)
        return ok

    def _acked(self, event_id: str) -> None:
        """The broker acknowledged an event: it leaves the outbox (and, on 3.1.1, must come back)."""
        self.outbox.ack(event_id)
        if self._checking and self.delivery.acked(event_id, time.monotonic()):
            self.delivery.say_resumed()

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
        if self.tls_files is not None:
            self.tls_files.check_expiry()  # the client certificate's end date, said ahead
        self._check_unanswered()
        self._record_waited()
        if self._switch_to is not None and time.monotonic() >= self._switch_at:
            self._switch_protocol()
        self._check_delivery()
        self.drops.say()  # (what the broker dropped, not said yet: broker_drops.py)
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
        if self.refusals.due():
            with self._lock:
                self._cursor = 0

    def _maybe_verdict(self, event_id: str) -> None:
        verdict = self.verdicts.take(event_id, self._link_stalled)
        if verdict is not None:
            self._publish(self.topic("verdict"), verdict, qos=1, retain=True)
