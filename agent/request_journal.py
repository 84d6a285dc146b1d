"""Requests kept across kills: every requested inspection is answered, also after a kill.

A PLC's request (trigger/set, OPC UA Trigger()/TriggerPart(), a part's GPIO edge) is taken in
memory (agent/trigger.py's CommandTrigger) and answered in its turn by one event. Until
2026-12-06 a kill, a power cut or the watchdog's restart lost every request still waiting, and
the one being inspected, without a word: the broker had acknowledged the trigger/set, and its
part never had a verdict. Now the requests not yet answered are kept in `<outbox>.requests`
(JSON, replaced whole and flushed on every change; a trigger/set before paho acknowledges it),
and a start answers each that the run before left, in order, with an `error` event that echoes
its part_id ("... the agent stopped before answering it ...").

No request is answered twice: each has a number, and the event that answers it stores the
number in the outbox's database in the same transaction as itself (outbox.py, `answered`), so
a kill between that event and the rewrite of this file is seen at the next start. A request is
numbered above every number answered before, also when this file was lost.

A write that meets a full disk releases the outbox's reserve (agent/mqtt/files.py's Reserve: the
journal lies beside the outbox) and is tried once more, as an event's store is: a request often
comes before the first event to meet the full disk, and until 2026-12-06 it was then kept in memory
only, where a kill lost it. A file that still cannot be written (a full or read-only disk) leaves
the requests in memory, where they are answered as before: said (ERROR, at most once a minute) and
in `status.requests.journal`.
A file that cannot be read at start is said, moved aside, and nothing is answered from it; until
the agent stops, `status.requests.journal.unreadable` says where it went and why (since
2026-12-06: before, only the log said it, and the requests it held went unanswered unseen).
A GPIO part is kept from its edge on (within its delay_ms, its inspection not yet requested).
A class switch waiting its turn among the requests is kept too (`Open.switch`), until it is made
and stored (agent/decide/expected.py), and a start makes it, as a stop does: until 2026-12-06 a kill
lost it without a word (its class/set acknowledged), and the new product's parts were scored by the
old product's model.
Requests over MQTT and OPC UA are written before they are acknowledged and before the loop may act
on them (trigger.py's `Asked.ready`): over OPC UA by the thread that takes them; over MQTT once for
each batch of messages paho's network thread reads, by the journal's own thread, waited for at the
batch's barrier before paho writes the acknowledgements (agent/mqtt/link.py; until 2026-12-06 each
trigger/set was written on its own, two flushes, and a held backlog of 950 on a disk flushing in 30 ms
took ~115 s, near the fence's 120 s cap). Every other change is written by the journal's own thread
(`keep(wait=False)`), so neither the GPIO watch nor the loop waits for a slow disk's flush.
"""
from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent import durable
from agent.mqtt.events import utc_iso
from agent.mqtt.files import disk_full

log = logging.getLogger(__name__)

SUFFIX = ".requests"
MAX_BYTES = 64 << 20  # the queue is bounded (agent/trigger.py): a bigger file is not one
LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Open:
    """A request not yet answered, as the journal keeps it."""

    r: int                   # its number
    part_id: str | None      # the part's id (several, comma-joined, for merged parts not inspected)
    part: bool               # a part (a GPIO edge or a named request), not a plain inspection request
    n: int                   # how many parts the entry stands for (merged parts not inspected)
    why: str | None          # the error it is answered with (parts not inspected); None: an inspection
    at: float                # when it was requested (wall clock)
    key: str | None = None   # the trigger/set message's identity (agent/mqtt/commands.py's message_key; merged
                             # parts: theirs, comma-joined)
    switch: str | None = None  # a class switch (its class/set payload), waiting its turn: made at the next start

    def reason(self) -> str:
        """The error that answers it at the next start."""
        stopped = (f"the agent stopped before answering it (requested at {utc_iso(self.at, 'seconds')}; a kill, a "
                   "power cut or the watchdog's restart)")
        if self.why is not None:
            return f"{self.why}; said after a restart: {stopped}"
        return f"{'a part not inspected' if self.part else 'requested inspection not made'}: {stopped}"

    def to_json(self) -> dict:
        d = {"r": self.r, "part_id": self.part_id, "part": self.part, "n": self.n, "why": self.why, "at": self.at}
        if self.key:
            d["key"] = self.key
        if self.switch is not None:
            d["switch"] = self.switch
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Open":
        r, pid, n, why, at, key = d["r"], d.get("part_id"), d.get("n", 1), d.get("why"), d.get("at", 0.0), d.get("key")
        switch = d.get("switch")
        if not (isinstance(r, int) and r >= 1 and (pid is None or isinstance(pid, str)) and isinstance(n, int)
                and (why is None or isinstance(why, str)) and isinstance(at, (int, float))
                and (key is None or isinstance(key, str)) and (switch is None or isinstance(switch, str))):
            raise ValueError(f"not a request: {str(d)[:200]}")
        return cls(r, pid, bool(d.get("part", pid is not None)), n, why, float(at), key, switch)


