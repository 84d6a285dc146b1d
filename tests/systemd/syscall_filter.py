"""The unit's system-call filter, applied to a test's process as systemd applies it.

`SystemCallFilter=` lines are read from the unit file and resolved into system calls by this
machine's `systemd-analyze syscall-filter` (its own group definitions), in systemd's order: a
first line without `~` is an allow-list, a later `~` line takes its calls out of it, a later
line without `~` puts them back. Everything else fails with `SystemCallErrorNumber=`. The filter
is loaded through libseccomp (which systemd itself uses) in a small wrapper that then execs the
command: `python -m tests.systemd.syscall_filter UNIT -- COMMAND...`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000


def group(name: str, analyze: str) -> set[str]:
    """The system calls of `@group` (nested groups expanded) or the one call `name`."""
    if not name.startswith("@"):
        return {name}
    r = subprocess.run([analyze, "syscall-filter", name], capture_output=True, text=True, timeout=30)
    if r.returncode or not r.stdout.strip():
        raise ValueError(f"systemd-analyze does not know the system-call group {name}: {r.stderr.strip()}")
    calls: set[str] = set()
    for line in r.stdout.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            calls |= group(line, analyze)
    return calls


def unit_filter(unit: Path, analyze: str) -> tuple[set[str], int]:
    """(the allowed system calls, the errno of a refused one) of an allow-list unit."""
    allowed: set[str] | None = None
    error = errno.EPERM
    for line in unit.read_text().splitlines():
        if m := re.match(r"SystemCallFilter=(~?)(.*)", line.strip()):
            deny, names = m.group(1) == "~", m.group(2).split()
            calls = set().union(*(group(n, analyze) for n in names))
            if allowed is None:
                if deny:
                    raise ValueError(f"{unit}: a deny-list filter; this helper reproduces allow-lists only")
                allowed = calls
            elif deny:
                allowed -= calls
            else:
                allowed |= calls
        elif m := re.match(r"SystemCallErrorNumber=(\w+)", line.strip()):
            error = getattr(errno, m.group(1))
    if allowed is None:
        raise ValueError(f"{unit} has no SystemCallFilter=")
    return allowed, error


def available() -> str | None:
    """Why the filter cannot be applied here, or None."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed"
    if ctypes.util.find_library("seccomp") is None:
        return "libseccomp is not installed"
    return None


def load(allowed: set[str], error: int) -> int:
    """Load the filter into this process (and what it execs); returns how many calls it allows."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO | (error & 0xFFFF))
    if not ctx:
        raise OSError("seccomp_init failed")
    n = 0
    try:
        for name in sorted(allowed):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a call of this architecture (systemd skips those too)
                continue
            if lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) != 0:
                raise OSError(f"seccomp_rule_add({name}) failed")
            n += 1
        if lib.seccomp_load(ctx) != 0:  # (sets no_new_privs, as NoNewPrivileges=yes does)
            raise OSError("seccomp_load failed")
    finally:
        lib.seccomp_release(ctx)
    return n


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m tests.systemd.syscall_filter UNIT -- COMMAND...")
    allowed, error = unit_filter(Path(argv[0]), shutil.which("systemd-analyze") or "systemd-analyze")
    n = load(allowed, error)
    print(f"syscall filter of {argv[0]}: {n} system calls allowed, others fail with {errno.errorcode[error]}",
          file=sys.stderr, flush=True)
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
