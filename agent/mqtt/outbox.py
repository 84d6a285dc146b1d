"""A durable outbox: each event is written to SQLite (WAL) before it is published and
deleted only when the broker acknowledges it, so a broker outage or an agent restart
loses nothing. Bounded: when full, the oldest events are dropped and counted.

A full disk does not lose events even to a kill, within `reserve_bytes` set aside beside the
outbox (`Reserve`, files.py): it is released when a write meets a full disk, and the WAL folded
into the database. Beyond it, a full or failing disk does not lose events as long as the
process lives: an event that cannot be written is held in memory (at most `memory_events`,
then the oldest held ones are dropped and counted), published like the others, and written to
disk as soon as a write succeeds again. `status()` says how many are held and why.

A corrupt database (a failing storage device: SQLite says "malformed" or "not a database";
every page is read at the first open and after a corrupt write) is moved aside to
`<outbox>.corrupt-<UTC time>` and a new one started, so events are durable again. Every event
still readable from the old file is copied into the new one and sent (salvage.py); `status()`
names the moved file (`quarantined`). A database file or WAL deleted or replaced while open
(by hand) is noticed, and its events are copied into a new one at the path. These ways out
are `OutboxSalvage`'s methods (salvage.py); what is said about the disk, `DiskReports`'s (disk.py).

The event sequence number lives in its own small file that is allocated once and then
overwritten in place (`SeqFile`, files.py), so it keeps counting on a full disk and never
repeats or goes backwards across restarts; `SeqNumbers` (numbering.py) gives the numbers, and
continues above the broker's record of them when the state folder was lost.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

from agent.mqtt.disk import DiskReports
from agent.mqtt.files import INSERT_ROWS, OpenFiles, Pending, Reserve, SeqFile, private_file, schema
from agent.mqtt.numbering import SeqNumbers
from agent.mqtt.salvage import OutboxSalvage, check_pages, corrupt_file

log = logging.getLogger(__name__)


class Outbox(OutboxSalvage, DiskReports, SeqNumbers):
    RETRY_S = 0.5  # while the disk fails, how often a new event retries writing what is held

    def __init__(self, path: str | Path, max_events: int = 100_000, memory_events: int = 10_000,
                 reserve_bytes: int = 0) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        if memory_events < 0:
            raise ValueError(f"memory_events must be >= 0, got {memory_events}")
        self.path, self.max_events, self.memory_events = Path(path), max_events, memory_events
        self._lock = threading.Lock()
        self.store_failures = 0                    # writes that failed (events held in memory instead)
        self.seq_failures = 0                      # sequence numbers that could not be stored
        self.last_error: str | None = None         # the last storage error, None once writes succeed again
        self._said: dict[str, str] = {}            # the cause last logged, per kind of storage failure
        self._memory: OrderedDict[str, Pending] = OrderedDict()  # events not yet written to disk
        self._answers: dict[str, int] = {}         # event id -> the request it answers (request_journal.py)
        self.answered = 0                          # the highest request number whose answer is on disk
        self._acked_unsynced: set[str] = set()     # acknowledged, but the delete did not reach the disk
        self._dropped_unsynced = False
        self._next_retry = 0.0
        self._next_drop_log = 0.0
        self.slow_writes, self.slowest_write_s, self._next_slow_log = 0, 0.0, 0.0
        self._write_started: float | None = None   # when the event being written began (status: busy_s)
        self._last_depth = 0                       # the depth last read, for a status while a write holds on
        self.generation = 0                        # +1 each time the database (re)opens after failing
        self.quarantined: str | None = None        # where a corrupt database was moved, if one was
        self.replaced: str | None = None           # where a file put in the database's place was moved
        self._check_pages = True                   # read every page at the next open (quick_check)
        self._files = OpenFiles(self.path)         # the database and WAL opened: deleted or replaced since?
        self.dropped, self._key, db_seq = 0, 0, 0
        private_file(self.path)
        self.reserve = Reserve(self.path.with_name(self.path.name + ".reserve"), reserve_bytes)
        self._tight = False                        # a full disk was met, and the reserve is not set aside again
        # Used from the service loop and from paho's network thread: one connection, one lock.
        # A database that cannot be opened (a full disk cannot create the WAL index at start)
        # does not stop the agent: events are held in memory and it is opened again later.
        self._db: sqlite3.Connection | None = None
        with self._lock:
            if self._open_locked():
                db_seq = self._db_seq
            else:  # keys of events held before the database opens sort after everything in it
                self._key = self.KEY_FLOOR_UNOPENED
        self.seq_file = SeqFile(self.path.with_name(self.path.name + ".seq"))
        # The database keeps a copy of the counter too: never go below either.
        self._seq = max(self.seq_file.value, db_seq)
        self._seq_stored = self._seq               # the highest sequence number known to be on disk
        self._seq_failed = 0                       # the last number counted in seq_failures
        self.fresh = self._seq == 0                # no number given before: a new (or lost) state folder
        self.continued: dict | None = None         # numbering continued above the broker's record (numbering.py)
        self.reserve.keep()

    KEY_FLOOR_UNOPENED = 10 ** 12

    def _open_locked(self) -> bool:
        """Open the database, creating its tables; False (error recorded) if it cannot be."""
        db = None
        try:
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            if self._check_pages:  # at start and after a corrupt write, not at every retry on a full disk
                check_pages(db)
                self._check_pages = False
            schema(db)
            (last_key,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        except sqlite3.Error as e:
            if db is not None:
                db.close()
            if corrupt_file(e):
                moved = self._move_aside_locked(e)
                if moved is not None:  # a new file: its own errors (a full disk) are handled as any
                    if not self._open_locked():
                        log.error("outbox %s is corrupt (%s): moved to %s, where its events stay; the new one "
                                  "cannot be opened yet", self.path, e, moved)
                        return False
                    self._copy_from_locked(moved, e)
                    return True
            if self.reserve.free(e):  # a full disk: the reserve's room, then one more try
                return self._open_locked()
            self.store_failures += 1
            self._next_retry = time.monotonic() + self.RETRY_S
            self._failed("open", e)
            return False
        for suffix in ("-wal", "-shm"):  # SQLite creates them with the database's mode; make sure
            p = self.path.with_name(self.path.name + suffix)
            if p.exists():
                p.chmod(0o600)
        reopened = self._key >= self.KEY_FLOOR_UNOPENED
        self._db = db
        self._files.opened()
        self._key = max(self._key, int(last_key), int(row[0]) if row else 0)
        self.dropped = max(self.dropped, int(counters.get("dropped", 0)))
        self._db_seq = int(counters.get("seq", 0))
        self.answered = max(self.answered, int(counters.get("answered", 0)))
        if hasattr(self, "_seq"):  # opened late: the database's copy of the counter may be ahead
            self._seq = max(self._seq, self._db_seq)
        if reopened:
            self.generation += 1
            log.warning("outbox %s opened; %d events held in memory are stored", self.path, len(self._memory))
        return True

    # -- writing ---------------------------------------------------------------------------
    def _transaction(self, statements) -> None:
        """Run `statements(db)` in one write transaction; on error roll back (if SQLite has not
        already) and raise the original error, not the rollback's."""
        self._db.execute("PRAGMA synchronous=FULL")  # (whatever a delete left: every write is flushed)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            statements(self._db)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error as rollback_error:
                    log.error("outbox rollback failed too: %s", rollback_error)
            raise

    # -- events --------------------------------------------------------------------------
    def put(self, event_id: str, topic: str, payload: bytes, qos: int = 1, answers: int = 0) -> bool:
        """Store an event (before publishing it): on disk, or in memory while the disk fails.
        Drops the oldest events beyond max_events (and beyond memory_events in memory).
        False if an event with this id is already stored. `answers`: the number of the request it
        answers, stored with it (`answered`)."""
        with self._lock:
            if event_id in self._memory or self._exists(event_id):
                return False
            if answers:
                self._answers[event_id] = answers
            self._key += 1
            p = Pending(event_id, self._key, topic, bytes(payload), int(qos))
            self._memory[event_id] = p
            # While the disk fails, retry at most every RETRY_S (each try rewrites everything held).
            if self.last_error is None or time.monotonic() >= self._next_retry:
                t0 = self._write_started = time.monotonic()
                try:
                    self._sync_locked()
                finally:
                    self._write_started = None
                self._timed("an event", t0)
            if event_id in self._memory and not self.seq_file.flushed:
                self._flush_seq_locked()  # (not stored with its event: its number must not rest on it)
            if event_id in self._memory and len(self._memory) > self.memory_events:
                oldest = next(iter(self._memory))
                del self._memory[oldest]
                self._answers.pop(oldest, None)  # (its request is answered again at the next start)
                self.dropped += 1
                self._dropped_unsynced = True
                if time.monotonic() >= self._next_drop_log:
                    self._next_drop_log = time.monotonic() + 10.0
                    log.error("outbox: %d events held in memory while the disk fails: dropping the oldest "
                              "(%s; %d dropped in all, logged at most every 10 s)", self.memory_events, oldest,
                              self.dropped)
            return True

    def _exists(self, event_id: str) -> bool:
        if self._db is None:
            return False
        try:
            return self._db.execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)).fetchone() is not None
        except sqlite3.Error:
            return False

    def _sync_locked(self) -> None:
        """Write what is held in memory (and deferred deletes and counters) to disk, oldest first."""
        self._check_file_locked()
        if not (self._memory or self._acked_unsynced or self._dropped_unsynced):
            return
        if self._db is None and not self._open_locked():
            return
        held, acked, stored_seq = list(self._memory.values()), set(self._acked_unsynced), self._seq
        answered = max((self._answers.get(p.event_id, 0) for p in held), default=0)
        excess_box: list[int] = []

        def write(db):
            if acked:
                db.executemany("DELETE FROM events WHERE event_id = ?", [(e,) for e in acked])
            db.executemany(INSERT_ROWS, [(p.seq, p.event_id, p.topic, p.payload, p.qos, time.time()) for p in held])
            (n,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
            excess = max(0, n - self.max_events)
            if excess:
                db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,))
            excess_box.append(excess)
            db.execute("INSERT INTO counters (name, value) VALUES ('seq', ?) ON CONFLICT(name) "
                       "DO UPDATE SET value = MAX(value, excluded.value)", (stored_seq,))
            if answered:
                db.execute("INSERT INTO counters (name, value) VALUES ('answered', ?) ON CONFLICT(name) "
                           "DO UPDATE SET value = MAX(value, excluded.value)", (answered,))
            if excess or self._dropped_unsynced:
                db.execute("INSERT INTO counters (name, value) VALUES ('dropped', ?) ON CONFLICT(name) "
                           "DO UPDATE SET value = MAX(value, excluded.value)", (self.dropped + excess,))

        try:
            try:
                self._transaction(write)
            except sqlite3.Error as e:
                if not self._make_room_locked(e):
                    raise
                excess_box.clear()
                self._transaction(write)  # one more try
        except sqlite3.Error as e:
            self.store_failures += 1
            self._next_retry = time.monotonic() + self.RETRY_S
            self._failed("write", e)
            if corrupt_file(e):  # the next try opens the file again, and moves it aside if it is corrupt
                self._db.close()
                self._db = None
                self._check_pages = True
            return
        for p in held:
            self._memory.pop(p.event_id, None)
            self._answers.pop(p.event_id, None)
        self.answered = max(self.answered, answered)
        self._seq_stored = max(self._seq_stored, stored_seq)  # (the counters row, in the same commit)
        self._acked_unsynced -= acked
        self._dropped_unsynced = False
        if excess_box and excess_box[0]:
            self.dropped += excess_box[0]
            if time.monotonic() >= self._next_drop_log:  # (once full, every new event drops one)
                self._next_drop_log = time.monotonic() + 10.0
                log.error("outbox full (%d events): dropping the oldest (%d dropped in all, logged at most every "
                          "10 s)", self.max_events, self.dropped)
        self._recovered()
        if self._tight:  # the disk was full: each write's WAL pages are folded in, not left to pile up
            self._checkpoint_locked()
        self.reserve.keep()
        # (until the reserve is set aside again; with none, this write found room)
        self._tight = self._tight and self.reserve.size > 0 and not self.reserve.held()

    def sync(self) -> bool:
        """Retry writing what is held in memory; True when nothing is held any more."""
        with self._lock:
            self._sync_locked()
            return not self._memory

    def ack(self, event_id: str) -> None:
        with self._lock:
            if self._memory.pop(event_id, None) is not None:
                return
            if self._db is None:  # only held events exist while the database is not open
                return
            try:
                # Not flushed on its own: the next event's write flushes it (a flush a part spared). A
                # power cut before that only sends this acknowledged event again (consumers
                # deduplicate on event_id); a kill loses nothing, the kernel has it.
                self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._db.execute("DELETE FROM events WHERE event_id = ?", (event_id,))
                finally:
                    self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as e:  # a delete needs space in the WAL too: retried with the next write
                self._acked_unsynced.add(event_id)
                self._failed("delete", e)

    def _pending_locked(self, after: int, limit: int | None) -> list[Pending]:
        rows = []
        try:
            if self._db is None:
                raise sqlite3.OperationalError("the database is not open")
            rows = self._db.execute("SELECT event_id, seq, topic, payload, qos FROM events WHERE seq > ? "
                                    "ORDER BY seq LIMIT ?", (after, -1 if limit is None else limit)).fetchall()
        except sqlite3.Error as e:
            if self._db is not None:
                self._failed("read", e)
        out = [Pending(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows if r[0] not in self._acked_unsynced]
        out += [p for p in self._memory.values() if p.seq > after]
        out.sort(key=lambda p: p.seq)
        return out if limit is None else out[:limit]

    def pending(self, after: int = 0, limit: int | None = None) -> list[Pending]:
        """Unacknowledged events in publishing order (those after position `after`, at most `limit`)."""
        with self._lock:
            return self._pending_locked(after, limit)

    def __len__(self) -> int:
        with self._lock:
            return self._len_locked()

    def _len_locked(self) -> int:
        try:
            (n,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone() if self._db else (0,)
        except sqlite3.Error:
            n = 0
        return int(n) - len(self._acked_unsynced) + len(self._memory)

    @property
    def unsaved(self) -> int:
        """Events held in memory only (the disk failed)."""
        return len(self._memory)

    @property
    def needs_sync(self) -> bool:
        """Something waits to be written: held events, deletes or the drop counter."""
        return bool(self._memory or self._acked_unsynced or self._dropped_unsynced)

    STATUS_WAIT_S = 0.25

    def status(self) -> dict:
        """Depth, what is held in memory only, what was dropped, and the storage error if any.
        While a write holds the outbox longer than STATUS_WAIT_S (a disk slow to flush), the last
        depth read and the counters as they stand, with `busy` and for how long: a scrape or the
        operator's page must not wait for the disk."""
        if not self._lock.acquire(timeout=self.STATUS_WAIT_S):
            busy_s = round(time.monotonic() - self._write_started, 1) if self._write_started else None
            return {**self._counters(self._last_depth), "busy": True, "busy_s": busy_s}
        try:
            self._last_depth = self._len_locked()
            return {**self._counters(self._last_depth), "busy": False, "busy_s": None}
        finally:
            self._lock.release()

    def _counters(self, depth: int) -> dict:
        return {"depth": depth, "unsaved": len(self._memory), "dropped": self.dropped,
                "seq": self._seq, "continued": self.continued,
                "store_failures": self.store_failures, "seq_failures": self.seq_failures,
                "slow_writes": self.slow_writes, "slowest_write_s": self.slowest_write_s,
                "error": self.last_error, "quarantined": self.quarantined, "replaced": self.replaced,
                "reserve": self.reserve.status()}

    def close(self) -> None:
        with self._lock:
            self._sync_locked()
            if self._memory:
                log.error("outbox closed with %d events that could not be written to disk: they are lost (%s)",
                          len(self._memory), self.last_error)
            if self._seq > self._seq_stored:  # (numbers taken without an event written after them)
                self._flush_seq_locked()
            if self._seq > self._seq_stored:
                why = next((f"{k}: {self._said[k]}" for k in self.SEQ_KINDS if k in self._said), self.last_error)
                log.error("sequence numbers %d to %d could not be stored (%s): after a restart they are given "
                          "again", self._seq_stored + 1, self._seq, why)
            if self._db is not None:
                self._db.close()
                self._db = None
            self.seq_file.close()
