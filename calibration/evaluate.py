"""`adgan evaluate`: the paper's Experiment 1 (Table 2, figures) and Experiment 2 (ranking)."""
from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from agent.argtypes import number
from calibration.scoring import SCORER_BACKENDS, make_scorer, score_folder
from calibration.metrics import auc, equal_rates_threshold, max_accuracy_threshold, rates


def score_dataset(scorer, bundle, data: Path, frames, progress: bool) -> list[tuple[str, str, float]]:
    return list(score_folder(scorer, bundle, data, frames, progress))


def table_row(cls: str, kind: str, rows: list[tuple[str, str, float]]) -> dict:
    """Table 2's numbers for one model: normal = its class folder, anomalous = every other folder."""
    s = np.array([r[2] for r in rows])
    folder = np.array([r[1] for r in rows])
    normal, anom = s[folder == cls], s[folder != cls]
    if len(normal) == 0 or len(anom) == 0:
        raise ValueError(f"model {cls}: the data needs samples of {cls!r} and of other folders")
    t_max, t_eq = max_accuracy_threshold(normal, anom), equal_rates_threshold(normal, anom)
    row = {"class": cls, "kind": kind, "n_normal": len(normal), "n_anomalous": len(anom),
           "max_accuracy": rates(normal, anom, t_max)["accuracy"],
           "equal_rates_accuracy": rates(normal, anom, t_eq)["accuracy"], "auc": auc(normal, anom)}
    for f in sorted(set(folder)):
        row[f"avg_loss_{f}"] = float(s[folder == f].mean())
    return row


def write_table(rows: list[dict], out: Path, name: str = "table2") -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def ranking_grid(rows, n: int, path: Path, title: str) -> None:
    """The n least and n most anomalous samples (Figures 7, 17-28), RGB above depth."""
    from agent.sources.dataset import read_sample
    from agent.visual import sample_grid, write_png

    order = sorted(rows, key=lambda r: r[2])

    def load(r):
        p = Path(r[0])
        return read_sample(p.parent.parent, int(p.stem))

    least = [load(r) for r in order[:n]]
    most = [load(r) for r in order[::-1][:n]]
    lab_l = "least anomalous: " + ", ".join(f"{r[1]} {r[2]:.3g}" for r in order[:min(n, 4)])
    lab_m = "most anomalous: " + ", ".join(f"{r[1]} {r[2]:.3g}" for r in order[::-1][:min(n, 4)])
    write_png(path, sample_grid([least, most], [f"{title} | {lab_l}", lab_m], scale=2))


def maps_figure(scorer, bundle, rows, n: int, path: Path, title: str) -> None:
    """Per-pixel anomaly maps of the n most anomalous samples: input | G(z*) | |G(z*) - x|."""
    from agent.decide.anomaly_map import map_tiles
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import read_model_sample
    from agent.visual import label, write_png

    tiles = []
    for r in sorted(rows, key=lambda r: -r[2])[:n]:
        p = Path(r[0])
        x = sample_to_input(read_model_sample(p.parent.parent, int(p.stem), bundle.preprocessing), bundle.size)
        res = scorer.score(x)
        tiles.append(label(map_tiles(x, res.reconstruction, relief=res.relief_heat, sigma=bundle.heat_sigma,
                                      background=bundle.heat_background),
                           f"{r[1]} {r[2]:.3g}", scale=0.5))
    cols = 4
    rows_img = []
    for i in range(0, len(tiles), cols):
        line = tiles[i:i + cols] + [np.zeros_like(tiles[0])] * (cols - len(tiles[i:i + cols]))
        rows_img.append(np.hstack([np.pad(t, ((0, 4), (0, 6), (0, 0))) for t in line]))
    write_png(path, label(np.vstack(rows_img), f"{title}: most anomalous | input, reconstruction, |G(z*) - x|",
                          scale=0.6))


def search_figure(bundle, x: np.ndarray, path: Path, seed: int, lr_thetas=(6e-9, 1e-3)) -> None:
    """G(z_t) over the k steps for one sample, with a low and a high lr_theta (Figure 4)."""
    import torch

    from agent.segment.preprocess import input_to_sample
    from agent.visual import sample_grid, write_png
    from export.autograd import search_seed, torch_generator_from_bundle

    g = torch_generator_from_bundle(bundle)
    p = bundle.search
    z0 = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, bundle.nz)).astype(np.float32))[0]
    xt = torch.from_numpy(x).unsqueeze(0)
    rows, labels = [[input_to_sample(x)]], ["the sample"]
    for lr in lr_thetas:
        trace: list = []
        search_seed(g, xt, z0, p.k, p.lr_z, lr, "all", p.loss, p.fg_threshold, trace=trace,
                    depth_weight=p.depth_weight, pool=p.pool)
        pick = np.unique(np.linspace(0, len(trace) - 1, min(len(trace), 10)).astype(int))
        rows.append([input_to_sample(trace[i][0].numpy()) for i in pick])
        labels.append(f"G(z_t) at steps {', '.join(str(i + 1) for i in pick)} with lr_theta {lr:g}")
    write_png(path, sample_grid(rows, labels, scale=2))


