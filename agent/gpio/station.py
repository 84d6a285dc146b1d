"""The station's digital I/O (`[gpio]`, off by default).

Trigger in: an edge of the configured direction on `trigger_line` counts when the line was
quiet for `debounce_ms` before it (contact bounce is ignored) and at least `dead_time_ms`
after the last counted edge; the part is announced at once (`on_edge`: a class switch made
during its delay comes after it) and `delay_ms` later its inspection is requested
(`on_trigger`, with the edge's monotonic time; the agent scores the next frame). Verdicts
out: `ok`, `ng` and `error` (an error or no object) are pulsed for `pulse_ms` or held until
the next part; `busy` is active from a counted edge until the verdict
that leaves nothing waiting (until 2026-12-06 it fell at the first verdict, parts still waiting);
`ready` is active only while the engines are warm and the source delivers frames. Logical
active is the physical high level unless `active_low`. An edge read `late_s` (the agent's
trigger.max_wait_s, 2 s by default; 0: never) or more after its inspection was due (the process
did not run: stopped, frozen; the kernel kept the edge and its time) is a part not inspected
(`on_late`): by then it has left the camera (until 2026-12-07 its inspection was requested as if on
time, and it had another part's verdict). Edge times are on the monotonic clock, which stops while
the machine sleeps: an edge kept across a suspend does not look late.

Failures to open the chip or a line are reported in `state` (status: interfaces.gpio) and
inspection goes on without digital I/O. A trigger line that fails while in use is said and
opened again with backoff (REOPEN_S); a failed request for an inspection is said, and the
next edge is watched for as before.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from agent.gpio.lines import Chip, GpioError, InputLine, OutputLine, open_chip
from agent.mqtt.frozen import FROZEN_S

log = logging.getLogger(__name__)

VERDICT_LINES = {"ok": "ok", "anomaly": "ng", "error": "error", "no_object": "error"}
REOPEN_S = (1.0, 30.0)  # a failed trigger line is opened again after 1 s, doubling to 30 s
LATE_S = FROZEN_S  # an edge read this long after its inspection was due is answered as not inspected (the
                   # process did not run this long: agent/mqtt/frozen.py's freeze, for MQTT's commands); the
                   # agent passes trigger.max_wait_s (2 s by default) instead


class StationIO:
    def __init__(self, settings, on_trigger: Optional[Callable[[float], object]] = None,
                 on_edge: Optional[Callable[[float], object]] = None,
                 on_late: Optional[Callable[[float, float], object]] = None, late_s: float = LATE_S) -> None:
        self.s, self.on_trigger, self.on_edge, self.on_late = settings, on_trigger, on_edge, on_late
        self.late_s = late_s  # an edge read this long after its inspection was due is late (0: never)
        self.chip: Chip | None = None
        self.outputs: dict[str, OutputLine] = {}
        self.input: InputLine | None = None
        self.state: dict = {"state": "off"}
        self.counts = {"edges": 0, "triggers": 0, "bounces": 0, "dead_time": 0, "trigger_failures": 0,
                       "output_failures": 0, "late": 0}
        self._stop = threading.Event()
        self._timers: dict[str, threading.Timer] = {}
        self._unended = False  # a pulse's timer could not start (said once, until one starts again)
        self._lock = threading.Lock()
        self._ready: bool | None = None
        self._thread: threading.Thread | None = None
        self._running: dict = {}  # the state while every line works
        self._failing: set[str] = set()  # outputs whose last write failed
        self._announced = 0  # counted edges whose inspection is not yet requested (delay_ms)

    def start(self) -> None:
        s = self.s
        if not s.enabled:
            return
        try:
            self.chip = open_chip(s.backend, s.chip)
            for name in ("ok", "ng", "error", "busy", "ready"):
                offset = getattr(s, f"{name}_line")
                if offset is not None:
                    self.outputs[name] = self.chip.output(offset, s.active_low)
            if s.trigger_line is not None and self.on_trigger is not None:
                self.input = self.chip.input(s.trigger_line, s.trigger_active_low, s.debounce_ms)
        except GpioError as e:
            log.error("GPIO: %s; inspection goes on without digital I/O", e)
            self.close()  # the lines already taken
            self.state = {"state": "error", "error": str(e)}
            return
        if self.input is not None:
            self._thread = threading.Thread(target=self._watch, name="gpio-trigger", daemon=True)
            self._thread.start()
        self.state = self._running = {"state": "running", "chip": s.chip, "lines": sorted(self.outputs) +
                                      (["trigger"] if self.input else [])}
        log.info("GPIO on %s (%s): %s", s.chip, s.backend, ", ".join(self.state["lines"]))

    # -- trigger -----------------------------------------------------------------------------
    def _watch(self) -> None:
        s = self.s
        rising = s.trigger_edge == "rising"
        last_raw = last_counted = None
        while not self._stop.is_set():
            try:
                edges = self.input.wait_edges(0.2)
            except Exception as e:  # a line that fails is said and opened again; the agent goes on
                self.state = {"state": "error", "error": f"trigger line failed: {e}"}
                log.error("GPIO trigger line %d failed (%s): no part is inspected on its edges until it is opened "
                          "again (tried with backoff, %.0f-%.0f s)", s.trigger_line, e, *REOPEN_S)
                if not self._reopen():
                    return
                continue
            for e in edges:
                self.counts["edges"] += 1
                quiet = last_raw is None or (e.timestamp_ns - last_raw) >= s.debounce_ms * 1e6
                last_raw = e.timestamp_ns
                if e.rising != rising:
                    continue
                if not quiet:
                    self.counts["bounces"] += 1
                    continue
                if last_counted is not None and (e.timestamp_ns - last_counted) < s.dead_time_ms * 1e6:
                    self.counts["dead_time"] += 1
                    continue
                last_counted = e.timestamp_ns
                self.counts["triggers"] += 1
                self._begin_part()
                at = e.timestamp_ns / 1e9
                if self.on_edge is not None:
                    try:
                        self.on_edge(at)
                    except Exception:  # (the request below still comes)
                        log.exception("GPIO trigger: announcing the part failed")
                wait = at + s.delay_ms / 1e3 - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return
                try:
                    if self.late_s and -wait >= self.late_s and self.on_late is not None:
                        self.counts["late"] += 1
                        self.on_late(at, -wait)
                    else:
                        self.on_trigger(at)
                except Exception:  # the watch must go on: the next part's edge is as important
                    self.counts["trigger_failures"] += 1
                    log.exception("GPIO trigger: requesting the inspection failed (%d so far)",
                                  self.counts["trigger_failures"])
                finally:
                    with self._lock:
                        self._announced -= 1

    def _reopen(self) -> bool:
        """Open the failed trigger line again, with backoff; False when stopped meanwhile."""
        try:
            self.input.close()
        except Exception:  # (a line that failed may fail to close too: it is let go)
            log.debug("closing the failed trigger line", exc_info=True)
        delay = REOPEN_S[0]
        while not self._stop.wait(delay):
            try:
                self.input = self.chip.input(self.s.trigger_line, self.s.trigger_active_low, self.s.debounce_ms)
            except Exception as e:
                self.state = {"state": "error", "error": f"trigger line failed; opening it again: {e}"}
                delay = min(2 * delay, REOPEN_S[1])
                continue
            self.state = dict(self._running)
            log.warning("GPIO trigger line %d is open again; parts are inspected on its edges", self.s.trigger_line)
            return True
        return False

    def _begin_part(self) -> None:
        """A new part: verdicts held from the last one go inactive, busy goes active."""
        with self._lock:
            self._announced += 1
            if self.s.output_mode == "hold":
                for name in ("ok", "ng", "error"):
                    self._set(name, False)
            self._set("busy", True)

    # -- outputs ------------------------------------------------------------------------------
    def _set(self, name: str, active: bool) -> None:
        line = self.outputs.get(name)
        if line is None:
            return
        try:
            line.set(active)
        except Exception as e:  # said once per spell (a dead line fails at every part), and counted
            self.counts["output_failures"] += 1
            self.state = {"state": "error", "error": f"output {name} failed: {e}"}
            if name not in self._failing:
                self._failing.add(name)
                log.error("GPIO output %s failed: %s (said again only once it has worked)", name, e)
            return
        if name in self._failing:
            self._failing.discard(name)
            log.warning("GPIO output %s works again", name)
            if not self._failing and self.state.get("error", "").startswith("output "):
                self.state = dict(self._running)

    def verdict(self, verdict: str, more: bool = False) -> None:
        """Show an event's verdict: pulse or hold its line; clear busy unless `more` requests wait
        to be answered or a counted edge's request is still to be made."""
        name = VERDICT_LINES.get(verdict)
        if self.chip is None or name is None:
            return
        with self._lock:
            for t in self._timers.values():
                t.cancel()
            self._timers.clear()
            for other in ("ok", "ng", "error"):
                if other != name:
                    self._set(other, False)
            self._set(name, True)
            if not more and not self._announced:
                self._set("busy", False)
            if self.s.output_mode == "pulse":
                t = threading.Timer(self.s.pulse_ms / 1e3, self._end_pulse)
                t.args, t.daemon = (name, t), True
                self._timers[name] = t
                try:
                    t.start()
                except RuntimeError as e:  # (no thread: a unit's TasksMax= reached): held, counted, said once
                    del self._timers[name]
                    self.counts["output_failures"] += 1
                    if not self._unended:
                        log.error("GPIO output %s: its pulse cannot be ended (%s): it stays active until the next "
                                  "verdict (said again only once pulses end again)", name, e)
                    self._unended = True
                    return
                if self._unended:
                    self._unended = False
                    log.warning("GPIO pulses end again")

    def _end_pulse(self, name: str, timer: threading.Timer) -> None:
        """A pulse's end, from its timer, under the verdicts' lock and only while no verdict came since:
        until 2026-12-07 the end was written without the lock, and where the next verdict came while it
        was being written (a line write takes time), it cut that verdict's pulse short."""
        with self._lock:
            if self._timers.get(name) is timer:
                del self._timers[name]
                self._set(name, False)

    def ready(self, ready: bool) -> None:
        """Drive `ready` (only on changes)."""
        if self.chip is not None and ready != self._ready:
            self._ready = ready
            self._set("ready", ready)

    def status(self) -> dict:
        return {**self.state, **({"counts": dict(self.counts)} if self.input or self.outputs else {})}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        with self._lock:
            for t in self._timers.values():
                t.cancel()
        for line in [*self.outputs.values(), *([self.input] if self.input else [])]:
            try:
                if isinstance(line, OutputLine):
                    line.set(False)
                line.close()
            except Exception:
                log.exception("closing a GPIO line")
        self.outputs, self.input = {}, None
        if self.chip is not None:
            self.chip.close()
            self.chip = None
        if self.state.get("state") == "running":
            self.state = {"state": "stopped"}
