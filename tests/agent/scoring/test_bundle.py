import json
import shutil

import pytest

from agent.scoring.bundle import Bundle, BundleError, SearchDefaults


def test_manifest_records_what_the_device_needs(bundles):
    b = Bundle.load(bundles[("all", "mse")])
    m = b.manifest
    assert m["format"] == 1 and m["class"] == "sphere" and m["kind"] == "gan"
    assert m["architecture"]["size"] == 32 and m["preprocessing"]["size"] == 32
    assert m["search"]["theta_scope"] == "all" and m["search"]["k"] == 5
    assert set(m["files"]) == {"step.onnx", "loss.onnx", "theta.npz"}
    assert all(len(h) == 64 for h in m["files"].values())
    assert m["producer"].startswith("adgan-edge") and len(b.bundle_hash) == 64
    assert b.initial_theta(3)[0].shape[0] == 3 * b.nz  # per-seed W0 stacked along Cin


def test_tampered_graph_is_refused(bundles, tmp_path):
    p = tmp_path / "b"
    shutil.copytree(bundles[("all", "mse")], p)
    with open(p / "step.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="step.onnx has been modified"):
        Bundle.load(p)


def test_tampered_manifest_changes_identity_or_is_refused(bundles, tmp_path):
    p = tmp_path / "b"
    shutil.copytree(bundles[("all", "mse")], p)
    before = Bundle.load(p).bundle_hash
    m = json.loads((p / "manifest.json").read_text())
    m["search"]["k"] = 50  # a different model behaviour is a different bundle
    (p / "manifest.json").write_text(json.dumps(m))
    assert Bundle.load(p).bundle_hash != before
    m["files"]["theta.npz"] = "0" * 64
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="theta.npz has been modified"):
        Bundle.load(p)


@pytest.mark.parametrize("edit, msg", [
    (lambda m: m.update(format=99), "format 99"),
    (lambda m: m.pop("graphs"), "missing 'graphs'"),
    (lambda m: m["files"].update({"../evil": "0" * 64}), "outside the bundle"),
    # edited by hand or damaged, still JSON: these ended in a TypeError, AttributeError or KeyError
    # (found by random edits of a bundle's manifest)
    (lambda m: m.update(files="step.onnx"), "'files' is not of its kind"),
    (lambda m: m.update(graphs=None), "'graphs' must be an object"),
    (lambda m: m["graphs"]["step"].update(outputs=3), "'graphs.step' is not of its kind"),
    (lambda m: m["files"].update({"loss.onnx": 0.5}), "'files' is not of its kind"),
    (lambda m: m["graphs"].update(encoder="encoder.onnx"), "'graphs.encoder' is not of its kind"),
    (lambda m: m["architecture"].update(nz=-1), "'architecture.nz' is not of its kind"),
    (lambda m: m["theta"].update(trainable="w0"), "'theta.trainable' is not of its kind"),
])
def test_bad_manifests_are_refused(bundles, tmp_path, edit, msg):
    with pytest.raises(BundleError, match=msg):
        Bundle.load(edited(bundles, tmp_path, edit))


def test_a_number_longer_than_python_reads_is_a_manifest_refused(bundles, tmp_path):
    """A whole number of more than 4300 digits is a ValueError of json.loads (Python's limit), not
    a JSONDecodeError: it ended the start in a traceback instead of naming the bundle."""
    p = edited(bundles, tmp_path, lambda m: None)
    mf = p / "manifest.json"
    mf.write_text(mf.read_text().replace('"k": ', '"k": ' + "1" * 5000 + ', "k2": '))
    with pytest.raises(BundleError, match="not a manifest .*5000 digits"):
        Bundle.load(p)


def edited(bundles, tmp_path, edit):
    """A copy of a test bundle whose manifest `edit` changed."""
    p = tmp_path / "b"
    shutil.copytree(bundles[("all", "mse")], p)
    m = json.loads((p / "manifest.json").read_text())
    edit(m)
    (p / "manifest.json").write_text(json.dumps(m))
    return p


@pytest.mark.parametrize("edit, msg", [
    (lambda m: m["graphs"]["loss"]["inputs"].__setitem__(0, "q"), "the loss graph takes .* where the manifest says"),
    (lambda m: m["architecture"].update(nz=7), r"the step graph's z is \[3, 100\], where the manifest's architecture "
                                              r"makes it \[3, 7\]"),
    (lambda m: m["architecture"].update(size=64), "the step graph's x is"),
])
def test_a_manifest_that_does_not_describe_its_graphs_is_refused_at_loading(bundles, tmp_path, edit, msg):
    """Graph names the engine binds by (a KeyError when it loaded them) and sizes of x and z (ONNX
    Runtime's 'Got invalid dimensions' for every part) that are not the graphs' own."""
    from agent.scoring.backend import open_backend
    with pytest.raises(BundleError, match=msg):
        open_backend(Bundle.load(edited(bundles, tmp_path, edit)))


@pytest.mark.parametrize("raw, msg", [(b"{\"format\": 2", "not valid JSON"), (b"\x93\x94", "UnicodeDecodeError"),
                                      (b"[" * 100000, "RecursionError")])
