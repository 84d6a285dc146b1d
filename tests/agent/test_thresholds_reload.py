"""Thresholds calibrated again reach a running agent without a restart; a file that cannot be
used is said, and the thresholds in use stay."""
from __future__ import annotations

import json
import shutil
import time

from agent.decide.reload import LOOK_S
from agent.decide.thresholds import FileWatch, read_thresholds, write_threshold
from agent.scoring.bundle import Bundle
from tests.agent.conftest import AgentProcess, Subscriber, agent_config


def station(broker, bundle, calibrated_thresholds, synth_data, tmp_path):
    """(thresholds file, its sphere record, a subscriber to adgan/st1/#, the agent) of a station
    looping the sphere samples on `bundle`, with a copy of the calibrated thresholds."""
    thresholds = tmp_path / "thresholds.json"
    shutil.copy(calibrated_thresholds, thresholds)
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 20'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src)
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    return thresholds, read_thresholds(thresholds)["classes"]["sphere"], sub, AgentProcess(cfg, tmp_path / "agent.log")


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


def test_a_thresholds_path_that_is_a_folder_is_said_as_one(tmp_path):
    import pytest

    from agent.decide.thresholds import ThresholdError
    with pytest.raises(ThresholdError, match="is a folder, not a file"):  # (said "does not exist")
        read_thresholds(tmp_path)
    with pytest.raises(ThresholdError, match="does not exist"):
        read_thresholds(tmp_path / "thresholds.json")


def test_new_thresholds_take_effect_and_refused_ones_are_said(broker, calibrated, bundles, synth_data, tmp_path):
    calibrated_bundle, calibrated_thresholds = calibrated
    bundle = tmp_path / "bundles" / "sphere"  # the station's copy, exported again below
    shutil.copytree(calibrated_bundle, bundle)
    thresholds, rec, sub, agent = station(broker, bundle, calibrated_thresholds, synth_data, tmp_path)

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

        # files an editor or a hand wrote: they stopped the agent (a UnicodeDecodeError, a
        # ValueError from the recorded search), where a file that cannot be used is to be said
        good = {**rec, "threshold": 3 * rec["threshold"]}
        k_of_hand = {"format": 1, "classes": {"sphere": {**good, "search": {**rec.get("search", {}), "k": -1}}}}
        for text, said in ((b"\x93sphere\x94: 0.1\n", "not UTF-8"),  # Windows-1252 quotes
                           (b"[" * 100000, "nested too deeply"),
                           (json.dumps(k_of_hand).encode(), "the search recorded for 'sphere' cannot be used")):
            thresholds.write_bytes(text)
            assert sub.wait_for(lambda m: said in (statuses()[-1]["thresholds"]["error"] or ""), 30), \
                (statuses()[-1]["thresholds"], agent.output()[-3000:])
            assert agent.proc.poll() is None
        # saved by Windows Notepad as "Unicode" (UTF-16) or UTF-8 with a BOM: read as what it says
        for encoding in ("utf-16", "utf-8-sig"):
            thresholds.write_text('{"format": 1, "classes": {"sphere": %s}}' % json.dumps(good), encoding=encoding)
            assert sub.wait_for(lambda m: statuses()[-1]["thresholds"]["state"] == "loaded"
                                and events()[-1]["threshold"] == good["threshold"], 30), agent.output()[-3000:]
            write_threshold(thresholds, "sphere", {**good, "threshold": 2 * rec["threshold"]})
            assert sub.wait_for(lambda m: events()[-1]["threshold"] == 2 * rec["threshold"], 30)

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


