"""The engine interface of the search and its registry: one dispatch for the agent, `adgan
score`, calibration and export.

A backend runs a bundle's step and loss graphs (`Backend`). Each lives in its own module,
with a pydantic settings class whose `type` names it; `BACKENDS` maps that name to the
module, which is imported only when the backend is chosen (tensorrt needs JetPack).
"""
from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from agent.scoring.bundle import Bundle

# name -> (module, settings class, backend class)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("agent.scoring.onnxruntime", "OnnxRuntimeSettings", "OnnxRuntimeBackend"),
    "tensorrt": ("agent.scoring.tensorrt", "TensorRTSettings", "TensorRTBackend"),
}
DEFAULT_BACKEND = "onnxruntime"
log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The chosen engine cannot run on this machine (library or device missing)."""


class Backend(ABC):
    """An engine that runs a bundle's step and loss graphs for `seeds_per_call` seeds per call.

    State (z, theta and their Adam moments) lives in the backend's own buffers between
    `reset` and `final`; the search loop never copies it.
    """

    seeds_per_call: int

    @abstractmethod
    def reset(self, x: np.ndarray, z0: np.ndarray) -> None:
        """Start a search: x (4, H, W) for every slot, or (seeds_per_call, 4, H, W) one per slot with a
        bundle of several parts per call; z0 (seeds_per_call, nz); theta from the bundle, moments zero."""

    @abstractmethod
    def step(self, t: int, lr_z: float, lr_theta: float) -> None:
        """One Adam iteration (t is 1-based)."""

    @abstractmethod
    def final(self) -> tuple[np.ndarray, np.ndarray]:
        """(loss per seed (seeds_per_call,), G(z) (seeds_per_call, 4, H, W)) with the current z and theta."""

    def warmup(self, bundle: Bundle) -> None:
        """Run one tiny search so the first real score pays no set-up cost."""
        x = np.full((bundle.channels, bundle.size, bundle.size), -1.0, np.float32)
        self.reset(x, np.zeros((self.seeds_per_call, bundle.nz), np.float32))
        self.step(1, 0.0, 0.0)
        self.final()

    def close(self) -> None:
        pass


def slot_inputs(x: np.ndarray, x_batch: int) -> np.ndarray:
    """x as the graphs' x input (x_batch, C, H, W): one part is given to every slot."""
    xb = x[None] if x.ndim == 3 else x
    if xb.shape[0] != x_batch:
        if xb.shape[0] != 1:
            raise ValueError(f"the graphs take {x_batch} parts per call, got {xb.shape[0]}")
        xb = np.broadcast_to(xb, (x_batch, *xb.shape[1:]))
    return np.ascontiguousarray(xb, np.float32)


def _entry(name: str, which: int) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    return getattr(importlib.import_module(BACKENDS[name][0]), BACKENDS[name][which])


def backend_settings(name: str, **options) -> Any:
    """The settings object of a named backend, with those of `options` that it has (threads for
    onnxruntime, fp16 for tensorrt; others are left out)."""
    cls = _entry(name, 1)
    return cls(**{k: v for k, v in options.items() if k in cls.model_fields})


def open_backend(bundle: Bundle, settings=None, warm: bool = True) -> Backend:
    """The engine named by `settings` (a backend's settings object, its `type` the name; None:
    ONNX Runtime with its defaults), warmed up."""
    settings = settings if settings is not None else backend_settings(DEFAULT_BACKEND)
    cls = _entry(settings.type, 2)
    engine: Backend | None = None
    try:
        engine = cls(bundle, settings)
        if warm:
            engine.warmup(bundle)
        return engine
    except (ValueError, OSError, BackendUnavailable):  # a bad bundle (BundleError), a missing file or library
        _close_quietly(engine)
        raise
    except Exception as e:
        # the engine itself failing (out of memory, a TensorRT context not made; ONNX Runtime's own
        # exception classes are neither ValueErrors nor RuntimeErrors): the start is refused, said in one line
        _close_quietly(engine)
        raise BackendUnavailable(f"{bundle.path}: the {settings.type} engine could not start: "
                                 f"{type(e).__name__}: {e}") from e


def _close_quietly(engine: Backend | None) -> None:
    """Let go of what a half-started engine holds (its memory), without hiding why it failed."""
    if engine is None:
        return
    try:
        engine.close()
    except Exception:  # noqa: BLE001 (the failure being raised is the one to say)
        log.exception("closing the engine that failed to start")
