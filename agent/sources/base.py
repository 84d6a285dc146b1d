"""The one small interface every frame source implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

from agent.frame import RGBDFrame, Sample


class SourceError(RuntimeError):
    """The source itself failed (camera lost, no frames in time): reconnect, don't skip a frame."""


class FrameSource(ABC):
    """A stream of raw frames (to be segmented) or of already segmented samples.

    `read()` returns the next item, or None at the end of the stream. A bad item raises
    `FrameError` and the source moves past it, so a caller can record the error and go on.
    A failure of the source itself raises `SourceError`; the caller closes and reopens it.
    """

    #: True when the source yields `Sample`s (already segmented, the paper's layout).
    segmented: bool = False
    #: True for streams that run whether or not anyone reads (a camera): frames are
    #: grabbed continuously and an MQTT trigger takes the next one. False for replays,
    #: which advance only when read.
    live: bool = False

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
