"""TensorRT backend for the Jetson (TensorRT 10 Python API, as JetPack 6.1 and later ship it).

Engines are built on the machine that runs them (`adgan export build-engine BUNDLE`) from
the bundle's ONNX graphs, and stored under BUNDLE/engines/ with a sidecar naming the
bundle hash, the TensorRT version, the GPU and the precision. State lives in device
buffers: two state sets and two execution contexts whose tensor addresses are fixed at
load (A -> B and B -> A), and a device array of step numbers 1..k, so a step is one
`execute_async_v3` with no host copies. Every TensorRT and CUDA call is checked.

tensorrt and pycuda are imported here only, when this backend is chosen.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent import durable
from agent.scoring.bundle import Bundle, BundleError, sha256_file
from agent.scoring.backend import Backend, slot_inputs
from agent.scoring.cuda import CudaDevice, CudaUnavailable

log = logging.getLogger(__name__)
MAX_K = 1000  # length of the on-device table of step numbers
ALIGN = 256   # bytes: TensorRT wants every tensor address aligned to this (setTensorAddress)
TRT_MAJOR = 10  # the name-based tensor API and explicit batch by default (JetPack 6.1 and later)


class TensorRTUnavailable(CudaUnavailable):
    """TensorRT, pycuda or a CUDA GPU is missing on this machine."""


class EngineBuildFailed(RuntimeError):
    """TensorRT could not build a bundle's engines on this machine (said in one line by the
    command line, exit 1; the engines built before, if any, are left as they were)."""


class TensorRTSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["tensorrt"] = Field("tensorrt", description="TensorRT engines built on this device")
    fp16: bool = Field(False, description="use the engines built with --fp16 (theta and Adam moments stay fp32)")
    device: int = Field(0, ge=0, description="CUDA device index")

    @property
    def engine(self) -> str:
        """What thresholds are bound to: scores differ slightly between engines and precisions."""
        return f"tensorrt/{'fp16' if self.fp16 else 'fp32'}"


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "TensorRT is not installed here: it comes with JetPack on a Jetson (python3-libnvinfer). "
            "Use --backend onnxruntime on other machines") from e
    check_version(trt.__version__)
    return trt


def check_version(version: str) -> None:
    """TensorRT 10 or later: 8.6 (JetPack 6.0) reads create_network(0) as implicit batch."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise TensorRTUnavailable(f"cannot read the TensorRT version {version!r}") from None
    if major < TRT_MAJOR:
        raise TensorRTUnavailable(f"TensorRT {version} is too old: this backend needs TensorRT {TRT_MAJOR} or later "
                                  "(JetPack 6.1 or later). On older JetPack use --backend onnxruntime")


def _engine_stem(trt_version: str, gpu: str, fp16: bool) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in gpu).strip("-").lower()
    return f"{safe}-trt{trt_version}-{'fp16' if fp16 else 'fp32'}"


def build_engine(bundle_path: str | Path, fp16: bool = False, device: int = 0) -> Path:
    """Build step and loss engines from a bundle's ONNX on this machine; returns the sidecar path.
    Both are built before either is written, so a failed build (EngineBuildFailed) leaves the
    engines of an earlier build as they were."""
    trt = _import_trt()
    bundle = Bundle.load(bundle_path)
    cuda = CudaDevice(device)  # holds the CUDA context while building
    try:
        info = cuda.describe()
        logger = trt.Logger(trt.Logger.WARNING)
        stem = _engine_stem(trt.__version__, info["gpu"], fp16)
        built = {}
        for role in ("step", "loss"):
            t0 = time.perf_counter()
            try:
                plan = _build_plan(trt, logger, bundle, role, fp16)
            except EngineBuildFailed:
                raise
            except Exception as e:  # (TensorRT's bindings raise RuntimeError, TypeError, ...; a traceback before)
                raise EngineBuildFailed(f"TensorRT {trt.__version__} failed while building the {role} engine of "
                                        f"{bundle.path} on {info['gpu']}: {type(e).__name__}: {e}") from e
            built[role] = (plan, round(time.perf_counter() - t0, 1))
        out_dir = bundle.path / "engines"
        out_dir.mkdir(exist_ok=True)
        plans = {}
        for role, (plan, build_s) in built.items():
            path = out_dir / f"{stem}-{role}.plan"
            durable.write_bytes(path, plan)
            plans[role] = {"file": path.name, "sha256": sha256_file(path), "build_s": build_s}
        sidecar = out_dir / f"{stem}.json"
        durable.write_text(sidecar, json.dumps({"bundle_hash": bundle.bundle_hash, "tensorrt": trt.__version__,
                                       "fp16": fp16, "tf32": False, **info, "engines": plans}, indent=1) + "\n")
        return sidecar
    finally:
        cuda.close()