def test_a_manifest_that_is_no_json_is_a_bundle_error(tmp_path, raw, msg):
    """(A manifest of other bytes raised a UnicodeDecodeError, one nested too deeply a
    RecursionError: not the BundleError a reload's check of the bundle on disk catches.)"""
    (tmp_path / "manifest.json").write_bytes(raw)
    with pytest.raises(BundleError, match=msg):
        Bundle.load(tmp_path)


def test_missing_file_and_not_a_bundle(bundles, tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.load(tmp_path)
    p = tmp_path / "b"
    shutil.copytree(bundles[("all", "mse")], p)
    (p / "loss.onnx").unlink()
    with pytest.raises(BundleError, match="loss.onnx is missing"):
        Bundle.load(p)


def test_search_defaults_validate():
    with pytest.raises(ValueError, match="theta_scope"):
        SearchDefaults(theta_scope="most")
    with pytest.raises(ValueError, match="k >= 0"):
        SearchDefaults(k=-1)
    with pytest.raises(ValueError, match="needs z_init 'encoder'"):
        SearchDefaults(k=0)  # no search needs the encoder's start
    with pytest.raises(ValueError, match="SearchDefaults: unknown field 'lr'"):
        SearchDefaults.from_dict({"k": 3, "lr": 1})


def test_export_refuses_to_overwrite(tiny_run, bundles):
    from export.bundle import write_bundle
    with pytest.raises(ValueError, match="not empty"):
        write_bundle(tiny_run, bundles[("all", "mse")], SearchDefaults())
    assert Bundle.load(bundles[("all", "mse")])  # untouched


def test_export_force_replaces_a_bundle_and_nothing_else(encoded_run, tmp_path, capsys):
    """`--force` once removed whatever --out named: `--out bundles` (the folder of every class's
    bundle) instead of `--out bundles/sphere` took them all."""
    from adgan.cli import main
    fast = ["export", str(encoded_run), "--theta-scope", "none", "--loss", "fg", "--k", "3", "--no-relief",
            "--no-shape"]
    root = tmp_path / "bundles"
    assert main([*fast, "--out", str(root / "sphere")]) == 0
    (root / "notes.txt").write_text("line 2")
    assert main([*fast, "--out", str(root), "--force"]) == 2
    err = capsys.readouterr().err
    assert "holds no manifest.json" in err and "give the class's own folder" in err
    assert Bundle.load(root / "sphere") and (root / "notes.txt").is_file()
    (root / "sphere" / "engines").mkdir()  # built on the Jetson from the old graphs: they go with them
    assert main([*fast, "--out", str(root / "sphere"), "--force", "--k", "4"]) == 0
    assert Bundle.load(root / "sphere").search.k == 4 and not (root / "sphere" / "engines").exists()
    (root / "sphere" / "calibration.txt").write_text("mine")
    assert main([*fast, "--out", str(root / "sphere"), "--force"]) == 2
    assert "holds calibration.txt, which adgan export does not make" in capsys.readouterr().err
    assert (root / "sphere" / "calibration.txt").is_file() and Bundle.load(root / "sphere").search.k == 4


def test_export_cli_records_the_depth_weight_and_old_manifests_default_to_a_plain_mean(tiny_run, tmp_path,
                                                                                         synth_data):
    import numpy as np

    from adgan.cli import main
    from calibration.scoring import make_scorer
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import read_sample
    out = tmp_path / "dw"
    assert main(["export", str(tiny_run), "--out", str(out), "--theta-scope", "none", "--loss", "fg_input",
                 "--k", "3", "--depth-weight", "3"]) == 0
    b = Bundle.load(out)
    assert b.search.depth_weight == 3.0
    # the weight is in the graphs: ONNX Runtime agrees with the weighted autograd oracle
    x = sample_to_input(read_sample(synth_data / "test" / "sphere", 0), 32)
    a, r = make_scorer(b, "onnxruntime", seed=1).score(x), make_scorer(b, "torch", seed=1).score(x)
    np.testing.assert_allclose(a.per_seed, r.per_seed, rtol=1e-3)
    assert SearchDefaults.from_dict({"k": 3}).depth_weight == 1.0
    with pytest.raises(ValueError, match="depth_weight"):
        SearchDefaults(depth_weight=0)
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "bad"), "--depth-weight=-1"]) == 2


def test_export_cli_records_the_pool_and_onnxruntime_scores_as_the_pooled_reference(tiny_run, tmp_path, synth_data):
    import numpy as np

    from adgan.cli import main
    from calibration.scoring import make_scorer
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import read_sample
    x = sample_to_input(read_sample(synth_data / "test" / "sphere", 0), 32)
    scores = {}
    for pool in (1, 4):
        out = tmp_path / f"pool{pool}"
        assert main(["export", str(tiny_run), "--out", str(out), "--theta-scope", "none", "--loss", "fg_input",
                     "--k", "3", "--pool", str(pool)]) == 0
        b = Bundle.load(out)
        assert b.search.pool == pool
        a, r = make_scorer(b, "onnxruntime", seed=1).score(x), make_scorer(b, "torch", seed=1).score(x)
        np.testing.assert_allclose(a.per_seed, r.per_seed, rtol=1e-3)
        scores[pool] = a.score
    assert scores[4] < scores[1]  # averaging inside cells cancels part of the residual
    assert SearchDefaults.from_dict({"k": 3}).pool == 1  # manifests written before pool: per pixel
    with pytest.raises(ValueError, match="pool"):
        SearchDefaults(pool=3)
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "bad"), "--pool", "3"]) == 2
    assert not (tmp_path / "bad").exists()


