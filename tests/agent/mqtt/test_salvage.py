"""agent/mqtt/salvage.py: what a corrupt outbox still holds is handed over in batches, a scan
stops at the first unreadable page, the new file's errors are raised, and nothing is moved over
another file."""
from __future__ import annotations

import os
import sqlite3

import pytest

from agent.mqtt.salvage import copy_events, corrupt_file, move_aside


def outbox_file(path, n: int) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE NOT NULL, "
               "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, created REAL NOT NULL)")
    db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.executemany("INSERT INTO events VALUES (?, ?, 't', ?, 1, 0.0)", [(i + 1, f"e{i}", b"x" * 300) for i in range(n)])
    db.execute("INSERT INTO counters VALUES ('seq', 77), ('dropped', 3)")
    db.commit()
    db.close()


def test_rows_come_in_batches_with_the_counters_and_a_scan_stops_at_a_broken_page(tmp_path):
    path = tmp_path / "o.sqlite"
    outbox_file(path, 100)
    batches = []
    assert copy_events(path, batches.append, batch=30) == (100, 100, {"seq": 77, "dropped": 3})
    assert [len(b) for b in batches] == [30, 30, 30, 10] and batches[0][0][:2] == (1, "e0")
    size = path.stat().st_size
    with open(path, "r+b") as f:  # the table's last page
        f.seek(size - 4096)
        f.write(os.urandom(4096))
    got = []
    n, last, _ = copy_events(path, got.extend)
    assert 0 < n < 100 and [r[1] for r in got] == [f"e{i}" for i in range(n)] and last == n


def test_a_write_error_is_raised_and_a_file_that_is_no_database_gives_nothing(tmp_path):
    path = tmp_path / "o.sqlite"
    outbox_file(path, 10)

    def full(rows):
        raise sqlite3.OperationalError("database or disk is full")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        copy_events(path, full)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(os.urandom(8192))
    assert copy_events(junk, full) == (0, 0, {})
    with pytest.raises(sqlite3.DatabaseError) as e:
        sqlite3.connect(junk).execute("SELECT 1 FROM sqlite_master").fetchall()
    assert corrupt_file(e.value)
    assert not corrupt_file(sqlite3.OperationalError("database or disk is full"))


def test_moving_aside_takes_the_wal_and_never_overwrites(tmp_path):
    path = tmp_path / "o.sqlite"
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"o.sqlite{suffix}").write_text(suffix or "db")
    first = move_aside(path)
    assert not path.exists() and first.read_text() == "db"
    assert first.with_name(first.name + "-wal").read_text() == "-wal"
    path.write_text("db2")
    second = move_aside(path)  # the same second: a new name, the first one kept
    assert second != first and second.read_text() == "db2" and first.read_text() == "db"
