"""ONNX Runtime backend: IOBinding over two preallocated state sets used alternately."""
from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.scoring.bundle import Bundle
from agent.scoring.backend import Backend, BackendUnavailable

log = logging.getLogger(__name__)


class OnnxRuntimeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["onnxruntime"] = Field("onnxruntime", description="ONNX Runtime (CPU or CUDA)")
    threads: int = Field(0, ge=0, description="intra-op threads; 0 lets ONNX Runtime choose (all cores)")
    providers: list[str] = Field(["CPUExecutionProvider"], description="execution providers in order of preference")

    @property
    def engine(self) -> str:
        """What thresholds are bound to: scores differ slightly between engines and providers."""
        return f"onnxruntime/{self.providers[0] if self.providers else 'CPUExecutionProvider'}"


class OnnxRuntimeBackend(Backend):
    def __init__(self, bundle: Bundle, settings: OnnxRuntimeSettings | None = None) -> None:
        import onnxruntime as ort

        settings = settings or OnnxRuntimeSettings()
        missing = [p for p in settings.providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(f"ONNX Runtime providers {missing} are not available here "
                               f"(available: {ort.get_available_providers()})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.threads or len(os.sched_getaffinity(0))
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.step_sess = ort.InferenceSession(str(bundle.graph_path("step")), opts, providers=settings.providers)
        self.loss_sess = ort.InferenceSession(str(bundle.graph_path("loss")), opts, providers=settings.providers)
        self.seeds_per_call = bundle.seeds_per_call
        self.names = bundle.trainable
        s, nz, c, hw = self.seeds_per_call, bundle.nz, bundle.channels, bundle.size
        f32 = np.float32
        self.x = np.zeros((1, c, hw, hw), f32)
        self.t = np.zeros((), f32)
        self.lr_z = np.zeros((), f32)
        self.lr_theta = np.zeros((), f32)
        self.theta0 = bundle.initial_theta(s)

        def state_set():
            st = {"z": np.zeros((s, nz), f32), "m_z": np.zeros((s, nz), f32), "v_z": np.zeros((s, nz), f32)}
            for n, t0 in zip(self.names, self.theta0):
                st[n], st[f"m_{n}"], st[f"v_{n}"] = (np.zeros_like(t0) for _ in range(3))
            return st

        self.sets = [state_set(), state_set()]
        self.loss_out = np.zeros((s,), f32)
        self.y_out = np.zeros((s, c, hw, hw), f32)
        self.step_io = [self._bind_step(self.sets[a], self.sets[1 - a], bundle) for a in (0, 1)]
        self.loss_io = [self._bind_loss(self.sets[a], bundle) for a in (0, 1)]
        self.cur = 0
        self.providers = self.step_sess.get_providers()

    def _value(self, arr):
        import onnxruntime as ort
        return ort.OrtValue.ortvalue_from_numpy(arr)  # shares the numpy buffer on the CPU

    def _bind_step(self, src: dict, dst: dict, bundle: Bundle):
        io = self.step_sess.io_binding()
        ins, outs = bundle.graph_io("step")
        shared = {"x": self.x, "t": self.t, "lr_z": self.lr_z, "lr_theta": self.lr_theta}
        for name in ins:
            io.bind_ortvalue_input(name, self._value(shared[name] if name in shared else src[name]))
        for name in outs:
            arr = self.loss_out if name == "loss" else dst[name[:-len("_out")]]
            io.bind_ortvalue_output(name, self._value(arr))
        return io

    def _bind_loss(self, src: dict, bundle: Bundle):
        io = self.loss_sess.io_binding()
        ins, _ = bundle.graph_io("loss")
        for name in ins:
            io.bind_ortvalue_input(name, self._value(self.x if name == "x" else src[name]))
        io.bind_ortvalue_output("loss", self._value(self.loss_out))
        io.bind_ortvalue_output("y", self._value(self.y_out))
        return io

    def reset(self, x: np.ndarray, z0: np.ndarray) -> None:
        st = self.sets[0]
        self.x[0] = x
        st["z"][...] = z0
        st["m_z"].fill(0)
        st["v_z"].fill(0)
        for n, t0 in zip(self.names, self.theta0):
            np.copyto(st[n], t0)
            st[f"m_{n}"].fill(0)
            st[f"v_{n}"].fill(0)
        self.cur = 0

    def step(self, t: int, lr_z: float, lr_theta: float) -> None:
        self.t[...] = t
        self.lr_z[...] = lr_z
        self.lr_theta[...] = lr_theta
        self.step_sess.run_with_iobinding(self.step_io[self.cur])
        self.cur = 1 - self.cur

    def final(self) -> tuple[np.ndarray, np.ndarray]:
        self.loss_sess.run_with_iobinding(self.loss_io[self.cur])
        return self.loss_out, self.y_out
