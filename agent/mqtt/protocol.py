"""Protocol "auto" (a mixin of `Publisher`, publisher.py): speak MQTT 5, and fall back to 3.1.1
with a broker that refuses 5 (CONNACK "unacceptable protocol version"), hangs up on it, or leaves
its CONNECT unanswered (amqtt), until a connection is accepted; then keep that version. A port
that hangs up on both versions alike (a TLS port, a proxy with no broker behind it) is not a
matter of version: both are tried in turn, with backoff.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

AUTO_CONNACK_S = 10.0  # protocol "auto": a CONNECT unanswered this long on an open socket tries the other version


class AutoProtocol:
    """Methods of `Publisher` (publisher.py), kept here so that each file reads whole."""

    def _auto_switch(self, protocol: str, backoff: bool = False) -> bool:
        """Protocol "auto", before any connection was accepted: have the pump reconnect with
        `protocol` (not on paho's own thread, which cannot stop itself), at once or after a
        doubling wait (1 s to 30 s). False otherwise."""
        if self.settings.protocol != "auto" or self._accepted or self._stopping.is_set():
            return False
        if self._switch_to is None:  # (not again while a switch waits: paho's own retries hang up too)
            if backoff:
                self._switch_wait = min(30.0, max(1.0, 2 * self._switch_wait))
            self._switch_at = time.monotonic() + (self._switch_wait if backoff else 0.0)
        self._switch_to = protocol
        self._wake.set()
        return True

    def _check_unanswered(self) -> None:
        """Protocol "auto": a broker that leaves a CONNECT of this version unanswered on an open
        socket for AUTO_CONNACK_S (amqtt does, to MQTT 5) is tried with the other version."""
        if self.settings.protocol != "auto" or self._accepted or self._connack:
            self._unanswered_since = None
            return
        now = time.monotonic()
        if self.client.socket() is None:  # (not connected at all: the broker is down, or unreachable)
            self._unanswered_since = None
        elif self._unanswered_since is None:
            self._unanswered_since = now
        elif now - self._unanswered_since >= AUTO_CONNACK_S:
            other = "3.1.1" if self.protocol == "5" else "5"
            self._set_link("connecting", f"{self.host}:{self.port} did not answer an MQTT {self.protocol} CONNECT "
                                         f"within {AUTO_CONNACK_S:.0f} s; trying MQTT {other}")
            self._auto_switch(other)

    def _switch_protocol(self) -> None:
        """A client of the other MQTT version replaces this one (protocol "auto")."""
        protocol, self._switch_to = self._switch_to, None
        if protocol is None or protocol == self.protocol:
            return
        old = self.client
        old.loop_stop()
        for name in ("on_connect", "on_connect_fail", "on_disconnect", "on_publish", "on_message", "on_subscribe"):
            setattr(old, name, None)  # (its last words must not count as the new client's)
        old.disconnect()
        self.protocol, self._unanswered_since, self._connack = protocol, None, False
        self.client = self._make_client()
        log.debug("MQTT: connecting to %s:%d with MQTT %s", self.host, self.port, protocol)
        self._connect()
