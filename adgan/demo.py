"""`adgan demo`: the main job end to end on embedded defaults.

1. data: synthesise boxes, cylinders and spheres with defects (or take a real dataset in
   the paper's layout with --data), 2. train one small generator per class (cached: a second
   run with the same settings skips it), 3. export bundles, 4. calibrate thresholds,
5. write the report (Table 2, figures, ranking and sample grids), 6. run a station: a broker,
   the agent as a subprocess over a camera stream mixing normal parts, other classes and
   defective parts, and a subscriber listening like a PLC gateway; a line per part, then a
   summary against the ground truth the stream knows.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from adgan.demo_live import STATION, run_live
from agent.segment.preprocess import Preprocessing
from agent.sources.synthetic import CLASSES, DEFECTS
from agent.sources.dataset import parse_frames
from calibration.calibrate import CalibrateOptions, calibrate as calibrate_bundle
from calibration.damage import DAMAGE_DEFECTS, damage_dataset
from calibration.evaluate import EvaluateOptions, evaluate

DEMO_CONFIG = "demo-config.json"


def _cached(folder: Path, config: dict, marker: str) -> bool:
    p = folder / DEMO_CONFIG
    return (folder / marker).exists() and p.is_file() and json.loads(p.read_text()) == config


def _mark(folder: Path, config: dict) -> None:
    (folder / DEMO_CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")


class Plan:
    """Where the training and test samples come from: synthetic (train/ and test/ folders) or
    a real dataset in the paper's layout (class folders, split by frame numbers)."""

    def __init__(self, a: argparse.Namespace, out: Path) -> None:
        self.a, self.out = a, out
        if a.data:
            root = Path(a.data)
            self.classes = sorted(p.name for p in root.iterdir() if (p / "rgb").is_dir() and (p / "depth").is_dir())
            if len(self.classes) < 2:
                raise FileNotFoundError(f"{root} needs at least two class folders (<class>/rgb, <class>/depth)")
            self.train_root = self.test_root = root
            self.train_frames, self.test_frames = a.train_frames, a.test_frames
            self.fingerprint = {"data": str(root.resolve()), "train_frames": a.train_frames}
        else:
            self.classes = list(CLASSES)
            self.train_root, self.test_root = out / "cache" / "data" / "train", out / "cache" / "data" / "test"
            self.train_frames = self.test_frames = None
            self.fingerprint = {"synthetic": {"n_train": a.train, "n_test": a.test, "seed": a.seed, "size": a.size,
                                              "framing": a.framing}}
        if a.expected not in self.classes:
            raise ValueError(f"--expected {a.expected!r} is not one of the classes {', '.join(self.classes)}")

    def frames(self, which: str) -> tuple[int, int] | None:
        return parse_frames(self.train_frames if which == "train" else self.test_frames)


