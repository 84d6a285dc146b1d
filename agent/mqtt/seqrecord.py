"""The broker's record of this station's sequence numbers (a mixin of `Publisher`,
publisher.py): read once, on the agent's first connection.

The station's `status` is retained, and carries how far it had counted (`outbox.seq`). On its
first connection the agent subscribes to its own status topic before it publishes anything,
so the retained one it receives is the previous run's (a live one, without the retain flag, is
not read). When the outbox is behind that record (its state folder lost or restored from an
older copy), `Outbox.continue_after` says so and continues above it (numbering.py). Then the
subscription ends: later connections do not read it again (a second agent with this
station_id would otherwise push the numbers up at every reconnect).

`seq_checked` is set once the record was read and applied, or RECORD_WAIT_S after the broker granted the
subscription without one (a new station), or at once if it refused it (its ACL): a new
outbox's start waits for it, briefly, before its first number (service.py).
"""
from __future__ import annotations

import json
import logging
import threading
import time

log = logging.getLogger("agent.mqtt.publisher")

RECORD_WAIT_S = 0.5        # after the SUBACK, how long a retained status may take to follow
RECORD_START_WAIT_S = 3.0  # a new outbox's first number waits at most this long after the start
MAX_RECORD_BYTES = 1 << 20  # a status larger than this is not the station's own


class SeqRecord:
    """Methods of `Publisher` (publisher.py), kept here so that each file reads whole."""

    def _init_record(self) -> None:
        self.seq_checked = threading.Event()
        self._record_mid: int | None = None         # the status subscription's message id, awaiting its SUBACK
        self._record_reading = False                 # subscribed on this connection, no record read yet
        self._record_granted_at: float | None = None
        self._record_done = False                    # read (or given up) once: not again
        self._record_deadline: float | None = None   # a new outbox: its first number waits until then
        self._record_lock = threading.Lock()          # paho's thread reading the record, or the pump giving up

    def _start_record(self) -> None:
        """At start: a new (or lost) state folder's first number waits, briefly, for the record."""
        if self.outbox.fresh:
            self._record_deadline = time.monotonic() + RECORD_START_WAIT_S

    def await_record(self) -> None:
        """At the end of the start (the service): a new outbox waits for the broker's record
        before its first number, until RECORD_START_WAIT_S after the publisher started; not
        while the broker cannot be reached (the record is read when it can)."""
        if self._record_deadline is None:
            return
        deadline, self._record_deadline = self._record_deadline, None
        while not self.seq_checked.is_set() and time.monotonic() < deadline:
            self._record_waited()  # (RECORD_WAIT_S after the SUBACK without a record: a new station)
            if self.link["state"] not in ("connecting", "connected"):
                break
            self.seq_checked.wait(0.05)
        if not self.seq_checked.is_set():
            log.info("no record of this station's sequence numbers from the broker yet (%s): this new outbox numbers "
                     "events from 1, and checks them against the record when it comes", self.link["state"])

    def _subscribe_record(self, client) -> None:
        """On the first connection, before anything is published on it (paho's thread)."""
        if self._record_done:
            return
        rc, mid = client.subscribe(self.topic("status"), qos=0)
        if rc != 0:
            self._end_record(client, unsubscribe=False)
            return
        self._record_mid, self._record_reading, self._record_granted_at = mid, True, None

    def _record_subacked(self, mid: int, reason_codes) -> bool:
        """A SUBACK; True if it was the status subscription's."""
        if mid != self._record_mid or self._record_mid is None:
            return False
        self._record_mid = None
        if any(getattr(rc, "is_failure", False) for rc in reason_codes):
            log.info("the broker refused this station reading its own status (%s): sequence numbers are not "
                     "checked against its record", self.topic("status"))
            self._end_record(self.client, unsubscribe=False)
        else:
            self._record_granted_at = time.monotonic()
        return True

    def _record_message(self, payload: bytes, retain: bool) -> None:
        """A message on the station's own status topic (paho's thread)."""
        if not retain:
            return
        with self._record_lock:  # claimed from the pump's wait (_record_waited), which no longer ends it
            if not self._record_reading:
                return
            self._record_reading = False
        try:  # applied before seq_checked is set: a new outbox's first number waits for it
            if len(payload) <= MAX_RECORD_BYTES:
                self._apply_record(payload)
        finally:
            self._end_record(self.client)

    def _apply_record(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            seq = doc["outbox"]["seq"]
            events, uptime = doc.get("counters", {}).get("events", 0), doc.get("uptime_s", 0)
            rate = float(events) / float(uptime) if uptime and float(uptime) > 0 else 0.0
            recorded_at = doc.get("time") if isinstance(doc.get("time"), str) else None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError):
            return  # an older agent's status (no outbox.seq), or not a status (a count past a float's range)
        if isinstance(seq, int) and not isinstance(seq, bool):
            self.outbox.continue_after(seq, rate, recorded_at[:40] if recorded_at else None)

    def _record_waited(self) -> None:
        """From the pump: a granted subscription with no retained status after RECORD_WAIT_S."""
        with self._record_lock:
            t = self._record_granted_at
            if not self._record_reading or t is None or time.monotonic() - t < RECORD_WAIT_S:
                return
            self._record_reading = False  # (a retained status that comes now is not read)
        self._end_record(self.client)

    def _end_record(self, client, unsubscribe: bool = True) -> None:
        self._record_reading, self._record_done, self._record_granted_at = False, True, None
        if unsubscribe:
            client.unsubscribe(self.topic("status"))
        self.seq_checked.set()

    def _record_dropped(self) -> None:
        """The connection dropped while reading: the next one subscribes again."""
        if self._record_reading:
            self._record_reading, self._record_mid, self._record_granted_at = False, None, None
