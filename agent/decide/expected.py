"""The class a station expects, kept across restarts.

`model.expected_class` in agent.toml is the class at first start. A PLC or SCADA switches it
(MQTT `class/set`, OPC UA `ExpectedClass`) when the line changes product, once. Until
2026-12-06 a restart (a power cut, the watchdog, an update) brought the configured class back
without a word, and the new product's parts were scored by the old product's model. Now each
switch is stored beside the outbox (`<outbox>.class`, JSON, replaced whole and flushed) with the
configured class of the time, and a start expects the stored class again, unless:
- agent.toml's expected_class was changed since the switch: the file is the newer word (the
  record is removed);
- the stored class has no bundle now (said; the configured class);
- the record cannot be read (said; the configured class).
A switch that cannot be stored (a full or read-only disk) still applies; it is said (ERROR, and
`status.class_switch.stored` false), since a restart would then expect the configured class.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterable

from agent import durable
from agent.mqtt.events import utc_iso

log = logging.getLogger(__name__)

SUFFIX = ".class"
MAX_BYTES = 4096   # a record is a few dozen bytes; anything larger is not one
REFUSAL_LOG_S = 10.0


def record_path(outbox: str | Path) -> Path:
    outbox = Path(outbox)
    return outbox.with_name(outbox.name + SUFFIX)


def _read(path: Path) -> dict:
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"over {MAX_BYTES} bytes")
    rec = json.loads(data.decode("utf-8"))
    if not (isinstance(rec, dict) and isinstance(rec.get("class"), str) and isinstance(rec.get("configured"), str)):
        raise ValueError("not a class record (class and configured, as text)")
    return rec


def _judge(path: Path, configured: str, known: Iterable[str]) -> tuple[str, dict | None, int, str, bool]:
    """(the class a start expects, the switch it comes from or None, a log level and what to say
    or "", whether the record is stale: agent.toml changed since)."""
    try:
        rec = _read(path)
    except FileNotFoundError:
        return configured, None, logging.DEBUG, "", False
    except (OSError, ValueError, RecursionError) as e:  # (json's errors and UnicodeDecodeError are ValueErrors)
        return configured, None, logging.WARNING, (f"the stored class switch {path} cannot be read ({e}): expecting "
                                                   f"agent.toml's {configured}"), False
    cls, then, at = rec["class"], rec["configured"], rec.get("at", "?")
    if then != configured:
        return configured, None, logging.INFO, (f"agent.toml's expected_class is {configured}, no longer {then} as "
                                                f"when class/set chose {cls} at {at}: the file is the newer word, "
                                                f"expecting {configured}"), True
    if cls == configured:
        return configured, None, logging.DEBUG, "", False
    if cls not in set(known):
        return configured, None, logging.WARNING, (f"class/set chose {cls} at {at}, which has no bundle now (have "
                                                   f"{', '.join(sorted(known))}): expecting agent.toml's "
                                                   f"{configured}"), False
    return cls, {"class": cls, "at": at, "configured": configured, "stored": True}, logging.WARNING, (
        f"expecting {cls}, as class/set chose it at {at} (agent.toml's expected_class is {configured}); a "
        "class/set changes it"), False


def starting_class(path: Path, configured: str, known: Iterable[str]) -> tuple[str, dict | None]:
    """(the class to expect at start, the switch it comes from or None: the configured class);
    said in the log, and a stale record removed."""
    cls, switch, level, say, stale = _judge(path, configured, known)
    if say:
        log.log(level, "%s", say)
    if stale:
        try:
            path.unlink()
        except OSError as e:
            log.warning("the stale class switch %s could not be removed: %s", path, e)
    return cls, switch


def start_words(outbox: str | Path, configured: str, known: Iterable[str]) -> str:
    """What a start would say about the class it expects ("" for the configured one, with no
    switch to speak of); reads, changes nothing (validate-config)."""
    return _judge(record_path(outbox), configured, known)[3]


class ExpectedClass:
    """The expected class: switched by the inspection loop, in its turn among the requested
    inspections (agent/trigger.py's CommandTrigger orders them), stored so that a restart keeps it."""

    def __init__(self, configured: str, known: Iterable[str], outbox: str | Path,
                 refused: Callable[[], int]) -> None:
        self.configured, self.known, self.path = configured, set(known), record_path(outbox)
        self.name, self.switch = starting_class(self.path, configured, self.known)
        self._refused = refused  # counts a refusal, returns the count so far
        self._next_refusal_log = 0.0
        self.reserve = None      # the outbox's Reserve, once it is open (agent/mqtt/files.py): a full disk releases it

    def apply(self, payload: bytes | str) -> bool:
        """A class/set: True if the class changed, False if not (refused, or the same)."""
        req = (payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload).strip()
        if req not in self.known:
            self.refuse(f"class/set {req[:64]!r} refused: no bundle for it (have {', '.join(sorted(self.known))})")
            return False
        if req == self.name:
            return False
        log.info("expected class switched from %s to %s", self.name, req)
        self.name = req
        self._store(req)
        return True

    def refuse(self, why: str) -> None:
        """A switch not made: counted, and said at most once per REFUSAL_LOG_S (a storm of bad
        requests is one line per 10 s)."""
        n = self._refused()
        now = time.monotonic()
        if now >= self._next_refusal_log:
            self._next_refusal_log = now + REFUSAL_LOG_S
            log.warning("%s; %d refused so far", why, n)

    def _store(self, cls: str) -> None:
        at = utc_iso(time.time())
        self.switch = {"class": cls, "at": at, "configured": self.configured, "stored": True}
        text = json.dumps({"class": cls, "configured": self.configured, "at": at}) + "\n"
        room = (lambda e: self.reserve.free(e, "the class switch is kept")) if self.reserve else None
        try:  # (a full disk: the outbox's reserve's room, the record lies beside it)
            durable.write_text(self.path, text, room)
        except OSError as e:
            self.switch.update(stored=False, error=str(e))
            log.error("the switch to %s could not be stored in %s (%s): it applies now, but after a restart the "
                      "station would expect agent.toml's %s", cls, self.path, e, self.configured)

    def status(self) -> dict | None:
        return dict(self.switch) if self.switch else None
