"""A corrupt outbox database (a failing storage device: SQLite says "malformed" or "not a
database", or check_pages finds a broken page) is moved aside, and every event row that can still be read from it is copied into
the new one (outbox.py). Rows are copied in batches, never all held in memory; those past the
first unreadable page stay in the moved file, for a person."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

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


def move_aside(path: Path) -> Path:
    """Move the database and its WAL to `<name>.corrupt-<UTC time>[-n]`; the new name. Raises OSError."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while moved.exists():
        moved, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, moved.with_name(moved.name + suffix))
    return moved


def copy_events(src: Path, write: Callable[[list[tuple]], None], batch: int = 500) -> tuple[int, int, dict[str, int]]:
    """Hand the readable event rows of the moved file `src` to `write` in batches of (seq, event_id,
    topic, payload, qos, created), as far as a scan gets: (rows handed over, the largest seq, its
    counters). An error of `write` is raised (what was not copied stays in `src`)."""
    copied, last, counters = 0, 0, {}
    try:
        db = sqlite3.connect(f"file:{src}?mode=ro", uri=True)  # the moved file is left as it was
    except sqlite3.Error:
        return copied, last, counters
    try:
        try:
            counters = {str(k): int(v) for k, v in db.execute("SELECT name, value FROM counters")}
        except (sqlite3.Error, TypeError, ValueError):
            pass
        try:
            cur = db.execute("SELECT seq, event_id, topic, payload, qos, created FROM events")
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
        db.close()
