"""Blocked cross-validation: does a recipe hold on frames that show new instances?

The paper's frames are sequences: each physical object is filmed for 100-150 frame numbers,
neighbours are near-duplicates, and a class holds several objects. A random or interleaved
split puts every object on both sides; frames 700-999 were tuned on. Neither predicts how
a model does on a new batch. Here the frame numbers LO:HI are cut into --folds contiguous
blocks. For each block and class:

    adgan train DATA --class C --frames LO:HI --exclude-frames B0-P:B1+P ...   (P: --purge)
    adgan export RUN --out BUNDLE ...                  (one bundle per --variant, same run)
    adgan dataset damage DATA --out DAMAGED --frames B0:B1 --seed S   (once per block)
    adgan evaluate --bundles ... --data DATA --frames B0:B1 --damage DAMAGED

so every model is scored on a block it never saw (nor the purge gap around it): class
swaps (its class's block frames against the other classes' block frames) and local damage
(the block's frames against their damaged twins). The summary gives, per class and
variant, the mean and the worst fold of: class-swap AUROC, damage image AUROC over all
defect types, the lowest defect type's AUROC, and pixel AUROC. Choose recipes by the
worst fold, and say how many were compared (the summary counts them).

Every command runs as a user would type it; they are written to OUT/commands.txt. A run
that stops can be started again with the same arguments: finished steps are skipped.

    .venv/bin/python bench/blocked_cv.py ../shared/data/paper-rgbd --out runs/cv/quick \\
        --train-args "--epochs 150 --size 32 --framing object" \\
        --variant mean= --variant top4="--score-cells 4"
"""
from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ADGAN = [sys.executable, "-m", "adgan_edge"]


def blocks(lo: int, hi: int, folds: int) -> list[tuple[int, int]]:
    """`folds` contiguous half-open ranges covering LO:HI."""
    if folds < 2 or hi - lo < folds:
        raise ValueError(f"need at least 2 folds and one frame each, got {folds} folds of {lo}:{hi}")
    edges = np.linspace(lo, hi, folds + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def damage_command(data: str, out: Path, block: tuple[int, int], seed: int) -> list[str]:
    """`adgan dataset damage` for one block's frames: the damaged twins a fold is scored on."""
    return ADGAN + ["dataset", "damage", str(data), "--out", str(out), "--frames", f"{block[0]}:{block[1]}",
                    "--seed", str(seed), "--quiet"]


def screen_arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments of a screen by these blocks that trains no generator (bench/symmetry_screen.py,
    bench/synthetic_anomalies.py): the data, --out, the frames, folds, purge gap, damage seed, classes."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("data", help="the paper's layout: one folder per class")
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", default="0:1000")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--purge", type=int, default=20)
    ap.add_argument("--damage-seed", type=int, default=7)
    ap.add_argument("--classes", default="sphere,cylinder,rectangle")
    return ap


def run(cmd: list[str], log: Path, commands: Path) -> None:
    with open(commands, "a") as fh:
        fh.write(" ".join(shlex.quote(c) for c in cmd[2:] if c) + "\n")
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        fh.flush()
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def bundle_tag(bundle: Path) -> str:
    from agent.scoring.bundle import Bundle
    return Bundle.load(bundle).bundle_hash[:12]


def report_rows(report: Path, tag: str) -> tuple[list[dict], list[dict]] | None:
    """(class-swap rows, damage rows) of one bundle in a report, None if the report lacks it."""
    if not (report / "damage.csv").exists() or not (report / "table2.csv").exists():
        return None
    swap = [r for r in read_csv(report / "table2.csv") if r.get("bundle") == tag]
    rows = [r for r in read_csv(report / "damage.csv") if r.get("bundle") == tag]
    return (swap, rows) if swap and rows else None


