"""What the broker says it dropped (`mqtt.broker_drops`, on by default since 2026-12-07).

A broker keeps a bounded queue for each client (mosquitto: `max_queued_messages`, 1000 by
default, beyond the messages in flight). What comes for a station beyond it is dropped, and no
one is told: not the sender (its PUBLISH was acknowledged), not the station (it never sees the
message). A PLC that sends trigger/sets faster than the station takes them, or a backlog held
while the station was away, loses parts so, unanswered. Found by a probe on 2026-12-07: 3,000
named trigger/sets sent at once to a running station; 1,569 parts were answered, and nothing
ever said that 1,431 were not.

The station cannot know which messages were dropped, or for whom, but mosquitto counts them,
broker-wide, on DROPPED_TOPIC (every `sys_interval`, 10 s by default). The station watches it:
a rise is said (WARNING, at most every SAY_EVERY_S with what came since) and counted in
`status.mqtt.broker_dropped`; a count already above zero at the first sight is said once (it
may hold what was sent to the station while it was stopped; the broker's retained count may be up
to a `sys_interval` old then, so such drops may also come as the first rise). A count that falls
is a broker restarted (counted again from zero). A broker that does not publish the count (another broker,
an ACL that forbids `$SYS`) leaves it unknown: `status.mqtt.broker_dropped_seen` stays false.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
SAY_EVERY_S = 60.0
HINT = ("a client's queue at the broker was full (mosquitto: max_queued_messages, 1000 by default, per client): "
        "commands sent to this station may be among them, unanswered; raise the broker's limit, or slow the "
        "sender (the count is the broker's, for all its clients)")


class BrokerDrops:
    """The broker's count of dropped messages, watched. `counters` is the publisher's counter dict
    ("broker_dropped": the rises seen by this process; "broker_dropped_seen": whether a count came)."""

    def __init__(self, counters: dict, enabled: bool = True) -> None:
        self.counters, self.enabled = counters, enabled
        counters.setdefault("broker_dropped", 0)
        counters.setdefault("broker_dropped_seen", False)
        self.total: int | None = None  # the broker's count when last seen
        self._mid: int | None = None   # the subscription's message id, awaiting its SUBACK
        self._said_at = float("-inf")  # monotonic time of the last warning
        self._unsaid = 0               # rises not said yet (within SAY_EVERY_S of the last warning)
        self._lock = threading.Lock()  # (counts come on paho's thread, the pump says what waits)

    def subscribe(self, client) -> None:
        """Subscribe to the count (QoS 0: the next one replaces a lost one), on every connection."""
        if self.enabled:
            rc, mid = client.subscribe(DROPPED_TOPIC, qos=0)
            self._mid = mid if rc == 0 else None

    def subacked(self, mid: int, reason_codes) -> bool:
        """Whether `mid` was this subscription's SUBACK (a refusal is noted: nothing to watch)."""
        if mid != self._mid or self._mid is None:
            return False
        self._mid = None
        if any(getattr(rc, "is_failure", False) for rc in reason_codes):
            log.info("the broker refused this station its count of dropped messages (%s): messages it drops are "
                     "not seen", DROPPED_TOPIC)
        return True

    def message(self, payload: bytes) -> None:
        """A count from the broker (on paho's thread). Anything but a whole number is ignored."""
        text = bytes(payload[:32]).strip()
        if not text.isdigit() or len(payload) > 32:
            return
        n = int(text)
        with self._lock:
            self.counters["broker_dropped_seen"] = True
            last, self.total = self.total, n
            if last is not None:
                rise = n - last if n >= last else n  # (fallen: the broker restarted, its count from 0)
                self.counters["broker_dropped"] += rise
                self._unsaid += rise
        if last is None and n:
            log.warning("the broker has dropped %d messages since it started (%s): %s", n, DROPPED_TOPIC, HINT)
        self.say()

    def say(self, now: float | None = None) -> None:
        """Say the rises not said yet, unless one was said within SAY_EVERY_S (then later: the pump calls
        this at each turn, as mosquitto publishes the count only when it changes)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._unsaid or now - self._said_at < SAY_EVERY_S:
                return
            unsaid, self._said_at, self._unsaid = self._unsaid, now, 0
        log.warning("the broker dropped %d more messages (%d counted by this run): %s", unsaid,
                    self.counters["broker_dropped"], HINT)
