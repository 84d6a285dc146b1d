"""bench/local_relief.py: the screen's `nearer` feature is the product's bump check (agent/scoring/bump.py)
in 8-bit levels, so the screen's numbers speak for `adgan export --bump`."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import local_relief  # noqa: E402
from tests.agent.scoring.test_bump import bump, part  # noqa: E402


def test_the_screens_nearer_feature_is_the_bump_check_in_levels():
    from agent.scoring.bump import bump_score
    def holes(xx, yy):
        return np.where((xx - 25) ** 2 + (yy - 36) ** 2 <= 4, -130, 0)
    for levels_of in (lambda xx, yy: 0 * xx, bump(36, 28, 3.0, 25),
                      lambda xx, yy: holes(xx, yy) + bump(36, 40, 3.0, 25)(xx, yy)):
        x = part(levels_of)
        both, nearer, farther = local_relief.local_relief(x, 15, dropout=40.0)
        assert nearer == pytest.approx(bump_score(x) * 127.5, abs=1e-3) and both >= nearer
    # without leaving dropouts out, a hole reads as a huge protrusion: the screen's first two variants
    kept, left_out = (local_relief.local_relief(part(holes), 15, dropout=d)[1] for d in (None, 40.0))
    assert kept > 100 > left_out
