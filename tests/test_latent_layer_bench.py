"""bench/latent_layer.py: its batched z search is the autograd reference's, part by part, and the
layer searches start where z does."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import latent_layer  # noqa: E402


def test_the_batched_search_is_the_reference_search_part_by_part(encoded_run, synth_data):
    from agent.segment.preprocess import Preprocessing
    from export.autograd import search_seed
    from training.encoder import load_encoder
    from training.train import generator_from_checkpoint, load_checkpoint
    st = load_checkpoint(encoded_run)
    g, _ = generator_from_checkpoint(st)
    enc, _ = load_encoder(encoded_run)
    x = torch.from_numpy(latent_layer.inputs(synth_data / "test" / "sphere", None,
                                             Preprocessing.from_dict(st["preprocessing"]), g.arch.size))
    got = latent_layer.search(g, enc, x, "z", 3, 5e-2, batch=2)  # (batches of 2 and 1)
    with torch.no_grad():
        z0 = enc(x).reshape(len(x), -1)
    want = [search_seed(g, x[i:i + 1], z0[i], 3, 5e-2, 0.0, scope="none", loss="fg", depth_weight=3.0, pool=4)
            for i in range(len(x))]
    assert got == pytest.approx(want, rel=1e-4)
    # with no steps, every variant scores G(E(x)) itself
    at_start = [latent_layer.search(g, enc, x, v, 0, 5e-2) for v in latent_layer.VARIANTS]
    assert np.allclose(at_start[0], at_start[1], rtol=1e-5) and np.allclose(at_start[0], at_start[2], rtol=1e-5)
    assert not np.allclose(latent_layer.search(g, enc, x, "h4", 3, 5e-2), got)