def journaled(now: bool = False):
    """For a CommandTrigger method that changes what waits (agent/trigger.py): its journal is
    written after it, outside its lock, by the journal's own thread (the GPIO watch and the loop do
    not wait for a slow disk's flush); with `now`, by the caller before it returns, unless the call
    comes with a GPIO edge's `at` (a request over MQTT or OPC UA: on disk before the broker or the
    client is told it was taken)."""
    def wrap(method):
        @functools.wraps(method)
        def kept(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            finally:
                if self.journal is not None:
                    self.save(wait=now and kwargs.get("at") is None)
        return kept
    return wrap


def journal_path(outbox: str | Path) -> Path:
    outbox = Path(outbox)
    return outbox.with_name(outbox.name + SUFFIX)


class RequestJournal:
    """`<outbox>.requests`: the requests not yet answered, for the next start to answer."""

    def __init__(self, outbox: str | Path, reserve=None) -> None:
        self.path = journal_path(outbox)
        self.reserve = reserve               # the outbox's Reserve (released by a write that meets a full disk)
        self.next = 1
        self.error: str | None = None       # the last write's error, None once a write succeeds
        self.unsaved = 0                     # writes that failed
        self._lock = threading.Lock()        # (writes come from paho's, asyncua's, the GPIO and the loop's threads)
        self._written = -1                   # the version of the snapshot last written
        self._text: str | None = None        # and its text
        self._next_log = 0.0
        self._later = None                   # the newest snapshot for the writer thread, if any
        self._busy = False                   # the writer thread is writing one
        self._wake = threading.Condition()
        self._writer: threading.Thread | None = None
        self._no_writer = False              # the writer thread could not start (said once)
        self.keys: list[str] = []            # the trigger/sets the run before took, answered or not (message keys)
        self.unreadable: dict | None = None  # the file the start could not read: where it went, why, when
        self.defer: Callable[[], bool] | None = None  # whether the calling thread's writes wait for a barrier
        self._tried = 0                      # the newest version a write was tried for (written, or failed)
        self.left = self._read()             # what the run before left unanswered

    def _read(self) -> list[Open]:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                raise ValueError(f"over {MAX_BYTES} bytes")
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("open"), list):
                raise ValueError("not a request journal")
            left = sorted((Open.from_json(d) for d in doc["open"]), key=lambda o: o.r)
            self.next = max([int(doc.get("next", 1)), *(o.r + 1 for o in left)])
            recent = doc.get("recent", [])
            if not isinstance(recent, list) or not all(isinstance(k, str) for k in recent):
                raise ValueError("its recent keys are not a list of strings")
            self.keys = [*(k for o in left if o.key for k in o.key.split(",")), *recent]
            return left
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            try:
                self.path.replace(aside)
            except OSError:
                aside = self.path
            log.error("the requests the last run left unanswered cannot be read from %s (%s): moved to %s; requests "
                      "it held, if any, are not answered", self.path, e, aside)
            self.unreadable = {"moved_to": str(aside), "error": f"{type(e).__name__}: {e}"[:300],
                               "at": utc_iso(time.time(), "seconds")}
            return []

    def start(self, answered: int) -> list[Open]:
        """The requests the run before left unanswered: those whose answer the outbox does not hold
        (`answered`: the highest request number answered there). New numbers continue above both."""
        left = [o for o in self.left if o.r > answered]
        self.next = max(self.next, answered + 1)
        self.left = []
        return left

    def number(self) -> int:
        """A new request's number (under the caller's lock)."""
        r = self.next
        self.next += 1
        return r

    def keep(self, version: int, entries: list[Open], next_r: int, wait: bool = True,
             recent: list[str] | None = None) -> None:
        """Write the snapshot `version` (the requests open now, and the `recent` keys of the trigger/sets
        answered last), unless a newer one was written; without `wait`, by the writer thread (the newest
        snapshot handed to it, soon)."""
        if not wait:
            with self._wake:
                self._later = (version, entries, next_r, True, recent)
                if self._writer is None:
                    writer = threading.Thread(target=self._write_later, name="request-journal", daemon=True)
                    try:
                        writer.start()
                        self._writer = writer
                    except RuntimeError as e:  # (no thread: a unit's TasksMax= reached): written here and now
                        self._later = None     # (until 2026-12-07 never written: an unstarted writer was kept)
                        if not self._no_writer:
                            log.error("no thread to write the requests waiting to %s (%s): written by the thread "
                                      "that takes them, which waits for the disk meanwhile", self.path, e)
                        self._no_writer = True
                if self._writer is not None:
                    self._wake.notify_all()  # (the writer, and any settle waiting)
                    return
        with self._lock:
            try:
                self._keep(version, entries, next_r, recent)
            finally:
                self._tried = max(self._tried, version)

    def _keep(self, version: int, entries: list[Open], next_r: int, recent: list[str] | None) -> None:
        if version <= self._written:
            return
        doc = {"next": next_r, "open": [o.to_json() for o in entries], **({"recent": recent} if recent else {})}
        text = json.dumps(doc, separators=(",", ":"))
        if text == self._text:
            self._written = version
            return
        room = (lambda e: self.reserve.free(e, "the requests waiting are kept")) if self.reserve else None
        try:
            durable.write_text(self.path, text + "\n", room, mode=0o600)  # (like the outbox's: whatever the umask)
        except OSError as e:
            self.unsaved += 1
            self.error = f"{type(e).__name__}: {e}"
            now = time.monotonic()
            if now >= self._next_log:
                self._next_log = now + LOG_EVERY_S
                inodes = durable.out_of_inodes(self.path.parent) if disk_full(e) else ""
                log.error("the requests waiting cannot be kept in %s (%s%s): they are answered as long as the agent "
                          "runs, but a kill would leave them unanswered (%d writes failed; said at most every "
                          "%.0f s)", self.path, e, inodes, self.unsaved, LOG_EVERY_S)
            return
        if self.error is not None:
            log.warning("the requests waiting are kept in %s again", self.path)
        self._written, self._text, self.error = version, text, None

    def _write_later(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._later is not None)
                job, self._later, self._busy = self._later, None, True
            try:
                self.keep(*job)
            except Exception:  # (an OSError is said by keep; anything else must not end this thread unsaid)
                log.exception("writing the requests waiting to %s failed", self.path)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def tried(self, version: int, timeout: float) -> bool:
        """Wait (bounded) until a write of snapshot `version` or a newer one was tried (written, or said
        unwritable): a batch's barrier (agent/trigger.py's `barrier`)."""
        with self._wake:
            return self._wake.wait_for(lambda: self._tried >= version, timeout)

    def deferred(self) -> bool:
        """Whether the calling thread's write may be handed to the writer thread and waited for at a
        barrier (paho's network thread reading a batch: agent/mqtt/link.py's reading_batch)."""
        return self.defer is not None and self.defer()

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) until the writer thread has written what it was handed (tests, the benchmark)."""
        with self._wake:
            return self._wake.wait_for(lambda: self._later is None and not self._busy, timeout)

    def status(self) -> dict:
        return {"path": str(self.path), "stored": self.error is None, "error": self.error,
                "failed_writes": self.unsaved, "unreadable": self.unreadable}
