"""`adgan dataset ...`: make, convert and look at datasets. The commands and their options;
the work is done by synth.py (synthetic parts and stations), prepare.py (raw captures ->
reference and samples), figure1.py (the segmentation figure) and calibration/damage.py."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from adgan.figure1 import segmentation_steps
from adgan.prepare import make_reference, prepare_samples
from adgan.synth import REFERENCE_FRAMES, synth_damage_dataset, synth_dataset, synth_raw
from agent.argtypes import number
from agent.segment.preprocess import Preprocessing
from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import SegmentationConfig
from agent.sources.dataset import class_folders, frame_numbers, parse_frames, read_raw_frame, read_sample
from agent.sources.synthetic import CLASSES, DEFECTS, VARIETIES
from agent.visual import sample_grid, write_png
from calibration.damage import add_damage_parser

log = logging.getLogger(__name__)


def _csv_list(s: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def cmd_synth_damage(a: argparse.Namespace) -> int:
    prep = Preprocessing(size=a.size, depth_norm=a.depth_norm, framing=a.framing)
    counts = synth_damage_dataset(Path(a.out), a.classes, a.n, a.seed, prep, a.defects or DEFECTS, a.width,
                                  a.height, a.workers, variety=a.variety, force=a.force)
    for k, v in sorted(counts.items()):
        print(f"{k}: {v} samples")
    print(f"wrote {sum(counts.values())} samples to {a.out}; score them with "
          f"'adgan evaluate --bundles ... --damage {a.out} --out REPORT'")
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    prep = Preprocessing(size=a.size, depth_norm=a.depth_norm, framing=a.framing)
    counts = synth_dataset(Path(a.out), a.classes, a.train, a.test, a.seed, prep, a.defects, a.defect_test,
                           a.width, a.height, a.workers, variety=a.variety, force=a.force)
    for k, v in sorted(counts.items()):
        print(f"{k}: {v} samples")
    print(f"wrote {sum(counts.values())} samples to {a.out}")
    return 0


def cmd_synth_raw(a: argparse.Namespace) -> int:
    synth_raw(Path(a.out), a.count, a.empty, a.seed, a.classes, a.defects, a.defect_rate, a.width, a.height,
              variety=a.variety, force=a.force)
    print(f"wrote {a.count} frames to {a.out}/frames, {a.empty} empty frames to {a.out}/empty "
          f"and the surface reference {a.out}/reference.npz")
    return 0


# -- reference and prepare --------------------------------------------------------------
def cmd_reference(a: argparse.Namespace) -> int:
    ref = make_reference(a.raw, parse_frames(a.frames_range), a.max_depth)
    ref.save(a.out)
    holes = int((ref.depth == 0).sum())
    print(f"surface reference from {ref.n_frames} frames -> {a.out} "
          f"({ref.depth.shape[1]}x{ref.depth.shape[0]}, {holes} pixels unknown)")
    return 0


def cmd_prepare(a: argparse.Namespace) -> int:
    """Raw captures -> samples in the paper's layout, with the same code the agent runs."""
    prep = Preprocessing(size=a.size, depth_norm=a.depth_norm, framing=a.framing)
    ref = SurfaceReference.load(a.reference) if a.reference else None
    cfg = SegmentationConfig(max_depth_mm=a.max_depth, roi=a.roi)
    written, skipped, unseen = prepare_samples(a.raw, a.out, prep, cfg, ref, parse_frames(a.frames_range),
                                               force=a.force)
    print(f"wrote {written} samples to {a.out} ({skipped} frames without an object skipped"
          + (f"; {unseen} whose part is cut off by the view or not shown by the colour image" if unseen else "")
          + ")")
    return 0


