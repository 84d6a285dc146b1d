import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.settings import MqttSettings
from tests.agent.conftest import Subscriber

ROOT = Path(__file__).resolve().parents[3]


def events_received(msgs, topic="adgan/st1/events"):
    return [json.loads(p)["event_id"] for t, p, _ in msgs if t == topic]


def test_events_arrive_in_order_and_leave_the_outbox_on_ack(broker, tmp_path):
    sub = Subscriber(broker.port, "adgan/st1/#")
    ob = Outbox(tmp_path / "outbox.sqlite")
    pub = Publisher("st1", ob, MqttSettings(port=broker.port))
    try:
        pub.start()
        assert pub.connected.wait(10)
        assert sub.wait_for(lambda m: ("adgan/st1/availability", b"online", False) in m
                            or any(t.endswith("availability") and p == b"online" for t, p, _ in m))
        for i in range(5):
            pub.publish_event({"event_id": f"e{i}", "seq": i, "verdict": "ok" if i % 2 else "anomaly"})
        assert sub.wait_for(lambda m: len(events_received(m)) == 5)
        assert events_received(sub.messages) == [f"e{i}" for i in range(5)]
        deadline = time.monotonic() + 10
        while len(ob) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ob) == 0  # every event acknowledged by the broker and removed
        assert sub.wait_for(lambda m: any(t == "adgan/st1/verdict" and p == b"NG" for t, p, _ in m))
    finally:
        pub.stop()
        sub.close()
    # a clean stop publishes 'offline' (retained)
    late = Subscriber(broker.port, "adgan/st1/availability")
    try:
        assert late.wait_for(lambda m: m and m[-1][1] == b"offline" and m[-1][2])
    finally:
        late.close()


def test_a_corrupt_outbox_is_moved_aside_and_what_it_holds_is_kept(tmp_path):
    """A failing storage device's outbox: the file is moved aside at open, a new one started, the
    events a scan can still read are kept (stored in the new file at once) and nothing repeats."""
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    for i in range(200):
        ob.put(f"e{i}", "t", b"x" * 200)
    seqs = [ob.next_seq() for _ in range(5)]
    ob.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:  # the last page of the file becomes garbage
        f.seek(size - 4096)
        f.write(os.urandom(4096))
    ob = Outbox(path)
    st = ob.status()
    moved = Path(st["quarantined"])
    assert moved.parent == tmp_path and moved.name.startswith("o.sqlite.corrupt-") and moved.stat().st_size == size
    kept = [p.event_id for p in ob.pending()]
    assert 150 <= len(kept) < 200 and kept == [f"e{i}" for i in range(len(kept))]  # in order, a prefix
    assert st["unsaved"] == 0 and st["error"] is None  # already in the new file
    assert ob.next_seq() > max(seqs)
    ob.put("new", "t", b"y")
    ob.close()
    again = Outbox(path)  # the new file is a good one: nothing moved, everything there
    assert [p.event_id for p in again.pending()] == [*kept, "new"] and again.status()["quarantined"] is None
    again.close()
    (tmp_path / "n.sqlite").write_bytes(os.urandom(8192))  # not a database at all
    ob = Outbox(tmp_path / "n.sqlite")
    assert ob.status()["quarantined"] and ob.pending() == [] and ob.put("a", "t", b"z")
    ob.close()
    assert [p.event_id for p in Outbox(tmp_path / "n.sqlite").pending()] == ["a"]


def test_an_outbox_that_turns_corrupt_while_running_is_moved_aside_at_the_next_write(tmp_path, monkeypatch):
    """The device fails under a running agent: the write that meets it (SQLite's "malformed", made
    here on a file really broken underneath) holds the event in memory; the next try opens the
    file again, moves it aside and stores what it holds in a new one, so a stop loses nothing."""
    import sqlite3
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    for i in range(200):
        ob.put(f"e{i}", "t", b"x" * 200)
    ob._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as SQLite does by itself every 1000 pages
    assert path.stat().st_size > 3 * 4096
    with open(path, "r+b") as f:  # a page of the events, under the open connection
        f.seek(2 * 4096)
        f.write(os.urandom(4096))
    real = ob._transaction

    def malformed(statements):  # the one thing not real: that this write is the one that reads it
        monkeypatch.setattr(ob, "_transaction", real)
        e = sqlite3.DatabaseError("database disk image is malformed")
        e.sqlite_errorcode = 11
        raise e
    monkeypatch.setattr(ob, "_transaction", malformed)
    ob.put("late", "t", b"y")
    assert ob.status()["unsaved"] == 1 and "malformed" in ob.status()["error"]
    assert ob.sync()  # the retry: moved aside, a new file, the held event in it
    st = ob.status()
    assert st["quarantined"] and st["error"] is None and st["unsaved"] == 0
    ob.close()
    again = Outbox(path)
    ids = [p.event_id for p in again.pending()]
    assert ids[-1] == "late" and again.status()["quarantined"] is None
    again.close()


