"""Export the explicit `step` and `loss` graphs to ONNX and check them."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from export.graphs import LOSS_SCALE, LossGraph, SearchStep, StepGraph
from training.model import Generator

log = logging.getLogger(__name__)
OPSET = 17  # the newest opset of the TensorRT ONNX parser list we check against (8.5+)


def step_io(trainable: list[str]) -> tuple[list[str], list[str]]:
    ins = ["x", "t", "lr_z", "lr_theta", "z", "m_z", "v_z", *trainable,
           *[f"m_{n}" for n in trainable], *[f"v_{n}" for n in trainable]]
    outs = ["loss", "z_out", "m_z_out", "v_z_out", *[f"{n}_out" for n in trainable],
            *[f"m_{n}_out" for n in trainable], *[f"v_{n}_out" for n in trainable]]
    return ins, outs


def loss_io(trainable: list[str]) -> tuple[list[str], list[str]]:
    return ["x", "z", *trainable], ["loss", "y"]


def _export(module: torch.nn.Module, args: tuple, path: Path, ins: list[str], outs: list[str]) -> None:
    import onnx

    # The dynamo exporter narrates on stdout and through loggers; keep the CLI's output for the user.
    buf = io.StringIO()
    quiet = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch._export", "torch.export")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            torch.onnx.export(module, args, str(path), input_names=ins, output_names=outs, dynamo=True,
                              opset_version=OPSET, optimize=True, external_data=False)
    except OSError:
        raise  # writing the file failed (a full disk): the exporter's narration does not say more
    except Exception:
        log.error("ONNX export of %s failed; exporter output:\n%s", path.name, buf.getvalue())
        raise
    finally:
        for lg, lvl in zip(quiet, levels):
            lg.setLevel(lvl)
    log.debug("onnx export of %s: %s", path.name, buf.getvalue())
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != ins or got_out != outs:
        raise RuntimeError(f"{path.name}: exported inputs/outputs {got_in} -> {got_out} differ from {ins} -> {outs}")


def export_graphs(g: Generator, out: Path, seeds_per_call: int, scope: str, loss: str, fg_threshold: float,
                  depth_weight: float = 1.0, pool: int = 1, score_cells: int = 0,
                  cell_stats: tuple | None = None, x_batch: int = 1,
                  loss_scale: float = LOSS_SCALE) -> SearchStep:
    """Write out/step.onnx and out/loss.onnx for `seeds_per_call` seeds per call; x is (x_batch, C, H, W):
    one part broadcast over the slots (1) or a part per slot (seeds_per_call). Returns the core module."""
    g = g.eval()
    core = SearchStep(g, seeds_per_call, scope, loss, fg_threshold, depth_weight=depth_weight, pool=pool,
                      score_cells=score_cells, cell_stats=cell_stats, loss_scale=loss_scale).eval()
    th = core.init_theta(g)
    size = g.arch.size
    if x_batch not in (1, seeds_per_call):
        raise ValueError(f"x_batch must be 1 or seeds_per_call ({seeds_per_call}), got {x_batch}")
    x = torch.zeros(x_batch, g.arch.channels, size, size)
    z = torch.randn(seeds_per_call, g.arch.nz)
    # Every example input must be its own tensor: torch.export merges aliased inputs
    # into one graph input (m and v would become the same tensor).
    sc = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    step_args = (x, sc(1.0), sc(5e-2), sc(6e-9), z, torch.zeros_like(z), torch.zeros_like(z), *th,
                 *[torch.zeros_like(t) for t in th], *[torch.zeros_like(t) for t in th])
    _export(StepGraph(core).eval(), step_args, out / "step.onnx", *step_io(core.trainable))
    _export(LossGraph(core).eval(), (x, z, *th), out / "loss.onnx", *loss_io(core.trainable))
    return core


def export_encoder(encoder: torch.nn.Module, out: Path) -> None:
    """Write out/encoder.onnx: x (1, C, S, S) -> z (1, nz), the search's starting latent."""
    a = encoder.arch
    _export(encoder.eval(), (torch.zeros(1, a.channels, a.size, a.size),), out / "encoder.onnx", ["x"], ["z"])
