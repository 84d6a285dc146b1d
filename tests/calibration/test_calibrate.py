import json

import numpy as np
import pytest

from adgan.cli import main
from agent.decide.thresholds import ThresholdError, load_threshold, write_threshold
from agent.scoring.bundle import Bundle
from calibration.calibrate import choose_threshold


def test_calibrate_cli_writes_a_threshold_bound_to_the_bundle(bundles, synth_data, tmp_path, capsys):
    b = bundles[("none", "fg")]
    out = tmp_path / "thresholds.json"
    t = synth_data / "test"
    assert main(["calibrate", str(b), "--normal", str(t / "sphere"), "--anomalous", str(t / "sphere_defect"),
                 "--anomalous", str(t / "cylinder"), "--policy", "equal-rates", "--out", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    rec = doc["classes"]["sphere"]
    bh = Bundle.load(b).bundle_hash
    assert rec["bundle_hash"] == bh and rec["policy"] == "equal-rates" and rec["backend"] == "onnxruntime"
    assert rec["counts"] == {"normal": 3, "anomalous": 6}
    assert set(rec["normal_scores"]) >= {"min", "p50", "p95", "max", "mean"}
    assert 0 <= rec["metrics"]["auc"] <= 1 and "created" in rec and rec["search"]["k"] == 5
    th = load_threshold(out, "sphere", bh)
    assert th.threshold == rec["threshold"] and th.is_anomaly(th.threshold + 1) and not th.is_anomaly(th.threshold)
    assert "warning: only 6 anomalous samples" in capsys.readouterr().out


def test_target_fpr_needs_only_normal_samples(bundles, synth_data, tmp_path):
    out = tmp_path / "t.json"
    assert main(["calibrate", str(bundles[("none", "fg")]), "--normal", str(synth_data / "test" / "sphere"),
                 "--policy", "target-fpr", "--fpr", "0.0", "--out", str(out), "--quiet"]) == 0
    rec = json.loads(out.read_text())["classes"]["sphere"]
    assert rec["threshold"] == rec["normal_scores"]["max"] and rec["metrics"]["fpr"] == 0.0


def test_policies_that_need_anomalies_say_so(bundles, synth_data, tmp_path, capsys):
    assert main(["calibrate", str(bundles[("none", "fg")]), "--normal", str(synth_data / "test" / "sphere"),
                 "--policy", "max-accuracy", "--out", str(tmp_path / "t.json"), "--quiet"]) == 2
    assert "needs anomalous samples" in capsys.readouterr().err


def test_warnings_for_easy_sets_and_few_anomalies():
    normal = np.linspace(0, 1, 50)
    t, warns = choose_threshold(normal, np.array([2.0, 3.0]), "equal-rates", 0.01)
    assert 1 <= t < 2
    assert any("do not overlap" in w for w in warns) and any("only 2 anomalous" in w for w in warns)
    _, warns = choose_threshold(normal, np.array([]), "target-fpr", 0.01)
    assert any("allows no false alarm" in w for w in warns)


def _calibrate_classes(path: str, prefix: str, n: int) -> None:
    for i in range(n):
        write_threshold(path, f"{prefix}{i}", {"threshold": 0.5, "bundle_hash": "a" * 64})


def test_calibrations_written_at_the_same_time_keep_every_class(tmp_path):
    """Two calibrate runs (one class each) finishing together used to keep only one class's
    threshold: each read the file, added its own and wrote it over the other's (and both wrote
    the same temporary file)."""
    import multiprocessing as mp
    p = str(tmp_path / "thresholds.json")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_calibrate_classes, args=(p, prefix, 25)) for prefix in ("a", "b", "c")]
    for q in procs:
        q.start()
    for q in procs:
        q.join(60)
    assert [q.exitcode for q in procs] == [0, 0, 0]
    assert len(json.loads((tmp_path / "thresholds.json").read_text())["classes"]) == 75


def test_thresholds_of_another_bundle_are_refused_and_classes_are_kept(tmp_path):
    p = tmp_path / "t.json"
    write_threshold(p, "sphere", {"threshold": 0.5, "bundle_hash": "a" * 64})
    write_threshold(p, "cylinder", {"threshold": 0.7, "bundle_hash": "b" * 64})
    assert load_threshold(p, "sphere", "a" * 64).threshold == 0.5
    assert load_threshold(p, "cylinder", "b" * 64).threshold == 0.7
    with pytest.raises(ThresholdError, match="recalibrate"):
        load_threshold(p, "sphere", "c" * 64)
    with pytest.raises(ThresholdError, match="no threshold for class 'rectangle'"):
        load_threshold(p, "rectangle", "a" * 64)
    with pytest.raises(ThresholdError, match="does not exist"):
        load_threshold(tmp_path / "nope.json", "sphere", "a" * 64)
    (tmp_path / "bad.json").write_text('{"format": 7, "classes": {}}')
    with pytest.raises(ThresholdError, match="not a thresholds file"):
        load_threshold(tmp_path / "bad.json", "sphere", "a" * 64)
    for bad in ("NaN", "Infinity", "-Infinity", "true", '"0.5"'):  # NaN would pass every part
        (tmp_path / "nan.json").write_text('{"format": 1, "classes": {"sphere": {"threshold": %s, "bundle_hash": "%s"}}}'
                                           % (bad, "a" * 64))
        with pytest.raises(ThresholdError, match="finite number|bad record"):
            load_threshold(tmp_path / "nan.json", "sphere", "a" * 64)


def test_an_anomalous_folder_that_holds_the_normal_samples_is_refused(bundles, synth_data, tmp_path, capsys):
    """(--anomalous data/test beside --normal data/test/sphere scored the normal parts as anomalies
    too, and wrote the threshold; the same folder twice wrote one from AUC 0.5.)"""
    b, t, out = str(bundles[("none", "fg")]), synth_data / "test", tmp_path / "t.json"
    for normal, anomalous, said in ((t / "sphere", t, "one folder is inside the other"),
                                    (t / "sphere", t / "sphere" / ".", "the same folder"),
                                    (t, t / "cylinder", "one folder is inside the other")):
        assert main(["calibrate", b, "--normal", str(normal), "--anomalous", str(t / "sphere_defect"),
                     "--anomalous", str(anomalous), "--policy", "equal-rates", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "hold the same samples" in err and said in err, err
    assert not out.exists()


def test_an_out_that_cannot_be_written_is_refused_before_scoring(bundles, synth_data, tmp_path, capsys, monkeypatch):
    """An --out that is a folder, another kind of file, or under a file: refused after every
    sample was scored (minutes on a real set), by the write. Now before the first."""
    import calibration.calibrate as cal

    def no_scoring(*a, **k):
        raise AssertionError("scored before the --out was checked")
    monkeypatch.setattr(cal, "score_folder", no_scoring)
    b, t = str(bundles[("none", "fg")]), synth_data / "test"
    (tmp_path / "a.csv").write_text("path,score\n")
    (tmp_path / "file").write_text("x")
    for out, said in ((tmp_path, "is a folder, not a file"), (tmp_path / "a.csv", "not valid JSON"),
                      (tmp_path / "file" / "t.json", "is a file, not a folder")):
        assert main(["calibrate", b, "--normal", str(t / "sphere"), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert said in err, err
