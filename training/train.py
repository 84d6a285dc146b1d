"""The training loop: one generator per class, checkpoints that resume exactly."""
from __future__ import annotations

import copy
import errno
import io
import json
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from agent import __version__, durable
from agent.records import Record, record
from training.data import ClassData, augment
from training.model import Architecture, Discriminator, Generator
from training.objectives import RECIPES, d_loss, g_loss, gradient_penalty

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1
CHECKPOINT = "checkpoint.pt"


@record
class TrainConfig(Record):
    """What a run was asked to do; stored in the checkpoint and in config.json."""

    data: str
    cls: str
    kind: str = "wgan-gp"
    epochs: int = 100
    batch_size: int = 64
    lr_g: float | None = None  # None: the objective's recipe
    lr_d: float | None = None
    n_critic: int | None = None
    features_g: int = 64
    features_d: int = 64
    size: int = 64
    seed: int = 0
    frames: tuple[int, int] | None = None
    exclude_frames: tuple[int, int] | None = None  # a held-out block inside `frames` (blocked CV)
    ema: float = 0.0  # decay of an exponential moving average of G's weights; 0 = off
    flip: bool = False
    shift: int = 0
    hue_jitter: float = 0.0  # degrees; with saturation_/brightness_jitter: the part's colour (data.color_jitter)
    saturation_jitter: float = 0.0
    brightness_jitter: float = 0.0
    sample_every: int = 0  # epochs between numbered sample grids; 0 = about 50 per run
    framing: str | None = None  # None: the samples' own; "object": crop to the part (Preprocessing)
    margin: float | None = None  # of the part's box on each side, with framing "object" (None: 0.15)

    def __post_init__(self) -> None:
        if self.kind not in RECIPES:
            raise ValueError(f"--kind must be one of {', '.join(RECIPES)}, got {self.kind!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be >= 1")
        for name in ("lr_g", "lr_d"):  # (an infinite one trained to NaN weights and said nothing)
            v = getattr(self, name)
            if v is not None and not 0 < v < float("inf"):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema must be in [0, 1), got {self.ema}")
        if self.shift < 0:
            raise ValueError(f"--shift must be >= 0, got {self.shift}")
        if not 0 <= self.hue_jitter <= 180:
            raise ValueError(f"--hue-jitter must be in [0, 180] degrees, got {self.hue_jitter}")
        for name in ("saturation_jitter", "brightness_jitter"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")

    @property
    def recipe(self):
        r = RECIPES[self.kind]
        return r.__class__(lr_g=self.lr_g or r.lr_g, lr_d=self.lr_d or r.lr_d, betas=r.betas,
                           n_critic=self.n_critic or r.n_critic, clip=r.clip, gp_lambda=r.gp_lambda)


class Trainer:
    def __init__(self, cfg: TrainConfig, data: ClassData, out: Path) -> None:
        self.cfg, self.data, self.out = cfg, data, Path(out)
        self.arch = Architecture(size=cfg.size, features_g=cfg.features_g, features_d=cfg.features_d, kind=cfg.kind)
        torch.manual_seed(cfg.seed)  # weight init
        self.G, self.D = Generator(self.arch), Discriminator(self.arch)
        self.G.init_output_bias(data.x.mean(dim=(0, 2, 3)))
        self.G_ema = copy.deepcopy(self.G).eval() if cfg.ema > 0 else None
        r = cfg.recipe
        if r.betas is None:
            self.opt_g = torch.optim.RMSprop(self.G.parameters(), lr=r.lr_g)
            self.opt_d = torch.optim.RMSprop(self.D.parameters(), lr=r.lr_d)
        else:
            self.opt_g = torch.optim.Adam(self.G.parameters(), lr=r.lr_g, betas=r.betas)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=r.lr_d, betas=r.betas)
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.fixed_z = torch.randn(16, self.arch.nz, generator=self.rng)
        self.epoch = 0       # completed epochs
        self.saved_epoch: int | None = None  # the epoch of the checkpoint on disk (None: none yet)
        self.d_steps = 0     # discriminator/critic steps so far
        self.g_steps = 0
        self.history: list[dict] = []

    # -- one step ------------------------------------------------------------------------
    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.arch.nz, generator=self.rng)

    def d_step(self, real: torch.Tensor) -> dict:
        r, kind = self.cfg.recipe, self.cfg.kind
        with torch.no_grad():
            fake = self.G(self._z(real.shape[0]))
        d_real, d_fake = self.D(real), self.D(fake)
        loss = d_loss(kind, d_real, d_fake)
        out = {"d": loss.item(), "w": (d_real.mean() - d_fake.mean()).item()}
        if r.gp_lambda:
            eps = torch.rand(real.shape[0], generator=self.rng)
            gp = gradient_penalty(self.D, real, fake, eps)
            loss = loss + r.gp_lambda * gp
            out["gp"] = gp.item()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        if r.clip:
            with torch.no_grad():
                for p in self.D.parameters():
                    p.clamp_(-r.clip, r.clip)
        self.d_steps += 1
        return out

    def g_step(self, n: int) -> float:
        for p in self.D.parameters():
            p.requires_grad_(False)
        loss = g_loss(self.cfg.kind, self.D(self.G(self._z(n))))
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        for p in self.D.parameters():
            p.requires_grad_(True)
        if self.G_ema is not None:
            # Warm-up so that early averages are not dominated by the random init.
            decay = min(self.cfg.ema, (1 + self.g_steps) / (10 + self.g_steps))
            with torch.no_grad():
                for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
                    pe.lerp_(p, 1 - decay)
                for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
                    be.copy_(b)
        self.g_steps += 1
        return loss.item()

    def train_epoch(self) -> None:
        self.G.train()
        self.D.train()
        x = self.data.x
        n = x.shape[0]
        bs = min(self.cfg.batch_size, n)
        perm = torch.randperm(n, generator=self.rng)
        n_critic = self.cfg.recipe.n_critic
        for b in range(n // bs):
            real = augment(x[perm[b * bs:(b + 1) * bs]], self.cfg.flip, self.cfg.shift, self.rng,
                           self.cfg.hue_jitter, self.cfg.saturation_jitter, self.cfg.brightness_jitter)
            rec = self.d_step(real)
            if self.d_steps % n_critic == 0:
                rec["g"] = self.g_step(bs)
                rec.update(epoch=self.epoch + 1, g_step=self.g_steps)
                self.history.append(rec)
        self.epoch += 1

    def sample_generator(self) -> Generator:
        """The generator that samples and export use: the EMA copy when there is one."""
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def samples(self) -> torch.Tensor:
        """G(fixed z) in eval mode (BatchNorm running statistics, as scoring runs it)."""
        g = self.sample_generator()
        was = g.training
        g.eval()
        out = g(self.fixed_z)
        g.train(was)
        return out

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict:
        cfg = self.cfg.to_dict()
        return {
            "format": CHECKPOINT_FORMAT, "producer": f"adgan-edge {__version__}", "created": time.time(),
            "config": cfg, "architecture": self.arch.to_dict(),
            "preprocessing": self.data.preprocessing.to_dict(),
            "data": {"folder": str(self.data.folder), "class": self.cfg.cls, "n": len(self.data.frames),
                     "frames": self.data.frames, "fingerprint": self.data.fingerprint},
            "epoch": self.epoch, "d_steps": self.d_steps, "g_steps": self.g_steps, "history": self.history,
            "generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
            "generator_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "rng": self.rng.get_state(), "fixed_z": self.fixed_z,
        }

    def save(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CHECKPOINT
        state = self.state()
        write_state(path, state)  # (a power cut or a full disk keeps the last one whole)
        self.saved_epoch = self.epoch
        cfg = {k: v for k, v in state.items() if k in ("config", "architecture", "preprocessing", "epoch",
                                                       "g_steps", "producer")}
        cfg["data"] = {k: v for k, v in state["data"].items() if k != "frames"}
        durable.write_text(self.out / "config.json", json.dumps(cfg, indent=1, default=str) + "\n")
        return path

    def load_state(self, st: dict) -> None:
        self.G.load_state_dict(st["generator"])
        self.D.load_state_dict(st["discriminator"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(st["generator_ema"])
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        self.rng.set_state(st["rng"])
        self.fixed_z = st["fixed_z"]
        self.epoch, self.d_steps, self.g_steps = st["epoch"], st["d_steps"], st["g_steps"]
        self.saved_epoch = st["epoch"]
        self.history = list(st["history"])


def load_run_file(run: str | Path, name: str, fmt: int, what: str, how: str) -> dict:
    """A torch record stored in a run folder (`run/name`, or `run` itself as the file), validated."""
    p = Path(run)
    p = p / name if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no {what} at {p} ({how})")
    try:
        st = torch.load(p, map_location="cpu", weights_only=False)
    except OSError:
        raise
    except Exception as e:  # a file cut short or not torch's (RuntimeError, UnpicklingError, EOFError...)
        why = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise ValueError(f"{p}: not a readable {what} ({type(e).__name__}: {why}); the file is damaged or cut "
                         f"short (copied while being written? a full disk?): copy it again, or {how}") from None
    if not isinstance(st, dict) or st.get("format") != fmt:
        raise ValueError(f"{p} is not an adgan-edge {what} of format {fmt}")
    return st


def load_checkpoint(run: str | Path) -> dict:
    """A run folder's checkpoint (or a checkpoint file), validated."""
    return load_run_file(run, CHECKPOINT, CHECKPOINT_FORMAT, "checkpoint", "train with 'adgan train ... --out RUN'")


def generator_from_checkpoint(st: dict, use_ema: bool = True) -> tuple[Generator, str]:
    """The checkpoint's generator in eval mode (its EMA weights when present and asked for) and
    which weights those are ('generator_ema' or 'generator')."""
    arch = Architecture.from_dict(st["architecture"])
    g = Generator(arch)
    which = "generator_ema" if use_ema and st.get("generator_ema") is not None else "generator"
    g.load_state_dict(st[which])
    return g.eval(), which


def resume_config(st: dict, epochs: int) -> TrainConfig:
    return TrainConfig.from_dict({**st["config"], "epochs": epochs})


def check_resumable(st: dict, data: ClassData) -> None:
    if st["data"]["fingerprint"] != data.fingerprint:
        raise ValueError(f"the training data changed since the checkpoint was written "
                         f"({st['data']['n']} samples then, {len(data.frames)} now; fingerprints differ); "
                         "train into a new --out folder instead of resuming")


def fit(trainer: Trainer, progress: bool = True, on_sample=None) -> None:
    """Train to cfg.epochs, saving a checkpoint and samples along the way (and on Ctrl-C)."""
    cfg = trainer.cfg
    every = cfg.sample_every or max(1, cfg.epochs // 50)
    save_every = max(1, min(every, 25))
    bar = tqdm(total=cfg.epochs, initial=trainer.epoch, desc=f"train {cfg.cls} ({cfg.kind})", unit="epoch",
               disable=not progress)
    try:
        while trainer.epoch < cfg.epochs:
            trainer.train_epoch()
            bar.update()
            if trainer.history:
                h = trainer.history[-1]
                bar.set_postfix(d=f"{h['d']:.3f}", g=f"{h['g']:.3f}", g_steps=trainer.g_steps)
            last = trainer.epoch == cfg.epochs
            if on_sample is not None:
                # every epoch: the latest grid and the loss curves; a numbered grid every `every`
                on_sample(trainer, keep=trainer.epoch % every == 0 or last)
            if trainer.epoch % save_every == 0 or last:
                trainer.save()
    except KeyboardInterrupt:
        trainer.save()
        log.warning("interrupted at epoch %d: checkpoint saved; continue with --resume", trainer.epoch)
        raise
    except OSError as e:  # a full disk, an I/O error: what is kept, and how to go on
        fix = "free space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "put that right"
        kept = (f"its checkpoint of epoch {trainer.saved_epoch} is whole: {fix}, then the same command with "
                "--resume continues from it" if trainer.saved_epoch is not None else "no checkpoint was written")
        raise OSError(e.errno, f"{e.strerror or e} while writing {e.filename or trainer.out}; training stopped after "
                               f"epoch {trainer.epoch}, and {kept}") from e
    finally:
        bar.close()


def write_state(path: Path, state: dict) -> None:
    """torch.save `state` to `path` durably. Serialised in memory first: torch's zip writer reads a
    full disk as "unexpected pos" (a RuntimeError), where the file's own write says ENOSPC."""
    buf = io.BytesIO()
    torch.save(state, buf)
    durable.write_bytes(path, buf.getbuffer())


def run_training(cfg: TrainConfig, out: str | Path, progress: bool = True, state: dict | None = None) -> Trainer:
    """Train a run to cfg.epochs in `out`: a new one, or the checkpoint `state` continued (its data
    must be unchanged). Writes the checkpoint, config.json, sample grids and the loss curves."""
    from training.data import load_class
    from training.plots import write_loss_curves, write_sample_grid

    out = Path(out)
    data = load_class(cfg.data, cfg.cls, cfg.size, cfg.frames, cfg.framing, cfg.margin, cfg.exclude_frames)
    trainer = Trainer(cfg, data, out)
    if state is not None:
        check_resumable(state, data)
        trainer.load_state(state)
        print(f"resuming {out} at epoch {trainer.epoch} of {cfg.epochs}")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    print(f"training {cfg.kind} on {len(data.frames)} '{cfg.cls}' samples from {data.folder} "
          f"({cfg.size}px, features_g {cfg.features_g}, features_d {cfg.features_d}) -> {out}")

    def on_sample(t: Trainer, keep: bool) -> None:
        latest = out / "samples" / "latest.png"
        write_sample_grid(t.samples(), latest, f"{cfg.cls} {cfg.kind} epoch {t.epoch} (G step {t.g_steps})")
        if keep:
            (out / "samples" / f"epoch_{t.epoch:05d}.png").write_bytes(latest.read_bytes())
        write_loss_curves(t.history, out / "losses.png", cfg.kind)

    fit(trainer, progress=progress, on_sample=on_sample)
    print(f"done: {trainer.epoch} epochs, {trainer.g_steps} generator steps; checkpoint {out / CHECKPOINT}, "
          f"samples {out / 'samples'}, losses {out / 'losses.png'}")
    return trainer
