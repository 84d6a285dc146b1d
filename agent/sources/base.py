"""The one small interface every frame source implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

from agent.frame import RGBDFrame, Sample


class FrameSource(ABC):
    """A stream of raw frames (to be segmented) or of already segmented samples.

    `read()` returns the next item, or None at the end of the stream. A bad item raises
    `FrameError` and the source moves past it, so a caller can record the error and go on.
    """

    #: True when the source yields `Sample`s (already segmented, the paper's layout).
    segmented: bool = False

    @abstractmethod
    def read(self) -> RGBDFrame | Sample | None:
        ...

    def close(self) -> None:
        """Release the device or files; reading after close is an error."""

    def __iter__(self) -> Iterator[RGBDFrame | Sample]:
        while (item := self.read()) is not None:
            yield item

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
