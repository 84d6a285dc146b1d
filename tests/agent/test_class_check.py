"""The class check (agent/decide/class_check.py): a part that another of the station's classes'
models (their class PCAs, or their generators at k 0) reproduce better than the expected class's
is flagged, calibrated with `adgan calibrate --class-check`, and a station that cannot make the
check it was calibrated for does not start."""
from __future__ import annotations

import json
import math

import jsonschema
import pytest

from adgan.cli import main
from agent.decide.class_check import CheckRecord, margin
from agent.decide.inspector import load_models
from agent.mqtt.events import json_schema
from agent.segment.preprocess import sample_to_input
from agent.settings import SettingError
from agent.sources.dataset import read_sample
from calibration.scoring import make_scorer
from tests.agent.conftest import agent_config, replay_events

EXPORT = ["--theta-scope", "none", "--loss", "fg", "--z-init", "encoder", "--k", "3", "--n-seed", "2"]


@pytest.fixture(scope="module")
def pair(encoded_run, synth_data, tmp_path_factory):
    """(sphere bundle, cylinder bundle): both start at the encoder, frame the whole sample and carry
    a class PCA (export's default)."""
    root = tmp_path_factory.mktemp("pair")
    assert main(["train", str(synth_data / "train"), "--class", "cylinder", "--kind", "gan", "--size", "32",
                 "--features-g", "4", "--features-d", "4", "--batch-size", "6", "--epochs", "3", "--out",
                 str(root / "cyl-run"), "--quiet", "--encoder-epochs", "3", "--framing", "frame"]) == 0
    sphere, cyl = root / "sphere", root / "cylinder"
    assert main(["export", str(encoded_run), "--out", str(sphere), *EXPORT]) == 0
    assert main(["export", str(root / "cyl-run"), "--out", str(cyl), *EXPORT]) == 0
    return sphere, cyl


@pytest.fixture(scope="module", params=["pca", "generator"])
def checked(request, pair, synth_data, tmp_path_factory):
    """(sphere bundle, cylinder bundle, thresholds.json): each class calibrated with a class check
    against the other, with the model of the fixture's parameter (pca: the default, auto)."""
    sphere, cyl = pair
    th = tmp_path_factory.mktemp("checked") / "thresholds.json"
    t = synth_data / "test"
    model = [] if request.param == "pca" else ["--class-check-model", "generator"]
    for own, other, cls in ((sphere, cyl, "sphere"), (cyl, sphere, "cylinder")):
        assert main(["calibrate", str(own), "--normal", str(t / cls), "--fpr", "0.34", "--out", str(th),
                     "--class-check", str(other), "--quiet", *model]) == 0
    return sphere, cyl, th


def rival_scores(th, sphere, cyl):
    """class -> L(x) as the check calibrated in `th` computes it: the class PCA's error, or the
    bundle's score at k 0."""
    from agent.scoring.bundle import Bundle
    model = json.loads(th.read_text())["classes"]["sphere"]["class_check"]["model"]
    bundles = {"sphere": Bundle.load(sphere), "cylinder": Bundle.load(cyl)}
    if model == "pca":
        return {c: b.class_pca.error for c, b in bundles.items()}
    return {c: (lambda x, s=make_scorer(b, "onnxruntime", 0, k=0): s.score(x).score) for c, b in bundles.items()}


def test_the_margin_is_the_log_ratio_to_the_closest_rival_and_records_are_checked():
    m, closest = margin(0.2, {"cylinder": 0.1, "rectangle": 0.4})
    assert closest == "cylinder" and m == pytest.approx(math.log(2))
    assert margin(0.0, {"cylinder": 0.0})[0] == 0.0  # (a perfect reproduction still has a logarithm)
    assert CheckRecord.read({"threshold": 1.0}) is None
    assert CheckRecord.read({"class_check": {"threshold": 0.5, "k": 0, "rivals": {"cylinder": "ab"}}}) == \
        CheckRecord(0.5, {"cylinder": "ab"}, "generator")  # (a record from before 2026-12-08: no model)
    pca = {"threshold": 0.5, "model": "pca", "k": None, "rivals": {"cylinder": "ab"}}
    assert CheckRecord.read({"class_check": pca}) == CheckRecord(0.5, {"cylinder": "ab"}, "pca")
    # an agent from before reads a PCA record as a generator's (no model): its k null refuses it
    with pytest.raises(ValueError, match="calibrated with k None"):
        CheckRecord.read({"class_check": {**pca, "model": "generator"}})
    for bad, why in (({"threshold": float("nan"), "rivals": {"c": "h"}}, "finite"),
                     ({"threshold": True, "rivals": {"c": "h"}}, "finite"),
                     ({"threshold": 1, "rivals": {}}, "rivals"), ({"threshold": 1, "rivals": {"c": ""}}, "rivals"),
                     ({"threshold": 1, "rivals": {"c": "h"}, "k": 5}, "k 5"), ("on", "object"),
                     ({"threshold": 1, "rivals": {"c": "h"}, "model": "svm"}, "model 'svm'")):
        with pytest.raises(ValueError, match=why):
            CheckRecord.read({"class_check": bad})


