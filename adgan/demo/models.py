"""The demo's workstation jobs: train one generator per class (and its encoder), export
bundles, calibrate thresholds and write the evaluation report. Training is cached."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from adgan.demo.data import Plan, cached, mark
from calibration.calibrate import CalibrateOptions, calibrate as calibrate_bundle
from calibration.evaluate import EvaluateOptions, evaluate


def train_and_export(plan: Plan, progress: bool) -> dict[str, Path]:
    a, bundles = plan.a, {}
    from dataclasses import fields, replace

    from agent.scoring.class_pca import COMPONENTS as CLASS_PCA
    from agent.segment.preprocess import Preprocessing
    from export.bundle import RECIPE_SEARCH, for_start, with_default_seeds, write_bundle
    from training.encoder import train_encoder
    from training.train import TrainConfig, run_training
    for i, cls in enumerate(plan.classes):
        run = plan.out / "cache" / "runs" / cls
        # the Preprocessing fields too: a run made before a field was recorded is trained again
        cfg = {**plan.fingerprint, "class": cls, "kind": a.kind, "size": a.size, "features": a.features,
               "epochs": a.epochs, "seed": a.seed, "preprocessing": sorted(f.name for f in fields(Preprocessing))}
        if cached(run, cfg, "checkpoint.pt"):
            print(f"[2/6] train {cls}: cached in {run}")
        else:
            shutil.rmtree(run, ignore_errors=True)
            print(f"[2/6] train {cls} ({i + 1}/{len(plan.classes)}): {a.kind}, {a.size} px, features {a.features}, "
                  f"{a.epochs} epochs -> {run}", flush=True)
            run_training(TrainConfig(data=str(plan.train_root), cls=cls, kind=a.kind, size=a.size,
                                     features_g=a.features, features_d=a.features, batch_size=32, epochs=a.epochs,
                                     ema=0.99, seed=a.seed, frames=plan.frames("train")), run, progress)
            mark(run, cfg)
        z_init = "random"
        if a.encoder_epochs:
            z_init = "encoder"
            ecfg = {**cfg, "encoder_epochs": a.encoder_epochs}
            marker = run / "encoder-config.json"
            if (run / "encoder.pt").is_file() and marker.is_file() and json.loads(marker.read_text()) == ecfg:
                print(f"[2/6] encoder {cls}: cached in {run}")
            else:
                print(f"[2/6] encoder {cls}: {a.encoder_epochs} epochs (the search starts at E(x))", flush=True)
                train_encoder(run, a.encoder_epochs, a.features, progress=progress)
                marker.write_text(json.dumps(ecfg, sort_keys=True))
        bundles[cls] = plan.out / "bundles" / cls
        given = {f: getattr(a, f) for f in ("pool", "depth_weight") if getattr(a, f) is not None}  # else export's
        search = with_default_seeds(for_start(replace(RECIPE_SEARCH, loss=a.loss, z_init=z_init, **given,
                                                      score_cells=a.score_cells, score_norm=a.score_norm), a.k))
        write_bundle(run, bundles[cls], search, force=True, heat_sigma=None,  # the map as adgan export makes it
                     heat_background=None, class_pca=CLASS_PCA)  # (and its class PCA: Table 2's class check rows)
    print(f"[3/6] bundles (theta scope {search.theta_scope}, loss {a.loss}, depth weight {search.depth_weight:g}, "
          f"pool {search.pool}, score {search.describe_score()}, n_seed {search.n_seed}, k {search.k}, "
          f"{'search from the encoder' if a.encoder_epochs else 'random z'}) -> {plan.out / 'bundles'}")
    return bundles


def calibrate(plan: Plan, bundles: dict[str, Path]) -> Path:
    th = plan.out / "thresholds.json"
    th.unlink(missing_ok=True)
    for cls, b in bundles.items():
        anomalous = [c for c in plan.classes if c != cls]
        if not plan.a.data:
            anomalous.append(f"{cls}_defect")
        calibrate_bundle(CalibrateOptions(str(b), str(plan.test_root / cls),
                                          [str(plan.test_root / c) for c in anomalous], policy=plan.a.policy,
                                          fpr=plan.a.fpr, out=str(th), quiet=True, frames=plan.test_frames))
    how = f"flagging at most {plan.a.fpr:.0%} of the normal parts" if plan.a.policy == "target-fpr" else plan.a.policy
    print(f"[4/6] thresholds ({how}, on the test samples) -> {th}")
    return th


def report(plan: Plan, bundles: dict[str, Path], damage: Path | None = None) -> Path:
    out = plan.out / "report"
    shutil.rmtree(out, ignore_errors=True)
    print(f"[5/6] report: Table 2, ROC, ranking grids{', local damage' if damage else ''} -> {out}")
    evaluate(EvaluateOptions([str(b) for b in bundles.values()], str(out), data=str(plan.test_root),
                             damage=str(damage) if damage else None, frames=plan.test_frames, quiet=True))
    from agent.sources.dataset import frame_numbers, read_sample
    from agent.visual import sample_grid, write_png
    rows, names = [], []
    for cls in plan.classes:
        folder = plan.train_root / cls
        nums = frame_numbers(folder, plan.frames("train"))[:10]
        rows.append([read_sample(folder, n) for n in nums])
        names.append(f"train {cls}")
    write_png(out / "samples.png", sample_grid(rows, names, scale=2))
    for cls in plan.classes:
        latest = plan.out / "cache" / "runs" / cls / "samples" / "latest.png"
        if latest.is_file():
            shutil.copy(latest, out / f"generated-{cls}.png")
    return out
