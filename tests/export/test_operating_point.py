"""`adgan export --budget-ms` / `--operating-point`: the validated point that fits, timed here."""
import json

import pytest

from adgan.cli import main
from agent.scoring.bundle import Bundle
from export.bundle import RECIPE_SEARCH
from export.operating_point import applicable, choose, load_points, named

POINTS = {"default": {"search": {}, "cost_ratio": 1.0, "quality": 0.70, "pareto": True},
          "k3": {"search": {"k": 3}, "cost_ratio": 0.2, "quality": 0.66, "pareto": True},
          "k10": {"search": {"k": 10}, "cost_ratio": 0.55, "quality": 0.64, "pareto": False},
          "top4": {"search": {"score_cells": 4}, "cost_ratio": 1.02, "quality": 0.74, "pareto": True},
          "k0": {"search": {"k": 0}, "cost_ratio": 0.05, "quality": 0.60, "pareto": True}}


def test_the_best_point_that_fits_is_chosen_and_timed_first():
    timed = []

    def measure(n):
        timed.append(n)
        return {"default": 100.0, "top4": 104.0, "k3": 30.0, "k0": 5.0}[n]

    assert choose(POINTS, 200, measure, log=lambda s: None)[0] == "top4"
    timed.clear()
    n, ms, base = choose(POINTS, 50, measure, log=lambda s: None)
    assert (n, ms, base) == ("k3", 30.0, 100.0) and timed == ["default", "k3"]  # top4 and k10 not even timed
    with pytest.raises(ValueError, match="no validated operating point fits 1 ms"):
        choose(POINTS, 1, measure, log=lambda s: None)
    for bad in (float("inf"), float("nan"), 0):  # (an infinite budget was taken as one)
        with pytest.raises(ValueError, match="--budget-ms must be a finite number > 0"):
            choose(POINTS, bad, measure, log=lambda s: None)
    assert named(POINTS, "best") == "top4" and named(POINTS, "fast") == "k0" and named(POINTS, "default") == "default"


def test_points_a_run_cannot_export_are_left_out_and_bad_files_refused(tmp_path):
    from dataclasses import replace
    assert "k0" not in applicable(POINTS, replace(RECIPE_SEARCH, z_init="random"))  # k 0 needs the encoder
    assert "k0" in applicable(POINTS, RECIPE_SEARCH)
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"points": {"default": {"search": {"lr_z": 1}, "cost_ratio": 1, "quality": 1}}}))
    with pytest.raises(ValueError, match="unknown fields"):
        load_points(bad)
    assert "default" in load_points()["points"]  # the shipped points load


def test_export_with_a_budget_records_the_point_and_its_cost(encoded_run, tiny_run, tmp_path, capsys):
    pts = tmp_path / "points.json"
    pts.write_text(json.dumps({"source": "test", "points": POINTS}))
    out = tmp_path / "b"
    assert main(["export", str(tiny_run), "--out", str(out), "--operating-points", str(pts),
                 "--budget-ms", "100000"]) == 2
    assert "validated with the search starting at E(x)" in capsys.readouterr().err
    assert main(["export", str(encoded_run), "--out", str(out), "--operating-points", str(pts),
                 "--budget-ms", "100000"]) == 0
    b = Bundle.load(out)
    op = b.manifest["operating_point"]
    assert op["name"] == "top4" and b.search.score_cells == 4 and op["measured_ms"] > 0
    assert op["quality"]["quality"] == 0.74 and op["points"] == "test"
    capsys.readouterr()
    assert main(["bundle", "info", str(out)]) == 0
    assert "operating   top4 (--budget-ms 100000)" in capsys.readouterr().out
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "c"), "--operating-points", str(pts),
                 "--budget-ms", "0.001"]) == 2
    assert "no validated operating point fits" in capsys.readouterr().err
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "d"), "--operating-point", "fast",
                 "--k", "3"]) == 2
    assert "drop ['--k']" in capsys.readouterr().err
