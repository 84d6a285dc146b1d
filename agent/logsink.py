"""The agent's log, written to its stderr (the journal, under systemd) by a thread of its own: no
part waits for it.

A log output that takes nothing (journald stuck on a slow disk or being restarted, a container's
log driver in its default blocking mode with its log server down, `adgan agent run | less` left
paused) used to stop the agent at its next line: each thread that logged waited in write(2), the
inspection loop first (a line per part), so parts were neither inspected nor answered (a pipe
nobody read: 160 parts answered, then none). Lines now wait in memory, up to
`health.log_buffer_kb`; beyond that each new line is dropped and counted (`status.log.dropped`,
`adgan_log_lines_dropped_total`), and once the output takes lines again the log says how many were
dropped and how long the output took nothing. A failing output (EIO, a closed pipe) drops and
counts the same, its error in `status.log.error`.

What the agent writes to stderr while it runs goes through here: log records and the threads'
stacks (agent.health.dump_stacks). A crash's stacks (faulthandler, in the signal handler of a
dying process) go to a file of their own, which the next start logs (agent/run_record.py).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections import deque

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DRAIN_S = 5.0  # at exit, how long the lines still waiting may take to be written

_sink: LogSink | None = None


class LogSink(logging.Handler):
    """A logging handler that queues formatted lines for a writer thread, up to `limit_bytes`."""

    def __init__(self, stream, limit_bytes: int) -> None:
        super().__init__()
        self.stream, self.limit = stream, limit_bytes
        try:  # written by file descriptor: a thread waiting in write(2) then holds none of the stream's locks,
            stream.flush()  # which a stop (the interpreter flushing stderr at exit) would wait for, and abort
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # (a stream with no descriptor: a test's)
            self._fd = None
        self._queue: deque[str] = deque()
        self._bytes = 0                            # waiting, the lines being written included
        self._cv = threading.Condition()
        self.dropped = 0                           # lines dropped since the start
        self._unsaid = 0                           # dropped since the log last said so
        self._writing_since: float | None = None   # the write under way began (monotonic)
        self.longest_wait_s = 0.0
        self.error: str | None = None              # the output's last error, None once a write succeeds
        self._failure: str | None = None           # the error that dropped lines not yet said
        self._closing = False
        self._thread = threading.Thread(target=self._write_loop, name="log-writer", daemon=True)
        self._thread.start()

    # -- the callers' side: never waits for the output ----------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
        except Exception:  # (a bad format string: said in the log, as logging would, not on a stderr that may wait)
            self.handleError(record)
            return
        self.write(text)

    def handleError(self, record: logging.LogRecord) -> None:
        self.write(f"--- Logging error ---\n{traceback.format_exc()}Message: {record.msg!r}\n"
                   f"Arguments: {record.args!r}\n")

    def write(self, text: str) -> None:
        """Queue `text` for the output, or drop it (counted, a line per newline) when the lines
        waiting would exceed the limit."""
        with self._cv:
            if self._bytes + len(text) > self.limit or self._closing:
                self._drop(max(1, text.count("\n")))
                return
            self._queue.append(text)
            self._bytes += len(text)
            self._cv.notify()

    def flush(self) -> None:
        """Nothing: the writer thread flushes after each batch (logging.shutdown calls this
        before close(), which waits for the lines, bounded)."""

    def _drop(self, lines: int) -> None:
        self.dropped += lines
        self._unsaid += lines

    # -- the writer thread ----------------------------------------------------------------
    def _write_loop(self) -> None:
        unsaid, waited = 0, 0.0  # lines dropped and not yet said; the longest write since the first of them
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                batch = "".join(self._queue)
                self._queue.clear()
                unsaid, self._unsaid = unsaid + self._unsaid, 0
            took = self._write(batch)
            with self._cv:
                self._bytes -= len(batch)
                if unsaid or self._unsaid:  # (lines dropped while this write waited)
                    waited = max(waited, took)
            if unsaid:  # said after the lines that waited when they were dropped, and after the wait
                self._write(self._note(unsaid, waited))
                unsaid, waited = 0, 0.0

    def _write(self, text: str) -> float:
        """Write `text` to the output; its lines dropped (counted) if the output fails. How long it took."""
        self._writing_since = t0 = time.monotonic()
        try:
            self._put(text)
            self.error = None
        except (OSError, ValueError) as e:  # (EIO, EPIPE, a closed stream): the lines are lost, counted
            self.error = self._failure = f"{type(e).__name__}: {e}"
            with self._cv:
                self._drop(max(1, text.count("\n")))
        finally:
            self._writing_since = None
        took = time.monotonic() - t0
        self.longest_wait_s = max(self.longest_wait_s, took)
        return took

    def _put(self, text: str) -> None:
        if self._fd is None:
            self.stream.write(text)
            self.stream.flush()
            return
        data = text.encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(self._fd, data):]

    def _note(self, lines: int, waited: float) -> str:
        why = (f"the log's output failed ({self._failure})" if self._failure else
               f"the log's output (stderr; the journal under systemd) took nothing for {waited:.1f} s, and the lines "
               "waiting filled health.log_buffer_kb" if waited >= 0.5 else
               "lines came faster than the log's output took them and filled health.log_buffer_kb")
        self._failure = None
        rec = logging.LogRecord(__name__, logging.WARNING, __file__, 0, "%d log line(s) dropped: %s; inspection went "
                                "on (status.log.dropped: %d since the start)", (lines, why, self.dropped), None)
        return self.format(rec) + "\n"

    # -- stop and status -----------------------------------------------------------------
    def close(self) -> None:
        """Write what waits, for DRAIN_S at most: an output that takes nothing does not hold the exit."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(DRAIN_S)
        super().close()

    def status(self) -> dict:
        since = self._writing_since
        return {"dropped": self.dropped, "waiting_s": round(time.monotonic() - since, 1) if since else 0.0,
                "longest_wait_s": round(self.longest_wait_s, 1), "buffered_bytes": self._bytes, "error": self.error}


def install(level: str, limit_bytes: int) -> None:
    """The root logger's output to stderr becomes a LogSink: a handler logging.basicConfig made
    (`adgan`'s main makes one) is replaced, as is none at all; a test's capture is kept."""
    global _sink
    root = logging.getLogger()
    plain = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.__stderr__)]
    if _sink is None and len(plain) == len(root.handlers):
        for h in plain:
            root.removeHandler(h)
        _sink = LogSink(sys.stderr, limit_bytes)
        _sink.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(_sink)
        logging.captureWarnings(True)  # (a library's warning, printed to stderr, would wait for it too)
    root.setLevel(getattr(logging, level.upper()))


def output():
    """Where text for the log goes: the sink when installed, stderr otherwise."""
    return _sink if _sink is not None else sys.stderr


def drain(timeout: float) -> None:
    """Wait (up to `timeout`) until the lines waiting are written: before a line printed to
    stderr directly, so that it comes after them."""
    end = time.monotonic() + timeout
    while _sink is not None and _sink._bytes and time.monotonic() < end:
        time.sleep(0.01)


def status() -> dict:
    """`status.log`: lines dropped, how long the output has been taking nothing, what waits."""
    if _sink is None:
        return {"dropped": 0, "waiting_s": 0.0, "longest_wait_s": 0.0, "buffered_bytes": 0, "error": None}
    return _sink.status()
