from pathlib import Path

import numpy as np
import pytest
import torch

from adgan.cli import main
from training.data import augment, load_class
from training.train import TrainConfig, Trainer, load_checkpoint


def tiny(synth_data, kind="gan", **kw):
    cfg = TrainConfig(data=str(synth_data / "train"), cls="sphere", kind=kind, epochs=2, batch_size=6,
                      features_g=4, features_d=4, size=32, **kw)
    return cfg, load_class(cfg.data, cfg.cls, cfg.size)


def test_load_class_resizes_and_fingerprints(synth_data, paper_data):
    d = load_class(synth_data / "train", "sphere", 32)
    assert d.x.shape == (6, 4, 32, 32) and d.x.min() >= -1 and d.x.max() <= 1
    assert d.preprocessing.size == 32 and d.frames == list(range(6))
    assert load_class(synth_data / "train", "sphere", 32, (0, 3)).fingerprint != d.fingerprint
    p = load_class(paper_data, "sphere", 64, (0, 20))
    assert p.x.shape[1:] == (4, 64, 64) and p.preprocessing.depth_norm == "minmax"
    # the RGB's JPEG quality, found in the files: ours write 95, the paper's frames are at 75
    assert (d.preprocessing.rgb_jpeg_quality, p.preprocessing.rgb_jpeg_quality) == (95, 75)
    with pytest.raises(FileNotFoundError, match="no class folder 'torus'"):
        load_class(paper_data, "torus", 64)


def test_discriminator_steps_lower_its_loss_with_g_fixed(synth_data):
    torch.manual_seed(0)
    cfg, data = tiny(synth_data)
    t = Trainer(cfg, data, Path("/nonexistent"))
    first = [t.d_step(data.x) for _ in range(3)]
    later = [t.d_step(data.x) for _ in range(25)]
    assert np.mean([r["d"] for r in later[-5:]]) < np.mean([r["d"] for r in first])