def test_calibrate_records_the_check_and_refuses_rivals_it_cannot_check(checked, bundles, encoded_run, synth_data,
                                                                       tmp_path, capsys):
    sphere, cyl, th = checked
    doc = json.loads(th.read_text())
    from agent.scoring.bundle import Bundle
    rec = doc["classes"]["sphere"]["class_check"]
    assert rec["rivals"] == {"cylinder": Bundle.load(cyl).bundle_hash}
    assert (rec["model"], rec["k"]) in (("pca", None), ("generator", 0))
    assert math.isfinite(rec["threshold"]) and rec["normal_margins"]["n"] == 3 and rec["metrics"]["fpr"] <= 0.34
    assert doc["classes"]["cylinder"]["class_check"]["rivals"] == {"sphere": Bundle.load(sphere).bundle_hash}
    out = str(tmp_path / "t.json")
    normal = str(synth_data / "test" / "sphere")
    assert main(["calibrate", str(sphere), "--normal", normal, "--out", out, "--class-check", str(sphere)]) == 2
    assert "the class being calibrated" in capsys.readouterr().err
    random_z = tmp_path / "random-z"  # (and no class PCA: auto takes the generators)
    cyl_run = cyl.parent / "cyl-run"
    assert main(["export", str(cyl_run), "--out", str(random_z), "--z-init", "random", "--k", "3",
                 "--class-pca", "0"]) == 0
    assert "class PCA" not in capsys.readouterr().out
    assert main(["calibrate", str(sphere), "--normal", normal, "--out", out, "--class-check", str(random_z)]) == 2
    assert "starts its search at random z" in capsys.readouterr().err
    assert main(["calibrate", str(sphere), "--normal", normal, "--out", out, "--class-check", str(random_z),
                 "--class-check-model", "pca"]) == 2
    err = capsys.readouterr().err
    assert "random-z (cylinder) has no class PCA" in err and "export it again" in err
    assert main(["calibrate", str(sphere), "--normal", normal, "--out", out, "--class-check-model", "pca"]) == 2
    assert "give --class-check BUNDLE" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()  # nothing written for a refused calibration


def test_with_target_fpr_the_score_and_the_check_share_one_false_alarm_budget(checked, synth_data, tmp_path):
    """The station flags a part over either threshold, so --fpr bounds the two together (each took the
    whole budget until 2026-12-06: up to twice --fpr of the normal parts flagged)."""
    import numpy as np
    from agent.scoring.bundle import Bundle
    from agent.sources.dataset import frame_numbers
    sphere, cyl, checked_th = checked
    model = json.loads(checked_th.read_text())["classes"]["sphere"]["class_check"]["model"]
    normal, th, other = synth_data / "train" / "sphere", tmp_path / "t.json", synth_data / "test" / "cylinder"
    assert main(["calibrate", str(sphere), "--normal", str(normal), "--anomalous", str(other), "--fpr", "0.34",
                 "--out", str(th), "--class-check", str(cyl), "--quiet", "--class-check-model", model]) == 0
    rec = json.loads(th.read_text())["classes"]["sphere"]
    L = rival_scores(th, sphere, cyl)
    full = make_scorer(Bundle.load(sphere), "onnxruntime", 0)
    xs = [sample_to_input(read_sample(normal, n), 32) for n in frame_numbers(normal)]
    s = np.array([full.score(x).score for x in xs])
    m = np.array([margin(L["sphere"](x), {"cylinder": L["cylinder"](x)})[0] for x in xs])
    allowed = int(0.34 * len(xs))  # 2 of 6
    # the same allowance j for each, the largest whose union stays within the budget (brute force)
    best = max(j for j in range(allowed + 1)
               if ((s > np.sort(s)[len(s) - j - 1]) | (m > np.sort(m)[len(m) - j - 1])).sum() <= allowed)
    assert rec["threshold"] == pytest.approx(np.sort(s)[len(s) - best - 1], rel=1e-4)
    assert rec["class_check"]["threshold"] == pytest.approx(np.sort(m)[len(m) - best - 1], rel=1e-4, abs=1e-5)
    flagged = (s > rec["threshold"]) | (m > rec["class_check"]["threshold"])
    assert flagged.sum() <= allowed
    combined = rec["class_check"]["combined"]
    assert combined["budget"] == "shared" and combined["per_check_allowance"] == best
    assert combined["metrics"]["fpr"] == pytest.approx(flagged.mean()) and 0 <= combined["metrics"]["tpr"] <= 1
    # another policy chooses each on its own, and says so
    assert main(["calibrate", str(sphere), "--normal", str(normal), "--anomalous", str(other), "--policy",
                 "equal-rates", "--out", str(th), "--class-check", str(cyl), "--quiet",
                 "--class-check-model", model]) == 0
    combined = json.loads(th.read_text())["classes"]["sphere"]["class_check"]["combined"]
    assert combined["budget"] == "each" and combined["per_check_allowance"] is None


