"""`adgan train`: train one generator for one class."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path

from agent.argtypes import number

log = logging.getLogger(__name__)


@contextlib.contextmanager
def run_lock(run: Path, writes: bool):
    """A training run's folder, held while a command writes it (train, train-encoder) or reads it
    (export, `writes` False: many may read at once): refused at once (durable.FolderBusy) while
    another holds it. A missing folder is not held: the command says what it lacks."""
    from agent import durable
    if not Path(run).is_dir():
        yield
        return
    why = ("two of them would write over each other's checkpoints or encoder: wait for it to end, or choose another "
           "--out" if writes else "the bundle would be of a generator still in training: export when it has ended")
    with durable.folder_lock(run, 0, f"{run}: another adgan command is {'using' if writes else 'writing'} this run "
                                     f"now; {why}", shared=not writes):
        yield


def cmd_train(a: argparse.Namespace) -> int:
    import torch

    from training.recipe import resolve

    epochs_given = a.epochs is not None
    resolve(a, a.paper)
    if a.encoder_epochs < 0:
        raise ValueError(f"--encoder-epochs must be >= 0, got {a.encoder_epochs}")
    torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))
    out = Path(a.out)
    made = not a.resume and not out.exists()
    if not a.resume:
        out.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(out, writes=True):
            return _train(a, out, epochs_given)
    except BaseException:
        if made:  # a start refused or failed before anything was written leaves no folder behind
            with contextlib.suppress(OSError):
                out.rmdir()  # (only an empty one)
        raise


def _train(a: argparse.Namespace, out: Path, epochs_given: bool) -> int:
    from agent.sources.dataset import parse_frames
    from training.model import Architecture
    from training.train import CHECKPOINT, TrainConfig, load_checkpoint, resume_config, run_training
    if a.resume:
        st = load_checkpoint(out)
        cfg = resume_config(st, a.epochs if epochs_given else st["config"]["epochs"])  # else: the run's own
        if st["epoch"] >= cfg.epochs:
            print(f"{out} already has {st['epoch']} epochs; ask for more with --epochs")
            return _encoder_stage(out, a, st["g_steps"])
    else:
        if (out / CHECKPOINT).exists():
            raise ValueError(f"{out} already holds a run; continue it with --resume or choose another --out")
        cfg = TrainConfig(data=str(a.data), cls=a.cls, kind=a.kind, epochs=a.epochs, batch_size=a.batch_size,
                          lr_g=a.lr_g, lr_d=a.lr_d, n_critic=a.n_critic, features_g=a.features_g,
                          features_d=a.features_d, size=a.size, seed=a.seed, frames=parse_frames(a.frames),
                          ema=a.ema, flip=a.flip, shift=a.shift, hue_jitter=a.hue_jitter,
                          saturation_jitter=a.saturation_jitter, brightness_jitter=a.brightness_jitter,
                          sample_every=a.sample_every,
                          framing=a.framing, margin=a.margin, exclude_frames=parse_frames(a.exclude_frames))
        Architecture(size=cfg.size, features_g=cfg.features_g, features_d=cfg.features_d, kind=cfg.kind)
    trainer = run_training(cfg, out, progress=not a.quiet, state=st if a.resume else None)
    return _encoder_stage(out, a, trainer.g_steps)


def _encoder_stage(out: Path, a: argparse.Namespace, g_steps: int) -> int:
    """Train the run's encoder unless asked not to or one for this generator exists already."""
    from training.encoder import ENCODER_FILE, encoder_matches, train_encoder
    if not a.encoder_epochs:
        return 0
    if encoder_matches(out, g_steps):
        print(f"{out / ENCODER_FILE} is up to date")
        return 0
    print(f"training the encoder ({a.encoder_epochs} epochs; the search starts at E(x); --encoder-epochs 0 skips)")
    path = train_encoder(out, a.encoder_epochs, progress=not a.quiet)
    print(f"encoder -> {path}")
    return 0


