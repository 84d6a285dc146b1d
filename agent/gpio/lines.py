"""GPIO lines behind one small interface: the kernel's character device through libgpiod v2
(`gpiod`, what current Jetson images use), NVIDIA's Jetson.GPIO (BOARD pin numbers), or an
in-memory chip (tests, simulations).

Inputs report every edge (both directions) with a CLOCK_MONOTONIC timestamp in ns, so the
station can apply its debounce and dead time the same way on every backend; outputs take a
logical value, and `active_low` decides the physical level.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Callable


class GpioError(RuntimeError):
    """A chip or line that cannot be used (missing, busy, no permission)."""


@dataclass(frozen=True)
class Edge:
    rising: bool
    timestamp_ns: int  # CLOCK_MONOTONIC, comparable with time.monotonic_ns()


class InputLine(ABC):
    @abstractmethod
    def wait_edges(self, timeout_s: float) -> list[Edge]:
        """Edges since the last call, waiting up to `timeout_s` for the first."""

    def close(self) -> None:
        pass


class OutputLine(ABC):
    @abstractmethod
    def set(self, active: bool) -> None:
        """Drive the line to its active (True) or inactive level."""

    def close(self) -> None:
        pass


class Chip(ABC):
    @abstractmethod
    def input(self, offset: int, active_low: bool, debounce_ms: float) -> InputLine: ...

    @abstractmethod
    def output(self, offset: int, active_low: bool) -> OutputLine: ...

    def close(self) -> None:
        pass


class QueuedInput(InputLine):
    """An input whose edges arrive from another thread (a callback, a test) into a queue."""

    def __init__(self) -> None:
        self._edges: deque[Edge] = deque()
        self._cond = threading.Condition()

    def _push(self, edge: Edge) -> None:
        with self._cond:
            self._edges.append(edge)
            self._cond.notify_all()

    def wait_edges(self, timeout_s: float) -> list[Edge]:
        with self._cond:
            if not self._edges:
                self._cond.wait(timeout_s)
            out = list(self._edges)
            self._edges.clear()
            return out


# -- in memory ---------------------------------------------------------------------------
class MemoryInput(QueuedInput):
    def __init__(self, active_low: bool) -> None:
        super().__init__()
        self.active_low, self.level = active_low, False  # logical level
        self._failure: GpioError | None = None
        self._release: Callable[[], None] = lambda: None  # (the chip frees the line's offset)

    def fail(self, error: str) -> None:
        """What a failing line does (tests, simulators): the next wait for edges raises."""
        with self._cond:
            self._failure = GpioError(error)
            self._cond.notify_all()

    def wait_edges(self, timeout_s: float) -> list[Edge]:
        with self._cond:
            if self._failure is None and not self._edges:
                self._cond.wait(timeout_s)
            if self._failure is not None:
                raise self._failure
            out = list(self._edges)
            self._edges.clear()
            return out

    def close(self) -> None:
        self._release()

    def drive(self, active: bool, timestamp_ns: int | None = None) -> None:
        """What the wire does (tests, simulators): an edge when the logical level changes."""
        with self._cond:
            if active == self.level:
                return
            self.level = active
        self._push(Edge(active, timestamp_ns if timestamp_ns is not None else time.monotonic_ns()))


class MemoryOutput(OutputLine):
    def __init__(self, active_low: bool) -> None:
        self.active_low, self.active = active_low, False
        self.history: list[tuple[int, bool]] = []  # (monotonic ns, logical value) of every change
        self.failing: str | None = None  # tests, simulators: set, each write fails with this error
        self._lock = threading.Lock()

    @property
    def physical_high(self) -> bool:
        return self.active != self.active_low

    def set(self, active: bool) -> None:
        with self._lock:
            if self.failing is not None:
                raise GpioError(self.failing)
            if active != self.active:
                self.active = active
                self.history.append((time.monotonic_ns(), active))


class MemoryChip(Chip):
    """Lines in memory, shared by name within a process: a test opens the agent's chip by the
    same name and drives its inputs and reads its outputs."""

    _chips: dict[str, "MemoryChip"] = {}
    _lock = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs: dict[int, MemoryInput] = {}
        self.outputs: dict[int, MemoryOutput] = {}
        self.busy: set[int] = set()  # offsets another user holds: requesting them fails like a busy line

    @classmethod
    def named(cls, name: str) -> "MemoryChip":
        with cls._lock:
            return cls._chips.setdefault(name, cls(name))

    def _claim(self, offset: int) -> None:
        if offset in self.busy or offset in self.inputs or offset in self.outputs:
            raise GpioError(f"memory chip {self.name!r}: line {offset} is busy")

    def input(self, offset: int, active_low: bool, debounce_ms: float) -> MemoryInput:
        self._claim(offset)
        line = self.inputs[offset] = MemoryInput(active_low)
        line._release = lambda: self.inputs.pop(offset) if self.inputs.get(offset) is line else None
        return line

    def output(self, offset: int, active_low: bool) -> MemoryOutput:
        self._claim(offset)
        self.outputs[offset] = MemoryOutput(active_low)
        return self.outputs[offset]

    def close(self) -> None:
        self.inputs.clear()
        self.outputs.clear()


# -- libgpiod v2 ---------------------------------------------------------------------------
class GpiodInput(InputLine):
    def __init__(self, request, offset: int) -> None:
        self.request, self.offset = request, offset

    def wait_edges(self, timeout_s: float) -> list[Edge]:
        from gpiod.edge_event import EdgeEvent
        if not self.request.wait_edge_events(timeout_s):
            return []
        return [Edge(e.event_type is EdgeEvent.Type.RISING_EDGE, e.timestamp_ns)
                for e in self.request.read_edge_events()]

    def close(self) -> None:
        self.request.release()


class GpiodOutput(OutputLine):
    def __init__(self, request, offset: int) -> None:
        self.request, self.offset = request, offset

    def set(self, active: bool) -> None:
        from gpiod.line import Value
        self.request.set_value(self.offset, Value.ACTIVE if active else Value.INACTIVE)

    def close(self) -> None:
        self.set(False)
        self.request.release()


class GpiodChip(Chip):
    CONSUMER = "adgan-agent"

    def __init__(self, path: str) -> None:
        try:
            import gpiod
        except ImportError as e:
            raise GpioError("the gpiod package (libgpiod v2 bindings) is not installed: pip install gpiod") from e
        if not gpiod.is_gpiochip_device(path):
            raise GpioError(f"{path} is not a GPIO chip (ls /dev/gpiochip*; gpiodetect lists them)")
        self.gpiod, self.path = gpiod, path

    def _request(self, offset: int, settings):
        try:
            return self.gpiod.request_lines(self.path, consumer=self.CONSUMER, config={offset: settings})
        except OSError as e:
            raise GpioError(f"{self.path} line {offset}: {e.strerror or e} (busy, or no permission: the "
                            "agent's user needs the gpio group)") from e

    def input(self, offset: int, active_low: bool, debounce_ms: float) -> GpiodInput:
        from datetime import timedelta

        from gpiod.line import Direction, Edge as GEdge
        s = self.gpiod.LineSettings(direction=Direction.INPUT, edge_detection=GEdge.BOTH, active_low=active_low,
                                    debounce_period=timedelta(milliseconds=debounce_ms))
        return GpiodInput(self._request(offset, s), offset)

    def output(self, offset: int, active_low: bool) -> GpiodOutput:
        from gpiod.line import Direction, Value
        s = self.gpiod.LineSettings(direction=Direction.OUTPUT, active_low=active_low, output_value=Value.INACTIVE)
        return GpiodOutput(self._request(offset, s), offset)


# -- Jetson.GPIO ---------------------------------------------------------------------------
class JetsonInput(QueuedInput):
    """Edges from Jetson.GPIO's event thread, stamped when its callback runs."""

    def __init__(self, gpio, pin: int, active_low: bool, debounce_ms: float) -> None:
        super().__init__()
        self.gpio, self.pin, self.active_low = gpio, pin, active_low
        gpio.setup(pin, gpio.IN)
        gpio.add_event_detect(pin, gpio.BOTH, callback=self._edge, bouncetime=max(int(debounce_ms), 1))

    def _edge(self, pin: int) -> None:
        t = time.monotonic_ns()
        self._push(Edge(bool(self.gpio.input(pin)) != self.active_low, t))

    def close(self) -> None:
        self.gpio.remove_event_detect(self.pin)
        self.gpio.cleanup(self.pin)


