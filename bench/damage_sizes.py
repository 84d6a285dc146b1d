"""How large must damage be before a bundle catches it? A sweep of `adgan dataset damage
--size-scale` on one bundle's held-out frames.

For each scale F the same defects (the same seed: the same random draws) are made with every
radius times F, and the bundle is evaluated on them:

    adgan dataset damage DATA --out OUT/xF/damaged --frames LO:HI --seed S --size-scale F
    adgan evaluate --bundles BUNDLE --damage OUT/xF/damaged --frames LO:HI[:STEP] --out OUT/xF/report

The table gives, per defect type and scale, the image AUROC (damaged twins against the intact
parts) and the median share of the part the defect covers. Use frames the bundle was not trained
on (a blocked-CV fold's block), or the numbers say nothing about a new batch. Commands go to
OUT/commands.txt; finished steps are skipped when it is run again.

    .venv/bin/python bench/damage_sizes.py runs/cv/cylinder-full/fold1/cylinder/bundle-def \\
        --data ../shared/data/paper-rgbd/cylinder --frames 333:667:3 --seed 7 --out runs/sizes/cylinder-fold1
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from blocked_cv import ADGAN, bundle_tag, read_csv, run


def scale_list(s: str) -> list[float]:
    from calibration.damage import check_scale
    try:
        v = sorted({float(x) for x in s.split(",") if x.strip()})
        for f in v:
            check_scale(f)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"comma-separated numbers ({e}), got {s!r}") from None
    if not v:
        raise argparse.ArgumentTypeError("no scale given")
    return v


def scale_name(f: float) -> str:
    return f"x{f:g}"


def sweep_rows(out: Path, scales: list[float]) -> list[dict]:
    """One row per (scale, class, defect) from each scale's report and damage.json."""
    rows = []
    for f in scales:
        d = out / scale_name(f)
        made = json.loads((d / "damaged" / "damage.json").read_text())["samples"]
        for r in read_csv(d / "report" / "damage.csv"):
            want = {f"{r['class']}_{r['defect']}"} if r["defect"] != "all" else {k for k in made
                                                                                 if k.startswith(r["class"] + "_")}
            shares = [p["defect_px"] / p["part_px"] for folder in want for p in made.get(folder, {}).values()]
            rows.append({"scale": f, "class": r["class"], "defect": r["defect"], "n_intact": int(r["n_intact"]),
                         "n_damaged": int(r["n_damaged"]), "image_auroc": float(r["image_auroc"]),
                         "pixel_auroc": float(r["pixel_auroc"]) if r.get("pixel_auroc") else float("nan"),
                         "share": float(np.median(shares)) if shares else float("nan")})
    return rows


def write_table(out: Path, rows: list[dict], scales: list[float], header: str) -> str:
    at = {(r["scale"], r["class"], r["defect"]): r for r in rows}
    lines = [header, "", "image AUROC (median share of the part the defect covers)"]
    for c in dict.fromkeys(r["class"] for r in rows):
        defects = [d for d in dict.fromkeys(r["defect"] for r in rows if r["class"] == c) if d != "all"] + ["all"]
        lines += ["", "| " + c + " | " + " | ".join(f"x{f:g}" for f in scales) + " |", "|---|" + "---|" * len(scales)]
        for d in defects:
            cells = [f"{at[(f, c, d)]['image_auroc']:.3f} ({at[(f, c, d)]['share']:.2f})" if (f, c, d) in at else "-"
                     for f in scales]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines.append("| pixel AUROC, all | " + " | ".join(
            f"{at[(f, c, 'all')]['pixel_auroc']:.3f}" if (f, c, "all") in at else "-" for f in scales) + " |")
    text = "\n".join(lines) + "\n"
    (out / "damage_sizes.md").write_text(text)
    with open(out / "damage_sizes.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bundle", help="the bundle to evaluate")
    p.add_argument("--data", required=True, help="a class folder (or a root of class folders) to damage")
    p.add_argument("--frames", required=True, help="LO:HI or LO:HI:STEP: frames the bundle was not trained on")
    p.add_argument("--scales", type=scale_list, default=scale_list("0.5,1,1.5,2"),
                   help="comma-separated --size-scale values")
    p.add_argument("--seed", type=int, default=7, help="damage seed")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    parts = a.frames.split(":")
    if len(parts) not in (2, 3):
        p.error(f"--frames must be LO:HI or LO:HI:STEP, got {a.frames!r}")
    block = ":".join(parts[:2])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log, commands = out / "log.txt", out / "commands.txt"
    t0 = time.time()
    tag = bundle_tag(Path(a.bundle))
    for f in a.scales:
        d = out / scale_name(f)
        made = d / "damaged" / "damage.json"
        if made.exists():  # a step done before must be this sweep's
            doc = json.loads(made.read_text())
            if (doc.get("seed"), doc.get("size_scale")) != (a.seed, f):
                raise SystemExit(f"{made} was made with seed {doc.get('seed')}, scale {doc.get('size_scale')}; "
                                 f"this sweep asks seed {a.seed}, scale {f:g}: choose another --out")
        else:
            run(ADGAN + ["dataset", "damage", a.data, "--out", str(d / "damaged"), "--frames", block, "--seed",
                         str(a.seed), "--size-scale", f"{f:g}", "--quiet"], log, commands)
        report = d / "report" / "damage.csv"
        if report.exists() and {r["bundle"] for r in read_csv(report)} != {tag}:
            raise SystemExit(f"{report} scores another bundle than {a.bundle}: choose another --out")
        if not report.exists():
            run(ADGAN + ["evaluate", "--bundles", a.bundle, "--damage", str(d / "damaged"), "--frames", a.frames,
                         "--out", str(d / "report"), "--no-search-figure", "--n-rank", "4", "--quiet"], log, commands)
        print(f"{scale_name(f)} done ({time.time() - t0:.0f} s)", flush=True)
    header = (f"# Damage size sweep: {a.bundle}, frames {a.frames} of {a.data}, damage seed {a.seed}, "
              f"{time.time() - t0:.0f} s")
    print(write_table(out, sweep_rows(out, a.scales), a.scales, header))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
