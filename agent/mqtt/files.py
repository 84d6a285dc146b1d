"""The outbox's files on disk (outbox.py): its SQLite database, private to the agent's user, with
its schema; and the event sequence number's own small file, allocated once and overwritten in
place, so that it keeps counting on a full disk and never repeats or goes backwards; the space
set aside for a full disk (Reserve); and the lock that keeps a second agent off an outbox in use."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import struct
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from agent import durable
from agent.run_record import RunRecord

log = logging.getLogger(__name__)


def schema(db: sqlite3.Connection) -> None:
    """WAL, synchronous writes, and the tables (created if missing)."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
    db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
               "event_id TEXT UNIQUE NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, "
               "qos INTEGER NOT NULL, created REAL NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")


def write_error(folder: str | Path) -> OSError | None:
    """Why a file cannot be made in `folder` (None: it can). A file is made and removed: the one
    reliable test (root passes os.access, and ext4's `errors=remount-ro` on a recent kernel refuses
    writes, EROFS, while the mount still reads `rw`)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".adgan-write-test-")
    except OSError as e:
        return e
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return None


def read_only(folder: str | Path) -> bool:
    """Is the file system holding `folder` read-only, as the kernel makes a failing disk?"""
    e = write_error(folder)
    return e is not None and e.errno == errno.EROFS


@dataclass(frozen=True)
class Pending:
    """An event waiting for the broker's acknowledgement."""
    event_id: str
    seq: int          # position in the outbox (publishing order), not the event's own seq
    topic: str
    payload: bytes
    qos: int


INSERT_ROWS = "INSERT OR IGNORE INTO events (seq, event_id, topic, payload, qos, created) VALUES (?, ?, ?, ?, ?, ?)"


def new_database(path: Path) -> sqlite3.Connection:
    """A new, private outbox database at `path`, with its tables."""
    private_file(path)
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        schema(db)
    except BaseException:
        db.close()
        raise
    return db


