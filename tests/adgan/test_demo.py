"""`adgan demo` end to end in a reduced mode: tiny models, a few parts, a real broker."""
from __future__ import annotations

import json

import cv2
import jsonschema
import pytest

from adgan.cli import build_parser, main
from adgan.demo import run_demo
from agent.mqtt.events import SCHEMA_PATH
from agent.settings import load_settings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def demo_args(out, *extra):
    return build_parser().parse_args(["demo", "--out", str(out), "--train", "12", "--test", "4", "--epochs", "2",
                                      "--features", "4", "--parts", "4", "--fps", "0", "--encoder-epochs", "2", "--damage-parts", "2",
                                      "--quiet", *extra])


def recount(events, expected):
    """The summary, recomputed from the events the subscriber received and their ground truth."""
    parts = [e for e in events if e["verdict"] in ("ok", "anomaly")]
    bad = [e for e in parts if e["source"]["truth"]["class"] != expected or e["source"]["truth"]["defect"]]
    good = [e for e in parts if e not in bad]
    return {"parts_inspected": len(parts), "ng": sum(e["verdict"] == "anomaly" for e in parts),
            "true_anomalies": len(bad), "detected": sum(e["verdict"] == "anomaly" for e in bad),
            "missed": sum(e["verdict"] == "ok" for e in bad), "false_alarms": sum(e["verdict"] == "anomaly" for e in good)}


def test_demo_runs_end_to_end_in_reduced_mode(tmp_path, capsys):
    r = run_demo(demo_args(tmp_path))
    events = [json.loads(line) for line in (r["live"] / "events.jsonl").read_text().splitlines()]
    schema = json.loads(SCHEMA_PATH.read_text())
    for e in events:
        jsonschema.validate(e, schema)
    # four parts passed the station: four inspections, each on a settled frame of its own part
    assert len(events) == 4 and all(e["verdict"] in ("ok", "anomaly") for e in events)
    assert len({e["source"]["truth"]["class"] for e in events}) >= 1
    s = r["summary"]
    assert {k: s[k] for k in recount(events, "cylinder")} == recount(events, "cylinder")
    assert s["detected"] + s["missed"] == s["true_anomalies"] and s["parts_inspected"] == 4
    assert json.loads((r["live"] / "summary.json").read_text()) == s
    rep = r["report"]
    for f in ("table2.md", "table2.csv", "roc.png", "samples.png", "segmentation.png", "index.md", "damage.md",
              "damage.csv"):
        assert (rep / f).is_file(), f
    assert len(list(rep.glob("ranking-*.png"))) == 3
    assert cv2.imread(str(rep / "samples.png")).std() > 1
    index = (rep / "index.md").read_text()
    assert f"| 4 | {s['ok']} | {s['ng']} |" in index and "Table 2" in index and "Local damage" in index
    # the bundles carry class PCAs, as adgan export makes them: Table 2 shows the class check's rows too
    assert (rep / "table2.md").read_text().count("| class check (pca) |") == 3
    # per defect of the renderer, for each class: image AUROC, pixel AUROC and PRO, and the maps
    rows = (rep / "damage.csv").read_text().splitlines()
    kinds = {r.split(",")[2] for r in rows[1:]}
    assert "all" in kinds and len(kinds & {"dent", "hole", "chunk", "blemish", "foreign"}) >= 3
    assert len(list(rep.glob("damage-maps-*.png"))) == 3
    out = capsys.readouterr().out
    assert "broker: " in out and "parts inspected 4" in out
    station = load_settings(r["live"] / "agent.toml", env_file=None)  # what the agent ran, as a user can rerun it
    assert station.station_id == "demo" and f"127.0.0.1:{station.mqtt.port}" in out
    # the station sees the products its models were trained on (one product per class)
    assert station.source.variety == "product"
    assert json.loads((tmp_path / "cache" / "data" / "demo-config.json").read_text())["synthetic"]["variety"] == "product"
    assert station.metrics.enabled and f"metrics: http://127.0.0.1:{station.metrics.port}/metrics" in out
    assert f"operator's page: http://127.0.0.1:{station.web.port}/" in out
    log = (r["live"] / "agent.log").read_text()
    assert "metrics on http://127.0.0.1" in log and "operator page on http://127.0.0.1" in log  # both served

    # a second run reuses the trained models, and runs with the Python broker (amqtt) as well
    r2 = run_demo(demo_args(tmp_path, "--embedded-broker"))
    out = capsys.readouterr().out
    assert out.count("cached in") == 8 and "broker: amqtt" in out  # data, twins, three models, three encoders
    assert len(r2["events"]) == 4


