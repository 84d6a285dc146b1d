"""What the agent is asked for from outside its loop (MQTT, OPC UA, GPIO): class switches and
inspections, taken in turn, and every requested inspection answered, once, in the order asked.

The Agent's methods for them (a mixin of agent/service.py): the handlers run on the
commands' threads (paho's, asyncua's, the GPIO watch) and hand over through thread-safe
objects (ExpectedClass, CommandTrigger); the loop applies and answers them. A part (a GPIO
edge, or a trigger/set naming its part_id, echoed in its event) that came while
trigger.max_pending inspections waited is answered in its turn with an error event;
so is every request still waiting when the agent stops (until 2026-12-06 those were left
without a word: the PLC saw busy fall, or its request time out, with no verdict), and at the
next start every request a kill left unanswered (agent/request_journal.py).
"""
from __future__ import annotations

import json
import logging
import re
import signal
import time

from agent.health import Work
from agent.mqtt.frozen import boot_clock
from agent.mqtt.link import reading_batch
from agent.mqtt.outbox import Outbox
from agent.request_journal import RequestJournal
from agent.trigger import Asked

log = logging.getLogger(__name__)


class Requests:
    def _wire_commands(self, c) -> None:
        """The MQTT commands' handlers (agent/mqtt/commands.py's Commands), before the publisher starts."""
        c.on_refused = {"trigger": self._on_trigger_refused, "class": self._refuse_class}
        c.on_held = {"trigger": self._on_trigger_held}  # (class/set: made, the PLC asked)
        c.barrier = self.commands.barrier  # (the journal, before paho's acknowledgements)
        c.seed(self.commands.journal.keys)  # (what the broker sends again after a kill: taken)
        c.ran_before = not self.outbox.fresh  # (a first connection with no session kept: said)
        c.wait_at_most(self.s.trigger.max_wait_s)  # (a freeze that long fences what came meanwhile)

    # -- handlers (the commands' threads) -------------------------------------------------
    def _on_class_command(self, payload: bytes) -> None:
        """A class switch (MQTT class/set, OPC UA ExpectedClass), made in its turn after the
        inspections requested before it."""
        if not self.commands.switch(bytes(payload), key=self.publisher.commands.taking()):
            self._refuse_class(f"{self.commands.MAX_WAITING} requests wait ahead of it (a flood of commands)")

    def _refuse_class(self, why: str) -> None:
        """A class/set refused as it came (too large, or a flood): counted, and the class in force echoed."""
        self.classes.refuse(f"class/set refused: {why}")
        self.publisher.publish_state("class", self.expected)

    def _class_refused(self) -> int:
        self.counters.add("classes_refused")
        return self.counters.get("classes_refused")

    def _on_trigger_command(self, payload: bytes = b"") -> bool:
        """An inspection requested (MQTT trigger/set, OPC UA Trigger()); False when coalesced, or
        for a part (a payload naming its part_id), when it will be answered as not inspected."""
        part, part_id, problem = part_request(payload)
        key = self.publisher.commands.taking()  # (a trigger/set's identity, kept across a kill)
        if problem is not None:  # a part's request that cannot be taken: answered in its turn
            self.commands.refuse(problem, key=key)
            return False
        taken = self.commands.request(part=part, part_id=part_id, key=key)
        if not taken:  # one is already waiting: the burst is one inspection, and its state is said already
            if not part:  # (echoing each would answer a flood with a flood)
                self.counters.add("triggers_coalesced")
            return False
        self._echo_trigger()
        return True

    def _echo_trigger(self) -> None:
        """trigger/state: `pending` while a request is not yet answered, else `idle`; said from the
        commands' threads and the loop in turn, so the last word is the state now (a request's echo,
        delayed by the journal's flush, came after its answer's `idle`, and the state read pending)."""
        with self._trigger_echo:
            self.publisher.publish_state("trigger", "pending" if self.commands.unanswered else "idle")

    def _on_trigger_refused(self, why: str) -> None:
        """A trigger/set refused as it came (too large): a request all the same, answered in its turn."""
        self.commands.refuse(f"requested inspection not made: its trigger/set was refused ({why})",
                             key=self.publisher.commands.taking())

    def _on_trigger_held(self, payload: bytes = b"") -> None:
        """A trigger/set the broker held while the agent was away (agent/mqtt/commands.py): not
        inspected (by now its part has left the camera, and another may be there), answered in its
        turn with an error event that echoes its part_id (before 2026-12-06 the broker dropped it)."""
        part, part_id, problem = part_request(payload)
        kind = "a part not inspected" if part else "requested inspection not made"
        held = self.publisher.commands.held_why or HELD  # (or: it came while the process did not run, frozen.py)
        self.commands.refuse(f"{problem}; {held}" if problem else f"{kind}: {held}", part_id,
                             key=self.publisher.commands.taking(), lines=False)  # (as a kill's leftovers)
        self._echo_trigger()

    def _on_part_seen(self, at: float) -> None:
        """A part's edge on the GPIO trigger line, at monotonic time `at`: class switches made
        from now on wait for it."""
        self.commands.announce(at)

    def _on_part_late(self, at: float, late_s: float) -> None:
        """A part's edge read `late_s` after its inspection was due (trigger.max_wait_s or more): not
        inspected (by now it has left the camera), answered in its turn; its error line is pulsed."""
        self.commands.refuse(f"a part not inspected: its trigger edge was read {late_s:.1f} s after its inspection "
                             "was due (delay_ms after the edge): the agent's process did not run meanwhile (stopped, "
                             "or frozen), and by now the part has left the camera", at=at)

    def _on_part_edge(self, at: float | None = None) -> bool:
        """A part's inspection requested, delay_ms after its edge at `at`: one part, answered in its
        turn (False: it will be answered as not inspected)."""
        return self.commands.request(part=True, at=at)

    # -- the loop -------------------------------------------------------------------------
    def _answer_ahead(self) -> None:
        """What waits ahead of the next requested inspection, in order: class switches made, and an
        error event for each part that came while max_pending inspections waited."""
        while True:
            if (payload := self.commands.switched()) is not None:
                self._switch_class(payload)
                self.commands.made()
            elif (skipped := self.commands.skipped_request()) is not None:
                n, reason, part_id, r, lines = skipped
                self.counters.add("parts_not_inspected", n)
                self._error(self._asked(part_id, r, lines), reason)
            else:
                return

    def _take(self, timeout: float) -> Asked | None:
        """The next requested inspection (CommandTrigger.take), or None; one that waited for its turn
        more than trigger.max_wait_s is answered as not inspected instead (None): by now its part has
        likely left the camera. Until 2026-12-07 it was inspected on the frame of its late turn, under
        its id: on a disk that took 3 s to flush, a part asked for 17.6 s before had the verdict of
        whatever stood there then."""
        asked = self.commands.take(timeout)
        if asked is None or (waited := self._waited(asked)) is None:
            return asked
        self._answer_late(asked, self._asked(asked.part_id, asked.r, asked.lines),
                          f"it waited {waited:.1f} s for its turn", "the inspection loop or the disk held it: "
                          "status.loop, status.outbox.slow_writes")
        return None

    def _frame_late(self, asked: Asked, work: Work) -> bool:
        """Whether the frame read for `asked` came more than trigger.max_wait_s after its request (a
        camera slow to deliver): then answered as not inspected (until 2026-12-07 it was inspected)."""
        if (waited := self._waited(asked)) is None:
            return False
        self._answer_late(asked, work, f"its frame came {waited:.1f} s after its request",
                          "the camera was slow to deliver it")
        return True

    def _waited(self, asked: Asked) -> float | None:
        """How long `asked` has waited since its request, when more than trigger.max_wait_s (0: no limit);
        on the boot clock, which counts a machine suspended meanwhile (the monotonic clock stops)."""
        limit, waited = self.s.trigger.max_wait_s, boot_clock() - asked.since
        return waited if limit and waited > limit else None

    def _answer_late(self, asked: Asked, work: Work, what: str, cause: str) -> None:
        self.counters.add("requests_late")
        self.counters.add("parts_not_inspected", asked.part)
        kind = "a part not inspected" if asked.part else "requested inspection not made"
        self._error(work, f"{kind}: {what}, more than trigger.max_wait_s ({self.s.trigger.max_wait_s:g} s), and by "
                          f"now the part has likely left the camera ({cause})")

    def _switch_class(self, payload: bytes) -> None:
        if self.classes.apply(payload):
            self.expected = self.classes.name
            self.passage.reset()
        self.publisher.publish_state("class", self.expected)

    def _answer_left(self) -> None:
        """At a stop: an error event for each request still waiting (and each part not inspected),
        and the class switches among them made, in order (the PLC asked for them: a restart
        expects the class switched to). Never raises: the rest of the shutdown (the flush, the
        outbox) must happen all the same."""
        left = self.commands.left(self._stop_cause or "asked to")
        try:
            for a in left:
                if a.switch is not None:
                    self._switch_class(a.switch)
                    continue
                self.counters.add("parts_not_inspected", a.skipped)
                self._error(self._asked(a.part_id, a.r, a.lines), a.why)
        except Exception:
            log.exception("%d requests still waiting at the stop could not all be answered", len(left))
        if self.commands.journal is not None:  # (what is left for the next start, written before the flush)
            self.commands.save(wait=True)

    def _asked(self, part_id: str | None = None, request: int = 0, lines: bool = True) -> Work:
        """The work of a requested inspection that has no frame (`lines`: Work.lines)."""
        return Work(time.monotonic(), time.time(), forced=True, source={"type": self.s.source.type},
                    part_id=part_id, request=request, lines=lines)

    # -- start and stop -------------------------------------------------------------------
    def _open_outbox_journal(self) -> None:
        """The outbox, and the requests the run before left unanswered (answered once the
        publisher runs: `_answer_leftovers`); new requests are numbered above both."""
        o = self.s.outbox
        self.outbox = Outbox(o.path, o.max_events, o.memory_events, int(o.reserve_mb * 1e6))
        pending = len(self.outbox)
        if pending:
            log.info("outbox holds %d unacknowledged events from before; they are sent on connect", pending)
        journal = RequestJournal(o.path, self.outbox.reserve)  # (a full disk: the reserve's room, as for events)
        self._leftovers = journal.start(self.outbox.answered)  # (their trigger/sets: `publisher.commands.seed`)
        journal.defer = reading_batch  # (paho's thread writes a batch's requests once, at its barrier)
        self.commands.journal = journal

    def _answer_leftovers(self) -> None:
        """An error event for each request a kill (a power cut, the watchdog) left unanswered, in
        the order asked, its part_id echoed; before any new request is answered."""
        left, self._leftovers = self._leftovers, []
        for o in (o for o in left if o.switch is not None):  # made first, in order (their parts are not inspected)
            log.warning("a class switch the last run took was not made (it was killed, or the power cut): made now")
            self._switch_class(o.switch.encode())
        # kept until each is answered (a kill meanwhile leaves the others); the switches' keys kept as recent
        self.commands.adopt(left)  # (a resend of one after another kill is not made again)
        left = [o for o in left if o.switch is None]
        if left:
            log.warning("%d requests the last run took were not answered (it was killed, or the power cut): each "
                        "is answered now with an error event", len(left))
        for o in left:  # (not on the GPIO verdict lines: these parts have passed, Work.lines)
            self.counters.add("parts_not_inspected", o.n)  # (as at a stop: each request not made)
            self._error(self._asked(o.part_id, o.r, lines=False), o.reason())

    def request_stop(self, signum: int | None = None, *_) -> None:
        """Stop after the current frame (a signal handler, or called)."""
        if signum is not None and self._stop_cause is None:
            self._stop_cause = signal.Signals(signum).name
        self.stop_requested.set()


