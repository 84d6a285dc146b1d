"""A classical baseline on the same preprocessed inputs: PCA reconstruction error.

Fit on a class's training samples; a sample's score is how badly the first n principal
components reconstruct it, over the whole image ("pca") or over pixels where the sample
or its reconstruction has depth ("pca-masked", the same mask as the `fg` loss).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PCA:
    mean: np.ndarray        # (D,)
    components: np.ndarray  # (n, D), orthonormal rows
    shape: tuple[int, ...]

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int) -> "PCA":
        """x: (N, C, H, W) model inputs."""
        if x.ndim != 4 or len(x) < 2:
            raise ValueError(f"PCA needs at least 2 samples of shape (C, H, W), got {x.shape}")
        flat = x.reshape(len(x), -1).astype(np.float64)
        mean = flat.mean(0)
        _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
        n = min(n_components, vt.shape[0])
        return cls(mean, vt[:n], x.shape[1:])

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float64) - self.mean
        return ((flat @ self.components.T) @ self.components + self.mean).reshape(x.shape)

    def scores(self, x: np.ndarray, masked: bool = False, fg_threshold: float = -0.9) -> np.ndarray:
        r = self.reconstruct(x)
        d2 = (r - x) ** 2
        if not masked:
            return d2.reshape(len(x), -1).mean(1)
        m = (x[:, 3:4] > -1.0) | (r[:, 3:4] > fg_threshold)  # (N, 1, H, W)
        cnt = np.maximum(m.reshape(len(x), -1).sum(1), 1) * x.shape[1]
        return (d2 * m).reshape(len(x), -1).sum(1) / cnt
