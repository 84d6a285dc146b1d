"""A disk the kernel makes read-only under a running station (ext4 `errors=remount-ro`, as a
Jetson's root is mounted, when its SD card or eMMC fails): on a real loop-mounted ext4, failed
through the kernel's own error path."""
from __future__ import annotations

import logging

from agent.mqtt.outbox import Outbox


def outbox_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent.mqtt.outbox" and r.levelno >= logging.ERROR]


def test_a_disk_made_read_only_is_said_once_per_kind_and_events_are_held_and_sent(failing_disk, caplog,
                                                                                   monkeypatch):
    monkeypatch.setattr(Outbox, "RETRY_S", 0.0)  # (parts 0.5 s apart or more: each one's write is tried again)
    path = failing_disk.mnt / "outbox.sqlite"
    ob = Outbox(path, reserve_bytes=256 * 1024)
    for i in range(5):
        ob.next_seq()
        assert ob.put(f"a{i}", "adgan/st1/events", b"x" * 500)
    failing_disk.fail()
    with caplog.at_level(logging.INFO, logger="agent.mqtt.outbox"):
        seqs = []
        for i in range(40):                      # a shift's worth of parts, each a sequence number and a write
            seqs.append(ob.next_seq())
            assert ob.put(f"b{i}", "adgan/st1/events", b"y" * 500)
        assert seqs == list(range(6, 46))
        assert [p.event_id for p in ob.pending()] == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(40)]
        status = ob.status()
        assert status["unsaved"] == 40 and status["depth"] == 45 and status["seq_failures"] == 40, status
        assert "Read-only file system" in status["error"] or "I/O error" in status["error"], status
        for p in ob.pending():                   # the broker takes them all
            ob.ack(p.event_id)
        assert ob.pending() == [] and len(ob) == 0 and ob.unsaved == 0
        said = outbox_errors(caplog)
        # Once per kind of failure (the sequence number, the write, the delete of an acknowledged
        # event), not once per event: it was two ERROR lines per part, every part, until a repair.
        assert 2 <= len(said) <= 3, said
        assert all("file system is read-only" in m and "dmesg" in m for m in said), said
        ob.close()
        closing = outbox_errors(caplog)[len(said):]
    # Acknowledged, they were sent: nothing is lost. What could not be stored is said at the stop.
    assert closing == ["sequence numbers 6 to 45 could not be stored (sequence number: OSError: [Errno 30] "
                       "Read-only file system): after a restart they are given again"], closing
    failing_disk.remount()
    again = Outbox(path)
    # The deletes did not reach the disk either: the 5 events stored before are sent again
    # (consumers deduplicate on event_id), and the numbers given while it was read-only repeat.
    assert [p.event_id for p in again.pending()] == [f"a{i}" for i in range(5)]
    assert again.next_seq() == 6
    again.close()


def test_a_sequence_file_that_fails_alone_is_said_once_and_its_recovery_too(tmp_path, caplog, monkeypatch):
    """The database writes, the sequence file does not (then does again): each is said once."""
    from agent.mqtt import files
    ob = Outbox(tmp_path / "outbox.sqlite")
    real_set, failing = files.SeqFile.set, [True]

    def flaky_set(self, value, flush=True):
        real_set(self, value, flush)
        if failing[0]:
            raise OSError(5, "Input/output error")
    monkeypatch.setattr(files.SeqFile, "set", flaky_set)
    with caplog.at_level(logging.INFO, logger="agent.mqtt.outbox"):
        for i in range(10):
            ob.next_seq()
            assert ob.put(f"e{i}", "adgan/st1/events", b"z")
        assert ob.unsaved == 0 and ob.status()["error"] == "sequence number: OSError: [Errno 5] Input/output error"
        failing[0] = False
        ob.next_seq()
        assert ob.status()["error"] is None
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "agent.mqtt.outbox"]
    assert said == [("ERROR", f"outbox {tmp_path / 'outbox.sqlite'} cannot be written (sequence number: OSError: "
                              "[Errno 5] Input/output error); events are held in memory until it can"),
                    ("WARNING", f"sequence numbers are stored again in {tmp_path / 'outbox.sqlite.seq'} (at 11)")], said
    ob.close()

