"""Training defaults: the recipe measured best on the paper's real frames, and the paper's own.

`adgan train` takes every value it is not given from RECIPE, or from PAPER with --paper.
The recipe's numbers and how they were measured: bench/RESULTS.md (issue 8).
"""
from __future__ import annotations

# gan (BCE) at features 32 with an EMA of the generator, then an encoder x -> z for the
# search's start (f-AnoGAN's izi_f). 500 epochs of 236 samples = 3,500 generator steps
# (250 score the football class 0.02-0.04 lower, bench/RESULTS.md).
# Every sample is cropped to its part before resizing ("object"), so the model does not learn
# sizes (issue 15: the paper's whole frame failed on a ball nearer the camera; every recipe
# measured by blocked CV frames the part, bench/RESULTS.md "One default for every class").
RECIPE = {"kind": "gan", "epochs": 500, "batch_size": 32, "features_g": 32, "features_d": 32, "ema": 0.999,
          "encoder_epochs": 100, "framing": "object"}
# DCGAN as the paper trains it: features 64, batch 64, no EMA, the search starts at random z,
# the samples' own framing (the whole frame for the paper's layout).
PAPER = {"kind": "gan", "epochs": 250, "batch_size": 64, "features_g": 64, "features_d": 64, "ema": 0.0,
         "encoder_epochs": 0}


def resolve(args, paper: bool) -> None:
    """Fill every recipe option the user left unset (None) in the argparse namespace `args`."""
    for key, value in (PAPER if paper else RECIPE).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