def test_export_cli_records_the_local_score_and_onnxruntime_scores_as_the_reference(tiny_run, tmp_path, synth_data):
    import numpy as np

    from adgan.cli import main
    from calibration.scoring import make_scorer
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import read_sample
    x = sample_to_input(read_sample(synth_data / "test" / "sphere", 0), 32)
    out = tmp_path / "top"
    assert main(["export", str(tiny_run), "--out", str(out), "--theta-scope", "none", "--loss", "fg_input",
                 "--k", "3", "--pool", "4", "--score-cells", "4"]) == 0
    b = Bundle.load(out)
    assert b.search.score_cells == 4
    a, r = make_scorer(b, "onnxruntime", seed=1).score(x), make_scorer(b, "torch", seed=1).score(x)
    np.testing.assert_allclose(a.per_seed, r.per_seed, rtol=1e-3)
    assert SearchDefaults.from_dict({"k": 3}).score_cells == 0  # manifests written before: the mean loss
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "bad"), "--score-cells", "-1"]) == 2
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "bad"), "--pool", "4", "--score-cells", "65"]) == 2
    assert not (tmp_path / "bad").exists()


def test_export_standardises_the_local_score_on_the_runs_own_training_samples(tiny_run, tmp_path, synth_data):
    """--score-norm train: the run's training samples are scored once with the runtime's search;
    their cell energies' mean and (floored) deviation go into the bundle (hashed) and into the
    loss graph. Scored again with the final bundle, the training samples' standardised cells
    average 0; ONNX Runtime and the autograd oracle agree."""
    import numpy as np
    import torch

    from adgan.cli import main
    from calibration.scoring import make_scorer
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import frame_numbers, read_sample
    from training.losses import local_cell_energy
    out = tmp_path / "std"
    common = ["--theta-scope", "none", "--loss", "fg_input", "--depth-weight", "1", "--k", "3", "--pool", "4",
              "--score-cells", "4"]
    assert main(["export", str(tiny_run), "--out", str(out), *common, "--score-norm", "train"]) == 0
    b = Bundle.load(out)
    assert b.search.score_norm == "train" and b.manifest["score_stats"]["samples"] == 6
    assert "cell_stats.npz" in b.manifest["files"]
    mu, sd = b.cell_stats
    assert mu.shape == sd.shape == (64,) and (sd > 0).all() and mu.max() > 0
    train = synth_data / "train" / "sphere"
    scorer = make_scorer(b, "onnxruntime", seed=0)
    z = []
    for n in frame_numbers(train):
        x = sample_to_input(read_sample(train, n), 32)
        y = scorer.score(x).reconstruction
        e = local_cell_energy(torch.from_numpy(y[None]), torch.from_numpy(x[None]), "fg_input", pool=4)[0].numpy()
        z.append((e - mu) / sd)
    np.testing.assert_allclose(np.mean(z, axis=0), 0.0, atol=2e-3)  # two graphs, float32 G(z)
    x = sample_to_input(read_sample(synth_data / "test" / "sphere", 0), 32)
    a, r = make_scorer(b, "onnxruntime", seed=1).score(x), make_scorer(b, "torch", seed=1).score(x)
    np.testing.assert_allclose(a.per_seed, r.per_seed, rtol=1e-3, atol=1e-3)
    # the raw local score of the same search differs: the statistics are in the graph
    raw = tmp_path / "raw"
    assert main(["export", str(tiny_run), "--out", str(raw), *common]) == 0
    assert make_scorer(Bundle.load(raw), "onnxruntime", seed=1).score(x).score != pytest.approx(a.score, rel=1e-3)
    # a tampered statistics file is refused like any other bundle file
    np.savez(out / "cell_stats.npz", mu=mu, sd=sd * 2)
    with pytest.raises(BundleError, match="cell_stats.npz has been modified"):
        Bundle.load(out)
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "bad"), "--score-norm", "train"]) == 2


def test_seeds_per_call_has_one_name_and_reads_the_old_one():
    """Manifests and command lines written before keep working: `batch_seeds` / `--batch-seeds`."""
    from adgan.cli import build_parser
    assert SearchDefaults.from_dict({"k": 3, "batch_seeds": 2}).seeds_per_call == 2
    assert "batch_seeds" not in SearchDefaults().to_dict()
    for flag in ("--seeds-per-call", "--batch-seeds"):
        assert build_parser().parse_args(["export", "RUN", "--out", "B", flag, "2"]).seeds_per_call == 2
