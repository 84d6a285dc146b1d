"""`adgan export`: a training run -> a model bundle; `adgan export build-engine`: TensorRT engines."""
from __future__ import annotations

import argparse

COLOUR = "colour"  # training.model.COLOUR, without importing torch to read the command line
COLOUR_LR = 5e-2  # --lr-theta for --theta-scope colour: z's, as the search it was measured with

USAGE = ("adgan export RUN --out BUNDLE [--paper] [--theta-scope all|bn|none|colour] [--loss mse|fg|fg_input] "
         "[--relief-surface plane|quadric | --no-relief] [--no-shape] [--bump] [options]\n"
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
    from dataclasses import fields, replace
    from pathlib import Path

    from export.bundle import (PAPER_SEARCH, RECIPE_RELIEF, RECIPE_RELIEF_ERODE, RECIPE_SEARCH, check_out,
                               for_start, with_default_seeds, write_bundle)
    from training.encoder import ENCODER_FILE

    if a.budget_ms is not None and a.operating_point:
        raise ValueError("give --budget-ms or --operating-point, not both")
    pointed = a.budget_ms is not None or a.operating_point
    if pointed:
        from export.operating_point import POINT_FIELDS
        clash = [f"--{n.replace('_', '-')}" for n in sorted(POINT_FIELDS) if getattr(a, n, None) is not None]
        if clash or a.paper:
            raise ValueError(f"--budget-ms and --operating-point choose the search: drop {clash or ['--paper']}")
    base = PAPER_SEARCH if a.paper else RECIPE_SEARCH
    given = {f.name: getattr(a, f.name) for f in fields(base) if getattr(a, f.name, None) is not None}
    if given.get("z_init") == "auto":
        del given["z_init"]
    if given.get("theta_scope") == COLOUR and "lr_theta" not in given:  # the paper's 6e-9 would not move it
        given["lr_theta"] = COLOUR_LR
    parts = given.pop("parts_per_call", 1)  # set last: it fixes seeds per call from n_seed
    search = replace(base, **given)
    if search.z_init == "encoder" and a.z_init != "encoder" and Path(a.run).exists():  # (no run: said below)
        run_dir = Path(a.run) if Path(a.run).is_dir() else Path(a.run).parent
        if not (run_dir / ENCODER_FILE).is_file():  # auto: the run has no encoder, start at random z
            print(f"note: {run_dir} has no encoder ({ENCODER_FILE}); the search starts at random z "
                  f"('adgan train-encoder {a.run} --epochs 100' adds one)")
            search = replace(search, z_init="random")
    search = for_start(search, given.get("k"))
    if "n_seed" not in given:
        search = with_default_seeds(search)
    if "seeds_per_call" not in given:
        search = replace(search, seeds_per_call=search.n_seed)
    if parts != 1:
        search = replace(search, parts_per_call=parts, seeds_per_call=given.get("seeds_per_call", search.n_seed * parts))
    # the relief check: settled before any work (an operating point times searches first)
    relief = None
    if a.relief and a.no_relief:
        raise ValueError("give --relief or --no-relief, not both")
    if a.relief or not (a.no_relief or a.paper):  # the recipe has the check; the paper's Algorithm 1 has none
        from agent.scoring.relief import Relief
        relief = Relief(surface=a.relief_surface or RECIPE_RELIEF,
                        erode=RECIPE_RELIEF_ERODE if a.relief_erode is None else a.relief_erode)
    elif a.relief_surface is not None or a.relief_erode is not None:
        why = "--no-relief leaves the check out" if a.no_relief else "--paper has no relief check: add --relief"
        raise ValueError(f"--relief-surface and --relief-erode set the relief check; {why}")
    if a.shape and a.no_shape:
        raise ValueError("give --shape or --no-shape, not both")
    shape = None
    if a.shape or not (a.no_shape or a.paper):  # the recipe has the check; the paper's Algorithm 1 has none
        from agent.scoring.shape import Shape
        shape = Shape()
    bump = None
    if a.bump:  # (opt-in: bench/RESULTS.md, "A local relief screen")
        from agent.scoring.bump import Bump
        bump = Bump()
    if a.relief_samples is not None and relief is None and shape is None and bump is None:
        left = [flag for flag, on in (("--paper", a.paper), ("--no-relief", a.no_relief), ("--no-shape", a.no_shape))
                if on]
        why = "--paper has neither: add --relief or --shape" if left == ["--paper"] \
            else " and ".join(left) + " leave both out"
        raise ValueError(f"--relief-samples sets the relief and shape checks' reference; {why}")
    if a.heat_sigma is not None:  # the bundle's own check, named by the flag (a NaN or inf is refused too)
        from agent.decide.anomaly_map import check_sigma
        try:
            check_sigma(a.heat_sigma)
        except ValueError:
            raise ValueError(f"--heat-sigma must be a number >= 0 (pixels of the model input; 0: the map "
                             f"unsmoothed), got {a.heat_sigma:g}") from None
    # the map's smoothing: the recipe's for the generator's size unless asked; the paper has no maps
    heat_sigma = a.heat_sigma if a.heat_sigma is not None else (0.0 if a.paper else None)
    heat_background = a.heat_background if a.heat_background is not None else ("black" if a.paper else None)
    if a.class_pca is not None and a.class_pca < 0:
        raise ValueError(f"--class-pca must be a number of components >= 0 (0 leaves it out), got {a.class_pca}")
    from agent.scoring.class_pca import COMPONENTS
    class_pca = a.class_pca if a.class_pca is not None else (0 if a.paper else COMPONENTS)
    from training.cli import run_lock
    run_dir = Path(a.run) if Path(a.run).is_dir() else Path(a.run).parent
    with run_lock(run_dir, writes=False):  # (not while a training writes it)
        record = None
        if pointed:
            from export.operating_point import pick_for_run
            out = Path(a.out)
            check_out(out, a.force)
            out.parent.mkdir(parents=True, exist_ok=True)
            search, record = pick_for_run(
                a.run, out, search, a.budget_ms, a.operating_point, a.operating_points,
                lambda s, d: write_bundle(a.run, d, s, use_ema=not a.no_ema, data=a.data), a.threads)
            print(f"operating point {record['name']!r} ({record['asked']}): {record['measured_ms']} ms per score here "
                  f"(default {record['default_ms']} ms), validated quality {record['quality'].get('quality', '?')}")
        m = write_bundle(a.run, a.out, search, use_ema=not a.no_ema, force=a.force, data=a.data, progress=True,
                         operating_point=record, relief=relief, shape=shape, bump=bump, heat_sigma=heat_sigma,
                         heat_background=heat_background, class_pca=class_pca or None,
                         **({"relief_samples": a.relief_samples} if a.relief_samples is not None else {}))
    s = search
    print(f"exported {m['class']} ({m['kind']}, {m['training']['weights']}, epoch {m['training']['epoch']}) "
          f"-> {a.out}: theta scope {s.theta_scope}, loss {s.loss}, depth weight {s.depth_weight:g}, pool {s.pool}, "
          f"score {s.describe_score()}, "
          f"n_seed {s.n_seed}, k {s.k}, z_init {s.z_init}"
          + (f", {s.parts_per_call} parts per call" if s.parts_per_call > 1 else ""))
    if "relief" in m:
        ref = m["relief"]["reference"]
        print(f"depth relief check ({m['relief']['surface']}, erode {m['relief']['erode']}): referenced to "
              f"{ref['samples']} training parts (relief median "
              f"{ref['relief_median']:.4g}, spread {ref['relief_scale']:.4g}; search median {ref['search_median']:.4g}, "
              f"spread {ref['search_scale']:.4g})")
    if "bump" in m:
        ref = m["bump"]["reference"]
        print(f"bump check (local median {m['bump']['k']} px): referenced to {ref['samples']} training parts (bump "
              f"median {ref['relief_median']:.4g}, spread {ref['relief_scale']:.4g})")
    hb = m.get("heat", {})
    print("anomaly map: " + (f"smoothed by a Gaussian of {hb['sigma']:g} px of the {m['architecture']['size']} "
                              f"px input" if "sigma" in hb else "unsmoothed")
          + ("; background against the generator's own" if hb.get("background") == "drawn" else "; background against -1"))
    if "class_pca" in m:
        cp = m["class_pca"]
        print(f"class PCA: {cp['components']} axes of {cp['samples']} training parts (pooled {cp['pool']} x "
              f"{cp['pool']}), the class check's model ('adgan calibrate --class-check')")
    if "shape" in m:
        ref = m["shape"]["reference"]
        print(f"surface shape check: {ref['samples']} training parts' shapes (distance median {ref['shape_median']:.4g}, "
              f"spread {ref['shape_scale']:.4g}; search spread {ref['search_scale']:.4g})")
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
    q.add_argument("--paper", action="store_true",
                   help="Algorithm 1 as the paper runs it (theta scope all, loss mse, random z, no relief or shape "
                        "check) instead of the measured recipe (scope none, loss fg with depth weight 3, start at "
                        "E(x), the quadric relief check and the shape check); options given still apply")
    q.add_argument("--theta-scope", choices=("all", "bn", "none", COLOUR), default=None,
                   help="what adapts besides z: all theta (the paper), BatchNorm affine only, nothing (default "
                        "none), or colour: a colour layer after G (each part's RGB as M G(z) + b, starting at the "
                        f"identity; --lr-theta defaults to {COLOUR_LR:g} for it)")
    q.add_argument("--loss", choices=("mse", "fg", "fg_input"), default=None,
                   help="mse over the whole image (the paper); fg (default): over pixels where the sample or G(z) "
                        "is foreground, so a part of another outline counts where G draws one; fg_input: over the "
                        "sample's own object pixels (the default until 2026-12-02)")
    q.add_argument("--n-seed", type=int, default=None,
                   help="latent seeds per sample (paper: 3; default 1 when the search starts at E(x) without "
                        "noise, where every seed would run the same search, else 3)")
    q.add_argument("--k", type=int, default=None,
                   help="Adam steps per seed (default 5 from E(x); from random z, and the paper: 19; 0: no search, "
                        "the score of G(E(x)) from the encoder alone, as f-AnoGAN scores)")
    q.add_argument("--lr-z", type=float, default=None, help="Adam learning rate of z (default and paper: 5e-2)")
    q.add_argument("--lr-theta", type=float, default=None,
                   help=f"Adam learning rate of theta (paper: 6e-9; with --theta-scope colour: {COLOUR_LR:g})")
    q.add_argument("--fg-threshold", type=float, default=None,
                   help="G(z) depth above this is foreground (loss fg; default -0.9)")
    q.add_argument("--depth-weight", type=float, default=None,
                   help="weight of the depth channel's squared error against each RGB channel's (default 3; "
                        "1: a plain mean, the paper)")
    q.add_argument("--pool", type=int, default=None,
                   help="compare on POOL x POOL cells: the residual averaged over each cell's counted pixels, "
                        "then squared, so pixel noise and texture a pixel off cancel (a power of two; 1: per "
                        "pixel, the paper)")
    q.add_argument("--score-cells", type=int, default=None,
                   help="the score: 0 (default) the search's loss, a mean over the part; K the mean of the K "
                        "cells (of --pool size) that differ most, so that damage to a small area counts")
    from agent.scoring.bundle import SCORE_NORMS
    q.add_argument("--score-norm", choices=SCORE_NORMS, default=None,
                   help="with --score-cells: 'train' standardises each cell's energy against the run's own "
                        "training samples, scored once at export ((energy - mean) / deviation per cell), so a "
                        "cell counts by how unusual it is there; none (default): raw energies")
    q.add_argument("--relief", action="store_true",
                   help="the depth relief check beside the search (the default; with --paper it adds the check): a "
                        "part's surface pushed in behind a smooth surface (--relief-surface) fitted robustly to its "
                        "interior (a dent, a hole, a pit) raises its score, as unusual against the run's training "
                        "parts as the search's score is (the score is the larger of the two); the training parts "
                        "are scored once at export for the reference, so export needs the run's training data")
    q.add_argument("--no-relief", action="store_true",
                   help="leave the relief check out (with --no-shape too, the score is the search's alone and "
                        "export needs no training data)")
    q.add_argument("--relief-surface", choices=("plane", "quadric"), default=None,
                   help="the relief check's smooth surface fitted to the part's depth: quadric (default) follows a "
                        "curved face or two faces meeting at an edge (a box seen at an angle); plane keeps a wide, "
                        "shallow dent that a quadric partly fits away, for flat faces; choose it per class by "
                        "blocked CV")
    q.add_argument("--relief-erode", type=int, default=None, metavar="PX",
                   help="pixels of the model input left out inside the part's outline before the relief check "
                        "fits its surface (default 4; 2 until 2026-12-03): a depth camera's pixels on a silhouette "
                        "lie between the part and what is behind it, so a rim left in reads as relief (blocked CV "
                        "with the shape check: bench/RESULTS.md, 'The relief check's rim')")
    q.add_argument("--relief-samples", type=int, default=None,
                   help="training parts scored for the relief and shape checks' reference, evenly spread (default 200)")
    q.add_argument("--shape", action="store_true",
                   help="the surface shape check beside the search (the default since 2026-12-03; with --paper it "
                        "adds the check): the shape of the part's depth (its curvatures, slope, how well a quadric "
                        "explains it, its aspect) against the run's training parts' (the mean distance to the 5 "
                        "nearest); a part shaped like none of them gains as many of the training parts' "
                        "search-score spreads as its distance lies spreads above theirs. Export needs the run's "
                        "training data")
    q.add_argument("--no-shape", action="store_true",
                   help="leave the shape check out (the defaults until 2026-12-03, with --relief-erode 2 "
                        "--heat-sigma 0)")
    q.add_argument("--class-pca", type=int, default=None, metavar="N",
                   help="components of the class's PCA, fitted on every training part and written into the bundle "
                        "for the class check of a station with several products ('adgan calibrate --class-check'); "
                        "it does not change the score (default 16; 0 leaves it out; --paper: 0)")
    q.add_argument("--bump", action="store_true",
                   help="add the bump check (opt-in, not a default): a part's surface pushed towards the camera "
                        "(a bump, a blister, a bead of glue), against the depth's own median over 15 px, depth "
                        "dropouts left out, raises its score as the relief check's dents do; the relief check sees "
                        "only surface pushed away. On three bundles it lifted bumps from chance to 0.68-0.86 and "
                        "cost our own damage 0.00-0.02 and the cylinders' class swaps 0.03 (bench/RESULTS.md, 'A "
                        "local relief screen'). Export needs the run's training data")
    q.add_argument("--heat-sigma", type=float, default=None, metavar="PX",
                   help="smooth the anomaly map (events' map and box, evaluate's pixel AUROC, PRO and figures) by "
                        "a Gaussian of PX pixels of the model input (default 2 per 64 px of input, since "
                        "2026-12-03; 0 or --paper: unsmoothed, as before): by blocked CV it raises pixel AUROC and "
                        "PRO in every class (bench/RESULTS.md, 'A smoothed anomaly map'); the score is not changed")
    q.add_argument("--heat-background", choices=("drawn", "black"), default=None,
                   help="what the anomaly map compares the input's background with: drawn (the default since "
                        "2026-12-03): the generator's own background, its median there; black (--paper, and "
                        "bundles before): -1. The generators draw the background near -0.6, so against -1 every "
                        "background pixel of the crop reads hot; by blocked CV drawn raises pixel AUROC and PRO "
                        "(bench/RESULTS.md, 'The anomaly map against the generator's own background'); the score "
                        "is not changed")
    q.add_argument("--data", default=None,
                   help="the dataset root, if the run's training data has moved (the relief and shape checks and "
                        "--score-norm train read the training parts)")
    q.add_argument("--z-init", choices=("auto", "random", "encoder"), default="auto",
                   help="start of the search: the run's encoder E(x) (adgan train trains one) or random "
                        "z ~ N(0, I) (the paper); auto (default): the encoder when the run has one, else random "
                        "(with --paper: random)")
    q.add_argument("--z-init-noise", type=float, default=None,
                   help="with the encoder start: seeds start at E(x) + this * N(0, I) (default 0.5; 0: every "
                        "seed starts at E(x), so one seed is enough)")
    q.add_argument("--seeds-per-call", "--batch-seeds", dest="seeds_per_call", type=int, default=None,
                   help="seeds per graph call, the graphs' batch (default: n_seed; '--batch-seeds' is the old "
                        "spelling)")
    q.add_argument("--parts-per-call", type=int, default=None,
                   help="parts scored together in one graph call (default 1): a station that sees several "
                        "parts per frame, or a re-inspection queue, scores up to P parts for about the cost of "
                        "one call; every slot gets its own part, seeds per call becomes P * n_seed")
    q.add_argument("--budget-ms", type=float, default=None,
                   help="choose the search: the validated operating point (bench/frontier.py, blocked "
                        "cross-validation) of highest quality whose cost, timed here on ONNX Runtime with the run's "
                        "generator, fits B ms per score; the choice and its cost go into the manifest")
    from export.operating_point import NAMED
    q.add_argument("--operating-point", choices=NAMED, default=None,
                   help="choose the search by name: fast (the cheapest point on the validated Pareto front), "
                        "default, best (the highest validated quality); its cost here goes into the manifest")
    q.add_argument("--operating-points", default=None, metavar="FILE",
                   help="the validated points (default: the shipped export/operating_points.json; "
                        "bench/frontier.py writes one)")
    q.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime threads when timing an operating point (default 0: all cores, as the agent)")
    q.add_argument("--no-ema", action="store_true", help="export the raw generator even if the run kept an EMA")
    q.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    q.add_argument("--fp16", action="store_true", help="build-engine: fp16 for activations (theta and moments stay fp32)")
    q.set_defaults(func=cmd_export)
