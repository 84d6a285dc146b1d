"""Local damage for evaluation: `adgan dataset damage SRC --out DST --defects ... --seed S`.

Each defect is made from the part's own mask (the sample's non-zero pixels), sized
relative to the part: its radius is a fraction of the part's equivalent radius
sqrt(area / pi), so a defect covers about the same share of a small and of a large part.

- chunk    a bite out of the rim: the pixels are removed (RGB and depth 0, as background)
- hole     a dark, deeper pit inside the part (depth farther = brighter in the 8-bit depth)
- stain    a blot of another colour inside the part; depth unchanged
- foreign  a small foreign body stuck to the rim, partly outside the part, nearer the camera
- dent     a smooth push-in inside the part: depth farther and shading darker towards its middle

`--size-scale F` multiplies every radius by F (0.25-3), with the same random draws otherwise, so a
sweep over F shows how large a defect must be for a bundle to catch it.

Output, deterministic by seed:
    DST/<class>/                 the intact samples, written again through the same encoding
    DST/<class>_<defect>/        the damaged copies (rgb/, depth/) and mask/N.png (255 = damaged)
    DST/damage.json              the parameters of every defect (centre, radius, pixels)
so an intact sample and its damaged twin differ only by the defect, not by compression.

DST is written whole or not at all: into a hidden folder beside it, moved into place at the end.
An existing DST that is not empty is refused (`adgan evaluate --damage` scores every
<class>_<defect>/ folder it finds, so a second run into it would mix in the first run's
folders and frames under the second's damage.json); `--force` replaces one that this command made.
"""
from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from agent import durable
from agent.frame import Sample
from agent.segment.preprocess import part_mask as sample_part_mask
from agent.sources.dataset import (PREPROCESSING_FILE, class_folders, frame_numbers, is_sample_folder, parse_frames,
                                   read_sample, write_mask, write_sample)

DAMAGE_DEFECTS = ("chunk", "hole", "stain", "foreign", "dent")
# defect radius as a fraction of the part's equivalent radius (uniform in this range)
RADIUS = {"chunk": (0.30, 0.45), "hole": (0.18, 0.28), "stain": (0.22, 0.35), "foreign": (0.20, 0.30),
          "dent": (0.30, 0.42)}
MIN_PART_PX = 30
# `--size-scale` multiplies RADIUS (a sweep of how large damage must be to be caught)
MIN_SCALE, MAX_SCALE = 0.25, 3.0


class DamageError(ValueError):
    """A sample that cannot carry a defect (too small, or no room for it)."""


def part_mask(s: Sample) -> np.ndarray:
    """The part: the largest connected region of pixels with depth once one-pixel lines are
    opened away (segmentation leaves specks and lines of table edge or cable that touch the
    part; they must not carry a defect). The same mask frames a part for crop-to-part models."""
    return sample_part_mask(s.depth)