def test_outbox_is_bounded_and_counts_what_it_drops(tmp_path, caplog):
    ob = Outbox(tmp_path / "o.sqlite", max_events=3)
    for i in range(5):
        ob.put(f"e{i}", "t", b"x")
    assert [p.event_id for p in ob.pending()] == ["e2", "e3", "e4"] and ob.dropped == 2
    ob.put("e4", "t", b"x")  # the same id again is not a second event
    assert len(ob) == 3
    for i in range(5, 50):  # a long outage: every new event drops one, logged at most every 10 s
        ob.put(f"e{i}", "t", b"x")
    assert ob.dropped == 47 and len([r for r in caplog.records if "outbox full" in r.getMessage()]) == 1
    ob.close()
    assert Outbox(tmp_path / "o.sqlite", max_events=3).dropped == 47  # the counter survives a restart


PRODUCER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {root!r})
    from agent.mqtt.outbox import Outbox
    from agent.mqtt.publisher import Publisher
    from agent.settings import MqttSettings
    port, start, count, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pub = Publisher("st1", Outbox(path), MqttSettings(port=port, keepalive_s=5))
    pub.start()
    for i in range(start, start + count):
        pub.publish_event({{"event_id": f"e{{i}}", "seq": i, "verdict": "ok"}})
        print(i, flush=True)
        time.sleep(0.1)
    time.sleep(30)  # stay alive until killed
''')


def test_no_event_is_lost_across_a_broker_outage_and_an_agent_sigkill(broker, tmp_path):
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER.format(root=str(ROOT)))
    outbox = str(tmp_path / "outbox.sqlite")
    sub = Subscriber(broker.port, "adgan/st1/events")
    assert sub.subscribed.wait(10)
    p1 = subprocess.Popen([sys.executable, str(script), str(broker.port), "0", "60", outbox],
                          stdout=subprocess.PIPE, text=True)
    try:
        produced = [p1.stdout.readline() for _ in range(10)]  # 10 events while the broker is up
        assert all(produced)
        broker.stop()
        outage_start = time.monotonic()
        produced += [p1.stdout.readline() for _ in range(20)]  # 20 more during the outage
        time.sleep(max(0.0, 10 - (time.monotonic() - outage_start)) / 2)
        os.kill(p1.pid, signal.SIGKILL)  # the agent dies during the outage
        p1.wait(10)
        time.sleep(max(0.0, 10 - (time.monotonic() - outage_start)))  # a 10 s outage
        last = int(produced[-1])
        broker.start()
        # A broker without persistence delivers only to connected subscribers (a PLC gateway
        # would hold a persistent session): let the subscriber come back before the agent.
        assert sub.subscribed.wait(15)
        p2 = subprocess.Popen([sys.executable, str(script), str(broker.port), str(last + 1), "5", outbox],
                              stdout=subprocess.PIPE, text=True)
        try:
            want = {f"e{i}" for i in range(last + 6)}
            assert sub.wait_for(lambda m: want <= set(events_received(m, "adgan/st1/events")), timeout=30), \
                sorted(want - set(events_received(sub.messages, "adgan/st1/events")))
            got = events_received(sub.messages, "adgan/st1/events")
            assert len(got) >= len(want)  # duplicates allowed (at least once), each with its original id
        finally:
            p2.kill()
            p2.wait(10)
    finally:
        if p1.poll() is None:
            p1.kill()
        sub.close()


def test_an_outbox_that_cannot_write_holds_events_in_memory_delivers_them_and_stores_them_later(broker, tmp_path):
    """SQLite's own 'database or disk is full' (page limit reached), without root or tmpfs;
    tests/agent/mqtt/test_faults.py fills a real file system."""
    ob = Outbox(tmp_path / "o.sqlite", memory_events=50)
    (pages,) = ob._db.execute("PRAGMA page_count").fetchone()
    ob._db.execute(f"PRAGMA max_page_count = {pages}")
    sub = Subscriber(broker.port, "adgan/st1/events")
    pub = Publisher("st1", ob, MqttSettings(port=broker.port))
    try:
        assert sub.subscribed.wait(10)
        for i in range(60):                               # 60 events, the disk full, no broker yet
            pub.publish_event({"event_id": f"e{i}", "seq": i + 1, "verdict": "ok", "pad": "x" * 2000})
        st = ob.status()
        stored = st["depth"] - st["unsaved"]                # the first ones may fit in the last free page
        assert st["unsaved"] == 50 and st["dropped"] == 10 - stored and "full" in st["error"], st
        kept = [f"e{i}" for i in range(stored)] + [f"e{i}" for i in range(10, 60)]
        pub.start()
        assert sub.wait_for(lambda m: events_received(m) == kept)
        assert pub.flush(10) and ob.status()["unsaved"] == 0
        ob._db.execute("PRAGMA max_page_count = 1000000")   # space again
        pub.publish_event({"event_id": "after", "seq": 61, "verdict": "ok"})
        assert sub.wait_for(lambda m: "after" in events_received(m))
        assert ob.status()["error"] is None
    finally:
        pub.stop()
        sub.close()
    assert Outbox(tmp_path / "o.sqlite").dropped == 10 - stored  # the loss was stored once the disk took writes
