"""The live verdict on `<base>/verdict` (DESIGN.md): OK or NG for a PLC that reads one topic.

A verdict is sent right after its event, and only if that event leaves within
`verdict_max_age_s` of its decision on a link that is acknowledging. It is never queued and
never replayed after an outage: a late OK could let the wrong part pass. Every verdict that is
not sent is counted ("verdicts_skipped"); the event itself always goes out, through the outbox.
"""
from __future__ import annotations

import time
from typing import Callable

VERDICTS = {"ok": "OK", "anomaly": "NG"}  # event verdict -> what the verdict topic says


class LiveVerdicts:
    """Verdicts waiting for their event to leave. `counters` is the publisher's counter dict."""

    def __init__(self, max_age_s: float, counters: dict[str, int]) -> None:
        self.max_age_s, self.counters = max_age_s, counters
        self._fresh: dict[str, tuple[str, float]] = {}  # event id -> (OK/NG, monotonic decision time)

    def decided(self, event: dict) -> None:
        """Note an event's verdict when it is decided (events without OK/NG have none)."""
        verdict = VERDICTS.get(event.get("verdict"))  # type: ignore[arg-type]
        if verdict is not None:
            self._fresh[event["event_id"]] = (verdict, time.monotonic())

    def take(self, event_id: str, stalled: Callable[[], bool]) -> str | None:
        """The verdict to publish now that its event has been handed to the broker, or None
        (no verdict, too old, or the link is not acknowledging: `stalled()`)."""
        fresh = self._fresh.pop(event_id, None)
        if fresh is None:
            return None
        verdict, decided = fresh
        if time.monotonic() - decided > self.max_age_s or stalled():
            self.counters["verdicts_skipped"] += 1
            return None
        return verdict

    def expire(self) -> None:
        """Drop (and count) verdicts whose events did not leave in time."""
        limit = time.monotonic() - self.max_age_s
        for eid in [e for e, (_, t) in list(self._fresh.items()) if t < limit]:
            if self._fresh.pop(eid, None) is not None:
                self.counters["verdicts_skipped"] += 1
