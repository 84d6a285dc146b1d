"""DCGAN generator and discriminator/critic for 4-channel RGB-D, as the paper's DC_model.

Generator: z (nz x 1 x 1) -> ConvTranspose + BatchNorm + ReLU blocks with 16, 8, 4, 2
(and 1 at 128 px) x features_g channels, the first block 4x4, each next one doubling the
size -> a final ConvTranspose to 4 channels and Tanh. At 32 px the blocks are 16, 8, 4.
Unlike DCGAN the final ConvTranspose has a bias (4 numbers), initialised from the data's
mean (`init_output_bias`); see there why.

Discriminator: Conv + norm + LeakyReLU(0.2) blocks with 1, 2, 4, 8 (, 16) x features_d
channels down to 4x4, then a 4x4 convolution to one logit. The first block has no norm
(as DCGAN). The norm depends on the objective:
- gan:     BatchNorm; the logit goes through BCE-with-logits (a sigmoid in the loss).
- wgan:    BatchNorm, no sigmoid (a critic, Arjovsky et al.).
- wgan-gp: no BatchNorm, which mixes samples and breaks the per-sample gradient
           penalty; LayerNorm over (C, H, W) instead (GroupNorm with one group), as
           Gulrajani et al. recommend.
The paper's code kept BatchNorm and a sigmoid in the critic of its "WGAN"; we do not.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from agent.records import Record, record

KINDS = ("gan", "wgan", "wgan-gp")
SIZES = (32, 64, 128)


@record
class Architecture(Record):
    """Everything needed to rebuild the networks (stored in checkpoints and bundles)."""

    size: int = 64
    nz: int = 100
    features_g: int = 64
    features_d: int = 64
    channels: int = 4
    kind: str = "gan"

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("nz", "features_g", "features_d", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def n_blocks(self) -> int:
        """Generator blocks before the output layer: 4x4 up to size/2."""
        return int(math.log2(self.size)) - 2

    def g_channels(self) -> list[int]:
        return [self.features_g * m for m in (16, 8, 4, 2, 1)[: self.n_blocks]]

    def d_channels(self) -> list[int]:
        return [self.features_d * m for m in (1, 2, 4, 8, 16)[: self.n_blocks]]



def init_weights(m: nn.Module) -> None:
    """DCGAN init: convolutions N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# Theta scope "colour": a colour layer after G's output, private to each search like theta in
# Algorithm 1 and adapted with z: y_rgb' = M y_rgb + b per part (M 3x3, b 3; depth unchanged),
# stored as one vector [M row by row, b] that starts at the identity. G draws the part's shape
# and shading; the part's own colour (a new batch's ball, can or carton) is fitted, so what is
# left in the residual is local: a stain, a hole, a foreign body.
COLOUR = "colour"
COLOUR_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)


def apply_colour(y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(B, 4, H, W) G's output -> the same with its RGB through the colour layer c (B, 12)."""
    b_, _, h, w = y.shape
    m, off = c[:, :9].reshape(b_, 3, 3), c[:, 9:12].reshape(b_, 3, 1)
    rgb = (torch.matmul(m, y[:, :3].reshape(b_, 3, h * w)) + off).reshape(b_, 3, h, w)
    return torch.cat([rgb, y[:, 3:4]], dim=1)


class Generator(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        ch = arch.g_channels()
        layers: list[nn.Module] = []
        c_in = arch.nz
        for i, c in enumerate(ch):
            layers += [nn.ConvTranspose2d(c_in, c, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(True)]
            c_in = c
        layers += [nn.ConvTranspose2d(c_in, arch.channels, 4, 2, 1, bias=True), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    @torch.no_grad()
    def init_output_bias(self, channel_mean: torch.Tensor) -> None:
        """Start the output at the data's mean level per channel (bias = atanh(mean)).

        Inspection samples are mostly removed background (-1): from DCGAN's init the
        output sits near 0 and the discriminator wins on brightness alone before the
        generator, moving its bias by ~lr per step, can catch up.
        """
        out = self.net[-2]
        out.bias.copy_(torch.atanh(channel_mean.clamp(-0.95, 0.95)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, nz) or (B, nz, 1, 1) -> (B, 4, size, size) in [-1, 1]."""
        return self.net(z.reshape(z.shape[0], self.arch.nz, 1, 1))

    def theta_tensors(self) -> dict[str, torch.Tensor]:
        """theta by graph name, the tensors themselves: per block i 'w{i}', 'gamma{i}', 'beta{i}'
        and the BatchNorm running statistics 'mean{i}', 'var{i}'; the output layer 'w{i}', 'bias{i}'.
        The one walk over the layers that the explicit graphs, bundles and the reference share."""
        out: dict[str, torch.Tensor] = {}
        mods = list(self.net)
        i = j = 0
        while j < len(mods):
            conv = mods[j]
            out[f"w{i}"] = conv.weight
            if j + 1 < len(mods) and isinstance(mods[j + 1], nn.BatchNorm2d):
                bn = mods[j + 1]
                out[f"gamma{i}"], out[f"beta{i}"] = bn.weight, bn.bias
                out[f"mean{i}"], out[f"var{i}"] = bn.running_mean, bn.running_var
                j += 3
            else:
                out[f"bias{i}"] = conv.bias
                j += 2
            i += 1
        return out

    def theta(self) -> dict[str, torch.Tensor]:
        """`theta_tensors`, detached."""
        return {k: v.detach() for k, v in self.theta_tensors().items()}

    @classmethod
    def from_theta(cls, arch: Architecture, theta: dict) -> "Generator":
        """A generator (eval mode) with the weights of a theta dict (tensors or arrays, `theta` names)."""
        g = cls(arch).eval()
        with torch.no_grad():
            for name, t in g.theta_tensors().items():
                t.copy_(torch.as_tensor(theta[name]))
        return g


class Discriminator(nn.Module):
    """Discriminator (gan) or critic (wgan, wgan-gp): one unbounded score per sample."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        ch = arch.d_channels()
        layers: list[nn.Module] = []
        c_in = arch.channels
        res = arch.size
        for i, c in enumerate(ch):
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=False))
            res //= 2
            if i > 0:
                layers.append(nn.GroupNorm(1, c) if arch.kind == "wgan-gp" else nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c
        assert res == 4, res  # by construction of n_blocks
        layers.append(nn.Conv2d(c_in, 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, size, size) -> (B,) logits (gan) or critic values (wgan, wgan-gp)."""
        return self.net(x).reshape(x.shape[0])
