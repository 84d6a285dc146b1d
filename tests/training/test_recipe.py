"""The measured recipe is what `adgan train` and `adgan export` do by default; --paper gives the paper's."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

from adgan.cli import main
from agent.scoring.bundle import Bundle
from export.bundle import PAPER_SEARCH, RECIPE_RELIEF, RECIPE_RELIEF_ERODE, RECIPE_SEARCH, for_start
from training.encoder import load_encoder
from training.recipe import PAPER, RECIPE, resolve
from training.train import load_checkpoint


def test_defaults_fill_only_what_is_not_given():
    a = argparse.Namespace(kind=None, epochs=None, batch_size=None, features_g=48, features_d=None, ema=None,
                           encoder_epochs=None, framing=None)
    resolve(a, paper=False)
    assert (a.kind, a.epochs, a.batch_size, a.features_g, a.features_d, a.ema, a.encoder_epochs, a.framing) == \
        ("gan", 500, 32, 48, 32, 0.999, 100, "object")  # cropped to the part: no sizes learnt (issue 15)
    b = argparse.Namespace(kind=None, epochs=5, batch_size=None, features_g=None, features_d=None, ema=None,
                           encoder_epochs=None, framing=None)
    resolve(b, paper=True)
    assert (b.features_g, b.features_d, b.batch_size, b.ema, b.encoder_epochs, b.epochs) == (64, 64, 64, 0.0, 0, 5)
    assert b.framing is None  # the paper's: the samples' own framing (the whole frame for its layout)
    c = argparse.Namespace(kind=None, epochs=None, batch_size=None, features_g=None, features_d=None, ema=None,
                           encoder_epochs=None, framing="frame")
    resolve(c, paper=False)
    assert c.framing == "frame"  # asked for
    assert RECIPE["encoder_epochs"] > 0 and PAPER["encoder_epochs"] == 0
    assert (PAPER_SEARCH.theta_scope, PAPER_SEARCH.loss, PAPER_SEARCH.z_init, PAPER_SEARCH.k) == \
        ("all", "mse", "random", 19)
    assert RECIPE_SEARCH.z_init == "encoder" and RECIPE_SEARCH.pool == 4
    # issue 15's single setting for every class by blocked CV: the union loss, depth weighed 3 times, the quadric relief
    assert (RECIPE_SEARCH.loss, RECIPE_SEARCH.depth_weight, RECIPE_RELIEF) == ("fg", 3.0, "quadric")
    # issue 18's rule over three classes and training seeds: one seed at E(x), 19 steps (bench/training_seeds.py)
    assert (RECIPE_SEARCH.n_seed, RECIPE_SEARCH.z_init_noise, RECIPE_SEARCH.k) == (1, 0.0, 19)
    assert PAPER_SEARCH.pool == 1  # the paper compares pixel by pixel


def test_a_random_start_takes_the_papers_steps_and_no_start_noise_unless_k_is_given():
    assert for_start(RECIPE_SEARCH) == RECIPE_SEARCH  # from E(x): the recipe as it is
    assert for_start(RECIPE_SEARCH, 7).k == 7
    rnd = for_start(replace(RECIPE_SEARCH, z_init="random"))
    assert (rnd.k, rnd.z_init_noise, rnd.loss, rnd.n_seed) == (PAPER_SEARCH.k, 0.0, RECIPE_SEARCH.loss, RECIPE_SEARCH.n_seed)
    assert for_start(replace(RECIPE_SEARCH, z_init="random"), 2).k == 2
    assert for_start(PAPER_SEARCH) == PAPER_SEARCH


def test_train_then_export_with_no_options_gives_the_recipe(synth_data, tmp_path, capsys):
    run, common = tmp_path / "run", [str(synth_data / "train"), "--class", "sphere", "--size", "32",
                                     "--features-g", "4", "--features-d", "4", "--batch-size", "6", "--quiet"]
    assert main(["train", *common, "--epochs", "2", "--encoder-epochs", "2", "--out", str(run)]) == 0
    ck = load_checkpoint(run)
    assert ck["config"]["kind"] == "gan" and ck["config"]["ema"] == 0.999
    assert ck["preprocessing"]["framing"] == "object"
    _, est = load_encoder(run)
    assert est["epochs"] == 2 and est["generator_g_steps"] == ck["g_steps"]
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    s = Bundle.load(tmp_path / "b").search
    assert s == RECIPE_SEARCH and s.n_seed == 1  # from E(x) without noise every seed would run the same search
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    relief = m["relief"]
    assert relief["surface"] == RECIPE_RELIEF and relief["reference"]["samples"] > 1
    assert relief["erode"] == RECIPE_RELIEF_ERODE == 4 and len(m["shape"]["bank"]) > 1
    assert main(["export", str(run), "--out", str(tmp_path / "nr"), "--no-relief"]) == 0
    m = json.loads((tmp_path / "nr" / "manifest.json").read_text())
    assert "relief" not in m and "shape" in m  # each check is left out on its own
    assert main(["export", str(run), "--out", str(tmp_path / "ns"), "--no-shape"]) == 0
    m = json.loads((tmp_path / "ns" / "manifest.json").read_text())
    assert "shape" not in m and m["relief"]["erode"] == 4
    assert main(["export", str(run), "--out", str(tmp_path / "pure"), "--no-shape", "--no-relief"]) == 0
    assert not {"relief", "shape"} & set(json.loads((tmp_path / "pure" / "manifest.json").read_text()))
    assert main(["export", str(run), "--out", str(tmp_path / "pl"), "--relief-surface", "plane"]) == 0
    assert json.loads((tmp_path / "pl" / "manifest.json").read_text())["relief"]["surface"] == "plane"
    assert main(["export", str(run), "--out", str(tmp_path / "n"), "--z-init-noise", "0.5"]) == 0
    s = Bundle.load(tmp_path / "n").search
    assert (s.n_seed, s.seeds_per_call, s.k) == (3, 3, 19)  # noisy starts: the paper's 3 seeds
    assert main(["export", str(run), "--out", str(tmp_path / "p"), "--paper", "--k", "4"]) == 0
    s = Bundle.load(tmp_path / "p").search
    assert (s.theta_scope, s.loss, s.z_init, s.k, s.pool) == ("all", "mse", "random", 4, 1)
    assert not {"relief", "shape"} & set(json.loads((tmp_path / "p" / "manifest.json").read_text()))  # Algorithm 1
    assert main(["export", str(run), "--out", str(tmp_path / "pr"), "--paper", "--k", "4", "--relief"]) == 0
    assert json.loads((tmp_path / "pr" / "manifest.json").read_text())["relief"]["surface"] == RECIPE_RELIEF
    capsys.readouterr()
    for bad in (["--relief", "--no-relief"], ["--no-relief", "--relief-surface", "plane"],
                ["--paper", "--relief-samples", "5"], ["--shape", "--no-shape"]):
        assert main(["export", str(run), "--out", str(tmp_path / "bad"), *bad]) == 2
        assert ("relief" if "--shape" not in bad else "--no-shape") in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before any work

    # more generator epochs without a new encoder: the old one no longer fits, export says how to fix it
    assert main(["train", *common, "--epochs", "3", "--encoder-epochs", "0", "--resume", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "stale")]) == 2
    assert "adgan train-encoder" in capsys.readouterr().err
    # a finished run asked again (to its own 3 epochs: no --epochs) trains the missing encoder stage only
    assert main(["train", *common, "--encoder-epochs", "2", "--resume", "--out", str(run)]) == 0
    assert load_checkpoint(run)["epoch"] == 3
    assert load_encoder(run)[1]["generator_g_steps"] == load_checkpoint(run)["g_steps"]
    assert main(["export", str(run), "--out", str(tmp_path / "fresh")]) == 0
    assert json.loads((tmp_path / "fresh" / "manifest.json").read_text())["search"]["z_init"] == "encoder"


def test_export_without_an_encoder_falls_back_to_random_z_and_says_so(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "b"), "--k", "3"]) == 0
    assert "no encoder" in capsys.readouterr().out
    s = Bundle.load(tmp_path / "b").search
    assert (s.z_init, s.n_seed, s.loss, s.k) == ("random", 3, RECIPE_SEARCH.loss, 3)
    # without --k, a random start takes the paper's steps, whatever k the recipe's E(x) start has
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "c")]) == 0
    assert Bundle.load(tmp_path / "c").search.k == PAPER_SEARCH.k
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "d"), "--z-init", "random"]) == 0  # asked for
    assert Bundle.load(tmp_path / "d").search.k == PAPER_SEARCH.k