def add_parser(sub) -> None:
    q = sub.add_parser("train", help="train a DCGAN generator for one class (GAN, WGAN, WGAN-GP)",
                       description="Train one generator on the normal samples of one class (the paper's layout, "
                                   "or ours). Writes RUN/checkpoint.pt (resumable), RUN/config.json, sample grids "
                                   "of a fixed z in RUN/samples/ (RGB above depth) and RUN/losses.png.")
    q.add_argument("data", help="dataset root holding class folders, e.g. ../shared/data/paper-rgbd")
    q.add_argument("--class", dest="cls", required=True, help="class folder to train on")
    q.add_argument("--kind", choices=("gan", "wgan", "wgan-gp"), default=None,
                   help="objective: gan (BCE; default), wgan (weight clipping), wgan-gp (gradient penalty)")
    q.add_argument("--epochs", type=int, default=None,
                   help="passes over the data, in total (default 500, --paper 250; with --resume: the run's own)")
    q.add_argument("--out", required=True, help="run folder")
    q.add_argument("--paper", action="store_true",
                   help="the paper's DCGAN defaults (features 64, batch 64, no EMA, no encoder) instead of "
                        "the measured recipe; options given explicitly still apply")
    q.add_argument("--encoder-epochs", type=int, default=None,
                   help="after the generator, train an encoder x -> z for this many epochs so that the search "
                        "starts at E(x) (default 100; 0: none, the paper's random start)")
    q.add_argument("--batch-size", type=int, default=None, help="default 32 (--paper: 64)")
    q.add_argument("--lr-g", type=float, default=None, help="generator learning rate (default: the kind's recipe)")
    q.add_argument("--lr-d", type=float, default=None, help="discriminator/critic learning rate (default: recipe)")
    q.add_argument("--n-critic", type=number(int, 1), default=None,
                   help="critic steps per generator step (default: recipe)")
    q.add_argument("--features-g", type=int, default=None, help="generator width (default 32; paper: 64)")
    q.add_argument("--features-d", type=int, default=None, help="discriminator width (default 32; paper: 64)")
    q.add_argument("--size", type=int, choices=(32, 64, 128), default=64, help="resolution (default 64)")
    q.add_argument("--framing", choices=("frame", "object"), default=None,
                   help="object (default): crop every sample to its part (the part's box, --margin wider) before "
                        "resizing, so the model does not learn sizes; the bundle and the agent frame the same way. "
                        "frame: the samples' own whole frame (with --paper, the default: the samples' own framing)")
    q.add_argument("--margin", type=float, default=None,
                   help="with --framing object: margin around the part's box, a fraction of its longer side "
                        "on each side (default 0.15)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--frames", default=None, help="LO:HI frame numbers to train on (half-open), e.g. 0:700")
    q.add_argument("--exclude-frames", default=None,
                   help="LO:HI frame numbers to leave out of --frames (half-open): a held-out block, as "
                        "bench/blocked_cv.py makes them, e.g. 300:450")
    q.add_argument("--ema", type=float, default=None,
                   help="EMA decay of generator weights (default 0.999; 0: off, the paper)")
    q.add_argument("--flip", action="store_true", help="augment with horizontal flips")
    q.add_argument("--shift", type=int, default=0, help="augment with random shifts up to this many pixels")
    q.add_argument("--hue-jitter", type=float, default=0.0, metavar="DEG",
                   help="augment the part's colour: rotate its hue by up to this many degrees (0-180; 180: any "
                        "hue), so the model covers instances of colours the training frames did not show")
    q.add_argument("--saturation-jitter", type=float, default=0.0, metavar="F",
                   help="augment the part's colour: scale its saturation by a factor in [1-F, 1+F] (0-1)")
    q.add_argument("--brightness-jitter", type=float, default=0.0, metavar="F",
                   help="augment the part's colour: scale its brightness by a factor in [1-F, 1+F] (0-1)")
    q.add_argument("--sample-every", type=number(int, 0), default=0,
                   help="epochs between numbered sample grids kept in RUN/samples (0: ~50 per run); "
                        "samples/latest.png and losses.png are written every epoch")
    q.add_argument("--threads", type=number(int, 0), default=None, help="torch CPU threads (default: all cores)")
    q.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_train)


def cmd_train_encoder(a: argparse.Namespace) -> int:
    import torch

    from training.encoder import train_encoder
    if a.threads:
        torch.set_num_threads(a.threads)
    with run_lock(Path(a.run), writes=True):
        out = train_encoder(a.run, a.epochs, a.features, a.batch_size, a.lr, a.loss, a.fg_threshold, a.seed, a.data,
                            not a.quiet)
    st = torch.load(out, map_location="cpu", weights_only=False)
    print(f"encoder: {st['epochs']} epochs in {st['seconds']:.0f} s, final loss {st['history'][-1]:.4f} -> {out}; "
          f"export with 'adgan export {a.run} --out BUNDLE --z-init encoder'")
    return 0


def add_encoder_parser(sub) -> None:
    q = sub.add_parser("train-encoder", help="train an encoder x -> z for a trained generator (the search's start)",
                       description="After a generator is trained, train an encoder E: x -> z on the same normal "
                                   "samples (generator frozen) so that the latent search starts at E(x) "
                                   "(f-AnoGAN's izi_f). Writes RUN/encoder.pt.")
    q.add_argument("run", help="training run folder (its generator stays frozen)")
    q.add_argument("--epochs", type=int, required=True, help="passes over the run's training samples")
    q.add_argument("--features", type=number(int, 1), default=32, help="encoder width (default 32)")
    q.add_argument("--batch-size", type=number(int, 1), default=32, help="samples per step (default 32)")
    q.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4)")
    q.add_argument("--loss", choices=("mse", "fg", "fg_input"), default="fg",
                   help="reconstruction loss of G(E(x)) (default fg: where x or G(E(x)) is foreground)")
    q.add_argument("--fg-threshold", type=float, default=-0.5, help="G depth above this is foreground (default -0.5)")
    q.add_argument("--data", default=None, help="dataset root, if the training data has moved")
    q.add_argument("--seed", type=int, default=0, help="seed of the encoder's initial weights and batches")
    q.add_argument("--threads", type=number(int, 0), default=None, help="torch CPU threads (default: all cores)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_train_encoder)
