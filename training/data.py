"""Training data: one class's normal samples as a tensor, with a fingerprint, and augmentation."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from agent.segment.preprocess import Preprocessing, reframe, sample_to_input
from agent.sources.dataset import (check_preprocessing, class_folders, frame_numbers, jpeg_quality,
                                   read_preprocessing, read_sample, rgb_path)

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ClassData:
    x: torch.Tensor  # (N, 4, S, S) in [-1, 1]
    frames: list[int]
    folder: Path
    fingerprint: str  # sha256 of the frame numbers and file bytes used
    preprocessing: Preprocessing


def find_class_folder(root: str | Path, cls: str) -> Path:
    folders = {f.name: f for f in class_folders(root)}
    if cls not in folders:
        raise FileNotFoundError(f"{root} has no class folder {cls!r} (found: {', '.join(sorted(folders))})")
    return folders[cls]


def load_class(root: str | Path, cls: str, size: int, frames: tuple[int, int] | None = None,
               framing: str | None = None, margin: float | None = None,
               exclude: tuple[int, int] | None = None) -> ClassData:
    """Every sample of `cls` under `root` (optionally frames LO:HI, less frames `exclude`
    LO:HI: a held-out block) resized to `size`; with
    framing "object", samples stored with the whole frame are cropped to the part first
    (`reframe`, `margin` of the part's box on each side). The fingerprint is of the stored bytes."""
    folder = find_class_folder(root, cls)
    nums = frame_numbers(folder, frames)
    if exclude is not None:
        nums = [n for n in nums if not exclude[0] <= n < exclude[1]]
    if not nums:
        raise ValueError(f"{folder}: no samples" + (f" in frames {frames[0]}:{frames[1]}" if frames else "")
                         + (f" outside frames {exclude[0]}:{exclude[1]}" if exclude else ""))
    recorded = read_preprocessing(folder)
    if recorded is None:
        log.info("%s records no preprocessing: taking the paper's (per-image min-max depth, whole frame)", folder)
        recorded = Preprocessing()
    prep = replace(recorded, size=size, framing=framing or recorded.framing,
                   margin=recorded.margin if margin is None else margin,
                   rgb_jpeg_quality=stored_jpeg_quality(folder, nums))
    check_preprocessing(folder, prep)
    h = hashlib.sha256()
    xs = []
    for n in nums:
        s = read_sample(folder, n)
        h.update(f"{n}:".encode())
        h.update(s.rgb.tobytes())
        h.update(s.depth.tobytes())
        xs.append(sample_to_input(reframe(s, recorded, prep), size))
    return ClassData(torch.from_numpy(np.stack(xs)), nums, folder, h.hexdigest(), prep)


def stored_jpeg_quality(folder: Path, nums: list[int], probes: int = 5) -> int:
    """The JPEG quality of the samples' stored RGB (the median over a few files spread over
    `nums`), 0 when they are not JPEG: what a live frame's sample goes through before scoring."""
    picks = sorted({nums[int(i)] for i in np.linspace(0, len(nums) - 1, min(probes, len(nums)))})
    qs = [jpeg_quality(rgb_path(folder, n)) for n in picks]
    if any(q is None for q in qs):
        return 0
    q = int(np.median(qs))
    if len(set(qs)) > 1:
        log.info("%s: RGB stored at JPEG qualities %s; live samples will go through quality %d", folder, qs, q)
    return q


def load_run_data(st: dict, data: str | Path | None = None, run: str | Path = "the run") -> ClassData:
    """The very samples a training run (its checkpoint `st`) was trained on, framed as it
    framed them; from `data` when the dataset root has moved. Refuses other samples."""
    d = st["data"]
    root = Path(data) if data else Path(d["folder"]).parent
    frames = d.get("frames") or []
    rng = (min(frames), max(frames) + 1) if frames else None
    prep = st.get("preprocessing") or {}
    exclude = st["config"].get("exclude_frames")
    size = int(st["architecture"]["size"])
    cd = load_class(root, d["class"], size, rng, prep.get("framing"), prep.get("margin"),
                    tuple(exclude) if exclude else None)
    if cd.fingerprint != d["fingerprint"]:
        raise ValueError(f"the samples under {root} are not the ones {run} was trained on (fingerprint differs); "
                         "pass --data with the training data")
    return cd


def augment(x: torch.Tensor, flip: bool, shift: int, gen: torch.Generator, hue: float = 0.0,
            saturation: float = 0.0, brightness: float = 0.0) -> torch.Tensor:
    """Random horizontal flips and integer shifts up to `shift` px (the uncovered border is background, -1),
    then the part's colour (`color_jitter`)."""
    if flip:
        m = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    if shift > 0:
        out = torch.full_like(x, -1.0)
        d = torch.randint(-shift, shift + 1, (x.shape[0], 2), generator=gen).tolist()
        s = x.shape[-1]
        for i, (dy, dx) in enumerate(d):
            ys, yd = (slice(0, s - dy), slice(dy, s)) if dy >= 0 else (slice(-dy, s), slice(0, s + dy))
            xs, xd = (slice(0, s - dx), slice(dx, s)) if dx >= 0 else (slice(-dx, s), slice(0, s + dx))
            out[i, :, yd, xd] = x[i, :, ys, xs]
        x = out
    if hue or saturation or brightness:
        x = color_jitter(x, hue, saturation, brightness, gen)
    return x


def color_jitter(x: torch.Tensor, hue: float, saturation: float, brightness: float,
                 gen: torch.Generator) -> torch.Tensor:
    """A new colour for each sample's part, so that a class's model covers instances of colours
    the training frames did not show (a green ball where only red and yellow ones were filmed).

    Per sample: the RGB of the part's pixels (depth above background) is rotated about the grey
    axis by an angle uniform in [-hue, hue] degrees (a hue shift that keeps brightness), its
    distance from grey is scaled by a factor uniform in [1 - saturation, 1 + saturation], and it
    is scaled by a factor uniform in [1 - brightness, 1 + brightness], then clipped to [-1, 1].
    Depth and the background are left as they are; the shape of the part and any local pattern
    on it are kept. x: (N, 4, S, S) in [-1, 1], channels R, G, B, depth."""
    if not (0 <= hue <= 180 and 0 <= saturation <= 1 and 0 <= brightness <= 1):
        raise ValueError(f"need hue in [0, 180] degrees, saturation and brightness in [0, 1]; got "
                         f"{hue}, {saturation}, {brightness}")
    u = torch.rand(x.shape[0], 3, generator=gen) * 2 - 1           # uniform in [-1, 1]
    return recolor(x, u[:, 0] * hue, 1 + u[:, 1] * saturation, 1 + u[:, 2] * brightness)


def recolor(x: torch.Tensor, hue_deg: torch.Tensor, saturation: torch.Tensor,
            brightness: torch.Tensor) -> torch.Tensor:
    """The part's RGB rotated about the grey axis by `hue_deg`, its distance from grey scaled by
    `saturation`, then scaled by `brightness` (one value of each per sample), clipped."""
    k = torch.full((3,), 3 ** -0.5)                                 # the grey axis
    kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    theta = torch.deg2rad(hue_deg.float())
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    rot = c * torch.eye(3) + s * kx + (1 - c) * torch.outer(k, k)  # Rodrigues, one matrix per sample
    rgb = (x[:, :3] + 1) / 2                                        # [0, 1]
    grey = rgb.mean(1, keepdim=True)
    rgb = grey + saturation[:, None, None, None] * (rgb - grey)
    rgb = torch.einsum("nij,njhw->nihw", rot, rgb) * brightness[:, None, None, None]
    rgb = rgb.clamp(0, 1) * 2 - 1
    part = x[:, 3:] > -1 + 1e-6
    return torch.cat([torch.where(part, rgb, x[:, :3]), x[:, 3:]], 1)
