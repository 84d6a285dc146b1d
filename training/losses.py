"""The reconstruction losses that define a score: one definition, used by training (the encoder's
objective), the autograd oracle of Algorithm 1 and, mirrored op for op, the explicit graphs.

kind (`LossName`): mse over the whole image (the paper); fg over pixels where the sample or
G(z) is foreground; fg_input over the sample's own object pixels.
"""
from __future__ import annotations

import torch

from agent.scoring.bundle import LOSSES


def channel_weights(channels: int, depth_weight: float) -> list[float]:
    """Per-channel weights of the squared error: depth (the last channel) counts depth_weight
    times an RGB channel; scaled to mean 1 so the loss stays on the scale of a plain mean."""
    if depth_weight <= 0:
        raise ValueError(f"depth_weight must be > 0, got {depth_weight}")
    w = [1.0] * (channels - 1) + [float(depth_weight)]
    return [v * channels / sum(w) for v in w]


def counted_pixels(y: torch.Tensor, x: torch.Tensor, kind: str, fg_threshold: float = -0.9) -> torch.Tensor:
    """(B, 1, H, W) 1 where the loss counts a pixel: everywhere (mse), where the sample or G(z)
    is foreground (fg), where the sample is (fg_input)."""
    with torch.no_grad():
        if kind == "mse":
            return torch.ones_like(y[:, 3:4])
        m = x[:, 3:4] > -1.0
        if kind == "fg":
            m = m | (y[:, 3:4] > fg_threshold)
        return m.to(y.dtype).expand(y.shape[0], 1, *y.shape[2:])


def local_cell_energy(y: torch.Tensor, x: torch.Tensor, kind: str, fg_threshold: float = -0.9,
                      depth_weight: float = 1.0, pool: int = 1) -> torch.Tensor:
    """(B, cells) per pool x pool cell: the channel-weighted squared mean residual over the
    cell's counted pixels, averaged over channels (0 where a cell counts no pixel)."""
    m = counted_pixels(y, x, kind, fg_threshold)
    diff = (y - x) * m
    if pool > 1:
        n = torch.clamp(torch.nn.functional.avg_pool2d(m, pool) * pool * pool, min=1.0)
        r = torch.nn.functional.avg_pool2d(diff, pool) * pool * pool / n
    else:
        r = diff
    w = y.new_tensor(channel_weights(y.shape[1], depth_weight)).reshape(1, -1, 1, 1)
    return (r * r * w).mean(1).flatten(1)


def local_score(y: torch.Tensor, x: torch.Tensor, kind: str, cells: int, fg_threshold: float = -0.9,
                depth_weight: float = 1.0, pool: int = 1, cell_stats: tuple | None = None) -> torch.Tensor:
    """(B,) the mean over the `cells` pool x pool cells that differ most of the cell's energy
    (`local_cell_energy`). With cell_stats (mu, sd) per cell: of (energy - mu) / sd, how
    unusual each cell is against the training frames' own residuals."""
    e = local_cell_energy(y, x, kind, fg_threshold, depth_weight, pool)
    if cell_stats is not None:
        mu, sd = (torch.as_tensor(v, dtype=e.dtype).reshape(1, -1) for v in cell_stats)
        e = (e - mu) / sd
    return torch.topk(e, cells, dim=1).values.mean(1)


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor, kind: str, fg_threshold: float = -0.9,
                        depth_weight: float = 1.0, pool: int = 1) -> torch.Tensor:
    """Per-sample loss (B,): mean squared error over the image (mse), over the pixels where the
    sample or its reconstruction is foreground (fg), or where the sample is (fg_input); the
    depth channel weighted by depth_weight against each RGB channel (1: a plain mean).

    pool > 1 compares on pool x pool cells: in each cell the residual is averaged over the
    cell's counted pixels (the mask above; all pixels for mse) and squared, weighted by how
    many pixels it averages. Pixel noise and texture that G(z) places a pixel off cancel
    inside a cell; a part that differs in colour or shape over a cell does not. pool 1 is
    the per-pixel loss."""
    diff = y - x
    cw = y.new_tensor(channel_weights(y.shape[1], depth_weight)).reshape(1, -1, 1, 1) if depth_weight != 1.0 else None
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    if pool < 1 or y.shape[-1] % pool or y.shape[-2] % pool:
        raise ValueError(f"pool must be >= 1 and divide the image size {tuple(y.shape[-2:])}, got {pool}")
    if kind == "mse" and pool == 1:
        d2 = diff * diff
        return (d2 if cw is None else d2 * cw).flatten(1).mean(1)
    m = counted_pixels(y, x, kind, fg_threshold)
    with torch.no_grad():
        cnt = torch.clamp(m.flatten(1).sum(1), min=1.0) * y.shape[1]
    if pool == 1:
        a2 = diff * diff * m
    else:
        n = torch.nn.functional.avg_pool2d(m, pool) * pool * pool  # counted pixels per cell
        a = torch.nn.functional.avg_pool2d(diff * m, pool) * pool * pool  # residual summed per cell
        a2 = a * a / torch.clamp(n, min=1.0)  # = n * (the cell's mean residual)^2
    return (a2 if cw is None else a2 * cw).flatten(1).sum(1) / cnt
