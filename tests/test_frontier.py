"""bench/frontier.py: the shipped operating points follow adgan export's default search."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import frontier  # noqa: E402
from export.bundle import RECIPE_SEARCH  # noqa: E402
from export.operating_point import load_points  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_points_name_the_export_default():
    doc = load_points()
    d = doc["default"]
    assert doc["points"][d]["search"] == frontier.POINTS[d] and frontier.default_point(frontier.POINTS) == d
    assert doc["points"]["default"]["same_as"] == d and doc["points"]["default"]["cost_ratio"] == 1.0
    assert doc["points"][d]["cost_ratio"] == 1.0


def quality_row(name, q):
    return {"options": frontier.export_options(frontier.POINTS[name]), "search": frontier.POINTS[name],
            "ms": 999.0, "cost_ratio": 9.0, "pareto": False, "swap_mean": q, "swap_worst": q, "damage_mean": q,
            "damage_worst": q, "worst_defect": q, "pixel_worst": q, "quality": q, "classes": ["sphere"]}


def test_quality_from_an_earlier_file_keeps_quality_times_again_and_finds_the_default(tmp_path):
    old = {"source": "bench/frontier.py DATA --cv runs/cv/x", "validated_on": {"classes": ["sphere"], "cv": ["x"]},
           "default": "seeds3-k5", "points": {"k0": quality_row("k0", 0.6), "k19": quality_row("k19", 0.7),
                                             "default": {**quality_row("seeds3-k5", 0.8), "search": {}}}}
    src = tmp_path / "old.json"
    src.write_text(json.dumps(old))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "bench/frontier.py"), "DATA", "--quality-from", str(src),
                        "--points", "k0,k19", "--budget-s", "0.1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    new = load_points(out / "operating_points.json")
    assert new["default"] == frontier.default_point(frontier.POINTS) == "k19"
    assert (RECIPE_SEARCH.n_seed, RECIPE_SEARCH.k) == (1, 19)
    assert new["quality_source"] == old["source"] and new["validated_on"] == old["validated_on"]
    k0, k19 = new["points"]["k0"], new["points"]["k19"]
    assert (k0["quality"], k19["quality"]) == (0.6, 0.7)  # carried over
    assert k19["cost_ratio"] == 1.0 and 0 < k0["cost_ratio"] < 0.5 and k0["ms"] != 999.0  # timed here again
    assert new["points"]["default"]["same_as"] == "k19" and new["points"]["default"]["search"] == {}
    assert "k19 (default)" in (out / "frontier.md").read_text() and (out / "frontier.png").stat().st_size > 0


def test_without_cv_or_quality_it_says_what_to_give(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench/frontier.py"), "DATA", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode != 0 and "--quality-from" in r.stderr
