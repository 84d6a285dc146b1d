"""Service health: systemd notify (READY, WATCHDOG, STATUS, STOPPING) and the status counters.

sd_notify is a datagram to the socket named by $NOTIFY_SOCKET; no library is needed.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field

from agent import logsink
from agent.mqtt.events import utc_seconds

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr = ("\0" + addr[1:]) if addr.startswith("@") else addr  # '@' = abstract namespace
        self._sock: socket.socket | None = None
        if self._addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # Ping at half the watchdog period, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, state: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(state.encode(), self._addr)
        except OSError as e:  # never let health reporting take the agent down
            log.warning("sd_notify(%s) failed: %s", state.split("\n")[0], e)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Call from the main loop; pings at most every half watchdog period."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.notify("WATCHDOG=1")


class Counters:
    """Thread-safe counters for the status heartbeat."""

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._v = {n: 0 for n in names}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._v[name] = self._v.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._v.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._v)


class EngineFailures:
    """Failures of the scoring engine that are none of the expected kinds (ONNX Runtime's own
    exception classes, which are not RuntimeErrors; an allocation failure; CUDA errors). Each
    answers its part with an error event and the agent goes on; RESTART_AFTER in a row, with no
    inspection between that worked, mean the engine is broken (a GPU context lost): the agent
    stops with exit code 1 so that systemd starts it afresh. Until 2026-12-06 the first one
    ended the agent's loop, and the part in hand got no event."""

    RESTART_AFTER = 5

    def __init__(self) -> None:
        self.in_row = 0

    def failed(self, what: str, e: Exception) -> str | None:
        """Say `e`; the stop cause when the agent must start afresh, else None."""
        self.in_row += 1
        log.error("%s (%d in a row): %s: %s", what, self.in_row, type(e).__name__, e, exc_info=e)
        if self.in_row < self.RESTART_AFTER:
            return None
        return (f"{self.in_row} inspections in a row failed in the engine ({type(e).__name__}: {e}); exiting with "
                "code 1 so that systemd starts the agent afresh")

    def worked(self) -> None:
        self.in_row = 0


@dataclass
class SourceHealth:
    state: str = "starting"        # starting, running, reconnecting, ended
    reconnects: int = 0            # successful reopenings after a failure
    failures: int = 0              # consecutive failures (0 while frames flow)
    total_failures: int = 0
    last_error: str | None = None
    next_attempt: float = 0.0      # monotonic time of the next open attempt

    def to_dict(self) -> dict:
        return {"state": self.state, "reconnects": self.reconnects, "consecutive_failures": self.failures,
                "failures": self.total_failures, "last_error": self.last_error}


class timed:
    """Adds the milliseconds spent in a `with` block to a numeric attribute (also when it raises)."""

    def __init__(self, obj, attr: str) -> None:
        self.obj, self.attr = obj, attr

    def __enter__(self) -> None:
        self.t = time.monotonic()

    def __exit__(self, *exc) -> None:
        setattr(self.obj, self.attr, getattr(self.obj, self.attr) + 1e3 * (time.monotonic() - self.t))


@dataclass
class Work:
    """What the loop knows about the frame in hand."""
    started: float
    captured_at: float
    capture_ms: float = 0.0
    segment_ms: float = 0.0
    score_ms: float = 0.0
    publish_ms: float = 0.0
    area: int | None = None
    forced: bool = False           # inspection requested over MQTT
    part_id: str | None = None     # the part's id its request gave (trigger/set {"part_id": ...})
    request: int = 0               # the number of the request it answers (agent/request_journal.py); 0: none
    lines: bool = True             # its event is shown on the GPIO verdict lines (not an answer for a part that has
                                   # passed: a kill's leftovers, what the broker held; a PLC counting pulses would
                                   # take it for the next part's verdict)
    source: dict = field(default_factory=dict)
    view: tuple | None = None      # a scored part's (sample, x, G(z*), relief heat or None), for the operator's page
    class_check: dict | None = None  # the scored part's class check (inspector.Decision), for its event


class ClockWatch:
    """Events are stamped with the wall clock (`captured_at`, `decided_at`). A Jetson has no
    clock battery: it boots at the time it last saved, and NTP later sets the clock, hours or
    years ahead. A jump of the wall clock against the monotonic one is said (once per jump, with
    its size) and counted in `status.clock`, so that stamps from before and after it are not
    compared blindly; a clock that reads a time before the bundles were made is said at start.
    NTP's slow corrections (at most 0.5 ms a second) are not jumps."""

    JUMP_S = 2.0

    def __init__(self, wall=None, mono=None) -> None:  # (the clocks: tests pass their own)
        self.wall = wall or (lambda: time.time())
        self.mono = mono or (lambda: time.monotonic())
        self.offset = self.wall() - self.mono()
        self.jumps, self.last_jump_s = 0, None

    def check(self) -> float | None:
        """The size of a jump since the last check (seconds, + ahead), or None."""
        offset = self.wall() - self.mono()
        jump, self.offset = offset - self.offset, offset
        if abs(jump) <= self.JUMP_S:
            return None
        self.jumps, self.last_jump_s = self.jumps + 1, round(jump, 1)
        log.warning("the wall clock jumped %+.1f s (NTP setting it, a person, or a suspend); it reads %s now. "
                    "Events are stamped with it: those before the jump carry the old reading", jump,
                    utc_seconds(self.wall()))
        return jump

    def not_before(self, floor: float, what: str) -> bool:
        """Say (and False) when the clock reads more than a day before `floor` (when `what` was made)."""
        if self.wall() >= floor - 86400:
            return True
        log.warning("this station's clock reads %s, before %s was made (%s): is it set (NTP)? Events are stamped "
                    "with it until it is", utc_seconds(self.wall()), what, utc_seconds(floor))
        return False

    def status(self) -> dict:
        return {"jumps": self.jumps, "last_jump_s": self.last_jump_s}


