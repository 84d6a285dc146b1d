"""Is a cheaper search as good as the default, within one standard error over training seeds? (issue 18)

The frontier (`bench/frontier.py`) ranks search points by blocked cross-validation on one
training seed per fold. Its differences are of the size a second training seed moves, so
the rule for changing the default is the one-standard-error rule: train the same folds again
with other seeds (`bench/blocked_cv.py --seed S`, the same --train-args, --every and
variants), then for every point and seed take the worst fold of each class, and compare over
seeds with the baseline (--baseline; default: today's default search):

    as good  <=>  for every class, and for class swaps and damage alike,
                  mean over seeds (point)  >=  mean over seeds (baseline) - SE (baseline)

where SE is the standard error of the baseline's mean over seeds (sd / sqrt(seeds)) for that
class and job. Every class must pass: a point that wins on average by losing one class is
not as good (one bundle per class serves both jobs). The cheapest point that is as good is
the candidate for the default. The class-averaged means and the paired difference to the
baseline (point - baseline, seed by seed, with its own SE) are printed beside it.

    .venv/bin/python bench/training_seeds.py --baseline k19 \\
        --cv sphere=runs/cv/sphere-object,runs/cv/sphere-object-s1,runs/cv/sphere-object-s2 \\
        --cv cylinder=runs/cv/cylinder-object,runs/cv/cylinder-object-s1,runs/cv/cylinder-object-s2 \\
        --summary frontier-every3 --out runs/seeds

Cost (ms per score) comes from an operating-points file (`bench/frontier.py`'s, default the
shipped export/operating_points.json). Writes OUT/seeds.md and OUT/seeds.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier import LEGACY_NAMES, POINTS, default_point  # noqa: E402

JOBS = ("swap", "damage")


def read_folds(cv_dir: Path, summary: str, cls: str) -> dict[str, dict[str, list[float]]]:
    """{variant: {job: [AUROC per fold]}} of one class in one blocked-CV folder."""
    path = cv_dir / (f"{summary}.csv" if summary != "summary" else "folds.csv")
    if not path.is_file():
        raise ValueError(f"{path}: missing (run bench/blocked_cv.py --summary {summary} there first)")
    out: dict[str, dict[str, list[float]]] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["class"] != cls:
                continue
            name = LEGACY_NAMES.get(r["variant"], r["variant"])
            per = out.setdefault(name, {j: [] for j in JOBS})
            for j in JOBS:
                per[j].append(float(r[j]))
    if not out:
        raise ValueError(f"{path}: no rows of class {cls!r}")
    return out


def se(values: list[float]) -> float:
    """Standard error of the mean (sample sd / sqrt n); nan below two values."""
    v = np.asarray(values, float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def worst_folds(cvs: dict[str, list[Path]], summary: str, folds: int) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{point: {class: {job: [worst fold per seed]}}}, only points every seed of every class has on all folds."""
    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    for cls, dirs in cvs.items():
        for d in dirs:
            for v, jobs in read_folds(d, summary, cls).items():
                if len(jobs["swap"]) != folds:
                    continue
                for j in JOBS:
                    per.setdefault(v, {}).setdefault(cls, {}).setdefault(j, []).append(min(jobs[j]))
    n = {cls: len(dirs) for cls, dirs in cvs.items()}
    return {v: c for v, c in per.items()
            if set(c) == set(cvs) and all(len(c[cls][j]) == n[cls] for cls in c for j in JOBS)}


def compare(points: dict, baseline: str) -> dict[str, dict]:
    """Per point: each job's per-seed values (averaged over classes), mean, SE, the paired
    difference to the baseline, per-class means, the classes behind the baseline by more than
    its SE, and whether it is as good as the baseline (no class behind in either job)."""
    if baseline not in points:
        raise ValueError(f"no point {baseline!r} on every seed and class (have {sorted(points)})")
    classes = sorted(points[baseline])
    seeds = {len(points[baseline][c]["swap"]) for c in classes}
    if len(seeds) != 1:
        counts = {c: len(points[baseline][c]["swap"]) for c in classes}
        raise ValueError(f"classes have different numbers of seeds: {counts}")
    n = seeds.pop()
    rows = {}
    base = {j: np.mean([points[baseline][c][j] for c in classes], axis=0) for j in JOBS}
    for v, per in points.items():
        row: dict = {"seeds": n, "classes": classes}
        good = True
        for j in JOBS:
            vals = np.mean([per[c][j] for c in classes], axis=0)  # per seed, averaged over classes
            diff = vals - base[j]
            row[j] = {"per_seed": [round(float(x), 4) for x in vals], "mean": float(vals.mean()), "se": se(vals),
                      "diff_mean": float(diff.mean()), "diff_se": se(diff),
                      "per_class": {c: float(np.mean(per[c][j])) for c in classes}}
            row[j]["class_behind"] = [c for c in classes
                                      if np.mean(per[c][j]) < np.mean(points[baseline][c][j]) - (
                                          se(points[baseline][c][j]) if n > 1 else 0)]
            good &= not row[j]["class_behind"]
        row["as_good"] = good
        rows[v] = row
    return rows


