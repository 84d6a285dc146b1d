"""Flushes a part costs: each is a wait on an SD card or a worn eMMC (tests/agent/test_slow_disk.py)."""
from __future__ import annotations

import os
import shutil

import pytest


def test_a_part_costs_one_flush(tmp_path):
    """A part's sequence number, its event and the acknowledgement's delete used to be flushed
    one by one: three flushes a part. The number now goes to disk with its event, and the delete
    with the next event (counted by bench/store_flushes.py, with the outbox run as the agent runs it)."""
    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("strace is missing in CI (make install installs it as root)")
        pytest.skip("strace is not installed")
    from bench.store_flushes import run
    res = run(parts=40, interval_s=0.01, delay_ms=0, folder=tmp_path)
    assert res["flushes_per_part"] <= 1.3, res


def test_a_stored_event_carries_its_sequence_number_in_the_same_commit(tmp_path):
    """The sequence number is no longer flushed on its own: the event's commit stores it (a power
    cut after the commit finds it there), and a restart counts on from it."""
    import sqlite3

    from agent.mqtt.outbox import Outbox
    ob = Outbox(tmp_path / "outbox.sqlite")
    for i in range(3):
        seq = ob.next_seq()
        ob.put(f"e{i}", "adgan/st1/events", b"{}")
        with sqlite3.connect(tmp_path / "outbox.sqlite") as db:  # what another reader (a restart) sees
            assert db.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone() == (seq,)
        ob.ack(f"e{i}")
    ob.close()
    (tmp_path / "outbox.sqlite.seq").unlink()  # only the database's copy is left
    again = Outbox(tmp_path / "outbox.sqlite")
    assert again.next_seq() == 4 and len(again) == 0
    again.close()


def test_a_number_whose_event_could_not_be_stored_is_flushed_in_its_own_file(small_fs, monkeypatch):
    """On a full disk (no reserve) the event is held in memory: its sequence number must not rest
    on the database's commit that failed, so its own file is flushed before put() returns."""
    from agent.mqtt import files
    from agent.mqtt.outbox import Outbox
    from tests.agent.conftest import fill_file_system
    flushed: list[int] = []
    real = files.SeqFile.flush

    def spy(self):
        dirty = not self.flushed
        real(self)
        if dirty:
            flushed.append(self.value)
    monkeypatch.setattr(files.SeqFile, "flush", spy)
    monkeypatch.setattr(Outbox, "RETRY_S", 0.0)
    ob = Outbox(small_fs / "outbox.sqlite")
    ob.next_seq()
    ob.put("stored", "adgan/st1/events", b"x" * 100)
    assert flushed == [] and ob.unsaved == 0     # stored with its event: no flush of its own
    fill_file_system(small_fs)
    for i in range(30):                            # until the database's writes fail
        seq = ob.next_seq()
        ob.put(f"held{i}", "adgan/st1/events", b"y" * 4000)
        if ob.unsaved:
            break
    assert ob.unsaved and flushed and flushed[-1] == seq, (ob.status(), flushed, seq)
    ob.close()
