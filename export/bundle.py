"""Write a model bundle: manifest.json, the ONNX graphs, the initial theta, file hashes."""
from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import replace
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from agent import __version__, durable
from agent.decide.anomaly_map import check_background, check_sigma
from agent.scoring.bundle import BUNDLE_FORMAT, MANIFEST, SearchDefaults, sha256_file
from agent.scoring.bump import Bump, BumpCheck, bump_score
from agent.scoring.class_pca import FILE as CLASS_PCA_FILE, ClassPCA
from agent.scoring.relief import Relief, ReliefCheck, relief_score
from agent.scoring.shape import Shape, ShapeCheck, shape_features
from export.onnx_export import OPSET, export_encoder, export_graphs, loss_io, step_io
from training.model import COLOUR, COLOUR_IDENTITY, Generator
from training.train import generator_from_checkpoint, load_checkpoint

# The search of `adgan export` by default: the recipe measured best on the paper's real
# frames (bench/RESULTS.md, issue 8): start at the run's encoder E(x), score the part's
# own pixels compared on 4x4 cells, adapt z only, one seed, k 19. On 2026-12-01 the default
# was 3 seeds at E(x) + 0.5 N(0, I), k 5 for a few hours, chosen by issue 18's rule (the
# cheapest frontier point as good as this one within one standard error over training seeds,
# in every class) on two classes; with boxes as the third class no cheaper point passes, so
# the rule keeps this search (bench/training_seeds.py, bench/RESULTS.md).
# On 2026-12-02 the loss became the part's or the drawing's pixels ("fg") with depth weighed 3
# times, beside the quadric relief check (RECIPE_RELIEF): by blocked CV (issue 15, "One default
# for every class"), the single setting whose worst class is best on both jobs, where
# fg_input without the check left spheres' class swaps at 0.45 and every class's damage at 0.56-0.58.
# PAPER_SEARCH is Algorithm 1 as the paper runs it.
RECIPE_SEARCH = SearchDefaults(theta_scope="none", loss="fg", depth_weight=3.0, z_init="encoder", z_init_noise=0.0,
                               n_seed=1, seeds_per_call=1, k=19, pool=4)
# The relief check's surface by default (`adgan export` adds the check unless --no-relief or --paper).
RECIPE_RELIEF = "quadric"
# Since 2026-12-03 the relief check leaves 4 pixels of the part's rim out (a depth camera's
# silhouette pixels read as relief; agent.scoring.relief.Relief's own default stays 2, and every
# bundle records the erosion it was referenced with) and the surface shape check is on (`adgan export`
# adds it unless --no-shape or --paper): by blocked CV on the full
# default training, the pair raises every class's worst fold on both jobs, where either alone
# trades one job for the other (issue 15, bench/RESULTS.md "The relief check's rim").
RECIPE_RELIEF_ERODE = 4
# Since 2026-12-03 the anomaly map is smoothed by a Gaussian of 2 pixels per 64 pixels of model input
# (`adgan export --heat-sigma`): by blocked CV on the full default training, the worst fold's pixel
# AUROC rises in every class (boxes 0.892 -> 0.922) and PRO with it, and at no defect size from 0.5x
# to 3x does either fall (issue 15, bench/RESULTS.md "A smoothed anomaly map"). Programmatic
# write_bundle keeps 0 unless asked, like the checks.
RECIPE_HEAT_SIGMA_PER_64 = 2.0
# Since 2026-12-03 the map compares the input's background with the generator's own background
# ("drawn", `adgan export --heat-background`), not -1: the generators draw it near -0.6, which lit
# up every background pixel of the crop. By blocked CV on the full default training the worst
# fold's pixel AUROC rises to 0.990 / 0.986 / 0.960 (sphere / cylinder / box; boxes' stains 0.83 ->
# 0.96), and at sizes 0.5x and 3x no class falls (issue 15, bench/RESULTS.md "The anomaly map
# against the generator's own background"). Programmatic write_bundle keeps "black" unless asked.
RECIPE_HEAT_BACKGROUND = "drawn"
PAPER_SEARCH = SearchDefaults()
# Training parts scored for the relief check's reference: evenly spread over the run's samples.
RELIEF_SAMPLES = 200


