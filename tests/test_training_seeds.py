"""bench/training_seeds.py: the one-standard-error rule that may change the default search."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import training_seeds  # noqa: E402

# per seed: (swap, damage) of the worst fold; the other two folds are better
DEFAULT = [(0.50, 0.60), (0.56, 0.58), (0.53, 0.62)]     # swap mean 0.53, SE 0.0173
CLOSE = [(0.52, 0.59), (0.53, 0.59), (0.52, 0.61)]       # in each class: swap 0.5233 >= 0.5127; damage 0.5967 >= 0.5885
BEHIND = [(0.45, 0.60), (0.47, 0.58), (0.46, 0.62)]      # swap 0.46: more than one SE behind
HIGH = [(0.70, 0.70), (0.72, 0.71), (0.71, 0.72)]         # with BEHIND on the other class: ahead on average


def write_cv(root: Path, cls: str, seed: int, variants: dict[str, list[tuple[float, float]]],
             short: tuple[str, ...] = ()) -> Path:
    """A blocked-CV summary table of one class and training seed; variants in `short` lack their last fold."""
    d = root / f"{cls}-s{seed}"
    d.mkdir(parents=True)
    with open(d / "frontier-every3.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["class", "variant", "fold", "swap", "damage"])
        w.writeheader()
        for v, per_seed in variants.items():
            swap, damage = per_seed[seed]
            for f in range(2 if v in short else 3):
                w.writerow({"class": cls, "variant": v, "fold": f, "swap": swap + 0.1 * f, "damage": damage + 0.1 * f})
    return d


@pytest.fixture
def cvs(tmp_path):
    out = {}
    for cls in ("cylinder", "sphere"):
        split = HIGH if cls == "sphere" else BEHIND
        out[cls] = [write_cv(tmp_path, cls, s, {"default": DEFAULT, "close": CLOSE, "behind": BEHIND, "split": split})
                    for s in range(3)]
    costs = {"points": {"k19": {"ms": 90.0}, "close": {"ms": 10.0}, "behind": {"ms": 5.0}, "split": {"ms": 7.0}}}
    (tmp_path / "points.json").write_text(json.dumps(costs))
    return out, tmp_path


def test_the_rule_takes_the_cheapest_point_within_one_standard_error(cvs):
    dirs, tmp = cvs
    argv = [*[f"--cv={c}={','.join(map(str, d))}" for c, d in dirs.items()],
            "--baseline", "k19", "--costs", str(tmp / "points.json"), "--out", str(tmp / "out")]
    assert training_seeds.main(argv) == 0
    doc = json.loads((tmp / "out" / "seeds.json").read_text())
    assert doc["choice"] == "close"  # "behind" and "split" are cheaper, but behind on class swaps
    pts = doc["points"]
    assert "default" not in pts  # tables of the time k 19 was the default name it "default": read as k19
    assert pts["k19"]["swap"]["mean"] == pytest.approx(0.53)
    assert pts["k19"]["swap"]["se"] == pytest.approx(0.03 / 3 ** 0.5 * 1.0, rel=1e-6)
    assert pts["behind"]["as_good"] is False and pts["behind"]["swap"]["class_behind"] == ["cylinder", "sphere"]
    assert pts["close"]["as_good"] is True
    # ahead on average over classes, but behind on cylinders: not as good
    assert pts["split"]["swap"]["mean"] > pts["k19"]["swap"]["mean"]
    assert pts["split"]["as_good"] is False and pts["split"]["swap"]["class_behind"] == ["cylinder"]
    assert pts["close"]["swap"]["diff_mean"] == pytest.approx(0.5233333 - 0.53, abs=1e-6)
    assert "**close**" in (tmp / "out" / "seeds.md").read_text()


def test_a_point_missing_a_fold_or_a_seed_is_left_out(tmp_path):
    both = {"default": DEFAULT, "close": CLOSE}
    dirs = {"sphere": [write_cv(tmp_path, "sphere", s, both, short=("close",) if s == 2 else ()) for s in range(3)]}
    points = training_seeds.worst_folds(dirs, "frontier-every3", 3)
    assert set(points) == {"k19"}
    assert points["k19"]["sphere"]["swap"] == [0.50, 0.56, 0.53]
    dirs["sphere"].append(write_cv(tmp_path / "more", "sphere", 0, {"close": CLOSE}))  # a 4th seed without default
    assert set(training_seeds.worst_folds(dirs, "frontier-every3", 3)) == set()


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        training_seeds.read_folds(tmp_path, "frontier-every3", "sphere")
    with pytest.raises(SystemExit, match="CLASS=DIR"):
        training_seeds.parse_cv(["sphere"])
    d = write_cv(tmp_path, "sphere", 0, {"close": CLOSE})
    with pytest.raises(ValueError, match="no point 'k19'"):
        training_seeds.compare(training_seeds.worst_folds({"sphere": [d]}, "frontier-every3", 3), "k19")


def test_costs_of_old_and_new_operating_point_files(tmp_path):
    old = tmp_path / "old.json"  # written while k 19 was the default and the frontier called it "default"
    old.write_text(json.dumps({"points": {"default": {"ms": 93.8}, "k2": {"ms": 15.4}}}))
    assert training_seeds.read_costs(old) == {"k19": 93.8, "k2": 15.4}
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"default": "k2", "points": {"k19": {"ms": 93.8}, "k2": {"ms": 15.4},
                                                           "default": {"ms": 15.4, "same_as": "k2"}}}))
    assert training_seeds.read_costs(new) == {"k19": 93.8, "k2": 15.4}
