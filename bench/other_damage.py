"""Damage made by another hand: does a damage AUROC measured on `adgan dataset damage` hold on
defects it did not make? (issue 15: "damage made by a different hand will be used again")

Five kinds, written apart from calibration/damage.py and unlike its five in shape or mechanism,
each sized from the part (its equivalent radius R = sqrt(area / pi)) so that it is visible at 64 px:

- scratch  a thin curved line across the part (1-2 px at 64 px), lighter or darker; depth as it was
- crack    a jagged thin line from the rim inwards, dark, a little deeper
- notch    a V cut into the rim: the pixels removed (RGB and depth 0, as background)
- bump     a smooth protrusion: nearer the camera (the other way from a dent), its top lighter
- smudge   a soft, low-contrast greyish tint over a patch; depth as it was

The layout is `adgan dataset damage`'s, so `adgan evaluate --damage DST` reads it: DST/<class>/
the intact samples written again through the same encoding, DST/<class>_<defect>/ the damaged
copies with mask/N.png, DST/damage.json. Deterministic by seed.

    .venv/bin/python bench/other_damage.py ../shared/data/paper-rgbd/sphere --out runs/other-damage \
        --frames 700:1000 --seed 7
"""
from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.frame import Sample  # noqa: E402
from agent.segment.preprocess import part_mask  # noqa: E402
from agent.sources.dataset import (class_folders, frame_numbers, parse_frames, read_sample, write_mask,  # noqa: E402
                                   write_sample)

KINDS = ("scratch", "crack", "notch", "bump", "smudge")


def _line_mask(hw, points: np.ndarray, width: int) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    cv2.polylines(m, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], False, 1, thickness=width)
    return m.astype(bool)


