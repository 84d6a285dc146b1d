"""A durable outbox: each event is written to SQLite (WAL) before it is published and
deleted only when the broker acknowledges it, so a broker outage or an agent restart
loses nothing. Bounded: when full, the oldest events are dropped and counted.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pending:
    event_id: str
    seq: int
    topic: str
    payload: bytes
    qos: int


class Outbox:
    def __init__(self, path: str | Path, max_events: int = 100_000) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        self.path, self.max_events = Path(path), max_events
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Used from the service loop and from paho's network thread: one connection, one lock.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
            self._db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "event_id TEXT UNIQUE NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, "
                             "qos INTEGER NOT NULL, created REAL NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self.dropped = self._counter("dropped")

    def _counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def put(self, event_id: str, topic: str, payload: bytes, qos: int = 1) -> None:
        """Store an event (before publishing it). Drops the oldest events beyond max_events."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR IGNORE INTO events (event_id, topic, payload, qos, created) "
                                 "VALUES (?, ?, ?, ?, ?)", (event_id, topic, payload, qos, time.time()))
                (n,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
                excess = n - self.max_events
                if excess > 0:
                    self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                                     (excess,))
                    self._db.execute("INSERT INTO counters (name, value) VALUES ('dropped', ?) ON CONFLICT(name) "
                                     "DO UPDATE SET value = value + excluded.value", (excess,))
                    self.dropped += excess
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def next_seq(self) -> int:
        """The next event sequence number: 1, 2, ... kept across restarts."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO counters (name, value) VALUES ('seq', 1) ON CONFLICT(name) "
                                 "DO UPDATE SET value = value + 1")
                (v,) = self._db.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(v)

    def ack(self, event_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM events WHERE event_id = ?", (event_id,))

    def pending(self) -> list[Pending]:
        with self._lock:
            rows = self._db.execute("SELECT event_id, seq, topic, payload, qos FROM events ORDER BY seq").fetchall()
        return [Pending(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