@dataclass(frozen=True)
class EvaluateOptions:
    """What `adgan evaluate` takes (see its help)."""

    bundles: Sequence[str]
    out: str
    data: str | None = None
    damage: str | None = None
    frames: str | None = None
    backend: str = "onnxruntime"
    seed: int = 0
    n_rank: int = 8
    no_search_figure: bool = False
    pca: int = 0
    train_frames: str | None = None
    quiet: bool = False


def pca_rows(o: EvaluateOptions, frames, curves: dict, avg: dict) -> list[dict]:
    """The PCA baseline (plain and masked) for every class folder, trained on --train-frames."""
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import class_folders, frame_numbers, parse_frames, read_sample
    from calibration.baselines import PCA

    if not o.train_frames:
        raise ValueError("--pca needs --train-frames LO:HI (the frames the baseline is fitted on)")
    train = parse_frames(o.train_frames)
    folders = class_folders(o.data)
    test = [(f.name, sample_to_input(read_sample(f, n))) for f in folders for n in frame_numbers(f, frames)]
    x_test = np.stack([x for _, x in test])
    rows = []
    for cls in sorted({f.name for f in folders}):
        folder = next(f for f in folders if f.name == cls)
        x_train = np.stack([sample_to_input(read_sample(folder, n)) for n in frame_numbers(folder, train)])
        pca = PCA.fit(x_train, o.pca)
        for kind, masked in ((f"pca{o.pca}", False), (f"pca{o.pca}-masked", True)):
            s = pca.scores(x_test, masked)
            scored = [("", c, float(v)) for (c, _), v in zip(test, s)]
            rows.append(table_row(cls, kind, scored))
            folder_arr = np.array([c for c, _ in test])
            curves[f"{cls} {kind}"] = (s[folder_arr == cls], s[folder_arr != cls])
    return rows


def class_check_rows(bundles, o: EvaluateOptions, frames, curves: dict) -> list[dict]:
    """Table 2's rows of the class check (agent/decide/class_check.py, model "pca") for every bundle,
    against the other bundles' classes, where there are two classes or more, each bundle carries a
    class PCA and all frame parts alike: a sample's margin is ln L_own - min over the others ln L_other,
    L each class PCA's error. What a station inspecting these products gets from
    `adgan calibrate --class-check` beside the score; none where the check cannot be made (said)."""
    from agent.decide.class_check import margin, refusal
    from calibration.class_check import PCAScorer

    by_class = {b.cls: b for b in bundles}
    if len(by_class) < 2:
        return []
    why = next((w for b in by_class.values()
                if (w := refusal(b, {c: r for c, r in by_class.items() if c != b.cls}, "pca"))), None)
    if why is not None:
        print(f"note: no class check rows in Table 2: {why}")
        return []
    errors = {c: {p: (folder, e) for p, folder, e in score_dataset(PCAScorer(b), b, Path(o.data), frames, False)}
              for c, b in by_class.items()}
    rows = []
    for c in by_class:
        scored = [(p, folder, margin(e, {r: errors[r][p][1] for r in by_class if r != c})[0])
                  for p, (folder, e) in errors[c].items()]
        row = table_row(c, "class check (pca)", scored)
        rows.append({**{k: v for k, v in row.items() if not k.startswith("avg_loss_")},
                     "bundle": by_class[c].bundle_hash[:12], "score": "class PCA margin"})
        s, folder = np.array([r[2] for r in scored]), np.array([r[1] for r in scored])
        curves[f"{c} class check (pca)"] = (s[folder == c], s[folder != c])
    return rows


def damage_recipe(root: Path) -> str:
    """How `adgan dataset damage` made the twins under `root` (its damage.json), for the report."""
    try:
        doc = json.loads((root / "damage.json").read_text())
    except (OSError, ValueError):
        return " (no readable damage.json: not made by `adgan dataset damage`)"
    if not isinstance(doc, dict):
        return " (damage.json is not a record of `adgan dataset damage`)"
    if doc.get("made_by") == "adgan dataset synth-damage":
        return f" (the renderer's defects, seed {doc.get('seed')}, {doc.get('parts')} parts per class)"
    return f" (damage seed {doc.get('seed')}, size scale {doc.get('size_scale', 1.0)})"


