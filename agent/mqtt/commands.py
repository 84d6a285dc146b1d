"""Commands on `<base>/<feature>/set` (DESIGN.md): routed to their handler, or refused.

A command is an action, not a state: a retained one is refused (it would come back on every
reconnect), and so is one larger than MAX_COMMAND_BYTES. Refusals are counted and logged at
most once per LOG_EVERY_S per feature, so a flood cannot fill the journal.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 256
LOG_EVERY_S = 10.0

Handler = Callable[[bytes], None]


class Commands:
    """The features a station takes commands for. `counters` is the publisher's counter dict
    (its "commands_refused" entry is counted here)."""

    def __init__(self, base: str, handlers: dict[str, Handler] | None, counters: dict[str, int]) -> None:
        self.base, self.handlers, self.counters = base, dict(handlers or {}), counters
        self._refusal_logged: dict[str, float] = {}

    def topics(self) -> list[str]:
        """What to subscribe to (again on every connect)."""
        return [f"{self.base}/{feature}/set" for feature in self.handlers]

    def handle(self, topic: str, payload: bytes, retain: bool) -> None:
        """Call the feature's handler (on paho's network thread), or refuse the command."""
        prefix, suffix = self.base + "/", "/set"
        feature = topic[len(prefix):-len(suffix)] if topic.startswith(prefix) and topic.endswith(suffix) else None
        handler = self.handlers.get(feature) if feature else None
        if handler is None:
            return
        if retain:
            self._refuse(feature, "it is retained; commands must be sent without the retain flag "
                                  "(clear it: mosquitto_pub -r -n -t " + topic + ")")
            return
        if len(payload) > MAX_COMMAND_BYTES:
            self._refuse(feature, f"{len(payload)} bytes, more than {MAX_COMMAND_BYTES}")
            return
        try:
            handler(bytes(payload))
        except Exception:  # a bad command must not kill the network thread
            log.exception("command on %s failed", topic)

    def _refuse(self, feature: str, why: str) -> None:
        self.counters["commands_refused"] += 1
        now = time.monotonic()
        if now >= self._refusal_logged.get(feature, 0.0):
            self._refusal_logged[feature] = now + LOG_EVERY_S
            log.warning("command on %s/%s/set refused: %s (%d refused so far; logged at most every %.0f s)",
                        self.base, feature, why, self.counters["commands_refused"], LOG_EVERY_S)