def _build_plan(trt, logger, bundle: Bundle, role: str, fp16: bool) -> bytes:
    """One engine's serialised plan from the bundle's `role`.onnx (EngineBuildFailed where TensorRT says no)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle.graph_path(role))):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildFailed(f"TensorRT could not parse {bundle.graph_path(role)}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    # TF32 (on by default on Ampere/Orin) rounds weights to 10-bit mantissas: theta
    # updates of ~1e-7 would vanish. fp32 means fp32.
    config.clear_flag(trt.BuilderFlag.TF32)
    if fp16:
        if not builder.platform_has_fast_fp16:
            raise EngineBuildFailed("this GPU has no fast fp16; build without --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        # Only convolutions in fp16: Adam, reductions and the loss stay fp32. Layers with
        # boolean or integer tensors (the ReLU mask's Greater/Cast, Or) keep their types:
        # TensorRT refuses a float32 constraint on them.
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in (trt.LayerType.CONVOLUTION, trt.LayerType.DECONVOLUTION):
                continue
            tensors = [layer.get_input(j) for j in range(layer.num_inputs)] + \
                      [layer.get_output(j) for j in range(layer.num_outputs)]
            if all(t is None or t.dtype in (trt.float32, trt.float16) for t in tensors):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildFailed(f"TensorRT failed to build the {role} engine of {bundle.path} (see its log above: "
                                "out of memory, or a layer it cannot run)")
    return bytes(plan)


def _load_engines(bundle: Bundle, fp16: bool, cuda: CudaDevice):
    """(trt module, runtime, {role: engine}, sidecar) for this GPU, verified against the bundle."""
    trt = _import_trt()
    info = cuda.describe()
    stem = _engine_stem(trt.__version__, info["gpu"], fp16)
    sidecar = bundle.path / "engines" / f"{stem}.json"
    if not sidecar.is_file():
        raise BundleError(f"{bundle.path}: no TensorRT engine for {info['gpu']} with TensorRT {trt.__version__} "
                          f"({'fp16' if fp16 else 'fp32'}); build it here: adgan export build-engine {bundle.path}"
                          + (" --fp16" if fp16 else ""))
    meta = json.loads(sidecar.read_text())
    if meta.get("bundle_hash") != bundle.bundle_hash:
        raise BundleError(f"{sidecar} was built from another bundle; rebuild with adgan export build-engine")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engines = {}
    for role in ("step", "loss"):
        e = meta["engines"][role]
        p = sidecar.parent / e["file"]
        if not p.is_file() or sha256_file(p) != e["sha256"]:
            raise BundleError(f"{p} is missing or modified; rebuild with adgan export build-engine")
        eng = runtime.deserialize_cuda_engine(p.read_bytes())
        if eng is None:
            raise BundleError(f"TensorRT {trt.__version__} could not load {p} (built with another TensorRT or GPU?); "
                              f"rebuild it here: adgan export build-engine {bundle.path}" + (" --fp16" if fp16 else ""))
        engines[role] = eng
    return trt, runtime, engines, meta


class TensorRTBackend(Backend):
    """Runs a bundle's engines on the GPU. `cuda` and `loader` are injectable for tests."""

    def __init__(self, bundle: Bundle, settings: TensorRTSettings | None = None, cuda=None, loader=None) -> None:
        settings = settings or TensorRTSettings()
        if loader is None:
            _import_trt()  # the most basic requirement first, for the clearest message
        self.cuda = cuda if cuda is not None else CudaDevice(settings.device)
        trt, self._runtime, engines, meta = (loader or _load_engines)(bundle, settings.fp16, self.cuda)
        self.versions = {"tensorrt": meta.get("tensorrt"), **self.cuda.describe()}
        log.info("TensorRT backend: %s", self.versions)
        self.seeds_per_call = bundle.seeds_per_call
        self.names = bundle.trainable
        c, s, nz, hw = bundle.channels, bundle.seeds_per_call, bundle.nz, bundle.size
        self.x_batch = bundle.x_batch
        self.shapes = {"x": (self.x_batch, c, hw, hw), "t": (), "lr_z": (), "lr_theta": (), "z": (s, nz), "m_z": (s, nz),
                       "v_z": (s, nz), "loss": (s,), "y": (s, c, hw, hw)}
        self.theta0 = bundle.initial_theta(s)
        for n, t0 in zip(self.names, self.theta0):
            for pre in ("", "m_", "v_"):
                self.shapes[pre + n] = t0.shape
        nbytes = lambda name: int(np.prod(self.shapes[name], dtype=np.int64)) * 4  # noqa: E731
        state = ["z", "m_z", "v_z"] + [p + n for n in self.names for p in ("", "m_", "v_")]
        self.nbytes = {n: nbytes(n) for n in self.shapes}
        self.sets = [{n: self.cuda.alloc(self.nbytes[n]) for n in state} for _ in range(2)]
        self.shared = {n: self.cuda.alloc(self.nbytes[n]) for n in ("x", "lr_z", "lr_theta", "loss", "y")}
        self.theta_init = {n: self.cuda.alloc(self.nbytes[n]) for n in self.names}
        for n, t0 in zip(self.names, self.theta0):
            self.cuda.htod(self.theta_init[n], t0)
        # step numbers 1..MAX_K, one per ALIGN bytes: `t` points at step t's entry
        stride = ALIGN // 4
        table = np.zeros(MAX_K * stride, np.float32)
        table[::stride] = np.arange(1, MAX_K + 1, dtype=np.float32)
        self.t_table = self.cuda.alloc(table.nbytes)
        self.cuda.htod(self.t_table, table)
        self.step_io, self.loss_io = bundle.graph_io("step"), bundle.graph_io("loss")
        for role, io in (("step", self.step_io), ("loss", self.loss_io)):
            self._check_engine(role, engines[role], io)
        self.step_ctx = [self._context(engines["step"], self.sets[a], self.sets[1 - a], self.step_io)
                         for a in (0, 1)]
        self.loss_ctx = [self._context(engines["loss"], self.sets[a], None, self.loss_io) for a in (0, 1)]
        self.loss_host = np.zeros(self.shapes["loss"], np.float32)
        self.y_host = np.zeros(self.shapes["y"], np.float32)
        self._lr = (None, None)
        self.cur = 0
        self.cuda.sync()

    def _check_engine(self, role: str, engine, io: tuple[list[str], list[str]]) -> None:
        """The engine's tensors are the bundle's: names, directions, shapes and float32."""
        ins, outs = io
        want = {n: ("INPUT", self.shapes[n]) for n in ins} | \
               {n: ("OUTPUT", self.shapes[n.removesuffix("_out")]) for n in outs}
        got = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            got[name] = (engine.get_tensor_mode(name).name, tuple(engine.get_tensor_shape(name)),
                         engine.get_tensor_dtype(name).name)
        problems = [f"{n}: the engine has no such tensor" for n in want if n not in got]
        problems += [f"{n}: the bundle has no such tensor" for n in got if n not in want]
        for n, (mode, shape) in want.items():
            if n in got and (got[n][0], got[n][1], got[n][2]) != (mode, tuple(shape), "FLOAT"):
                problems.append(f"{n}: engine {got[n]}, bundle {(mode, tuple(shape), 'FLOAT')}")
        if problems:
            raise BundleError(f"the {role} engine does not match the bundle ({'; '.join(problems)}); rebuild it "
                              "with adgan engine build")

    def _context(self, engine, src: dict, dst: dict | None, io: tuple[list[str], list[str]]):
        ctx = engine.create_execution_context()
        if ctx is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        ins, outs = io
        for name in ins + outs:
            if name == "t":
                continue  # pointed at the step table on every step
            if name in self.shared:
                addr = self.shared[name]
            elif name in outs:
                addr = dst[name[: -len("_out")]] if name.endswith("_out") else self.shared[name]
            else:
                addr = src[name]
            if not ctx.set_tensor_address(name, addr):
                raise RuntimeError(f"TensorRT rejected the address of tensor {name!r}")
        return ctx

    def reset(self, x: np.ndarray, z0: np.ndarray) -> None:
        st = self.sets[0]
        self.cuda.htod(self.shared["x"], slot_inputs(x, self.x_batch))
        self.cuda.htod(st["z"], z0.astype(np.float32, copy=False))
        for n in ("m_z", "v_z"):
            self.cuda.zero(st[n], self.nbytes[n])
        for n in self.names:
            self.cuda.dtod(st[n], self.theta_init[n], self.nbytes[n])
            self.cuda.zero(st[f"m_{n}"], self.nbytes[n])
            self.cuda.zero(st[f"v_{n}"], self.nbytes[n])
        self.cur = 0

    def step(self, t: int, lr_z: float, lr_theta: float) -> None:
        if not 1 <= t <= MAX_K:
            raise ValueError(f"step {t} is outside 1..{MAX_K}")
        if (lr_z, lr_theta) != self._lr:  # uploaded once per search, not per step
            self.cuda.htod(self.shared["lr_z"], np.array(lr_z, np.float32))
            self.cuda.htod(self.shared["lr_theta"], np.array(lr_theta, np.float32))
            self._lr = (lr_z, lr_theta)
        ctx = self.step_ctx[self.cur]
        if not ctx.set_tensor_address("t", self.t_table + ALIGN * (t - 1)):
            raise RuntimeError("TensorRT rejected the address of tensor 't'")
        if not ctx.execute_async_v3(self.cuda.stream_handle):
            raise RuntimeError(f"TensorRT step {t} failed to enqueue")
        self.cur = 1 - self.cur

    def final(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.loss_ctx[self.cur].execute_async_v3(self.cuda.stream_handle):
            raise RuntimeError("TensorRT loss engine failed to enqueue")
        self.cuda.dtoh(self.loss_host, self.shared["loss"])
        self.cuda.dtoh(self.y_host, self.shared["y"])
        self.cuda.sync()
        return self.loss_host, self.y_host

    def close(self) -> None:
        self.step_ctx = self.loss_ctx = []
        self.cuda.close()
