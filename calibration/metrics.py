"""ROC, AUC, accuracies and threshold policies on anomaly scores (higher = more anomalous).

Convention everywhere: a sample is flagged anomalous when its score is strictly greater
than the threshold. Anomalies are the positives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICIES = ("max-accuracy", "equal-rates", "target-fpr")


def _arrays(normal, anomalous) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(normal, np.float64).ravel()
    a = np.asarray(anomalous, np.float64).ravel()
    if not np.isfinite(n).all() or not np.isfinite(a).all():
        raise ValueError("scores must be finite")
    return n, a


def auc(normal, anomalous) -> float:
    """Area under the ROC curve: P(anomaly scores higher than normal), ties counted half."""
    n, a = _arrays(normal, anomalous)
    if len(n) == 0 or len(a) == 0:
        raise ValueError("AUC needs normal and anomalous scores")
    s = np.concatenate([n, a])
    # average ranks with ties (Mann-Whitney U)
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s))
    uniq, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, counts)
    u = ranks[len(n):].sum() - len(a) * (len(a) + 1) / 2
    return float(u / (len(a) * len(n)))


@dataclass(frozen=True)
class Roc:
    thresholds: np.ndarray  # decreasing; flag when score > threshold
    tpr: np.ndarray
    fpr: np.ndarray


def roc(normal, anomalous) -> Roc:
    """Every distinct operating point, from flagging nothing (threshold = max) to everything."""
    n, a = _arrays(normal, anomalous)
    cuts = np.unique(np.concatenate([n, a]))[::-1]  # decreasing
    thr = np.concatenate([cuts, [-np.inf]])
    tpr = np.array([(a > t).mean() if len(a) else np.nan for t in thr])
    fpr = np.array([(n > t).mean() if len(n) else np.nan for t in thr])
    return Roc(thr, tpr, fpr)


def rates(normal, anomalous, threshold: float) -> dict[str, float]:
    """Accuracy, TPR, TNR at a threshold."""
    n, a = _arrays(normal, anomalous)
    tp, tn = int((a > threshold).sum()), int((n <= threshold).sum())
    total = len(n) + len(a)
    return {"accuracy": (tp + tn) / total if total else float("nan"),
            "tpr": tp / len(a) if len(a) else float("nan"),
            "tnr": tn / len(n) if len(n) else float("nan")}


def _between(sorted_unique: np.ndarray, t: float) -> float:
    """The midpoint between cut t and the next higher score (same decisions, more margin)."""
    higher = sorted_unique[sorted_unique > t]
    if not np.isfinite(t):
        return float(sorted_unique[0] - 1.0) if len(sorted_unique) else 0.0
    return float((t + higher[0]) / 2) if len(higher) else float(t)


def max_accuracy_threshold(normal, anomalous) -> float:
    """The threshold with the highest accuracy; ties go to the one with TPR and TNR closest."""
    n, a = _arrays(normal, anomalous)
    if len(a) == 0 or len(n) == 0:
        raise ValueError("max-accuracy needs normal and anomalous scores")
    r = roc(n, a)
    acc = (r.tpr * len(a) + (1 - r.fpr) * len(n)) / (len(a) + len(n))
    gap = np.abs(r.tpr - (1 - r.fpr))
    best = np.lexsort((gap, -acc))[0]
    return _between(np.unique(np.concatenate([n, a])), r.thresholds[best])


def equal_rates_threshold(normal, anomalous) -> float:
    """The paper's 'optimal accuracy': where the true positive and true negative rates meet."""
    n, a = _arrays(normal, anomalous)
    if len(a) == 0 or len(n) == 0:
        raise ValueError("equal-rates needs normal and anomalous scores")
    r = roc(n, a)
    gap = np.abs(r.tpr - (1 - r.fpr))
    best = np.lexsort((-(r.tpr + 1 - r.fpr), gap))[0]
    return _between(np.unique(np.concatenate([n, a])), r.thresholds[best])


def target_fpr_threshold(normal, fpr: float) -> float:
    """The lowest threshold that flags at most `fpr` of the normal samples (normal scores only)."""
    n, _ = _arrays(normal, [])
    if len(n) == 0:
        raise ValueError("target-fpr needs normal scores")
    if not 0 <= fpr < 1:
        raise ValueError(f"--fpr must be in [0, 1), got {fpr}")
    s = np.sort(n)
    allowed = int(np.floor(fpr * len(s) + 1e-9))
    t = s[len(s) - allowed - 1]
    # If the score at t is tied with higher-ranked ones, '>' still flags at most `allowed`.
    return float(t)


def joint_target_fpr_thresholds(normal, fpr: float) -> tuple[np.ndarray, int]:
    """Thresholds for several checks that flag a sample when ANY flags it (a station's score and its
    class check), sharing one false alarm budget: `normal` is (samples, checks), one row per
    normal sample. Each check gets the same allowance of j normal samples over its threshold (its
    own target-fpr threshold at j), with j the largest whose union flags at most floor(fpr * n)
    of them. Returns (thresholds per check, j). Correlated checks share their false alarms, so j
    can exceed an even split; j 0 puts every threshold at its check's highest normal value."""
    n = np.asarray(normal, np.float64)
    if n.ndim != 2 or n.shape[0] == 0 or n.shape[1] == 0:
        raise ValueError("joint target-fpr needs a (samples, checks) array of normal values")
    if not np.isfinite(n).all():
        raise ValueError("scores must be finite")
    if not 0 <= fpr < 1:
        raise ValueError(f"--fpr must be in [0, 1), got {fpr}")
    s = np.sort(n, axis=0)
    allowed = int(np.floor(fpr * len(n) + 1e-9))
    best = (s[-1], 0)
    for j in range(1, allowed + 1):
        t = s[len(n) - j - 1]
        if int((n > t).any(axis=1).sum()) > allowed:
            break  # (the union only grows with j)
        best = (t, j)
    return best[0].copy(), best[1]


def summary(scores) -> dict[str, float]:
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return {}
    return {"n": int(s.size), "min": float(s.min()), "p50": float(np.percentile(s, 50)),
            "p95": float(np.percentile(s, 95)), "p99": float(np.percentile(s, 99)), "max": float(s.max()),
            "mean": float(s.mean()), "std": float(s.std())}