def check_out(out: Path, force: bool) -> None:
    """A bundle's --out: new or empty, or (`force`) a bundle, replaced whole, and only when it holds
    nothing a bundle does not (its manifest, graphs, arrays and the engines built from them): a
    folder of bundles, or one where other files were put, is never removed."""
    inner = sorted(p.name for p in out.iterdir() if (p / MANIFEST).is_file()) if out.is_dir() else []
    hint = f" (it holds bundles: {', '.join(inner[:3])}; give the class's own folder, e.g. {out / inner[0]})" \
        if inner else ""
    durable.check_replaceable(out, force, MANIFEST, "adgan export", makes=_in_bundle, hint=hint)


def _in_bundle(p: Path) -> bool:
    return p.name in (MANIFEST, "engines") or (p.is_file() and p.suffix in (".onnx", ".npz"))


def recipe_heat_sigma(size: int) -> float:
    """The export's default smoothing of the anomaly map for a model input of `size` pixels."""
    return RECIPE_HEAT_SIGMA_PER_64 * size / 64


def for_start(search: SearchDefaults, k: int | None = None) -> SearchDefaults:
    """The search for where it starts. The recipe's k and start noise were chosen for the start
    at E(x); a search from random z (asked for, or a run without an encoder) takes the paper's
    k and no start noise instead, unless a k is given."""
    if search.z_init != "random":
        return search if k is None else replace(search, k=k)
    return replace(search, z_init_noise=0.0, k=PAPER_SEARCH.k if k is None else k)


def with_default_seeds(search: SearchDefaults) -> SearchDefaults:
    """n_seed when none was asked for: 1 where every seed would start at the same E(x) (more
    seeds repeat the same search), the paper's 3 for random or noisy starts."""
    n = 1 if search.z_init == "encoder" and search.z_init_noise == 0 else PAPER_SEARCH.n_seed
    return replace(search, n_seed=n, seeds_per_call=n)


