"""argparse types shared by the command lines (adgan's, the agent's, training's): a number is
checked when the command line is read, and refused with argparse's usage and exit code 2."""
from __future__ import annotations

import argparse
import math


def number(cast, low: float, high: float | None = None, low_open: bool = False):
    """An argparse type for a number >= low (> low with `low_open`; < high), checked when the
    command line is read, before any work: `adgan demo --fps nan` went through minutes of data and
    training first; `adgan train --n-critic 0` took the recipe's, `--threads -1` ended in torch's
    traceback; `adgan dataset grid --scale 0` in OpenCV's."""
    kind = "whole number" if cast is int else "finite number"
    want = f"a {kind} {'>' if low_open else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")

    def check(v: str):
        try:
            x = cast(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {v!r}") from None
        if not (math.isfinite(x) and (x > low if low_open else x >= low) and (high is None or x < high)):
            raise argparse.ArgumentTypeError(f"must be {want}, got {v}")
        return x
    return check
