"""Algorithm 1 through the ONNX Runtime backend, against the autograd oracle."""
import csv

import numpy as np
import pytest

from adgan.cli import main
from calibration.scoring import make_scorer
from agent.scoring.bundle import Bundle
from agent.scoring.onnxruntime import OnnxRuntimeBackend
from agent.scoring.search import Searcher
from agent.segment.preprocess import sample_to_input
from agent.sources.dataset import read_sample


def _inputs(synth_data, n=4):
    out = []
    for cls in ("sphere", "rectangle"):
        for i in range(n // 2):
            out.append(sample_to_input(read_sample(synth_data / "test" / cls, i), 32))
    return out


@pytest.mark.parametrize("key", [("all", "mse"), ("bn", "mse")])
def test_onnxruntime_scores_match_the_autograd_reference(bundles, synth_data, key):
    b = Bundle.load(bundles[key])
    ort_s, ref_s = make_scorer(b, "onnxruntime", seed=3), make_scorer(b, "torch", seed=3)
    for x in _inputs(synth_data):
        a, r = ort_s.score(x), ref_s.score(x)
        np.testing.assert_allclose(a.per_seed, r.per_seed, rtol=1e-3)
        assert abs(a.score - r.score) <= 1e-3 * r.score


@pytest.mark.parametrize("key", [("all", "fg"), ("none", "fg")])
def test_foreground_loss_scores_agree_in_the_median(bundles, synth_data, key):
    # The foreground mask is a threshold on G(z): when rounding puts a pixel on the other
    # side, that seed's search takes another path. Single seeds can differ by a few
    # percent; the typical score agrees closely.
    b = Bundle.load(bundles[key])
    ort_s, ref_s = make_scorer(b, "onnxruntime", seed=1), make_scorer(b, "torch", seed=1)
    rel = [abs(ort_s.score(x).score / ref_s.score(x).score - 1) for x in _inputs(synth_data)]
    assert np.median(rel) < 1e-3 and max(rel) < 0.05


def test_same_seed_same_scores_other_seed_other_scores(bundles, synth_data):
    b = Bundle.load(bundles[("all", "mse")])
    x = _inputs(synth_data)[0]
    s1 = Searcher(b, OnnxRuntimeBackend(b), seed=5).score(x)
    s2 = Searcher(b, OnnxRuntimeBackend(b), seed=5).score(x)
    s3 = Searcher(b, OnnxRuntimeBackend(b), seed=6).score(x)
    assert s1.score == s2.score and s1.score != s3.score
    assert s1.reconstruction.shape == (4, 32, 32) and np.abs(s1.reconstruction).max() <= 1


def test_more_steps_lower_the_loss_and_overrides_apply(bundles, synth_data):
    b = Bundle.load(bundles[("none", "fg")])
    x = _inputs(synth_data)[0]
    be = OnnxRuntimeBackend(b)
    k1 = Searcher(b, be, k=1).score(x)
    k20 = Searcher(b, be, k=20).score(x)
    assert k20.score < k1.score
    five = Searcher(b, be, n_seed=5).score(x)  # more seeds than one graph call holds: two calls
    assert five.per_seed.shape == (5,)
    np.testing.assert_allclose(five.per_seed[:3], Searcher(b, be).score(x).per_seed, rtol=1e-6)
    with pytest.raises(ValueError, match="overridden"):
        Searcher(b, be, theta_scope="all")


def test_bad_inputs_are_refused(bundles):
    b = Bundle.load(bundles[("all", "mse")])
    s = Searcher(b, OnnxRuntimeBackend(b))
    with pytest.raises(ValueError, match="float32"):
        s.score(np.zeros((4, 64, 64), np.float32))
    bad = np.zeros((4, 32, 32), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        s.score(bad)


def test_score_cli_writes_rows_for_every_sample(bundles, synth_data, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["score", str(bundles[("all", "mse")]), str(synth_data / "test"), "--out", str(out),
                 "--frames", "0:2", "--quiet", "--seed", "2"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 6 * 2  # 6 class folders (3 normal, 3 defective) x frames 0 and 1
    assert {r["class"] for r in rows} == {"sphere", "cylinder", "rectangle", "sphere_defect",
                                         "cylinder_defect", "rectangle_defect"}
    assert all(float(r["score"]) > 0 and r["path"].endswith(".jpg") for r in rows)
    assert "ms each" in capsys.readouterr().out
    # a single class folder works too, and the same seed gives the same numbers
    out2 = tmp_path / "one.csv"
    assert main(["score", str(bundles[("all", "mse")]), str(synth_data / "test" / "sphere"), "--out", str(out2),
                 "--frames", "0:2", "--quiet", "--seed", "2"]) == 0
    one = {r["path"]: r["score"] for r in csv.DictReader(open(out2))}
    assert one and all(one[p] == r["score"] for r in rows for p in [r["path"]] if p in one)


def test_score_cli_refuses_samples_of_another_recipe(bundles, synth_data, tmp_path, capsys):
    import shutil
    from agent.segment.preprocess import Preprocessing
    from agent.sources.dataset import write_preprocessing
    d = tmp_path / "fixed"
    shutil.copytree(synth_data / "test" / "sphere", d)
    write_preprocessing(d, Preprocessing(size=32, depth_norm="fixed"))
    assert main(["score", str(bundles[("all", "mse")]), str(d), "--out", str(tmp_path / "x.csv"), "--quiet"]) == 2
    assert "preprocessing" in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [(["--lr-z", "nan"], "learning rates must be finite numbers >= 0, got lr_z nan"),
                                        (["--lr-theta", "inf"], "lr_theta inf"),
                                        (["--out", "."], "is a folder: name the CSV to write")])
def test_score_cli_refuses_a_learning_rate_that_is_no_number_and_a_folder_as_its_csv(
        bundles, synth_data, tmp_path, monkeypatch, capsys, args, said):
    """(--lr-z nan scored every sample as NaN, and --out a folder failed naming a temporary file.)"""
    monkeypatch.chdir(tmp_path)
    assert main(["score", str(bundles[("all", "mse")]), str(synth_data / "test" / "sphere"), "--out", "s.csv",
                 "--quiet", *args]) == 2
    assert said in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_score_cli_writes_its_csv_whole_beside_another_run_and_leaves_the_old_one_when_stopped(
        bundles, synth_data, tmp_path, monkeypatch, capsys):
    """Two `adgan score --out scores.csv` at once (an engineer's two terminals, a script and a
    person) shared one temporary name: the second truncated the first's file and both wrote into
    it; the first renamed it, reported its own rows, and the CSV held the other's; the second failed
    after all its work ("No such file or directory: 'scores.csv.tmp'"). A stopped run left the
    temporary file behind."""
    import adgan.score as score
    bundle, out = str(bundles[("all", "mse")]), tmp_path / "scores.csv"
    rows_of = lambda: [(r["path"], r["class"]) for r in csv.DictReader(open(out))]  # noqa: E731
    real = score.score_folder

    def with_another_run_inside(*args, **kw):  # the other run starts and ends while this one writes
        monkeypatch.setattr(score, "score_folder", real)  # (the other run scores as it is)
        for i, row in enumerate(real(*args, **kw)):
            if i == 2:
                assert main(["score", bundle, str(synth_data / "test" / "cylinder"), "--out", str(out),
                             "--frames", "0:3", "--quiet"]) == 0
                assert {c for _, c in rows_of()} == {"cylinder"} and len(rows_of()) == 3
            yield row
    monkeypatch.setattr(score, "score_folder", with_another_run_inside)
    assert main(["score", bundle, str(synth_data / "test" / "sphere"), "--out", str(out), "--frames", "0:3",
                 "--quiet"]) == 0, capsys.readouterr().err
    rows = rows_of()  # the last to finish, whole, and only its own rows
    assert len(rows) == 3 and {c for _, c in rows} == {"sphere"}, rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]

    def stopped(*args, **kw):
        yield from list(real(*args, **kw))[:1]
        raise KeyboardInterrupt
    monkeypatch.setattr(score, "score_folder", stopped)
    assert main(["score", bundle, str(synth_data / "test" / "cylinder"), "--out", str(out), "--quiet"]) == 130
    assert rows_of() == rows and sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


@pytest.mark.parametrize("scope", ["none", "all"])
def test_several_parts_per_call_score_as_one_at_a_time(tiny_run, synth_data, tmp_path, scope):
    """--parts-per-call P: every slot has its own part; each part's score is the one a bundle of
    one part per call gives it, whatever its neighbours, and a short last call is padded."""
    one, four = tmp_path / "one", tmp_path / "four"
    common = ["--theta-scope", scope, "--k", "4", "--n-seed", "2", "--z-init", "random", "--lr-theta", "1e-4"]
    assert main(["export", str(tiny_run), "--out", str(one), *common]) == 0
    assert main(["export", str(tiny_run), "--out", str(four), *common, "--parts-per-call", "4"]) == 0
    b1, b4 = Bundle.load(one), Bundle.load(four)
    assert (b4.parts_per_call, b4.seeds_per_call, b4.x_batch) == (4, 8, 8) and b1.x_batch == 1
    xs = _inputs(synth_data, 6)  # 6 parts: one full call and one padded
    single = [Searcher(b1, OnnxRuntimeBackend(b1), seed=2).score(x) for x in xs]
    s4 = Searcher(b4, OnnxRuntimeBackend(b4), seed=2)
    batch = s4.score_batch(xs)
    assert len(batch) == len(xs)
    for a, r in zip(batch, single):
        np.testing.assert_allclose(a.per_seed, r.per_seed, rtol=1e-4)
        np.testing.assert_allclose(a.reconstruction, r.reconstruction, atol=1e-4)
    # the order of the parts in a call changes nothing, and score() of one part agrees
    rev = s4.score_batch(xs[::-1])[::-1]
    np.testing.assert_allclose([r.score for r in rev], [r.score for r in batch], rtol=1e-4)
    assert s4.score(xs[1]).score == pytest.approx(batch[1].score, rel=1e-4)
    assert make_scorer(b4, "torch", seed=2).score_batch(xs[:2])[1].score == pytest.approx(single[1].score, rel=1e-3)
    with pytest.raises(ValueError, match="n_seed cannot change"):
        Searcher(b4, OnnxRuntimeBackend(b4), n_seed=3)
    with pytest.raises(ValueError, match="model input"):
        s4.score_batch([xs[0], xs[0][:3]])


def test_score_cli_scores_a_bundle_of_several_parts_per_call(tiny_run, synth_data, tmp_path):
    one, four = tmp_path / "one", tmp_path / "four"
    assert main(["export", str(tiny_run), "--out", str(one), "--k", "3"]) == 0
    assert main(["export", str(tiny_run), "--out", str(four), "--k", "3", "--parts-per-call", "4"]) == 0
    rows = {}
    for b in (one, four):
        assert main(["score", str(b), str(synth_data / "test"), "--out", str(tmp_path / f"{b.name}.csv"),
                     "--quiet"]) == 0
        with open(tmp_path / f"{b.name}.csv") as fh:
            rows[b.name] = list(csv.DictReader(fh))
    assert len(rows["one"]) == len(rows["four"]) > 4 and len(rows["one"]) % 4  # a padded last call
    for a, r in zip(rows["one"], rows["four"]):
        assert a["path"] == r["path"] and float(a["score"]) == pytest.approx(float(r["score"]), rel=1e-4)


def test_a_colour_layer_bundle_scores_as_the_autograd_reference(encoded_run, synth_data, tmp_path):
    """adgan export --theta-scope colour, as a user runs it: a colour layer after G adapts with z
    (lr 5e-2 unless --lr-theta), scored by ONNX Runtime as by the autograd oracle, one part per
    call or four; its reconstruction is the recoloured G(z*), and a part recoloured after the
    fact costs less than with z alone."""
    one, four, plain = tmp_path / "one", tmp_path / "four", tmp_path / "plain"
    assert main(["export", str(encoded_run), "--out", str(one), "--theta-scope", "colour", "--pool", "1"]) == 0
    assert main(["export", str(encoded_run), "--out", str(four), "--theta-scope", "colour", "--pool", "1",
                 "--parts-per-call", "4"]) == 0
    assert main(["export", str(encoded_run), "--out", str(plain), "--pool", "1"]) == 0
    b, b4, bp = Bundle.load(one), Bundle.load(four), Bundle.load(plain)
    assert (b.search.theta_scope, b.search.lr_theta, b.trainable) == ("colour", 5e-2, ["colour"])
    xs = _inputs(synth_data, 4)
    ort_s, ref_s = make_scorer(b, "onnxruntime", seed=0), make_scorer(b, "torch", seed=0)
    got = [ort_s.score(x) for x in xs]
    for x, a in zip(xs, got):
        assert a.score == pytest.approx(ref_s.score(x).score, rel=1e-3)
    for a, r in zip(Searcher(b4, OnnxRuntimeBackend(b4), seed=0).score_batch(xs), got):
        assert a.score == pytest.approx(r.score, rel=1e-4)
        np.testing.assert_allclose(a.reconstruction, r.reconstruction, atol=1e-4)
    # a part with its colours swapped and dimmed: the colour layer takes it back, z alone cannot
    recoloured = [np.concatenate([0.7 * x[[2, 0, 1]], x[3:]]) for x in xs]
    plain_s = make_scorer(bp, "onnxruntime", seed=0)
    for x in recoloured:
        assert ort_s.score(x).score < plain_s.score(x).score
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "slow"), "--theta-scope", "colour",
                 "--lr-theta", "1e-3"]) == 0
    assert Bundle.load(tmp_path / "slow").search.lr_theta == 1e-3