def test_generator_steps_lower_its_loss_with_d_fixed(synth_data):
    cfg, data = tiny(synth_data)
    t = Trainer(cfg, data, Path("/nonexistent"))
    for _ in range(10):
        t.d_step(data.x)  # a discriminator that tells real from fake
    t.D.eval()
    losses = [t.g_step(6) for _ in range(25)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_wgan_critic_steps_raise_the_wasserstein_estimate_and_respect_the_clip(synth_data):
    cfg, data = tiny(synth_data, kind="wgan", lr_d=1e-3)
    t = Trainer(cfg, data, Path("/nonexistent"))
    w = [t.d_step(data.x)["w"] for _ in range(30)]
    # step 1 runs with DCGAN's unclipped init (weights beyond 0.01); compare from step 2 on
    assert np.mean(w[-5:]) > 2 * np.mean(w[1:6])
    assert max(p.abs().max().item() for p in t.D.parameters()) <= 0.01 + 1e-9


def test_wgan_gp_records_the_penalty_and_steps_g_every_n_critic(synth_data):
    cfg, data = tiny(synth_data, kind="wgan-gp", n_critic=2)
    t = Trainer(cfg, data, Path("/nonexistent"))
    for _ in range(4):
        t.train_epoch()
    assert t.d_steps == 4 and t.g_steps == 2  # 6 samples, batch 6: one critic step per epoch
    assert all("gp" in h and h["gp"] >= 0 for h in t.history)


def _state(run):
    return load_checkpoint(run)["generator"]


def test_train_cli_resume_is_exactly_an_uninterrupted_run(synth_data, tmp_path):
    common = [str(synth_data / "train"), "--class", "cylinder", "--kind", "wgan-gp", "--size", "32",
              "--features-g", "4", "--features-d", "4", "--batch-size", "3", "--n-critic", "2",
              "--ema", "0.9", "--shift", "2", "--flip", "--quiet", "--encoder-epochs", "0"]
    assert main(["train", *common, "--epochs", "3", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    assert main(["train", *common, "--epochs", "3", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["epoch"] == b["epoch"] == 3 and a["g_steps"] == b["g_steps"] == 3
    for k in a["generator"]:
        assert torch.equal(a["generator"][k], b["generator"][k]), k
        assert torch.equal(a["generator_ema"][k], b["generator_ema"][k]), k
    for k in a["discriminator"]:
        assert torch.equal(a["discriminator"][k], b["discriminator"][k]), k
    assert a["history"] == b["history"]
    for f in ("losses.png", "config.json", "samples/latest.png", "samples/epoch_00003.png"):
        assert (tmp_path / "a" / f).is_file()
    st = a
    assert st["preprocessing"]["size"] == 32 and st["data"]["n"] == 6 and len(st["data"]["fingerprint"]) == 64
    assert st["config"]["ema"] == 0.9 and st["config"]["flip"] and st["config"]["shift"] == 2


def test_checkpoint_roundtrip_gives_identical_next_step(synth_data, tmp_path):
    cfg, data = tiny(synth_data, kind="gan")
    t1 = Trainer(cfg, data, tmp_path)
    t1.train_epoch()
    t1.save()
    t2 = Trainer(cfg, data, tmp_path)
    t2.load_state(load_checkpoint(tmp_path))
    t1.train_epoch()
    t2.train_epoch()
    assert torch.equal(t1.samples(), t2.samples())


def test_train_cli_refuses_to_overwrite_and_changed_data(synth_data, tmp_path, capsys):
    base = ["train", str(synth_data / "train"), "--class", "sphere", "--size", "32", "--features-g", "4",
            "--features-d", "4", "--out", str(tmp_path / "r"), "--quiet", "--kind", "gan", "--encoder-epochs", "0"]
    assert main([*base, "--epochs", "1"]) == 0
    assert main([*base, "--epochs", "1"]) == 2
    assert "--resume" in capsys.readouterr().err
    ck = load_checkpoint(tmp_path / "r")
    ck["data"]["fingerprint"] = "0" * 64
    torch.save(ck, tmp_path / "r" / "checkpoint.pt")
    assert main([*base, "--epochs", "2", "--resume"]) == 2
    assert "training data changed" in capsys.readouterr().err


def test_a_run_being_trained_is_neither_trained_again_nor_exported_meanwhile(synth_data, tmp_path, capsys):
    """Two trainings into one --out (the same command started twice) wrote over each other's
    checkpoints, and one died saying "free space" on a disk with plenty; an export meanwhile
    bundled a generator still in training."""
    from training.cli import run_lock
    base = ["train", str(synth_data / "train"), "--class", "sphere", "--size", "32", "--features-g", "4",
            "--features-d", "4", "--out", str(tmp_path / "r"), "--quiet", "--kind", "gan", "--encoder-epochs", "0"]
    run = tmp_path / "r"
    assert main([*base, "--epochs", "1"]) == 0
    with run_lock(run, writes=True):  # what a running training holds (another process's alike)
        assert main([*base, "--epochs", "2", "--resume"]) == 2
        assert "another adgan command is using this run now" in capsys.readouterr().err
        assert main(["train-encoder", str(run), "--epochs", "1", "--features", "4", "--quiet"]) == 2
        assert main(["export", str(run), "--out", str(tmp_path / "b"), "--z-init", "random", "--k", "2"]) == 2
        assert "another adgan command is writing this run now" in capsys.readouterr().err
    assert load_checkpoint(run)["epoch"] == 1 and not (run / "encoder.pt").exists() and not (tmp_path / "b").exists()
    with run_lock(run, writes=False), run_lock(run, writes=False):  # exports read it side by side; none trains it
        assert main([*base, "--epochs", "2", "--resume"]) == 2
    assert main([*base, "--epochs", "2", "--resume"]) == 0 and load_checkpoint(run)["epoch"] == 2


@pytest.mark.parametrize("opt, value", [("--lr-g", "inf"), ("--lr-d", "0"), ("--lr-g", "-1")])
def test_a_learning_rate_that_cannot_train_is_refused(synth_data, tmp_path, capsys, opt, value):
    """(--lr-g inf trained, saved a generator of NaN weights and said "done".)"""
    assert main(["train", str(synth_data / "train"), "--class", "sphere", "--size", "32", "--epochs", "1",
                 "--out", str(tmp_path / "r"), "--quiet", opt, value]) == 2
    assert f"{opt} must be a finite number > 0, got {float(value)}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # (a refused start left its empty --out folder)


def test_an_encoder_learning_rate_that_cannot_train_is_refused(tiny_run, capsys):
    for opt, value, said in (("--lr", "inf", "--lr must be a finite number > 0"),
                             ("--fg-threshold", "nan", "--fg-threshold must be in (-1, 1)")):
        assert main(["train-encoder", str(tiny_run), "--epochs", "1", "--quiet", opt, value]) == 2
        assert said in capsys.readouterr().err
    assert not (tiny_run / "encoder.pt").exists()


def test_a_damaged_checkpoint_or_encoder_is_said_by_name_not_as_a_traceback(encoded_run, tmp_path, capsys):
    """A run copied from the workstation cut short, or a file of other bytes, ended export and
    train --resume in torch's own traceback (RuntimeError from the zip reader, UnpicklingError)."""
    import shutil
    for name, cut in (("checkpoint.pt", 1000), ("encoder.pt", 0), ("encoder.pt", None)):
        run = tmp_path / f"run-{name}-{cut}"
        shutil.copytree(encoded_run, run)
        p = run / name
        p.write_bytes(p.read_bytes()[:cut] if cut is not None else b"\x1f" * 5000)
        for cmd in (["export", str(run), "--out", str(tmp_path / "b"), "--no-relief", "--no-shape"],
                    ["train-encoder", str(run), "--epochs", "1", "--quiet"] if name == "checkpoint.pt" else
                    ["train", "x", "--class", "sphere", "--out", str(run), "--resume", "--epochs", "9", "--quiet"]):
            assert main(cmd) == 2, cmd
            err = capsys.readouterr().err
            what = name.removesuffix(".pt")
            assert f"{p}: not a readable {what} (" in err and "copy it again" in err, (cmd, err)
            assert "Traceback" not in err
        assert not (tmp_path / "b").exists()


def test_augment_shift_fills_background_and_flip_mirrors():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    f = augment(x, flip=True, shift=0, gen=g)
    flipped = (f == x.flip(-1)).all(dim=(1, 2, 3))
    assert 10 < flipped.sum() < 54 and ((f == x).all(dim=(1, 2, 3)) | flipped).all()
    s = augment(x, flip=False, shift=1, gen=g)
    assert (s == -1).any() and s.max() <= 15


def test_train_cli_crops_to_the_part_and_leaves_out_a_held_out_block(synth_data, tmp_path):
    """--framing object: every sample cropped to its part before resizing, recorded in the run
    and the bundle, and scoring crops the stored samples the same way; --exclude-frames leaves a
    block out of the generator's and the encoder's data alike."""
    run = tmp_path / "r"
    assert main(["train", str(synth_data / "train"), "--class", "sphere", "--size", "32", "--features-g", "4",
                 "--features-d", "4", "--epochs", "1", "--encoder-epochs", "1", "--framing", "object",
                 "--margin", "0.2", "--exclude-frames", "2:4", "--out", str(run), "--quiet"]) == 0
    st = load_checkpoint(run)
    assert st["preprocessing"]["framing"] == "object" and st["preprocessing"]["margin"] == 0.2
    assert st["data"]["frames"] == [0, 1, 4, 5] and tuple(st["config"]["exclude_frames"]) == (2, 4)
    assert (run / "encoder.pt").is_file()  # the encoder found the same four samples (fingerprint)
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    from agent.scoring.bundle import Bundle
    assert Bundle.load(tmp_path / "b").preprocessing.framing == "object"
    assert main(["score", str(tmp_path / "b"), str(synth_data / "test" / "sphere"), "--out",
                 str(tmp_path / "s.csv"), "--quiet"]) == 0
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 4  # header and 3 samples


def test_crop_to_part_takes_the_size_out_of_the_paper_samples(paper_data):
    whole = load_class(paper_data, "sphere", 64)  # balls near and far from the camera
    part = load_class(paper_data, "sphere", 64, framing="object")
    assert part.fingerprint == whole.fingerprint and part.preprocessing.framing == "object"
    fg_whole = (whole.x[:, 3] > -1).float().mean((1, 2))
    fg_part = (part.x[:, 3] > -1).float().mean((1, 2))
    # a ball covers 2-24% of the paper's frame; cropped with 15% margins, 43-78% of the input
    assert fg_whole.min() < 0.05 and fg_part.min() > 0.3
    assert fg_part.std() / fg_part.mean() < 0.25 * fg_whole.std() / fg_whole.mean()
    with pytest.raises(ValueError, match="outside frames 0:1000"):
        load_class(paper_data, "sphere", 64, (0, 60), exclude=(0, 1000))


def test_recolor_turns_the_part_about_the_grey_axis_and_leaves_depth_and_background():
    from training.data import recolor
    x = torch.full((1, 4, 4, 4), -1.0)
    x[0, :3, 1:3, 1:3] = torch.tensor([0.6, -0.2, -0.8])[:, None, None]   # a reddish part
    x[0, 3, 1:3, 1:3] = 0.5                                               # its depth
    one = torch.ones(1)
    turned = recolor(x, torch.tensor([120.0]), one, one)                   # a third of the circle: R -> G -> B
    assert torch.allclose(turned[0, :3, 1, 1], x[0, [2, 0, 1], 1, 1], atol=1e-5)
    assert torch.equal(turned[:, 3], x[:, 3]) and (turned[0, :, 0, 0] == -1).all()   # depth, background
    grey = recolor(x, torch.zeros(1), torch.zeros(1), one)[0, :3, 1, 1]
    assert torch.allclose(grey, grey.mean().expand(3), atol=1e-6)          # saturation 0: grey, same brightness
    assert abs(grey.mean() - x[0, :3, 1, 1].mean()) < 1e-6
    dark = recolor(x, torch.zeros(1), one, torch.tensor([0.5]))[0, :3, 1, 1]
    assert torch.allclose((dark + 1) / 2, (x[0, :3, 1, 1] + 1) / 4, atol=1e-6)


def test_color_jitter_gives_each_part_its_own_colour_from_the_seed(synth_data):
    x = load_class(synth_data / "train", "sphere", 32).x
    j = [augment(x, False, 0, torch.Generator().manual_seed(s), hue=180, saturation=0.8, brightness=0.3)
         for s in (0, 0, 1)]
    assert torch.equal(j[0], j[1]) and not torch.equal(j[0], j[2])        # deterministic by the seed
    part = x[:, 3:] > -1
    assert torch.equal(j[0][:, 3], x[:, 3]) and torch.equal(j[0][:, :3][~part.expand(-1, 3, -1, -1)],
                                                            x[:, :3][~part.expand(-1, 3, -1, -1)])
    mean_rgb = lambda t: (t[:, :3] * part).sum((2, 3)) / part.sum((2, 3))  # noqa: E731
    moved = (mean_rgb(j[0]) - mean_rgb(x)).abs().amax(1)
    assert (moved > 0.05).float().mean() > 0.8                            # most parts changed colour
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    assert torch.equal(augment(x, False, 0, g), x) and torch.equal(g.get_state(), before)  # off: untouched
    with pytest.raises(ValueError, match="hue in"):
        augment(x, False, 0, g, hue=200)
    with pytest.raises(ValueError, match="saturation-jitter"):
        TrainConfig(data="d", cls="c", saturation_jitter=1.5)


def test_train_cli_records_colour_jitter_and_the_encoder_trains_with_it(synth_data, tmp_path):
    run = tmp_path / "r"
    assert main(["train", str(synth_data / "train"), "--class", "sphere", "--size", "32", "--features-g", "4",
                 "--features-d", "4", "--epochs", "1", "--encoder-epochs", "1", "--hue-jitter", "90",
                 "--saturation-jitter", "0.5", "--brightness-jitter", "0.2", "--out", str(run), "--quiet"]) == 0
    c = load_checkpoint(run)["config"]
    assert (c["hue_jitter"], c["saturation_jitter"], c["brightness_jitter"]) == (90, 0.5, 0.2)
    enc = torch.load(run / "encoder.pt", weights_only=False)
    assert enc["augmentation"] == dict(flip=False, shift=0, hue=90, saturation=0.5, brightness=0.2)