def write_bundle(run: str | Path, out: str | Path, search: SearchDefaults, use_ema: bool = True,
                 force: bool = False, data: str | Path | None = None, progress: bool = False,
                 operating_point: dict | None = None, relief: Relief | None = None,
                 relief_samples: int = RELIEF_SAMPLES, shape: Shape | None = None,
                 heat_sigma: float | None = 0.0, heat_background: str | None = "black",
                 bump: Bump | None = None, class_pca: int | None = None) -> dict:
    """Export a training run's generator (and its encoder, for z_init "encoder") as a bundle
    directory. With score_norm "train" the run's training samples (from `data` if the dataset
    moved) are scored once to standardise the local score per cell; with `relief`, up to
    `relief_samples` of them to reference the depth relief check (agent/scoring/relief.py); with
    `shape`, every one's surface shape and the same parts' search scores make the shape check
    (agent/scoring/shape.py). `heat_sigma` smooths the anomaly map (pixels of the model input; None:
    the export's default for the generator's size, `recipe_heat_sigma`); `heat_background` is what the
    map compares the input's background with ("drawn": G's own; "black": -1; None: the export's
    default, RECIPE_HEAT_BACKGROUND). With `bump`, the same parts reference the bump check
    (agent/scoring/bump.py). With `class_pca` (a number of components), every training part makes
    the class's PCA, the class check's model (agent/scoring/class_pca.py)."""
    if heat_sigma is not None:
        check_sigma(heat_sigma)
    heat_background = RECIPE_HEAT_BACKGROUND if heat_background is None else check_background(heat_background)
    checks = relief is not None or shape is not None or bump is not None
    if checks and relief_samples < 2:
        raise ValueError(f"the checks' reference needs at least 2 training samples, got {relief_samples}")
    st = load_checkpoint(run)
    g, which = generator_from_checkpoint(st, use_ema)
    heat_sigma = recipe_heat_sigma(g.arch.size) if heat_sigma is None else heat_sigma
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
    if operating_point is not None:
        info["operating_point"] = operating_point
    if search.score_norm == "none" and not checks and not class_pca:
        return write_generator_bundle(g, out, search, info, force, encoder, heat_sigma=heat_sigma,
                                      heat_background=heat_background)
    # Statistics of the run's own training samples, scored by the runtime's engine and search:
    # per cell to standardise the local score (score_norm "train"), and the search scores and
    # reliefs that the relief check is referenced to. Then the bundle is written with them.
    out = Path(out)
    check_out(out, force)
    from training.data import load_run_data
    cd = load_run_data(st, data, run)
    frames = f"{cd.frames[0]}..{cd.frames[-1]}"
    cell_stats, stats, check, shape_check, bump_check = None, None, None, None, None
    pca = None
    if class_pca:
        fitted = ClassPCA.fit(cd.x.numpy(), class_pca)
        pca = (fitted, fitted.info(len(cd.x), frames))
    with _stats_folder(out) as tmp:
        if search.score_norm != "none":
            one = replace(search, score_norm="none", parts_per_call=1, seeds_per_call=search.n_seed)
            write_generator_bundle(g, Path(tmp) / "b", one, info, False, encoder)
            energies = training_cell_energies(Path(tmp) / "b", cd.x.numpy(), progress)
            cell_stats = cell_statistics(energies)
            stats = {"samples": int(len(energies)), "frames": frames, "sd_floor": SD_FLOOR,
                     "mu_max": round(float(cell_stats[0].max()), 6),
                     "sd_median": round(float(np.median(cell_stats[1])), 6)}
        if checks:
            write_generator_bundle(g, Path(tmp) / "r", search, info, False, encoder, cell_stats, stats)
            x = cd.x.numpy()
            idx = spread(len(x), relief_samples)
            searches = [r.score for _, r in runtime_results(Path(tmp) / "r", x[idx], "training parts", progress)]
            if relief is not None:
                check = ReliefCheck.from_samples(relief, searches, [relief_score(x[i], relief) for i in idx], frames)
            if bump is not None:
                bump_check = BumpCheck.from_samples(bump, searches, [bump_score(x[i], bump) for i in idx], frames)
            if shape is not None:
                shape_check = shape_reference(shape, x, cd.frames, searches, frames)
        # the bundle's graphs are the ones the training parts were just scored with (the same
        # generator, search, encoder and statistics): copied, not exported again
        graphs_from = Path(tmp) / "r" if checks else None
        return write_generator_bundle(g, out, search, info, force, encoder, cell_stats, stats, check, shape_check,
                                      heat_sigma, heat_background, graphs_from=graphs_from, bump=bump_check,
                                      class_pca=pca)


@contextlib.contextmanager
def _stats_folder(out: Path):
    """A scratch folder beside the bundle for the reference bundles the checks' statistics are
    scored with; removed after, and by a later export when a kill left it (durable.folder_beside)."""
    tmp = durable.folder_beside(out, "stats")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def spread(n: int, samples: int) -> np.ndarray:
    """Indices of up to `samples` of n items, evenly spread."""
    if samples < 2 or n < 2:
        raise ValueError(f"a training parts' reference needs at least 2 samples (asked {samples}, the run has {n})")
    return np.unique(np.linspace(0, n - 1, min(samples, n)).round().astype(int))


def shape_reference(params: Shape, x: np.ndarray, frames, search_scores, frame_range: str = "") -> ShapeCheck:
    """The shape check of a bundle from its training parts `x` (N, 4, S, S) and their frame numbers
    (every part with an interior goes into the bank), and the search scores of some of them."""
    feats = [(f, n) for f, n in ((shape_features(xi, params), n) for xi, n in zip(x, frames)) if f is not None]
    if len(feats) < 2:
        raise ValueError(f"the shape check needs at least 2 training parts with {params.min_pixels} interior "
                         f"pixels, the run has {len(feats)}")
    return ShapeCheck.from_samples(params, np.stack([f for f, _ in feats]), [n for _, n in feats], search_scores,
                                   frame_range)


