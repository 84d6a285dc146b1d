"""Whether this process ran: the freeze fence of agent/mqtt/commands.py.

A process that does not run for a while (stopped: Ctrl-Z on an agent run by hand, SIGSTOP; a
container paused; the machine suspended; swapped out) keeps its MQTT connection if it is back
within the keepalive, and the broker goes on sending it commands all the while: they wait in its
socket and are read the moment it runs again, as if just sent. A trigger/set among them asked for a
part that has left the camera by then; until 2026-12-07 it was inspected, and the part's id was
given the verdict of whatever the camera showed (a probe: five named parts sent while the agent was
stopped for 25 s; two inspected after it, three refused as too many waiting, none said late).

A thread ticks every TICK_S on the boot clock (it counts a suspended machine too); a gap of
FROZEN_S or more between two ticks, or between the last tick and a command read (whichever looks
first after the freeze), is a freeze, and the station sends itself a fence at once (as at a
connection to a kept session): what comes before the fence comes back came while the station did
not run, and a trigger/set among it is answered as not inspected. The fence follows
trigger.max_wait_s (`Commands.fence_s`: a freeze shorter than it is said, not fenced; 0: never
fenced); the watch looks for gaps of FROZEN_S, or of max_wait_s where that is shorter (FLOOR_S at
least).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

FROZEN_S = 2.0   # the process not running this long is a freeze
TICK_S = 0.25    # how often the watch's thread looks
FLOOR_S = 1.0    # no shorter gap is a freeze, whatever trigger.max_wait_s says (a thread woken late on a busy
                 # machine is not one: below TICK_S every tick was a freeze, said and fenced 4 times a second)


def boot_clock() -> float:
    """Seconds since boot, counting a suspended machine (Linux); elsewhere the monotonic clock."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


class FreezeWatch:
    """Freezes of this process (gaps of `frozen_s` or more), each said once (WARNING) and handed to
    `on_freeze(seconds)` (the commands' fence and count; it returns whether what came meanwhile is
    answered as not inspected) before any other thread's look ends."""

    def __init__(self, on_freeze: Callable[[float], bool] | None = None,
                 clock: Callable[[], float] = boot_clock, frozen_s: float = FROZEN_S) -> None:
        self.clock, self.on_freeze, self.frozen_s = clock, on_freeze, frozen_s
        self._lock = threading.Lock()
        self._tick = clock()
        self._stop = threading.Event()
        self._watching = False

    def start(self, thread: bool = True) -> None:
        """Start watching (once; after `close`, a no-op); `thread`: with the ticking thread (without it,
        only commands read look: a test's clock)."""
        if not self._watching and not self._stop.is_set():
            self._tick, self._watching = self.clock(), True
            if thread:
                threading.Thread(target=self._run, name="freeze-watch", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            self.check()

    def check(self) -> None:
        """Look now (the thread, and a command read: whichever runs first after a freeze finds it)."""
        if not self._watching:
            return
        now = self.clock()
        with self._lock:  # (held while its fence is sent: a command read meanwhile waits, and is held)
            gap, self._tick = now - self._tick, now
            fenced = gap >= self.frozen_s and self.on_freeze is not None and self.on_freeze(gap)
        if gap < self.frozen_s:
            return
        log.warning("this agent's process did not run for %.1f s (stopped: Ctrl-Z or SIGSTOP; a container paused; "
                    "the machine suspended; swapped out): nothing was inspected%s", gap,
                    ", and trigger/sets that came meanwhile are answered as not inspected (their parts have left the "
                    "camera)" if fenced else "; trigger/sets that came meanwhile are taken (trigger.max_wait_s)")