def fold_rows(reports: dict[str, Path], bundles: dict[str, Path]) -> dict[str, dict]:
    """{variant: {swap, damage, worst_defect, pixel}} of one class and fold, from each variant's report."""
    out = {}
    for v, b in bundles.items():
        found = report_rows(reports[v], bundle_tag(b))
        if found is None:
            raise ValueError(f"{reports[v]}: no rows for bundle {b} ({v})")
        swap, rows = found
        per_defect = {r["defect"]: float(r["image_auroc"]) for r in rows if r["defect"] != "all"}
        every = next(r for r in rows if r["defect"] == "all")
        out[v] = {"swap": float(swap[0]["auc"]), "damage": float(every["image_auroc"]),
                  "worst_defect": min(per_defect.values()),
                  "worst_defect_name": min(per_defect, key=per_defect.get),
                  "pixel": float(every.get("pixel_auroc") or "nan"), "pro": float(every.get("pro_0.3") or "nan"),
                  **{f"damage_{k}": val for k, val in per_defect.items()}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="dataset root (the paper's layout), e.g. ../shared/data/paper-rgbd")
    ap.add_argument("--out", required=True, help="folder for runs, bundles, reports and the summary")
    ap.add_argument("--classes", default="cylinder,rectangle,sphere")
    ap.add_argument("--frames", default="0:1000", help="LO:HI frame numbers the folds cut (default 0:1000)")
    ap.add_argument("--folds", type=int, default=5, help="contiguous blocks (default 5: 200 frame numbers each)")
    ap.add_argument("--only-folds", default=None, help="comma-separated fold numbers to run (default: all)")
    ap.add_argument("--purge", type=int, default=20,
                    help="frame numbers left out of training on each side of the block (default 20)")
    ap.add_argument("--train-args", default="", help="extra 'adgan train' options, quoted, e.g. \"--epochs 150\"")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=\"adgan export options\": a scoring recipe exported from each run (repeatable; "
                         "default: one variant 'default' with no options)")
    ap.add_argument("--damage-seed", type=int, default=7, help="seed of 'adgan dataset damage' (default 7)")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--every", type=int, default=1,
                    help="evaluate every N-th frame number of a block (default 1: all; neighbouring frames are "
                         "near-duplicates, so a sweep of many variants can thin them)")
    ap.add_argument("--summary", default="summary",
                    help="name of the summary files OUT/NAME.md and OUT/NAME.csv (default summary; folds.csv "
                         "for the default name)")
    a = ap.parse_args(argv)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    commands, log = out / "commands.txt", out / "log.txt"
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    variants = {}
    for spec in a.variant or ["default="]:
        name, sep, args = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--variant takes NAME=\"export options\", got {spec!r}")
        variants[name] = args
    lo, hi = (int(v) for v in a.frames.split(":"))
    folds = blocks(lo, hi, a.folds)
    pick = [int(f) for f in a.only_folds.split(",")] if a.only_folds else range(len(folds))
    results: dict[tuple[str, str], list[dict]] = {}
    t_start = time.time()
    for f in pick:
        b0, b1 = folds[f]
        fold = out / f"fold{f}"
        damaged = fold / "damaged"
        if not (damaged / "damage.json").exists():
            run(damage_command(a.data, damaged, (b0, b1), a.damage_seed), log, commands)
        for c in classes:
            t0 = time.time()
            runs = fold / c / "run"
            if not (runs / "encoder.pt").exists() and not (runs / "done").exists():
                if (runs / "checkpoint.pt").exists():
                    cmd = ADGAN + ["train", a.data, "--class", c, "--out", str(runs), "--resume", "--quiet"]
                else:
                    cmd = ADGAN + ["train", a.data, "--class", c, "--frames", f"{lo}:{hi}",
                                   "--exclude-frames", f"{max(lo, b0 - a.purge)}:{min(hi, b1 + a.purge)}",
                                   "--seed", str(a.seed), "--out", str(runs), "--quiet", *shlex.split(a.train_args)]
                run(cmd, log, commands)
                (runs / "done").write_text("trained\n")
            bundles = {}
            for v, args in variants.items():
                bundle = fold / c / f"bundle-{v}"
                if not (bundle / "manifest.json").exists():
                    run(ADGAN + ["export", str(runs), "--out", str(bundle), "--force", *shlex.split(args)],
                        log, commands)
                bundles[v] = bundle
            # one report per variant (a later run adds variants without scoring the others again);
            # reports of earlier versions hold several variants in fold/C/report
            suffix = f"-every{a.every}" if a.every > 1 else ""
            old = fold / c / "report"
            reports = {v: old if not suffix and report_rows(old, bundle_tag(b)) else fold / c / f"report-{v}{suffix}"
                       for v, b in bundles.items()}
            for v, b in bundles.items():
                if report_rows(reports[v], bundle_tag(b)) is None:
                    run(ADGAN + ["evaluate", "--bundles", str(b), "--data", a.data,
                                 "--frames", f"{b0}:{b1}" + (f":{a.every}" if a.every > 1 else ""),
                                 "--damage", str(damaged), "--out", str(reports[v]), "--no-search-figure",
                                 "--n-rank", "4", "--quiet"], log, commands)
            rows = fold_rows(reports, bundles)
            for v, row in rows.items():
                results.setdefault((c, v), []).append({"fold": f, "block": f"{b0}:{b1}", **row})
            print(f"fold {f} ({b0}:{b1}) {c}: " + "; ".join(
                f"{v} swap {r['swap']:.3f} damage {r['damage']:.3f} (worst {r['worst_defect_name']} "
                f"{r['worst_defect']:.3f}) pixel {r['pixel']:.3f}"
                for v, r in rows.items()) + f" [{time.time() - t0:.0f} s]", flush=True)
    write_summary(out, results, a, folds, len(variants), time.time() - t_start)
    return 0


def write_summary(out: Path, results, a, folds, n_variants: int, seconds: float) -> None:
    keys = ("swap", "damage", "worst_defect", "pixel", "pro")
    lines = [f"# Blocked cross-validation: {a.data}, frames {a.frames}, {len(folds)} folds "
             f"({', '.join(f'{x}:{y}' for x, y in folds)}), purge {a.purge}",
             "", f"train args: `{a.train_args}`; every {a.every} frame(s) of a block; variants compared: {n_variants} "
             f"({', '.join(a.variant) or 'default'}); damage seed {a.damage_seed}; {seconds / 60:.0f} min", "",
             "| class | variant | folds | " + " | ".join(f"{k} mean | {k} worst" for k in keys) + " |",
             "|" + "---|" * (3 + 2 * len(keys))]
    rows = []
    for (c, v), fs in sorted(results.items()):
        cells = []
        for k in keys:
            vals = np.array([r[k] for r in fs], float)
            cells += [f"{np.nanmean(vals):.3f}", f"{np.nanmin(vals):.3f}"]
        lines.append(f"| {c} | {v} | {len(fs)} | " + " | ".join(cells) + " |")
        rows += [{"class": c, "variant": v, **r} for r in fs]
    (out / f"{a.summary}.md").write_text("\n".join(lines) + "\n")
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("class", "variant", "fold", "block"), k))
    table = out / ("folds.csv" if a.summary == "summary" else f"{a.summary}.csv")
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(rows)
    print("\n".join(lines))
    print(f"-> {out / (a.summary + '.md')}, {table}, commands in {out / 'commands.txt'}")


if __name__ == "__main__":
    sys.exit(main())
