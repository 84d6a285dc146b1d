"""Raw station captures -> an empty-table reference (`adgan dataset reference`) and samples in
the paper's layout (`adgan dataset prepare`), with the same segmentation and preprocessing
code the agent runs."""
from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from agent import durable
from agent.frame import NoObjectError, unlit
from agent.segment.preprocess import Preprocessing, make_sample
from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import SegmentationConfig, Segmenter
from agent.segment.station import cut_off
from agent.sources.dataset import (PREPROCESSING_FILE, frame_numbers, read_raw_frame, write_preprocessing,
                                   write_sample)
from agent.sources.folder import FolderSource

log = logging.getLogger(__name__)

NOT_AGAIN = (" (a second run would overwrite the samples of its frame numbers and leave the others: to add captures, "
             "record them into the same raw folder, where capture-frames goes on numbering, and prepare it again "
             "with --force)")


def make_reference(raw: str | Path, frames: tuple[int, int] | None, max_depth_mm: int) -> SurfaceReference:
    """The empty surface's depth from raw frames of the empty table."""
    src = FolderSource(raw, frames)
    if src.segmented:
        raise ValueError(f"{raw} is in the paper's (segmented) layout; a reference needs raw frames")
    return SurfaceReference.from_frames(src, max_depth_mm=max_depth_mm)


def prepare_samples(raw: str | Path, out: str | Path, prep: Preprocessing, cfg: SegmentationConfig,
                    reference: SurfaceReference | None, frames: tuple[int, int] | None = None,
                    progress: bool = True, force: bool = False) -> tuple[int, int, int]:
    """Segment and preprocess every raw frame into a sample; (written, skipped without an object,
    skipped as the agent would not judge them: a part cut off by the view, or one the colour image
    does not show).
    `out` is written whole (durable.written_whole): one that is not empty is refused, and `force`
    replaces a sample folder adgan made (it holds preprocessing.json). Nothing is written when no
    frame has an object."""
    seg = Segmenter(cfg, reference)
    out, folder = Path(out), Path(raw)
    nums = frame_numbers(folder, frames)
    if not nums:
        raise ValueError(f"{folder}: no frames" + (f" in {frames[0]}:{frames[1]}" if frames else ""))
    written = skipped = unseen = 0
    with durable.written_whole(out, force, PREPROCESSING_FILE, "an adgan dataset command", NOT_AGAIN,
                               inside=folder, makes=durable.named(PREPROCESSING_FILE, "rgb", "depth")) as tmp:
        write_preprocessing(tmp, prep)
        for n in tqdm(nums, desc="prepare", unit="frame", disable=not progress):
            frame = read_raw_frame(folder, n)
            s = seg(frame)
            # as the agent: a part not wholly in view, or one its colour image does not show, is not judged
            if s.object.any() and (why := cut_off(s.object, cfg.roi, "--roi") or unlit(frame.rgb, s.object)):
                log.warning("frame %d: %s; skipped", n, why)
                unseen += 1
                continue
            try:
                write_sample(tmp, n, make_sample(frame, s, prep, roi=cfg.roi))
                written += 1
            except NoObjectError:
                log.warning("frame %d: no object after segmentation, skipped", n)
                skipped += 1
        if not written:
            why = (f"none of its {skipped} frames has an object after segmentation" if not unseen else
                   f"none of its {skipped + unseen} frames gave a sample ({skipped} without an object, {unseen} "
                   "whose part is cut off by the view or not shown by the colour image)")
            raise ValueError(f"{folder}: {why}; nothing written"
                             f"{' (' + str(out) + ' is left as it was)' if out.exists() else ''}")
    return written, skipped, unseen
