"""Exported graphs: onnx.checker clean, ONNX Runtime equal to PyTorch, only TensorRT-parsable ops."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx_export import export_graphs, step_io
from tests.export.conftest import random_generator, sample_x

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=[("all", 1.0, 1, 0, False), ("bn", 1.0, 1, 0, False),
                                        ("none", 1.0, 1, 0, False), ("all", 3.0, 1, 0, False),
                                        ("all", 1.0, 4, 0, False), ("none", 1.0, 4, 3, False),
                                        ("none", 1.0, 4, 3, True), ("colour", 10.0, 1, 0, False),
                                        ("colour", 1.0, 4, 0, False)],
                ids=["all", "bn", "none", "all-depth-weight-3", "all-pool-4", "none-pool-4-top-3-cells",
                     "none-pool-4-top-3-standardised", "colour-depth-weight-10", "colour-pool-4"])
def exported(request, tmp_path_factory):
    scope, dw, pool, cells, std = request.param
    g = random_generator(size=32, features_g=4)
    out = tmp_path_factory.mktemp(f"onnx_{scope}")
    n = (32 // pool) ** 2
    rng = np.random.default_rng(5)
    stats = (rng.uniform(0, 0.05, n), rng.uniform(0.005, 0.05, n)) if std else None
    core = export_graphs(g, out, 3, scope, "fg", -0.9, depth_weight=dw, pool=pool, score_cells=cells,
                         cell_stats=stats)
    return scope, g, core, out


def _feed(core, g, t=1.0, seed=0):
    """Step inputs in a state Adam can reach: zero moments at t=1, v >= m^2 later."""
    rng = torch.Generator().manual_seed(seed)
    th = core.init_theta(g)
    z = torch.randn(3, 100, generator=rng)
    mom = lambda ref: torch.randn(ref.shape, generator=rng) * 1e-3 * (t > 1)  # noqa: E731
    m = [mom(t_) for t_ in [z, *th]]
    v = [mm * mm * 10 + 1e-10 * (t > 1) for mm in m]
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return (sample_x(), f(t), f(5e-2), f(6e-9), z, m[0], v[0], *th, *m[1:], *v[1:])


def test_graphs_pass_the_checker_with_named_io(exported):
    scope, g, core, out = exported
    for name in ("step.onnx", "loss.onnx"):
        m = onnx.load(str(out / name))
        onnx.checker.check_model(m, full_check=True)
        assert m.opset_import[0].version >= 17
    m = onnx.load(str(out / "step.onnx"))
    ins, outs = step_io(core.trainable)
    assert [i.name for i in m.graph.input] == ins and [o.name for o in m.graph.output] == outs
    # theta is a graph input, never an initializer, when it is trainable
    assert not {i.name for i in m.graph.initializer} & set(core.trainable)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_onnxruntime_step_matches_pytorch(exported, t):
    scope, g, core, out = exported
    args = _feed(core, g, t)
    before = dict(zip([i.name for i in onnx.load(str(out / "step.onnx")).graph.input], args))
    sess = ort.InferenceSession(str(out / "step.onnx"), providers=["CPUExecutionProvider"])
    res = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})
    ref = [r.numpy() for r in core.step(*args)]
    names = [o.name for o in sess.get_outputs()]
    for name, r, e in zip(names, res, ref):
        assert np.isfinite(r).all(), name  # regression: an optimiser once dropped Adam's eps
        if name == "loss" or name.startswith(("m_", "v_")):
            # loss and Adam moments carry the gradients: equal to float32 rounding
            assert np.abs(r - e).max() <= 1e-5 * np.abs(e).max() + 1e-12, name
        else:
            # parameters after Adam's normalised step lr * m / sqrt(v): it magnifies rounding
            # where the gradient is tiny, so compare against the size of the update itself
            p0 = before[name[: -len("_out")]].numpy()
            bound = 1e-2 * np.abs(e - p0).max() + 4 * np.finfo(np.float32).eps * np.abs(p0).max()
            assert np.abs(r - e).max() <= bound, name


def test_loss_graph_returns_loss_and_reconstruction(exported):
    scope, g, core, out = exported
    th = core.init_theta(g)
    z = torch.randn(3, 100)
    sess = ort.InferenceSession(str(out / "loss.onnx"), providers=["CPUExecutionProvider"])
    loss, y = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), (sample_x(), z, *th))})
    rl, ry = core.reconstruct(sample_x(), z, *th)
    np.testing.assert_allclose(loss, rl.numpy(), rtol=1e-5)
    np.testing.assert_allclose(y, ry.numpy(), atol=1e-5)
    assert y.shape == (3, 4, 32, 32)


def test_every_operator_is_on_the_tensorrt_onnx_parser_list(exported):
    scope, g, core, out = exported
    support = json.loads((ROOT / "agent" / "scoring" / "tensorrt_onnx_ops.json").read_text())
    ops = support["operators"]
    for name in ("step.onnx", "loss.onnx"):
        m = onnx.load(str(out / name))
        inits = {i.name for i in m.graph.initializer}
        assert m.opset_import[0].version <= support["max_opset"]
        consts = inits | {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
        for node in m.graph.node:
            assert node.op_type in ops, f"{name}: {node.op_type} is not supported by the TensorRT ONNX parser"
            for idx in ops[node.op_type].get("initializer_inputs", []):
                if idx < len(node.input) and node.input[idx]:
                    assert node.input[idx] in consts, f"{name}: {node.op_type} input {idx} must be an initializer"
            if node.op_type in ("Conv", "ConvTranspose") and node.input[1] not in inits:
                # weights as graph inputs need TensorRT >= 8.5 (dynamic kernel weights)
                assert support["min_version_dynamic_conv_weights"] == "8.5"
