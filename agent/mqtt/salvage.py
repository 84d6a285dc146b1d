"""A corrupt outbox database (a failing storage device: SQLite says "malformed" or "not a
database", or check_pages finds a broken page) is moved aside, and every event row that can still
be read from it is copied into the new one (outbox.py). Rows are copied in batches, never all
held in memory; those past the first unreadable page stay in the moved file, for a person. The
events of an outbox file (or its WAL) deleted or replaced while it is open are copied the same
way, from the open connection (rebuild_deleted). OutboxSalvage holds these ways out as the
outbox's methods, with a full disk's."""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from agent.durable import replace, sync_folder
from agent.mqtt.files import INSERT_ROWS, Pending, disk_full, new_database, private_file

log = logging.getLogger("agent.mqtt.outbox")  # (the outbox's messages, under its name)

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


class OutboxSalvage:
    """The outbox's ways out when its files go wrong: a corrupt database moved aside and copied,
    a file deleted or replaced while open, a full disk. Methods of `Outbox` (outbox.py), kept
    here with the functions they use; each runs with the outbox's lock held."""

    # -- a corrupt database ----------------------------------------------------------------
    def _move_aside_locked(self, e: sqlite3.Error) -> Path | None:
        try:
            moved = move_aside(self.path)
        except OSError as move_error:
            log.error("outbox %s is corrupt (%s) and cannot be moved aside (%s): events are held in memory",
                      self.path, e, move_error)
            return None
        private_file(self.path)
        self.quarantined = str(moved)
        return moved

    def _copy_from_locked(self, moved: Path, e: sqlite3.Error) -> None:
        """Copy what can be read of the moved file's events into the new database."""
        def write(rows):
            self._transaction(lambda db: db.executemany(INSERT_ROWS, rows))
        try:
            n, last, counters = copy_events(moved, write)
            outcome = f"{n} unacknowledged events read from it are kept and sent (any others stay in it)"
        except sqlite3.Error as write_error:
            n, last, counters = 0, 0, {}
            outcome = f"its events could not be copied ({write_error}): they stay in it"
        self._key = max(self._key, last)
        self.dropped = max(self.dropped, counters.get("dropped", 0))
        self._db_seq = max(self._db_seq, counters.get("seq", 0))
        if hasattr(self, "_seq"):  # (the counters are stored with the next write)
            self._seq = max(self._seq, self._db_seq)
        self._dropped_unsynced = self._dropped_unsynced or self.dropped > 0
        self.generation += 1  # the pump goes back to the oldest event
        log.error("outbox %s is corrupt (%s): moved to %s and a new one started; %s", self.path, e, moved, outcome)

    # -- a full disk ---------------------------------------------------------------------
    def _make_room_locked(self, e: sqlite3.Error) -> bool:
        """A write met a full disk: release the reserve, and fold the WAL into the database (most
        of a WAL is older versions of the same pages). True: worth one more try."""
        if not disk_full(e):
            return False
        self._tight = True
        self.reserve.free(e)
        self._checkpoint_locked()
        return True

    def _checkpoint_locked(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:  # (no room even for that: the events wait in memory)
            pass

    # -- a file deleted or replaced while open -------------------------------------------
    def check(self) -> None:
        """Notice a file deleted or replaced while open (the publisher's pump calls this twice a second)."""
        with self._lock:
            self._check_file_locked()

    def _check_file_locked(self) -> None:
        """Are the database, its WAL and the sequence file still the ones open here? One deleted
        (`rm outbox.sqlite*`, say to free space) or replaced by another file (`mv`, a restore) would
        have SQLite go on writing where no restart reads it: its events are copied into a new file."""
        if hasattr(self, "seq_file") and self.seq_file.gone():
            how = "replaced" if self.seq_file.path.exists() else "deleted"
            try:
                self.seq_file = self.seq_file.renewed(self._seq)
            except OSError as e:
                self.seq_failures += 1
                self._failed("sequence file", e)
            else:
                self._seq = self._seq_stored = self.seq_file.value
                self._recovered(self.SEQ_KINDS)
                log.error("sequence file %s was %s while the agent had it open: written again (at %d)",
                          self.seq_file.path, how, self._seq)
        changed = self._files.changed() if self._db is not None else {}
        if not changed:
            return
        said = "outbox " + ", and ".join(
            f"{self._files.file(suffix)} was {how}" + " by another file" * (how == "replaced")
            for suffix, how in changed.items()) + " while the agent had it open"
        replaced = [suffix for suffix, how in changed.items() if how == "replaced"]
        if replaced:
            try:
                moved = move_aside(self.path, "replaced", replaced)
            except OSError as e:  # (a folder that cannot be written: no new file could be made either)
                self._files.accept(replaced)
                log.error("%s, and it cannot be moved aside (%s): events written from now on go to a file no "
                          "restart reads; restart the agent", said, e)
                return
            said += f" (moved to {moved}, for a person: its events are not sent from here)"
            self.replaced = str(moved)
        old, self._db = self._db, None
        outcome = rebuild_deleted(old, self.path, self._hold_rows)
        log.error("%s; SQLite would have gone on writing to the file it opened, where a kill or a restart would "
                  "have lost its events: %s", said, outcome)
        self._dropped_unsynced = True  # (the counters go into the new file with the next write)
        self._open_locked()  # if it cannot be (a full disk), events wait in memory as for any failed write

    def _hold_rows(self, rows: list[tuple]) -> None:
        """Hold the rows of a deleted file in memory, before the events held already."""
        held = OrderedDict((r[1], Pending(r[1], int(r[0]), r[2], bytes(r[3]), int(r[4])))
                           for r in rows if r[1] not in self._acked_unsynced)
        self._acked_unsynced.clear()  # (their rows are gone with the deleted file)
        held.update(self._memory)
        self._memory, dropped = held, 0
        while len(self._memory) > self.memory_events:
            self._memory.popitem(last=False)
            dropped += 1
        if dropped:
            self.dropped += dropped
            log.error("outbox: at most %d events are held in memory: the %d oldest dropped (%d dropped in all)",
                      self.memory_events, dropped, self.dropped)
