"""The paper's figures from scores: accuracy/TPR/TNR vs threshold, ROC, average loss per class."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.metrics import auc, roc


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def rates_vs_threshold(normal: np.ndarray, anomalous: np.ndarray, title: str, path: Path) -> None:
    """Accuracy, TPR and TNR against the threshold (Figures 5, 8-10)."""
    plt = _plt()
    r = roc(normal, anomalous)
    t = r.thresholds[:-1]  # drop -inf
    tpr, tnr = r.tpr[:-1], 1 - r.fpr[:-1]
    acc = (tpr * len(anomalous) + tnr * len(normal)) / (len(anomalous) + len(normal))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.step(t, acc, where="post", label="accuracy")
    ax.step(t, tpr, where="post", label="TPR")
    ax.step(t, tnr, where="post", label="TNR")
    ax.set_xlabel("threshold (score)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """ROC curves with AUC for every model (Figure 6). curves: label -> (normal, anomalous)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, (n, a) in curves.items():
        r = roc(n, a)
        ax.plot(r.fpr, r.tpr, drawstyle="steps-post", label=f"{label} (AUC {auc(n, a):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def average_loss(per_model: dict[str, dict[str, float]], path: Path) -> None:
    """Average score of each model on each class's samples (Figures 11-13)."""
    plt = _plt()
    models = list(per_model)
    classes = sorted({c for v in per_model.values() for c in v})
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(classes) * max(1, len(models)) / 2), 3.6))
    w = 0.8 / max(len(models), 1)
    x = np.arange(len(classes))
    for i, m in enumerate(models):
        ax.bar(x + i * w, [per_model[m].get(c, np.nan) for c in classes], w, label=m)
    ax.set_xticks(x + w * (len(models) - 1) / 2, classes, rotation=20)
    ax.set_ylabel("average score (loss)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
