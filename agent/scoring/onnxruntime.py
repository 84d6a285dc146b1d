"""ONNX Runtime backend: IOBinding over two state sets on the provider's device, used alternately."""
from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.scoring.bundle import Bundle, BundleError
from agent.scoring.backend import Backend, BackendUnavailable, slot_inputs

log = logging.getLogger(__name__)


# Providers this backend knows how to place state for; which of them exist is checked when a
# backend opens (onnxruntime-gpu on a Jetson has CUDA, and TensorRT where its libraries are).
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class OnnxRuntimeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["onnxruntime"] = Field("onnxruntime", description="ONNX Runtime (CPU or CUDA)")
    threads: int = Field(0, ge=0, description="intra-op threads; 0 lets ONNX Runtime choose (all cores)")
    providers: list[str] = Field(["CPUExecutionProvider"], min_length=1,
                                 description="execution providers in order of preference: CPUExecutionProvider, "
                                             "CUDAExecutionProvider (onnxruntime-gpu), TensorrtExecutionProvider")
    device_id: int = Field(0, ge=0, description="the GPU, with a CUDA or TensorRT provider")

    @field_validator("providers")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [p for p in v if p not in PROVIDERS]
        if unknown:
            raise ValueError(f"unknown providers {unknown}; choose from {', '.join(PROVIDERS)}")
        return v

    @property
    def engine(self) -> str:
        """What thresholds are bound to: scores differ slightly between engines and providers."""
        return f"onnxruntime/{self.providers[0]}"


def _session(ort, bundle: Bundle, role: str, opts, providers):
    """An InferenceSession of the bundle's `role` graph. ONNX Runtime's own errors (Fail,
    InvalidGraph: a graph of an opset newer than it knows) are not ValueErrors: they ended the
    agent's start with a traceback (until 2026-12-06); they are a BundleError naming the graph."""
    try:
        return ort.InferenceSession(str(bundle.graph_path(role)), opts, providers=providers)
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        raise BundleError(f"{bundle.path}: ONNX Runtime {ort.__version__} cannot open its {role} graph "
                          f"({type(e).__name__}: {e}); export it for this runtime (an older opset) or update "
                          "onnxruntime") from None


