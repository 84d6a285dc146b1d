"""Thresholds calibrated again reach a running agent without a restart (the agent's loop asks).

The thresholds file is looked at every LOOK_S; a change must look the same at two looks
(`FileWatch`), so a file being copied is not read half-written. It is read under the checks of
the start (this bundle, latent seed and engine, a finite threshold), on the engines already
open. A file that cannot be used is refused and said, and the thresholds in use stay; where a
bundle on disk was exported again since the start, the refusal says a restart loads it. A file
that cannot be read (an error of the system: out of open files, an I/O error) is read again at
each look until it can be, said once.
"""
from __future__ import annotations

import logging
import time

from agent.decide.inspector import ClassModel, with_thresholds
from agent.decide.thresholds import FileWatch
from agent.scoring.bundle import Bundle, BundleError
from agent.settings import SettingError

log = logging.getLogger(__name__)

LOOK_S = 2.0


class ThresholdsReload:
    """`model` is the agent's `[model]` settings. Made before the models are loaded, so that a
    change while they load is seen."""

    def __init__(self, model) -> None:
        self.model = model
        self._watch = FileWatch(model.thresholds)
        self._next_look = 0.0
        self._unread: str | None = None  # the error of a file that could not be read, said once
        self.state: dict = {"state": "loaded", "since": time.time(), "error": None}

    def reread(self, models: dict[str, ClassModel]) -> dict[str, ClassModel] | None:
        """The models with the thresholds now in the file, when it changed and can be used;
        None otherwise (nothing to do, or refused: said)."""
        now = time.monotonic()
        if now < self._next_look or not models:
            return None
        self._next_look = now + LOOK_S
        if not self._watch.changed():
            return None
        m = self.model
        try:
            new = with_thresholds(models, m.thresholds, m.seed, m.backend, m.check_bundles)
        except SettingError as e:
            unread = isinstance(e.__cause__, OSError)  # not refused for what it holds: read again at each look
            if unread:
                self._watch.again()
                if self._unread == str(e):
                    return None  # (said at the look before)
            self._unread = str(e) if unread else None
            hint = self._bundles_changed(models)
            said = f"cannot be read now, read again every {LOOK_S:.0f} s: {e}" if unread else str(e)
            self.state = {"state": "refused", "since": time.time(), "error": said + hint}
            if unread:
                log.error("%s changed but cannot be read now (%s); the thresholds in use stay, and it is read "
                          "again every %.0f s until it can be%s", m.thresholds, e, LOOK_S, hint)
            else:
                log.error("%s changed but cannot be used (%s); the thresholds in use stay%s", m.thresholds, e, hint)
            return None
        self._unread = None
        changes = [f"{c} {models[c].threshold.threshold:.6g} -> {new[c].threshold.threshold:.6g}"
                   for c in new if new[c].threshold.threshold != models[c].threshold.threshold]
        self.state = {"state": "loaded", "since": time.time(), "error": None}
        log.info("%s read again: %s", m.thresholds, ", ".join(changes) or "no threshold changed")
        return new

    def _bundles_changed(self, models: dict[str, ClassModel]) -> str:
        """Where a bundle on disk is not the one loaded: exported again (a restart loads it), or
        unreadable now (moved, being copied, out of open files: a restart would not start)."""
        changed, unreadable = [], []
        for cls, model in models.items():
            try:
                on_disk = Bundle.load(self.model.bundles[cls]).bundle_hash
            except (BundleError, OSError) as e:
                unreadable.append(f"{cls} ({e})")
                continue
            if on_disk != model.bundle.bundle_hash:
                changed.append(cls)
        hint = (f"; the bundle of {', '.join(changed)} on disk is not the one loaded at start: restart the agent "
                "to load it with its thresholds") if changed else ""
        if unreadable:
            hint += f"; nor can the bundle on disk, so a restart would not start: {'; '.join(unreadable)}"
        return hint
