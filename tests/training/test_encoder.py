"""The encoder start (z0 = E(x)): training, export into bundles, the runtime and the reference agree."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from adgan.cli import main
from calibration.scoring import make_scorer
from agent.scoring.bundle import Bundle, BundleError, SearchDefaults
from agent.scoring.encoder import LatentEncoder
from agent.segment.preprocess import sample_to_input
from agent.sources.dataset import read_sample
from export.bundle import write_bundle
from training.encoder import load_encoder


def test_the_encoder_learns_and_is_stored_with_its_recipe(encoded_run):
    enc, st = load_encoder(encoded_run)
    assert st["epochs"] == 3 and len(st["history"]) == 3 and st["loss"] == "fg"
    assert st["history"][-1] < st["history"][0]  # it learned something
    assert enc(torch.zeros(2, 4, 32, 32)).shape == (2, 100)


def test_export_runtime_and_reference_start_from_the_same_latent(encoded_run, synth_data, tmp_path):
    out = tmp_path / "b"
    assert main(["export", str(encoded_run), "--out", str(out), "--theta-scope", "none", "--loss", "fg_input",
                 "--z-init", "encoder", "--k", "4", "--z-init-noise", "0", "--n-seed", "3"]) == 0
    b = Bundle.load(out)
    assert b.search.z_init == "encoder" and "encoder.onnx" in b.manifest["files"]
    x = sample_to_input(read_sample(synth_data / "test" / "sphere", 0), 32)
    enc, _ = load_encoder(encoded_run)
    with torch.no_grad():
        want = enc(torch.from_numpy(x)[None]).numpy()[0]
    got = LatentEncoder(b).encode(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ort, ref = make_scorer(b, "onnxruntime", 0), make_scorer(b, "torch", 0)
    r_ort, r_ref = ort.score(x), ref.score(x)
    assert r_ort.score == pytest.approx(r_ref.score, rel=1e-3)
    # without noise every seed starts at E(x), so every seed ends at the same loss
    assert len(r_ort.per_seed) == 3 and np.ptp(r_ort.per_seed) < 1e-6


def test_noise_spreads_the_seeds_and_a_tampered_encoder_is_refused(encoded_run, synth_data, tmp_path):
    out = tmp_path / "b"
    write_bundle(encoded_run, out, SearchDefaults(theta_scope="none", loss="fg_input", z_init="encoder",
                                                  z_init_noise=0.5, k=3))
    x = sample_to_input(read_sample(synth_data / "test" / "sphere", 1), 32)
    r = make_scorer(Bundle.load(out), "onnxruntime", 0).score(x)
    assert np.ptp(r.per_seed) > 0
    data = bytearray((out / "encoder.onnx").read_bytes())
    data[-1] ^= 1
    (out / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="encoder.onnx has been modified"):
        Bundle.load(out)


def test_exporting_an_encoder_start_without_an_encoder_says_how(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "b"), "--z-init", "encoder"]) == 2
    assert "adgan train-encoder" in capsys.readouterr().err


def test_k_0_scores_the_encoders_latent_without_a_search(encoded_run, synth_data, tmp_path):
    """k 0: the score of G(E(x)), as f-AnoGAN scores; the k 1 search starts from the same point."""
    b0, b1 = tmp_path / "k0", tmp_path / "k1"
    for out, k in ((b0, "0"), (b1, "1")):
        assert main(["export", str(encoded_run), "--out", str(out), "--k", k]) == 0
    x = sample_to_input(read_sample(synth_data / "test" / "sphere", 0), 32)
    k0 = Bundle.load(b0)
    assert k0.search.k == 0 and k0.search.z_init == "encoder"
    r_ort, r_ref = make_scorer(k0, "onnxruntime", 0).score(x), make_scorer(k0, "torch", 0).score(x)
    assert r_ort.score == pytest.approx(r_ref.score, rel=1e-4)
    one = make_scorer(Bundle.load(b1), "onnxruntime", 0).score(x)
    assert one.score != pytest.approx(r_ort.score, rel=1e-6)  # one step moves z, so k 0 did no step
    with pytest.raises(ValueError, match="needs z_init 'encoder'"):
        SearchDefaults(k=0, z_init="random")


def test_k_0_without_an_encoder_is_refused(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "b"), "--k", "0"]) == 2
    assert "encoder" in capsys.readouterr().err
