"""The class check: a part of another of the station's products, which the expected class's
generator reproduces well enough to pass.

ADGAN's score asks how well the expected class's generator reproduces a part. On new batches
that is a weak test of the class: by blocked cross-validation the box generator reproduced new
cans and balls better than new boxes (bench/RESULTS.md, "Competing generators"). A station that
inspects several products holds each product's generator, and a part of another product is
reproduced better by its own product's generator than by the expected one. The check compares
them on the encoder's start, without a search (k 0: one encoder and one generator run per class,
a few ms each):

    margin = ln L_c(x) - min over the other classes o of ln L_o(x)

where L is a bundle's score of x at k 0 (model "generator"), or, since 2026-12-08 and where every
bundle carries one, its class PCA's reconstruction error (model "pca", agent/scoring/class_pca.py:
by blocked CV the better test of the class in every class, and free of the generators' training
seeds; bench/RESULTS.md, "A PCA class model in the bundle"). A margin above the class's calibrated
threshold is an anomaly (the part looks like another product), whatever the search's score says.
It is calibrated with the threshold (`adgan calibrate --class-check BUNDLE ...`) and recorded in
the class's record of thresholds.json:

    "class_check": {"threshold": t, "model": "pca", "k": null, "rivals": {"<class>": "<bundle hash>"}, ...}
    "class_check": {"threshold": t, "k": 0, "rivals": {...}, ...}          (model "generator")

A record with no "model" is a generator's (written before 2026-12-08). A PCA record's "k" is null,
so that an agent from before refuses it rather than reading its threshold as a generator's. A class
whose record has none is not checked. A station must load every rival bundle it was calibrated
against, with the same preprocessing, or it does not start (SettingError): under model.bundles (with
an engine), or, for the PCA check, under model.check_bundles (read for its class PCA only, so a
station of one product can check against the line's others).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from agent.scoring.bundle import Bundle
from agent.scoring.search import Searcher

RIVAL_K = 0  # the generators' check's search length: the encoder's start, as measured
FLOOR = 1e-12  # a score of 0 (a perfect reproduction) still has a logarithm
MODELS = ("pca", "generator")


@dataclass(frozen=True)
class CheckRecord:
    """A class's `class_check` record: its threshold and the bundles it was calibrated against."""

    threshold: float
    rivals: dict[str, str]  # class -> bundle hash
    model: str = "generator"  # what each class's L is: its class PCA's error, or its bundle's score at k 0

    @classmethod
    def read(cls, record: dict[str, Any]) -> "CheckRecord | None":
        """The record's check, None where it has none; ValueError for one that cannot be used."""
        cc = record.get("class_check")
        if cc is None:
            return None
        if not isinstance(cc, dict):
            raise ValueError(f"'class_check' must be an object, got {cc!r}")
        t, rivals = cc.get("threshold"), cc.get("rivals")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError(f"the class check's threshold must be a finite number, got {t!r}")
        if (not isinstance(rivals, dict) or not rivals
                or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in rivals.items())):
            raise ValueError(f"the class check's rivals must map classes to bundle hashes, got {rivals!r}")
        model = cc.get("model", "generator")
        if model not in MODELS:
            raise ValueError(f"the class check's model {model!r} is not one this agent knows ({', '.join(MODELS)})")
        if model == "generator" and cc.get("k", RIVAL_K) != RIVAL_K:
            raise ValueError(f"the class check was calibrated with k {cc.get('k')!r}; this agent checks at k {RIVAL_K}")
        return cls(float(t), dict(rivals), model)


def margin(own: float, rivals: dict[str, float]) -> tuple[float, str]:
    """(ln own - ln best rival, the best rival's class): above 0, another class's generator
    reproduces the part better than the expected class's."""
    closest = min(rivals, key=lambda c: rivals[c])
    return math.log(max(own, FLOOR)) - math.log(max(rivals[closest], FLOOR)), closest


def refusal(own: Bundle, rivals: dict[str, Bundle], model: str = "generator") -> str | None:
    """Why these bundles cannot be checked against each other with `model`, None where they can:
    each must carry a class PCA (model "pca"), or start its search at the encoder (model
    "generator": k 0 scores G(E(x))), and frame parts as the expected class's does (one model
    input serves them all)."""
    for b in (own, *rivals.values()):
        if model == "pca" and b.class_pca is None:
            return f"bundle {b.path} ({b.cls}) has no class PCA (exported before 2026-12-08, or with --class-pca 0): " \
                   "export it again"
        if model == "generator" and b.search.z_init != "encoder":
            return f"bundle {b.path} ({b.cls}) starts its search at random z, so it has no k 0 score; export it " \
                   "with an encoder"
    prep = own.preprocessing
    for cls, b in rivals.items():
        if b.preprocessing != prep or b.size != own.size or b.channels != own.channels:
            return f"bundle {b.path} ({cls}) frames parts otherwise than {own.path} ({own.cls}): " \
                   f"{b.preprocessing} against {prep}"
    return None


def by_searcher(s: Searcher) -> Callable[[np.ndarray], float]:
    """L of the generators' check: the searcher's score (at k RIVAL_K: inspector.at_k0)."""
    return lambda x: s.score(x).score


class ClassCheck:
    """One class's check against its rivals: each class's L for a model input (its class PCA's
    error, or `by_searcher` on the engines the station has already opened)."""

    def __init__(self, record: CheckRecord, own: Callable[[np.ndarray], float],
                 rivals: dict[str, Callable[[np.ndarray], float]]) -> None:
        self.record, self.own, self.rivals = record, own, rivals

    def __call__(self, x: np.ndarray) -> dict[str, Any]:
        """{"margin", "threshold", "closest_class", "anomaly"} for model input x."""
        m, closest = margin(self.own(x), {c: s(x) for c, s in self.rivals.items()})
        if not math.isfinite(m):
            raise ValueError(f"the class check produced a non-finite margin ({m})")
        return {"margin": m, "threshold": self.record.threshold, "closest_class": closest,
                "anomaly": m > self.record.threshold}
