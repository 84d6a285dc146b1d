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
    said = [r.getMessage() for r in caplog.records if "was deleted while the agent had it open" in r.getMessage()]
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


def test_on_a_full_disk_the_events_are_held_in_memory_and_stored_when_the_space_is_freed(small_fs, caplog):
    path = small_fs / "outbox.sqlite"
    ob = Outbox(path, memory_events=1000)
    put(ob, [f"a{i}" for i in range(100)], size=1000)   # ~100 kB, and a WAL of ~0.8 MB (2 MB here)
    filler = fill_file_system(small_fs)
    os.unlink(path)   # freeing space by hand: an open file keeps its blocks, so nothing is freed yet
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