def _disk(shape, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _blob(shape, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob: an ellipse of random aspect and angle with a wobbly edge."""
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    a = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.6, 1.0)
    u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
    v = (-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)) / aspect
    ang = np.arctan2(v, u)
    k, ph = rng.integers(3, 6), rng.uniform(0, 2 * np.pi)
    edge = r * (1 + 0.18 * np.sin(k * ang + ph))
    return u * u + v * v <= edge * edge


def _interior_point(mask: np.ndarray, margin: float, rng: np.random.Generator) -> tuple[float, float]:
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    ys, xs = np.nonzero(dist >= margin)
    if len(xs) == 0:  # a thin part: the deepest points
        ys, xs = np.nonzero(dist >= dist.max() * 0.8)
    i = rng.integers(len(xs))
    return float(xs[i]), float(ys[i])


def _rim_point(mask: np.ndarray, r: float, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(x, y, nx, ny): a boundary pixel of the part's body (not of a thin protrusion: at least
    35% of the square of side 2r around it is part) and the outward direction there."""
    m8 = mask.astype(np.uint8)
    rim = mask & ~cv2.erode(m8, np.ones((3, 3), np.uint8)).astype(bool)
    k = 2 * int(round(r)) + 1
    body = cv2.blur(mask.astype(np.float32), (k, k), borderType=cv2.BORDER_CONSTANT) >= 0.35
    if (rim & body).any():
        rim = rim & body
    ys, xs = np.nonzero(rim)
    i = rng.integers(len(xs))
    x, y = float(xs[i]), float(ys[i])
    cy, cx = np.argwhere(mask).mean(axis=0)
    n = np.array([x - cx, y - cy])
    n /= max(float(np.linalg.norm(n)), 1e-6)
    return x, y, float(n[0]), float(n[1])


def make_defect(s: Sample, defect: str, rng: np.random.Generator,
                scale: float = 1.0) -> tuple[Sample, np.ndarray, dict]:
    """(damaged copy, ground-truth mask, parameters) for one sample and one defect kind; `scale`
    multiplies the defect's radius (the same random draws otherwise; a defect inside the part keeps
    the distance from the rim its radius needs, so its centre may move)."""
    if defect not in DAMAGE_DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; choose from {', '.join(DAMAGE_DEFECTS)}")
    check_scale(scale)
    mask = part_mask(s)
    area = int(mask.sum())
    if area < MIN_PART_PX:
        raise DamageError(f"the part has {area} pixels, fewer than {MIN_PART_PX}: too small to damage")
    R = float(np.sqrt(area / np.pi))
    r = max(1.5, R * rng.uniform(*RADIUS[defect]) * scale)
    rgb, depth = s.rgb.astype(np.float32), s.depth.astype(np.float32)
    hw = mask.shape
    part_depth = depth[mask & (s.depth > 0)]
    d_lo, d_hi = (float(part_depth.min()), float(part_depth.max())) if part_depth.size else (1.0, 255.0)
    if defect == "chunk":
        x, y, nx, ny = _rim_point(mask, r, rng)
        cx, cy = x + 0.3 * r * nx, y + 0.3 * r * ny  # centred just outside: a bite, not a hole
        gt = _blob(hw, cx, cy, r, rng) & mask
        if gt.sum() > 0.5 * area:  # only at a large --size-scale
            raise DamageError(f"a chunk of radius {r:.1f} px would take {int(gt.sum())} of the part's {area} pixels")
        rgb[gt], depth[gt] = 0, 0
    elif defect == "hole":
        cx, cy = _interior_point(mask, 1.3 * r, rng)
        gt = _disk(hw, cx, cy, r) & mask
        rgb[gt] *= rng.uniform(0.05, 0.2)
        depth[gt] = np.minimum(255, np.maximum(depth[gt], d_hi) + rng.uniform(25, 60))
    elif defect == "stain":
        cx, cy = _interior_point(mask, 0.8 * r, rng)
        gt = _blob(hw, cx, cy, r, rng) & mask
        mean = rgb[mask].mean(axis=0)
        colour = np.array([rng.uniform(20, 90), rng.uniform(10, 60), rng.uniform(0, 40)])  # dark brown-ish
        if np.abs(colour - mean).max() < 60:  # on a dark part, a pale stain
            colour = 255 - colour
        alpha = rng.uniform(0.55, 0.8)
        rgb[gt] = (1 - alpha) * rgb[gt] + alpha * colour
    elif defect == "foreign":
        x, y, nx, ny = _rim_point(mask, r, rng)
        cx, cy = x + 0.6 * r * nx, y + 0.6 * r * ny
        gt = _blob(hw, cx, cy, r, rng)
        colour = rng.uniform(0, 255, 3)
        colour[rng.integers(3)] = rng.choice([15.0, 240.0])  # saturated: unlike the part
        noise = rng.normal(0, 12, (int(gt.sum()), 3))
        rgb[gt] = np.clip(colour + noise, 0, 255)
        depth[gt] = max(1.0, d_lo - rng.uniform(5, 25))  # nearer than the nearest point of the part
    else:  # dent
        cx, cy = _interior_point(mask, 0.9 * r, rng)
        yy, xx = np.mgrid[:hw[0], :hw[1]]
        sigma = r / np.sqrt(2 * np.log(20))  # the bump falls to 5% at radius r
        bump = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2)) * mask
        bump[bump < 0.05] = 0
        gt = bump > 0
        depth = np.where(mask, np.minimum(255, depth + rng.uniform(30, 60) * bump), depth)
        rgb *= (1 - rng.uniform(0.3, 0.5) * bump)[..., None]
    out = Sample(rgb=np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
                 depth=np.clip(np.rint(depth), 0, 255).astype(np.uint8), meta=dict(s.meta))
    gt = gt & ((out.depth > 0) | mask)
    params = {"defect": defect, "centre": [round(float(cx), 2), round(float(cy), 2)], "radius": round(float(r), 2),
              "part_px": area, "defect_px": int(gt.sum())}
    return out, gt, params


def damage_rng(seed: int, cls: str, defect: str, n: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(cls.encode()), DAMAGE_DEFECTS.index(defect), n])


def check_scale(scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"the defect size scale must be a number in [{MIN_SCALE}, {MAX_SCALE}], got {scale!r}")


def damage_dataset(src: str | Path, out: str | Path, defects: Sequence[str], seed: int,
                   frames: tuple[int, int] | None = None, progress: bool = True,
                   on_skip: Callable[[str], None] | None = None, scale: float = 1.0,
                   force: bool = False) -> dict[str, int]:
    """Write intact copies and damaged twins of every sample under `src` (a class folder or a
    root of class folders), defect radii times `scale`, as the folder `out`, whole (`force`:
    replacing one this function made). Returns the count of samples written per output folder."""
    check_scale(scale)
    final = Path(out)
    if final.resolve() in (Path(src).resolve(), *Path(src).resolve().parents):
        raise ValueError(f"--out {final} holds the samples to damage ({src}): write the damaged ones elsewhere")
    folders = class_folders(src)
    jobs = [(f, n) for f in folders for n in frame_numbers(f, frames)]
    if not jobs:
        raise ValueError(f"{src}: no samples" + (f" in frames {frames[0]}:{frames[1]}" if frames else ""))
    with damage_set(final, force) as out:
        return _write_damage(folders, jobs, out, defects, seed, progress, on_skip, scale)


