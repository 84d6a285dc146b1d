"""The search's starting point from a bundle's encoder (z0 = E(x), f-AnoGAN's izi_f).

One small forward pass per sample, run on ONNX Runtime on every backend (also next to
TensorRT on a Jetson): it is not part of the k-step search, so the search's engines stay
as they are.
"""
from __future__ import annotations

import os

import numpy as np

from agent.scoring.bundle import Bundle, BundleError


class LatentEncoder:
    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        import onnxruntime as ort

        if "encoder" not in bundle.manifest["graphs"]:
            raise BundleError(f"{bundle.path}: the bundle has no encoder graph")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        self.sess = ort.InferenceSession(str(bundle.graph_path("encoder")), opts, providers=["CPUExecutionProvider"])
        self.nz = bundle.nz

    def encode(self, x: np.ndarray) -> np.ndarray:
        """x (C, S, S) float32 in [-1, 1] -> z (nz,) float32."""
        z = self.sess.run(["z"], {"x": np.ascontiguousarray(x[None], dtype=np.float32)})[0]
        return z.reshape(self.nz)
