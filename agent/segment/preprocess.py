"""Segmented frame -> Sample (the paper's 8-bit on-disk format) -> model input in [-1, 1].

One `Preprocessing` object describes the recipe. It is serialised into training
checkpoints and bundles, and the agent uses the bundle's copy, so what was trained,
calibrated and deployed sees the same pixels.
"""
from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from agent.frame import NoObjectError, RGBDFrame, Sample
from agent.records import Record, record
from agent.segment.segmentation import Segmentation

PREPROCESSING_VERSION = 1


@record
class Preprocessing(Record):
    """How a segmented frame becomes a model input.

    depth_norm:
      "minmax"  the paper: per-image min-max of the object's depth to 1..255 (far = bright);
      "fixed"   a fixed millimetre range [depth_min_mm, depth_max_mm] to 1..255, which keeps
                absolute distance (object size and height) in the input.
    framing:
      "frame"   the paper: the square region of interest (the central square of the frame
                when the station sets no ROI) resized to `size`;
      "object"  crop to the part: a square around the object's bounding box, `margin` wider
                on each side, resized to `size`. A part fills the input whatever its distance,
                so the model cannot learn sizes. Samples stored with "frame" framing (the
                paper's layout) are cropped the same way when read for an "object" model
                (`reframe`); the crop's window and scale go into the sample's meta.
    rgb_jpeg_quality:
      the JPEG quality of the training samples' stored RGB (the paper's layout keeps RGB as
      JPEG), found from the files when a run is trained; 0: stored losslessly, or not known
      (runs and bundles made before it was recorded). A live frame's sample goes through the
      same JPEG round trip before it is scored (`like_stored`), so the model scores the
      pixels it was trained on: raw crops score ~1.4x the stored ones on the demo's
      cylinders, enough to push normal parts over a threshold calibrated on stored samples.
    """

    size: int = 64
    depth_norm: Literal["minmax", "fixed"] = "minmax"
    depth_min_mm: int = 300
    depth_max_mm: int = 700
    framing: Literal["frame", "object"] = "frame"
    margin: float = 0.15
    rgb_jpeg_quality: int = 0
    version: int = PREPROCESSING_VERSION

    def __post_init__(self) -> None:
        if self.size not in (32, 64, 128):
            raise ValueError(f"size must be 32, 64 or 128, got {self.size}")
        if self.depth_norm not in ("minmax", "fixed"):
            raise ValueError(f"depth_norm must be 'minmax' or 'fixed', got {self.depth_norm!r}")
        if self.framing not in ("frame", "object"):
            raise ValueError(f"framing must be 'frame' or 'object', got {self.framing!r}")
        if not 0 <= self.depth_min_mm < self.depth_max_mm <= 65535:
            raise ValueError(f"need 0 <= depth_min_mm < depth_max_mm <= 65535, got "
                             f"{self.depth_min_mm}, {self.depth_max_mm}")
        if not 0 <= self.margin <= 2:
            raise ValueError(f"margin must be in [0, 2], got {self.margin}")
        if not 0 <= self.rgb_jpeg_quality <= 100:
            raise ValueError(f"rgb_jpeg_quality must be in [0, 100] (0: none), got {self.rgb_jpeg_quality}")
        if self.version != PREPROCESSING_VERSION:
            raise ValueError(f"preprocessing version {self.version} is not supported "
                             f"(this build reads version {PREPROCESSING_VERSION})")



def object_window(mask: np.ndarray, margin: float, min_side: int = 8) -> tuple[int, int, int]:
    """(x0, y0, side): the square around the mask's bounding box, `margin` of its longer side
    wider on each side, centred on the box; it may extend past the image."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise NoObjectError("no object pixels to frame")
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(int(np.ceil(max(x1 - x0, y1 - y0) * (1 + 2 * margin))), min_side)
    return int((x0 + x1 - side) // 2), int((y0 + y1 - side) // 2), side


def part_mask(depth8: np.ndarray) -> np.ndarray:
    """The part in a stored sample: the largest connected region of pixels with depth once
    one-pixel lines are opened away (segmentation leaves specks and lines of table edge or
    cable that touch the part). Not RGB: JPEG leaves faint noise around the part."""
    kept = depth8 > 0
    core = cv2.morphologyEx(kept.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    m = core if core.any() else kept
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n <= 1:
        return m
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _square_window(frame_hw: tuple[int, int], roi: tuple[int, int, int, int] | None,
                   mask: np.ndarray, prep: Preprocessing) -> tuple[int, int, int]:
    """(x0, y0, side) of the square to crop; it may extend past the frame (zero padded)."""
    h, w = frame_hw
    if prep.framing == "object":
        return object_window(mask, prep.margin)
    rx, ry, rw, rh = roi if roi is not None else (0, 0, w, h)
    side = min(rw, rh)
    return rx + (rw - side) // 2, ry + (rh - side) // 2, side


def _crop(img: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """Crop a square, padding with zeros where it leaves the image."""
    h, w = img.shape[:2]
    out = np.zeros((side, side) + img.shape[2:], img.dtype)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def normalise_depth(depth: np.ndarray, mask: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint16 mm depth -> uint8: 1..255 on the object, 0 elsewhere."""
    d = depth.astype(np.float32)
    if prep.depth_norm == "minmax":
        vals = d[mask]
        lo, hi = float(vals.min()), float(vals.max())
    else:
        lo, hi = float(prep.depth_min_mm), float(prep.depth_max_mm)
    scaled = np.clip((d - lo) / max(hi - lo, 1.0), 0.0, 1.0) * 254.0 + 1.0
    return np.where(mask, np.rint(scaled), 0).astype(np.uint8)


