"""The agent's configuration edited while it runs: said, since it is read only at start.

`agent.toml` and its `--env-file` are read once, at start (thresholds.json is read again:
agent/decide/reload.py). Until 2026-12-07 an operator who edited them on a running station saw
nothing happen and nothing said: the change waited, silently, for the next restart, which might
come weeks later with a mistake in it. Now a thread looks at both files every LOOK_S; a change
that has settled (FileWatch: the same at two looks) is said once, at WARNING, with what to do,
and stays in `status.config.edited` (and the metric `adgan_config_edited`) until a restart.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from agent.decide.thresholds import FileWatch
from agent.mqtt.events import utc_iso

log = logging.getLogger(__name__)

LOOK_S = 5.0

_edited: dict[str, str] = {}  # file -> when its edit was first seen: this process's (one agent a process)


def status() -> dict:
    """status.config: the files edited since the start (their edits wait for a restart), and when."""
    return {"edited": [{"path": p, "at": at} for p, at in list(_edited.items())]}


def _content(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


class ConfigWatch:
    """Made when the settings are read (their files' state then); `start()` looks from a thread.
    A file written again with what it held (a configuration tool's run, `touch`) is no edit, and
    one edited back to it is said as such."""

    def __init__(self, paths, look_s: float = LOOK_S) -> None:
        self.look_s = look_s
        files = {Path(p) for p in paths if p is not None}
        # (os.path: a folder on the way this user may not enter is no file here, and the settings' reading
        # says it; Path.is_file raised, and `run` ended in a traceback until 2026-12-07)
        self.watches = {FileWatch(p): _content(p) for p in files if os.path.isfile(p)}

    def start(self) -> None:
        if self.watches:
            threading.Thread(target=self._run, name="config-watch", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.look_s)
            self.look()

    def look(self) -> None:
        for w, read in self.watches.items():
            if w.changed():
                self._say(w.path, _content(w.path) == read)

    @staticmethod
    def _say(path: Path, as_read: bool) -> None:
        if as_read:
            if _edited.pop(str(path), None) is not None:
                log.info("%s is again as the agent read it at start", path)
            return
        _edited.setdefault(str(path), utc_iso(time.time()))
        if not os.path.exists(path):
            log.warning("%s was removed since the agent started: the agent goes on with what it read then, and a "
                        "restart would not find it", path)
            return
        log.warning("%s changed since the agent started: it is read only at start, so the change is not in force "
                    "yet; check it (adgan agent validate-config) and restart the agent (systemctl restart "
                    "adgan-agent) to apply it", path)
