"""Issue 18 item 7: do the search's gradients fit fp16, and what loss scale makes them fit?

Runs the explicit search (export/graphs.py, the code the step graph is exported from) in
float32 on real samples with a trained run's generator, and records every gradient that
enters a backward convolution (dL/d of each layer's output, all k steps). For loss scales
2^0 .. 2^16 it counts the share of nonzero elements that fp16 would hold only as a subnormal
(|g| < 6.1e-5, precision lost) or flush to zero (|g| < 6.0e-8), and the share that would
overflow (|g| > 65504). A power-of-two scale is exact in float32, so the step graph can carry
it at no cost to fp32 parity.

    .venv/bin/python bench/fp16_gradients.py runs/sphere-s0 ../shared/data/paper-rgbd/sphere --frames 700:1000:10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import numpy as np  # noqa: E402
import torch  # noqa: E402

FP16_MIN_NORMAL, FP16_MIN_SUB, FP16_MAX = 6.103515625e-05, 5.960464477539063e-08, 65504.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("samples", help="a class folder of samples in the run's preprocessing")
    ap.add_argument("--frames", default="700:1000:10")
    ap.add_argument("--k", type=int, default=19)
    a = ap.parse_args()

    from agent.scoring.search import start_latents
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import check_preprocessing, frame_numbers, parse_frames, read_model_sample
    from export.bundle import PAPER_SEARCH, RECIPE_SEARCH
    from export.graphs import SearchStep
    from training.train import generator_from_checkpoint, load_checkpoint
    from agent.segment.preprocess import Preprocessing

    st = load_checkpoint(a.run)
    g, _ = generator_from_checkpoint(st, True)
    g = g.eval()
    pre = Preprocessing.from_dict(st["preprocessing"])
    folder = Path(a.samples)
    rec = check_preprocessing(folder, pre)
    nums = frame_numbers(folder, parse_frames(a.frames, allow_step=True))
    xs = [sample_to_input(read_model_sample(folder, n, pre, rec), g.arch.size) for n in nums]
    enc = None
    if (Path(a.run) / "encoder.pt").exists():
        from training.encoder import load_encoder
        enc, _ = load_encoder(a.run)
    scales = [2 ** s for s in (0, 4, 8, 12, 16)]
    print(f"{a.run}: {len(xs)} samples of {folder}, k {a.k}; share of nonzero gradient elements entering "
          "backward convolutions")
    print(f"{'search':<34}{'scale':>7}{'subnormal':>11}{'to zero':>9}{'overflow':>10}{'max |g|':>10}")
    for name, s in ((f"default (scope none, {RECIPE_SEARCH.loss} 4x4)", RECIPE_SEARCH), ("paper (scope all, mse, lr 6e-9)", PAPER_SEARCH)):
        core = SearchStep(g, 1, s.theta_scope, s.loss, s.fg_threshold, pool=s.pool).eval()
        grads: list[torch.Tensor] = []
        orig = core._convt_grad_input

        def record(do, w, l, grouped, _orig=orig):
            grads.append(do.detach().abs().flatten())
            return _orig(do, w, l, grouped)

        core._convt_grad_input = record
        with torch.no_grad():
            for x in xs:
                xt = torch.from_numpy(x)[None]
                if s.z_init == "encoder" and enc is not None:
                    z = enc(xt)
                else:
                    z = torch.from_numpy(start_latents(s, 0, 1, g.arch.nz, x)[:1])
                theta = core.init_theta(g)
                m_z, v_z = torch.zeros_like(z), torch.zeros_like(z)
                ms, vs = [torch.zeros_like(t) for t in theta], [torch.zeros_like(t) for t in theta]
                for t in range(1, a.k + 1):
                    out = core.step(xt, torch.tensor(float(t)), torch.tensor(s.lr_z), torch.tensor(s.lr_theta),
                                    z, m_z, v_z, *theta, *ms, *vs)
                    _, z, m_z, v_z = out[:4]
                    n = len(theta)
                    theta, ms, vs = list(out[4:4 + n]), list(out[4 + n:4 + 2 * n]), list(out[4 + 2 * n:])
        allg = torch.cat(grads).double().numpy()
        nz = allg[allg > 0]
        for sc in scales:
            v = nz * sc
            print(f"{name:<34}{sc:>7}{np.mean(v < FP16_MIN_NORMAL):>11.3f}{np.mean(v < FP16_MIN_SUB):>9.3f}"
                  f"{np.mean(v > FP16_MAX):>10.1e}{v.max():>10.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
