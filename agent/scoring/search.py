"""Algorithm 1 over an engine backend: n_seed latent searches of k steps, mean final loss."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from agent.scoring.backend import Backend
from agent.scoring.bundle import Bundle, SearchDefaults
from agent.scoring.bump import bump_map
from agent.scoring.relief import relief_map


@dataclass(frozen=True)
class ScoreResult:
    score: float              # the image score: the search's, or with a relief check the larger of the two
    per_seed: np.ndarray      # (n_seed,) final losses
    reconstruction: np.ndarray  # G(z*) of the best seed, (4, H, W) in [-1, 1]
    search: float | None = None  # the search's score, the mean of per_seed
    relief: float | None = None  # the part's depth relief (bundles with a relief check)
    relief_decides: bool = False  # the relief (or the bump), not the search, gave the score
    relief_heat: np.ndarray | None = None  # (H, W) the relief map (whose largest window is `relief`) in the
    #                                        anomaly map's units (ReliefCheck.heat)
    shape: float | None = None  # the part's distance to the training parts' surface shapes (bundles with a
    #                             shape check; None where the part has too few interior pixels)
    bump: float | None = None  # the part's largest protrusion from its local surface (bundles with a bump
    #                            check); where it gives the score, relief_decides is true and relief_heat holds it


def result(bundle: Bundle, x: np.ndarray, per_seed: np.ndarray, reconstruction: np.ndarray) -> ScoreResult:
    """A part's result from its search: the mean final loss, the bundle's relief and bump checks (the
    largest of them), and its shape check (added where the part's shape is unusual)."""
    search = float(per_seed.mean())
    out = ScoreResult(search, per_seed, reconstruction, search)
    check = bundle.relief
    if check is not None:
        m = relief_map(x, check.params)
        r = float(m.max())
        out = replace(out, score=check.score(search, r), relief=r, relief_decides=check.decides(search, r),
                      relief_heat=check.heat(m))
    if bundle.bump is not None:  # (surface pushed towards the camera: agent/scoring/bump.py)
        m = bump_map(x, bundle.bump.params)
        b, heat = float(m.max()), bundle.bump.heat(m)
        out = replace(out, score=max(out.score, bundle.bump.in_search_units(b)), bump=b,
                      relief_decides=out.relief_decides or bundle.bump.decides(out.score, b),
                      relief_heat=heat if out.relief_heat is None else np.maximum(out.relief_heat, heat))
    if bundle.shape is not None:
        d = bundle.shape.distance(x)
        out = replace(out, score=out.score + bundle.shape.excess(d), shape=d)
    return out


def initial_z(seed: int, n_seed: int, seeds_per_call: int, nz: int) -> np.ndarray:
    """z0 for a search: whole graph calls' worth of seeds, the same for every sample with `seed`."""
    total = math.ceil(n_seed / seeds_per_call) * seeds_per_call
    return np.random.default_rng(seed).standard_normal((total, nz)).astype(np.float32)


def start_latents(params: SearchDefaults, seed: int, seeds_per_call: int, nz: int, x: np.ndarray,
                  encoder=None) -> np.ndarray:
    """z0 for every seed of a search of x: random (the paper), or E(x) plus optional noise."""
    z = initial_z(seed, params.n_seed, seeds_per_call, nz)
    if params.z_init == "random":
        return z
    if encoder is None:
        raise ValueError("this bundle starts its search from an encoder, but none was given")
    return (encoder.encode(x)[None, :] + np.float32(params.z_init_noise) * z).astype(np.float32)


class Searcher:
    """Scores model inputs with a bundle's search defaults, optionally overridden."""

    def __init__(self, bundle: Bundle, backend: Backend, seed: int = 0, **overrides) -> None:
        allowed = {"n_seed", "k", "lr_z", "lr_theta"}
        bad = set(overrides) - allowed
        if bad:
            raise ValueError(f"only {sorted(allowed)} can be overridden at run time, not {sorted(bad)}")
        self.bundle, self.backend, self.seed = bundle, backend, seed
        if bundle.parts_per_call > 1 and overrides.get("n_seed") not in (None, bundle.search.n_seed):
            raise ValueError(f"this bundle scores {bundle.parts_per_call} parts of {bundle.search.n_seed} seeds per "
                             "call: n_seed cannot change at run time (export it again with --n-seed)")
        self.params: SearchDefaults = replace(bundle.search, **{k: v for k, v in overrides.items() if v is not None})
        self.encoder = None
        if self.params.z_init == "encoder":
            from agent.scoring.encoder import LatentEncoder
            # the encoder runs beside the search's engine, with its thread count (ONNX Runtime's)
            self.encoder = LatentEncoder(bundle, threads=getattr(backend, "threads", 0))

    def _check(self, x: np.ndarray) -> None:
        b = self.bundle
        if x.shape != (b.channels, b.size, b.size) or x.dtype != np.float32:
            raise ValueError(f"model input must be float32 {(b.channels, b.size, b.size)}, got {x.dtype} {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("model input contains NaN or infinite values")

    def _search(self, x: np.ndarray, z0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One graph call's search of k steps: (loss per slot, G(z) per slot)."""
        p = self.params
        self.backend.reset(x, z0)
        for t in range(1, p.k + 1):
            self.backend.step(t, p.lr_z, p.lr_theta)
        loss, y = self.backend.final()
        return loss.copy(), y.copy()

    def score(self, x: np.ndarray) -> ScoreResult:
        if self.bundle.parts_per_call > 1:
            return self.score_batch([x])[0]
        self._check(x)
        b = self.bundle
        p, s = self.params, self.backend.seeds_per_call
        z_all = start_latents(p, self.seed, s, b.nz, x, self.encoder)
        losses, recs = [], []
        for start in range(0, len(z_all), s):
            loss, y = self._search(x, z_all[start:start + s])
            losses.append(loss)
            recs.append(y)
        per_seed = np.concatenate(losses)[: p.n_seed]
        best = int(np.argmin(per_seed))
        return result(b, x, per_seed, np.concatenate(recs)[best])

    def score_batch(self, xs) -> list[ScoreResult]:
        """Scores of several parts (a frame with several parts, a re-inspection queue). A bundle
        exported with `--parts-per-call P` scores P parts, each with its n_seed seeds, in one
        search; a short last call repeats its last part in the free slots. Each part's result is
        the one `score` gives it (the same z0, the same graphs per slot)."""
        xs = list(xs)
        for x in xs:
            self._check(x)
        parts = self.bundle.parts_per_call
        if parts == 1:
            return [self.score(x) for x in xs]
        p, b, n = self.params, self.bundle, self.params.n_seed
        out: list[ScoreResult] = []
        for start in range(0, len(xs), parts):
            chunk = xs[start:start + parts]
            filled = chunk + [chunk[-1]] * (parts - len(chunk))
            z0 = np.concatenate([start_latents(p, self.seed, n, b.nz, x, self.encoder)[:n] for x in filled])
            loss, y = self._search(np.repeat(np.stack(filled), n, axis=0), z0)
            for i in range(len(chunk)):
                per_seed = loss[i * n:(i + 1) * n]
                best = int(np.argmin(per_seed))
                out.append(result(b, chunk[i], per_seed, y[i * n + best]))
        return out
