"""Where a part differs: per-pixel anomaly maps |G(z*) - x|.

`pixel_map` is the per-channel absolute difference between the best seed's reconstruction
and the model input, both in [-1, 1], halved to [0, 1]. `heat` reduces it to one channel
(the maximum over R, G, B and depth, and the depth relief where a bundle checks it),
`encode_map` makes the small PNG that the agent attaches to `anomaly` events, and
`map_tiles` draws input, reconstruction and heat map for people (report figures).

A bundle may smooth its map (the manifest's `heat.sigma`, pixels of the model input; `adgan
export` writes 2 per 64 pixels of input since 2026-12-03): a Gaussian over the combined map
before it goes anywhere, so a defect's pixels read as one region rather than a speckle of
JPEG and print edges (blocked CV, issue 15: bench/RESULTS.md "A smoothed anomaly map").

Where the input shows background, a bundle may compare against the generator's own background
(the manifest's `heat.background`, "drawn"; `adgan export` writes it since 2026-12-03): the
generators draw the background as a noisy dark grey near -0.6, not the input's -1, so against -1
every background pixel of the crop reads as a difference of ~0.2, above a part's own normal
residual, and the map lights up where nothing is. With "drawn" a background pixel counts how far
G's drawing there lies from G's median over the input's background (per channel): missing
material, where G draws the part, still reads hot. "black" (bundles written before) is |G - x|
everywhere (bench/RESULTS.md "The anomaly map against the generator's own background").
"""
from __future__ import annotations

import base64

import cv2
import numpy as np

from agent.segment.preprocess import input_to_sample
from agent.visual import sample_tile


HEAT_BACKGROUNDS = ("black", "drawn")


def check_background(background) -> str:
    """A heat map's background reference ("black" or "drawn"), or ValueError."""
    if background not in HEAT_BACKGROUNDS:
        raise ValueError(f"the heat map's background must be one of {HEAT_BACKGROUNDS}, got {background!r}")
    return background


def pixel_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(4, S, S) |y - x| / 2 in [0, 1] for a model input x and its reconstruction y."""
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"input {x.shape} and reconstruction {y.shape} must both be (C, S, S)")
    return np.clip(np.abs(y.astype(np.float32) - x.astype(np.float32)) * 0.5, 0.0, 1.0)


def check_sigma(sigma) -> float:
    """A heat map's smoothing (pixels of the model input) as a float, or ValueError."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"the heat map's sigma must be a number >= 0 (pixels of the model input), got {sigma!r}")
    return float(sigma)


def smooth(h: np.ndarray, sigma: float) -> np.ndarray:
    """`h` through a Gaussian of `sigma` pixels (edges replicated, so a part at the border is not
    dimmed); sigma 0 returns `h` as it is."""
    if check_sigma(sigma) == 0:
        return h
    return cv2.GaussianBlur(h.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)


