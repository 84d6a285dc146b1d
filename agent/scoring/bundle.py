"""Model bundles: one directory per class model, refused unless every hash matches.

    manifest.json  format, class, GAN kind, architecture, preprocessing, search defaults,
                   graph I/O, sha256 of every file, producer
    step.onnx      one Adam iteration of Algorithm 1 (explicit backward)
    loss.onnx      (x, z, theta) -> loss per seed and G(z)
    theta.npz      the generator's theta and BatchNorm running statistics
    engines/       TensorRT engines built on the device (each with a .json sidecar that
                   names the bundle hash it was built from)
The bundle's identity (`bundle_hash`) is the sha256 of manifest.json, which holds the
hashes of everything else.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from agent.decide.anomaly_map import check_background, check_sigma
from agent.records import Record, record
from agent.scoring.bump import BumpCheck
from agent.scoring.class_pca import ClassPCA
from agent.scoring.relief import ReliefCheck
from agent.scoring.shape import ShapeCheck
from agent.segment.preprocess import Preprocessing

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
# what adapts besides z: all theta, BatchNorm affine, nothing, or a colour layer after G (training.model)
ThetaScope = Literal["all", "bn", "none", "colour"]
LossName = Literal["mse", "fg", "fg_input"]  # the reconstruction loss (training/losses.py defines each)
THETA_SCOPES: tuple[str, ...] = get_args(ThetaScope)
LOSSES: tuple[str, ...] = get_args(LossName)
Z_INITS = ("random", "encoder")
SCORE_NORMS = ("none", "train")


class BundleError(ValueError):
    """A bundle that must not be used: missing, tampered with, or of another format."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@record
class SearchDefaults(Record):
    """Algorithm 1's hyperparameters as exported (the paper's values by default)."""

    n_seed: int = 3
    k: int = 19
    lr_z: float = 5e-2
    lr_theta: float = 6e-9
    theta_scope: ThetaScope = "all"
    loss: LossName = "mse"
    fg_threshold: float = -0.9  # G(z) depth above this counts as foreground (loss "fg")
    seeds_per_call: int = 3     # seeds per graph call, the graphs' batch (static for theta scope "all");
                                # older manifests call it batch_seeds (from_dict)
    z_init: str = "random"      # "random": z0 ~ N(0, I) (the paper); "encoder": z0 = E(x) (+ noise)
    z_init_noise: float = 0.0   # with "encoder": z0 = E(x) + z_init_noise * N(0, I) per seed
    depth_weight: float = 1.0   # squared error of depth vs each RGB channel (1: a plain mean)
    pool: int = 1               # compare on pool x pool cells, the residual averaged over each cell's counted pixels (1: per pixel)
    score_cells: int = 0        # 0: the score is the search's loss; K: the mean of the K cells that differ most
    score_norm: str = "none"    # "train": each cell's energy standardised against the training frames' (score_stats)
    parts_per_call: int = 1     # parts scored in one graph call: > 1 gives every slot its own x, and
                                # seeds_per_call = parts_per_call * n_seed (Searcher.score_batch)

    def __post_init__(self) -> None:
        if self.n_seed < 1 or self.k < 0 or self.seeds_per_call < 1:
            raise ValueError("n_seed and seeds_per_call must be >= 1, k >= 0")
        if not (0 <= self.lr_z < float("inf") and 0 <= self.lr_theta < float("inf")):
            raise ValueError(f"learning rates must be finite numbers >= 0, got lr_z {self.lr_z}, "
                             f"lr_theta {self.lr_theta}")
        if self.theta_scope not in THETA_SCOPES:
            raise ValueError(f"theta_scope must be one of {THETA_SCOPES}, got {self.theta_scope!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not -1 < self.fg_threshold < 1:
            raise ValueError(f"fg_threshold must be in (-1, 1), got {self.fg_threshold}")
        if self.z_init not in Z_INITS:
            raise ValueError(f"z_init must be one of {Z_INITS}, got {self.z_init!r}")
        if not 0 <= self.z_init_noise < float("inf"):
            raise ValueError(f"z_init_noise must be >= 0, got {self.z_init_noise}")
        if self.k == 0 and self.z_init != "encoder":
            raise ValueError("k 0 scores G(E(x)) without a search (the encoder alone, as f-AnoGAN): "
                             "it needs z_init 'encoder'")
        if not 0 < self.depth_weight < float("inf"):
            raise ValueError(f"depth_weight must be a finite number > 0, got {self.depth_weight}")
        if self.score_cells < 0:
            raise ValueError(f"score_cells must be >= 0 (0: the mean loss), got {self.score_cells}")
        if self.score_norm not in SCORE_NORMS:
            raise ValueError(f"score_norm must be one of {SCORE_NORMS}, got {self.score_norm!r}")
        if self.score_norm != "none" and not self.score_cells:
            raise ValueError("score_norm 'train' standardises the local score: it needs score_cells K > 0")
        if self.parts_per_call < 1:
            raise ValueError(f"parts_per_call must be >= 1, got {self.parts_per_call}")
        if self.parts_per_call > 1 and self.seeds_per_call != self.parts_per_call * self.n_seed:
            raise ValueError(f"{self.parts_per_call} parts per call of {self.n_seed} seeds each need seeds_per_call "
                             f"{self.parts_per_call * self.n_seed}, got {self.seeds_per_call}")
        if not (1 <= self.pool <= 32 and self.pool & (self.pool - 1) == 0):
            raise ValueError(f"pool must be a power of two from 1 to 32 (it divides every image size), got {self.pool}")

    @classmethod
    def from_dict(cls, d: dict) -> "SearchDefaults":
        """The search of a manifest; older manifests name seeds per call `batch_seeds`."""
        if isinstance(d, dict) and "batch_seeds" in d:
            d = {k: v for k, v in d.items() if k != "batch_seeds"} | {"seeds_per_call": d["batch_seeds"]}
        return super().from_dict(d)

    def describe_score(self) -> str:
        """The image score, in words (reports and logs)."""
        if not self.score_cells:
            return "mean"
        return f"top {self.score_cells} cells" + (" standardised" if self.score_norm != "none" else "")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _is_names(v) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) for n in v)


