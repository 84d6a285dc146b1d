"""When to inspect on request: commands over MQTT, OPC UA and a part's GPIO edge
(`CommandTrigger`), answered in the order asked. Object passages on a continuous stream are
agent/passage.py's (`Passage`, `PassageTrigger`: here too, where they were until 2026-12-06).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from agent.mqtt.frozen import boot_clock
from agent.passage import Passage, PassageTrigger
from agent.request_journal import Open, journaled as _kept

log = logging.getLogger(__name__)

BARRIER_S = 60.0  # a batch's acknowledgements wait this long at most for the journal's write (`barrier`)

__all__ = ["Asked", "CommandTrigger", "Passage", "PassageTrigger"]  # (the passages' names here, as before)


@dataclass
class Asked:
    """One entry of CommandTrigger's queue: a requested inspection (`skipped` 0), `skipped` parts
    not inspected, answered with the error `why` (a bad request: its reason), or a class switch
    (`switch`: the class/set payload)."""
    part_id: str | None = None  # the PLC's id of the part (trigger/set {"part_id": ...}), echoed in its event
    skipped: int = 0
    why: str | None = None
    more_ids: int = 0           # ids of merged parts not kept (beyond MAX_IDS_KEPT)
    switch: bytes | None = None
    arrived: float = 0.0        # a switch's monotonic time (parts seen before it go ahead of it)
    since: float = 0.0          # when an inspection was asked, on the boot clock: its wait (trigger.max_wait_s)
    r: int = 0                  # a request's number in the journal (agent/request_journal.py); 0: none
    part: bool = False          # a part (a GPIO edge, a named request), not a plain inspection request
    at: float = 0.0             # when it was requested (wall clock)
    key: str | None = None      # its trigger/set message's identity (a resend after a kill is dropped; merged: several,
                                # comma-joined)
    ready: bool = True          # False until the journal holds it (a request over MQTT or OPC UA): not taken before
    lines: bool = True          # its answer is shown on the GPIO verdict lines (not for a part that has passed)

    @property
    def inspection(self) -> bool:
        return not self.skipped and self.switch is None


class CommandTrigger:
    """Inspections requested over MQTT (`.../trigger/set`), OPC UA (Trigger()) or by a part's
    edge on the GPIO trigger line, thread-safe, answered in the order asked. At most
    `max_pending` inspections wait at a time: more requests in a burst are coalesced into
    those. A part, though (a GPIO edge, or a trigger/set naming its part_id:
    `request(part=True, part_id=...)`), is one part: one that comes while max_pending wait is
    kept in its turn as a part not inspected, for the agent to answer with an error event
    (`skipped`), so that a PLC gets one verdict per part, in order. Until 2026-12-06 it was
    dropped without a word or a count: a verdict short, and the PLC's next verdicts a part late.
    A part's request that cannot be taken (`refuse`) is answered likewise, in its turn.

    Class switches (`switch`) wait in the same queue: a part requested before a switch is
    scored by the class before it, one requested after by the new one. Until 2026-12-06 a switch
    applied at the loop's next turn, ahead of the inspections still waiting (at a product
    change the old product's last parts were scored by the new product's model), and of two
    switches made meanwhile only the last counted. Consecutive switches with nothing between
    them are one (the last); beyond MAX_WAITING entries a switch is refused.
    A GPIO part is seen at its edge (`announce`) and requested delay_ms later (`request(at=)`):
    a switch that came between is made after that part (until 2026-12-06 it came first, and the
    old product's last part, still on its way to the camera, was scored by the new model).
    With a `journal`, what waits (and what is taken and not yet `answered`) is kept on disk
    after each change, for a start after a kill to answer (agent/request_journal.py)."""

    MAX_SAID_APART = 100  # parts not inspected waiting to be said one by one; beyond, the last entry counts them
    MAX_IDS_KEPT = 1000   # part ids a merged entry names
    MAX_WAITING = 1000    # entries in the queue beyond which a class switch is refused (a flood)
    MAX_FLIGHT_S = 70.0   # a part seen and not requested after this long is forgotten (gpio.delay_ms <= 60 s)
    KEEP_ANSWERED = 100   # keys of the trigger/sets answered last, kept: paho may not have acknowledged them yet

    def __init__(self, max_pending: int = 1, journal=None) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self.journal = journal  # agent/request_journal.py's RequestJournal: what waits, kept across kills
        self._cond = threading.Condition()
        self._queue: deque[Asked] = deque()
        self._serving: dict[int, Asked] = {}  # taken off the queue, their answers not yet given (by number)
        self._adopted: dict = {}  # number -> request_journal.Open: left unanswered by the run before, being answered
        self._recent: deque[str] = deque(maxlen=self.KEEP_ANSWERED)  # keys of trigger/sets answered last
        self._version = 0
        self._in_flight: list[float] = []  # monotonic times of parts seen (GPIO edges) and not yet requested
        self._seen: dict[float, Asked] = {}  # with a journal: those parts, numbered (kept from their edge)
        self._closed = False  # after `left`: the agent stops, nothing more is taken
        self._unbarred: list[Asked] = []  # requests handed to the journal's writer, to be ready at the barrier
        self._barred_version = 0          # ... and the newest snapshot handed so
        self._making: Asked | None = None  # the class switch being made (kept in the journal until `made`)

    def _pending(self) -> int:
        return sum(a.inspection for a in self._queue)

    def _new(self, part_id: str | None, skipped: int = 0, why: str | None = None, part: bool = False,
             seen: Asked | None = None, key: str | None = None) -> Asked:
        """A request to answer, numbered in the journal (under the lock); a part `seen` at its edge
        keeps the number it was given then."""
        return Asked(part_id, skipped, why, r=seen.r if seen else self.journal.number() if self.journal else 0,
                     part=part or part_id is not None, at=seen.at if seen else time.time(), key=key,
                     since=boot_clock())

    def save(self, wait: bool = True) -> None:
        """Write what waits to the journal (each change does; a request moved from waiting to being
        answered is no change: `take` does not); `wait`: here and now, not by its thread; on paho's
        network thread reading a batch (journal.deferred()), by the journal's thread, waited for at
        the batch's `barrier`, before paho writes its acknowledgements (one write for the batch)."""
        barred = wait and self.journal.deferred()
        with self._cond:
            unready = [a for a in self._queue if not a.ready] if wait else []
        try:
            with self._cond:
                self._version += 1
                version, entries = self._version, [*self._queue, *self._serving.values(), *self._seen.values(),
                                                   *([self._making] if self._making else [])]
                snapshot = sorted([*(Open(a.r, a.part_id, a.part, max(a.skipped, 1),
                                          self._why(a) if a.skipped else None, a.at, a.key,
                                          a.switch.decode("utf-8", "replace") if a.switch is not None else None)
                                     for a in entries if a.r), *self._adopted.values()], key=lambda o: o.r)
                next_r, recent = self.journal.next, list(self._recent)
                if barred:
                    self._unbarred.extend(unready)
                    self._barred_version = version
            self.journal.keep(version, snapshot, next_r, wait and not barred, recent)
        finally:
            if unready and not barred:  # on disk now (or said unwritable, or failed): the loop may act on them.
                self._ready(unready)    # Before 2026-12-06 it could answer one first, and a kill before paho's
                                        # PUBACK had the broker send it again to the next run: answered twice

    def _ready(self, entries: list[Asked]) -> None:
        with self._cond:
            for a in entries:
                a.ready = True
            self._cond.notify_all()

    def barrier(self) -> None:
        """paho's network thread, after a batch it read and before it writes the batch's acknowledgements
        (agent/mqtt/link.py): the journal's writes of what the batch's commands brought are waited for
        (one write, where each command's two flushes came before 2026-12-06: a held backlog on a disk slow
        to flush outlasted the fence's wait), and then the loop may act on those requests."""
        with self._cond:
            unbarred, version, self._unbarred, self._barred_version = self._unbarred, self._barred_version, [], 0
        if version and not self.journal.tried(version, BARRIER_S):
            log.error("the request journal's write did not end within %.0f s (a disk that does not flush?): "
                      "the requests taken are acknowledged to the broker before they are kept", BARRIER_S)
        if unbarred:
            self._ready(unbarred)

    def _late(self, part_id: str | None, why: str | None, part: bool, seen: Asked | None = None,
              key: str | None = None) -> None:
        """A request that came after `left` (the agent stopping): with a journal, kept for the next
        start to answer (it was lost without a word before 2026-12-06)."""
        if self.journal is not None:
            a = self._new(part_id, 1 if why else 0, why, part=part, seen=seen, key=key)
            self._serving[a.r] = a

    def _place(self, at: float | None) -> int:
        """Where a request goes: at the end, or for a part seen at `at`, before the class switches
        at the end that came after it."""
        q, i = self._queue, len(self._queue)
        while at is not None and i and q[i - 1].switch is not None and q[i - 1].arrived > at:
            i -= 1
        return i

    @_kept()
    def announce(self, at: float) -> None:
        """A part seen at monotonic time `at` (a GPIO edge), to be requested later with `at`."""
        with self._cond:
            if not self._closed:
                self._in_flight.append(at)
                if self.journal is not None:  # (a kill within its delay_ms must not lose it)
                    self._seen[at] = self._new(None, part=True)

    @_kept(now=True)
    def request(self, part: bool = False, part_id: str | None = None, at: float | None = None,
                key: str | None = None) -> bool:
        """Ask for one inspection; False when max_pending already wait (the request is coalesced,
        or for a part, kept as one not inspected). A request naming its part_id is a part; one
        with `at` (a part announced then) goes ahead of the class switches made since."""
        part = part or part_id is not None
        with self._cond:
            if at is not None and at in self._in_flight:
                self._in_flight.remove(at)
            seen = self._seen.pop(at, None) if at is not None else None
            if self._closed:  # (the agent stops: kept for the next start to answer)
                self._late(part_id, None, part, seen, key)
                return False
            q, i = self._queue, self._place(at)
            before = q[i - 1] if i else None
            if self._pending() < self.max_pending:
                entry = self._new(part_id, part=part, seen=seen, key=key)
            elif not part:
                return False
            elif before is None or not before.skipped or before.why is not None or \
                    sum(a.skipped > 0 for a in q) < self.MAX_SAID_APART:
                entry = self._new(part_id, 1, part=part, seen=seen, key=key)
            else:  # a flood: merged, the ids kept in the one entry (up to a bound)
                self._merge(before, part_id, key)
                self._cond.notify_all()
                return False
            entry.ready = self.journal is None or at is not None  # (kept first, then acted on: `save`)
            q.insert(i, entry)
            self._cond.notify_all()
            return entry.inspection

    @_kept(now=True)
    def switch(self, payload: bytes, key: str | None = None) -> bool:
        """A class switch, in its turn after the requests before it (and the parts seen before
        it); False when refused (the queue holds MAX_WAITING entries). With a journal it is kept
        until it is `made` (a kill lost it before 2026-12-06), before its class/set is acknowledged."""
        with self._cond:
            tail = self._queue[-1] if self._queue else None
            if tail is not None and tail.switch is not None and not any(t > tail.arrived for t in self._in_flight):
                tail.switch, tail.key = payload, self._joined(tail.key, key)  # nothing between two switches: the
                                                                               # last counts (both class/sets known)
                tail.arrived = time.monotonic()
            elif len(self._queue) >= self.MAX_WAITING or self._closed:
                return False
            else:
                self._queue.append(Asked(switch=payload, arrived=time.monotonic(), at=time.time(), key=key,
                                         r=self.journal.number() if self.journal else 0))
            self._cond.notify_all()
            return True

    def switched(self) -> bytes | None:
        """The class switch at the head of the queue, taken off it (kept in the journal until it is
        `made`); None when something else or nothing is there."""
        with self._cond:
            if not self._queue or self._queue[0].switch is None:
                return None
            now, head = time.monotonic(), self._queue[0]
            self._in_flight = [t for t in self._in_flight if now - t < self.MAX_FLIGHT_S]
            self._seen = {t: a for t, a in self._seen.items() if t in self._in_flight}
            if any(t < head.arrived for t in self._in_flight):
                return None  # a part seen before it is on its way: it goes first
            self._making = self._queue.popleft()
            return self._making.switch

    @_kept()
    def made(self) -> None:
        """The switch `switched` gave is made (and stored): the journal lets it go."""
        with self._cond:
            if self._making is not None and self._making.key:  # (a resend after a kill is not made again: until
                self._recent.extend(self._making.key.split(","))  # 2026-12-07 one was, once the switch was made)
            self._making = None

    @_kept(now=True)
    def refuse(self, why: str, part_id: str | None = None, key: str | None = None, lines: bool = True,
               at: float | None = None) -> None:
        """A part's request that cannot be taken: answered with the error `why`, in its turn (in a
        flood, beyond MAX_SAID_APART waiting, merged into the last such answer: bounded); `at`: a
        part announced then (a GPIO edge), which keeps its number and goes ahead of later switches."""
        with self._cond:
            q = self._queue
            if at is not None and at in self._in_flight:
                self._in_flight.remove(at)
            seen = self._seen.pop(at, None) if at is not None else None
            if self._closed:
                self._late(part_id, why, True, seen, key=key)
                return
            if q and q[-1].why is not None and sum(a.skipped > 0 for a in q) >= self.MAX_SAID_APART:
                self._merge(q[-1], part_id, key)  # (until 2026-12-07 without its id: a held backlog's answers
            else:                                 # named one part in eight, and a kill lost the others' keys)
                a = self._new(part_id, 1, why, part=True, seen=seen, key=key)
                q.insert(self._place(at), a)
                a.ready, a.lines = self.journal is None or at is not None, lines  # (as `request`'s: kept first)
            self._cond.notify_all()

    def _merge(self, into: Asked, part_id: str | None, key: str | None) -> None:
        """A part merged into the entry `into` (a flood, under the lock): its id joined to those it names
        (the event's part_id), and its trigger/set's message key to its keys (a resend after a kill is
        known), up to MAX_IDS_KEPT of each (beyond, counted in more_ids: said)."""
        into.skipped += 1
        named = self._joined(into.part_id, part_id)
        if part_id is not None and named == into.part_id:  # (MAX_IDS_KEPT named already: counted)
            into.more_ids += 1
        into.part_id, into.key = named, self._joined(into.key, key)

    def _joined(self, joined: str | None, one: str | None) -> str | None:
        """`one` added to the comma-joined `joined`, unless it holds MAX_IDS_KEPT already."""
        have = joined.split(",") if joined else []
        return joined if one is None or len(have) >= self.MAX_IDS_KEPT else ",".join([*have, one])

    def take(self, timeout: float) -> Asked | None:
        """Wait up to `timeout` s for a request; the request (consumed) if there was one and
        nothing else is ahead of it (parts not inspected: `skipped`; class switches: `switched`),
        else None."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue and self._queue[0].ready, timeout) or \
                    not self._queue[0].inspection:
                return None
            a = self._queue.popleft()
            if a.r:
                self._serving[a.r] = a
            return a

    def give_back(self, asked: Asked) -> None:
        """A request taken and not served (the agent stops, the source ended): first again, for
        `left` to answer."""
        with self._cond:
            self._serving.pop(asked.r, None)
            self._queue.appendleft(asked)
            self._cond.notify_all()

    def skipped(self) -> tuple[int, str, str | None] | None:
        """`skipped_request` without the request's number."""
        one = self.skipped_request()
        return None if one is None else one[:3]

    def skipped_request(self) -> tuple[int, str, str | None, int, bool] | None:
        """(how many, why, part id, request number) for the part not inspected at the head of the queue, taken off
        it (or for many, when more than MAX_SAID_APART waited: their ids joined by commas); None
        when an inspection or nothing is there. One at a time: the others stay `waiting` while it
        is answered."""
        with self._cond:
            if not self._queue or not self._queue[0].skipped or not self._queue[0].ready:
                return None
            a = self._queue.popleft()
            if a.r:
                self._serving[a.r] = a
            return a.skipped, self._why(a), a.part_id, a.r, a.lines

    @_kept()
    def adopt(self, left) -> None:
        """Requests a run before left unanswered (request_journal.Open), kept until each is `answered`;
        its class switches, made by now, join the recent keys (until 2026-12-07 they were dropped: a
        resend after a second kill was made again)."""
        with self._cond:
            self._adopted.update((o.r, o) for o in left if o.switch is None)
            self._recent.extend(k for o in left if o.switch is not None and o.key for k in o.key.split(","))

    @_kept()
    def answered(self, r: int) -> None:
        """Request `r`'s answer is stored (in the outbox): it no longer waits."""
        with self._cond:
            done = self._serving.pop(r, None) or self._adopted.pop(r, None)
            self._adopted.pop(r, None)
            if done is not None and done.key:  # (its PUBACK may still wait behind paho's reading: a kill now
                self._recent.extend(done.key.split(","))  # and the broker sends it again; the next start drops it)

    def _why(self, a: Asked) -> str:
        more = f"; the ids of {a.more_ids} more are not kept" if a.more_ids else ""
        if a.why is not None:
            return a.why if a.skipped == 1 else f"{a.skipped} parts not inspected, the first said: {a.why}{more}"
        n = a.skipped
        return f"{'a part' if n == 1 else f'{n} parts'} not inspected: the trigger came while {self.max_pending} " \
               "inspection(s) waited (parts come faster than they are inspected; trigger.max_pending)" + more

    @_kept()
    def left(self, cause: str) -> list[Asked]:
        """At a stop: everything still waiting, in order, all taken off, each request's `why` said:
        a requested inspection not made (`skipped` 1), parts not inspected as for `skipped`, and
        class switches (to be made all the same: the PLC asked for them)."""
        with self._cond:
            not_made = f"requested inspection not made: the agent stopped ({cause})"
            for t in self._in_flight:  # parts seen, their delay not yet over: ahead of the switches made since
                seen = self._seen.pop(t, None)
                self._queue.insert(self._place(t), self._new(None, 1, not_made, part=True, seen=seen))
            self._in_flight.clear()
            self._seen.clear()
            for a in self._queue:
                if a.inspection:
                    a.skipped, a.why = 1, not_made
                elif a.skipped:
                    a.why = self._why(a)
            said = list(self._queue)
            self._serving.update((a.r, a) for a in said if a.r and a.switch is None)
            self._queue.clear()
            self._closed = True
            return said

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending()

    def status(self) -> dict:
        """What waits (status.requests): inspections, answers of parts not inspected, class
        switches, and GPIO parts seen and not yet requested (within their delay_ms)."""
        with self._cond:
            return {"inspections": self._pending(), "parts_not_inspected": sum(a.skipped for a in self._queue),
                    "class_switches": sum(a.switch is not None for a in self._queue), "in_flight": len(self._in_flight),
                    "journal": self.journal.status() if self.journal else None}

    @property
    def unanswered(self) -> bool:
        """Whether a request is not yet answered: waiting, or being inspected (taken, with a journal)."""
        with self._cond:
            return any(a.switch is None for a in self._queue) or bool(self._serving)

    @property
    def waiting(self) -> bool:
        """Whether anything is still to be answered (inspections or parts not inspected)."""
        with self._cond:
            return any(a.switch is None for a in self._queue)
