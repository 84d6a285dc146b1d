"""Write a model bundle: manifest.json, the ONNX graphs, the initial theta, file hashes."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from adgan import __version__
from agent.scoring.bundle import BUNDLE_FORMAT, MANIFEST, SearchDefaults, sha256_file
from export.graphs import generator_theta
from export.onnx_export import OPSET, export_encoder, export_graphs, loss_io, step_io
from training.model import Architecture, Generator
from training.train import load_checkpoint

# The search of `adgan export` by default: the recipe measured best on the paper's real
# frames (bench/RESULTS.md, issue 8): start at the run's encoder E(x), score the part's
# own pixels compared on 4x4 cells, adapt z only. PAPER_SEARCH is Algorithm 1 as the paper runs it.
RECIPE_SEARCH = SearchDefaults(theta_scope="none", loss="fg_input", z_init="encoder", n_seed=1, batch_seeds=1, pool=4)
PAPER_SEARCH = SearchDefaults()


def with_default_seeds(search: SearchDefaults) -> SearchDefaults:
    """n_seed when none was asked for: 1 where every seed would start at the same E(x) (more
    seeds repeat the same search), the paper's 3 for random or noisy starts."""
    n = 1 if search.z_init == "encoder" and search.z_init_noise == 0 else PAPER_SEARCH.n_seed
    return replace(search, n_seed=n, batch_seeds=n)


def generator_from_checkpoint(st: dict, use_ema: bool = True) -> tuple[Generator, str]:
    arch = Architecture.from_dict(st["architecture"])
    g = Generator(arch)
    which = "generator_ema" if use_ema and st.get("generator_ema") is not None else "generator"
    g.load_state_dict(st[which])
    return g.eval(), which


def write_bundle(run: str | Path, out: str | Path, search: SearchDefaults, use_ema: bool = True,
                 force: bool = False) -> dict:
    """Export a training run's generator (and its encoder, for z_init "encoder") as a bundle directory."""
    st = load_checkpoint(run)
    g, which = generator_from_checkpoint(st, use_ema)
    info = {"class": st["config"]["cls"], "kind": st["config"]["kind"], "preprocessing": st["preprocessing"],
            "training": {"run": str(Path(run).resolve()), "weights": which, "epoch": st["epoch"],
                         "g_steps": st["g_steps"], "data": {k: v for k, v in st["data"].items() if k != "frames"}}}
    encoder = None
    if search.z_init == "encoder":
        from training.encoder import load_encoder
        encoder, est = load_encoder(run)
        trained_for = est.get("generator_g_steps")  # absent in encoders written before it was recorded
        if trained_for is not None and trained_for != st["g_steps"]:
            raise ValueError(f"{run}: the encoder was trained for the generator at step {trained_for}, the run is "
                             f"now at step {st['g_steps']}; retrain it with 'adgan train-encoder {run} --epochs N'")
        if est["generator_weights"] != which:
            raise ValueError(f"{run}: the encoder was trained for the {est['generator_weights']} weights, "
                             f"the bundle exports the {which} weights")
        info["training"]["encoder"] = {k: est[k] for k in ("epochs", "loss", "fg_threshold", "features", "seed")}
    return write_generator_bundle(g, out, search, info, force, encoder)


def write_generator_bundle(g: Generator, out: str | Path, search: SearchDefaults, info: dict,
                           force: bool = False, encoder=None) -> dict:
    """Write a bundle for generator `g`; `info` gives class, kind, preprocessing and training."""
    if (search.z_init == "encoder") != (encoder is not None):
        raise ValueError("z_init 'encoder' needs an encoder, and an encoder is only exported with it")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} exists and is not empty; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        core = export_graphs(g, tmp, search.batch_seeds, search.theta_scope, search.loss, search.fg_threshold,
                             search.depth_weight, search.pool, search.score_cells)
        th = {k: v.numpy().astype(np.float32) for k, v in generator_theta(g).items()}
        np.savez(tmp / "theta.npz", **th)
        ins, outs = step_io(core.trainable)
        lin, lout = loss_io(core.trainable)
        names = ["step.onnx", "loss.onnx", "theta.npz"]
        graphs = {"opset": OPSET, "seeds_per_call": search.batch_seeds,
                  "step": {"file": "step.onnx", "inputs": ins, "outputs": outs},
                  "loss": {"file": "loss.onnx", "inputs": lin, "outputs": lout}}
        if encoder is not None:
            export_encoder(encoder, tmp)
            names.append("encoder.onnx")
            graphs["encoder"] = {"file": "encoder.onnx", "inputs": ["x"], "outputs": ["z"]}
        files = {f: sha256_file(tmp / f) for f in names}
        manifest = {
            "format": BUNDLE_FORMAT,
            "producer": f"adgan-edge {__version__}",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "class": info["class"],
            "kind": info["kind"],
            "architecture": g.arch.to_dict(),
            "preprocessing": info["preprocessing"],
            "search": search.to_dict(),
            "graphs": graphs,
            "theta": {"file": "theta.npz", "trainable": core.trainable, "all": sorted(th)},
            "training": info.get("training", {}),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is read by the agent's user
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def torch_generator_from_bundle(bundle) -> Generator:
    """Rebuild the generator (eval mode) from a loaded bundle's architecture and theta."""
    arch = Architecture.from_dict(bundle.manifest["architecture"])
    g = Generator(arch).eval()
    th = bundle.theta
    mods = list(g.net)
    i = j = 0
    with torch.no_grad():
        while j < len(mods):
            mods[j].weight.copy_(torch.from_numpy(th[f"w{i}"]))
            if j + 1 < len(mods) and isinstance(mods[j + 1], torch.nn.BatchNorm2d):
                bn = mods[j + 1]
                bn.weight.copy_(torch.from_numpy(th[f"gamma{i}"]))
                bn.bias.copy_(torch.from_numpy(th[f"beta{i}"]))
                bn.running_mean.copy_(torch.from_numpy(th[f"mean{i}"]))
                bn.running_var.copy_(torch.from_numpy(th[f"var{i}"]))
                j += 3
            else:
                mods[j].bias.copy_(torch.from_numpy(th[f"bias{i}"]))
                j += 2
            i += 1
    return g