def _is_graph(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("file"), str) and _is_names(v.get("inputs")) \
        and _is_names(v.get("outputs"))


# what Bundle reads from a manifest, and the kind each must be (a manifest edited by hand or damaged
# in a way JSON still parses ended in a TypeError, KeyError or AttributeError naming nothing)
STRUCTURE = {
    ("files",): lambda v: isinstance(v, dict) and all(isinstance(d, str) for d in v.values()),
    ("class",): lambda v: isinstance(v, str), ("kind",): lambda v: isinstance(v, str),
    ("architecture", "nz"): _is_count, ("architecture", "size"): _is_count, ("architecture", "channels"): _is_count,
    ("preprocessing",): lambda v: isinstance(v, dict), ("search",): lambda v: isinstance(v, dict),
    ("graphs", "seeds_per_call"): _is_count, ("graphs", "step"): _is_graph, ("graphs", "loss"): _is_graph,
    ("theta", "file"): lambda v: isinstance(v, str), ("theta", "trainable"): _is_names,
}
OPTIONAL = {("graphs", "x_batch"): _is_count, ("graphs", "encoder"): _is_graph,
            ("score_stats", "file"): lambda v: isinstance(v, str)}


def check_structure(manifest: dict, mf: Path) -> None:
    """BundleError naming the first entry of `manifest` that is missing or of the wrong kind."""
    for table, optional in ((STRUCTURE, False), (OPTIONAL, True)):
        for keys, ok in table.items():
            v = manifest
            for k in keys:
                if not isinstance(v, dict):
                    raise BundleError(f"{mf}: '{'.'.join(keys[:-1])}' must be an object, got {v!r:.60}")
                if k not in v:
                    if optional:
                        break
                    raise BundleError(f"{mf}: missing '{'.'.join(keys)}'")
                v = v[k]
            else:
                if not ok(v):
                    raise BundleError(f"{mf}: '{'.'.join(keys)}' is not of its kind: {v!r:.60}")


def b_search_z_init(manifest: dict) -> str:
    return (manifest.get("search") or {}).get("z_init", "random")