# -- grid and segment-preview ------------------------------------------------------------
def cmd_grid(a: argparse.Namespace) -> int:
    rows, names = [], []
    for folder in class_folders(a.dir):
        nums = frame_numbers(folder, parse_frames(a.frames))
        if not nums:
            continue
        pick = [nums[int(i)] for i in np.linspace(0, len(nums) - 1, min(a.n, len(nums)))]
        rows.append([read_sample(folder, n) for n in pick])
        names.append(f"{folder.name} ({len(nums)} samples)")
    if not rows:
        raise ValueError(f"{a.dir}: no samples to draw")
    grid = sample_grid(rows, names, scale=a.scale)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_png(a.out, grid)
    print(f"wrote {a.out} ({len(rows)} rows x up to {a.n} samples)")
    return 0


def cmd_segment_preview(a: argparse.Namespace) -> int:
    folder = Path(a.raw)
    nums = frame_numbers(folder)
    if not nums:
        raise FileNotFoundError(f"{folder}: no frames")
    n = a.frame if a.frame is not None else nums[0]
    if n not in nums:
        raise ValueError(f"{folder}: no frame {n} (have {nums[0]}..{nums[-1]})")
    frame = read_raw_frame(folder, n)
    ref = SurfaceReference.load(a.reference) if a.reference else None
    if ref is None:
        log.warning("no --reference given: the surface is a RANSAC plane fit of this frame")
    img = segmentation_steps(frame, ref, SegmentationConfig(max_depth_mm=a.max_depth, roi=a.roi))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_png(a.out, img)
    print(f"wrote {a.out} (frame {n})")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    """Counts and value ranges per class folder: a quick sanity check of a dataset."""
    fr = parse_frames(a.frames)
    for folder in class_folders(a.dir):
        nums = frame_numbers(folder, fr)
        if not nums:
            print(f"{folder.name}: 0 samples")
            continue
        s = read_sample(folder, nums[0])
        fg = np.mean([(read_sample(folder, n).depth > 0).mean() for n in nums[:: max(1, len(nums) // 20)]])
        print(f"{folder.name}: {len(nums)} samples, frames {nums[0]}..{nums[-1]}, {s.size}x{s.size}, "
              f"object covers {fg:.1%} of the image on average")
    return 0


def _roi(s: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--roi takes x,y,w,h in pixels, got {s!r}") from None
    return x, y, w, h


def add_parser(sub) -> None:
    p = sub.add_parser("dataset", help="make, convert and look at datasets",
                       description="Make, convert and look at RGB-D datasets (the paper's sample layout "
                                   "and raw station captures).")
    ds = p.add_subparsers(dest="dataset_cmd", required=True, metavar="COMMAND")

    classes = lambda s: _csv_list(s, CLASSES, "class")  # noqa: E731
    defects = lambda s: _csv_list(s, DEFECTS, "defect")  # noqa: E731

    def variety_arg(q):
        q.add_argument("--variety", choices=VARIETIES, default="family",
                       help="what a class's parts are: family (default) = every part a new product of the "
                            "class's shape (sizes, colours, patterns); product = the station's one product of "
                            "each class (fixed by --seed), made to a tolerance (size 3%%, colour 4%%)")

    def prep_args(q, size=64, framing="frame"):
        q.add_argument("--size", type=int, default=size, choices=(32, 64, 128),
                       help=f"sample size in pixels (default {size})")
        q.add_argument("--depth-norm", choices=("minmax", "fixed"), default="minmax",
                       help="depth to 8 bits: per-image min-max (the paper) or a fixed mm range")
        q.add_argument("--framing", choices=("frame", "object"), default=framing,
                       help="resize the whole (square) frame, as the paper, or a square around the object "
                            f"(default {framing})")

    q = ds.add_parser("synth", help="synthesise a dataset of parts in the paper's layout",
                      description="Render synthetic parts on a table, segment them like a station would and "
                                  "write train/<class>/ and test/<class>/ (and test/<class>_defect/ with "
                                  "--defects) in the paper's layout, with labels.csv per split.")
    q.add_argument("out", help="output folder")
    q.add_argument("--classes", type=classes, default=list(CLASSES), help="comma-separated (default: all three)")
    q.add_argument("--train", type=int, default=1500, help="training samples per class (default 1500, the paper's)")
    q.add_argument("--test", type=int, default=500, help="normal test samples per class (default 500, the paper's)")
    q.add_argument("--defects", type=defects, default=[], help=f"defect kinds for test/<class>_defect: {','.join(DEFECTS)}")
    q.add_argument("--defect-test", type=int, default=None, help="defective test samples per class (default: --test)")
    q.add_argument("--seed", type=int, default=0, help="station and sample seed (same seed, same dataset)")
    q.add_argument("--width", type=int, default=640, help="camera width (default 640)")
    q.add_argument("--height", type=int, default=480, help="camera height (default 480)")
    q.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    q.add_argument("--force", action="store_true",
                   help="replace OUT when it exists and holds a dataset this command made (its synth.json); "
                        "without it, a folder that is not empty is refused")
    prep_args(q)
    variety_arg(q)
    q.set_defaults(func=cmd_synth)

    q = ds.add_parser("synth-damage", help="synthesise intact parts and their twins with the renderer's defects",
                      description="Render N parts per class on the synthetic station and, for each defect, the same "
                                  "scene (pose, light, sensor noise) with that defect; segment and frame them like a "
                                  "station and write OUT/<class>/ (intact) and OUT/<class>_<defect>/ with the "
                                  "defect's ground-truth mask/N.png (the camera pixels the defect changed), the "
                                  "layout of 'adgan dataset damage', for 'adgan evaluate --damage'.")
    q.add_argument("out", help="output folder")
    q.add_argument("--classes", type=classes, default=list(CLASSES), help="comma-separated (default: all three)")
    q.add_argument("--n", type=number(int, 1), default=40, help="intact parts per class (default 40)")
    q.add_argument("--defects", type=defects, default=list(DEFECTS), help=f"default: {','.join(DEFECTS)}")
    q.add_argument("--seed", type=int, default=0, help="station and part seed (same seed, same dataset)")
    q.add_argument("--width", type=int, default=640, help="camera width (default 640)")
    q.add_argument("--height", type=int, default=480, help="camera height (default 480)")
    q.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    q.add_argument("--force", action="store_true",
                   help="replace OUT when it exists and holds a damage set (its damage.json); without it, a folder "
                        "that is not empty is refused")
    prep_args(q, size=32, framing="object")
    variety_arg(q)
    q.set_defaults(func=cmd_synth_damage)

    q = ds.add_parser("synth-raw", help="synthesise raw station captures (16-bit depth) and a reference",
                      description="Write raw-layout frames of a synthetic station to OUT/frames, empty-table "
                                  "frames to OUT/empty and their median surface reference to OUT/reference.npz.")
    q.add_argument("out", help="output folder (frames/, empty/, reference.npz)")
    q.add_argument("--count", type=int, default=20, help="frames with a part (default 20)")
    q.add_argument("--empty", type=int, default=REFERENCE_FRAMES, help=f"empty frames (default {REFERENCE_FRAMES})")
    q.add_argument("--classes", type=classes, default=list(CLASSES), help="comma-separated (default: all three)")
    q.add_argument("--defects", type=defects, default=[],
                   help=f"defect kinds a part may have, comma-separated from {','.join(DEFECTS)} (default: none)")
    q.add_argument("--defect-rate", type=float, default=0.0, help="probability of a defect per frame (default 0)")
    q.add_argument("--seed", type=int, default=0, help="station and part seed (same seed, same frames)")
    q.add_argument("--width", type=int, default=640, help="camera width (default 640)")
    q.add_argument("--height", type=int, default=480, help="camera height (default 480)")
    q.add_argument("--force", action="store_true",
                   help="replace OUT when it exists and holds what this command made (its synth-raw.json); "
                        "without it, a folder that is not empty is refused")
    variety_arg(q)
    q.set_defaults(func=cmd_synth_raw)

    q = ds.add_parser("reference", help="compute the empty-surface reference from raw empty frames",
                      description="Per-pixel median of raw-layout frames of the empty station, saved as .npz.")
    q.add_argument("raw", metavar="RAW", help="raw-layout folder of empty-scene frames")
    q.add_argument("--out", required=True, help="reference file to write (.npz)")
    q.add_argument("--frames", "--frames-range", dest="frames_range", default=None,
                   help="LO:HI frame numbers (half-open), as everywhere ('--frames-range' is the old spelling)")
    q.add_argument("--max-depth", type=int, default=700, help="max depth in mm for hole filling (default 700)")
    q.set_defaults(func=cmd_reference)

    q = ds.add_parser("prepare", help="turn raw captures into samples in the paper's layout",
                      description="Segment raw-layout frames against a surface reference and write samples "
                                  "(rgb/N.jpg, depth/N.png) with the same code the agent runs.")
    q.add_argument("raw", metavar="RAW", help="raw-layout folder")
    q.add_argument("--out", required=True, help="output class folder, e.g. data/train/rectangle")
    q.add_argument("--reference", default=None, help="surface reference .npz (default: RANSAC table plane)")
    q.add_argument("--max-depth", type=int, default=700)
    q.add_argument("--roi", type=_roi, default=None, help="x,y,w,h region of interest in pixels")
    q.add_argument("--frames", "--frames-range", dest="frames_range", default=None,
                   help="LO:HI frame numbers (half-open), as everywhere ('--frames-range' is the old spelling)")
    q.add_argument("--force", action="store_true",
                   help="prepare --out again, whole: replace it when it exists and is a sample folder adgan made "
                        "(it holds preprocessing.json); without it, a folder that is not empty is refused")
    prep_args(q)
    q.set_defaults(func=cmd_prepare)

    q = ds.add_parser("grid", help="draw a grid of samples, RGB above depth",
                      description="A picture of a dataset: one row per class folder, RGB above depth "
                                  "(like the paper's Figure 2).")
    q.add_argument("dir", help="a dataset root (class folders) or one class folder")
    q.add_argument("--out", required=True, help="PNG to write")
    q.add_argument("--n", type=number(int, 1), default=10, help="samples per row (default 10), spread over the folder")
    q.add_argument("--scale", type=number(int, 1), default=2, help="pixel scale (default 2)")
    q.add_argument("--frames", default=None, help="LO:HI frame numbers (half-open)")
    q.set_defaults(func=cmd_grid)

    q = ds.add_parser("segment-preview", help="show segmentation steps for one raw frame (Figure 1)",
                      description="Original, background removed and surface removed, for RGB and depth, so "
                                  "an installer can check a station's segmentation by eye.")
    q.add_argument("raw", metavar="RAW", help="raw-layout folder")
    q.add_argument("--reference", default=None, help="surface reference .npz (default: RANSAC table plane)")
    q.add_argument("--out", required=True, help="PNG to write")
    q.add_argument("--frame", type=int, default=None, help="frame number (default: the first)")
    q.add_argument("--max-depth", type=int, default=700, help="background beyond this depth in mm (default 700)")
    q.add_argument("--roi", type=_roi, default=None, help="x,y,w,h region of interest in pixels")
    q.set_defaults(func=cmd_segment_preview)

    add_damage_parser(ds)

    q = ds.add_parser("info", help="count samples and check ranges per class folder",
                      description="Per class folder: the number of samples, their frame numbers and the "
                                  "preprocessing they were made with.")
    q.add_argument("dir", help="a dataset root (class folders) or one class folder")
    q.add_argument("--frames", default=None, help="LO:HI frame numbers (half-open)")
    q.set_defaults(func=cmd_info)
