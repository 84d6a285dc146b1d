"""Lighting drift: what a station's light dimmed or brightened does to intact parts' scores.

A station is calibrated under its light; a lamp that ages or fails, or daylight through a window,
scales the colour image. The agent says a colour image that shows nothing (agent.frame.unlit:
black or blown out), not a drift. This measures what a drift does to the scores of intact parts:
each sample's RGB scaled by a factor (clipped), depth as it was, written again through the same
encoding as the unscaled copies (factor 1), and scored with the bundle as `adgan score` does.

Per factor: the median score, the share of intact parts above the threshold that passes 95% of
them at factor 1 (a stand-in for `adgan calibrate --policy target-fpr --fpr 0.05` on these parts),
the AUROC of the scaled intact parts against the unscaled ones (0.5: the score does not see the
drift), and how many the agent would refuse as showing nothing. With `--damage DST` (a set made by
`adgan dataset damage`: DST/<class>/ intact, DST/<class>_<defect>/ damaged copies), also the image
AUROC of each defect against the intact parts under the same light: does a drift hide damage?

    .venv/bin/python bench/lighting_drift.py ../shared/data/paper-rgbd/sphere --bundle runs/oh-sphere-bundle \
        --frames 700:1000 --out runs/lighting-drift
    .venv/bin/python bench/lighting_drift.py runs/our-damage/sphere --damage runs/our-damage \
        --bundle runs/oh-sphere-bundle --out runs/lighting-drift-damage --factors 0.3,0.5,0.7,1,1.3
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adgan.cli import main as adgan  # noqa: E402
from agent.frame import Sample, unlit  # noqa: E402
from agent.sources.dataset import frame_numbers, parse_frames, read_sample, write_sample  # noqa: E402


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(a positive scores above a negative), ties half (Mann-Whitney)."""
    d = pos[:, None] - neg[None, :]
    return float(np.mean(d > 0) + 0.5 * np.mean(d == 0))


def scaled(s: Sample, factor: float) -> Sample:
    rgb = np.clip(np.rint(s.rgb.astype(np.float32) * factor), 0, 255).astype(np.uint8)
    return Sample(rgb=rgb, depth=s.depth, meta=s.meta)


def score_scaled(folder: Path, numbers: list[int], f: float, bundle: Path, out: Path) -> tuple[np.ndarray, int]:
    """(scores, how many the agent refuses as showing nothing) of the samples scaled by `f`."""
    dst, refused = out / f"x{f:g}" / folder.name, 0
    for n in numbers:
        s = scaled(read_sample(folder, n), f)
        refused += unlit(s.rgb, s.depth > 0) is not None
        write_sample(dst, n, s)
    csv_path = out / f"x{f:g}-{folder.name}.csv"
    if adgan(["score", str(bundle), str(dst), "--out", str(csv_path), "--quiet"]) != 0:
        raise SystemExit(1)
    with open(csv_path) as fh:
        return np.array([float(r["score"]) for r in csv.DictReader(fh)]), refused


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a class folder (the paper's layout or ours)")
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--frames", default=None, help="LO:HI frame numbers")
    ap.add_argument("--factors", default="0.5,0.7,0.85,1,1.15,1.3")
    ap.add_argument("--out", type=Path, required=True, help="a scratch folder (written again)")
    ap.add_argument("--damage", type=Path, default=None, help="a damage set whose intact class folder is FOLDER")
    a = ap.parse_args(argv)
    factors = [float(f) for f in a.factors.split(",")]
    if 1.0 not in factors:
        factors.append(1.0)
    numbers = frame_numbers(a.folder, parse_frames(a.frames))
    if not numbers:
        print(f"{a.folder}: no frames {a.frames or ''}", file=sys.stderr)
        return 2
    cls = a.folder.name
    shutil.rmtree(a.out, ignore_errors=True)
    scores, refused = {}, {}
    for f in factors:
        scores[f], refused[f] = score_scaled(a.folder, numbers, f, a.bundle, a.out)
    base = scores[1.0]
    threshold = float(np.quantile(base, 0.95))
    print(f"{cls}: {len(numbers)} intact parts, bundle {a.bundle}; threshold {threshold:.4f} (95% of them pass "
          "at factor 1)")
    print("| light | median score | above the threshold | AUROC against factor 1 | refused as showing nothing |")
    print("|---|---|---|---|---|")
    for f in sorted(factors):
        s = scores[f]
        print(f"| x{f:g} | {np.median(s):.4f} | {np.mean(s > threshold):.0%} | {auroc(base, s):.3f} | "
              f"{refused[f]} |")
    if a.damage is None:
        return 0
    kinds = sorted(p.name[len(cls) + 1:] for p in a.damage.glob(f"{cls}_*") if p.is_dir())
    print(f"\nimage AUROC, each defect against the intact parts under the same light ({', '.join(kinds)}):")
    print("| light | " + " | ".join(kinds) + " | all |")
    print("|---|" + "---|" * (len(kinds) + 1))
    for f in sorted(factors):
        damaged = [score_scaled(a.damage / f"{cls}_{k}", frame_numbers(a.damage / f"{cls}_{k}"), f, a.bundle,
                                a.out)[0] for k in kinds]
        cells = [f"{auroc(scores[f], d):.3f}" for d in damaged]
        print(f"| x{f:g} | " + " | ".join(cells) + f" | {auroc(scores[f], np.concatenate(damaged)):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