class OnnxRuntimeBackend(Backend):
    """Two state sets (z, theta and their Adam moments) as OrtValues on the provider's device,
    bound to two step bindings (A -> B, B -> A) used alternately. Inside the k-step loop
    nothing crosses between host and device: the step number is bound from OrtValues made
    once, and the learning rates are uploaded only when they change. `copies` counts every
    host <-> device transfer (reset and final only)."""

    def __init__(self, bundle: Bundle, settings: OnnxRuntimeSettings | None = None) -> None:
        import onnxruntime as ort

        settings = settings or OnnxRuntimeSettings()
        missing = [p for p in settings.providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(f"ONNX Runtime providers {missing} are not available here "
                                     f"(available: {ort.get_available_providers()}; the GPU providers come with "
                                     "onnxruntime-gpu, on a Jetson NVIDIA's wheel for JetPack)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads = settings.threads or len(os.sched_getaffinity(0))
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [(p, {"device_id": settings.device_id}) if p in GPU_PROVIDERS else p for p in settings.providers]
        self.step_sess, self.loss_sess = (_session(ort, bundle, role, opts, providers) for role in ("step", "loss"))
        for role, sess in (("step", self.step_sess), ("loss", self.loss_sess)):
            bundle.check_io(role, {i.name: i.shape for i in sess.get_inputs()}, [o.name for o in sess.get_outputs()])
        self.providers = self.step_sess.get_providers()
        self.device = "cuda" if self.providers[0] in GPU_PROVIDERS else "cpu"
        self.device_id = settings.device_id
        self.copies = {"htod": 0, "dtoh": 0}
        self.seeds_per_call = bundle.seeds_per_call
        self.names = bundle.trainable
        s, nz, c, hw = self.seeds_per_call, bundle.nz, bundle.channels, bundle.size
        self.x_batch = bundle.x_batch
        self.x, self.lr_z, self.lr_theta = self._new((self.x_batch, c, hw, hw)), self._new(()), self._new(())
        self.theta0 = bundle.initial_theta(s)
        shapes = {"z": (s, nz), "m_z": (s, nz), "v_z": (s, nz)}
        for n, t0 in zip(self.names, self.theta0):
            shapes[n] = shapes[f"m_{n}"] = shapes[f"v_{n}"] = t0.shape
        self.zeros = {n: np.zeros(shape, np.float32) for n, shape in shapes.items()}
        self.sets = [{n: self._new(shape) for n, shape in shapes.items()} for _ in range(2)]
        self.loss_out, self.y_out = self._new((s,)), self._new((s, c, hw, hw))
        self.t_values: list = []
        self._t(max(1, bundle.search.k))  # the step numbers of a default search, on the device once
        self.step_io = [self._bind_step(self.sets[a], self.sets[1 - a], bundle) for a in (0, 1)]
        self.loss_io = [self._bind_loss(self.sets[a], bundle) for a in (0, 1)]
        self._lr: tuple | None = None
        self.cur = 0

    def _new(self, shape):
        import onnxruntime as ort
        return ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.device, self.device_id)

    def _put(self, value, arr) -> None:
        value.update_inplace(np.ascontiguousarray(arr, np.float32))
        self.copies["htod"] += 1

    def _get(self, value) -> np.ndarray:
        self.copies["dtoh"] += 1
        return value.numpy()

    def _t(self, t: int):
        """The step number t as an OrtValue on the device (made once per step number)."""
        import onnxruntime as ort
        while len(self.t_values) < t:
            self.t_values.append(ort.OrtValue.ortvalue_from_numpy(np.array(len(self.t_values) + 1, np.float32),
                                                                  self.device, self.device_id))
        return self.t_values[t - 1]

    def _bind_step(self, src: dict, dst: dict, bundle: Bundle):
        io = self.step_sess.io_binding()
        ins, outs = bundle.graph_io("step")
        shared = {"x": self.x, "t": self.t_values[0], "lr_z": self.lr_z, "lr_theta": self.lr_theta}
        for name in ins:
            io.bind_ortvalue_input(name, shared[name] if name in shared else src[name])
        for name in outs:
            io.bind_ortvalue_output(name, self.loss_out if name == "loss" else dst[name[:-len("_out")]])
        return io

    def _bind_loss(self, src: dict, bundle: Bundle):
        io = self.loss_sess.io_binding()
        ins, _ = bundle.graph_io("loss")
        for name in ins:
            io.bind_ortvalue_input(name, self.x if name == "x" else src[name])
        io.bind_ortvalue_output("loss", self.loss_out)
        io.bind_ortvalue_output("y", self.y_out)
        return io

    def reset(self, x: np.ndarray, z0: np.ndarray) -> None:
        st = self.sets[0]
        self._put(self.x, slot_inputs(x, self.x_batch))
        self._put(st["z"], z0)
        for n in ("m_z", "v_z"):
            self._put(st[n], self.zeros[n])
        for n, t0 in zip(self.names, self.theta0):
            self._put(st[n], t0)
            self._put(st[f"m_{n}"], self.zeros[n])
            self._put(st[f"v_{n}"], self.zeros[n])
        self.cur = 0

    def step(self, t: int, lr_z: float, lr_theta: float) -> None:
        if (lr_z, lr_theta) != self._lr:  # once per search at most, not per step
            self._put(self.lr_z, np.array(lr_z))
            self._put(self.lr_theta, np.array(lr_theta))
            self._lr = (lr_z, lr_theta)
        io = self.step_io[self.cur]
        io.bind_ortvalue_input("t", self._t(t))
        self.step_sess.run_with_iobinding(io)
        self.cur = 1 - self.cur

    def final(self) -> tuple[np.ndarray, np.ndarray]:
        self.loss_sess.run_with_iobinding(self.loss_io[self.cur])
        return self._get(self.loss_out), self._get(self.y_out)