def test_a_part_another_class_reproduces_better_is_an_anomaly_whatever_its_score(checked, synth_data, tmp_path):
    sphere, cyl, th = checked
    models = load_models({"sphere": sphere, "cylinder": cyl}, th, 0)
    try:
        m = models["sphere"]
        assert m.check is not None and list(m.check.rivals) == ["cylinder"]
        L = rival_scores(th, sphere, cyl)
        xs = [sample_to_input(read_sample(synth_data / "test" / c, n), 32) for c in ("sphere", "cylinder")
              for n in range(3)]
        for x in xs:
            d = m.decide(x)
            want = margin(L["sphere"](x), {"cylinder": L["cylinder"](x)})[0]
            assert d.class_check["margin"] == pytest.approx(want, rel=1e-5, abs=1e-6)
            assert d.class_check["closest_class"] == "cylinder"
            assert d.class_check["anomaly"] == (want > d.class_check["threshold"])
            assert (d.verdict == "anomaly") == (d.score > d.threshold or d.class_check["anomaly"])
        # a check that flags every part, and one that flags none: the verdict follows it, the score is unchanged
        doc = json.loads(th.read_text())
        for t, flags in ((-1e6, True), (1e6, False)):
            doc["classes"]["sphere"]["class_check"]["threshold"] = t
            (tmp_path / "t.json").write_text(json.dumps(doc))
            strict = load_models({"sphere": sphere, "cylinder": cyl}, tmp_path / "t.json", 0)
            try:
                for x in xs:
                    d, plain = strict["sphere"].decide(x), m.decide(x)
                    assert d.score == pytest.approx(plain.score) and d.class_check["anomaly"] is flags
                    assert d.verdict == ("anomaly" if flags or d.score > d.threshold else "ok")
            finally:
                for s in strict.values():
                    s.close()
    finally:
        for s in models.values():
            s.close()


