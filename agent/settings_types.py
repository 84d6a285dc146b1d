"""The types agent/settings.py builds its sections from: strict models, paths a system call
takes, topic levels, and the error a setting that cannot be used raises (split from
agent/settings.py on 2026-12-07, where they were; imported from there as before)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class SettingError(ValueError):
    """A setting whose value cannot be used (a file missing, unreadable or of the wrong kind)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting, self.message = setting, message


NAME_MAX, PATH_MAX = 255, 4095  # bytes of one file name, and of a path a system call takes (Linux)


def usable_path(p: Path) -> Path:
    """A path the system can be asked about: otherwise the checks before the start ended in an
    OSError (File name too long) or ValueError (embedded null byte) naming no setting."""
    if "\0" in str(p):
        raise ValueError("a path cannot hold a NUL character")
    size = len(os.fsencode(p))
    if size > PATH_MAX:
        raise ValueError(f"a path of {size} bytes is longer than the {PATH_MAX} the system takes")
    for part in p.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ValueError(f"the name {part[:24]!r}... is {len(os.fsencode(part))} bytes, longer than the "
                             f"{NAME_MAX} a file name can have")
    return p


StationPath = Annotated[Path, AfterValidator(usable_path)]


class Strict(BaseModel):
    # inf passes every lower bound (frame_timeout_s = inf: a camera that stops is never reopened),
    # nan fails them with a puzzling message: neither is a setting
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def printable_topic(v: str) -> str:
    """MQTT forbids U+0000 in topics (the broker hangs up on the CONNECT whose Last Will names
    it) and advises against other control characters: none are taken."""
    bad = sorted({c for c in v if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F})
    if bad:
        raise ValueError("must not contain control characters (MQTT topics), got " +
                         ", ".join(f"U+{ord(c):04X}" for c in bad))
    return v


def topic_level(v: str) -> str:
    """A station_id that can be a topic level and part of the MQTT client id (ValueError otherwise)."""
    if not v or any(c in v for c in "/+# "):
        raise ValueError("must be non-empty without '/', '+', '#' or spaces (it is a topic level)")
    if len(v) > 128:
        raise ValueError(f"must be at most 128 characters (it is a topic level and the MQTT client id), got {len(v)}")
    return printable_topic(v)
