"""`adgan export`: a training run -> a model bundle; `adgan export build-engine`: TensorRT engines."""
from __future__ import annotations

import argparse

USAGE = ("adgan export RUN --out BUNDLE [--theta-scope all|bn|none] [--loss mse|fg] [options]\n"
         "       adgan export build-engine BUNDLE [--fp16]")


def cmd_export(a: argparse.Namespace) -> int:
    if a.run == "build-engine":
        if not a.bundle:
            raise ValueError("build-engine needs a BUNDLE folder")
        from agent.scoring.tensorrt import build_engine
        path = build_engine(a.bundle, fp16=a.fp16)
        print(f"built {path}")
        return 0
    if a.bundle:
        raise ValueError(f"unexpected argument {a.bundle!r} (usage: {USAGE.splitlines()[0]})")
    if not a.out:
        raise ValueError("--out BUNDLE is required")
    from agent.scoring.bundle import SearchDefaults
    from export.bundle import write_bundle

    search = SearchDefaults(n_seed=a.n_seed, k=a.k, lr_z=a.lr_z, lr_theta=a.lr_theta, theta_scope=a.theta_scope,
                            loss=a.loss, fg_threshold=a.fg_threshold, batch_seeds=a.batch_seeds or a.n_seed,
                            z_init=a.z_init, z_init_noise=a.z_init_noise, depth_weight=a.depth_weight)
    m = write_bundle(a.run, a.out, search, use_ema=not a.no_ema, force=a.force)
    print(f"exported {m['class']} ({m['kind']}, {m['training']['weights']}, epoch {m['training']['epoch']}) "
          f"-> {a.out}: theta scope {a.theta_scope}, loss {a.loss}, n_seed {a.n_seed}, k {a.k}, z_init {a.z_init}")
    return 0


def add_parser(sub) -> None:
    q = sub.add_parser("export", help="export a trained generator to an ONNX model bundle; build TensorRT engines",
                       usage=USAGE,
                       description="Write a model bundle from a training run: the explicit step and loss graphs of "
                                   "Algorithm 1 as ONNX, the initial theta, and a manifest with the preprocessing, "
                                   "the search defaults and the sha256 of every file. 'build-engine' builds TensorRT "
                                   "engines from a bundle on the machine that will run them (a Jetson).")
    q.add_argument("run", help="training run folder (or checkpoint.pt); or the word build-engine")
    q.add_argument("bundle", nargs="?", help=argparse.SUPPRESS)
    q.add_argument("--out", help="bundle folder to write")
    q.add_argument("--theta-scope", choices=("all", "bn", "none"), default="all",
                   help="what adapts besides z: all theta (the paper), BatchNorm affine only, or nothing")
    q.add_argument("--loss", choices=("mse", "fg", "fg_input"), default="mse",
                   help="mse over the whole image (the paper); fg: over pixels where the sample or G(z) is "
                        "foreground; fg_input: over the sample's own object pixels")
    q.add_argument("--n-seed", type=int, default=3, help="latent seeds per sample (paper: 3)")
    q.add_argument("--k", type=int, default=19, help="Adam steps per seed (paper: 19)")
    q.add_argument("--lr-z", type=float, default=5e-2, help="Adam learning rate of z (paper: 5e-2)")
    q.add_argument("--lr-theta", type=float, default=6e-9, help="Adam learning rate of theta (paper: 6e-9)")
    q.add_argument("--fg-threshold", type=float, default=-0.9, help="G(z) depth above this is foreground (loss fg)")
    q.add_argument("--depth-weight", type=float, default=1.0,
                   help="weight of the depth channel's squared error against each RGB channel's (default 1: "
                        "a plain mean, the paper)")
    q.add_argument("--z-init", choices=("random", "encoder"), default="random",
                   help="start of the search: random z ~ N(0, I) (the paper) or the run's encoder E(x) "
                        "(adgan train-encoder)")
    q.add_argument("--z-init-noise", type=float, default=0.0,
                   help="with --z-init encoder: seeds start at E(x) + this * N(0, I) (default 0)")
    q.add_argument("--batch-seeds", type=int, default=None, help="seeds per graph call (default: n_seed)")
    q.add_argument("--no-ema", action="store_true", help="export the raw generator even if the run kept an EMA")
    q.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    q.add_argument("--fp16", action="store_true", help="build-engine: fp16 for activations (theta and moments stay fp32)")
    q.set_defaults(func=cmd_export)
