"""Files that survive a kill, a full disk and a power cut: written under a temporary name,
flushed to the device (fsync), renamed over the target, and the rename flushed (fsync of the
folder). A reader then finds the old file or the new one, whole.

A rename alone survives a kill, not a power cut: the file system may commit the rename before
the data (ext4 delays allocating a new file's blocks, and XFS and F2FS do the same), so a
station switched off at the end of a shift, seconds after `capture-reference`, `calibrate` or
`capture-frames`, could find an empty file under the new name. The fsyncs cost 2 ms per captured
640x480 frame here (13%; bench/durable_writes.py). SQLite (the outbox) and the sequence file flush
on their own.

Folders are written the same way, whole (`written_whole`, `replace_folder`: a bundle, a damage
set, a synthetic or prepared dataset), and `folder_lock` keeps two processes from writing one
folder's files at once (a thresholds file, a capture, a training run).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from agent.mounts import hidden_words, read_only_words

log = logging.getLogger(__name__)

LEFTOVER_AGE_S = 600.0  # a leftover folder of a process that is gone, untouched this long, is removed


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the device."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(path: Path) -> None:
    """Flush a file's data to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then each folder (before the folder is renamed into place)."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            sync_file(Path(root) / name)
        sync_folder(Path(root))


def replace(tmp: Path, path: Path) -> None:
    """Move the finished file `tmp` over `path`, durably: its data first, then the rename."""
    sync_file(tmp)
    os.replace(tmp, path)
    sync_folder(Path(path).parent)


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` over `out`, durably: its files and folders flushed first. An
    old `out` is moved aside, not removed first, so a kill in between keeps it (as
    `.<name>.old-<pid>`); it is removed once the new one is in place. A symbolic link `out` (a
    `bundles/current` a station names) stays one: the folder it points to is replaced."""
    out = output_folder(out)
    sync_tree(tmp)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    sync_folder(out.parent)
    if old is not None:
        shutil.rmtree(old)


def output_folder(out: Path) -> Path:
    """Where a folder written whole goes: `out`, or the folder a symbolic link `out` points to
    (written beside it, on its file system). Not the folder this process is in, nor one holding
    it: replaced, it would leave the shell that ran the command in a deleted folder."""
    out = Path(out)
    full = Path(os.path.realpath(out))
    try:
        here = Path.cwd()
    except OSError:
        here = None
    if here is not None and (full == here or full in here.parents):
        raise ValueError(f"{out} is the folder you are in{'' if full == here else ', or holds it'}: the output "
                         "replaces its folder whole when it is written, so name a new folder for it")
    return full if out.is_symlink() else out


def folder_beside(out: Path, kind: str = "new") -> Path:
    """A new hidden folder beside `out` (`.<name>.<kind>-<pid>-<random>`) to write `out`, or what it
    is made from, in before `replace_folder`. Such folders left by runs that were killed (their
    process is gone and they were untouched for LEFTOVER_AGE_S) are removed first."""
    out = output_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))


@contextlib.contextmanager
def written_whole(final: Path, force: bool, record: str, made_by: str, why: str = "", inside: Path | None = None,
                  makes: Callable[[Path], bool] | None = None):
    """An output folder written whole or not at all: yields a hidden folder beside `final` to
    write it into, which replaces `final` when the block ends, and is removed when the block fails
    (a full disk, a Ctrl-C): `final` is then as it was. A `final` that exists and is not an empty
    folder is refused first (`why` says what mixing would do); with `force` it is replaced, but
    only when it holds `record` (the file `made_by` writes into what it makes) and nothing that
    `makes` (an entry of the folder) says `made_by` does not make, so a mistyped path, or a folder
    where someone has put other files since, is never removed; nor one that `inside` (the run's
    input) lies in."""
    final = Path(final)
    if inside is not None and final.resolve() in (Path(inside).resolve(), *Path(inside).resolve().parents):
        raise ValueError(f"{final} holds this run's input ({inside}): write the output elsewhere")
    check_replaceable(final, force, record, made_by, why, makes)
    tmp = folder_beside(final)
    try:
        yield tmp
        tmp.chmod(0o755)  # (mkdtemp makes it private)
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(final: Path, force: bool, record: str, made_by: str, why: str = "",
                      makes: Callable[[Path], bool] | None = None, hint: str = "") -> None:
    """`written_whole`'s refusals (and export's, which writes its bundle the same way): `final`
    new or an empty folder; else, with `force`, holding `record` (else refused, `hint` added) and
    nothing that `makes` says `made_by` does not make."""
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return
    if not force:
        raise ValueError(f"{final} exists and is not empty: choose another output folder, or pass --force to "
                         f"replace it{why}")
    if not (final / record).is_file():
        raise ValueError(f"{final} holds no {record}: --force replaces only a folder that {made_by} made, and "
                         f"this folder is not one{hint}")
    other = sorted(p.name for p in final.iterdir() if makes is not None and not makes(p))
    if other:
        raise ValueError(f"{final} holds {', '.join(other[:3])}{' and more' if len(other) > 3 else ''}, which "
                         f"{made_by} does not make: --force replaces the whole folder, so move "
                         f"{'it' if len(other) == 1 else 'them'} out first, or choose another output folder")


def named(*names: str) -> Callable[[Path], bool]:
    """`written_whole`'s `makes` for a maker that writes these names into its folder."""
    return lambda p: p.name in names


def remove_leftovers(out: Path) -> None:
    """Remove the hidden folders beside `out` that a killed run of `folder_beside` or
    `replace_folder` left (a process of this machine that no longer runs, LEFTOVER_AGE_S untouched)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[a-z]+-(\d+)(-.*)?")
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for p in entries:
        m = pattern.fullmatch(p.name)
        if m is None or int(m.group(1)) == os.getpid() or _running(int(m.group(1))):
            continue
        try:
            if not p.is_dir() or time.time() - p.stat().st_mtime < LEFTOVER_AGE_S:
                continue
        except OSError:
            continue
        shutil.rmtree(p, ignore_errors=True)
        log.warning("removed %s: left by a run that was stopped (process %s is gone)", p, m.group(1))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # (another user's process; or a number no process has: leave it alone)
    return True


class FolderBusy(ValueError):
    """Another process holds the folder a command would write: refused before it did anything."""


@contextlib.contextmanager
def folder_lock(folder: Path, timeout_s: float = 30.0, busy: str = "", shared: bool = False):
    """Hold `folder`'s advisory lock (flock) for a read-modify-write of a file in it, so that two
    writers (two `calibrate` runs into one thresholds file) do not each keep only their own change;
    waits up to `timeout_s` for another holder (then TimeoutError, saying `busy` when given; with
    `timeout_s` 0, FolderBusy at once: a second capture or training into one folder). `shared`: a
    reader's lock, held by many at once, and by none while a writer holds it. A file system
    without flock (some NFS) is written unlocked, as before."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout_s <= 0:
                    raise FolderBusy(busy or f"{folder}: another process is writing into it") from None
                if time.monotonic() >= deadline:
                    raise TimeoutError(busy or f"{folder}: another process has held its lock for more than "
                                       f"{timeout_s:.0f} s (is another run writing the same file stuck?)") from None
                time.sleep(0.02)
            except OSError:
                break  # (no flock here: unlocked)
        yield
    finally:
        os.close(fd)  # (the lock goes with it)


def write_with(path: str | Path, write: Callable[[Path], None], suffix: str = ".tmp", private: bool = False) -> None:
    """`write(tmp)` writes the whole file under a temporary name beside `path`; it then replaces
    `path` durably. On any error (a full disk, a kill's KeyboardInterrupt) the temporary file is
    removed and `path` is left as it was. `private`: a temporary name of this call's own (hidden;
    the process id and a random part), for a file that two unlocked processes may write at once
    (two `adgan score --out` of one CSV): each writes its own and the last to finish replaces
    `path` with a whole file of its own, where with one shared name both wrote into one file."""
    path = Path(path)
    if private:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    else:
        tmp = path.with_name(path.name + suffix)
    try:
        write(tmp)
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` durably (old file or new, whole, after a kill or a power cut);
    `mode`: the file's permissions whatever the umask (0o600: a state file of the agent's own)."""
    def write(tmp: Path) -> None:
        if mode is None:
            tmp.write_bytes(data)
            return
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            os.fchmod(f.fileno(), mode)  # (a temporary file left by a kill keeps its own otherwise)
            f.write(data)
    write_with(path, write)


def write_text(path: str | Path, text: str, room=None, mode: int | None = None) -> None:
    """write_bytes of `text`; with `room` (a callable: an OSError -> whether room was made, as the
    outbox's Reserve.free does for a full disk), one more try after it made room."""
    try:
        write_bytes(path, text.encode(), mode)
    except OSError as e:
        if room is None or not room(e):
            raise
        write_bytes(path, text.encode(), mode)


def out_of_inodes(folder: str | Path) -> str:
    """For a full disk's message: why `df -h` shows room where a file cannot be made, when the file
    system holding `folder` has no inode left (many small files fill it, not bytes); else ""."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    if st.f_files == 0 or st.f_favail > 0:  # (0 in all: a file system that does not count them, btrfs)
        return ""
    return (f"; no inode is free on its file system (all {st.f_files} used, `df -i`): it is full of files, not "
            "bytes, which `df -h` does not show; remove files there")


def cannot_write(folder: str | Path, e: OSError) -> str:
    """Why nothing can be made in `folder` (`e`: write_error's), for a person: a permission with the owner
    and the chown, a read-only file system with its cause, a full one with its inodes."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return permission_words(PermissionError(e.errno, e.strerror, str(folder)), write=True)
    more = f"; {read_only_words(folder)}" if e.errno == errno.EROFS else out_of_inodes(folder)
    return f"cannot write in {folder} ({e.strerror}{more})"


def owner_words(path: str | Path) -> str:
    """For a 'permission denied' at `path`: `; it is owned by root (uid 0), mode 0600, and this agent
    runs as adgan (uid 998)` ("" where it cannot be seen)."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return (f"; it is owned by {user_name(st.st_uid)}, mode {st.st_mode & 0o777:04o}, and this agent runs as "
            f"{user_name(os.geteuid())}")


def folder_owner(folder: str | Path) -> str:
    """For a 'permission denied' in `folder`: its owner and mode against this process's user, and the fix."""
    words = owner_words(folder)
    return f"{words}: give it to that user (`chown {login()}: {folder}`)" if words else ""


def permission_words(e: OSError, write: bool = False) -> str:
    """`e` said for a person: a file this process may not read (left by a command run with sudo, where
    the agent runs as its own user), or with `write` a file or folder it may not make or write, named
    with its owner, its mode and the fix; other errors as they are."""
    if not isinstance(e, PermissionError) or not e.filename:
        return str(e)
    path = e.filename
    if write:  # (the path itself, or the folder it would be made in)
        held = next((p for p in (Path(path), *Path(path).parents) if os.path.exists(p)), None)
        if held is not None and (hidden := hidden_words(held)):
            return f"{path} cannot be written by this agent's user ({e.strerror}): {hidden}"
        words = owner_words(held) if held is not None else ""
        if not words:
            return f"{path}: {e.strerror}"
        what = "it is" if held == Path(path) else f"{held} is"
        return (f"{path} cannot be written by this agent's user ({e.strerror}; {what}{words[len('; it is'):]}): "
                f"give {'it' if held == Path(path) else held} to that user (`chown {login()}: {held}`)")
    shut = next((p for p in Path(path).parents if os.path.isdir(p) and not os.access(p, os.R_OK | os.X_OK)), None)
    if shut is not None and (hidden := hidden_words(shut)):
        return f"{path} cannot be read by this agent's user ({e.strerror}): {hidden}"
    if shut is None and (hidden := hidden_words(path)):  # (a file hidden so: InaccessiblePaths=)
        return f"{path} cannot be read by this agent's user ({e.strerror}): {hidden}"
    if shut is not None:  # (a folder on the way that this user may not enter)
        return (f"{path} cannot be read by this agent's user ({e.strerror}): its folder {shut} cannot be entered"
                f"{owner_words(shut)}: give it to that user (`chown -R {login()}: {shut}`) or let every user "
                f"enter and read it (`chmod -R a+rX {shut}`)")
    return (f"{path} cannot be read by this agent's user ({e.strerror}{owner_words(path)}): give it to that user "
            f"(`chown {login()}: {path}`, `-R` for a folder) or let every user read it (`chmod a+r {path}`)")


def unreadable(path: str | Path, folder: bool = False) -> str | None:
    """Words for a file (with `folder`: a folder to list) this process may not read, or whose folder it may
    not enter, with its owner and the fix (`permission_words`); None where it can, or nothing is there."""
    try:
        there = Path(path).is_dir() if folder else Path(path).is_file()  # (EACCES on the way raises)
        if there and not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    except PermissionError as e:
        return permission_words(e)
    return None


def login(uid: int | None = None) -> str:
    """A user's name (this process's by default), or its uid where the system lists none: for a chown."""
    return user_name(os.geteuid() if uid is None else uid).split(" (")[0].removeprefix("uid ")


def user_name(uid: int) -> str:
    """`name (uid N)` of a user, or `uid N` for one the system does not list (a container's)."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def not_ours(paths, pattern: str) -> str:
    """For a refusal: which of `paths` (those that exist) this process cannot both read and write,
    with their owners and modes, and the command that gives them (`pattern`: a shell pattern for
    them all) to its user; "" when it can all.
    A state folder's files left owned by root by an agent once run by hand with sudo, then run by
    its unit as its own user, are refused so (SQLite said only 'unable to open database file')."""
    bad = []
    for p in map(Path, paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        if not os.access(p, os.R_OK | os.W_OK):
            bad.append((p, st))
    if not bad:
        return ""
    groups: dict[str, list[str]] = {}
    for p, st in bad:
        groups.setdefault(f"owner {user_name(st.st_uid)}, mode {st.st_mode & 0o777:04o}", []).append(p.name)
    files = "; ".join(f"{', '.join(names)} ({how})" for how, names in groups.items())
    return (f"{files} cannot be written by this agent's user, {user_name(os.geteuid())}: as when the agent was "
            f"once run as another user (by hand with sudo); nothing in them is lost: give them to the agent's user, "
            f"`chown {login()}: {pattern}` (and `chmod u+rw` them), and start it again")


def still_at(path: str | Path, fd: int) -> bool:
    """Whether the file open as `fd` is still the one at `path`: not deleted, nor replaced by another
    (a person cleaning a state folder). Other OSErrors are raised."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
