"""What the broker does not take: events it refuses (MQTT 5 PUBACK reason codes) and, under MQTT
3.1.1, events it acknowledges and never delivers.

- `Refusals`: an event refused for now (not authorised, quota) stays in the outbox and is sent
  again after link.HOLD_RELEASE_S on the same connection, so an ACL put right takes it without
  a reconnect. One that can never be accepted (too large, malformed) is the publisher's to drop.
  Said at most every REFUSAL_LOG_S: an ACL that refuses every event must not fill the journal.
  A refused message that is not an event (the verdict, availability, a state) is said per topic.
- `DeliveryCheck`: on MQTT 3.1.1 links the station reads its own events topic back.
"""
from __future__ import annotations

import logging
import threading
import time

from agent.mqtt import link

log = logging.getLogger(__name__)

REFUSAL_LOG_S = 10.0  # a broker's refusals of events are logged at most this often


class Refusals:
    """Events the broker refused on this connection, waiting to be sent again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._first_at = 0.0     # monotonic time of the first refusal waiting to be retried
        self._logged_until = 0.0
        self._other_logged: dict[str, float] = {}  # topic -> a refusal on it is said again from then

    def refused(self, event_id: str, reason: str, permanent: bool, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            say = now >= self._logged_until
            if say:
                self._logged_until = now + REFUSAL_LOG_S
            if not permanent:
                self._ids.add(event_id)
                self._first_at = self._first_at or now
        if say:
            log.error("the broker refused event %s: %s (%d refused so far; said at most every %.0f s); %s", event_id,
                      reason, total, REFUSAL_LOG_S, "it is dropped: it can never be accepted" if permanent else
                      f"it stays in the outbox and is sent again in {link.HOLD_RELEASE_S:.0f} s")

    def other(self, topic: str, reason: str, total: int) -> None:
        """The broker refused a message that is not an event (availability, verdict, a state): a
        PLC reading that topic sees nothing. Said at most every REFUSAL_LOG_S per topic."""
        now = time.monotonic()
        with self._lock:
            say = now >= self._other_logged.get(topic, 0.0)
            if say:
                self._other_logged[topic] = now + REFUSAL_LOG_S
        if say:
            log.error("the broker refused a message on %s: %s (%d refused so far; said at most every %.0f s per "
                      "topic): whoever reads that topic does not get it; is this client allowed to publish there "
                      "(the broker's ACL)?", topic, reason, total, REFUSAL_LOG_S)

    def due(self) -> int:
        """How many refused events are due to be sent again now (0: none); forgets them."""
        with self._lock:
            if not self._first_at or time.monotonic() - self._first_at < link.HOLD_RELEASE_S:
                return 0
            n, self._first_at = len(self._ids), 0.0
            self._ids.clear()
        log.warning("sending %d event(s) the broker refused again", n)
        return n

    def clear(self) -> None:
        """A new connection: the pump starts at the oldest event, so they go again anyway."""
        with self._lock:
            self._ids.clear()
            self._first_at = 0.0


CONFIRM_S, CONFIRM_LOG_S, CONFIRM_KEEP = 10.0, 60.0, 10_000


class DeliveryCheck:
    """Under MQTT 3.1.1 a broker acknowledges an event and drops it where its ACL forbids this
    client the topic (or the event is over its message size limit): nothing in the protocol
    says so, and the outbox lets the event go. So, on 3.1.1 links, the station subscribes to
    its own events topic, and an event acknowledged on a connection that then stayed up
    CONFIRM_S without the broker delivering it back is counted as unconfirmed, and said.
    (Under MQTT 5 the broker's PUBACK says a refusal, and the event stays in the outbox.)

    Ids are kept bounded (CONFIRM_KEEP each way). A copy may come back before the
    acknowledgement, so copies seen are remembered too. A drop of the connection forgets the
    acknowledgements waiting: the copy may have been lost with the subscriber's session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acked: dict[str, float] = {}   # event id -> monotonic time of its PUBACK (insertion order)
        self._seen: dict[str, None] = {}     # ids delivered back, not yet acknowledged (insertion order)
        self.unconfirmed = 0                 # total so far
        self.confirmed = 0
        self.failing = False                 # the last verdict: acknowledged events are not coming back
        self._logged_at = -1e18

    def acked(self, event_id: str, now: float) -> bool:
        """The broker acknowledged an event; True when its copy had come back already and that
        ends a failing spell (the caller says so)."""
        with self._lock:
            if event_id in self._seen:  # its copy came back first
                del self._seen[event_id]
                return self._confirmed()
            self._acked[event_id] = now
            while len(self._acked) > CONFIRM_KEEP:
                self._acked.pop(next(iter(self._acked)))
            return False

    def seen(self, event_id: str) -> bool:
        """A copy came back; True when it ends a failing spell (the caller says so)."""
        with self._lock:
            if self._acked.pop(event_id, None) is None:
                self._seen[event_id] = None
                while len(self._seen) > CONFIRM_KEEP:
                    self._seen.pop(next(iter(self._seen)))
                return False
            return self._confirmed()

    def _confirmed(self) -> bool:
        self.confirmed += 1
        ended, self.failing = self.failing, False
        return ended

    def dropped(self) -> None:
        """The connection dropped: what waits can no longer be confirmed."""
        with self._lock:
            self._acked.clear()
            self._seen.clear()

    def overdue(self, now: float) -> tuple[int, bool]:
        """(events newly counted as unconfirmed, whether to say it now: the first of a spell,
        then at most every CONFIRM_LOG_S)."""
        with self._lock:
            late = [e for e, t in self._acked.items() if now - t > CONFIRM_S]
            for e in late:
                del self._acked[e]
            if not late:
                return 0, False
            self.unconfirmed += len(late)
            say = not self.failing or now - self._logged_at >= CONFIRM_LOG_S
            self.failing = True
            if say:
                self._logged_at = now
            return len(late), say

    def say_overdue(self, late: int, topic: str, client_id: str) -> None:
        log.error("the broker acknowledged %d event(s) on %s that it did not deliver back to this station within "
                  "%.0f s (%d so far). Under MQTT 3.1.1 a broker acknowledges and drops an event that its ACL "
                  "forbids this client (or that is over its message size limit), so they are likely lost: allow "
                  "client %r to publish there, or use a broker that speaks MQTT 5, where the broker's refusal "
                  "keeps them in the outbox. If its ACL only forbids this client to read its own events, set "
                  "mqtt.check_delivery = false", late, topic, CONFIRM_S, self.unconfirmed, client_id)

    def say_resumed(self) -> None:
        log.warning("the broker delivers this station's events again (%d acknowledged events did not come back in "
                    "all)", self.unconfirmed)