def file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None if there is none: whether a file open for a
    while is still the one at its path (deleted, or replaced by another)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def private_file(path: Path) -> None:
    """Create `path` (and its folder) readable by the owner only, if it does not exist."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


class SeqFile:
    """A counter that survives restarts and a full disk: two checksummed 16-byte slots in a
    file allocated when it is created, written alternately in place and fsynced."""

    SIZE = 4096
    _SLOT = struct.Struct("<QQ")  # value, crc32 of the value

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        new = not self.path.exists()
        private_file(self.path)
        self._fd = os.open(self.path, os.O_RDWR)
        st = os.fstat(self._fd)
        self.file_id = (st.st_dev, st.st_ino)
        if new or st.st_size < self.SIZE:
            try:
                os.posix_fallocate(self._fd, 0, self.SIZE)
            except OSError as e:  # a new install on a full disk: count in memory, say so, allocate later
                log.error("cannot allocate %s (%s); sequence numbers are not stored until it can be", self.path, e)
        slots = [self._read_slot(i) for i in (0, 1)]
        valid = [v for v in slots if v is not None]
        self.value = max(valid) if valid else 0
        self._dirty = False  # written since the last fsync
        self._next_slot = 0 if slots[0] is None or (slots[1] is not None and slots[1] > slots[0]) else 1

    def _read_slot(self, i: int) -> int | None:
        raw = os.pread(self._fd, self._SLOT.size, i * self._SLOT.size)
        if len(raw) < self._SLOT.size:
            return None
        value, crc = self._SLOT.unpack(raw)
        return value if crc == zlib.crc32(struct.pack("<Q", value)) and (value or crc) else None

    def set(self, value: int, flush: bool = True) -> None:
        """Store `value` (at least the current one), durably unless `flush` is False (then
        `flush()` makes it so); raises OSError if the disk fails."""
        if value < self.value:
            raise ValueError(f"a sequence number never goes backwards: {value} < {self.value}")
        self.value = value  # in memory first: the counter moves on even if the write fails
        data = self._SLOT.pack(value, zlib.crc32(struct.pack("<Q", value)))
        os.pwrite(self._fd, data, self._next_slot * self._SLOT.size)
        self._next_slot ^= 1
        self._dirty = True
        if flush:
            self.flush()

    @property
    def flushed(self) -> bool:
        """Is the last value written durable?"""
        return not self._dirty

    def flush(self) -> None:
        """Make the last value written durable (fsync); raises OSError if the disk fails."""
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False

    def renewed(self, value: int) -> "SeqFile":
        """After `gone()`: a counter at the path again, holding at least `value` (and a replacement's
        own count, if that is higher); this one is closed. Raises OSError (this one stays open)."""
        new = SeqFile(self.path)
        try:
            new.set(max(value, new.value))
        except BaseException:
            new.close()
            raise
        self.close()
        return new

    def gone(self) -> bool:
        """True when the file at the path is no longer the one open here (deleted, or replaced):
        what is written here would not be read at the next start."""
        return file_id(self.path) != self.file_id

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OpenFiles:
    """The identity (device, inode) of a database and its WAL as opened, to tell whether either
    was deleted or replaced by another file since (by hand: SQLite would go on writing to the
    files it opened, which no restart reads)."""

    SUFFIXES = ("", "-wal")

    def __init__(self, path: Path) -> None:
        self.path, self.ids = path, {}

    def file(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def opened(self) -> None:
        self.ids = {suffix: file_id(self.file(suffix)) for suffix in self.SUFFIXES}

    def changed(self) -> dict[str, str]:
        """{suffix: "deleted" | "replaced"} of the files that are no longer the ones opened."""
        changed = {}
        for suffix, opened in self.ids.items():
            now = file_id(self.file(suffix))
            if opened is None:  # (a WAL appears with the first transaction)
                self.ids[suffix] = now
            elif now != opened:
                changed[suffix] = "deleted" if now is None else "replaced"
        return changed

    def accept(self, suffixes) -> None:
        """Take the files now at these paths as the ones opened (not to say the same change again)."""
        self.ids.update({suffix: file_id(self.file(suffix)) for suffix in suffixes})


def disk_full(e: BaseException) -> bool:
    """SQLite's SQLITE_FULL, or ENOSPC / EDQUOT."""
    if isinstance(e, sqlite3.Error):
        return (getattr(e, "sqlite_errorcode", 0) & 0xFF) == 13 or "disk is full" in str(e)
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class Reserve:
    """Space set aside beside the outbox (`<outbox>.reserve`, allocated, not sparse) for a full
    disk: released when a write meets one, so events go on being stored on disk, where a kill
    cannot lose them, instead of in memory; set aside again once there is room for it twice."""

    RETRY_S = 60.0  # how often a missing reserve is tried again (a full disk is checked no more often)

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size, self.released = path, int(size), 0
        self._next_try, self._said = 0.0, None
        self._lock = threading.Lock()

    def keep(self) -> None:
        """Set the reserve aside if it is not (tried at most every RETRY_S, and only with room for
        it twice); said when it cannot be, once per cause."""
        if self.size <= 0 or time.monotonic() < self._next_try:
            return
        self._next_try = time.monotonic() + self.RETRY_S
        if self.held():
            return
        try:
            if not self.room():
                raise OSError(errno.ENOSPC, f"less than twice its size free in {self.path.parent}")
            self.make()
        except OSError as e:
            if str(e) != self._said:
                self._said = str(e)
                log.warning("the outbox's reserve %s (%.1f MB) cannot be set aside (%s%s): a full disk would hold "
                            "events in memory only, where a kill loses them", self.path, self.size / 1e6, e,
                            durable.out_of_inodes(self.path.parent) if disk_full(e) else "")
            return
        if self.released or self._said:
            log.warning("the outbox's reserve %s (%.1f MB) is set aside again", self.path, self.size / 1e6)
        self._said = None

    def free(self, e: BaseException, kept: str = "events go on being stored") -> bool:
        """A write met a full disk: release the reserve so that it can be retried (True), said
        (`kept`: what goes on being stored on disk; the outbox's events, or agent/request_journal.py's
        requests, which lie beside it)."""
        inodes = durable.out_of_inodes(self.path.parent) if disk_full(e) else ""  # (before the release frees one)
        if not disk_full(e) or not self.release():
            return False
        self._next_try = time.monotonic() + self.RETRY_S
        log.error("the outbox's disk is full (%s%s): its reserve %s (%.1f MB) is released, so %s on disk. Free "
                  "space there; the reserve is set aside again once there is room for it twice", e, inodes, self.path,
                  self.size / 1e6, kept)
        return True

    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size > 0
        except FileNotFoundError:
            return False

    def room(self) -> bool:
        """Whether the file system has twice the reserve free (so setting it aside leaves room)."""
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize >= 2 * self.size

    def make(self) -> None:
        """Allocate it (under a temporary name, then renamed). Raises OSError."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def release(self) -> bool:
        """Delete it (True if it was there). (From the outbox's writers and the request journal's.)"""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            self.released += 1
            return True

    def status(self) -> dict:
        return {"bytes": self.size, "held": self.held(), "released": self.released}


class OutboxInUse(OSError):
    """Another agent holds this outbox."""


class AgentLock:
    """One agent per outbox: a lock (flock) on `<outbox>.lock`, held while the agent runs. A second
    agent on the outbox (started by hand beside the service) would count the same sequence numbers
    as the first and send its events too. The kernel releases it however the process ends: a kill
    leaves no stale lock (how the run ended is kept apart: `run`, agent/run_record.py)."""

    CHECK_S = 1.0  # how often check() looks at the lock file

    def __init__(self, outbox: str | Path) -> None:
        outbox = Path(outbox)
        self.path, self.outbox, self._fd = outbox.with_name(outbox.name + ".lock"), outbox, -1
        self._next_check, self._lost, self.run = 0.0, False, RunRecord(outbox)  # (how the run before ended)

    def acquire(self) -> None:
        """Take the lock, or raise OutboxInUse naming the holder. A lock file that cannot be made
        (a full disk) is said and the agent goes on: inspections must not stop for it."""
        try:
            private_file(self.path)
            fd = os.open(self.path, os.O_RDWR)
        except OSError as e:
            log.warning("cannot make the lock file %s (%s): a second agent on this outbox would not be refused",
                        self.path, e)
            return self.run.start()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "its pid not written"
            os.close(fd)
            raise OutboxInUse(f"outbox {self.outbox} is in use by another agent ({holder}): is the service running "
                              "already (systemctl status adgan-agent)? Two agents on one outbox would repeat "
                              "sequence numbers; stop the other one, or give this one its own outbox.path") from None
        self._fd = fd
        self.run.start()
        try:  # who holds it, for the message above (a full disk leaves it empty: the lock holds anyway)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode(), 0)
        except OSError:
            pass

    def holder(self) -> str | None:
        """Who holds the lock now (another process), or None; takes nothing and makes no file."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "its pid not written"
        finally:
            os.close(fd)  # (releases the shared lock if it was taken)

    def check(self) -> None:
        """The run is alive (agent/run_record.py). The lock is taken again if its file was deleted or
        replaced under a running agent (a person cleaning up a lock that looks stale): the lock held
        stays on the deleted file, and a second agent would make a new one and run beside this one.
        Said once per time; another agent that took the new file first is an error, said once until it goes."""
        self.run.alive()
        if self._fd < 0 or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self.CHECK_S
        try:
            if durable.still_at(self.path, self._fd):
                return
        except OSError:
            return
        old, self._fd = self._fd, -1
        try:
            self.acquire()
        except OutboxInUse as e:
            self._fd = old  # keep checking: the other one may let go
            if not self._lost:
                self._lost = True
                log.error("the lock file %s was deleted or replaced while this agent ran, and %s", self.path,
                          str(e)[0].lower() + str(e)[1:])
            return
        os.close(old)
        if self._fd >= 0:
            self._lost = False
            log.warning("the lock file %s was deleted or replaced while this agent ran (by hand?): the lock is "
                        "taken again, so a second agent on this outbox is still refused; do not delete it, the "
                        "kernel releases it when the agent ends", self.path)
        else:
            self._fd = old  # (acquire said why no file could be made)

    def release(self, cause: str | None = None) -> None:
        self.run.stopped(cause)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