def test_records_written_by_hand_are_refused_as_a_setting_at_start(bundles, tmp_path, monkeypatch):
    """A recorded seed or search that cannot be used raised a ValueError or TypeError of its own
    (an int() of text, the search's own checks), which a reload did not catch: the agent stopped."""
    import pytest

    from agent.decide import thresholds as th
    from agent.decide.inspector import load_class_model
    from agent.settings import SettingError
    b = bundles[("none", "fg")]
    base = {"threshold": 0.5, "bundle_hash": Bundle.load(b).bundle_hash, "engine": "onnxruntime/CPUExecutionProvider"}
    p = tmp_path / "t.json"
    for extra, said in (({"seed": "0"}, "latent seed must be a whole number, got '0'"),
                        ({"search": ["k", 5]}, "'search' must be an object"),
                        ({"search": {"k": "5"}}, "k '5': not a number"),
                        ({"search": {"k": 5.5}}, "k 5.5: not a number"),
                        ({"search": {"n_seed": 0}}, "n_seed and seeds_per_call must be >= 1"),
                        ({"search": {"lr_z": None}}, "lr_z None"),
                        # (past a float's range: an OverflowError of float() or math.isfinite stopped the agent)
                        ({"threshold": 10 ** 400}, "a whole number of 401 digits"),
                        ({"class_check": {"threshold": -10 ** 309, "rivals": {"x": "y"}}}, "310 digits"),
                        ({"search": {"lr_z": 10 ** 400}}, "401 digits")):
        p.write_text(json.dumps({"format": 1, "classes": {"sphere": {**base, **extra}}}))
        with pytest.raises(SettingError, match="model.thresholds") as e:
            load_class_model("sphere", b, p, 0)
        assert said in str(e.value), (extra, str(e.value))
    p.write_text(json.dumps({"format": 1, "classes": {"sphere": base}}).replace("0.5", "1" * 5000))
    with pytest.raises(SettingError, match="a whole number of 5000 digits"):  # (past what Python reads: ValueError)
        load_class_model("sphere", b, p, 0)
    p.write_text(json.dumps({"format": 1, "classes": {"sphere": {**base, "seed": 0, "search": {"k": 3, "lr_z": 0.1}}}}))
    m = load_class_model("sphere", b, p, 0)
    assert (m.searcher.params.k, m.searcher.params.lr_z) == (3, 0.1)
    m.close()
    monkeypatch.setattr(th, "MAX_BYTES", 100)  # (64 MiB: a file copied over it by mistake is not read)
    with pytest.raises(SettingError, match="more than a thresholds file holds"):
        load_class_model("sphere", b, p, 0)


def test_out_of_open_files_a_new_file_is_read_once_it_can_be_and_nothing_is_lost(broker, calibrated, synth_data,
                                                                                  tmp_path):
    """The agent's open-file limit reached while it runs (a leak, a low LimitNOFILE). The thresholds
    file calibrated again meanwhile could not be read: it was refused as if the bundle had been
    exported again ("restart the agent": a restart loads the same), and never read again, as its
    stamp had been taken: the new threshold waited for the next edit or a restart."""
    import os
    import resource
    thresholds, rec, sub, agent = station(broker, *calibrated, synth_data, tmp_path)

    def events():
        return sub.documents("adgan/st1/events")

    def status():
        return sub.documents("adgan/st1/status")[-1]

    try:
        assert sub.wait_for(lambda m: len(events()) >= 3, 60), agent.output()
        pid = agent.agent_pid()
        limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        assert len(os.listdir(f"/proc/{pid}/fd")) > 8
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (8, limit[1]))  # no file can be opened
        try:
            write_threshold(thresholds, "sphere", {**rec, "threshold": 2 * rec["threshold"]})  # calibrated again
            assert sub.wait_for(lambda m: "Too many open files" in (status()["thresholds"]["error"] or ""), 30), \
                agent.output()[-3000:]
            error = status()["thresholds"]["error"]
            assert "cannot be read now" in error and "restart the agent" not in error, error
            assert sub.wait_for(lambda m: "Too many open files" in (status()["source"]["last_error"] or ""), 10)
            time.sleep(3 * LOOK_S)  # (looked at again meanwhile)
            assert agent.proc.poll() is None
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
        # read again once it can be, with no edit: the new threshold takes effect
        assert sub.wait_for(lambda m: events()[-1]["threshold"] == 2 * rec["threshold"], 30), agent.output()[-3000:]
        assert sub.wait_for(lambda m: status()["thresholds"]["state"] == "loaded", 10)
        out = agent.output()
        assert out.count("changed but cannot be read now") == 1, out[-3000:]  # said once, not at every look
        assert agent.terminate() == 0
        seqs = {e["seq"] for e in events()}
        assert seqs == set(range(1, max(seqs) + 1)), sorted(seqs)  # nothing lost
    finally:
        agent.stop()
        sub.close()
