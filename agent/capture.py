"""Recording a station's own frames for training (`adgan agent capture-frames`).

A generator is trained on the parts of one station: its camera, its light, its fixture. This
records raw frames (the raw layout of `agent.sources.dataset`: lossless RGB, 16-bit depth in
millimetres, metadata) from the configured source into a folder, for `adgan dataset prepare`.

Two ways to choose frames:
- `parts`: one frame per part, the frame the agent itself would inspect: the part's passage is
  followed with the station's segmentation and trigger settings (present at `min_area_px`,
  still for `settle_frames`, gone for `clear_frames`). A part that leaves before it settles is
  counted and said, not recorded.
- every `every`-th frame read (for a fixture where the part does not move, or a turntable).

Nothing is overwritten: numbering continues after the highest frame number already in the
folder (a torn frame of a killed run included), and a second run into a folder that one is
still writing into is refused (the folder's flock). A frame is written depth last, so one cut off
by a kill or a full disk has no depth image and is not a frame to any reader; a write that
fails removes what it wrote of its frame and stops the capture, naming the file.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from agent import durable
from agent.frame import FrameError, RGBDFrame, unlit
from agent.passage import Passage, PassageTrigger
from agent.segment.station import StationSegmenter
from agent.sources.base import FrameSource
from agent.sources.dataset import raw_frame_files, write_raw_frame

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0


class CaptureError(RuntimeError):
    """The capture cannot go on (a frame could not be written); what was written is kept."""


@dataclass
class CaptureReport:
    out: Path
    first: int                     # the number the first frame of this run was given
    written: list[int] = field(default_factory=list)
    frames_read: int = 0
    unsettled: int = 0             # parts that left before they settled (mode parts)
    cut_off: int = 0               # parts that settled reaching the edge of the view (mode parts)
    unlit: int = 0                 # frames wanted whose colour image shows nothing (black, blown out)
    bad_frames: int = 0            # frames the source or the segmentation refused
    ended: str = ""                # "count", "source ended", "stop requested"

    def summary(self) -> str:
        if self.written:
            nums = f"frames {self.written[0]}-{self.written[-1]}"
        else:
            nums = "no frames"
        extra = []
        if self.unsettled:
            extra.append(f"{self.unsettled} part(s) left before settling, not recorded")
        if self.cut_off:
            extra.append(f"{self.cut_off} part(s) not wholly in view, not recorded")
        if self.unlit:
            extra.append(f"{self.unlit} frame(s) whose colour image shows nothing, not recorded")
        if self.bad_frames:
            extra.append(f"{self.bad_frames} bad frame(s) skipped")
        why = {"count": "the count reached"}.get(self.ended, self.ended)
        head = "; ".join(x for x in (nums, f"{self.frames_read} read", why) if x)
        return f"{len(self.written)} frame(s) written to {self.out} ({head})" + "".join("; " + x for x in extra)


def next_frame_number(folder: Path) -> int:
    """1 + the highest frame number that has any file (or temporary file) in the raw layout
    under `folder`; 0 for a new folder."""
    highest = -1
    for sub in ("rgb", "depth", "meta"):
        d = folder / sub
        if not d.is_dir():
            continue
        for p in d.iterdir():
            stem = p.name.split(".", 1)[0]
            if stem.isdigit():
                highest = max(highest, int(stem))
    return highest + 1


def capture_frames(source: FrameSource, out: str | Path, count: int, *, every: int = 1,
                   passage: PassageTrigger | None = None, segmenter: StationSegmenter | None = None,
                   stop: threading.Event | None = None,
                   progress: Callable[[CaptureReport], None] | None = None) -> CaptureReport:
    """Record up to `count` raw frames from `source` into `out`: one per settled part when
    `passage` (with `segmenter`, the station's) is given, else every `every`-th frame read.
    Returns when `count` are written, the source ends or `stop` is set. Raises CaptureError
    when a frame cannot be written and lets the source's SourceError through; the report of
    what was written so far is the exception's `report`."""
    if count < 1 or every < 1:
        raise ValueError(f"need count >= 1 and every >= 1, got {count} and {every}")
    if passage is not None and segmenter is None:
        raise ValueError("recording one frame per part needs the station's segmenter")
    if passage is not None and every != 1:
        raise ValueError("one frame per part (--parts) and every N-th frame (--every) exclude each other")
    if source.segmented:
        raise ValueError("this source replays segmented samples; capture-frames records raw frames "
                         "(a camera, a recording, a raw-layout folder or the synthetic station)")
    out = Path(out)
    stop = stop or threading.Event()
    out.mkdir(parents=True, exist_ok=True)
    # two runs into one folder would give the same numbers, and each overwrite the other's frames
    with durable.folder_lock(out, 0, f"{out}: another capture is writing into it (two runs would number their "
                                     "frames alike and overwrite each other's): wait for it, or record into another "
                                     "folder"):
        return _capture(source, out, count, every, passage, segmenter, stop, progress)


def _capture(source: FrameSource, out: Path, count: int, every: int, passage: PassageTrigger | None,
             segmenter: StationSegmenter | None, stop: threading.Event,
             progress: Callable[[CaptureReport], None] | None) -> CaptureReport:
    report = CaptureReport(out=out, first=next_frame_number(out))
    n, last_progress = report.first, time.monotonic()
    try:
        while len(report.written) < count:
            if stop.is_set():
                report.ended = "stop requested"
                break
            try:
                frame = source.read()
            except FrameError as e:
                report.bad_frames += 1
                _say(report.bad_frames, "bad frame skipped: %s", e)
                continue
            if frame is None:
                report.ended = "source ended"
                break
            report.frames_read += 1
            if not _wanted(frame, report, every, passage, segmenter):
                continue
            _write(out, n, frame)
            report.written.append(n)
            n += 1
            if progress is not None and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                progress(report)
        else:
            report.ended = "count"
    except BaseException as e:
        e.report = report  # what is on disk, for the caller's last word
        raise
    return report


def _wanted(frame: RGBDFrame, report: CaptureReport, every: int, passage: PassageTrigger | None,
            segmenter: StationSegmenter | None) -> bool:
    if passage is None:
        return (report.frames_read - 1) % every == 0 and _lit(frame, None, report)
    try:
        seg = segmenter(frame)
    except FrameError as e:
        report.bad_frames += 1
        _say(report.bad_frames, "frame not segmented, skipped: %s", e)
        return False
    p = passage.update(seg.object_area, seg.object, frame.depth)
    if p is Passage.UNSETTLED:
        report.unsettled += 1
        _say(report.unsettled, "a part left before it settled: not recorded")
    if p is Passage.SCORE and (why := segmenter.cut_off(seg)) is not None:  # (a model learns what it is shown)
        report.cut_off += 1
        _say(report.cut_off, "%s: not recorded", why)
        return False
    return p is Passage.SCORE and _lit(frame, seg.object, report)


def _lit(frame: RGBDFrame, part: np.ndarray | None, report: CaptureReport) -> bool:
    """Whether the colour image shows the part (the station's light off, the lens covered: not
    recorded, counted and said; prepared, such frames would teach the model black parts)."""
    if (why := unlit(frame.rgb, part)) is None:
        return True
    report.unlit += 1
    _say(report.unlit, "%s: not recorded", why)
    return False


def _say(nth: int, msg: str, *args) -> None:
    """A warning for the 1st, 10th, 100th, ... of a kind (each is counted in the progress lines):
    a camera that fails every frame must not write 30 lines a second."""
    if nth == 10 ** (len(str(nth)) - 1):
        log.warning(msg + " (%d so far)", *args, nth)
    else:
        log.debug(msg, *args)


def _write(out: Path, n: int, frame: RGBDFrame) -> None:
    # where the frame came from (the camera's frame number, a replayed file) stays in its
    # metadata: the raw layout's own "frame" and "path" name the written copy
    origin = {f"source_{k}": frame.meta[k] for k in ("frame", "path") if k in frame.meta}
    try:
        write_raw_frame(out, n, replace(frame, meta={**frame.meta, **origin}))
    except OSError as e:
        for p in raw_frame_files(out, n):
            p.unlink(missing_ok=True)
        raise CaptureError(f"could not write frame {n} to {out}: {e}{durable.out_of_inodes(out)}") from None
