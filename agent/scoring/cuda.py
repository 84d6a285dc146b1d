"""The few CUDA operations the TensorRT backend needs, through pycuda, each checked; one
process-wide context per device. pycuda is imported only when a device is opened."""
from __future__ import annotations

import threading

import numpy as np

from agent.scoring.backend import BackendUnavailable


class CudaUnavailable(BackendUnavailable):
    """pycuda or a CUDA GPU is missing on this machine."""


class _PrimaryContext:
    """One CUDA context per device for the whole process: the device's primary context, made
    current once and released when its last user closes. (A context per backend would
    interleave on the thread's context stack, and closing one would pop another's.)"""

    _lock = threading.Lock()
    _held: dict[int, list] = {}  # device index -> [context, users]

    @classmethod
    def acquire(cls, cuda, index: int):
        with cls._lock:
            if index not in cls._held:
                ctx = cuda.Device(index).retain_primary_context()
                ctx.push()
                cls._held[index] = [ctx, 0]
            cls._held[index][1] += 1
            return cls._held[index][0]

    @classmethod
    def release(cls, index: int) -> None:
        with cls._lock:
            held = cls._held.get(index)
            if held is None:
                return
            held[1] -= 1
            if held[1] == 0:
                held[0].pop()
                held[0].detach()
                del cls._held[index]


class CudaDevice:
    """The few CUDA operations the backend needs, through pycuda, each checked."""

    def __init__(self, index: int = 0) -> None:
        try:
            import pycuda.driver as cuda
        except ImportError as e:
            raise CudaUnavailable("pycuda is not installed (on a Jetson: pip install 'adgan-edge[jetson]')") from e
        try:
            cuda.init()
            if cuda.Device.count() <= index:
                raise CudaUnavailable(f"no CUDA GPU {index} (found {cuda.Device.count()})")
            self.dev = cuda.Device(index)
            self.ctx = _PrimaryContext.acquire(cuda, index)
        except cuda.Error as e:
            raise CudaUnavailable(f"CUDA is not usable here: {e}") from e
        self.index, self.cuda = index, cuda
        self.stream = cuda.Stream()
        self.allocs: list = []

    def describe(self) -> dict:
        major, minor = self.dev.compute_capability()
        return {"gpu": self.dev.name(), "compute_capability": f"{major}.{minor}",
                "cuda_driver": self.cuda.get_driver_version()}

    def alloc(self, nbytes: int) -> int:
        m = self.cuda.mem_alloc(max(nbytes, 4))
        self.allocs.append(m)
        return int(m)

    def htod(self, dst: int, src: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dst, np.ascontiguousarray(src), self.stream)

    def dtoh(self, dst: np.ndarray, src: int) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, self.stream)

    def dtod(self, dst: int, src: int, nbytes: int) -> None:
        self.cuda.memcpy_dtod_async(dst, src, nbytes, self.stream)

    def zero(self, dst: int, nbytes: int) -> None:
        self.cuda.memset_d8_async(dst, 0, nbytes, self.stream)

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def sync(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.allocs.clear()
        self.stream = None
        _PrimaryContext.release(self.index)
