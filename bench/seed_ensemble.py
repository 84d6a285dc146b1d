"""Do generators trained with different seeds miss different parts? A two-seed ensemble from
`adgan evaluate` reports that exist (issue 15).

Each report is one bundle's evaluation of the same held-out block (blocked_cv.py): its
scores/<class>-*.csv (the block's parts and the other classes' parts) and
scores/damage-<class>-*.csv (intact twins and each defect). The ensemble scores a part with the
mean of the members' image scores (the same recipe, so the same scale). Reports must score
the same parts; anything else is refused. Prints each member's and the ensemble's AUROCs as
`adgan evaluate` computes them (class swaps: the block's parts against the other classes';
damage: each defect against the intact twins), the gain over the members' mean, and how the
members' scores on the damage set correlate.

    .venv/bin/python bench/seed_ensemble.py --class cylinder \\
        runs/cv/cyl-e300/fold1/cylinder/report-def-every3 runs/cv/cyl-s1-e300/fold1/cylinder/report-def-every3
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from map_scores import auc  # noqa: E402


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"{folder}: expected one {pattern}, found {len(found)}")
    return found[0]


def load(report: str | Path, cls: str) -> dict[tuple[str, str, str], float]:
    """(job, group, part) -> score. Job "swap": groups "intact" (the block) and each other
    class; job "damage": groups "intact" (the twins) and each defect."""
    scores = Path(report) / "scores"
    out: dict[tuple[str, str, str], float] = {}
    with open(_one(scores, f"{cls}-*.csv")) as f:
        for r in csv.DictReader(f):
            out[("swap", "intact" if r["class"] == cls else r["class"], r["path"])] = float(r["score"])
    with open(_one(scores, f"damage-{cls}-*.csv")) as f:
        for r in csv.DictReader(f):
            group = "intact" if r["folder"] == cls else r["folder"].removeprefix(f"{cls}_")
            out[("damage", group, r["frame"])] = float(r["score"])
    return out


def aucs(scores: dict[tuple[str, str, str], float]) -> tuple[float, float, dict[str, float]]:
    """(class-swap AUROC, damage AUROC over all defects, AUROC per defect)."""
    g: dict[tuple[str, str], list[float]] = {}
    for (job, group, _), s in sorted(scores.items()):
        g.setdefault((job, group), []).append(s)
    others = [v for (job, group), v in g.items() if job == "swap" and group != "intact"]
    defects = {group: v for (job, group), v in g.items() if job == "damage" and group != "intact"}
    if ("swap", "intact") not in g or not others or ("damage", "intact") not in g or not defects:
        raise SystemExit("a report needs the class's parts, another class's, intact twins and a defect")
    swap = auc(g[("swap", "intact")], np.concatenate(others))
    damage = auc(g[("damage", "intact")], np.concatenate(list(defects.values())))
    return swap, damage, {d: auc(g[("damage", "intact")], v) for d, v in defects.items()}


def ensemble(members: list[dict]) -> dict:
    keys = members[0].keys()
    for m in members[1:]:
        if m.keys() != keys:
            raise SystemExit("the reports do not score the same parts: an ensemble needs the same block and damage")
    return {k: float(np.mean([m[k] for m in members])) for k in keys}


def rows(cls: str, reports: list[str]) -> list[str]:
    members = [load(r, cls) for r in reports]
    ens = ensemble(members)
    res = [aucs(m) for m in members] + [aucs(ens)]
    names = [f"member {i}" for i in range(len(members))] + ["ensemble"]
    out = []
    for name, (sw, dm, per) in zip(names, res):
        out.append(f"| {cls} | {name} | {sw:.3f} | {dm:.3f} | "
                   + ", ".join(f"{d} {a:.2f}" for d, a in sorted(per.items())) + " |")
    sw_mean = np.mean([r[0] for r in res[:-1]])
    dm_mean = np.mean([r[1] for r in res[:-1]])
    damage_keys = sorted(k for k in ens if k[0] == "damage")
    corr = np.corrcoef([[m[k] for k in damage_keys] for m in members])
    off = corr[np.triu_indices(len(members), 1)]
    out.append(f"| {cls} | gain over the members' mean | {res[-1][0] - sw_mean:+.3f} | {res[-1][1] - dm_mean:+.3f} | "
               f"members' damage-set scores correlate {off.min():.3f}"
               + ("" if off.size == 1 else f" to {off.max():.3f}") + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="adgan evaluate report folders of one block (two or more)")
    p.add_argument("--class", dest="cls", required=True, help="the class the bundles were trained on")
    a = p.parse_args(argv)
    if len(a.reports) < 2:
        p.error("an ensemble needs two reports or more")
    print("| class | score | class swaps | damage | per defect |\n|---|---|---|---|---|")
    print("\n".join(rows(a.cls, a.reports)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
