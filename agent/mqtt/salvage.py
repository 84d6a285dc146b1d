"""A corrupt outbox database (a failing storage device: SQLite says "malformed" or "not a
database", or check_pages finds a broken page) is moved aside, and every event row that can still
be read from it is copied into the new one (outbox.py). Rows are copied in batches, never all held in memory; those past the
first unreadable page stay in the moved file, for a person. The events of an outbox file (or its WAL)
deleted or replaced while it is open are copied the same way, from the open connection (rebuild_deleted)."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

from agent.durable import replace, sync_folder
from agent.mqtt.files import INSERT_ROWS, new_database

CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB: the file's content, not the disk's room or rights


def corrupt_file(e: sqlite3.Error) -> bool:
    """True when SQLite's error is about the file's content (it is moved aside), not room or rights."""
    return (getattr(e, "sqlite_errorcode", 0) & 0xFF) in CORRUPT_CODES


def check_pages(db: sqlite3.Connection) -> None:
    """Read every page once (PRAGMA quick_check; ~3 s for 200 MB here), so that a broken one is found
    at open, not by whichever write happens to meet it; raises a corrupt error (SQLITE_CORRUPT)."""
    (result,) = db.execute("PRAGMA quick_check(1)").fetchone()
    if result != "ok":
        e = sqlite3.DatabaseError(f"quick_check: {result}")
        e.sqlite_errorcode = 11
        raise e


def move_aside(path: Path, why: str = "corrupt", suffixes=("", "-wal", "-shm")) -> Path:
    """Move the database and its WAL (those of `suffixes` that exist) to `<name>.<why>-<UTC time>[-n]`;
    the new name. Raises OSError."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved, n = path.with_name(f"{path.name}.{why}-{stamp}"), 1
    while moved.exists():
        moved, n = path.with_name(f"{path.name}.{why}-{stamp}-{n}"), n + 1
    for suffix in suffixes:
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, moved.with_name(moved.name + suffix))
    sync_folder(path.parent)  # (after a power cut, the moved file is found where it was said to be)
    return moved


def copy_events(src: Path | sqlite3.Connection, write: Callable[[list[tuple]], None],
                batch: int = 500) -> tuple[int, int, dict[str, int]]:
    """Hand the readable event rows of the moved file `src` (or of an open connection, left open)
    to `write` in batches of (seq, event_id, topic, payload, qos, created), oldest first, as far
    as a scan gets: (rows handed over, the largest seq, its counters). An error of `write` is
    raised (what was not copied stays in `src`)."""
    copied, last, counters = 0, 0, {}
    if isinstance(src, sqlite3.Connection):
        db, own = src, False
    else:
        try:  # the moved file is left as it was
            db, own = sqlite3.connect(f"file:{src}?mode=ro", uri=True), True
        except sqlite3.Error:
            return copied, last, counters
    try:
        try:
            counters = {str(k): int(v) for k, v in db.execute("SELECT name, value FROM counters")}
        except (sqlite3.Error, TypeError, ValueError):
            pass
        try:
            cur = db.execute("SELECT seq, event_id, topic, payload, qos, created FROM events ORDER BY seq")
        except sqlite3.Error:  # not even the table can be read
            return copied, last, counters
        rows: list[tuple] = []
        while True:
            try:
                r = cur.fetchone()
            except sqlite3.Error:  # the first unreadable page: the rest stays in src
                r = None
            if r is not None:
                rows.append(r)
            if rows and (r is None or len(rows) == batch):
                write(rows)  # its errors are the new file's: raised
                copied, last, rows = copied + len(rows), max(last, *(int(x[0]) for x in rows)), []
            if r is None:
                return copied, last, counters
    finally:
        if own:
            db.close()


def rebuild_deleted(old: sqlite3.Connection, path: Path, hold: Callable[[list[tuple]], None]) -> str:
    """The outbox file `path` or its WAL was deleted (or replaced, and moved aside) while `old` had
    it open (by hand, to free space?). SQLite would go on writing to the deleted file, and a restart
    would lose what it holds. Its events are
    copied into a new file, made under a temporary name and moved to `path`. Where there
    is no room for the copy (a deleted file keeps its space while it is open), they are handed to
    `hold` (memory) instead. Closes `old`, removes its WAL, and says what became of its events."""
    tmp: Path | None = path.with_name(path.name + ".rebuild")
    try:
        _remove(tmp)
        new = new_database(tmp)
        try:
            def write(rows):
                new.execute("BEGIN IMMEDIATE")
                try:
                    new.executemany(INSERT_ROWS, rows)
                    new.execute("COMMIT")
                except BaseException:
                    if new.in_transaction:
                        new.execute("ROLLBACK")
                    raise
            n, _, counters = copy_events(old, write)
            new.executemany("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                            "value = MAX(value, excluded.value)", list(counters.items()))
        finally:
            new.close()
        outcome = f"its {n} unacknowledged events are copied into a new file there"
    except (sqlite3.Error, OSError) as e:
        _remove(tmp)
        tmp, rows = None, []
        copy_events(old, rows.extend)
        hold(rows)
        outcome = (f"there is no room for a copy ({type(e).__name__}: {e}): its {len(rows)} unacknowledged "
                   "events are held in memory and written to a new file as space allows")
    finally:
        old.close()  # the deleted file's space is freed now
    _remove(path, ("-wal", "-shm"))  # the deleted file's: a new database must not replay them
    if tmp is not None:
        replace(tmp, path)  # flushed: a power cut must not leave the events under the temporary name only
    return outcome


def _remove(path: Path, suffixes=("", "-wal", "-shm")) -> None:
    for suffix in suffixes:
        path.with_name(path.name + suffix).unlink(missing_ok=True)