def _inside(mask: np.ndarray, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    ys, xs = np.nonzero(dist >= margin)
    if len(xs) == 0:
        ys, xs = np.nonzero(dist >= dist.max() * 0.7)
    i = rng.integers(len(xs))
    return float(xs[i]), float(ys[i])


def _edge(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A pixel on the part's outline and the direction into the part there."""
    rim = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    ys, xs = np.nonzero(rim)
    i = rng.integers(len(xs))
    cy, cx = np.argwhere(mask).mean(axis=0)
    d = np.array([cx - xs[i], cy - ys[i]], float)
    d /= max(np.linalg.norm(d), 1e-6)
    return float(xs[i]), float(ys[i]), float(d[0]), float(d[1])


def damage(s: Sample, kind: str, rng: np.random.Generator) -> tuple[Sample, np.ndarray]:
    mask = part_mask(s.depth)
    area = int(mask.sum())
    if area < 30:  # (calibration/damage.py's MIN_PART_PX: the same frames as its sets)
        raise ValueError("part too small")
    R = float(np.sqrt(area / np.pi))
    hw = mask.shape
    px = max(1, round(hw[0] / 64))  # a pixel at 64 px, in this frame's pixels
    rgb, depth = s.rgb.astype(np.float32), s.depth.astype(np.float32)
    yy, xx = np.mgrid[:hw[0], :hw[1]].astype(np.float32)
    if kind == "scratch":
        cx, cy = _inside(mask, rng, 0.4 * R)
        a, length, bend = rng.uniform(0, np.pi), R * rng.uniform(0.7, 1.1), rng.uniform(-0.3, 0.3) * R
        t = np.linspace(-0.5, 0.5, 24)
        pts = np.stack([cx + t * length * np.cos(a) - bend * (t ** 2 - 0.25) * np.sin(a),
                        cy + t * length * np.sin(a) + bend * (t ** 2 - 0.25) * np.cos(a)], 1)
        gt = _line_mask(hw, pts, int(rng.integers(1, 3)) * px) & mask
        shift = rng.uniform(50, 90) * (1 if rgb[mask].mean() < 128 else -1)
        rgb[gt] = rgb[gt] + shift
    elif kind == "crack":
        x, y, dx, dy = _edge(mask, rng)
        n = 10
        steps = R * rng.uniform(0.5, 0.8) / n
        pts, p, d = [], np.array([x, y]), np.array([dx, dy])
        for _ in range(n + 1):
            pts.append(p.copy())
            ang = rng.uniform(-0.6, 0.6)
            d = np.array([d[0] * np.cos(ang) - d[1] * np.sin(ang), d[0] * np.sin(ang) + d[1] * np.cos(ang)])
            p = p + steps * d
        gt = _line_mask(hw, np.array(pts), px) & mask
        rgb[gt] *= rng.uniform(0.15, 0.35)
        depth[gt] = np.minimum(255, depth[gt] + rng.uniform(10, 25))
    elif kind == "notch":
        x, y, dx, dy = _edge(mask, rng)
        deep, half = R * rng.uniform(0.25, 0.4), R * rng.uniform(0.15, 0.25)
        tip = (x + deep * dx, y + deep * dy)
        ox, oy = -dy, dx  # along the outline
        out = 0.3 * deep
        tri = np.array([[x - out * dx + half * ox, y - out * dy + half * oy], [tip[0], tip[1]],
                        [x - out * dx - half * ox, y - out * dy - half * oy]])
        m = np.zeros(hw, np.uint8)
        cv2.fillPoly(m, [np.round(tri).astype(np.int32)], 1)
        gt = m.astype(bool) & mask
        rgb[gt], depth[gt] = 0, 0
    elif kind == "bump":
        cx, cy = _inside(mask, rng, 0.45 * R)
        r = R * rng.uniform(0.28, 0.4)
        b = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (r / 2) ** 2)) * mask
        b[b < 0.08] = 0
        gt = b > 0
        depth = np.where(mask, np.maximum(1, depth - rng.uniform(15, 35) * b), depth)
        rgb = rgb + (255 - rgb) * (rng.uniform(0.25, 0.45) * b)[..., None]
    elif kind == "smudge":
        cx, cy = _inside(mask, rng, 0.3 * R)
        r = R * rng.uniform(0.35, 0.5)
        alpha = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (r / 1.5) ** 2)) * mask * rng.uniform(0.35, 0.5)
        alpha[alpha < 0.06] = 0
        gt = alpha > 0
        tint = np.array([rng.uniform(110, 150), rng.uniform(115, 155), rng.uniform(130, 175)])  # a cool grey
        rgb = rgb * (1 - alpha[..., None]) + tint * alpha[..., None]
    else:
        raise ValueError(kind)
    out = Sample(rgb=np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
                 depth=np.clip(np.rint(depth), 0, 255).astype(np.uint8), meta=dict(s.meta))
    return out, gt & ((out.depth > 0) | mask)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--frames", default=None)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists():
        raise SystemExit(f"{out} exists: choose a new folder")
    frames = parse_frames(a.frames)
    record: dict = {}
    for folder in class_folders(a.src):
        cls = folder.name
        for n in frame_numbers(folder, frames):
            s = read_sample(folder, n)
            made = []
            for kind in KINDS:
                rng = np.random.default_rng([a.seed, zlib.crc32(f"{cls}/{kind}".encode()), n])
                try:
                    made.append((kind, *damage(s, kind, rng)))
                except ValueError:
                    break
            if len(made) < len(KINDS):
                continue
            write_sample(out / cls, n, s)
            for kind, bad, gt in made:
                write_sample(out / f"{cls}_{kind}", n, bad)
                write_mask(out / f"{cls}_{kind}", n, gt)
                record.setdefault(f"{cls}_{kind}", {})[str(n)] = int(gt.sum())
    (out / "damage.json").write_text(json.dumps({"seed": a.seed, "defects": list(KINDS), "by": "bench/other_damage.py",
                                                 "defect_px": record}, indent=1) + "\n")
    print({k: len(v) for k, v in record.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