def test_a_station_without_the_rivals_it_was_calibrated_against_does_not_start(checked, tmp_path, capsys):
    sphere, cyl, th = checked
    with pytest.raises(SettingError, match=r"model.bundles.cylinder.*does not load: add model.bundles.cylinder"):
        load_models({"sphere": sphere}, th, 0)
    # validate-config (the unit's ExecStartPre) says it without opening an engine; `run` refuses the start
    cfg = agent_config(tmp_path, 1, sphere, th, 'type = "synthetic"')
    for cmd in ("validate-config", "run"):
        assert main(["agent", cmd, "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
        assert "does not load: add model.bundles.cylinder" in capsys.readouterr().err
    cfg.write_text(cfg.read_text().replace(f'bundles = {{ sphere = "{sphere}" }}',
                                           f'bundles = {{ sphere = "{sphere}", cylinder = "{cyl}" }}'))
    assert main(["agent", "validate-config", "--config", str(cfg), "--env-file", "/nonexistent"]) == 0
    other = tmp_path / "cyl-k4"  # the same run exported again: another bundle
    assert main(["export", str(cyl.parent / "cyl-run"), "--out", str(other), *EXPORT[:-4], "--k", "4",
                 "--n-seed", "2"]) == 0
    doc = json.loads(th.read_text())
    from agent.scoring.bundle import Bundle
    doc["classes"]["cylinder"]["bundle_hash"] = Bundle.load(other).bundle_hash  # (its own threshold passes)
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(SettingError, match=r"calibrate 'sphere' again with --class-check .*cyl-k4"):
        load_models({"sphere": sphere, "cylinder": other}, tmp_path / "t.json", 0)
    doc = json.loads(th.read_text())
    doc["classes"]["sphere"]["class_check"]["threshold"] = "high"
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(SettingError, match=r"model.thresholds.*class 'sphere'.*finite number.*calibrate again"):
        load_models({"sphere": sphere, "cylinder": cyl}, tmp_path / "t.json", 0)


def test_events_carry_the_class_check(checked, broker, synth_data, tmp_path):
    sphere, cyl, th = checked
    src = f'type = "folder"\npath = "{synth_data / "test" / "cylinder"}"\nfps = 0'
    cfg = agent_config(tmp_path, broker.port, sphere, th, src)
    cfg.write_text(cfg.read_text().replace(f'bundles = {{ sphere = "{sphere}" }}',
                                           f'bundles = {{ sphere = "{sphere}", cylinder = "{cyl}" }}'))
    events, out = replay_events(cfg, broker.port, tmp_path / "agent.log", 3)
    schema = json_schema()
    for e in events:
        jsonschema.validate(e, schema)
        cc = e["class_check"]
        assert cc["closest_class"] == "cylinder" and cc["anomaly"] == (cc["margin"] > cc["threshold"]), e
        assert (e["verdict"] == "anomaly") == (e["score"] > e["threshold"] or cc["anomaly"]), e


def test_margins_of_other_samples_than_the_scores_are_refused_in_one_line():
    import numpy as np
    from calibration.class_check import aligned
    assert aligned({"d:b": 2.0, "d:a": 1.0}, ["d:a", "d:b"]).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"other samples than the search did \(1 against 2\)"):
        aligned({"d:a": 1.0}, ["d:a", "d:b"])
    assert isinstance(aligned({}, []), np.ndarray)


def test_evaluate_adds_the_class_checks_rows_to_table_2(pair, synth_data, tmp_path, capsys):
    """With bundles of several classes that carry class PCAs, Table 2 shows what the check tells apart."""
    import csv

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from agent.scoring.bundle import Bundle
    from agent.sources.dataset import class_folders, frame_numbers
    sphere, cyl = pair
    data = synth_data / "test"
    assert main(["evaluate", "--bundles", str(sphere), str(cyl), "--data", str(data), "--out", str(tmp_path / "r"),
                 "--quiet", "--no-search-figure"]) == 0
    rows = {(r["class"], r["kind"]): r for r in csv.DictReader(open(tmp_path / "r" / "table2.csv"))}
    pcas = {"sphere": Bundle.load(sphere).class_pca, "cylinder": Bundle.load(cyl).class_pca}
    samples = [(f.name, sample_to_input(read_sample(f, n), 32)) for f in class_folders(data) for n in frame_numbers(f)]
    for cls, other in (("sphere", "cylinder"), ("cylinder", "sphere")):
        r = rows[(cls, "class check (pca)")]
        m = np.array([margin(pcas[cls].error(x), {other: pcas[other].error(x)})[0] for _, x in samples])
        y = np.array([folder != cls for folder, _ in samples])
        assert float(r["auc"]) == pytest.approx(roc_auc_score(y, m), abs=1e-9)
        assert r["bundle"] == Bundle.load(sphere if cls == "sphere" else cyl).bundle_hash[:12]
        assert (cls, "gan") in rows  # the scores' rows stay
    # a bundle without a class PCA: no such rows, and the report says why
    plain = tmp_path / "plain"
    assert main(["export", str(cyl.parent / "cyl-run"), "--out", str(plain), *EXPORT, "--class-pca", "0"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--bundles", str(sphere), str(plain), "--data", str(data), "--out", str(tmp_path / "q"),
                 "--quiet", "--no-search-figure"]) == 0
    assert "no class check rows in Table 2" in capsys.readouterr().out
    assert "class check" not in (tmp_path / "q" / "table2.md").read_text()


def test_a_station_of_one_product_checks_against_the_others_class_pcas_without_their_engines(
        pair, broker, synth_data, tmp_path, capsys):
    """model.check_bundles: the line's other products' bundles, read for their class PCAs only."""
    import shutil

    from agent.scoring.bundle import Bundle
    sphere, cyl = pair
    th = tmp_path / "thresholds.json"
    assert main(["calibrate", str(sphere), "--normal", str(synth_data / "test" / "sphere"), "--fpr", "0.34",
                 "--out", str(th), "--class-check", str(cyl), "--quiet"]) == 0
    assert json.loads(th.read_text())["classes"]["sphere"]["class_check"]["model"] == "pca"
    with pytest.raises(SettingError, match=r"add model.bundles.cylinder \(or model.check_bundles.cylinder: its "
                                           r"class PCA only, no engine\)"):
        load_models({"sphere": sphere}, th, 0)
    models = load_models({"sphere": sphere}, th, 0, check_bundles={"cylinder": cyl})
    try:
        assert list(models) == ["sphere"]  # (one engine: the cylinder bundle is read, not opened)
        pcas = {"sphere": Bundle.load(sphere).class_pca, "cylinder": Bundle.load(cyl).class_pca}
        for c in ("sphere", "cylinder"):
            x = sample_to_input(read_sample(synth_data / "test" / c, 0), 32)
            d = models["sphere"].decide(x)
            want = margin(pcas["sphere"].error(x), {"cylinder": pcas["cylinder"].error(x)})[0]
            assert d.class_check["margin"] == pytest.approx(want, rel=1e-6) and d.class_check["closest_class"] == \
                "cylinder"
        # thresholds calibrated again are taken without a restart, the check bundles read again with them
        from agent.decide.inspector import with_thresholds
        doc = json.loads(th.read_text())
        doc["classes"]["sphere"]["class_check"]["threshold"] = 123.0
        (tmp_path / "t2.json").write_text(json.dumps(doc))
        assert with_thresholds(models, tmp_path / "t2.json", 0, None, {"cylinder": cyl})["sphere"].check.record \
            .threshold == 123.0
        with pytest.raises(SettingError, match="which this station does not load"):
            with_thresholds(models, tmp_path / "t2.json", 0, None, {})
    finally:
        for m in models.values():
            m.close()
    # the station as configured: validate-config passes, and its events carry the check
    src = f'type = "folder"\npath = "{synth_data / "test" / "cylinder"}"\nfps = 0'
    cfg = agent_config(tmp_path, broker.port, sphere, th, src)
    line = f'bundles = {{ sphere = "{sphere}" }}'
    cfg.write_text(cfg.read_text().replace(line, f'{line}\ncheck_bundles = {{ cylinder = "{cyl}" }}'))
    assert main(["agent", "validate-config", "--config", str(cfg), "--env-file", "/nonexistent"]) == 0
    events, _ = replay_events(cfg, broker.port, tmp_path / "agent.log", 3)
    assert all(e["class_check"]["closest_class"] == "cylinder" for e in events), events
    # a tampered check bundle, and a class given in both, are refused by name
    bad = tmp_path / "cyl-bad"
    shutil.copytree(cyl, bad)
    (bad / "class_pca.npz").write_bytes((bad / "class_pca.npz").read_bytes() + b"x")
    for text, said in ((cfg.read_text().replace(f'cylinder = "{cyl}"', f'cylinder = "{bad}"'),
                        "model.check_bundles.cylinder"),
                       (cfg.read_text().replace(f'cylinder = "{cyl}" }}', f'cylinder = "{cyl}", sphere = "{sphere}" }}'),
                        "which bundles inspects already")):
        cfg.write_text(text)
        capsys.readouterr()
        assert main(["agent", "validate-config", "--config", str(cfg), "--env-file", "/nonexistent"]) == 2
        assert said in capsys.readouterr().err
    # a check of the generators needs the rival's engine: a check bundle cannot serve it
    assert main(["calibrate", str(sphere), "--normal", str(synth_data / "test" / "sphere"), "--fpr", "0.34",
                 "--out", str(th), "--class-check", str(cyl), "--quiet", "--class-check-model", "generator"]) == 0
    with pytest.raises(SettingError, match=r"model.check_bundles.cylinder.*needs an engine for 'cylinder'"):
        load_models({"sphere": sphere}, th, 0, check_bundles={"cylinder": cyl})
