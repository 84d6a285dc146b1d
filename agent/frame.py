"""The data that flows through the pipeline: raw RGB-D frames and segmented samples."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.records import Record, record


class FrameError(ValueError):
    """A frame or sample that cannot be used (corrupt file, wrong type or shape).

    `meta` says which frame it was, where the source knows (frame number, path)."""

    def __init__(self, message: str, meta: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.meta = dict(meta or {})


def same_problem(reason: str) -> str:
    """What makes two frame problems the same one, whatever their numbers (a frame number, a file
    name, a measured fraction): continuous mode reports a problem once while it repeats."""
    return re.sub(r"\d+(?:\.\d+)?", "#", reason)


DARK_LEVEL = 32        # of 255: a colour image whose brightest pixels stay below it shows no part (no light)
BLOWN_FRACTION = 0.9   # a colour image this much clipped white (every channel 250 or more) shows none either


def unlit(rgb: np.ndarray, part: np.ndarray | None = None) -> str | None:
    """Why the colour image cannot show a part to the model (None: it can): black, as with the
    station's light off, the colour lens covered or its stream failed, where depth (the camera's own
    infrared) still finds the part; or blown out white (sunlight, an exposure set far too high). The
    model then scored what it could not see, and mostly passed it (the search is nearly blind to the
    light's level: bench/lighting_drift.py). The paper's frames have their brightest pixels at
    182-255 (the 99.9th percentile of each pixel's brightest channel), the demo's at 96 or more. `part`: where the part
    is (a sample's depth > 0), whose pixels alone count as white (a sample's background is black).
    Read on at most ~160 pixels a side, every n-th."""
    step = max(1, min(rgb.shape[:2]) // 120)
    px = rgb[::step, ::step]
    if np.percentile(px.max(axis=2), 99.9) < DARK_LEVEL:
        return (f"the colour image is black (its brightest pixels under {DARK_LEVEL} of 255): the station's light "
                "is off, the colour lens is covered, or its stream failed; the part cannot be judged")
    white = px.min(axis=2) >= 250
    if part is not None and part[::step, ::step].any():
        white = white[part[::step, ::step]]
    if np.mean(white) >= BLOWN_FRACTION:
        return (f"the colour image is blown out (over {100 * BLOWN_FRACTION:.0f}% of it white): sunlight or an "
                "exposure set too high; the part cannot be judged")
    return None


class NoObjectError(ValueError):
    """Segmentation left no object pixels: an explicit 'no object', not a failure."""


@record
class Intrinsics(Record):
    """Pinhole intrinsics of the depth-aligned colour image, in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"intrinsics size must be positive, got {self.width}x{self.height}")
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise ValueError(f"intrinsics {name} must be finite, got {v}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")

    @classmethod
    def default(cls, width: int = 640, height: int = 480, hfov_deg: float = 69.0) -> "Intrinsics":
        """A RealSense D4xx-like colour camera (69 degrees horizontal field of view)."""
        f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
        return cls(width, height, f, f, (width - 1) / 2, (height - 1) / 2)


def _check_rgb(rgb: np.ndarray, what: str) -> None:
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{what} must be uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{what} is empty: {rgb.shape}")


@dataclass(frozen=True, eq=False)
class RGBDFrame:
    """One capture: RGB uint8 HxWx3, depth uint16 HxW in millimetres (0 = no depth).

    `meta` carries what the source knows besides pixels (file path, frame number,
    synthetic ground truth); nothing downstream depends on it.
    """

    rgb: np.ndarray
    depth: np.ndarray
    timestamp: float
    intrinsics: Intrinsics
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_rgb(self.rgb, "rgb frame")
        d = self.depth
        if not isinstance(d, np.ndarray):
            raise ValueError(f"depth frame must be a numpy array, got {type(d).__name__}")
        if d.dtype != np.uint16 or d.ndim != 2:
            raise ValueError(f"depth frame must be uint16 HxW (millimetres), got {d.dtype} {d.shape}")
        if d.shape != self.rgb.shape[:2]:
            raise ValueError(f"depth {d.shape} and rgb {self.rgb.shape[:2]} sizes differ")
        if not isinstance(self.intrinsics, Intrinsics):
            raise ValueError(f"intrinsics must be Intrinsics, got {type(self.intrinsics).__name__}")
        if (self.intrinsics.height, self.intrinsics.width) != d.shape:
            raise ValueError(
                f"intrinsics are for {self.intrinsics.width}x{self.intrinsics.height}, "
                f"frame is {d.shape[1]}x{d.shape[0]}")
        if not math.isfinite(self.timestamp):
            raise ValueError(f"timestamp must be finite, got {self.timestamp}")

    @property
    def height(self) -> int:
        return self.depth.shape[0]

    @property
    def width(self) -> int:
        return self.depth.shape[1]


@dataclass(frozen=True, eq=False)
class Sample:
    """A segmented, framed and resized sample: the paper's on-disk format.

    rgb uint8 SxSx3 masked to the object (0 elsewhere); depth uint8 SxS normalised to
    1..255 on the object, 0 where removed.
    """

    rgb: np.ndarray
    depth: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_rgb(self.rgb, "sample rgb")
        d = self.depth
        if not isinstance(d, np.ndarray) or d.dtype != np.uint8 or d.ndim != 2:
            raise ValueError(
                f"sample depth must be uint8 HxW (8-bit normalised), got "
                f"{getattr(d, 'dtype', type(d).__name__)} {getattr(d, 'shape', '')}")
        if d.shape != self.rgb.shape[:2]:
            raise ValueError(f"sample depth {d.shape} and rgb {self.rgb.shape[:2]} sizes differ")

    @property
    def size(self) -> int:
        return self.depth.shape[0]
