"""`FolderSource`: replays a folder of captures (the layouts in agent/sources/dataset.py)."""
from __future__ import annotations

from pathlib import Path

from agent.frame import FrameError, RGBDFrame, Sample
from agent.sources.base import FrameSource
from agent.sources.dataset import frame_numbers, read_raw_frame, read_sample


class FolderSource(FrameSource):
    """Replays one folder: Samples from the paper's layout, RGBDFrames from the raw layout.

    The layout is the raw one when the folder has meta/, the paper's otherwise.
    """

    live = False

    def __init__(self, folder: str | Path, frames: tuple[int, int] | None = None, loop: bool = False) -> None:
        self.folder = Path(folder)
        self.numbers = frame_numbers(self.folder, frames)
        if not self.numbers:
            raise FileNotFoundError(f"{self.folder} holds no frames"
                                    + (f" in range {frames[0]}:{frames[1]}" if frames else ""))
        self.raw = (self.folder / "meta").is_dir()
        self.segmented = not self.raw
        self.loop = loop
        self._i = 0

    def __len__(self) -> int:
        return len(self.numbers)

    def read(self) -> RGBDFrame | Sample | None:
        if self._i >= len(self.numbers):
            if not self.loop:
                return None
            self._i = 0
        n = self.numbers[self._i]
        self._i += 1  # advance first: a bad frame is skipped by the next read
        try:
            return read_raw_frame(self.folder, n) if self.raw else read_sample(self.folder, n)
        except FrameError as e:
            raise FrameError(str(e), {"frame": n, "path": str(self.folder)}) from None
