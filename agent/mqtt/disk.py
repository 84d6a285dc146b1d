"""What the outbox says about its disk (a mixin of `Outbox`, outbox.py): a failing write, once
per kind and cause (on a file system the kernel made read-only, naming it), its recovery, and a
store slow enough that the part waits for it (an SD card or a worn eMMC slow to flush).
"""
from __future__ import annotations

import logging
import time

from agent import durable
from agent.mounts import read_only_words
from agent.mqtt.files import read_only

log = logging.getLogger("agent.mqtt.outbox")  # (the outbox's own log, as before the split)


class DiskReports:
    """Methods of `Outbox` (outbox.py), kept here so that each file reads whole."""

    SLOW_WRITE_S = 0.5  # storing an event slower than this is said: each part waits for it
    SLOW_LOG_EVERY_S = 60.0

    def _failed(self, what: str, e: Exception) -> None:
        # (out of inodes, SQLite says only "unable to open database file": the inodes are named)
        cause = f"{type(e).__name__}: {e}{durable.out_of_inodes(self.path.parent)}"
        # Once per kind and change of cause, not once per retry or operation: a disk that fails
        # every write fails each event's sequence number and its write, with two causes.
        if self._said.get(what) != cause:
            if read_only(self.path.parent):
                log.error("outbox %s cannot be written (%s: %s): its file system is read-only: %s. Events are "
                          "held in memory and sent; any not acknowledged when the agent stops are lost, and "
                          "sequence numbers given meanwhile are not stored", self.path, what, cause,
                          read_only_words(self.path.parent))
            else:
                log.error("outbox %s cannot be written (%s: %s); events are held in memory until it can",
                          self.path, what, cause)
            self._said[what] = cause
        self.last_error = f"{what}: {cause}"

    SEQ_KINDS = ("sequence number", "sequence file")

    def _recovered(self, kinds: tuple[str, ...] | None = None) -> None:
        """The disk took a write again: the database's (default), or the sequence file's (`SEQ_KINDS`)."""
        cleared = [k for k in self._said if (k in kinds if kinds else k not in self.SEQ_KINDS)]
        if kinds is None and cleared:
            log.warning("outbox %s is writable again; %d events held in memory are stored", self.path,
                        len(self._memory))
        elif cleared:
            log.warning("sequence numbers are stored again in %s (at %d)", self.seq_file.path, self._seq)
        for k in cleared:
            del self._said[k]
        if not self._said:
            self.last_error = None

    def _timed(self, what: str, t0: float) -> None:
        """Say (at most every SLOW_LOG_EVERY_S) and count a store that took SLOW_WRITE_S or more:
        an SD card or a worn eMMC can take seconds to flush (fsync), and the part waits."""
        took = time.monotonic() - t0
        if took < self.SLOW_WRITE_S:
            return
        self.slow_writes += 1
        self.slowest_write_s = max(self.slowest_write_s, round(took, 3))
        if time.monotonic() >= self._next_slow_log:
            self._next_slow_log = time.monotonic() + self.SLOW_LOG_EVERY_S
            log.warning("outbox %s: storing %s took %.1f s (its disk is slow to flush: fsync); each part "
                        "waits for it, and a verdict whose event leaves more than mqtt.verdict_max_age_s after "
                        "the decision is not published (%d slow writes so far, the slowest %.1f s; logged at "
                        "most every %.0f s)", self.path, what, took, self.slow_writes, self.slowest_write_s,
                        self.SLOW_LOG_EVERY_S)
