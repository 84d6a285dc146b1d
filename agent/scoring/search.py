"""Algorithm 1 over an engine backend: n_seed latent searches of k steps, mean final loss."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from agent.scoring.backend import Backend
from agent.scoring.bundle import Bundle, SearchDefaults


@dataclass(frozen=True)
class ScoreResult:
    score: float              # mean over seeds of the final loss
    per_seed: np.ndarray      # (n_seed,)
    reconstruction: np.ndarray  # G(z*) of the best seed, (4, H, W) in [-1, 1]


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
        self.params: SearchDefaults = replace(bundle.search, **{k: v for k, v in overrides.items() if v is not None})
        self.encoder = None
        if self.params.z_init == "encoder":
            from agent.scoring.encoder import LatentEncoder
            self.encoder = LatentEncoder(bundle)

    def score(self, x: np.ndarray) -> ScoreResult:
        b = self.bundle
        if x.shape != (b.channels, b.size, b.size) or x.dtype != np.float32:
            raise ValueError(f"model input must be float32 {(b.channels, b.size, b.size)}, got {x.dtype} {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("model input contains NaN or infinite values")
        p, s = self.params, self.backend.seeds_per_call
        z_all = start_latents(p, self.seed, s, b.nz, x, self.encoder)
        losses, recs = [], []
        for start in range(0, len(z_all), s):
            self.backend.reset(x, z_all[start:start + s])
            for t in range(1, p.k + 1):
                self.backend.step(t, p.lr_z, p.lr_theta)
            loss, y = self.backend.final()
            losses.append(loss.copy())
            recs.append(y.copy())
        per_seed = np.concatenate(losses)[: p.n_seed]
        best = int(np.argmin(per_seed))
        return ScoreResult(float(per_seed.mean()), per_seed, np.concatenate(recs)[best])