class LoopWatch:
    """Says when the inspection loop has not come round for `stall_s` (a disk that does not flush,
    a camera or an engine call that does not return), with every thread's stack, before systemd's
    watchdog (WatchdogSec=30) kills it with no word of where it was; and says when it comes round
    again. Stalls are counted in `status.loop`."""

    LOG_EVERY_S = 60.0    # a disk that stalls every part is one line a minute,
    DUMP_EVERY_S = 600.0  # and the stacks once in ten

    def __init__(self, stall_s: float, out=None, mono=None) -> None:  # (tests pass their clock)
        self.stall_s, self.out = stall_s, out
        self.mono = mono or (lambda: time.monotonic())
        self._last = self.mono()
        self._stalled = False                  # the current gap was counted as a stall
        self._said = False                     # the current stall was logged
        self._next_log = self._next_dump = 0.0
        self.stalls, self.longest_s = 0, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._last = self.mono()
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        """The loop came round."""
        now = self.mono()
        if self._stalled:
            took = now - self._last
            self.longest_s = max(self.longest_s, round(took, 1))
            if self._said:
                log.warning("the inspection loop came round again after %.1f s", took)
            self._stalled = False
        self._last = now

    def check(self) -> bool:
        """True when the loop has not come round for stall_s (once per stall): counted, and said
        with every thread's stack (at most every LOG_EVERY_S; the stacks every DUMP_EVERY_S)."""
        now = self.mono()
        if self._stalled or now - self._last < self.stall_s:
            return False
        self._stalled = True
        self.stalls += 1
        self._said = now >= self._next_log
        if not self._said:
            return True
        self._next_log = now + self.LOG_EVERY_S
        dump = now >= self._next_dump
        log.error("the inspection loop has not come round for %.0f s (health.stall_s): no part is inspected "
                  "meanwhile. %s (a disk that does not flush? a camera or engine call that does not return?); "
                  "under systemd its watchdog kills the agent at WatchdogSec (%d stalls so far; said at most "
                  "every %.0f s, the stacks every %.0f min)", now - self._last,
                  "Where each thread is follows" if dump else "Where each thread was is above", self.stalls,
                  self.LOG_EVERY_S, self.DUMP_EVERY_S / 60)
        if dump:
            self._next_dump = now + self.DUMP_EVERY_S
            dump_stacks(self.out or logsink.output())
        return True

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.stall_s / 4)):
            self.check()

    def status(self) -> dict:
        return {"stalls": self.stalls, "longest_s": self.longest_s}


def dump_stacks(out) -> None:
    """Where every thread is, from Python (the GIL held: no frame moves meanwhile), written into
    memory first, then to `out` (the log's writer, agent/logsink.py): faulthandler writes with the
    GIL held, and a stderr that takes nothing (a stuck journal) would have held every thread."""
    try:
        with _scratch_file() as f:
            faulthandler.dump_traceback(file=f, all_threads=True)
            f.seek(0)
            text = f.read().decode("utf-8", "backslashreplace")
        out.write(text)
        out.flush()
    except (OSError, ValueError, AttributeError) as e:  # (say so, not fail)
        log.error("the threads' stacks could not be written: %s", e)


def _scratch_file():
    """A file in memory (memfd), or a temporary one where there is no memfd."""
    try:
        return os.fdopen(os.memfd_create("adgan-stacks"), "w+b")
    except (AttributeError, OSError):
        return tempfile.TemporaryFile()


def stacks_on_sigusr1(out) -> None:
    """Where every thread is, written to `out` at each SIGUSR1, the agent going on (`systemctl
    kill -s USR1 adgan-agent` for a hang). faulthandler.register's dump runs inside the signal
    handler, reading the other threads' frames while they run: one agent in about 150 to 400
    signals died of it (SIGSEGV, in the MQTT thread's frames; CPython issue 116008). Here a
    thread of its own waits for the signal (blocked in this thread and in every thread started
    after, so the kernel hands it to sigwait) and dumps with the GIL held, when no frame moves;
    a main thread stuck in native code does not delay it. A thread started before, which may
    still receive the signal, finds a Python handler doing the same (not the default: death).
    Call it before starting other threads."""
    def wait() -> None:
        while True:
            signal.sigwait({signal.SIGUSR1})
            dump_stacks(out)

    signal.signal(signal.SIGUSR1, lambda *_: dump_stacks(out))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    threading.Thread(target=wait, name="stacks-on-sigusr1", daemon=True).start()


def iso_time(text) -> float | None:
    """Seconds since the epoch of an ISO 8601 time with its zone ('2026-12-04T10:00:00+00:00'), or None."""
    import datetime as dt
    try:
        t = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t.timestamp() if t.tzinfo is not None else None
