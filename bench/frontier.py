"""The quality/cost frontier of the search (issue 18): what each step, seed and setting buys.

Each operating point is a set of `adgan export` options around its recipe (export/bundle.py
RECIPE_SEARCH: theta scope none, 4x4 cells, the search starting at E(x); the loss fg_input with
depth weight 1 until 2026-12-02, fg with depth weight 3 since), one seed at E(x) unless named
otherwise:

    k 0 (the encoder alone, as f-AnoGAN scores), 1, 2, 3, 5, 10, 19; theta scope bn at k 3, 10
    and 19; 3 seeds (E(x) + 0.5 N(0, I)) at k 5 and 19; cells of 2 and 8 pixels at k 19; the
    local score (top 4 cells) at k 0, 5 and 19.

One of them is `adgan export`'s default, found, not assumed: k19 (seeds3-k5 for a few hours
of 2026-12-01, until boxes were measured over training seeds: bench/training_seeds.py);
tables written while k19 was first the default call it "default".

Quality: the blocked cross-validation of issue 15 (`bench/blocked_cv.py`) on runs it has
already trained (pass the same --train-args, --folds and --classes; training is skipped),
each point exported from every fold's run and evaluated on the fold's block: class swaps and
damage, mean and worst fold. Cost: ms per score of each point at the default training's
generator size (64 px, features 32; untrained weights, cost does not depend on them) here,
bundles interleaved sample by sample, median, ONNX Runtime with --threads.

Writes OUT/frontier.md (the table, Pareto fronts marked), OUT/frontier.png (AUROC against ms
per score, one panel per job) and OUT/operating_points.json (the points, their cost ratio to
the default and their quality: what `adgan export --budget-ms` reads when copied to
export/operating_points.json).

    .venv/bin/python bench/frontier.py ../shared/data/paper-rgbd --cv runs/cv/sphere-object \\
        --classes sphere --folds 3 --train-args "--size 32 --epochs 120 --encoder-epochs 60 --framing object" \\
        --every 3 --out runs/frontier

After adgan export's default changed, `--quality-from export/operating_points.json` keeps each
point's quality (the CV folders need not exist any more), times every point again and marks
the new default.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import numpy as np  # noqa: E402

# name -> SearchDefaults fields that differ from `adgan export`'s recipe (RECIPE_SEARCH: theta
# scope none, 4x4 cells, start at E(x)). Every point names its k and its seeds, so a name means
# the same search whatever the default is; which point is the default is found (default_point).
ONE = {"n_seed": 1, "z_init_noise": 0.0}  # one seed at E(x)
POINTS: dict[str, dict] = {
    **{f"k{k}": {**ONE, "k": k} for k in (0, 1, 2, 3, 5, 10, 19)},
    **{f"bn-k{k}": {**ONE, "theta_scope": "bn", "lr_theta": 1e-3, "k": k} for k in (3, 10, 19)},
    **{f"seeds3-k{k}": {"n_seed": 3, "z_init_noise": 0.5, "k": k} for k in (5, 19)},
    "cells2": {**ONE, "pool": 2, "k": 19},
    "cells8": {**ONE, "pool": 8, "k": 19},
    **{f"top4-k{k}": {**ONE, "score_cells": 4, "k": k} for k in (0, 5)},
    "top4": {**ONE, "score_cells": 4, "k": 19},
}
# blocked-CV tables written while k 19 was the default call that point "default"
LEGACY_NAMES = {"default": "k19"}


def default_point(points: dict[str, dict]) -> str:
    """The point whose search is `adgan export`'s default."""
    from export.bundle import RECIPE_SEARCH
    for name, fields in points.items():
        if replace(RECIPE_SEARCH, **fields) == RECIPE_SEARCH:
            return name
    raise ValueError(f"no point is adgan export's default search (k {RECIPE_SEARCH.k}); add it to the sweep")


def export_options(fields: dict) -> str:
    """The `adgan export` options of a point's fields."""
    flag = {"pool": "--pool", "k": "--k", "theta_scope": "--theta-scope", "lr_theta": "--lr-theta",
            "n_seed": "--n-seed", "z_init_noise": "--z-init-noise", "score_cells": "--score-cells"}
    return " ".join(f"{flag[k]} {v:g}" if isinstance(v, float) else f"{flag[k]} {v}" for k, v in fields.items())