def damage_set(final: Path, force: bool):
    """A damage set written whole (durable.written_whole): a `final` that is not empty is refused
    (`force`: unless it is a damage set itself, one that holds damage.json)."""
    return durable.written_whole(final, force, "damage.json", "'adgan dataset damage' or 'synth-damage'",
                                 " (evaluate scores every <class>_<defect>/ folder in it, so runs must not mix)",
                                 makes=_in_damage_set)


def _in_damage_set(p: Path) -> bool:
    """What a damage set holds: damage.json, and sample folders (with masks, and their recipe)."""
    own = durable.named("rgb", "depth", "mask", PREPROCESSING_FILE)
    return p.name == "damage.json" or (p.is_dir() and is_sample_folder(p) and all(own(q) for q in p.iterdir()))


def _write_damage(folders, jobs, out: Path, defects: Sequence[str], seed: int, progress: bool,
                  on_skip: Callable[[str], None] | None, scale: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    record: dict[str, dict] = {}
    for folder, n in tqdm(jobs, desc="damage", unit="sample", disable=not progress):
        cls = folder.name
        s = read_sample(folder, n)
        done = []
        for defect in defects:
            try:
                bad, gt, params = make_defect(s, defect, damage_rng(seed, cls, defect, n), scale)
            except DamageError as e:
                if on_skip:
                    on_skip(f"{folder} frame {n}: {e}")
                break
            done.append((defect, bad, gt, params))
        if len(done) < len(defects):
            continue  # every output folder holds the same frames: skip the sample everywhere
        write_sample(out / cls, n, s)
        counts[cls] = counts.get(cls, 0) + 1
        for defect, bad, gt, params in done:
            d = out / f"{cls}_{defect}"
            write_sample(d, n, bad)
            write_mask(d, n, gt)
            counts[d.name] = counts.get(d.name, 0) + 1
            record.setdefault(d.name, {})[str(n)] = params
    for folder in folders:  # the recipe that made the samples goes with every copy
        prep = folder / PREPROCESSING_FILE
        if prep.is_file():
            for name in [folder.name] + [f"{folder.name}_{d}" for d in defects]:
                if (out / name).is_dir():
                    (out / name / PREPROCESSING_FILE).write_text(prep.read_text())
    (out / "damage.json").write_text(json.dumps({"seed": seed, "defects": list(defects), "radius": RADIUS,
                                                 "size_scale": scale, "samples": record},
                                                indent=1, sort_keys=True) + "\n")
    return counts


def size_scale(s: str) -> float:
    try:
        v = float(s)
        check_scale(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [{MIN_SCALE}, {MAX_SCALE}], got {s!r}") from None
    return v


def defect_list(s: str) -> list[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in items if x not in DAMAGE_DEFECTS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown defect(s) {', '.join(bad) or '(none given)'}; choose from "
                                         f"{', '.join(DAMAGE_DEFECTS)}")
    return items


def cmd_damage(a: argparse.Namespace) -> int:
    skipped: list[str] = []
    counts = damage_dataset(a.src, a.out, a.defects, a.seed, parse_frames(a.frames), not a.quiet, skipped.append,
                            a.size_scale, a.force)
    for line in skipped:
        print(f"skipped: {line}")
    for name, k in sorted(counts.items()):
        print(f"{name}: {k} samples")
    print(f"-> {a.out} (masks in <class>_<defect>/mask/, parameters in damage.json)")
    return 0


def add_damage_parser(ds) -> None:
    q = ds.add_parser("damage", help="damage samples with local defects (chunk, hole, stain, foreign, dent) "
                                     "for evaluation, with ground-truth masks",
                      description=__doc__.split("\n\n")[0] + " Every defect is made from the part's own mask and "
                                  "sized relative to the part; intact copies go through the same encoding.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("src", help="a class folder or a root of class folders (the paper's layout or ours)")
    q.add_argument("--out", required=True, help="output root: <class>/, <class>_<defect>/ with mask/")
    q.add_argument("--defects", type=defect_list, default=",".join(DAMAGE_DEFECTS),
                   help=f"comma-separated, from {','.join(DAMAGE_DEFECTS)}")
    q.add_argument("--seed", type=int, default=0, help="the same seed gives the same defects")
    q.add_argument("--frames", default=None, help="LO:HI frame numbers (half-open)")
    q.add_argument("--size-scale", type=size_scale, default=1.0,
                   help="multiply every defect's radius (relative to the part) by this: how large must damage "
                        "be to be caught? The same seed makes the same random draws at any scale")
    q.add_argument("--force", action="store_true",
                   help="replace --out when it exists and holds a damage dataset (its damage.json); without it, a "
                        "folder that is not empty is refused")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_damage)
