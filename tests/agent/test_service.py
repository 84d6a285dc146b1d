"""The agent end to end, as a process, against a real mosquitto: events, verdicts, schema."""
from __future__ import annotations

import csv
import json
import shutil

import jsonschema
import numpy as np
import pytest

from adgan.cli import main
from agent.decide.anomaly_map import decode_map, heat
from agent.mqtt.events import SCHEMA_PATH, schema_text
from agent.scoring.bundle import Bundle
from tests.agent.conftest import AgentProcess, Subscriber, agent_config


def events(sub, station="st1"):
    return sub.documents(f"adgan/{station}/events")


def mixed_folder(synth_data, dst):
    """sphere (normal) and cylinder / defective sphere (anomalous) samples in one folder, numbered 0..n-1."""
    (dst / "rgb").mkdir(parents=True)
    (dst / "depth").mkdir()
    n = 0
    for cls in ("sphere", "cylinder", "sphere_defect"):
        src = synth_data / "test" / cls
        for rgb in sorted((src / "rgb").iterdir(), key=lambda p: int(p.stem)):
            shutil.copy(rgb, dst / "rgb" / f"{n}.jpg")
            shutil.copy(src / "depth" / f"{rgb.stem}.png", dst / "depth" / f"{n}.png")
            n += 1
    shutil.copy(synth_data / "test" / "sphere" / "preprocessing.json", dst / "preprocessing.json")
    return n


def test_the_event_schema_file_is_the_one_the_code_makes():
    assert SCHEMA_PATH.read_text() == schema_text(), "regenerate: python -m agent.mqtt.events > " + str(SCHEMA_PATH)


def test_a_folder_replay_gives_one_valid_event_per_sample_in_order(broker, calibrated, synth_data, tmp_path):
    bundle, thresholds = calibrated
    folder = tmp_path / "samples"
    n = mixed_folder(synth_data, folder)
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds,
                       f'type = "folder"\npath = "{folder}"\nfps = 0')
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log", env={"ADGAN_MODEL__ANOMALY_MAP": "true"})
    try:
        assert agent.wait(120) == 0, agent.output()
    finally:
        agent.stop()
    try:
        assert sub.wait_for(lambda m: len(events(sub)) >= n and any(p == b"offline" for _, p, _ in m)), agent.output()
        evs = events(sub)
    finally:
        sub.close()
    schema = json.loads(SCHEMA_PATH.read_text())
    for e in evs:
        jsonschema.validate(e, schema)
    assert len(evs) == n and len({e["event_id"] for e in evs}) == n
    assert [e["source"]["frame"] for e in evs] == list(range(n))
    assert [e["seq"] for e in evs] == sorted(e["seq"] for e in evs)
    # the same scores as `adgan score` (same engine, same seed), the verdict from the calibrated threshold
    assert main(["score", str(bundle), str(folder), "--out", str(tmp_path / "s.csv"), "--quiet"]) == 0
    with open(tmp_path / "s.csv") as fh:
        want = [float(r["score"]) for r in csv.DictReader(fh)]
    th = json.loads(thresholds.read_text())["classes"]["sphere"]["threshold"]
    bh = Bundle.load(bundle).bundle_hash
    for e, s in zip(evs, want):
        assert e["score"] == pytest.approx(s, rel=1e-5)
        assert e["threshold"] == th and e["verdict"] == ("anomaly" if e["score"] > th else "ok")
        assert e["model"] == {"class": "sphere", "kind": "gan", "bundle_hash": bh, "backend": "onnxruntime"}
    for e in evs:  # anomalies say where: a small |G(z*) - x| map
        if e["verdict"] == "anomaly":
            m = decode_map(e["anomaly_map"])
            assert m.shape == (32, 32) and abs(m.max() - e["anomaly_map"]["max"]) <= 1 / 255 and m.max() > 0
            box = e["anomaly_box"]  # and where on the part the hottest region is (sample pixels: a replay)
            assert box["frame"] == "sample" and 0 <= box["x"] < 32 and box["x"] + box["width"] <= 32
            assert 0 <= box["y"] < 32 and box["y"] + box["height"] <= 32 and 0 < box["peak"] <= m.max() + 1 / 255
        else:
            assert e["anomaly_map"] is None and e["anomaly_box"] is None
    verdicts = [e["verdict"] for e in evs]
    assert "ok" in verdicts and "anomaly" in verdicts  # the calibrated threshold separates something
    verdict_msgs = [p for t, p, _ in sub.messages if t == "adgan/st1/verdict"]
    assert verdict_msgs and verdict_msgs[-1] == (b"NG" if verdicts[-1] == "anomaly" else b"OK")