# The deviation of a cell's energy is floored at this fraction of the median deviation of the
# cells the part covers: a cell the training parts almost never reach has a deviation near 0,
# and a new part's rim there must not read as thousands of standard deviations.
SD_FLOOR = 0.5


def cell_statistics(energies: np.ndarray, floor: float = SD_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sd) per cell of the training samples' final cell energies (N, cells); sd floored."""
    if energies.ndim != 2 or len(energies) < 2:
        raise ValueError(f"cell statistics need at least two samples' cell energies, got shape {energies.shape}")
    mu, sd = energies.mean(0), energies.std(0)
    covered = mu > 0
    base = float(np.median(sd[covered])) if covered.any() else 1.0
    return mu, np.sqrt(sd * sd + (floor * max(base, 1e-12)) ** 2)


def runtime_results(bundle_dir: Path, x: np.ndarray, desc: str, progress: bool = True):
    """Yield (x_i, ScoreResult) for training samples x (N, 4, S, S) scored by the bundle's search
    as the runtime runs it (ONNX Runtime, seed 0): what export statistics are made of."""
    from tqdm import tqdm

    from agent.scoring.bundle import Bundle
    from agent.scoring.backend import open_backend
    from agent.scoring.search import Searcher
    b = Bundle.load(bundle_dir)
    scorer = Searcher(b, open_backend(b), 0)
    for xi in tqdm(x, desc=desc, unit="sample", disable=not progress):
        xi = np.ascontiguousarray(xi, np.float32)
        yield xi, scorer.score(xi)


def training_cell_energies(bundle_dir: Path, x: np.ndarray, progress: bool = True) -> np.ndarray:
    """(N, cells): each training sample's cell energies after the bundle's search (ONNX Runtime,
    seed 0: the runtime's own search), as the loss graph's local score computes them."""
    from agent.scoring.bundle import Bundle
    from training.losses import local_cell_energy
    p = Bundle.load(bundle_dir).search
    out = []
    for xi, r in runtime_results(bundle_dir, x, "cell statistics", progress):
        e = local_cell_energy(torch.from_numpy(r.reconstruction[None]), torch.from_numpy(xi[None]), p.loss,
                              p.fg_threshold, p.depth_weight, p.pool)
        out.append(e[0].numpy())
    return np.stack(out).astype(np.float64)


