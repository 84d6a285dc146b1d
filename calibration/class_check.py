"""`adgan calibrate --class-check BUNDLE ...`: the class check's threshold (agent/decide/class_check.py).

The class's normal samples (and anomalous ones, if given) are scored by the class's own bundle
and by each rival bundle, the bundles of the station's other products: by each bundle's class PCA
(model "pca", where every bundle has one: bundles exported since 2026-12-08), or at k 0 by its
generator (model "generator"; `--class-check-model` chooses); a sample's margin is ln(own) -
ln(best rival). The threshold is chosen from the margins by the same policy as the
score's threshold. With target-fpr the two share the one false alarm budget: the station flags a
part when either is over its threshold, so both thresholds are chosen together
(calibration/metrics.py joint_target_fpr_thresholds) to flag at most --fpr of the normal parts
between them. (Until 2026-12-06 each took the whole budget, and a station could false-alarm
on up to twice --fpr.) The other policies choose each threshold on its own.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from agent.decide.class_check import MODELS, RIVAL_K, margin, refusal
from agent.scoring.bundle import Bundle
from calibration.metrics import auc, rates, summary
from calibration.scoring import make_scorer, score_folder


def check_model(bundle: Bundle, rivals: dict[str, Bundle], asked: str = "auto") -> str:
    """The check's model: `asked`, or for "auto" "pca" where every bundle has a class PCA, else
    "generator"; ValueError where the bundles cannot be checked with it (`refusal`)."""
    if asked not in ("auto", *MODELS):
        raise ValueError(f"--class-check-model must be auto, {' or '.join(MODELS)}, got {asked!r}")
    model = asked
    if asked == "auto":
        model = "pca" if all(b.class_pca is not None for b in (bundle, *rivals.values())) else "generator"
    why = refusal(bundle, rivals, model)
    if why is not None:
        raise ValueError(f"--class-check: {why}" + (" (or --class-check-model generator)" if model == "pca" else ""))
    return model


def load_rivals(bundle: Bundle, paths: Sequence[str]) -> dict[str, Bundle]:
    """The rival bundles by class; ValueError for one of the bundle's own class or a class given
    twice."""
    rivals: dict[str, Bundle] = {}
    for p in paths:
        b = Bundle.load(p)
        if b.cls == bundle.cls:
            raise ValueError(f"--class-check {p} is a bundle of {b.cls!r}, the class being calibrated: give the "
                             "bundles of the station's other classes")
        if b.cls in rivals:
            raise ValueError(f"--class-check gives two bundles of {b.cls!r}: {rivals[b.cls].path} and {p}")
        rivals[b.cls] = b
    return rivals


class PCAScorer:
    """A bundle's class PCA as a scorer for score_folder: a sample's L is its error."""

    def __init__(self, bundle: Bundle) -> None:
        self.pca = bundle.class_pca

    def score(self, x):
        return SimpleNamespace(score=self.pca.error(x))

    def score_batch(self, xs):
        return [self.score(x) for x in xs]


def margins(bundle: Bundle, rivals: dict[str, Bundle], folders: Sequence[str], o, frames,
            model: str) -> dict[str, float]:
    """"<folder>:<sample path>" -> its margin, for every sample under `folders`, each bundle's L
    its class PCA's error (model "pca") or its score at k 0 with the device's engine."""
    if not folders:
        return {}
    scorers = {c: PCAScorer(b) if model == "pca" else make_scorer(b, o.backend, o.seed, fp16=o.fp16, k=RIVAL_K)
               for c, b in {bundle.cls: bundle, **rivals}.items()}
    scores: dict[str, dict[str, float]] = {}
    for c, scorer in scorers.items():
        b = bundle if c == bundle.cls else rivals[c]
        # every bundle frames the samples alike (load_rivals), so each sees the same model input
        scores[c] = {f"{d}:{p}": s for d in folders for p, _, s in score_folder(scorer, b, d, frames, not o.quiet)}
        if hasattr(scorer, "backend"):
            scorer.backend.close()
    return {k: margin(scores[bundle.cls][k], {c: scores[c][k] for c in rivals})[0] for k in scores[bundle.cls]}


def aligned(values: dict[str, float], keys: Sequence[str]) -> np.ndarray:
    """`values` in the order of `keys` (the score's samples): the two must be the same samples."""
    if sorted(values) != sorted(keys):
        raise ValueError("the class check scored other samples than the search did "
                         f"({len(values)} against {len(keys)}): was a folder changed during calibration? Run it again")
    return np.array([values[k] for k in keys])


def class_check_record(o, bundle: Bundle, rivals: dict[str, Bundle], frames, model: str) -> dict:
    """The `class_check` entry of the class's record against `rivals` (load_rivals) with `model`
    (check_model), without its threshold and metrics (`with_threshold`). A PCA record's k is null:
    an agent from before 2026-12-08 refuses it, where it would read its threshold as a generator's."""
    return {"model": model, "k": RIVAL_K if model == "generator" else None,
            "rivals": {c: b.bundle_hash for c, b in rivals.items()},
            "rival_bundles": {c: str(Path(b.path)) for c, b in rivals.items()},
            "normal": margins(bundle, rivals, [o.normal], o, frames, model),
            "anomalous": margins(bundle, rivals, list(o.anomalous or []), o, frames, model)}


def with_threshold(cc: dict, threshold: float, warns: list[str], normal: np.ndarray, anomalous: np.ndarray) -> dict:
    """The record `class_check_record` began, with its threshold, for the margins of the normal and
    anomalous samples (in the score's order)."""
    metrics = ({"auc": auc(normal, anomalous), **rates(normal, anomalous, threshold)} if len(anomalous)
               else {"fpr": float((normal > threshold).mean())})
    return {"threshold": threshold, "model": cc["model"], "k": cc["k"], "rivals": cc["rivals"],
            "rival_bundles": cc["rival_bundles"],
            "normal_margins": summary(normal), "anomalous_margins": summary(anomalous) if len(anomalous) else None,
            "metrics": metrics, "warnings": warns}