def test_a_crop_to_part_bundle_replays_whole_frame_samples_and_boxes_the_stored_pixels(broker, synth_data, tmp_path):
    """A bundle trained with --framing object, replaying samples stored with the whole frame:
    the agent crops each to its part like training did (same scores as `adgan score`), and an
    anomaly's box is in the stored sample's pixels, on the part."""
    from agent.sources.dataset import read_sample
    run, bundle, th = tmp_path / "run", tmp_path / "bundle", tmp_path / "thresholds.json"
    t = synth_data / "test"
    assert main(["train", str(synth_data / "train"), "--class", "sphere", "--size", "32", "--features-g", "4",
                 "--features-d", "4", "--epochs", "1", "--encoder-epochs", "0", "--framing", "object",
                 "--out", str(run), "--quiet"]) == 0
    assert main(["export", str(run), "--out", str(bundle), "--k", "3"]) == 0
    assert main(["calibrate", str(bundle), "--normal", str(t / "sphere"), "--anomalous", str(t / "cylinder"),
                 "--policy", "equal-rates", "--out", str(th), "--quiet"]) == 0
    folder = tmp_path / "samples"
    n = mixed_folder(synth_data, folder)
    cfg = agent_config(tmp_path, broker.port, bundle, th, f'type = "folder"\npath = "{folder}"\nfps = 0')
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log", env={"ADGAN_MODEL__ANOMALY_MAP": "true"})
    try:
        assert agent.wait(120) == 0, agent.output()
    finally:
        agent.stop()
    try:
        assert sub.wait_for(lambda m: len(events(sub)) >= n), agent.output()
        evs = events(sub)
    finally:
        sub.close()
    assert main(["score", str(bundle), str(folder), "--out", str(tmp_path / "s.csv"), "--quiet"]) == 0
    with open(tmp_path / "s.csv") as fh:
        want = [float(r["score"]) for r in csv.DictReader(fh)]
    assert [e["score"] for e in evs] == pytest.approx(want, rel=1e-5)
    boxed = [e for e in evs if e["verdict"] == "anomaly"]
    assert boxed, "equal-rates calibration flags some samples"
    for e in boxed:
        box, s = e["anomaly_box"], read_sample(folder, e["source"]["frame"])
        assert box["frame"] == "sample"
        ys, xs = (s.depth > 0).nonzero()  # the box lies on the part's own pixels, within a pixel or two
        assert xs.min() - 2 <= box["x"] and box["x"] + box["width"] <= xs.max() + 3
        assert ys.min() - 2 <= box["y"] and box["y"] + box["height"] <= ys.max() + 3
    # the map is the bundle's: smoothed as its manifest says (export's default for a 32 px input: 1 px),
    # its background against the generator's own (export's default)
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import read_model_sample
    from calibration.scoring import make_scorer
    b = Bundle.load(bundle)
    assert b.heat_sigma == 1.0 and b.heat_background == "drawn"
    e = boxed[0]
    x = sample_to_input(read_model_sample(folder, e["source"]["frame"], b.preprocessing), b.size)
    r = make_scorer(b, "onnxruntime", 0).score(x)
    assert r.score == pytest.approx(e["score"], rel=1e-5)
    assert np.abs(decode_map(e["anomaly_map"]) - heat(x, r.reconstruction, r.relief_heat, b.heat_sigma, "drawn")).max() \
        <= 1 / 255 + 1e-4
