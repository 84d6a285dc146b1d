"""Thresholds calibrated again reach a running agent without a restart; a file that cannot be
used is said, and the thresholds in use stay."""
from __future__ import annotations

import shutil

from agent.decide.thresholds import FileWatch, read_thresholds, write_threshold
from agent.scoring.bundle import Bundle
from tests.agent.conftest import AgentProcess, Subscriber, agent_config


def test_a_file_watch_says_a_change_once_it_has_settled(tmp_path):
    f = tmp_path / "t.json"
    f.write_text("a")
    w = FileWatch(f)
    assert not w.changed()
    f.write_text("bb")            # being written: seen, not yet said
    assert not w.changed()
    assert w.changed()            # the same at the next look: said, once
    assert not w.changed()
    f.unlink()
    assert not w.changed() and w.changed()   # gone is a change too
    assert not FileWatch(tmp_path / "never").changed()


def test_new_thresholds_take_effect_and_refused_ones_are_said(broker, calibrated, bundles, synth_data, tmp_path):
    calibrated_bundle, calibrated_thresholds = calibrated
    bundle = tmp_path / "bundles" / "sphere"  # the station's copy, exported again below
    shutil.copytree(calibrated_bundle, bundle)
    thresholds = tmp_path / "thresholds.json"
    shutil.copy(calibrated_thresholds, thresholds)
    rec = read_thresholds(thresholds)["classes"]["sphere"]
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 20'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src)
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")

    def events():
        return sub.documents("adgan/st1/events")

    def statuses():
        return sub.documents("adgan/st1/status")

    try:
        assert sub.wait_for(lambda m: len(events()) >= 2, 60), agent.output()
        assert events()[-1]["threshold"] == rec["threshold"]
        assert sub.wait_for(lambda m: statuses() and statuses()[-1]["thresholds"]["state"] == "loaded", 10)
        write_threshold(thresholds, "sphere", {**rec, "threshold": 2 * rec["threshold"]})  # calibrated again
        assert sub.wait_for(lambda m: events()[-1]["threshold"] == 2 * rec["threshold"], 30), agent.output()
        assert "read again: sphere" in agent.output()

        # thresholds of another bundle: refused, said, and the ones in use stay
        write_threshold(thresholds, "sphere", {**rec, "bundle_hash": "0" * 64})
        assert sub.wait_for(lambda m: statuses()[-1]["thresholds"]["state"] == "refused", 30), agent.output()
        assert "recalibrate" in statuses()[-1]["thresholds"]["error"]
        n = len(events())
        assert sub.wait_for(lambda m: len(events()) >= n + 3, 30)
        assert {e["threshold"] for e in events()[n:]} == {2 * rec["threshold"]}
        assert "changed but cannot be used" in agent.output()

        # the bundle exported again and calibrated: its thresholds wait for a restart, which is said
        other = bundles[("all", "fg")]
        shutil.rmtree(bundle)
        shutil.copytree(other, bundle)
        write_threshold(thresholds, "sphere", {**rec, "bundle_hash": Bundle.load(other).bundle_hash})
        assert sub.wait_for(lambda m: "restart the agent" in (statuses()[-1]["thresholds"]["error"] or ""), 30)
        assert "the bundle of sphere on disk is not the one loaded at start" in statuses()[-1]["thresholds"]["error"]
        assert agent.proc.poll() is None
    finally:
        agent.stop()
        sub.close()