def make_damage(plan: Plan, progress: bool) -> Path | None:
    """Intact test parts and their damaged twins with ground-truth masks, for the report's
    local-damage section: the renderer's own defects (synthetic), or `adgan dataset damage`
    of the test frames (--data). Cached like the rest."""
    a = plan.a
    if not a.damage_parts:
        return None
    folder = plan.out / "cache" / "damage"
    cfg = {**plan.fingerprint, "damage_parts": a.damage_parts, "test_frames": plan.test_frames}
    if _cached(folder, cfg, "done"):
        print(f"[1/6] damaged twins: cached in {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    if a.data:
        print(f"[1/6] damaged twins: {', '.join(DAMAGE_DEFECTS)} on the test frames -> {folder}")
        damage_dataset(a.data, folder, DAMAGE_DEFECTS, a.seed, plan.frames("test"), progress)
    else:
        from adgan.synth import synth_damage_dataset
        print(f"[1/6] damaged twins: {a.damage_parts} new parts per class, each also with "
              f"{', '.join(DEFECTS)} -> {folder}")
        synth_damage_dataset(folder, CLASSES, a.damage_parts, a.seed + 1,
                             Preprocessing(size=a.size, framing=a.framing), DEFECTS, progress=progress)
    (folder / "done").write_text("ok\n")
    _mark(folder, cfg)
    return folder


def make_data(plan: Plan, progress: bool) -> None:
    a = plan.a
    if a.data:
        print(f"[1/6] data: {a.data} (classes {', '.join(plan.classes)}; train frames {a.train_frames}, "
              f"test frames {a.test_frames})")
        return
    from adgan.synth import synth_dataset
    folder = plan.out / "cache" / "data"
    if _cached(folder, plan.fingerprint, "test"):
        print(f"[1/6] data: cached in {folder}")
        return
    shutil.rmtree(folder, ignore_errors=True)
    print(f"[1/6] data: synthesising {a.train} training, {a.test} normal and {a.test} defective test samples "
          f"per class -> {folder}")
    synth_dataset(folder, CLASSES, a.train, a.test, a.seed, Preprocessing(size=a.size, framing=a.framing), DEFECTS,
                  progress=progress)
    _mark(folder, plan.fingerprint)


def train_and_export(plan: Plan, progress: bool) -> dict[str, Path]:
    a, bundles = plan.a, {}
    from dataclasses import replace

    from export.bundle import RECIPE_SEARCH, with_default_seeds, write_bundle
    from training.encoder import train_encoder
    from training.train import TrainConfig, run_training
    for i, cls in enumerate(plan.classes):
        run = plan.out / "cache" / "runs" / cls
        cfg = {**plan.fingerprint, "class": cls, "kind": a.kind, "size": a.size, "features": a.features,
               "epochs": a.epochs, "seed": a.seed}
        if _cached(run, cfg, "checkpoint.pt"):
            print(f"[2/6] train {cls}: cached in {run}")
        else:
            shutil.rmtree(run, ignore_errors=True)
            print(f"[2/6] train {cls} ({i + 1}/{len(plan.classes)}): {a.kind}, {a.size} px, features {a.features}, "
                  f"{a.epochs} epochs -> {run}", flush=True)
            run_training(TrainConfig(data=str(plan.train_root), cls=cls, kind=a.kind, size=a.size,
                                     features_g=a.features, features_d=a.features, batch_size=32, epochs=a.epochs,
                                     ema=0.99, seed=a.seed, frames=plan.frames("train")), run, progress)
            _mark(run, cfg)
        z_init = "random"
        if a.encoder_epochs:
            z_init = "encoder"
            ecfg = {**cfg, "encoder_epochs": a.encoder_epochs}
            marker = run / "encoder-config.json"
            if (run / "encoder.pt").is_file() and marker.is_file() and json.loads(marker.read_text()) == ecfg:
                print(f"[2/6] encoder {cls}: cached in {run}")
            else:
                print(f"[2/6] encoder {cls}: {a.encoder_epochs} epochs (the search starts at E(x))", flush=True)
                train_encoder(run, a.encoder_epochs, a.features, progress=progress)
                marker.write_text(json.dumps(ecfg, sort_keys=True))
        bundles[cls] = plan.out / "bundles" / cls
        search = with_default_seeds(replace(RECIPE_SEARCH, loss=a.loss, k=a.k, z_init=z_init,
                                            score_cells=a.score_cells, score_norm=a.score_norm))
        write_bundle(run, bundles[cls], search, force=True)
    print(f"[3/6] bundles (theta scope {search.theta_scope}, loss {a.loss}, depth weight {search.depth_weight:g}, "
          f"pool {search.pool}, score {search.describe_score()}, n_seed {search.n_seed}, k {a.k}, "
          f"{'search from the encoder' if a.encoder_epochs else 'random z'}) -> {plan.out / 'bundles'}")
    return bundles


def calibrate(plan: Plan, bundles: dict[str, Path]) -> Path:
    th = plan.out / "thresholds.json"
    th.unlink(missing_ok=True)
    for cls, b in bundles.items():
        anomalous = [c for c in plan.classes if c != cls]
        if not plan.a.data:
            anomalous.append(f"{cls}_defect")
        calibrate_bundle(CalibrateOptions(str(b), str(plan.test_root / cls),
                                          [str(plan.test_root / c) for c in anomalous], policy="equal-rates",
                                          out=str(th), quiet=True, frames=plan.test_frames))
    print(f"[4/6] thresholds (equal error rates on the test samples) -> {th}")
    return th


def report(plan: Plan, bundles: dict[str, Path], damage: Path | None = None) -> Path:
    out = plan.out / "report"
    shutil.rmtree(out, ignore_errors=True)
    print(f"[5/6] report: Table 2, ROC, ranking grids{', local damage' if damage else ''} -> {out}")
    evaluate(EvaluateOptions([str(b) for b in bundles.values()], str(out), data=str(plan.test_root),
                             damage=str(damage) if damage else None, frames=plan.test_frames, quiet=True))
    from agent.sources.dataset import frame_numbers, read_sample
    from agent.visual import sample_grid, write_png
    rows, names = [], []
    for cls in plan.classes:
        folder = plan.train_root / cls
        nums = frame_numbers(folder, plan.frames("train"))[:10]
        rows.append([read_sample(folder, n) for n in nums])
        names.append(f"train {cls}")
    write_png(out / "samples.png", sample_grid(rows, names, scale=2))
    for cls in plan.classes:
        latest = plan.out / "cache" / "runs" / cls / "samples" / "latest.png"
        if latest.is_file():
            shutil.copy(latest, out / f"generated-{cls}.png")
    return out


def live_config(plan: Plan, bundles: dict[str, Path], th: Path, workdir: Path) -> tuple[Path, callable]:
    """agent.toml for the station and the stream's ground truth, event -> {class, defect, anomalous}."""
    a = plan.a
    exp = a.expected
    common = textwrap.dedent(f"""\
        [model]
        expected_class = "{exp}"
        thresholds = "{th}"
        seed = 0
        bundles = {{ {", ".join(f'{c} = "{p}"' for c, p in bundles.items())} }}
        [model.backend]
        type = "onnxruntime"
        [mqtt]
        host = "127.0.0.1"
        port = 1883
        [outbox]
        path = "{workdir / 'outbox.sqlite'}"
        [health]
        status_interval_s = 2
        """)
    if a.data:  # a replay of held-out frames: expected class 60 %, the others 40 %
        stream = workdir / "stream"
        shutil.rmtree(stream, ignore_errors=True)
        (stream / "rgb").mkdir(parents=True)
        (stream / "depth").mkdir()
        rng = random.Random(a.seed)
        from agent.sources.dataset import frame_numbers, rgb_path
        pools = {c: frame_numbers(plan.test_root / c, plan.frames("test")) for c in plan.classes}
        truth = {}
        for i in range(a.parts):
            c = exp if rng.random() < 0.6 else rng.choice([x for x in plan.classes if x != exp])
            n = rng.choice(pools[c])
            src = rgb_path(plan.test_root / c, n)
            shutil.copy(src, stream / "rgb" / f"{i}{src.suffix}")
            shutil.copy(plan.test_root / c / "depth" / f"{n}.png", stream / "depth" / f"{i}.png")
            truth[i] = {"class": c, "defect": None, "anomalous": c != exp, "source": str(src)}
        (stream / "truth.json").write_text(json.dumps(truth, indent=1))
        source = f'[source]\ntype = "folder"\npath = "{stream}"\nfps = {a.fps}\n[trigger]\nmode = "every_frame"\n'

        def truth_of(e):
            return truth.get(e["source"]["frame"])
    else:  # new parts passing the station the training data came from (same station seed)
        others = [c for c in plan.classes if c != exp]
        classes = [exp] * 4 + others  # two in three parts are of the expected class
        source = textwrap.dedent(f"""\
            [source]
            type = "synthetic"
            seed = {a.seed}
            classes = {json.dumps(classes)}
            defect_rate = 0.3
            frames_per_part = 4
            gap_frames = 2
            count = {a.parts * 6}
            fps = {a.fps}
            [segmentation]
            reference = "{workdir / 'reference.npz'}"
            [trigger]
            mode = "continuous"
            """)

        def truth_of(e):
            t = e["source"].get("truth")
            if not t or t.get("class") is None:
                return None
            return {"class": t["class"], "defect": t.get("defect"),
                    "anomalous": t["class"] != exp or t.get("defect") is not None}
    cfg = workdir / "agent.toml"
    cfg.write_text(f'station_id = "{STATION}"\n' + source + common)
    return cfg, truth_of


def capture_reference(cfg: Path) -> None:
    """The station's first job: record the empty table (the synthetic station, emptied)."""
    env = {**os.environ, "ADGAN_SOURCE__EMPTY_RATE": "1"}
    r = subprocess.run([sys.executable, "-m", "adgan", "agent", "capture-reference", "--config", str(cfg),
                        "--frames", "10", "--env-file", os.devnull], env=env, capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"capture-reference failed: {r.stderr}")
    print("station: " + r.stdout.strip())


def segmentation_figure(a: argparse.Namespace, workdir: Path, rep: Path) -> None:
    """The paper's Figure 1 for the first frame the station saw."""
    from adgan.figure1 import segmentation_steps
    from agent.segment.reference import SurfaceReference
    from agent.segment.segmentation import SegmentationConfig
    from agent.sources.synthetic import SyntheticSource
    from agent.visual import write_png
    frame = SyntheticSource(CLASSES, seed=a.seed).frame(0)
    ref = SurfaceReference.load(workdir / "reference.npz")
    write_png(rep / "segmentation.png", segmentation_steps(frame, ref, SegmentationConfig()))


def _search_line(out: Path, cls: str) -> str:
    """The search this run's bundles run, as the manifest of its first class records it."""
    s = json.loads((out / "bundles" / cls / "manifest.json").read_text())["search"]
    return f"theta scope {s['theta_scope']}, loss {s['loss']}, pool {s['pool']}, n_seed {s['n_seed']}, k {s['k']}"


def write_index(out: Path, plan: Plan, summary: dict, lines: list[str], seconds: float) -> Path:
    a, s = plan.a, summary
    rep = out / "report"
    evaluation = (rep / "index.md").read_text() if (rep / "index.md").is_file() else ""
    gen = "".join(f"![{c}](generated-{c}.png) " for c in plan.classes if (rep / f"generated-{c}.png").is_file())
    text = [f"# adgan-edge demo ({'data ' + a.data if a.data else 'synthetic station'})", "",
            f"Finished in {seconds:.0f} s. Models: {a.kind}, {a.size} px, features {a.features}, {a.epochs} epochs; "
            f"search: {_search_line(out, plan.classes[0])}, "
            f"{f'starting at E(x) ({a.encoder_epochs}-epoch encoder)' if a.encoder_epochs else 'random z'}.", "",
            f"## The station: {s['parts_inspected']} parts inspected, expecting `{a.expected}`", "",
            "| parts | OK | NG | true anomalies | detected | missed | false alarms | errors | median latency |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {s['parts_inspected']} | {s['ok']} | {s['ng']} | {s['true_anomalies']} | {s['detected']} | "
            f"{s['missed']} | {s['false_alarms']} | {s['errors']} | {s['latency_ms_median']} ms |", "",
            "Every event as the subscriber received it: `live/events.jsonl`; the agent's log: `live/agent.log`.",
            "", "```", *lines, "```", "", "## Training samples and generated samples", "",
            "![samples](samples.png)", "", gen, "",
            *(["## Segmentation (the paper's Figure 1)", "", "![segmentation](segmentation.png)", ""]
              if (rep / "segmentation.png").is_file() else []), evaluation.replace("# Evaluation report", "## Evaluation", 1)]
    (rep / "index.md").write_text("\n".join(text) + "\n")
    return rep / "index.md"


def run_demo(a: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not a.quiet
    if a.k is None:
        from export.bundle import RECIPE_SEARCH
        a.k = RECIPE_SEARCH.k
    plan = Plan(a, out)
    make_data(plan, progress)
    damage = make_damage(plan, progress)
    bundles = train_and_export(plan, progress)
    th = calibrate(plan, bundles)
    rep = report(plan, bundles, damage)
    workdir = out / "live"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cfg, truth_of = live_config(plan, bundles, th, workdir)
    print(f"[6/6] station: {a.parts} parts, expecting {a.expected}")
    events, lines, summary = run_live(workdir, cfg, truth_of, timeout_s=a.timeout, embedded_broker=a.embedded_broker,
                                      quiet=a.quiet, before_agent=None if a.data else capture_reference)
    with open(workdir / "events.jsonl", "w") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if not a.data:
        segmentation_figure(a, workdir, rep)
    s = summary
    index = write_index(out, plan, summary, lines, time.perf_counter() - t0)
    print(f"\nparts inspected {s['parts_inspected']} (OK {s['ok']}, NG {s['ng']}); true anomalies {s['true_anomalies']}: "
          f"detected {s['detected']}, missed {s['missed']}; false alarms {s['false_alarms']}; errors {s['errors']}; "
          f"median latency {s['latency_ms_median']} ms")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; report -> {index}")
    return {"summary": summary, "events": events, "report": rep, "index": index, "live": workdir}


def cmd_demo(a: argparse.Namespace) -> int:
    run_demo(a)
    return 0


def add_parser(sub) -> None:
    q = sub.add_parser("demo", help="run the main job end to end: data, training, bundles, thresholds, report, "
                                    "and a live station over MQTT",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--out", default="out/demo", help="output folder (default out/demo; models cached in it)")
    q.add_argument("--data", default=None, help="a real dataset in the paper's layout instead of synthetic parts")
    q.add_argument("--train-frames", default="0:700", help="with --data: training frames (default 0:700)")
    q.add_argument("--test-frames", default="700:1000", help="with --data: test frames (default 700:1000)")
    q.add_argument("--train", type=int, default=300, help="synthetic training samples per class (default 300)")
    q.add_argument("--test", type=int, default=30, help="synthetic test samples per class (default 30)")
    q.add_argument("--size", type=int, choices=(32, 64), default=32, help="model resolution (default 32)")
    q.add_argument("--framing", choices=("frame", "object"), default="object",
                   help="synthetic samples: 'object' crops around the part (default), 'frame' is the paper's "
                        "central square of the camera frame")
    q.add_argument("--features", type=int, default=16, help="generator and discriminator width (default 16)")
    q.add_argument("--epochs", type=int, default=60, help="training epochs per class (default 60)")
    q.add_argument("--kind", choices=("gan", "wgan", "wgan-gp"), default="gan", help="training recipe (default gan)")
    q.add_argument("--k", type=int, default=None, help="search steps per seed (default: adgan export's)")
    q.add_argument("--loss", choices=("mse", "fg", "fg_input"), default="fg_input",
                   help="search and score loss (default fg_input: the part's own pixels; mse is the paper's)")
    q.add_argument("--score-cells", type=int, default=0,
                   help="the score: 0 the search's mean loss over the part; K the mean of the K cells that differ "
                        "most (adgan export --score-cells)")
    from agent.scoring.bundle import SCORE_NORMS
    q.add_argument("--score-norm", choices=SCORE_NORMS, default="none",
                   help="with --score-cells: standardise each cell against the training parts (adgan export "
                        "--score-norm)")
    q.add_argument("--damage-parts", type=int, default=20,
                   help="parts per class rendered intact and with each defect for the report's local-damage "
                        "section (per-defect AUROC, maps); with --data: the test frames, damaged; 0: none")
    q.add_argument("--encoder-epochs", type=int, default=60,
                   help="train an encoder so the search starts at E(x) (default 60 epochs; 0: random z as the paper)")
    q.add_argument("--parts", type=int, default=24, help="parts through the live station (default 24)")
    q.add_argument("--expected", default="cylinder", help="the class the station inspects (default cylinder)")
    q.add_argument("--fps", type=float, default=10.0, help="camera frame rate of the live stream (default 10)")
    q.add_argument("--embedded-broker", action="store_true",
                   help="use the Python broker (amqtt, the broker extra) even if mosquitto exists")
    q.add_argument("--timeout", type=float, default=600, help="give the live station this long (s)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--quiet", action="store_true", help="no progress bars and no per-part lines")
    q.set_defaults(func=cmd_demo)
