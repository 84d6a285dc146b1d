"""The outbox's reserve: space set aside beside it and released when the disk is full, so events
go on being stored on disk, where a kill cannot lose them (held in memory, they were lost by a
kill during an outage). On a real 2 MB tmpfs filled to the last byte."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from agent.mqtt.outbox import Outbox
from tests.agent.conftest import fill_file_system

ROOT = Path(__file__).resolve().parents[3]
RESERVE = 512 * 1024

CHILD = """
import os, sys
from pathlib import Path
from agent.mqtt.outbox import Outbox
from tests.agent.conftest import fill_file_system
path, reserve, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ob = Outbox(path, reserve_bytes=reserve)
assert ob.status()["reserve"]["held"] == (reserve > 0), ob.status()
for i in range(20):
    ob.next_seq(); assert ob.put(f"a{i}", "adgan/st1/events", b"x" * 1000)
fill_file_system(path.parent)          # the disk fills (the broker is down: nothing is acknowledged)
for i in range(n):
    ob.next_seq(); assert ob.put(f"b{i}", "adgan/st1/events", b"y" * 1000)
print("unsaved", ob.unsaved, "reserve", ob.status()["reserve"], flush=True)
os.kill(os.getpid(), 9)                # killed while the disk is full and the broker away
"""


def run_child(path: Path, reserve: int, n: int) -> str:
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), str(reserve), str(n)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == -9, r.stdout + r.stderr
    return r.stdout + r.stderr


def test_a_full_disk_releases_the_reserve_and_a_kill_then_loses_nothing(small_fs):
    path = small_fs / "outbox.sqlite"
    said = run_child(path, RESERVE, 100)
    assert "unsaved 0 reserve {'bytes': 524288, 'held': False, 'released': 1}" in said, said
    assert "the outbox's disk is full" in said and "its reserve" in said and "is released" in said, said
    (small_fs / "filler").unlink()  # the operator frees space; the restart finds every event
    again = Outbox(path)
    assert [p.event_id for p in again.pending()] == [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(100)]
    again.close()


def test_without_a_reserve_the_same_kill_loses_what_was_held_in_memory(small_fs):
    """The case the reserve is for, as it was (and is, with reserve_mb = 0)."""
    path = small_fs / "outbox.sqlite"
    said = run_child(path, 0, 100)
    assert "unsaved 0" not in said, said
    (small_fs / "filler").unlink()
    again = Outbox(path)
    assert len(again.pending()) < 120
    again.close()


def test_the_reserve_is_set_aside_again_once_there_is_room(small_fs, caplog, monkeypatch):
    from agent.mqtt import files
    monkeypatch.setattr(files.Reserve, "RETRY_S", 0.0)
    path = small_fs / "outbox.sqlite"
    ob = Outbox(path, reserve_bytes=RESERVE)
    filler = fill_file_system(small_fs)
    with caplog.at_level(logging.WARNING, logger="agent.mqtt.files"):
        for i in range(50):
            ob.next_seq()
            assert ob.put(f"b{i}", "adgan/st1/events", b"y" * 1000)
        assert ob.unsaved == 0 and not ob.status()["reserve"]["held"]
        filler.unlink()
        ob.next_seq()
        ob.put("c0", "adgan/st1/events", b"z")
    assert ob.status()["reserve"] == {"bytes": RESERVE, "held": True, "released": 1}
    said = [r.getMessage() for r in caplog.records]
    assert any("is set aside again" in m for m in said), said
    ob.close()


def test_a_reserve_without_room_is_said_once_and_the_outbox_works(small_fs, caplog):
    path = small_fs / "outbox.sqlite"
    with caplog.at_level(logging.WARNING, logger="agent.mqtt.files"):
        ob = Outbox(path, reserve_bytes=64 * 1000 * 1000)  # the default 64 MB, on 2 MB
        for i in range(3):
            ob.next_seq()
            assert ob.put(f"a{i}", "adgan/st1/events", b"x")
    said = [r.getMessage() for r in caplog.records if "cannot be set aside" in r.getMessage()]
    assert len(said) == 1 and "less than twice its size free" in said[0], said
    assert not ob.status()["reserve"]["held"] and len(ob) == 3
    ob.close()


def test_a_disk_out_of_inodes_releases_the_reserve_and_says_why_df_shows_room(tmp_path, caplog):
    """A file system full of files, not bytes: a file written under a temporary name (the request
    journal, the sequence record) cannot be made. The reserve's release frees an inode for it, and
    the message names the inodes: `df -h` shows room, and 'free space there' alone misled."""
    from agent import durable
    from agent.mqtt.files import Reserve
    from tests.agent.conftest import fill_inodes, tmpfs
    with tmpfs(tmp_path / "fs", size="64m", inodes=64) as fs:
        reserve = Reserve(fs / "outbox.sqlite.reserve", RESERVE)
        reserve.keep()
        journal = fs / "outbox.sqlite.requests"
        durable.write_text(journal, "one\n")
        fill_inodes(fs)
        with caplog.at_level(logging.ERROR, logger="agent.mqtt.files"):
            durable.write_text(journal, "two\n", reserve.free)
        assert journal.read_text() == "two\n" and reserve.released == 1
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "the outbox's disk is full ([Errno 28]" in said, said
    assert "; no inode is free on its file system (all 64 used, `df -i`): it is full of files, not bytes" in said, said
