"""One model per class, each with the threshold calibrated on it: input in, verdict out.

Everything is checked when the agent starts, so a wrong file stops it with a clear
message instead of producing wrong verdicts: every bundle is verified (hashes), must be
of the class it is configured for, and must have a threshold calibrated on exactly that
bundle with the agent's latent seed. The search runs with the hyperparameters the
threshold was calibrated with (they are recorded beside it).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.decide.thresholds import ClassThreshold, ThresholdError, load_threshold
from agent.scoring.bundle import Bundle, BundleError
from agent.scoring.search import Backend, Searcher, open_backend

log = logging.getLogger(__name__)


@dataclass
class Decision:
    verdict: str            # "ok" or "anomaly"
    score: float
    threshold: float
    reconstruction: np.ndarray


@dataclass
class ClassModel:
    bundle: Bundle
    threshold: ClassThreshold
    searcher: Searcher
    backend_name: str

    def ref(self) -> dict:
        return {"class": self.bundle.cls, "kind": self.bundle.kind, "bundle_hash": self.bundle.bundle_hash,
                "backend": self.backend_name}

    def decide(self, x: np.ndarray) -> Decision:
        r = self.searcher.score(x)
        if not math.isfinite(r.score):
            raise ValueError(f"the search produced a non-finite score ({r.score})")
        verdict = "anomaly" if self.threshold.is_anomaly(r.score) else "ok"
        return Decision(verdict, r.score, self.threshold.threshold, r.reconstruction)

    def close(self) -> None:
        self.searcher.backend.close()


def load_class_model(cls: str, bundle_path: str | Path, thresholds: str | Path, seed: int,
                     backend_settings=None, backend: Backend | None = None) -> ClassModel:
    bundle = Bundle.load(bundle_path)
    if bundle.cls != cls:
        raise BundleError(f"bundle {bundle_path} was trained on class {bundle.cls!r}, but is configured for {cls!r}")
    thr = load_threshold(thresholds, cls, bundle.bundle_hash)
    rec_seed = thr.record.get("seed")
    if rec_seed is not None and int(rec_seed) != seed:
        raise ThresholdError(f"{thresholds}: the threshold of {cls!r} was calibrated with latent seed {rec_seed}, "
                             f"the agent uses seed {seed}; set model.seed = {rec_seed} or recalibrate")
    search = thr.record.get("search") or {}
    overrides = {k: search[k] for k in ("n_seed", "k", "lr_z", "lr_theta") if k in search}
    engine = backend if backend is not None else open_backend(bundle, backend_settings)
    name = getattr(backend_settings, "type", "onnxruntime")
    log.info("class %s: %s on %s, threshold %.6g", cls, bundle.describe(), name, thr.threshold)
    return ClassModel(bundle, thr, Searcher(bundle, engine, seed, **overrides), name)


def load_models(bundles: dict[str, Path], thresholds: Path, seed: int, backend_settings=None) -> dict[str, ClassModel]:
    """Every configured class's model; closes what was opened if one of them is refused."""
    models: dict[str, ClassModel] = {}
    try:
        for cls, path in bundles.items():
            models[cls] = load_class_model(cls, path, thresholds, seed, backend_settings)
    except BaseException:
        for m in models.values():
            m.close()
        raise
    return models
