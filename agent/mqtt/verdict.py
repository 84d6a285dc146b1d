"""The live verdict on `<base>/verdict` (DESIGN.md): OK or NG for a PLC that reads one topic.

A verdict is sent right after its event, and only if that event leaves within
`verdict_max_age_s` of its decision on a link that is acknowledging. It is never queued and
never replayed after an outage: a late OK could let the wrong part pass. Every verdict that is
not sent is counted ("verdicts_skipped"); the event itself always goes out, through the outbox.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger(__name__)

VERDICTS = {"ok": "OK", "anomaly": "NG"}  # event verdict -> what the verdict topic says


class LiveVerdicts:
    """Verdicts waiting for their event to leave. `counters` is the publisher's counter dict."""

    LOG_EVERY_S = 60.0

    def __init__(self, max_age_s: float, counters: dict[str, int]) -> None:
        self.max_age_s, self.counters = max_age_s, counters
        self._fresh: dict[str, tuple[str, float]] = {}  # event id -> (OK/NG, monotonic decision time)
        self._next_log = 0.0

    def decided(self, event: dict, at: float | None = None) -> None:
        """Note an event's verdict (events without OK/NG have none); `at`: the monotonic time it
        was decided (before its event was stored: a slow disk's wait counts), default now."""
        verdict = VERDICTS.get(event.get("verdict"))  # type: ignore[arg-type]
        if verdict is not None:
            self._fresh[event["event_id"]] = (verdict, time.monotonic() if at is None else at)

    def take(self, event_id: str, stalled: Callable[[], bool]) -> str | None:
        """The verdict to publish now that its event has been handed to the broker, or None
        (no verdict, too old, or the link is not acknowledging: `stalled()`)."""
        fresh = self._fresh.pop(event_id, None)
        if fresh is None:
            return None
        verdict, decided = fresh
        age = time.monotonic() - decided
        if age > self.max_age_s:
            self._skipped(verdict, age)
            return None
        if stalled():  # (a link that is not acknowledging is said as the link's state)
            self.counters["verdicts_skipped"] += 1
            return None
        return verdict

    def expire(self) -> None:
        """Drop (and count, and say) verdicts whose events did not leave in time."""
        now = time.monotonic()
        for eid in [e for e, (_, t) in list(self._fresh.items()) if now - t > self.max_age_s]:
            if (fresh := self._fresh.pop(eid, None)) is not None:
                self._skipped(fresh[0], now - fresh[1])

    def _skipped(self, verdict: str, age: float) -> None:
        self.counters["verdicts_skipped"] += 1
        if time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self.LOG_EVERY_S
            log.warning("verdict %s not published: its event had not left %.1f s after the decision, more than "
                        "mqtt.verdict_max_age_s (%.1f s): a slow disk, or a broker that is away or not "
                        "acknowledging. A late verdict could pass the wrong part, so the PLC gets none (%d skipped "
                        "so far; logged at most every %.0f s)", verdict, age, self.max_age_s,
                        self.counters["verdicts_skipped"], self.LOG_EVERY_S)