REPORT_FILES = ("index.md", "table2.md", "table2.csv", "damage.md", "damage.csv", "roc.png", "average-loss.png",
                "rates-*.png", "ranking-*.png", "maps-*.png", "search-*.png", "damage-maps-*.png", "scores/*.csv")


def clear_report(out: Path) -> int:
    """A report written again into its folder: the previous report's own files go first, else a
    class or a section the new run does not write would stay beside it, under the new index, as if
    current. Other files stay; a folder without index.md is no report. How many went."""
    if not (out / "index.md").is_file():
        return 0
    gone = 0
    for pattern in REPORT_FILES:
        for p in out.glob(pattern):
            if p.is_file():
                p.unlink()
                gone += 1
    return gone


def evaluate(o: EvaluateOptions) -> Path:
    """The report: Table 2 over --data and/or the local-damage section over --damage, with
    figures and index.md in o.out; the index's path."""
    from agent.scoring.bundle import Bundle
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import parse_frames, read_model_sample
    from calibration import figures

    out = Path(o.out)
    frames = parse_frames(o.frames, allow_step=True)
    table, curves, avg, index = [], {}, {}, ["# Evaluation report", "",
                                             f"Data `{o.data}`, frames `{o.frames or 'all'}`, backend `{o.backend}`, "
                                             f"seed {o.seed}.", ""]
    if not o.data and not o.damage:
        raise ValueError("give --data (class swaps, Table 2) and/or --damage (damaged twins)")
    if o.damage and o.backend == "torch":
        raise ValueError("--damage needs the anomaly maps, which the torch oracle does not keep: "
                         "use --backend onnxruntime")
    if o.damage:
        index.insert(3, f"Damaged twins `{o.damage}`{damage_recipe(Path(o.damage))}.")
    bundles = [Bundle.load(bp) for bp in o.bundles]  # (a bad one is said before the old report goes)
    if gone := clear_report(out):
        print(f"{out}: the previous report's {gone} files removed (a new index.md is written at the end)")
    (out / "scores").mkdir(parents=True, exist_ok=True)
    damage = []
    for b in bundles:
        label = f"{b.cls} {b.kind}"
        tag = f"{b.cls}-{b.kind}-{b.bundle_hash[:8]}"
        scorer = make_scorer(b, o.backend, o.seed)
        if o.damage:
            damage += evaluate_damage(scorer, b, o, frames, out, tag, label, index)
        if not o.data:
            continue
        rows = score_dataset(scorer, b, Path(o.data), frames, not o.quiet)
        with open(out / "scores" / f"{tag}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "class", "score"])
            w.writerows([(p, c, f"{s:.9g}") for p, c, s in rows])
        row = {**table_row(b.cls, b.kind, rows), **bundle_columns(b)}
        table.append(row)
        s = np.array([r[2] for r in rows])
        folder = np.array([r[1] for r in rows])
        curves[label] = (s[folder == b.cls], s[folder != b.cls])
        avg[label] = {k[len("avg_loss_"):]: v for k, v in row.items() if k.startswith("avg_loss_")}
        figures.rates_vs_threshold(*curves[label], f"{label}: accuracy, TPR, TNR", out / f"rates-{tag}.png")
        ranking_grid(rows, o.n_rank, out / f"ranking-{tag}.png", label)
        index += [f"## {label} (bundle {b.bundle_hash[:12]})", "", f"![rates](rates-{tag}.png)", "",
                  f"![ranking](ranking-{tag}.png)", ""]
        if o.backend != "torch":  # the autograd oracle keeps no reconstruction
            maps_figure(scorer, b, rows, o.n_rank, out / f"maps-{tag}.png", label)
            index += [f"![anomaly maps](maps-{tag}.png)", ""]
        if not o.no_search_figure:
            first = min(rows, key=lambda r: r[0])
            p = Path(first[0])
            x = sample_to_input(read_model_sample(p.parent.parent, int(p.stem), b.preprocessing), b.size)
            search_figure(b, x, out / f"search-{tag}.png", o.seed)
            index += [f"![search](search-{tag}.png)", ""]
    head = []
    if o.data:
        table += class_check_rows(bundles, o, frames, curves)
        if o.pca:
            table += pca_rows(o, frames, curves, avg)
        write_table(table, out)
        figures.roc_curves(curves, out / "roc.png")
        figures.average_loss(avg, out / "average-loss.png")
        head += ["## Table 2", "", (out / "table2.md").read_text(), "![ROC](roc.png)", "",
                 "![average loss](average-loss.png)", ""]
        print((out / "table2.md").read_text())
    if damage:
        write_table(damage, out, "damage")
        head += ["## Local damage", "", "Image AUROC (damaged against intact twins), pixel AUROC and PRO "
                 "(per-region overlap to 30% FPR) of |G(z*) - x| against the masks.", "",
                 (out / "damage.md").read_text()]
        print((out / "damage.md").read_text())
    index = index[:4] + head + index[4:]
    (out / "index.md").write_text("\n".join(index))
    print(f"report -> {out / 'index.md'}")
    return out / "index.md"


def cmd_evaluate(a: argparse.Namespace) -> int:
    evaluate(EvaluateOptions(**{f.name: getattr(a, f.name) for f in fields(EvaluateOptions)}))
    return 0


def evaluate_damage(scorer, b, o: EvaluateOptions, frames, out: Path, tag: str, label: str,
                    index: list[str]) -> list[dict]:
    """Score one bundle's intact and damaged twins; its rows, and its figure in the report."""
    from calibration.damage_eval import damage_figure, damage_rows, score_damage

    scored = score_damage(scorer, b, Path(o.damage), frames, not o.quiet)
    with open(out / "scores" / f"damage-{tag}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["folder", "frame", "score"])
        w.writerows([(s.folder.name, s.frame, f"{s.score:.9g}") for g in scored.values() for s in g])
    damage_figure(scored, min(o.n_rank, 6), out / f"damage-maps-{tag}.png", label)
    index += [f"### {label}: damaged parts", "", f"![damage maps](damage-maps-{tag}.png)", ""]
    # the maps' pixel metrics depend on the bundle's smoothing and background: say which (0: unsmoothed);
    # n_masked (added 2026-12-05) goes last, so the columns before it keep their places
    rows = [{**r, **bundle_columns(b), "map_sigma": b.heat_sigma, "map_background": b.heat_background}
            for r in damage_rows(b.cls, b.kind, scored)]
    for r in rows:
        r["n_masked"] = r.pop("n_masked")  # (re-inserted: last)
    return rows


def bundle_columns(b) -> dict:
    """Which bundle and which score a row is of, so that rows of one class stay apart."""
    return {"bundle": b.bundle_hash[:12], "score": b.describe_score()}


def add_parser(sub) -> None:
    q = sub.add_parser("evaluate", help="the paper's experiments: Table 2, ROC and accuracy figures, ranking grids; "
                                        "local damage: image and pixel AUROC, PRO",
                       description="Score every class folder of DATA with each bundle (its own class is normal, "
                                   "every other folder anomalous) and write Table 2 (markdown and CSV), accuracy/"
                                   "TPR/TNR against threshold, ROC curves, average loss per class, ranking grids of "
                                   "the least and most anomalous samples, and the search made visible, with an "
                                   "index.md.")
    q.add_argument("--bundles", nargs="+", required=True, help="bundle folders")
    q.add_argument("--data", default=None, help="dataset root with class folders: Table 2 (class swaps)")
    q.add_argument("--damage", default=None, help="root made by 'adgan dataset damage' (or by hand: C/ intact, "
                   "C_<defect>/ damaged, each with rgb/ and depth/, and mask/N.png where known): image AUROC per "
                   "class and defect, pixel AUROC and PRO of the anomaly maps against the masks, maps over the "
                   "best and worst damaged parts")
    q.add_argument("--frames", default=None,
                   help="LO:HI frame numbers (half-open), e.g. 700:1000; LO:HI:STEP every STEP-th of them")
    q.add_argument("--out", required=True, help="report folder")
    q.add_argument("--backend", choices=SCORER_BACKENDS, default=EvaluateOptions.backend,
                   help="engine that scores: onnxruntime (default), tensorrt (Jetson) or torch (the autograd "
                        "oracle, no maps)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--n-rank", type=number(int, 1), default=8, help="samples in each ranking row (default 8)")
    q.add_argument("--no-search-figure", action="store_true", help="skip Figure 4 (needs torch)")
    q.add_argument("--pca", type=number(int, 0), default=0,
                   help="add the PCA reconstruction-error baseline with this many components (plain and "
                        "foreground-masked) for every class, e.g. 32")
    q.add_argument("--train-frames", default=None, help="LO:HI frames the PCA baseline is fitted on, e.g. 0:700")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_evaluate)
