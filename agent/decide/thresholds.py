"""thresholds.json: per-class thresholds, valid only for the bundle whose scores made them.

    {"format": 1, "classes": {"<class>": {"threshold": t, "policy": ..., "bundle_hash": ...,
      "backend": ..., "seed": ..., "search": {...}, "counts": {...}, "normal_scores": {...},
      "anomalous_scores": {...}, "metrics": {...}, "created": iso,
      "class_check": {"threshold": m, "k": 0, "rivals": {"<class>": "<bundle hash>"}, ...}}}}
A score strictly greater than the threshold is an anomaly; `class_check` (optional, `adgan
calibrate --class-check`) is agent/decide/class_check.py's.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import durable

THRESHOLDS_FORMAT = 1
MAX_DIGITS = 300  # digits of a whole number in the file (a float reaches 1.8e308)
MAX_BYTES = 64 << 20  # a class's record is a few kB: a larger file is not one (and is not read on a station)


class ThresholdError(ValueError):
    """Thresholds that must not be used with the loaded bundle (missing, stale, malformed)."""


@dataclass(frozen=True)
class ClassThreshold:
    cls: str
    threshold: float
    bundle_hash: str
    record: dict[str, Any]

    def is_anomaly(self, score: float) -> bool:
        return score > self.threshold


# Records written before thresholds named their engine: calibrate ran the default of each backend.
_LEGACY_ENGINES = {"onnxruntime": "onnxruntime/CPUExecutionProvider", "tensorrt": "tensorrt/fp32", "torch": "torch"}


def recorded_engine(record: dict[str, Any]) -> str | None:
    """The engine a threshold was calibrated on (e.g. 'onnxruntime/CPUExecutionProvider',
    'tensorrt/fp16'), or None when the record does not say."""
    if record.get("engine"):
        return str(record["engine"])
    backend = record.get("backend")
    return _LEGACY_ENGINES.get(str(backend), str(backend)) if backend else None


def _whole_number(text: str) -> int:
    """A JSON whole number within a float's range: past it no threshold, seed or count is meant,
    and one (`1` and 400 zeros, written by hand) raised an OverflowError where a float was taken
    (math.isfinite, float()), which a reload did not catch: the agent stopped."""
    digits = len(text.lstrip("-"))
    if digits > MAX_DIGITS:
        raise ValueError(f"a whole number of {digits} digits, past any threshold, seed or count")
    return int(text)


def read_thresholds(path: str | Path) -> dict[str, Any]:
    """The file's document. A file saved by an editor as UTF-16 or with a UTF-8 byte order mark
    reads as what it says (JSON's own detection); other text, a document nested too deeply for the
    parser and one larger than MAX_BYTES are refused (ThresholdError), not raised as they come."""
    path = Path(path)
    if not path.is_file():
        raise ThresholdError(f"thresholds file {path} is a folder, not a file" if path.is_dir() else
                             f"thresholds file {path} does not exist (make one with 'adgan calibrate')")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ThresholdError(f"{path}: {size} bytes, more than a thresholds file holds (at most {MAX_BYTES})")
    raw = path.read_bytes()
    try:
        doc = json.loads(raw, parse_int=_whole_number)
    except json.JSONDecodeError as e:
        raise ThresholdError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ThresholdError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                             "save it as UTF-8") from None
    except RecursionError:
        raise ThresholdError(f"{path}: nested too deeply to be a thresholds file") from None
    except ValueError as e:  # (_whole_number's)
        raise ThresholdError(f"{path}: not a thresholds file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != THRESHOLDS_FORMAT or not isinstance(doc.get("classes"), dict):
        raise ThresholdError(f"{path}: not a thresholds file of format {THRESHOLDS_FORMAT}")
    return doc


def load_threshold(path: str | Path, cls: str, bundle_hash: str) -> ClassThreshold:
    """The threshold of `cls`, refused unless it was calibrated on the bundle with `bundle_hash`."""
    doc = read_thresholds(path)
    rec = doc["classes"].get(cls)
    if rec is None:
        raise ThresholdError(f"{path} has no threshold for class {cls!r} (has: {', '.join(sorted(doc['classes']))})")
    try:
        t, h = float(rec["threshold"]), str(rec["bundle_hash"])
    except (KeyError, TypeError, ValueError) as e:
        raise ThresholdError(f"{path}: class {cls!r}: bad record ({e})") from None
    if isinstance(rec["threshold"], bool) or not isinstance(rec["threshold"], (int, float)) or not math.isfinite(t):
        # (JSON's NaN would pass every part: no score is greater than NaN)
        raise ThresholdError(f"{path}: class {cls!r}: the threshold must be a finite number, got {rec['threshold']!r}")
    if h != bundle_hash:
        raise ThresholdError(f"{path}: the threshold of {cls!r} was calibrated on bundle {h[:12]}..., not on the "
                             f"loaded bundle {bundle_hash[:12]}...; a threshold is valid only for the scores "
                             "that produced it: recalibrate with 'adgan calibrate'")
    return ClassThreshold(cls, t, h, rec)


def check_writable(path: str | Path) -> None:
    """Raise ThresholdError now where write_threshold would fail after minutes of scoring: an
    existing file it would refuse (a folder, not a thresholds file), a folder above that is a
    file, or one that cannot be written."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        read_thresholds(path)
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not folder.is_dir():
        raise ThresholdError(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ThresholdError(f"cannot write {path}: {folder} is not writable by this user (or is read-only)")


def write_threshold(path: str | Path, cls: str, record: dict[str, Any]) -> None:
    """Add or replace one class's record, keeping the others (also those another process writes
    at the same time: the folder is locked from the read to the write); atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with durable.folder_lock(path.parent):
        doc = read_thresholds(path) if path.exists() else {"format": THRESHOLDS_FORMAT, "classes": {}}
        doc["classes"][cls] = record
        durable.write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


class FileWatch:
    """Whether a file changed (its time, size or inode), once the change has stayed the same
    for one look: a thresholds file still being copied is not read half-written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.loaded = self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def again(self) -> None:
        """Say the file as changed at the next look, as it is then (it could not be read)."""
        self.loaded = ()

    def changed(self) -> bool:
        """True, once, when the file differs from the last time this said True (or from the
        start) and looked the same at the look before."""
        now = self._stamp()
        settled, self._seen = now == self._seen, now
        if now == self.loaded or not settled:
            return False
        self.loaded = now
        return True