def quality(cv_dirs: list[Path], summary: str) -> dict[str, dict]:
    """{point: {class: {metric: [per fold]}}} from the blocked-CV tables of the points."""
    out: dict[str, dict] = {}
    for d in cv_dirs:
        with open(d / f"{summary}.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                per = out.setdefault(LEGACY_NAMES.get(r["variant"], r["variant"]), {}).setdefault(r["class"], {})
                for k in ("swap", "damage", "worst_defect", "pixel"):
                    per.setdefault(k, []).append(float(r[k]))
    return out


def costs(points: dict[str, dict], threads: int, budget_s: float, features: int = 32) -> dict[str, float]:
    """Median ms per score of every point at 64 px and `features` (the default training's 32), interleaved."""
    from agent.scoring.bundle import Bundle
    from agent.scoring.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeSettings
    from agent.scoring.search import Searcher
    from costing import CostModel
    from export.bundle import RECIPE_SEARCH

    model = CostModel(64, features)
    xs = model.inputs(4)
    searchers, times = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fields in points.items():
            s = replace(RECIPE_SEARCH, **fields)
            b = Bundle.load(model.bundle(Path(tmp) / name, replace(s, seeds_per_call=s.n_seed)))
            searchers[name] = Searcher(b, OnnxRuntimeBackend(b, OnnxRuntimeSettings(threads=threads)), seed=0)
            searchers[name].score(xs[0])  # warm-up
            times[name] = []
        t_end, i = time.perf_counter() + budget_s, 0
        while i < 5 or time.perf_counter() < t_end:
            for name, sr in searchers.items():
                t = time.perf_counter()
                sr.score(xs[i % len(xs)])
                times[name].append(time.perf_counter() - t)
            i += 1
    return {n: 1e3 * float(np.median(t)) for n, t in times.items()}


def quality_rows(qual: dict[str, dict], points: dict[str, dict]) -> dict[str, dict]:
    """{point: its options, search and quality over classes (mean, worst fold)} of the points with CV rows."""
    rows = {}
    for n in points:
        per_class = qual.get(n, {})
        if not per_class:
            continue
        swap_worst = float(np.mean([min(v["swap"]) for v in per_class.values()]))
        dmg_worst = float(np.mean([min(v["damage"]) for v in per_class.values()]))
        rows[n] = {"options": export_options(points[n]), "search": points[n],
                   "swap_mean": float(np.mean([np.mean(v["swap"]) for v in per_class.values()])),
                   "swap_worst": swap_worst,
                   "damage_mean": float(np.mean([np.mean(v["damage"]) for v in per_class.values()])),
                   "damage_worst": dmg_worst,
                   "worst_defect": float(np.mean([min(v["worst_defect"]) for v in per_class.values()])),
                   "pixel_worst": float(np.mean([min(v["pixel"]) for v in per_class.values()])),
                   "quality": (swap_worst + dmg_worst) / 2, "classes": sorted(per_class)}
    return rows


def pareto(ms: dict[str, float], q: dict[str, float]) -> set[str]:
    """Points no other point beats on both cost (lower) and quality (higher)."""
    return {n for n in ms if not any((ms[o] <= ms[n] and q[o] >= q[n]) and (ms[o] < ms[n] or q[o] > q[n])
                                     for o in ms if o != n)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--cv", action="append", default=[],
                    help="a blocked-CV folder whose runs are trained (repeatable: one per class or framing)")
    ap.add_argument("--classes", action="append", default=None,
                    help="classes of each --cv folder, in the same order (default: sphere)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--train-args", default="", help="the --train-args the runs were trained with")
    ap.add_argument("--every", type=int, default=3, help="evaluate every N-th frame of a block (default 3)")
    ap.add_argument("--points", default=",".join(POINTS), help="comma-separated point names (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the cost (default 1)")
    ap.add_argument("--budget-s", type=float, default=60.0, help="timing budget for the cost (default 60)")
    ap.add_argument("--skip-quality", action="store_true", help="cost only (the CV tables exist)")
    ap.add_argument("--quality-from", metavar="JSON",
                    help="take each point's quality from an operating_points.json this script wrote, instead of "
                         "the CV tables (which need not exist any more); cost is timed again, the default found "
                         "again (after adgan export's default changed)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    names = [n.strip() for n in a.points.split(",") if n.strip()]
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        raise SystemExit(f"unknown points {unknown} (known: {', '.join(POINTS)})")
    points = {n: POINTS[n] for n in names}
    try:
        default = default_point(points)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if not a.cv and not a.quality_from:
        raise SystemExit("give --cv (blocked-CV folders) or --quality-from (an operating_points.json)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cv_dirs = [Path(d) for d in a.cv]
    classes = a.classes or ["sphere"] * len(cv_dirs)
    summary = f"frontier-every{a.every}"
    t0 = time.time()
    validated = {"classes": sorted(set(classes)), "cv": [str(d) for d in cv_dirs], "train_args": a.train_args,
                 "folds": a.folds, "every": a.every}
    if a.quality_from:
        prior = json.loads(Path(a.quality_from).read_text())
        validated, classes = prior["validated_on"], prior["validated_on"]["classes"]
        rows = {n: {k: v for k, v in r.items() if k not in ("ms", "cost_ratio", "pareto")}
                for n, r in prior["points"].items() if n != "default" and n in points}
    elif not a.skip_quality:
        for d, cls in zip(cv_dirs, classes):
            cmd = [sys.executable, str(Path(__file__).parent / "blocked_cv.py"), a.data, "--out", str(d),
                   "--classes", cls, "--folds", str(a.folds), "--train-args", a.train_args,
                   "--every", str(a.every), "--summary", summary,
                   *[f"--variant={n}={export_options(f)}" for n, f in points.items()]]
            print("$", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True)
    if not a.quality_from:
        rows = quality_rows(quality(cv_dirs, summary), points)
    if default not in rows:
        raise SystemExit(f"no quality for the default point {default!r}: it must be in the sweep")
    ms = costs({n: points[n] for n in rows}, a.threads, a.budget_s)
    for n, r in rows.items():
        r.update(ms=round(ms[n], 1), cost_ratio=round(ms[n] / ms[default], 3))
    fronts = {job: pareto({n: r["ms"] for n, r in rows.items()}, {n: r[job] for n, r in rows.items()})
              for job in ("swap_worst", "damage_worst", "quality")}
    for n, r in rows.items():
        r["pareto"] = n in fronts["quality"]
    lines = [f"# The search's quality/cost frontier ({', '.join(sorted({c for c in classes}))}; "
             f"{len(rows)} points compared; every {a.every} frame(s); cost {a.threads} thread(s), 64 px features 32)",
             "", "| point | export options | ms per score | x default | class swaps mean | worst | damage mean | "
             "worst | lowest defect | pixel worst | quality | Pareto |", "|" + "---|" * 12]
    for n, r in sorted(rows.items(), key=lambda kv: kv[1]["ms"]):
        mark = ", ".join(j.split("_")[0] for j in ("swap_worst", "damage_worst", "quality") if n in fronts[j])
        lines.append(f"| {n}{' (default)' if n == default else ''} | `{r['options']}` | {r['ms']:.1f} | "
                     f"{r['cost_ratio']:.2f} | "
                     f"{r['swap_mean']:.3f} | {r['swap_worst']:.3f} | {r['damage_mean']:.3f} | {r['damage_worst']:.3f} | "
                     f"{r['worst_defect']:.3f} | {r['pixel_worst']:.3f} | {r['quality']:.3f} | {mark} |")
    lines += ["", "quality: the mean of the worst-fold class-swap and damage AUROC (averaged over classes); "
              f"Pareto: not beaten on both cost and that job by another point. {(time.time() - t0) / 60:.0f} min."]
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    (out / "operating_points.json").write_text(json.dumps({
        "source": "bench/frontier.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
        "cost": f"ms per score at 64 px, features 32, {a.threads} thread(s), on the machine that ran the sweep",
        "quality": "mean of worst-fold class-swap and damage image AUROC in blocked cross-validation",
        "validated_on": validated,
        **({"quality_source": prior.get("quality_source", prior["source"])} if a.quality_from else {}),
        "default": default,  # "points" holds it twice: by its name, and as "default" (its own search)
        "points": {**rows, "default": {**rows[default], "search": {}, "options": "", "same_as": default}}},
        indent=1) + "\n")
    plot(rows, fronts, out / "frontier.png")
    print("\n".join(lines))
    print(f"-> {out / 'frontier.md'}, {out / 'frontier.png'}, {out / 'operating_points.json'}")
    return 0


def plot(rows: dict, fronts: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (job, title) in zip(axes, (("swap_worst", "class swaps, worst fold"), ("damage_worst", "damage, worst fold"))):
        for n, r in rows.items():
            on = n in fronts[job]
            ax.scatter(r["ms"], r[job], c="C3" if on else "C0", s=36 if on else 18, zorder=3)
            ax.annotate(n, (r["ms"], r[job]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((rows[n]["ms"], rows[n][job]) for n in fronts[job])
        if front:
            ax.step(*zip(*front), where="post", c="C3", lw=1, alpha=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("ms per score (64 px, features 32, this machine)")
        ax.set_ylabel("image AUROC")
        ax.set_title(title + " (red: Pareto front)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
