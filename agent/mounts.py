"""The mount that holds a path, as this process sees it (/proc/self/mountinfo: a unit's private /tmp and
its read-only views included), and why a folder there cannot be written (EROFS) in words that point at
the right fix.

A read-only file system had one explanation until 2026-12-07: "the kernel makes a disk it finds failing
read-only (ext4 errors=remount-ro): see dmesg, repair it (fsck)". Under the project's unit that is
usually wrong: `ProtectSystem=strict` makes every path outside its `StateDirectory=` (/var/lib/adgan)
and `ReadWritePaths=` read-only for the service, by read-only bind mounts over a file system that is
writable, and an outbox put elsewhere (/opt/adgan, a home folder) was refused with advice to check a
disk that is sound. mountinfo tells them apart: a view made read-only has the mount's own option `ro`
over a superblock that is `rw`; a file system mounted read-only has its superblock `ro`; a disk the
kernel stopped writing after an error (ext4 on recent kernels) shows `rw` in both and still refuses.
A folder the sandbox hides (`ProtectHome=yes`: /home, /root and /run/user; `InaccessiblePaths=`) is
systemd's empty folder of mode 0000 mounted over it: its owner is no one to chown it to (`hidden_words`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "lustre", "gpfs", "afs", "fuse.sshfs",
              "fuse.glusterfs"}
STATE_FOLDER = "/var/lib/adgan"  # the unit's StateDirectory=


class Mount(NamedTuple):
    point: str        # where it is mounted
    fstype: str
    root: str         # the mount's root in its file system (a bind mount's folder, a private /tmp's)
    options: str      # the mount's own options (ro: read-only for this view)
    super_options: str  # the file system's (ro: mounted read-only, or made so by the kernel)


def _unescape(field: str) -> str:
    """A path of /proc/self/mountinfo as it is (a space is written \\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: str | Path) -> Mount | None:
    """The mount that holds `path`, from /proc/self/mountinfo (this process's view), or None."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    target, best = os.path.realpath(path), None
    for ln in lines:
        fields, _, after = ln.partition(" - ")
        f, fs = fields.split(), after.split()
        if len(f) < 6 or not fs:
            continue
        mnt = _unescape(f[4])
        if target == mnt or target.startswith(mnt.rstrip("/") + "/"):
            if best is None or len(mnt) >= len(best.point):  # (the deepest; a later mount over the same point)
                best = Mount(mnt, fs[0], _unescape(f[3]), f[5], fs[2] if len(fs) > 2 else "")
    return best


def read_only_words(folder: str | Path) -> str:
    """Why `folder`, whose writes fail with EROFS, is read-only, and what to do (the outbox's, or a file a
    command writes there)."""
    m = mount_of(folder)
    if m is not None and "ro" in m.options.split(",") and "ro" not in m.super_options.split(","):
        return (f"its mount {m.point} is read-only for this process, over a file system that is writable: systemd's "
                f"ProtectSystem=strict does this to every path outside the unit's StateDirectory= ({STATE_FOLDER}) "
                f"and ReadWritePaths=; write under {STATE_FOLDER}, or add {folder} to ReadWritePaths=")
    if m is not None and "ro" in m.super_options.split(","):
        return (f"its file system ({m.fstype} at {m.point}) is mounted read-only: so mounted, or made so by the "
                "kernel on a failing disk (ext4 errors=remount-ro; see dmesg): remount it read-write, repair it "
                "(fsck) or write elsewhere")
    return ("the kernel refuses writes to its file system, which still reads rw: it does so on a disk it finds "
            "failing (ext4 errors=remount-ro): see dmesg, and repair it (fsck) or write elsewhere")


def hidden_words(folder: str | Path) -> str | None:
    """Words for a folder (or a file) the service's sandbox hides (systemd mounts its own inaccessible
    folder or file, mode 0000, over it: ProtectHome=yes for /home, /root and /run/user, InaccessiblePaths=
    for others), where "give it to the agent's user" would be wrong advice; None for any other."""
    m = mount_of(folder)
    if m is None or m.point != os.path.realpath(folder) or "/systemd/inaccessible/" not in m.root:
        return None
    return (f"{folder} is hidden from this service by its unit's sandbox (systemd's ProtectHome=yes hides /home, "
            f"/root and /run/user; InaccessiblePaths= others): put what the agent reads under /etc/adgan or "
            f"{STATE_FOLDER}, and what it writes under {STATE_FOLDER}")
