"""An outbox file deleted while the agent has it open (by hand, to free space?): its events are
copied into a new file at the path, or held in memory where there is no room, and a restart
finds them all."""
from __future__ import annotations

import logging
import os

import pytest

from agent.mqtt.outbox import Outbox
from tests.agent.conftest import fill_file_system


def ids(ob: Outbox) -> list[str]:
    return [p.event_id for p in ob.pending()]


def put(ob: Outbox, names, size: int = 200) -> None:
    for name in names:
        ob.next_seq()
        assert ob.put(name, "adgan/st1/events", b"x" * size)


@pytest.mark.parametrize("what", [("",), ("", "-wal", "-shm"), ("", "-wal", "-shm", ".seq")])
def test_a_deleted_outbox_is_rebuilt_at_the_next_write_and_a_restart_finds_every_event(tmp_path, caplog, what):
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    put(ob, [f"a{i}" for i in range(5)])
    ob.ack("a0")
    for suffix in what:  # rm outbox.sqlite*
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR, logger="agent.mqtt.outbox"):
        put(ob, ["b0", "b1"])
    said = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("outbox") and "was deleted while the agent had it open" in r.getMessage()]
    assert len(said) == 1 and "its 4 unacknowledged events are copied into a new file there" in said[0]
    assert path.is_file() and (path.stat().st_mode & 0o777) == 0o600
    assert ids(ob) == ["a1", "a2", "a3", "a4", "b0", "b1"]
    ob.ack("a1")
    ob.close()
    again = Outbox(path)  # the restart
    assert ids(again) == ["a2", "a3", "a4", "b0", "b1"]
    assert again.next_seq() == 8  # never repeated, though the sequence file went too
    again.close()


def test_the_pump_notices_a_deletion_with_no_new_event(tmp_path):
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    put(ob, ["a0", "a1"])
    os.unlink(path)
    ob.check()  # (the publisher's pump, twice a second)
    assert path.is_file()
    assert ids(Outbox(path)) == ["a0", "a1"]
    ob.close()


@pytest.mark.parametrize("suffix", ["", "-wal"])
def test_on_a_full_disk_the_events_are_held_in_memory_and_stored_when_the_space_is_freed(small_fs, caplog, suffix):
    path = small_fs / "outbox.sqlite"
    ob = Outbox(path, memory_events=1000)
    put(ob, [f"a{i}" for i in range(100)], size=1000)   # ~100 kB, and a WAL of ~0.8 MB (2 MB here)
    filler = fill_file_system(small_fs)
    os.unlink(str(path) + suffix)  # freeing space by hand: an open file keeps its blocks, so nothing is freed yet
    with caplog.at_level(logging.ERROR, logger="agent.mqtt.outbox"):
        put(ob, ["b0"], size=1000)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "there is no room for a copy" in said and "its 100 unacknowledged events are held in memory" in said
    assert ids(ob) == [f"a{i}" for i in range(100)] + ["b0"]
    filler.unlink()   # the operator frees space for real
    assert ob.sync() and ob.unsaved == 0
    ob.close()
    assert ids(Outbox(path)) == [f"a{i}" for i in range(100)] + ["b0"]


def test_its_whole_folder_deleted_is_made_again_private(tmp_path):
    import shutil
    path = tmp_path / "adgan" / "outbox.sqlite"
    ob = Outbox(path)
    put(ob, ["a0", "a1"])
    shutil.rmtree(path.parent)  # rm -rf /var/lib/adgan
    put(ob, ["b0"])
    assert (path.parent.stat().st_mode & 0o777) == 0o700 and path.is_file()
    ob.close()
    again = Outbox(path)
    assert ids(again) == ["a0", "a1", "b0"] and again.next_seq() == 4
    again.close()


# -- the WAL deleted alone, the file replaced by another, the sequence file deleted alone ----------------
# A kill is what loses events here (a clean close would checkpoint the deleted WAL through its open
# file): the outbox is driven in a child process that kills itself, and the parent plays the restart.

CHILD = """
import os, sqlite3, sys
from pathlib import Path
from agent.mqtt.outbox import Outbox
path = Path(sys.argv[1])
ob = Outbox(path)
def put(names):
    for name in names:
        ob.next_seq()
        assert ob.put(name, "adgan/st1/events", b"x" * 200)
put(["a0", "a1", "a2"])
ob.ack("a0")
for what in sys.argv[2].split(","):
    if what == "wal":        # rm outbox.sqlite-wal: the largest file of the folder after an outage
        os.unlink(str(path) + "-wal")
    elif what == "seq":      # rm outbox.sqlite.seq
        os.unlink(str(path) + ".seq")
    elif what == "replace":  # mv other.sqlite outbox.sqlite: another outbox, with an event of its own
        other = Outbox(path.with_name("other.sqlite"))
        other.next_seq()
        other.put("foreign", "adgan/st9/events", b"f")
        other.close()
        os.replace(path.with_name("other.sqlite"), path)
if sys.argv[3] == "pump":
    ob.check()               # the publisher's pump, twice a second
put(["b0", "b1"])
os.kill(os.getpid(), 9)      # no close: whatever SQLite holds only in its open files is lost
"""


def run_and_kill(path, what: str, when: str = "put") -> str:
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[3]
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), what, when], cwd=root, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == -9, r.stderr
    return r.stderr


@pytest.mark.parametrize("when", ["put", "pump"])
def test_a_deleted_wal_is_noticed_and_a_kill_after_it_loses_nothing(tmp_path, when):
    path = tmp_path / "outbox.sqlite"
    said = run_and_kill(path, "wal", when)
    assert "outbox.sqlite-wal" in said and "was deleted while the agent had it open" in said
    again = Outbox(path)  # the restart
    assert ids(again) == ["a1", "a2", "b0", "b1"]
    assert again.next_seq() == 6
    again.close()


def test_a_file_put_in_its_place_is_moved_aside_and_its_events_are_not_sent(tmp_path):
    path = tmp_path / "outbox.sqlite"
    said = run_and_kill(path, "replace")
    assert "was replaced by another file while the agent had it open" in said
    replaced = sorted(tmp_path.glob("outbox.sqlite.replaced-*"))
    assert [p.name for p in replaced if not p.name.endswith(("-wal", "-shm"))] and "moved to" in said
    again = Outbox(path)  # the restart: this station's events only, none lost
    assert ids(again) == ["a1", "a2", "b0", "b1"]
    again.close()
    kept = Outbox(replaced[0])  # the other file, for a person, as it was
    assert ids(kept) == ["foreign"]
    kept.close()


def test_a_deleted_sequence_file_is_written_again_at_once(tmp_path):
    path = tmp_path / "outbox.sqlite"
    said = run_and_kill(path, "seq", "pump")
    assert "outbox.sqlite.seq" in said and "written again" in said
    assert (tmp_path / "outbox.sqlite.seq").is_file()
    again = Outbox(path)
    assert ids(again) == ["a1", "a2", "b0", "b1"] and again.next_seq() == 6
    again.close()


def test_status_names_where_a_replacing_file_was_moved(tmp_path):
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    put(ob, ["a0"])
    assert ob.status()["replaced"] is None
    other = Outbox(tmp_path / "other.sqlite")
    other.close()
    os.replace(tmp_path / "other.sqlite", path)
    ob.check()
    moved = ob.status()["replaced"]
    assert moved and moved.startswith(str(path) + ".replaced-") and os.path.isfile(moved)
    ob.check()  # said once: the new file at the path is the one open now
    assert ob.status()["replaced"] == moved and ids(ob) == ["a0"]
    ob.close()