HELD = ("the broker held its trigger/set while the agent was away (stopped, killed or cut off from the broker); by "
        "now the part has left the camera")
PART_ID = re.compile(r"[A-Za-z0-9._:/#+-]{1,64}")


def part_request(payload: bytes) -> tuple[bool, str | None, str | None]:
    """(a part?, its id, why it cannot be taken) for a trigger/set payload. A JSON object with a
    `part_id` (1-64 of A-Z a-z 0-9 . _ : / # + -, or a whole number) is one part, never coalesced
    with another and echoed in its event; anything else ("go", empty) asks for an inspection as
    before and bursts of it are coalesced. A payload that names a part_id and is not JSON (single
    quotes, a brace short: a part's request, botched) is a part not inspected, said: until 2026-12-07
    it was inspected as a plain request, without its id, and a burst of them was coalesced."""
    if not payload.lstrip().startswith(b"{"):
        return False, None, None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        if b"part_id" not in payload:
            return False, None, None
        shown = json.dumps(bytes(payload[:80]).decode("utf-8", "replace"))
        return True, None, (f"a part not inspected: its trigger/set names a part_id and is not JSON: {shown}"
                            f"{'...' if len(payload) > 80 else ''}")
    if not isinstance(doc, dict) or "part_id" not in doc:
        return False, None, None
    pid = doc["part_id"]
    if isinstance(pid, int) and not isinstance(pid, bool) and 0 <= pid < 10 ** 64:
        pid = str(pid)
    if isinstance(pid, str) and PART_ID.fullmatch(pid):
        return True, pid, None
    shown = json.dumps(pid)
    return True, None, (f"a part not inspected: its trigger/set part_id {shown[:80]}{'...' if len(shown) > 80 else ''}"
                        " is not 1-64 of A-Z a-z 0-9 . _ : / # + - nor a whole number")