def background_map(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """(S, S) where the input x is background (depth -1): how far G's drawing lies from G's own
    background, |y - b| / 2 with b G's per-channel median over those pixels, the maximum over
    channels; elsewhere 0. None when x has no background pixel."""
    bg = x[3] <= -1.0
    if not bg.any():
        return None
    y = y.astype(np.float32)
    b = np.median(y[:, bg], axis=1).astype(np.float32)
    d = np.clip(np.abs(y - b[:, None, None]) * 0.5, 0.0, 1.0).max(axis=0)
    return np.where(bg, d, np.float32(0.0))


def heat(x: np.ndarray, y: np.ndarray, relief: np.ndarray | None = None, sigma: float = 0.0,
         background: str = "black") -> np.ndarray:
    """(S, S) maximum over channels of the pixel map, in [0, 1]; with background "drawn", on the
    input's background pixels against G's own background (`background_map`) instead of -1; with
    a relief map in the same units (how unusually far the part's surface lies behind its fit:
    `ScoreResult.relief_heat`, agent/scoring/relief.py), the larger of the two at each pixel, so
    that a dent the generator drew shows too; then smoothed by a Gaussian of `sigma` pixels (the
    bundle's `heat_sigma`)."""
    h = pixel_map(x, y).max(axis=0)
    if check_background(background) == "drawn":
        hb = background_map(x, y)
        if hb is not None:
            h = np.where(x[3] <= -1.0, hb, h)
    if relief is not None:
        if relief.shape != h.shape:
            raise ValueError(f"relief map {relief.shape} does not match the input's {h.shape}")
        h = np.maximum(h, np.clip(relief.astype(np.float32), 0.0, 1.0))
    return smooth(h, sigma)


def encode_map(h: np.ndarray) -> dict:
    """A heat map as the event's `anomaly_map`: 8-bit grey PNG, base64, 255 = a difference of 1."""
    u8 = np.clip(np.rint(h * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", u8)
    if not ok:
        raise ValueError("could not encode the anomaly map")
    ys, xs = np.unravel_index(int(np.argmax(h)), h.shape)
    return {"format": "png", "encoding": "base64", "width": int(h.shape[1]), "height": int(h.shape[0]),
            "max": round(float(h.max()), 6), "mean": round(float(h.mean()), 6), "peak_xy": [int(xs), int(ys)],
            "data": base64.b64encode(buf.tobytes()).decode("ascii")}


def hot_box(h: np.ndarray, crop: tuple[int, int, int] | None = None, level: float = 0.5,
            crop_frame: str = "camera") -> dict:
    """The bounding box of the hottest region of a heat map: the connected pixels at or above
    `level` times the peak that contain the peak. With `crop` = (x0, y0, side), the window the
    model input was cut from, the box is in the pixels of what it was cut from: the camera
    frame, or with crop_frame "sample" a stored sample (a crop-to-part model reading the
    paper's layout); otherwise in model-input pixels ("sample")."""
    if h.ndim != 2 or not h.size:
        raise ValueError(f"a heat map must be (H, W), got {h.shape}")
    peak = np.unravel_index(int(np.argmax(h)), h.shape)
    hot = (h >= level * float(h[peak])).astype(np.uint8)
    _, labels = cv2.connectedComponents(hot, connectivity=8)
    ys, xs = np.nonzero(labels == labels[peak])
    x, y, w, hh = float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())
    frame = "sample"
    if crop is not None:
        x0, y0, side = crop
        k = side / h.shape[1]
        x, y, w, hh = x0 + x * k, y0 + y * k, w * k, hh * k
        frame = crop_frame
    return {"x": int(round(x)), "y": int(round(y)), "width": max(1, int(round(w))), "height": max(1, int(round(hh))),
            "frame": frame, "peak": round(float(h[peak]), 6)}


def decode_map(m: dict) -> np.ndarray:
    """The (H, W) map in [0, 1] back from an event's `anomaly_map`."""
    img = cv2.imdecode(np.frombuffer(base64.b64decode(m["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("anomaly_map data is not a PNG")
    return img.astype(np.float32) / 255.0


def map_tiles(x: np.ndarray, y: np.ndarray, scale: int = 2, relief: np.ndarray | None = None,
              sigma: float = 0.0, background: str = "black") -> np.ndarray:
    """Input (RGB above depth) | reconstruction | heat map (RGB colour map), side by side."""
    h = heat(x, y, relief, sigma, background)
    hm = cv2.applyColorMap(np.rint(h * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[:, :, ::-1]
    s = x.shape[1]
    hm = np.vstack([hm, np.zeros((s, s, 3), np.uint8)])  # same height as the RGB-over-depth tiles
    tiles = [sample_tile(input_to_sample(x)), sample_tile(input_to_sample(y)), hm]
    out = np.hstack([np.pad(t, ((0, 0), (0, 1), (0, 0))) for t in tiles])
    return cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale != 1 else out
