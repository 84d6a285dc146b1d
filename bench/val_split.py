"""A validation split inside the training frames, for choosing hyperparameters.

The paper's frames are sequences: each physical object is filmed for ~100-150 frames, and
neighbouring frames are near-duplicates. A split by one range at the end (say 600:700)
holds out objects the generator never saw (the soccer ball of `sphere`), so it measures
novelty, not the scoring recipe. This split interleaves instead: in every hundred frames of
LO:HI, frames 42-57 are validation and frames 34-41 and 58-65 are left out of both sides
(a purge against near-duplicates across the boundary); the rest is training. Both sides
then see every object, in poses at least 9 frames apart.

Writes two dataset roots of symlinks in the paper's layout:

    .venv/bin/python bench/val_split.py ../shared/data/paper-rgbd --frames 0:700 --out runs/val/split
    -> runs/val/split/train/<class>/{rgb,depth}/N.*   runs/val/split/val/<class>/{rgb,depth}/N.*
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

VAL, PURGE = (42, 58), 8


def side(frame: int) -> str | None:
    r = frame % 100
    if VAL[0] <= r < VAL[1]:
        return "val"
    if VAL[0] - PURGE <= r < VAL[1] + PURGE:
        return None
    return "train"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--frames", default="0:700")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    lo, hi = (int(v) for v in a.frames.split(":"))
    root, out = Path(a.data).resolve(), Path(a.out)
    counts: dict[tuple[str, str], int] = {}
    for cls_dir in sorted(p for p in root.iterdir() if (p / "rgb").is_dir()):
        for f in sorted((cls_dir / "rgb").iterdir()):
            n = int(f.stem)
            s = side(n) if lo <= n < hi else None
            if s is None:
                continue
            for sub, src in (("rgb", f), ("depth", *sorted((cls_dir / "depth").glob(f"{n}.*")))):
                dst = out / s / cls_dir.name / sub / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    os.symlink(src, dst)
            counts[(s, cls_dir.name)] = counts.get((s, cls_dir.name), 0) + 1
    for (s, c), n in sorted(counts.items()):
        print(f"{s:<6}{c:<10}{n:>4} samples")


if __name__ == "__main__":
    main()
