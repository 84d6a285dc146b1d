"""Raw station captures -> an empty-table reference (`adgan dataset reference`) and samples in
the paper's layout (`adgan dataset prepare`), with the same segmentation and preprocessing
code the agent runs."""
from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from agent.frame import NoObjectError
from agent.segment.preprocess import Preprocessing, make_sample
from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import SegmentationConfig, Segmenter
from agent.sources.dataset import frame_numbers, read_raw_frame, write_preprocessing, write_sample
from agent.sources.folder import FolderSource

log = logging.getLogger(__name__)


def make_reference(raw: str | Path, frames: tuple[int, int] | None, max_depth_mm: int) -> SurfaceReference:
    """The empty surface's depth from raw frames of the empty table."""
    src = FolderSource(raw, frames)
    if src.segmented:
        raise ValueError(f"{raw} is in the paper's (segmented) layout; a reference needs raw frames")
    return SurfaceReference.from_frames(src, max_depth_mm=max_depth_mm)


def prepare_samples(raw: str | Path, out: str | Path, prep: Preprocessing, cfg: SegmentationConfig,
                    reference: SurfaceReference | None, frames: tuple[int, int] | None = None,
                    progress: bool = True) -> tuple[int, int]:
    """Segment and preprocess every raw frame into a sample; (written, skipped without an object)."""
    seg = Segmenter(cfg, reference)
    out, folder = Path(out), Path(raw)
    nums = frame_numbers(folder, frames)
    written = skipped = 0
    write_preprocessing(out, prep)
    for n in tqdm(nums, desc="prepare", unit="frame", disable=not progress):
        frame = read_raw_frame(folder, n)
        try:
            write_sample(out, n, make_sample(frame, seg(frame), prep, roi=cfg.roi))
            written += 1
        except NoObjectError:
            log.warning("frame %d: no object after segmentation, skipped", n)
            skipped += 1
    return written, skipped
