"""The class PCA (agent/scoring/class_pca.py): the class check's model of a product, fitted by
`adgan export` on the run's training parts and carried, hashed, in the bundle."""
import json
import shutil

import numpy as np
import pytest

from adgan.cli import main
from agent.scoring.bundle import Bundle, BundleError
from agent.scoring.class_pca import FILE, ClassPCA, pooled

EXPORT = ["--theta-scope", "none", "--loss", "fg", "--k", "2", "--n-seed", "1", "--no-relief", "--no-shape"]


def test_the_error_is_the_pooled_inputs_residual_off_the_training_parts_subspace():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (40, 4, 8, 8)).astype(np.float32)
    pca = ClassPCA.fit(x, components=5, pool=2)
    assert pca.axes.shape == (5, 64) and pca.shape == (4, 8, 8)
    assert np.allclose(pca.axes @ pca.axes.T, np.eye(5), atol=1e-5)
    # written out by hand: 2 x 2 means, centred, projected on the 5 leading right singular vectors
    flat = x.reshape(40, 4, 4, 2, 4, 2).mean((3, 5)).reshape(40, -1).astype(np.float64)
    mu = flat.mean(0)
    v = np.linalg.svd(flat - mu)[2][:5]
    y = rng.uniform(-1, 1, (4, 8, 8)).astype(np.float32)
    r = y.reshape(4, 4, 2, 4, 2).mean((2, 4)).ravel() - mu
    r = r - v.T @ (v @ r)
    assert pca.error(y) == pytest.approx(float(np.mean(r ** 2)), rel=1e-4)
    # the mean part and any mix of the axes lie in the subspace: no error
    in_plane = (mu + 0.7 * v[0] - 0.3 * v[4]).reshape(4, 4, 4).repeat(2, 1).repeat(2, 2)
    assert pca.error(in_plane.astype(np.float32)) < 1e-9
    assert pca.error(y) > 0.05
    assert pooled(x, 1).shape == (40, 256)


def test_fewer_parts_fit_fewer_axes_and_bad_input_is_refused():
    x = np.random.default_rng(1).uniform(-1, 1, (6, 4, 8, 8)).astype(np.float32)
    assert len(ClassPCA.fit(x, components=16).axes) == 5
    for bad, why in ((dict(x=x[:1]), "at least 2"), (dict(x=x, components=0), "positive integer"),
                     (dict(x=x, pool=3), "does not divide"), (dict(x=x[0]), "at least 2")):
        with pytest.raises(ValueError, match=why):
            ClassPCA.fit(**bad)
    pca = ClassPCA.fit(x, components=2)
    with pytest.raises(ValueError, match=r"reads inputs of shape \(4, 8, 8\), got \(4, 16, 16\)"):
        pca.error(np.zeros((4, 16, 16), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        ClassPCA(pca.mean * np.nan, pca.axes, 2, (4, 8, 8))


def test_export_fits_it_on_every_training_part_and_the_bundle_carries_it_hashed(tiny_run, tmp_path, capsys):
    from training.data import load_run_data
    from training.train import load_checkpoint
    out = tmp_path / "b"
    assert main(["export", str(tiny_run), "--out", str(out), *EXPORT]) == 0
    assert "class PCA: 5 axes of 6 training parts (pooled 2 x 2)" in capsys.readouterr().out
    b = Bundle.load(out)
    block = b.manifest["class_pca"]
    assert block["file"] == FILE and FILE in b.manifest["files"] and block["samples"] == 6
    x = load_run_data(load_checkpoint(tiny_run), None, tiny_run).x.numpy()
    want = ClassPCA.fit(x)
    assert np.allclose(b.class_pca.mean, want.mean) and np.allclose(np.abs(b.class_pca.axes), np.abs(want.axes),
                                                                    atol=1e-5)
    assert [b.class_pca.error(v) for v in x] == pytest.approx([want.error(v) for v in x], abs=1e-6)
    # --class-pca 0 leaves it out (and needs no training data); a negative count is refused before any work
    plain = tmp_path / "plain"
    assert main(["export", str(tiny_run), "--out", str(plain), *EXPORT, "--class-pca", "0"]) == 0
    assert Bundle.load(plain).class_pca is None and "class_pca" not in Bundle.load(plain).manifest
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "neg"), *EXPORT, "--class-pca", "-1"]) == 2
    assert "--class-pca must be a number of components >= 0" in capsys.readouterr().err
    assert not (tmp_path / "neg").exists()
    # a class PCA changed after export, or one that the manifest's block does not describe, is refused
    for name, edit, why in (
            ("changed", lambda d: np.savez(d / FILE, mean=want.mean + 1, axes=want.axes, pool=np.int64(2),
                                           shape=np.asarray(want.shape)), "class_pca.npz has been modified"),
            ("unhashed", lambda d: _manifest(d, lambda m: m["files"].pop(FILE)), "not covered by a hash"),
            ("count", lambda d: _manifest(d, lambda m: m["class_pca"].update(components=4)), "does not fit")):
        d = tmp_path / name
        shutil.copytree(out, d)
        edit(d)
        with pytest.raises(BundleError, match=why):
            Bundle.load(d)


def _manifest(d, change):
    m = json.loads((d / "manifest.json").read_text())
    change(m)
    (d / "manifest.json").write_text(json.dumps(m))
