"""An encoder for the latent search's starting point (f-AnoGAN's izi_f, Schlegl et al. 2019).

After the generator G is trained, an encoder E: x -> z is trained on the same normal
samples with G frozen, to minimise the reconstruction loss of G(E(x)) against x. The
search then starts at z0 = E(x) instead of a random z: it begins near the normal sample
that explains x best, needs fewer steps, and has less room to wander into fitting an
anomaly. The search itself (Algorithm 1, k Adam steps) is unchanged.

E mirrors the discriminator: Conv(4, 2, 1) + BatchNorm + LeakyReLU(0.2) blocks down to
4x4, then a 4x4 convolution to nz. It is stored in the run folder as `encoder.pt` and
exported into bundles as `encoder.onnx`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from training.losses import reconstruction_loss
from training.model import Architecture, init_weights

log = logging.getLogger(__name__)
ENCODER_FILE = "encoder.pt"
ENCODER_FORMAT = 1


class Encoder(nn.Module):
    def __init__(self, arch: Architecture, features: int = 32) -> None:
        super().__init__()
        self.arch, self.features = arch, features
        layers: list[nn.Module] = []
        c_in = arch.channels
        for i in range(arch.n_blocks):
            c = features * 2 ** i
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c
        layers.append(nn.Conv2d(c_in, arch.nz, 4, 1, 0))
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, size, size) -> (B, nz)."""
        return self.net(x).reshape(x.shape[0], self.arch.nz)


def encoder_loss(y: torch.Tensor, x: torch.Tensor, kind: str, fg_threshold: float) -> torch.Tensor:
    return reconstruction_loss(y, x, kind, fg_threshold).mean()


def train_encoder(run: str | Path, epochs: int, features: int = 32, batch_size: int = 32, lr: float = 2e-4,
                  loss: str = "fg", fg_threshold: float = -0.5, seed: int = 0, data: str | Path | None = None,
                  progress: bool = True) -> Path:
    """Train E for the run's generator (EMA weights when present) on the run's own samples, with
    the run's augmentation (flips, shifts, colour), so E covers what G was trained to draw."""
    from training.data import augment, load_run_data
    from training.train import generator_from_checkpoint, load_checkpoint, write_state

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 0 < lr < float("inf"):
        raise ValueError(f"--lr must be a finite number > 0, got {lr}")
    if not -1 < fg_threshold < 1:
        raise ValueError(f"--fg-threshold must be in (-1, 1), got {fg_threshold}")
    run = Path(run)
    st = load_checkpoint(run)
    g, which = generator_from_checkpoint(st, True)
    for p in g.parameters():
        p.requires_grad_(False)
    arch = Architecture.from_dict(st["architecture"])
    d = st["data"]
    cd = load_run_data(st, data, run)
    torch.manual_seed(seed)
    c = st["config"]
    aug = dict(flip=bool(c.get("flip")), shift=int(c.get("shift") or 0), hue=float(c.get("hue_jitter") or 0),
               saturation=float(c.get("saturation_jitter") or 0), brightness=float(c.get("brightness_jitter") or 0))
    gen = torch.Generator().manual_seed(seed)
    enc = Encoder(arch, features)
    opt = torch.optim.Adam(enc.parameters(), lr=lr, betas=(0.5, 0.999))
    x_all, n = cd.x, len(cd.x)
    history, t0 = [], time.perf_counter()
    bar = tqdm(range(epochs), desc=f"encoder {d['class']}", unit="epoch", disable=not progress)
    for _ in bar:
        perm, total = torch.randperm(n), 0.0
        enc.train()
        for i in range(0, n, batch_size):
            xb = x_all[perm[i:i + batch_size]]
            if len(xb) < 2:  # BatchNorm needs two samples
                continue
            xb = augment(xb, gen=gen, **aug)
            l = encoder_loss(g(enc(xb)), xb, loss, fg_threshold)
            opt.zero_grad(set_to_none=True)
            l.backward()
            opt.step()
            total += l.item() * len(xb)
        history.append(total / n)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    enc.eval()
    out = run / ENCODER_FILE
    state = {"format": ENCODER_FORMAT, "architecture": arch.to_dict(), "features": features,
                "state": enc.state_dict(), "generator_weights": which, "loss": loss, "fg_threshold": fg_threshold,
                "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "history": history, "augmentation": aug,
                "data": {k: v for k, v in d.items() if k != "frames"}, "seconds": time.perf_counter() - t0,
                "generator_g_steps": st["g_steps"]}
    try:
        write_state(out, state)
    except OSError as e:  # a full disk: the run's generator is untouched, and what to run again
        raise OSError(e.errno, f"{e.strerror or e} while writing {out}: the encoder was not written (the "
                               f"generator's checkpoint is unchanged); free space, then train it again: 'adgan "
                               f"train-encoder {run} --epochs {epochs}' with the same options") from e
    return out


def encoder_matches(run: str | Path, g_steps: int) -> bool:
    """True when the run holds an encoder trained for its generator after `g_steps` steps."""
    if not (Path(run) / ENCODER_FILE).is_file():
        return False
    return load_encoder(run)[1].get("generator_g_steps") == g_steps


def load_encoder(run: str | Path) -> tuple[Encoder, dict]:
    from training.train import load_run_file
    st = load_run_file(run, ENCODER_FILE, ENCODER_FORMAT, "encoder",
                       "train one with 'adgan train-encoder RUN --epochs N'")
    enc = Encoder(Architecture.from_dict(st["architecture"]), st["features"])
    enc.load_state_dict(st["state"])
    return enc.eval(), st
