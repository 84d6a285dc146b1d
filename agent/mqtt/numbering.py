"""Event sequence numbers (a mixin of `Outbox`, outbox.py): given one by one, stored with the
event that carries them, and continued above the broker's record when the state folder was lost.

`seq` never repeats and never goes backwards (README). The outbox keeps it in its sequence file
and its database; a state folder that is lost (a replaced SD card, a reimaged Jetson, `rm -rf`
of the folder) or restored from an older copy took both, and numbering started again at 1: a
PLC gateway that tracks the last number takes the new events for old ones, and nothing said
that the events stored there were lost. The station's retained `status` on the broker records
how far it had counted (`outbox.seq`): read on the agent's first connection (publisher.py), it
lets `continue_after` say so and continue above it, with a margin for numbers given after that
status was published.
"""
from __future__ import annotations

import logging
import math
import time

from agent.mqtt.events import utc_iso

log = logging.getLogger("agent.mqtt.outbox")

MARGIN = 1000        # numbers skipped above the broker's record, at least ...
MARGIN_S = 600.0     # ... plus this many seconds at the station's mean rate in that record
MAX_RECORD = 2 ** 31  # a record that would number beyond this is not trusted (32-bit consumers; a hostile status)


class SeqNumbers:
    """Methods of `Outbox` (outbox.py), kept here so that each file reads whole."""

    def next_seq(self) -> int:
        """The next event sequence number: 1, 2, ... never repeated, kept across restarts.
        Stored in place in a preallocated file, so a full disk does not stop it. It is written
        there at once and flushed with the event: the event's own write stores it in the
        database too (one flush a part, not two), and a write that fails flushes the file."""
        with self._lock:
            self._seq += 1
            t0 = time.monotonic()
            try:
                self.seq_file.set(self._seq, flush=self._db is None or self.last_error is not None)
                self._timed("a sequence number", t0)
            except OSError as e:
                self.seq_failures += 1
                self._seq_failed = self._seq
                self._failed("sequence number", e)
            else:
                if self.seq_file.flushed:
                    self._seq_stored = self._seq
                if self._said:
                    self._recovered(self.SEQ_KINDS)
            return self._seq

    def _flush_seq_locked(self) -> None:
        """The event's write failed: its sequence number is made durable in its own file."""
        try:
            self.seq_file.flush()
        except OSError as e:
            if self._seq > self._seq_failed:  # (counted once per number, in next_seq or here)
                self.seq_failures += 1
            self._seq_failed = self._seq
            self._failed("sequence number", e)
        else:
            self._seq_stored = self.seq_file.value

    def continue_after(self, seq: int, rate: float = 0.0, recorded_at: str | None = None) -> int | None:
        """The broker's retained status says this station had given numbers up to `seq` (at
        `recorded_at`, `rate` events a second on average). When this outbox is behind it, the next
        number is `seq` + MARGIN + MARGIN_S x rate + 1, stored at once, and that is said; returns
        it, or None when the outbox is not behind (or the record cannot be trusted)."""
        if not 0 < seq < MAX_RECORD or not math.isfinite(rate) or rate < 0 or rate > 1e4:
            return None
        top = seq + MARGIN + math.ceil(rate * MARGIN_S)
        if top >= MAX_RECORD:
            return None
        with self._lock:
            if seq <= self._seq:
                return None
            old, self._seq = self._seq, top
            try:
                self.seq_file.set(self._seq, flush=True)
                self._seq_stored = self._seq
            except OSError as e:  # held in memory and stored with the next event, like any number
                self.seq_failures += 1
                self._seq_failed = self._seq
                self._failed("sequence number", e)
            nxt, fresh = self._seq + 1, self.fresh
            self.continued = {"behind": old, "record": seq, "recorded_at": recorded_at, "next": nxt,
                              "at": utc_iso(time.time())}
        folder = self.path.parent
        log.error("sequence numbers went back: the broker's last status from this station%s says they had reached "
                  "%d, and this outbox (%s) %s. Its state folder (%s) was lost or restored from an older copy, or "
                  "outbox.path changed: events stored there and not delivered are lost with it. Numbering continues "
                  "at %d (%d above that record, for numbers given after it)%s", f" ({recorded_at})" if recorded_at
                  else "", seq, self.path, "is new" if old == 0 else f"was at {old}", folder, nxt, nxt - 1 - seq,
                  f"; events numbered 1 to {old} before the broker answered keep theirs" if fresh and old else "")
        return nxt