def test_demo_on_real_data(paper_data, tmp_path, capsys):
    r = run_demo(build_parser().parse_args([
        "demo", "--data", str(paper_data), "--train-frames", "0:40", "--test-frames", "700:712", "--out",
        str(tmp_path), "--epochs", "1", "--features", "4", "--parts", "5", "--fps", "0", "--encoder-epochs", "1",
        "--loss", "fg", "--pool", "1", "--depth-weight", "10", "--quiet"]))
    from agent.scoring.bundle import Bundle
    for cls in ("sphere", "cylinder", "rectangle"):  # the recipe asked for is the one exported
        b = Bundle.load(tmp_path / "bundles" / cls)
        assert (b.search.loss, b.search.pool, b.search.depth_weight) == ("fg", 1, 10.0)
        assert b.heat_sigma == 2.0 * b.size / 64  # the map smoothed as adgan export smooths it
        assert b.heat_background == "drawn"  # and against the generator's own background
    events = r["events"]
    assert len(events) == 5 and all(e["trigger"] == "every_frame" for e in events)
    truth = json.loads((r["live"] / "stream" / "truth.json").read_text())
    assert r["summary"]["true_anomalies"] == sum(t["anomalous"] for t in truth.values())
    assert (r["report"] / "table2.md").is_file()


def test_a_failing_station_stops_the_broker_it_started(tmp_path, capsys):
    import os
    import re

    from adgan.demo.live import run_live
    settings = {"station_id": "demo", "source": {"type": "synthetic"},
                "model": {"expected_class": "x", "thresholds": str(tmp_path / "none.json"),
                          "bundles": {"x": str(tmp_path / "missing")}}}
    with pytest.raises(RuntimeError, match="exited with 2"):
        run_live(tmp_path / "live", settings, lambda e: None, timeout_s=60, embedded_broker=True, quiet=True)
    written = tomllib.loads((tmp_path / "live" / "agent.toml").read_text())  # the settings, with the port
    assert written["model"] == settings["model"] and written["mqtt"]["port"] > 0
    pid = int(re.search(r"broker: amqtt on 127.0.0.1:\d+ \(pid (\d+)\)", capsys.readouterr().out).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the broker is gone


def test_a_bad_pool_is_refused_before_anything_is_trained(tmp_path, capsys):
    for bad in ("0", "3", "x"):
        with pytest.raises(SystemExit):
            demo_args(tmp_path, "--pool", bad)
        assert "--pool" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
    assert demo_args(tmp_path, "--pool", "1").pool == 1 and demo_args(tmp_path).pool is None


def test_a_bad_depth_weight_is_refused_before_anything_is_trained(tmp_path, capsys):
    for bad in ("0", "-2", "nan", "inf", "x"):
        with pytest.raises(SystemExit):
            demo_args(tmp_path, "--depth-weight", bad)
        assert "--depth-weight" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
    assert demo_args(tmp_path, "--depth-weight", "10").depth_weight == 10.0
    assert demo_args(tmp_path).depth_weight == 1.0  # the demo's measured search, whatever export's default is


def test_the_demo_writes_only_into_a_new_folder_or_a_demo_s_own(tmp_path, capsys):
    """The demo removes and writes again cache/*, bundles/*, report/ and live/ in --out: pointed at
    someone's folder (`--out .` in a project), it would have removed their report/ or cache/data/."""
    from adgan.cli import main
    from adgan.demo import DEMO_MARK, claim_out
    mine = tmp_path / "project"
    (mine / "report").mkdir(parents=True)
    (mine / "report" / "q3.md").write_text("mine")
    assert main(["demo", "--out", str(mine), "--quiet"]) == 2
    assert "and no demo ran there" in capsys.readouterr().err
    assert (mine / "report" / "q3.md").is_file() and not (mine / "cache").exists()
    old = tmp_path / "old-demo"  # a demo's folder from before the mark: taken, and marked
    (old / "cache" / "data").mkdir(parents=True)
    (old / "cache" / "data" / "demo-config.json").write_text("{}")
    (old / "thresholds.json").write_text("{}")
    claim_out(old)
    assert (old / DEMO_MARK).is_file()
    (old / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds notes.txt, which the demo does not make"):
        claim_out(old)
    claim_out(tmp_path / "new" / "demo")
    assert (tmp_path / "new" / "demo" / DEMO_MARK).is_file()


@pytest.mark.parametrize("args, said", [(["--fps", "nan"], "--fps: must be a finite number >= 0, got nan"),
                                        (["--timeout", "-5"], "--timeout: must be a finite number > 0, got -5"),
                                        (["--fpr", "1"], "--fpr: must be a finite number >= 0 and < 1, got 1"),
                                        (["--parts", "0"], "--parts: must be a whole number >= 1, got 0"),
                                        (["--k", "-1"], "--k: must be a whole number >= 0, got -1")])
def test_numbers_that_cannot_run_are_refused_before_any_work(tmp_path, capsys, args, said):
    """(They went through minutes of data and training first, then failed or went on with them.)"""
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path / "d"), *args])
    assert e.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