def read_costs(path: Path) -> dict[str, float]:
    """{point: ms per score} of an operating-points file. Its "default" entry repeats a named point
    ("same_as"); files written before the frontier named its default hold k 19 as "default"."""
    doc = json.loads(path.read_text())
    cost = {}
    for name, p in doc["points"].items():
        if "same_as" in p:
            continue
        cost[LEGACY_NAMES.get(name, name) if "default" not in doc else name] = p["ms"]
    return cost


def parse_cv(specs: list[str]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for s in specs:
        cls, sep, dirs = s.partition("=")
        if not sep or not cls or not dirs:
            raise SystemExit(f"--cv takes CLASS=DIR[,DIR...] (one folder per training seed), got {s!r}")
        out.setdefault(cls, []).extend(Path(d) for d in dirs.split(",") if d)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cv", action="append", required=True,
                    help="CLASS=DIR[,DIR...]: the blocked-CV folders of one class, one per training seed (repeatable)")
    ap.add_argument("--summary", default="frontier-every3", help="the summary name the folders were run with")
    ap.add_argument("--folds", type=int, default=3, help="folds every seed must have (default 3)")
    ap.add_argument("--baseline", default=None,
                    help="the point to compare against (default: adgan export's default search, by its frontier name; "
                         "tables written while k 19 was the default call it 'default', read as k19)")
    ap.add_argument("--costs", default=str(Path(__file__).resolve().parents[1] / "export" / "operating_points.json"),
                    help="an operating-points file with each point's ms per score (bench/frontier.py)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cvs = parse_cv(a.cv)
    a.baseline = a.baseline or default_point(POINTS)
    try:
        points = worst_folds(cvs, a.summary, a.folds)
        rows = compare(points, a.baseline)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    cost = read_costs(Path(a.costs))
    missing = sorted(set(rows) - set(cost))
    if missing:
        raise SystemExit(f"{a.costs}: no cost for points {missing}")
    b_ms = cost[a.baseline]
    cheaper_good = [v for v in sorted(rows, key=cost.get) if rows[v]["as_good"] and cost[v] < b_ms]
    choice = cheaper_good[0] if cheaper_good else a.baseline
    n = rows[a.baseline]["seeds"]
    lines = [f"# Search points over {n} training seeds ({', '.join(f'{c}: {len(d)} folders' for c, d in cvs.items())}; "
             f"{a.summary}; worst of {a.folds} folds, averaged over classes)", "",
             f"| point | ms | swap per seed | mean ± SE | vs {a.baseline} ± SE | damage per seed | mean ± SE | "
             f"vs {a.baseline} ± SE | as good | classes behind {a.baseline} by more than its SE |", "|" + "---|" * 10]
    for v in sorted(rows, key=cost.get):
        r = rows[v]
        cells = []
        for j in JOBS:
            cells += [" / ".join(f"{x:.3f}" for x in r[j]["per_seed"]), f"{r[j]['mean']:.3f} ± {r[j]['se']:.3f}",
                      f"{r[j]['diff_mean']:+.3f} ± {r[j]['diff_se']:.3f}"]
        behind = "; ".join(f"{j}: {', '.join(r[j]['class_behind'])}" for j in JOBS if r[j]["class_behind"])
        lines.append(f"| {v}{' (baseline)' if v == a.baseline else ''} | {cost[v]:.1f} | " + " | ".join(cells)
                     + f" | {'yes' if r['as_good'] else 'no'} | {behind} |")
    lines += ["", f"Per seed: the worst fold, averaged over classes. As good: in every class, the mean over seeds of "
              f"both jobs at least the {a.baseline}'s mean less one standard error of it. Cheapest point as good "
              f"as {a.baseline}: **{choice}** ({cost[choice]:.1f} ms against {b_ms:.1f} ms)."]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.md").write_text("\n".join(lines) + "\n")
    (out / "seeds.json").write_text(json.dumps({"source": "bench/training_seeds.py " + " ".join(argv or sys.argv[1:]),
                                                "baseline": a.baseline, "choice": choice,
                                                "cost_ms": {v: cost[v] for v in rows}, "points": rows}, indent=1) + "\n")
    print("\n".join(lines))
    print(f"-> {out / 'seeds.md'}, {out / 'seeds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
