"""The agent's frame source, kept alive: reopened with doubling backoff after a failure,
paced to its configured rate, and its health reported in `status`."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from agent.health import SourceHealth
from agent.sources.base import FrameSource, SourceError
from agent.sources.open import open_source

log = logging.getLogger(__name__)


class SourceSupervisor:
    """`settings` is the agent's `[source]` table, `health` its `[health]` table; `on_failure`
    is called after each failure (the agent publishes its status at once)."""

    def __init__(self, settings, health, on_failure: Callable[[], None] = lambda: None) -> None:
        self.settings, self.hs, self.on_failure = settings, health, on_failure
        self.source: FrameSource | None = None
        self.health = SourceHealth()
        self._next_frame = 0.0

    def open(self) -> None:
        """Open the source; a failure is reported and retried later (`reopen_due`)."""
        h = self.health
        try:
            self.source = open_source(self.settings, self.hs.frame_timeout_s)
        except (SourceError, OSError, RuntimeError) as e:
            self.failed(f"cannot open source: {e}")
            return
        if h.failures:
            h.reconnects += 1
            log.info("source reopened after %d failure(s)", h.failures)
        h.state = "running"
        self._next_frame = time.monotonic()

    def reopen_due(self) -> bool:
        return time.monotonic() >= self.health.next_attempt

    def failed(self, reason: str) -> None:
        """Close the failed source and schedule the next attempt (doubling, bounded)."""
        h = self.health
        h.failures += 1
        h.total_failures += 1
        h.last_error, h.state = reason, "reconnecting"
        delay = min(self.hs.reconnect_min_s * 2 ** (h.failures - 1), self.hs.reconnect_max_s)
        h.next_attempt = time.monotonic() + delay
        log.error("frame source failed (%s); reopening in %.1f s (failure %d)", reason, delay, h.failures)
        if self.source is not None:
            try:
                self.source.close()
            except Exception:  # the source is already broken; closing it must not take us down
                log.exception("closing the failed source")
        self.source = None
        self.on_failure()

    def delivered(self) -> None:
        """A frame arrived: the source is healthy again."""
        self.health.failures = 0
        self.health.state = "running"

    def pace(self, stop: threading.Event) -> None:
        """Replays and synthetic scenes run at their configured rate; a camera paces itself."""
        fps = 0.0 if self.settings.type == "realsense" else float(self.settings.fps)
        if fps <= 0:
            return
        now = time.monotonic()
        if self._next_frame > now:
            stop.wait(self._next_frame - now)
        self._next_frame = max(self._next_frame, now) + 1.0 / fps

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None
