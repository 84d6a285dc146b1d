"""Sample grids and loss curves of a training run (the paper's Figures 2, 3 and 14-16)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agent.segment.preprocess import input_to_sample
from agent.visual import sample_grid, write_png


def write_sample_grid(x: torch.Tensor, path: Path, title: str, per_row: int = 8) -> None:
    """Generated (N, 4, S, S) in [-1, 1] -> PNG, RGB above depth."""
    samples = [input_to_sample(s) for s in x.detach().cpu().numpy()]
    rows = [samples[i:i + per_row] for i in range(0, len(samples), per_row)]
    labels = [title] + [""] * (len(rows) - 1)
    write_png(path, sample_grid(rows, labels, scale=2))


def write_loss_curves(history: list[dict], path: Path, kind: str) -> None:
    """Discriminator/critic and generator losses (and the Wasserstein estimate) per generator step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    it = np.array([h["g_step"] for h in history])
    fig, axes = plt.subplots(1, 2 if kind != "gan" else 1, figsize=(11 if kind != "gan" else 6, 3.6),
                             squeeze=False)
    ax = axes[0, 0]
    ax.plot(it, [h["d"] for h in history], label="discriminator" if kind == "gan" else "critic", lw=0.8)
    ax.plot(it, [h["g"] for h in history], label="generator", lw=0.8)
    ax.set_xlabel("generator step")
    ax.set_ylabel("loss")
    ax.set_title(f"{kind} losses")
    ax.legend()
    if kind != "gan":
        ax = axes[0, 1]
        w = np.array([h["w"] for h in history])
        ax.plot(it, w, lw=0.6, alpha=0.5, label="E[D(x)] - E[D(G(z))]")
        k = max(1, len(w) // 50)
        ax.plot(it[k - 1:], np.convolve(w, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
        ax.set_xlabel("generator step")
        ax.set_title("Wasserstein estimate")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