class JetsonOutput(OutputLine):
    def __init__(self, gpio, pin: int, active_low: bool) -> None:
        self.gpio, self.pin, self.active_low = gpio, pin, active_low
        gpio.setup(pin, gpio.OUT, initial=gpio.HIGH if active_low else gpio.LOW)

    def set(self, active: bool) -> None:
        self.gpio.output(self.pin, self.gpio.HIGH if active != self.active_low else self.gpio.LOW)

    def close(self) -> None:
        self.set(False)
        self.gpio.cleanup(self.pin)


class JetsonChip(Chip):
    """NVIDIA's Jetson.GPIO (RPi.GPIO's API); line offsets are the header's BOARD pin numbers."""

    def __init__(self) -> None:
        try:
            import Jetson.GPIO as gpio
        except Exception as e:  # ImportError, or its RuntimeError off a Jetson
            raise GpioError(f"Jetson.GPIO cannot be used here: {e}") from e
        gpio.setmode(gpio.BOARD)
        gpio.setwarnings(False)
        self.gpio = gpio

    def input(self, offset: int, active_low: bool, debounce_ms: float) -> JetsonInput:
        try:
            return JetsonInput(self.gpio, offset, active_low, debounce_ms)
        except (ValueError, RuntimeError) as e:
            raise GpioError(f"Jetson.GPIO pin {offset}: {e}") from e

    def output(self, offset: int, active_low: bool) -> JetsonOutput:
        try:
            return JetsonOutput(self.gpio, offset, active_low)
        except (ValueError, RuntimeError) as e:
            raise GpioError(f"Jetson.GPIO pin {offset}: {e}") from e


def open_chip(backend: str, chip: str) -> Chip:
    if backend == "memory":
        return MemoryChip.named(chip)
    if backend == "gpiod":
        return GpiodChip(chip)
    if backend == "jetson":
        return JetsonChip()
    raise GpioError(f"unknown GPIO backend {backend!r}")
