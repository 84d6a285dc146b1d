"""Algorithm 1 with PyTorch autograd and torch.optim.Adam: the oracle and the baseline.

For each of n_seed seeds: z ~ N(0, I) and a private copy of theta; k Adam steps on z
(lr_z) and theta (lr_theta) of the reconstruction loss; the seed's score is the loss
after the k-th update. The sample's score is the mean over seeds.
"""
from __future__ import annotations

import copy

import torch

from training.losses import local_score, reconstruction_loss
from training.model import COLOUR, COLOUR_IDENTITY, Architecture, Generator, apply_colour


def search_seed(g: Generator, x: torch.Tensor, z0: torch.Tensor, k: int, lr_z: float, lr_theta: float,
                scope: str = "all", loss: str = "mse", fg_threshold: float = -0.9,
                trace: list | None = None, depth_weight: float = 1.0, pool: int = 1, score_cells: int = 0,
                cell_stats: tuple | None = None) -> float:
    """One seed of Algorithm 1 from z0 (nz,); returns the loss after the k-th update (with
    score_cells K: the mean of the K cells that differ most, `local_score`)."""
    gs = copy.deepcopy(g).eval()
    z = z0.detach().clone().reshape(1, -1).requires_grad_(True)
    groups = [{"params": [z], "lr": lr_z}]
    colour = None
    if scope == "all":
        params = list(gs.parameters())
    elif scope == "bn":
        params = [p for m in gs.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    elif scope == COLOUR:  # a colour layer after G, starting at the identity (training.model.apply_colour)
        colour = torch.tensor([COLOUR_IDENTITY], dtype=z.dtype).requires_grad_(True)
        params = [colour]
    else:
        params = []
    for p in gs.parameters():
        p.requires_grad_(any(p is q for q in params))
    if params:
        groups.append({"params": params, "lr": lr_theta})
    opt = torch.optim.Adam(groups)

    def draw():
        y = gs(z)
        return y if colour is None else apply_colour(y, colour)
    for _ in range(k):
        opt.zero_grad(set_to_none=True)
        y = draw()
        l = reconstruction_loss(y, x, loss, fg_threshold, depth_weight, pool).sum()
        if trace is not None:
            trace.append(y.detach().clone())
        l.backward()
        opt.step()
    with torch.no_grad():
        if score_cells:
            return local_score(draw(), x, loss, score_cells, fg_threshold, depth_weight, pool, cell_stats).item()
        return reconstruction_loss(draw(), x, loss, fg_threshold, depth_weight, pool).item()


def score(g: Generator, x: torch.Tensor, z0: torch.Tensor, k: int, lr_z: float, lr_theta: float,
          scope: str = "all", loss: str = "mse", fg_threshold: float = -0.9,
          depth_weight: float = 1.0, pool: int = 1) -> tuple[float, list[float]]:
    """(mean over seeds, per-seed losses) for x (1, 4, H, W) and starting latents z0 (S, nz)."""
    per = [search_seed(g, x, z0[s], k, lr_z, lr_theta, scope, loss, fg_threshold,
                       depth_weight=depth_weight, pool=pool) for s in range(z0.shape[0])]
    return sum(per) / len(per), per


def torch_generator_from_bundle(bundle) -> Generator:
    """Rebuild the generator (eval mode) from a loaded bundle's architecture and theta."""
    return Generator.from_theta(Architecture.from_dict(bundle.manifest["architecture"]), bundle.theta)


class AutogradSearcher:
    """`adgan score --backend torch`: the autograd oracle with the runtime's z0 and defaults."""

    def __init__(self, bundle, seed: int = 0, **overrides) -> None:
        from dataclasses import replace

        self.bundle, self.seed = bundle, seed
        self.params = replace(bundle.search, **{k: v for k, v in overrides.items() if v is not None})
        self.g = torch_generator_from_bundle(bundle)
        self.seeds_per_call = bundle.seeds_per_call
        self.encoder = None
        if self.params.z_init == "encoder":  # z0 is an input to Algorithm 1: the runtime's own encoder
            from agent.scoring.encoder import LatentEncoder
            self.encoder = LatentEncoder(bundle)

    def score(self, x):
        import numpy as np

        from agent.scoring.search import result, start_latents
        p = self.params
        z0 = torch.from_numpy(start_latents(p, self.seed, self.seeds_per_call, self.bundle.nz, x, self.encoder)[: p.n_seed])
        xt = torch.from_numpy(x).unsqueeze(0)
        per = []
        for s in range(p.n_seed):
            per.append(search_seed(self.g, xt, z0[s], p.k, p.lr_z, p.lr_theta, p.theta_scope, p.loss,
                                   p.fg_threshold, depth_weight=p.depth_weight, pool=p.pool,
                                   score_cells=p.score_cells, cell_stats=self.bundle.cell_stats))
        per_seed = np.array(per, np.float32)
        return result(self.bundle, x, per_seed, np.zeros_like(x))

    def score_batch(self, xs):
        """The oracle searches one part at a time."""
        return [self.score(x) for x in xs]
