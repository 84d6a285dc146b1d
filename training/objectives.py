"""GAN objectives: discriminator/critic and generator losses, and the gradient penalty.

- gan:     eq. 1 of the paper (BCE). The generator uses the non-saturating loss,
           -log D(G(z)), instead of log(1 - D(G(z))), which gives no gradient early on.
- wgan:    critic maximises E[D(x)] - E[D(G(z))] with weights clipped to [-c, c]
           (c = 0.01, RMSprop; Arjovsky et al. 2017).
- wgan-gp: the same with a gradient penalty lambda * (||grad D(x_hat)|| - 1)^2 on random
           interpolates instead of clipping (lambda = 10, Adam 1e-4, betas (0, 0.9);
           Gulrajani et al. 2017). This is what the paper's code ran as its "WGAN".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule defaults per objective (the papers' values)."""

    lr_g: float
    lr_d: float
    betas: tuple[float, float] | None  # None: RMSprop
    n_critic: int
    clip: float | None = None
    gp_lambda: float | None = None


RECIPES = {
    "gan": Recipe(lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), n_critic=1),
    "wgan": Recipe(lr_g=5e-5, lr_d=5e-5, betas=None, n_critic=5, clip=0.01),
    "wgan-gp": Recipe(lr_g=1e-4, lr_d=1e-4, betas=(0.0, 0.9), n_critic=5, gp_lambda=10.0),
}


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """mean over the batch of (||d critic(x_hat) / d x_hat||_2 - 1)^2, x_hat = eps real + (1-eps) fake.

    `eps` (B,) defaults to U(0, 1) per sample. Differentiable (create_graph) so the
    penalty trains the critic.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} differ")
    b = real.shape[0]
    if eps is None:
        eps = torch.rand(b, device=real.device, dtype=real.dtype)
    e = eps.reshape(b, *([1] * (real.dim() - 1)))
    x_hat = (e * real + (1 - e) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.reshape(b, -1).norm(2, dim=1) - 1) ** 2).mean()


def d_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator/critic loss to minimise (without the gradient penalty)."""
    if kind == "gan":
        return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    return d_fake.mean() - d_real.mean()


def g_loss(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss to minimise: non-saturating BCE for gan, -E[D(G(z))] for the WGANs."""
    if kind == "gan":
        return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
    return -d_fake.mean()
