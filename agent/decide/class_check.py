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

where L is a bundle's score of x at k 0. A margin above the class's calibrated threshold is an
anomaly (the part looks like another product), whatever the search's score says. It is
calibrated with the threshold (`adgan calibrate --class-check BUNDLE ...`) and recorded in the
class's record of thresholds.json:

    "class_check": {"threshold": t, "k": 0, "rivals": {"<class>": "<bundle hash>", ...}, ...}

A class whose record has none is not checked. A station must load every rival bundle it was
calibrated against, with the same preprocessing, or it does not start (SettingError).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.scoring.bundle import Bundle
from agent.scoring.search import Searcher

RIVAL_K = 0  # the check's search length: the encoder's start, as measured
FLOOR = 1e-12  # a score of 0 (a perfect reproduction) still has a logarithm


@dataclass(frozen=True)
class CheckRecord:
    """A class's `class_check` record: its threshold and the bundles it was calibrated against."""

    threshold: float
    rivals: dict[str, str]  # class -> bundle hash

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
        if cc.get("k", RIVAL_K) != RIVAL_K:
            raise ValueError(f"the class check was calibrated with k {cc.get('k')!r}; this agent checks at k {RIVAL_K}")
        return cls(float(t), dict(rivals))


def margin(own: float, rivals: dict[str, float]) -> tuple[float, str]:
    """(ln own - ln best rival, the best rival's class): above 0, another class's generator
    reproduces the part better than the expected class's."""
    closest = min(rivals, key=lambda c: rivals[c])
    return math.log(max(own, FLOOR)) - math.log(max(rivals[closest], FLOOR)), closest


def refusal(own: Bundle, rivals: dict[str, Bundle]) -> str | None:
    """Why these bundles cannot be checked against each other, None where they can: each must
    start its search at the encoder (k 0 scores G(E(x))) and frame parts as the expected class's
    does (one model input serves them all)."""
    for b in (own, *rivals.values()):
        if b.search.z_init != "encoder":
            return f"bundle {b.path} ({b.cls}) starts its search at random z, so it has no k 0 score; export it " \
                   "with an encoder"
    prep = own.preprocessing
    for cls, b in rivals.items():
        if b.preprocessing != prep or b.size != own.size or b.channels != own.channels:
            return f"bundle {b.path} ({cls}) frames parts otherwise than {own.path} ({own.cls}): " \
                   f"{b.preprocessing} against {prep}"
    return None


class ClassCheck:
    """One class's check against its rivals, on the engines the station has already opened."""

    def __init__(self, record: CheckRecord, own: Searcher, rivals: dict[str, Searcher]) -> None:
        """`own` and `rivals`: searchers at k RIVAL_K (inspector.at_k0), on the station's engines."""
        self.record, self.own, self.rivals = record, own, rivals

    def __call__(self, x: np.ndarray) -> dict[str, Any]:
        """{"margin", "threshold", "closest_class", "anomaly"} for model input x."""
        m, closest = margin(self.own.score(x).score, {c: s.score(x).score for c, s in self.rivals.items()})
        if not math.isfinite(m):
            raise ValueError(f"the class check produced a non-finite margin ({m})")
        return {"margin": m, "threshold": self.record.threshold, "closest_class": closest,
                "anomaly": m > self.record.threshold}
