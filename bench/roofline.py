"""A roofline estimate of the search on Jetson Orin (issue 18): FLOPs and bytes per score.

Counts, from the generator's layers, the work of one score of a search (k step-graph calls
and one loss-graph call, n_seed seeds): the transposed convolutions forward, their input
gradient (always: z needs it), their weight gradient (theta scope all) and the elementwise
work around them; and the DRAM bytes a call cannot avoid (theta read for the forward and the
backward, activations stored for the backward and read back; with scope all the per-seed
theta, its Adam moments and its gradient read and written). With a measured ms per score on
this machine it also gives the rate this CPU reaches.

The estimate for a device is max(FLOPs / peak, bytes / bandwidth) plus one kernel launch per
step-graph node (TensorRT fuses some; the node count is an upper bound) at --launch-us.

    .venv/bin/python bench/roofline.py --features 32 --measured-ms 130     # the default recipe
    .venv/bin/python bench/roofline.py --features 64 --scope all --n-seed 3 # the paper's search
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

# Published FP32 peaks and memory bandwidths (NVIDIA's module data sheets; the GPU only, FP32
# CUDA cores, no tensor cores: the search runs in fp32).
DEVICES = {
    "Jetson Orin Nano 8GB (15 W, 625 MHz)": (2 * 1024 * 0.625e9, 68e9),
    "Jetson Orin Nano 8GB Super (25 W, 1020 MHz)": (2 * 1024 * 1.02e9, 102e9),
    "Jetson AGX Orin 64GB (MAXN, 1300 MHz)": (2 * 2048 * 1.3e9, 204.8e9),
}


def work(size: int, features: int, scope: str, n_seed: int, k: int) -> dict:
    from export.graphs import layers_of
    from training.model import Architecture
    arch = Architecture(size=size, features_g=features)
    conv = elem = act = params = 0.0
    h = 1
    for i, l in enumerate(layers_of(arch)):
        h_out = 4 if i == 0 else 2 * h
        macs = l.cin * l.cout * 16 * h * h  # per seed, a transposed convolution of a 4x4 kernel
        conv += 2 * macs
        params += l.cin * l.cout * 16 + 2 * l.cout
        act += l.cout * h_out * h_out  # the layer's output, kept for the backward
        elem += 8 * l.cout * h_out * h_out  # BN + ReLU / tanh forward and back, the mask, the loss
        h = h_out
    fwd = conv + elem / 2
    bwd_input = conv + elem / 2
    bwd_weight = conv if scope == "all" else 0.0
    adam = 15 * (params if scope == "all" else 0) + 15 * arch.nz
    step_flops = n_seed * (fwd + bwd_input + bwd_weight + adam)
    loss_flops = n_seed * fwd
    w_bytes = 4 * params
    act_bytes = 4 * act * n_seed
    if scope == "all":  # per-seed theta, m, v read and written, the gradient written and read
        step_bytes = n_seed * 4 * params * (3 * 2 + 2) + 2 * act_bytes
    else:
        step_bytes = 2 * w_bytes + 2 * act_bytes
    return {"params": params, "flops": k * step_flops + loss_flops, "bytes": k * step_bytes + w_bytes + act_bytes,
            "step_flops": step_flops}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--scope", default="none", choices=("none", "bn", "all"))
    ap.add_argument("--n-seed", type=int, default=1)
    ap.add_argument("--k", type=int, default=19)
    ap.add_argument("--nodes", type=int, default=None,
                    help="step-graph nodes (kernel launches per step, upper bound); default: count them in a bundle")
    ap.add_argument("--launch-us", type=float, default=8.0, help="per kernel launch on Orin (default 8 us)")
    ap.add_argument("--measured-ms", type=float, default=None, help="ms per score measured here: the rate reached")
    a = ap.parse_args()
    w = work(a.size, a.features, a.scope, a.n_seed, a.k)
    nodes = a.nodes if a.nodes is not None else count_nodes(a)
    print(f"{a.size} px, features {a.features}, theta scope {a.scope}, {a.n_seed} seed(s), k {a.k}: "
          f"{w['params'] / 1e6:.2f} M generator parameters")
    print(f"per score: {w['flops'] / 1e9:.2f} GFLOP, {w['bytes'] / 1e6:.1f} MB of DRAM traffic (lower bound), "
          f"arithmetic intensity {w['flops'] / w['bytes']:.0f} FLOP/byte; {nodes} step-graph nodes")
    if a.measured_ms:
        print(f"measured here: {a.measured_ms:.1f} ms per score = {w['flops'] / a.measured_ms / 1e6:.1f} GFLOP/s")
    print(f"{'device':<46}{'compute ms':>11}{'memory ms':>10}{'launch ms':>10}{'estimate ms':>12}")
    for name, (peak, bw) in DEVICES.items():
        c, m = 1e3 * w["flops"] / peak, 1e3 * w["bytes"] / bw
        launch = 1e-3 * a.launch_us * nodes * (a.k + 1)
        print(f"{name:<46}{c:>11.2f}{m:>10.2f}{launch:>10.2f}{max(c, m) + launch:>12.2f}")
    return 0


def count_nodes(a) -> int:
    import tempfile
    from dataclasses import replace

    import onnx

    from costing import CostModel
    from export.bundle import RECIPE_SEARCH
    s = replace(RECIPE_SEARCH, theta_scope=a.scope, n_seed=a.n_seed, seeds_per_call=a.n_seed, k=max(a.k, 1))
    with tempfile.TemporaryDirectory() as tmp:
        b = CostModel(a.size, a.features).bundle(Path(tmp) / "b", s)
        return len(onnx.load(str(b / "step.onnx")).graph.node)


if __name__ == "__main__":
    sys.exit(main())