def make_sample(frame: RGBDFrame, seg: Segmentation, prep: Preprocessing,
                roi: tuple[int, int, int, int] | None = None) -> Sample:
    """Mask, normalise, frame and resize a segmented frame to a `prep.size` Sample."""
    mask = seg.object
    if mask.shape != frame.depth.shape:
        raise ValueError(f"mask {mask.shape} does not match frame {frame.depth.shape}")
    if not mask.any():
        raise NoObjectError("segmentation found no object pixels")
    rgb = np.where(mask[..., None], frame.rgb, 0).astype(np.uint8)
    depth8 = normalise_depth(frame.depth, mask, prep)
    x0, y0, side = _square_window(frame.depth.shape, roi, mask, prep)
    rgb = _crop(rgb, x0, y0, side)
    depth8 = _crop(depth8, x0, y0, side)
    s = prep.size
    # INTER_AREA: the only OpenCV filter that averages all source pixels when shrinking.
    rgb = cv2.resize(rgb, (s, s), interpolation=cv2.INTER_AREA)
    depth8 = cv2.resize(depth8, (s, s), interpolation=cv2.INTER_AREA)
    meta = dict(frame.meta)
    meta["object_area_px"] = int(np.count_nonzero(mask))
    meta["crop"] = (int(x0), int(y0), int(side))  # the camera window the sample shows (square, may overhang)
    meta["crop_scale"] = side / s  # camera pixels per model pixel
    return Sample(rgb=rgb, depth=depth8, meta=meta)


def like_stored(sample: Sample, prep: Preprocessing) -> Sample:
    """A live sample as the training samples were stored: its RGB through JPEG at
    `prep.rgb_jpeg_quality` (unchanged when 0). Exact when the training samples were stored at
    the model's size and framing (what `adgan dataset` writes); for whole frames cropped to
    the part when read (`reframe`) the stored artefacts were resized with the crop, so it is
    an approximation there."""
    q = prep.rgb_jpeg_quality
    if q == 0:
        return sample
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(sample.rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise ValueError("JPEG encoding of the sample failed")
    rgb = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return Sample(rgb=np.ascontiguousarray(rgb), depth=sample.depth, meta=sample.meta)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    # INTER_AREA averages every source pixel when shrinking; enlarging, it would repeat pixels.
    interp = cv2.INTER_AREA if img.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def reframe(sample: Sample, recorded: Preprocessing, want: Preprocessing) -> Sample:
    """A stored sample (made with `recorded`) as a model of `want` sees it.

    Same framing: unchanged (`sample_to_input` resizes). "frame" samples for an "object"
    model: cropped to the part (`part_mask`, `object_window` with want's margin) and resized
    to want.size. meta gets "reframe" = (x0, y0, side) in the stored sample's pixels and
    "crop_scale" = side / size (stored pixels per model pixel); a "crop" (the camera window
    of the stored sample) becomes the camera window of the new one."""
    if recorded.framing == want.framing:
        return sample
    if (recorded.framing, want.framing) != ("frame", "object"):
        raise ValueError(f"cannot reframe {recorded.framing!r} samples for a {want.framing!r} model")
    mask = part_mask(sample.depth)
    if not mask.any():
        raise NoObjectError("the sample holds no part (no pixels with depth)")
    x0, y0, side = object_window(mask, want.margin)
    rgb = _resize(_crop(sample.rgb, x0, y0, side), want.size)
    depth = _resize(_crop(sample.depth, x0, y0, side), want.size)
    meta = dict(sample.meta)
    meta["reframe"] = (x0, y0, side)
    meta["crop_scale"] = side / want.size
    cam = sample.meta.get("crop")
    if cam is not None:
        k = cam[2] / sample.size
        meta["crop"] = (int(round(cam[0] + x0 * k)), int(round(cam[1] + y0 * k)), max(int(round(side * k)), 1))
    return Sample(rgb=rgb, depth=depth, meta=meta)


def uncrop_map(h: np.ndarray, window: tuple[int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """A map over the window (x0, y0, side) of an image of `shape`, put back in place (0 outside)."""
    x0, y0, side = window
    big = cv2.resize(h.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    out = np.zeros(shape, np.float32)
    H, W = shape
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, W), min(y0 + side, H)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0:sy1, sx0:sx1] = big[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    return out


def sample_to_input(sample: Sample, size: int | None = None) -> np.ndarray:
    """Sample -> float32 (4, S, S) in [-1, 1]: R, G, B, depth. Resizes if `size` differs."""
    rgb, depth = sample.rgb, sample.depth
    if size is not None and sample.size != size:
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        depth = cv2.resize(depth, (size, size), interpolation=cv2.INTER_AREA)
    x = np.empty((4,) + depth.shape, np.float32)
    x[:3] = rgb.transpose(2, 0, 1)
    x[3] = depth
    x *= np.float32(1 / 127.5)
    x -= np.float32(1.0)
    return x


def input_to_sample(x: np.ndarray) -> Sample:
    """Inverse of `sample_to_input` for display: (4, S, S) in [-1, 1] -> Sample."""
    if x.ndim != 3 or x.shape[0] != 4:
        raise ValueError(f"model input must be (4, S, S), got {x.shape}")
    u8 = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return Sample(rgb=np.ascontiguousarray(u8[:3].transpose(1, 2, 0)), depth=u8[3])
