"""bench/seed_ensemble.py: AUROCs as adgan evaluate's, the mean of members, refusals."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import seed_ensemble  # noqa: E402


def report(folder: Path, own: list[float], other: list[float], intact: list[float],
           defects: dict[str, list[float]]) -> Path:
    scores = folder / "scores"
    scores.mkdir(parents=True)
    lines = ["path,class,score"] + [f"c/{i}.jpg,cylinder,{s}" for i, s in enumerate(own)] \
        + [f"s/{i}.jpg,sphere,{s}" for i, s in enumerate(other)]
    (scores / "cylinder-gan-0.csv").write_text("\n".join(lines) + "\n")
    lines = ["folder,frame,score"] + [f"cylinder,{i},{s}" for i, s in enumerate(intact)]
    for d, v in defects.items():
        lines += [f"cylinder_{d},{i},{s}" for i, s in enumerate(v)]
    (scores / "damage-cylinder-gan-0.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_member_and_ensemble_aurocs(tmp_path):
    # member a: swaps perfect, stains at chance-ish; member b ranks the other way on swaps
    a = report(tmp_path / "a", [1, 2], [3, 4], [1, 2], {"stain": [1.5, 1.5], "hole": [5, 6]})
    b = report(tmp_path / "b", [3, 4], [1, 2], [1, 2], {"stain": [1.5, 1.5], "hole": [5, 6]})
    sw, dm, per = seed_ensemble.aucs(seed_ensemble.load(a, "cylinder"))
    assert sw == 1.0 and per == {"stain": 0.5, "hole": 1.0} and dm == 0.75
    assert seed_ensemble.aucs(seed_ensemble.load(b, "cylinder"))[0] == 0.0
    ens = seed_ensemble.ensemble([seed_ensemble.load(a, "cylinder"), seed_ensemble.load(b, "cylinder")])
    assert ens[("swap", "intact", "c/0.jpg")] == 2.0 and ens[("swap", "sphere", "s/1.jpg")] == 3.0
    rows = seed_ensemble.rows("cylinder", [str(a), str(b)])
    assert rows[2].startswith("| cylinder | ensemble | 0.500 | 0.750 |")
    assert "gain over the members' mean | +0.000 | +0.000 |" in rows[3] and "correlate 1.000 |" in rows[3]


def test_reports_of_different_parts_or_without_a_job_are_refused(tmp_path, capsys):
    a = report(tmp_path / "a", [1, 2], [3, 4], [1, 2], {"hole": [5, 6]})
    b = report(tmp_path / "b", [1, 2, 3], [3, 4], [1, 2], {"hole": [5, 6]})
    with pytest.raises(SystemExit, match="same parts"):
        seed_ensemble.rows("cylinder", [str(a), str(b)])
    c = report(tmp_path / "c", [1, 2], [], [1, 2], {"hole": [5, 6]})
    with pytest.raises(SystemExit, match="another class"):
        seed_ensemble.aucs(seed_ensemble.load(c, "cylinder"))
    with pytest.raises(SystemExit):
        seed_ensemble.main(["--class", "cylinder", str(a)])
    assert "needs two reports or more" in capsys.readouterr().err
    assert np.isfinite(seed_ensemble.aucs(seed_ensemble.load(a, "cylinder"))[0])
