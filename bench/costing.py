"""What the cost benchmarks share: an untrained generator of a given size (cost does not depend
on the weights), its encoder, bundles of it, and part-like inputs (a part on an empty
background, as real samples look)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import numpy as np  # noqa: E402
import torch  # noqa: E402


class CostModel:
    """An untrained generator (and encoder) at `size` px and `features`, seeded."""

    def __init__(self, size: int = 64, features: int = 32, seed: int = 0) -> None:
        from agent.segment.preprocess import Preprocessing
        from training.encoder import Encoder
        from training.model import Architecture, Generator
        torch.manual_seed(seed)
        self.arch = Architecture(size=size, features_g=features)
        self.g, self.enc = Generator(self.arch).eval(), Encoder(self.arch).eval()
        self.info = {"class": "cost", "kind": "gan", "preprocessing": Preprocessing(size=size).to_dict()}

    def bundle(self, path: Path, search, preprocessing: dict | None = None) -> Path:
        """Write a bundle of `search` (the encoder only when the search starts from it)."""
        from export.bundle import write_generator_bundle
        info = self.info if preprocessing is None else {**self.info, "preprocessing": preprocessing}
        write_generator_bundle(self.g, path, search, info, encoder=self.enc if search.z_init == "encoder" else None)
        return path

    def inputs(self, n: int, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        s, m = self.arch.size, self.arch.size * 3 // 16
        xs = [rng.uniform(-1, 1, (self.arch.channels, s, s)).astype(np.float32) for _ in range(n)]
        for x in xs:
            x[:, :m], x[:, -m:] = -1, -1
        return xs
