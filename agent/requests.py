"""What the agent is asked for from outside its loop (MQTT, OPC UA, GPIO): class switches and
inspections, taken in turn, and every requested inspection answered, once, in the order asked.

The Agent's methods for them (a mixin of agent/service.py): the handlers run on the
commands' threads (paho's, asyncua's, the GPIO watch) and hand over through thread-safe
objects (ExpectedClass, CommandTrigger); the loop applies and answers them. A part that came
while trigger.max_pending inspections waited is answered in its turn with an error event;
so is every request still waiting when the agent stops (until 2026-12-06 those were left
without a word: the PLC saw busy fall, or its request time out, with no verdict).
"""
from __future__ import annotations

import logging
import time

from agent.health import Work

log = logging.getLogger(__name__)


class Requests:
    # -- handlers (the commands' threads) -------------------------------------------------
    def _on_class_command(self, payload: bytes) -> None:
        self.classes.request(payload)

    def _class_refused(self) -> int:
        self.counters.add("classes_refused")
        return self.counters.get("classes_refused")

    def _on_trigger_command(self, payload: bytes = b"") -> bool:
        """An inspection requested (MQTT trigger/set, OPC UA Trigger()); False when coalesced."""
        taken = self.commands.request()
        if not taken:  # one is already waiting: the burst is one inspection, and its state is said already
            self.counters.add("triggers_coalesced")  # (echoing each would answer a flood with a flood)
            return False
        self.publisher.publish_state("trigger", "pending")
        return True

    def _on_part_edge(self) -> bool:
        """A part's edge on the GPIO trigger line: one part, answered in its turn (False: it will
        be answered as not inspected)."""
        return self.commands.request(part=True)

    # -- the loop -------------------------------------------------------------------------
    def _apply_class_request(self) -> None:
        switched = self.classes.apply()
        if switched is None:
            return
        if switched:
            self.expected = self.classes.name
            self.passage.reset()
        self.publisher.publish_state("class", self.expected)

    def _answer_skipped(self) -> None:
        """An error event for each part that came while max_pending inspections waited, in its turn."""
        while (skipped := self.commands.skipped()) is not None:
            n, reason = skipped
            self.counters.add("parts_not_inspected", n)
            self._error(self._asked(), reason)

    def _answer_left(self) -> None:
        """At a stop: an error event for each request still waiting (and each part not inspected).
        Never raises: the rest of the shutdown (the flush, the outbox) must happen all the same."""
        left = self.commands.left(self._stop_cause or "asked to")
        try:
            for n, reason in left:
                self.counters.add("parts_not_inspected", n or 1)
                self._error(self._asked(), reason)
        except Exception:
            log.exception("%d requests still waiting at the stop could not all be answered", len(left))

    def _asked(self) -> Work:
        """The work of a requested inspection that has no frame."""
        return Work(time.monotonic(), time.time(), forced=True, source={"type": self.s.source.type})
