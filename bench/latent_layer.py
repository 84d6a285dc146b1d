"""A screen: searching an intermediate activation of the generator instead of z (issue 15).

On a new batch the search's residual is dominated by how well G reproduces a new instance
(bench/RESULTS.md, "Why image scores miss damage"): a damaged part scores as its intact twin.
A search with more freedom than z might reproduce a new instance's surface while the later
layers still cannot draw a local defect (the layer-wise GAN inversion of the literature). This
screen compares, in PyTorch autograd (no explicit graphs), with the same loss, start and steps:

- `z`: the default search, Adam on z from E(x) (lr_z 5e-2);
- `h4`: Adam on the 4 x 4 activation after G's first block, starting at its value for E(x);
- `h8`: the same on the 8 x 8 activation after the second block.

The score is the search's final loss (loss fg, depth weight 3, 4 x 4 cells, as the default;
the relief and shape checks are left out for all three). Per class: AUROC of the damaged twins
against their intact copies (`adgan dataset damage`'s five and bench/other_damage.py's five) and
of the other classes' parts against the class's own (class swaps), on one block of frames.
Parts are searched in batches (each part's loss is its own, so Adam's steps are each part's).

    .venv/bin/python bench/latent_layer.py ../shared/data/paper-rgbd --frames 700:1000 \\
        --class sphere=runs/oh-sphere,runs/our-damage,runs/other-damage \\
        --class cylinder=runs/oh-cylinder,runs/our-damage-cyl,runs/other-damage-cyl \\
        --class rectangle=runs/oh-box,runs/our-damage-box,runs/other-damage-box
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import numpy as np  # noqa: E402
import torch  # noqa: E402

VARIANTS = {"z": None, "h4": 3, "h8": 6}  # the net's modules before the searched activation (None: z)


def inputs(folder: Path, frames, prep, size: int) -> np.ndarray:
    from agent.segment.preprocess import reframe, sample_to_input
    from agent.sources.dataset import check_preprocessing, frame_numbers, read_sample
    rec = check_preprocessing(folder, prep)
    return np.stack([sample_to_input(reframe(read_sample(folder, n), rec, prep), size)
                     for n in frame_numbers(folder, frames)])


def search(g, enc, x: torch.Tensor, variant: str, k: int, lr: float, batch: int = 64) -> np.ndarray:
    """The final loss per part of x (N, 4, S, S)."""
    from training.losses import reconstruction_loss
    cut = VARIANTS[variant]
    head = g.net[:cut] if cut is not None else None
    tail = g.net[cut:] if cut is not None else g.net
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        with torch.no_grad():
            z = enc(xb).reshape(len(xb), -1, 1, 1)
            v = (head(z) if head is not None else z).clone()
        v.requires_grad_(True)
        opt = torch.optim.Adam([v], lr=lr)
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            reconstruction_loss(tail(v), xb, "fg", -0.9, 3.0, 4).sum().backward()
            opt.step()
        with torch.no_grad():
            out.append(reconstruction_loss(tail(v), xb, "fg", -0.9, 3.0, 4).numpy())
    return np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="the paper's dataset root (class swaps)")
    ap.add_argument("--frames", default="700:1000")
    ap.add_argument("--class", dest="classes", action="append", required=True,
                    help="CLASS=RUN,OUR_DAMAGE,OTHER_DAMAGE (repeatable)")
    ap.add_argument("--k", type=int, default=19)
    ap.add_argument("--lr", type=float, default=5e-2)
    ap.add_argument("--out", default=None, help="a JSON file for the numbers")
    a = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from agent.segment.preprocess import Preprocessing
    from agent.sources.dataset import parse_frames
    from training.encoder import load_encoder
    from training.train import generator_from_checkpoint, load_checkpoint

    torch.manual_seed(0)
    frames = parse_frames(a.frames)
    spec = dict(c.split("=", 1) for c in a.classes)
    results = {}
    for cls, paths in spec.items():
        run, ours, other = (Path(p) for p in paths.split(","))
        st = load_checkpoint(run)
        g, _ = generator_from_checkpoint(st)
        enc, _ = load_encoder(run)
        for p in g.parameters():
            p.requires_grad_(False)
        for p in enc.parameters():
            p.requires_grad_(False)
        prep = Preprocessing.from_dict(st["preprocessing"])
        size = g.arch.size
        sets = {"intact": inputs(ours / cls, frames, prep, size)}
        for root, tag in ((ours, "ours"), (other, "other")):
            for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(cls + "_")):
                sets[f"{tag}:{d.name[len(cls) + 1:]}"] = inputs(d, frames, prep, size)
        for o in spec:
            if o != cls:
                sets[f"swap:{o}"] = inputs(Path(a.data) / o, frames, prep, size)
        for variant in VARIANTS:
            t0 = time.perf_counter()
            s = {name: search(g, enc, torch.from_numpy(x), variant, a.k, a.lr) for name, x in sets.items()}

            def au(names):
                bad = np.concatenate([s[n] for n in names])
                y = np.r_[np.zeros(len(s["intact"])), np.ones(len(bad))]
                return float(roc_auc_score(y, np.r_[s["intact"], bad]))
            row = {n: au([n]) for n in s if n != "intact"}
            for tag in ("ours", "other", "swap"):
                row[f"{tag}:all"] = au([n for n in s if n.startswith(tag + ":")])
            row["intact_median"] = float(np.median(s["intact"]))
            results[(cls, variant)] = row
            print(f"{cls:9s} {variant:3s} ours {row['ours:all']:.3f} other {row['other:all']:.3f} swaps "
                  f"{row['swap:all']:.3f} | " + " ".join(f"{n.split(':')[1]} {v:.2f}" for n, v in row.items()
                                                        if ":" in n and not n.endswith(":all"))
                  + f" | intact median {row['intact_median']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({f"{c} {v}": r for (c, v), r in results.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
