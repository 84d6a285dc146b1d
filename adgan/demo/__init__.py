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
import shutil
import time
from pathlib import Path

from adgan.demo.data import Plan, make_damage, make_data
from adgan.demo.index import write_index
from adgan.demo.live import run_live
from adgan.demo.models import calibrate, report, train_and_export
from adgan.demo.station import capture_reference, segmentation_figure, station_settings
from agent.argtypes import number


DEMO_MARK = ".adgan-demo"  # in --out: a demo ran here, and may remove and write its own folders again
DEMO_ENTRIES = ("bundles", "cache", "live", "report", "thresholds.json")


def claim_out(out: Path) -> None:
    """The demo removes and writes again its own folders in --out (cache/*, bundles/*, report/,
    live/): --out must be new, empty (hidden entries aside), or a demo's folder (marked, or with a
    demo's cache from before the mark), holding nothing the demo does not make."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []
    if entries:
        demo = (out / DEMO_MARK).is_file() or any((out / "cache").glob("*/demo-config.json")) \
            or any((out / "cache").glob("runs/*/demo-config.json"))
        other = [n for n in entries if n not in DEMO_ENTRIES]
        if not demo or other:
            shown = other or entries
            raise ValueError(f"--out {out} holds {', '.join(shown[:3])}{' and more' if len(shown) > 3 else ''}, "
                             f"{'which the demo does not make' if demo else 'and no demo ran there'}: the demo removes "
                             f"and writes again {', '.join(DEMO_ENTRIES)} in its --out; choose a new folder "
                             f"(the default is out/demo)")
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("adgan demo\n")


def run_demo(a: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    out = Path(a.out)
    claim_out(out)
    progress = not a.quiet
    plan = Plan(a, out)
    make_data(plan, progress)
    damage = make_damage(plan, progress)
    bundles = train_and_export(plan, progress)
    th = calibrate(plan, bundles)
    rep = report(plan, bundles, damage)
    workdir = out / "live"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings, truth_of = station_settings(plan, bundles, th, workdir)
    print(f"[6/6] station: {a.parts} parts, expecting {a.expected}")
    events, lines, summary = run_live(workdir, settings, truth_of, timeout_s=a.timeout, embedded_broker=a.embedded_broker,
                                      quiet=a.quiet, before_agent=None if a.data else capture_reference)
    with open(workdir / "events.jsonl", "w") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if not a.data:
        segmentation_figure(a.seed, workdir, rep, a.variety)
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


def search_arg(field: str, cast):
    """An argparse type for one field of the export recipe (--pool, --depth-weight): the value
    is checked by SearchDefaults when the command line is read, not after the models are trained."""
    def check(v: str):
        from dataclasses import replace

        from export.bundle import RECIPE_SEARCH
        try:
            return getattr(replace(RECIPE_SEARCH, **{field: cast(v)}), field)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return check


def add_parser(sub) -> None:
    q = sub.add_parser("demo", help="run the main job end to end: data, training, bundles, thresholds, report, "
                                    "and a live station over MQTT",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--out", default="out/demo", help="output folder (default out/demo; models cached in it)")
    q.add_argument("--data", default=None, help="a real dataset in the paper's layout instead of synthetic parts")
    q.add_argument("--train-frames", default="0:700", help="with --data: training frames (default 0:700)")
    q.add_argument("--test-frames", default="700:1000", help="with --data: test frames (default 700:1000)")
    q.add_argument("--train", type=number(int, 1), default=300,
                   help="synthetic training samples per class (default 300)")
    q.add_argument("--test", type=number(int, 1), default=30, help="synthetic test samples per class (default 30)")
    from agent.sources.synthetic import VARIETIES
    q.add_argument("--variety", choices=VARIETIES, default="product",
                   help="synthetic parts: 'product' (default) makes each class one product of the station, made "
                        "to a tolerance, as a production line's station sees it; 'family' makes every part a new "
                        "product of the class's shape (any size, colour and pattern)")
    q.add_argument("--size", type=int, choices=(32, 64), default=32, help="model resolution (default 32)")
    q.add_argument("--framing", choices=("frame", "object"), default="object",
                   help="synthetic samples: 'object' crops around the part (default), 'frame' is the paper's "
                        "central square of the camera frame")
    q.add_argument("--features", type=number(int, 1), default=16, help="generator and discriminator width (default 16)")
    q.add_argument("--epochs", type=number(int, 1), default=150, help="training epochs per class (default 150)")
    q.add_argument("--kind", choices=("gan", "wgan", "wgan-gp"), default="gan", help="training recipe (default gan)")
    from calibration.metrics import POLICIES
    q.add_argument("--policy", choices=POLICIES, default="target-fpr",
                   help="threshold policy on the test parts (adgan calibrate --policy): target-fpr (default: a "
                        "false-alarm budget on normal parts, as a line sets it), equal-rates (the paper's), "
                        "max-accuracy")
    q.add_argument("--fpr", type=number(float, 0, 1), default=0.05,
                   help="with target-fpr: the false-alarm rate on normal test parts (default 0.05: 30 normal "
                        "parts cannot resolve less)")
    q.add_argument("--k", type=number(int, 0), default=None, help="search steps per seed (default: adgan export's)")
    q.add_argument("--loss", choices=("mse", "fg", "fg_input"), default="fg_input",
                   help="search and score loss (default fg_input: the part's own pixels; mse is the paper's)")
    q.add_argument("--pool", type=search_arg("pool", int), default=None,
                   help="compare on POOL x POOL cells (default: adgan export's, 4; 1: per pixel)")
    q.add_argument("--depth-weight", type=search_arg("depth_weight", float), default=1.0,
                   help="weight of the depth channel's squared error against each RGB channel's (default 1: the "
                        "demo's measured search; adgan export's default is 3)")
    q.add_argument("--score-cells", type=number(int, 0), default=0,
                   help="the score: 0 the search's mean loss over the part; K the mean of the K cells that differ "
                        "most (adgan export --score-cells)")
    from agent.scoring.bundle import SCORE_NORMS
    q.add_argument("--score-norm", choices=SCORE_NORMS, default="none",
                   help="with --score-cells: standardise each cell against the training parts (adgan export "
                        "--score-norm)")
    q.add_argument("--damage-parts", type=number(int, 0), default=20,
                   help="parts per class rendered intact and with each defect for the report's local-damage "
                        "section (per-defect AUROC, maps); with --data: the test frames, damaged; 0: none")
    q.add_argument("--encoder-epochs", type=number(int, 0), default=60,
                   help="train an encoder so the search starts at E(x) (default 60 epochs; 0: random z as the paper)")
    q.add_argument("--parts", type=number(int, 1), default=24, help="parts through the live station (default 24)")
    q.add_argument("--expected", default="cylinder", help="the class the station inspects (default cylinder)")
    q.add_argument("--fps", type=number(float, 0), default=10.0,
                   help="camera frame rate of the live stream (default 10; 0: as fast as the station inspects)")
    q.add_argument("--embedded-broker", action="store_true",
                   help="use the Python broker (amqtt, the broker extra) even if mosquitto exists")
    q.add_argument("--timeout", type=number(float, 0, low_open=True), default=600,
                   help="give the live station this long (s)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--quiet", action="store_true", help="no progress bars and no per-part lines")
    q.set_defaults(func=cmd_demo)