def write_generator_bundle(g: Generator, out: str | Path, search: SearchDefaults, info: dict,
                           force: bool = False, encoder=None, cell_stats: tuple | None = None,
                           stats_info: dict | None = None, relief: ReliefCheck | None = None,
                           shape: ShapeCheck | None = None, heat_sigma: float = 0.0,
                           heat_background: str = "black", graphs_from: Path | None = None,
                           bump: BumpCheck | None = None, class_pca: tuple | None = None) -> dict:
    """Write a bundle for generator `g`; `info` gives class, kind, preprocessing and training;
    `cell_stats` (mu, sd) per cell standardise the local score (search.score_norm "train");
    `relief` is the depth relief check beside the search (the manifest's "relief"), `shape` the
    surface shape check (its "shape"), `bump` the bump check (its "bump"); `heat_sigma` > 0 smooths
    the anomaly map and `heat_background` "drawn" compares the input's background with G's own (its "heat");
    `graphs_from` is a bundle folder written by this function for the same `g`, `search`, `encoder`
    and `cell_stats` (export's reference for the checks): its ONNX graphs are copied, not
    exported again (half an export's time); `class_pca` (ClassPCA, its manifest block) the class
    check's model (its "class_pca")."""
    heat_sigma = check_sigma(heat_sigma)
    heat_background = check_background(heat_background)
    heat = {**({"sigma": round(heat_sigma, 6)} if heat_sigma > 0 else {}),
            **({"background": heat_background} if heat_background != "black" else {})}
    if (search.z_init == "encoder") != (encoder is not None):
        raise ValueError("z_init 'encoder' needs an encoder, and an encoder is only exported with it")
    if (search.score_norm != "none") != (cell_stats is not None):
        raise ValueError("score_norm 'train' needs cell statistics, and they are only exported with it")
    out = Path(out)
    check_out(out, force)
    tmp = durable.folder_beside(out)
    try:
        if graphs_from is None:
            core = export_graphs(g, tmp, search.seeds_per_call, search.theta_scope, search.loss,
                                 search.fg_threshold, search.depth_weight, search.pool, search.score_cells, cell_stats,
                                 x_batch=search.seeds_per_call if search.parts_per_call > 1 else 1)
            trainable, loss_scale = core.trainable, core.loss_scale
        else:
            trainable, loss_scale = _copy_graphs(graphs_from, tmp, search, encoder is not None)
        th = {k: v.numpy().astype(np.float32) for k, v in g.theta().items()}
        if search.theta_scope == COLOUR:  # the colour layer's start: the identity
            th[COLOUR] = np.asarray(COLOUR_IDENTITY, np.float32)
        np.savez(tmp / "theta.npz", **th)
        ins, outs = step_io(trainable)
        lin, lout = loss_io(trainable)
        names = ["step.onnx", "loss.onnx", "theta.npz"]
        graphs = {"opset": OPSET, "seeds_per_call": search.seeds_per_call,
                  "x_batch": search.seeds_per_call if search.parts_per_call > 1 else 1,
                  "loss_scale": loss_scale,  # gradients in the step graph are this times the true ones
                  "step": {"file": "step.onnx", "inputs": ins, "outputs": outs},
                  "loss": {"file": "loss.onnx", "inputs": lin, "outputs": lout}}
        if encoder is not None:
            if graphs_from is None:
                export_encoder(encoder, tmp)
            names.append("encoder.onnx")
            graphs["encoder"] = {"file": "encoder.onnx", "inputs": ["x"], "outputs": ["z"]}
        if cell_stats is not None:
            np.savez(tmp / "cell_stats.npz", mu=np.asarray(cell_stats[0], np.float64),
                     sd=np.asarray(cell_stats[1], np.float64))
            names.append("cell_stats.npz")
        if class_pca is not None:
            class_pca[0].save(tmp)
            names.append(CLASS_PCA_FILE)
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
            "theta": {"file": "theta.npz", "trainable": trainable, "all": sorted(th)},
            "training": info.get("training", {}),
            **({"operating_point": info["operating_point"]} if "operating_point" in info else {}),
            **({"score_stats": {"file": "cell_stats.npz", **(stats_info or {})}} if cell_stats is not None else {}),
            **({"relief": relief.to_dict()} if relief is not None else {}),
            **({"bump": bump.to_dict()} if bump is not None else {}),
            **({"shape": shape.to_dict()} if shape is not None else {}),
            **({"heat": heat} if heat else {}),
            **({"class_pca": class_pca[1]} if class_pca is not None else {}),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is read by the agent's user
        durable.replace_folder(tmp, out)  # (a kill or a power cut leaves the old bundle or the new one, whole)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _copy_graphs(src: Path, dst: Path, search: SearchDefaults, with_encoder: bool) -> tuple[list[str], float]:
    """Copy a bundle's ONNX graphs written for the same generator and search into `dst`; returns
    their trainable parameter names and loss scale (from its manifest)."""
    m = json.loads((src / MANIFEST).read_text())
    if m["search"] != search.to_dict() or ("encoder" in m["graphs"]) != with_encoder:
        raise ValueError(f"{src}: its graphs were exported for another search; they cannot be reused")
    for name in ("step.onnx", "loss.onnx", *(["encoder.onnx"] if with_encoder else [])):
        shutil.copyfile(src / name, dst / name)
    return list(m["theta"]["trainable"]), float(m["graphs"]["loss_scale"])