class Bundle:
    """A verified bundle directory. Construct with `Bundle.load(path)`."""

    def __init__(self, path: Path, manifest: dict, bundle_hash: str, theta: dict[str, np.ndarray]) -> None:
        self.path, self.manifest, self.bundle_hash, self.theta = path, manifest, bundle_hash, theta
        self.search = SearchDefaults.from_dict(manifest["search"])
        self.preprocessing = Preprocessing.from_dict(manifest["preprocessing"])
        self.cls: str = manifest["class"]
        self.kind: str = manifest["kind"]
        arch = manifest["architecture"]
        self.nz: int = int(arch["nz"])
        self.size: int = int(arch["size"])
        self.channels: int = int(arch["channels"])
        self.trainable: list[str] = list(manifest["theta"]["trainable"])
        self.seeds_per_call: int = int(manifest["graphs"]["seeds_per_call"])
        self.parts_per_call: int = self.search.parts_per_call
        # the graphs' x: one part for every slot (1), or one per slot (parts_per_call > 1)
        self.x_batch: int = int(manifest["graphs"].get("x_batch", 1))
        if self.x_batch not in (1, self.seeds_per_call) or (self.search.parts_per_call > 1) != (self.x_batch > 1):
            raise ValueError(f"graphs' x batch {self.x_batch} does not fit {self.search.parts_per_call} parts per "
                             f"call of {self.seeds_per_call} slots")
        self.cell_stats: tuple[np.ndarray, np.ndarray] | None = None  # (mu, sd) per cell, score_norm "train"
        # the class's PCA, the class check's model (agent/scoring/class_pca.py); none in bundles before 2026-12-08
        self.class_pca: ClassPCA | None = None
        # the depth relief check beside the search (agent/scoring/relief.py), when exported with it
        self.relief: ReliefCheck | None = ReliefCheck.from_dict(manifest["relief"]) if manifest.get("relief") else None
        # the bump check (agent/scoring/bump.py), when exported with it (adgan export --bump)
        self.bump: BumpCheck | None = BumpCheck.from_dict(manifest["bump"]) if manifest.get("bump") else None
        # the surface shape check (agent/scoring/shape.py), when exported with it
        self.shape: ShapeCheck | None = ShapeCheck.from_dict(manifest["shape"]) if manifest.get("shape") else None
        # the anomaly map's smoothing, pixels of the model input (agent/decide/anomaly_map.py); 0 in
        # bundles written before 2026-12-03, which have no "heat" block; and what the map compares
        # the input's background with: G's own background ("drawn") or -1 ("black", bundles before)
        heat_block = manifest.get("heat") or {}
        if not isinstance(heat_block, dict):
            raise ValueError(f"'heat' must be an object, got {heat_block!r}")
        self.heat_sigma: float = check_sigma(heat_block.get("sigma", 0.0))
        self.heat_background: str = check_background(heat_block.get("background", "black"))

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        path = Path(path)
        mf = path / MANIFEST
        if not mf.is_file():
            raise BundleError(f"{path} is not a bundle: no {MANIFEST} (export one with 'adgan export RUN --out DIR')")
        raw = mf.read_bytes()
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError as e:
            raise BundleError(f"{mf}: not valid JSON ({e})") from None
        except (ValueError, RecursionError) as e:  # (not text; a number of more digits than Python reads; nested
            raise BundleError(f"{mf}: not a manifest ({type(e).__name__}: {e})") from None  # deeper than it goes)
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{path}: bundle format {manifest.get('format') if isinstance(manifest, dict) else '?'!r} "
                              f"is not supported (this build reads format {BUNDLE_FORMAT})")
        for key in ("class", "kind", "architecture", "preprocessing", "search", "graphs", "theta", "files"):
            if key not in manifest:
                raise BundleError(f"{mf}: missing '{key}'")
        check_structure(manifest, mf)
        for name, digest in manifest["files"].items():
            f = path / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise BundleError(f"{mf}: file entry {name!r} points outside the bundle")
            if not f.is_file():
                raise BundleError(f"{path}: {name} is missing")
            got = sha256_file(f)
            if got != digest:
                raise BundleError(f"{path}: {name} has been modified (sha256 {got[:12]}..., manifest says "
                                  f"{digest[:12]}...); re-export the bundle")
        for role in ("step", "loss"):
            if manifest["graphs"][role]["file"] not in manifest["files"]:
                raise BundleError(f"{mf}: the {role} graph is not covered by a hash")
        if b_search_z_init(manifest) == "encoder" and manifest["graphs"].get("encoder", {}).get("file") \
                not in manifest["files"]:
            raise BundleError(f"{mf}: search starts from an encoder, but the bundle has no hashed encoder graph")
        if manifest["theta"]["file"] not in manifest["files"]:
            raise BundleError(f"{mf}: theta is not covered by a hash")
        stats = None
        if (manifest["search"] or {}).get("score_norm", "none") != "none":
            ss = manifest.get("score_stats") or {}
            if ss.get("file") not in manifest["files"]:
                raise BundleError(f"{mf}: the score is standardised per cell, but the bundle has no hashed "
                                  "cell statistics (score_stats)")
            with np.load(path / ss["file"], allow_pickle=False) as z:
                stats = (z["mu"].astype(np.float64), z["sd"].astype(np.float64))
        with np.load(path / manifest["theta"]["file"], allow_pickle=False) as z:
            theta = {k: z[k] for k in z.files}
        cp = manifest.get("class_pca")
        if cp is not None and (not isinstance(cp, dict) or cp.get("file") not in manifest["files"]):
            raise BundleError(f"{mf}: the bundle has a class PCA, but it is not covered by a hash")
        try:
            b = cls(path, manifest, hashlib.sha256(raw).hexdigest(), theta)
            b.cell_stats = stats
            if cp is not None:  # the class check's model (agent/scoring/class_pca.py)
                b.class_pca = ClassPCA.load(path, cp, (b.channels, b.size, b.size))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{mf}: {e}") from None
        missing = [n for n in b.trainable if n not in theta]
        if missing:
            raise BundleError(f"{path}: theta.npz lacks {missing}")
        return b

    def graph_path(self, role: str) -> Path:
        return self.path / self.manifest["graphs"][role]["file"]

    def graph_io(self, role: str) -> tuple[list[str], list[str]]:
        g = self.manifest["graphs"][role]
        return list(g["inputs"]), list(g["outputs"])

    def check_io(self, role: str, inputs: dict[str, list], outputs: list[str]) -> None:
        """The `role` graph as an engine loaded it (input name -> shape, a dimension an int or a
        name; output names) against the manifest: names the engine would bind by, and the sizes of
        x and z. BundleError otherwise (a KeyError at binding, or a shape error at every part)."""
        ins, outs = self.graph_io(role)
        if set(ins) != set(inputs) or not set(outs) <= set(outputs):
            raise BundleError(f"{self.path}: the {role} graph takes {sorted(inputs)} and gives {sorted(outputs)}, "
                              f"where the manifest says {sorted(ins)} and {sorted(outs)}; re-export the bundle")
        want = {"x": (self.x_batch, self.channels, self.size, self.size), "z": (self.seeds_per_call, self.nz)}
        for name, shape in want.items():
            got = inputs.get(name)
            if got is not None and (len(got) != len(shape) or
                                    any(isinstance(g, int) and g != w for g, w in zip(got, shape))):
                raise BundleError(f"{self.path}: the {role} graph's {name} is {list(got)}, where the manifest's "
                                  f"architecture makes it {list(shape)}; re-export the bundle")

    def initial_theta(self, seeds: int) -> list[np.ndarray]:
        """Per-seed copies of the trainable theta in the graphs' layout."""
        out = []
        for n in self.trainable:
            t = self.theta[n].astype(np.float32)
            if self.search.theta_scope == "all" and n.startswith("w"):
                out.append(np.ascontiguousarray(np.tile(t, (seeds, 1, 1, 1))))  # (S*Cin, Cout, k, k)
            else:
                out.append(np.ascontiguousarray(np.tile(t.reshape(1, -1), (seeds, 1))))  # (S, C)
        return out

    def describe(self) -> str:
        s = self.search
        return (f"{self.cls} {self.kind} bundle {self.bundle_hash[:12]} ({self.size}px, theta scope {s.theta_scope}, "
                f"loss {s.loss}, n_seed {s.n_seed}, k {s.k}" + (", depth relief" if self.relief else "")
                + (", bump" if self.bump else "") + (", surface shape" if self.shape else "") + ")")

    def describe_score(self) -> str:
        """The image score, in words (reports): the search's, and the checks beside it."""
        out = self.search.describe_score()
        if self.relief:
            surface = self.relief.params.surface
            out += " + relief" + ("" if surface == "plane" else f" ({surface})")
        return out + (" + bump" if self.bump else "") + (" + shape" if self.shape else "")
