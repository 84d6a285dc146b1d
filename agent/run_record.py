"""How the run before ended, said at start: a kill, a crash or a power cut is a failure too.

Until 2026-12-07 a start after the agent was killed (SIGKILL, systemd's watchdog, the kernel's
OOM killer), crashed in native code or lost its power said nothing of it: only the init system's
journal did, and a station watched over MQTT looked as if it had merely restarted. Now
`<outbox>.run` holds one line (JSON) about the run: its pid, the machine's boot, when it
started, when it was last seen alive (the loop's turns, every ALIVE_S at most) and, once it
stops, when and why. A start reads the line the run before left: one with no stop is a run
that ended without stopping, said (WARNING: killed or crashed on this boot, or the machine
restarted under it, and when it was last seen alive) and counted across runs; it is in
`status.previous_run` and the metric `adgan_runs_ended_without_stop_total`.

The file is rewritten in place and not flushed while the agent runs (a write per ALIVE_S to the
page cache); its start and its stop are flushed, so that a power cut soon after a start is not
taken for the run before's stop, nor one after a stop for a kill. A file that cannot be
written (a full or read-only disk) is said once and the agent goes on.

A crash's stacks (faulthandler: a fatal signal in native code, systemd's watchdog's SIGABRT) go
to `<outbox>.stacks` (`open_stacks`), not to stderr: written there in the signal handler, they
cannot wait on a log output that takes nothing (a stuck journal held the crashed process until
systemd killed it), and they survive a journal kept in memory only. The next start logs them and
names the crash in `status.previous_run` (`fatal`, `where`), then empties the file. Its blocks
are set aside beforehand (MAX_STACKS, beyond its end: `reserve_stacks`), so that a crash on a full
disk still writes its stacks: until 2026-12-07 they were lost there (ENOSPC in the signal handler).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from agent import durable
from agent.mqtt.events import utc_iso

log = logging.getLogger(__name__)

SUFFIX = ".run"
STACKS_SUFFIX = ".stacks"
MAX_STACKS = 64 * 1024  # bytes of a crash's stacks read back (the last ones: a crash loop appends)
ALIVE_S = 5.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


# systemd's $SERVICE_RESULT for a run that ended without stopping, in words (systemd.exec(5))
SYSTEMD_SAYS = {
    "watchdog": "was killed by systemd's watchdog: its loop did not come round for WatchdogSec",
    "oom-kill": "was killed by the kernel's OOM killer: the machine ran out of memory",
    "core-dump": "crashed (signal {status})",
    "signal": "was killed by signal {status}",
    "timeout": "was killed by systemd: it did not stop (or start) within the unit's timeout",
}


def _how(sd: dict[str, str], ended: str) -> str:
    """How a run ended without stopping, in words: as systemd saw it (`sd`), else as the boots say."""
    if sd:
        return SYSTEMD_SAYS.get(sd.get("result"), "was killed or crashed; systemd says {result} ({code} {status})") \
            .format(result=sd.get("result"), code=sd.get("exit_code"), status=sd.get("exit_status"))
    words = {"killed or crashed": "was killed (SIGKILL; systemd's watchdog; the kernel's OOM killer: see dmesg) or "
                                  "crashed",
             "the machine restarted": "did not stop before the machine restarted (a power cut, a reboot without "
                                      "stopping the service, a kernel crash)"}
    return words.get(ended, "was killed, crashed or lost its power")


def stacks_path(outbox: str | Path) -> Path:
    outbox = Path(outbox)
    return outbox.with_name(outbox.name + STACKS_SUFFIX)


FALLOC_FL_KEEP_SIZE = 1
_fallocate = None  # libc's fallocate, once looked up (False: none)


def reserve_stacks(fd: int) -> bool:
    """Set MAX_STACKS bytes of the disk aside beyond the end of the open stacks file `fd`, its size
    unchanged (fallocate, FALLOC_FL_KEEP_SIZE): a crash's stacks appended there need no new block,
    so they are written on a full disk. False where the file system cannot (then, as before, a full
    disk loses them)."""
    global _fallocate
    if _fallocate is None:
        import ctypes
        try:  # (the process's own symbols, libc's among them: no search for the library)
            f = ctypes.CDLL(None, use_errno=True).fallocate
        except (OSError, AttributeError):  # (not Linux)
            f = False
        else:
            f.argtypes, f.restype = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], ctypes.c_int
        _fallocate = f
    try:
        return bool(_fallocate) and _fallocate(fd, FALLOC_FL_KEEP_SIZE, os.fstat(fd).st_size, MAX_STACKS) == 0
    except OSError:
        return False


def open_stacks(outbox: str | Path):
    """The file a crash's stacks are appended to (for faulthandler.enable; kept open for the
    process's life), its blocks set aside (`reserve_stacks`), or None where it cannot be opened
    (then stderr takes them, as before)."""
    path = stacks_path(outbox)
    try:
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)  # (a new state folder: made as the outbox's)
        f = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab", 0)
    except OSError as e:
        log.warning("cannot open %s (%s): a crash's stacks go to stderr", path, e)
        return None
    if not reserve_stacks(f.fileno()):
        log.info("%s: no space set aside for a crash's stacks (a full disk at a crash would lose them)", path)
    return f


def _crash(text: str) -> dict[str, str]:
    """`fatal` (faulthandler's first line: "Fatal Python error: Segmentation fault") and `where`
    (the innermost frame of the thread that crashed) of the last crash in `text`."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = [i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error")]  # (a crash loop appends)
    lines = lines[last[-1]:] if last else lines
    fatal = lines[0] if lines else ""
    current = next((i for i, ln in enumerate(lines) if ln.startswith("Current thread")), None)
    where = lines[current + 1] if current is not None and current + 1 < len(lines) else ""
    return {"fatal": fatal[:200], "where": where[:300]}


def boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


class RunRecord:
    def __init__(self, outbox: str | Path) -> None:
        outbox = Path(outbox)
        self.path = outbox.with_name(outbox.name + SUFFIX)
        self.stacks = stacks_path(outbox)
        self.previous: dict | None = None  # what the run before left (status.previous_run); None: no run before
        self.ended_without_stop = 0         # such runs counted since the station's first (kept in the file)
        self._fd, self._next_alive, self._failed = -1, 0.0, False
        self._me: dict = {}

    def start(self) -> None:
        """Read what the run before left, say how it ended, and write this run's line (once)."""
        if self._me:
            return
        before, boot, stacks = self._read(), boot_id(), self._stacks_before()
        crash = _crash(stacks) if stacks else {}
        if before is not None:
            n = before.get("ended_without_stop", 0)
            self.ended_without_stop = n if isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 53 else 0
            self.previous = self._ended(before, boot, crash)
        if stacks:
            if self.previous is None:  # (its line deleted, or never written: the stacks say it crashed)
                self.previous = {"ended": "unknown", **crash}
            log.error("the run before wrote these stacks as it ended (%s; kept in %s until now):\n%s",
                      ", ".join(v for v in crash.values() if v), self.stacks, stacks.rstrip())
        now = utc_iso(time.time())
        self._me = {"pid": os.getpid(), "boot": boot, "started": now, "alive": now, "stopped": None, "cause": None,
                    "ended_without_stop": self.ended_without_stop}
        self._next_alive = time.monotonic() + ALIVE_S
        if self._open():
            self._write(flush=True)  # (on the disk at once: a power cut soon after must not leave the run before's)

    def _open(self) -> bool:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            return True
        except OSError as e:
            self._fail(e)
            return False

    def _stacks_before(self) -> str:
        """A crash's stacks the run before left (the last MAX_STACKS bytes), the file then emptied
        for this run's."""
        try:
            with open(self.stacks, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - MAX_STACKS))
                text = f.read(MAX_STACKS).decode("utf-8", "replace")
            if text:
                with open(self.stacks, "ab") as f:  # (emptied, its blocks set aside again: truncation gave them back)
                    f.truncate(0)
                    reserve_stacks(f.fileno())
            return text
        except FileNotFoundError:
            return ""
        except OSError as e:
            log.warning("cannot read or empty %s (%s): a crash's stacks of the run before are not said", self.stacks, e)
            return ""

    def _read(self) -> dict | None:
        try:
            raw = self.path.read_bytes()[:4096]
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot read %s (%s): how the run before ended is not known", self.path, e)
            return {"unreadable": str(e)}
        try:
            doc = json.loads(raw.split(b"\n", 1)[0].decode())
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            return doc
        except (ValueError, RecursionError) as e:  # (a damaged file; UnicodeDecodeError is a ValueError)
            log.warning("%s cannot be read (%s): how the run before ended is not known", self.path, e)
            return {"unreadable": str(e)}

    def _ended(self, doc: dict, boot: str | None, crash: dict[str, str]) -> dict:
        """status.previous_run from the run before's line (`boot`: this boot's id; `crash`: what
        its stacks say, where it wrote them as it crashed), said in the log."""
        if "unreadable" in doc:
            return {"ended": "unknown", "error": doc["unreadable"], **crash}
        seen = {k: doc.get(k) if isinstance(doc.get(k), (str, int)) else None
                for k in ("pid", "started", "alive", "stopped", "cause")}
        seen.update(crash)
        sd = doc.get("systemd") if isinstance(doc.get("systemd"), dict) else {}
        sd = {k: str(sd[k])[:40] for k in ("result", "exit_code", "exit_status") if sd.get(k) is not None}
        if sd:
            seen["systemd"] = sd
        if seen["stopped"] is not None:
            log.info("the run before (pid %s, started %s) stopped at %s: %s", seen["pid"], seen["started"],
                     seen["stopped"], seen["cause"] or "asked to")
            return {**seen, "ended": "stopped"}
        self.ended_without_stop += 1
        ended = "killed, crashed or the machine restarted" if doc.get("boot") is None or boot is None else \
            "killed or crashed" if doc.get("boot") == boot else "the machine restarted"
        how = _how(sd, ended)
        if crash:  # (a fatal signal's stacks: not a SIGKILL)
            how = f"{how} ({crash['fatal']}; its stacks follow)" if sd else \
                f"crashed: {crash['fatal']} (its stacks follow)"
        log.warning("the run before (pid %s, started %s) ended without stopping: it %s; last seen alive at %s. "
                    "%d run(s) on this outbox have ended so", seen["pid"], seen["started"],
                    how, seen["alive"] or seen["started"], self.ended_without_stop)
        return {**seen, "ended": ended}

    def record_exit(self, ended: dict[str, str]) -> str | None:
        """What systemd saw of the end of a run that did not stop itself (`adgan agent record-exit`, the
        unit's ExecStopPost: $SERVICE_RESULT, $EXIT_CODE, $EXIT_STATUS), added to its line for the next
        start to say: the watchdog, the OOM killer, a crash's signal. None when recorded or nothing is
        to be (a run that ended itself: a stop, an exit code, an ExecStartPre refusal; its line says
        why), else why not: no line, a line of another boot (a power cut: this is a later start's
        refusal), a line that has stopped or has systemd's account already."""
        if ended.get("result") not in SYSTEMD_SAYS and ended.get("exit_code") not in ("killed", "dumped"):
            return None  # (every `systemctl stop` comes here: nothing to say in the journal)
        doc = self._read()
        if doc is None or "unreadable" in doc:
            return f"no readable run record in {self.path}"
        if doc.get("stopped") is not None or "systemd" in doc or doc.get("boot") != boot_id():
            return f"the run record in {self.path} is not of a run this end could be: left as it is"
        self._me = {**doc, "systemd": ended}  # (written as the run writes it: in place, flushed)
        if not self._open():
            return f"cannot write {self.path}"
        self._write(flush=True)
        os.close(self._fd)
        self._fd = -1
        return None

    def status(self) -> dict | None:
        """status.previous_run: how the run before ended; None for the first run on this outbox."""
        return None if self.previous is None else {**self.previous, "runs_ended_without_stop": self.ended_without_stop}

    def alive(self) -> None:
        """The loop turns: this run is alive (written every ALIVE_S at most)."""
        now = time.monotonic()
        if self._fd < 0 or now < self._next_alive:
            return
        self._next_alive = now + ALIVE_S
        self._me["alive"] = utc_iso(time.time())
        self._write(flush=False)

    def stopped(self, cause: str | None) -> None:
        """This run stops (its cause: a signal, the source's end, a failure), flushed."""
        if self._fd < 0:
            return
        self._me.update(stopped=utc_iso(time.time()), cause=(cause or "asked to")[:500])
        self._write(flush=True)
        os.close(self._fd)
        self._fd = -1

    def _write(self, flush: bool) -> None:
        line = (json.dumps(self._me, separators=(",", ":")) + "\n").encode()
        try:  # (written over the old line, then cut to it: a kill between leaves a line and some of the old)
            self._same_file()
            os.pwrite(self._fd, line, 0)
            os.ftruncate(self._fd, len(line))
            if flush:
                os.fsync(self._fd)
        except OSError as e:
            self._fail(e)

    def _same_file(self) -> None:
        """The file deleted or replaced under a running agent (a person cleaning the state folder): made
        anew, so that this run's stop is not written into a file no start reads."""
        if durable.still_at(self.path, self._fd):
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(self._fd)
        self._fd = fd

    def _fail(self, e: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.warning("cannot write %s (%s): a kill of this run will not be said at the next start", self.path, e)
