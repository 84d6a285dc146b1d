"""Commands on `<base>/<feature>/set` (DESIGN.md): subscribed to on every connection, routed
to their handler, or refused.

A command is an action, not a state: a retained one is refused (it would come back on every
reconnect), and so is one larger than MAX_COMMAND_BYTES. Refusals are counted and logged at
most once per LOG_EVERY_S per feature, so a flood cannot fill the journal. A live command that
is refused (too large) is also handed to the feature's `on_refused` handler, where it has one:
a refused trigger/set is a request, and is answered (until 2026-12-06 only the log said it).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt

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
        self.on_refused: dict[str, Callable[[str], None]] = {}  # feature -> told why a live command was refused
        self.ready = threading.Event()      # every command subscription granted, this connection
        self._subacks: dict[int, str] = {}  # subscribe message id -> command topic, awaiting its SUBACK
        self._sub_failed = False            # a command subscription failed on this connection

    def subscribe(self, client) -> None:
        """Subscribe to every command topic (on paho's thread, from on_connect: no SUBACK can be
        handled before this returns)."""
        self.ready.clear()
        self._subacks.clear()
        self._sub_failed = False
        for topic in self.topics():
            rc, mid = client.subscribe(topic, qos=1)
            if rc == mqtt.MQTT_ERR_SUCCESS:
                self._subacks[mid] = topic
            else:
                self._sub_failed = True
                log.error("subscribing to %s failed: %s; commands on it do not reach this station until "
                          "the next connection", topic, mqtt.error_string(rc))
        if not self._subacks and not self._sub_failed:
            self.ready.set()

    def subscribed(self, mid: int, reason_codes) -> None:
        """A SUBACK: `ready` once every command subscription is granted; a refusal is said."""
        topic = self._subacks.pop(mid, None)
        if topic is None:
            return
        refused = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if refused:
            self._sub_failed = True
            self.counters["subscriptions_refused"] += 1
            log.error("the broker refused the subscription to %s (%s): commands on it do not reach this "
                      "station; is this client allowed to read it (the broker's ACL)?", topic, refused[0])
        elif not self._subacks and not self._sub_failed:
            self.ready.set()

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
            why = f"{len(payload)} bytes, more than {MAX_COMMAND_BYTES}"
            self._refuse(feature, why)
            if feature in self.on_refused:
                try:
                    self.on_refused[feature](why)
                except Exception:  # (as a handler's: not the network thread's end)
                    log.exception("answering the refused command on %s failed", topic)
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
