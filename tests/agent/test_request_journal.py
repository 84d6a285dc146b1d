"""Requests kept across kills (agent/request_journal.py): a request the agent took and had not
answered when it was killed is answered at the next start, once, with its part_id. Until
2026-12-06 it was lost without a word: the broker had acknowledged the trigger/set, and its
part never had a verdict."""
from __future__ import annotations

import json
import logging
import time

import paho.mqtt.client as mqtt
import pytest

from agent import request_journal
from agent.mqtt.link import reading_batch
from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.request_journal import RequestJournal, journal_path
from agent.requests import HELD
from agent.trigger import CommandTrigger
from agent.settings import MqttSettings
from tests.agent.conftest import AgentProcess, fill_file_system, slow_disk
from tests.agent.mqtt.test_faults import wait
from tests.agent.test_service_triggers import commands_ready, events, hang_up, mqtt_station, once


def kept(t: CommandTrigger) -> list[dict]:
    """What `t`'s journal holds, once its writer thread has written what it was handed."""
    assert t.journal.settle()
    return json.loads(t.journal.path.read_text())["open"]


def test_what_waits_and_what_is_being_answered_is_kept_until_its_answer_is_stored(tmp_path):
    box = tmp_path / "outbox.db"
    t = CommandTrigger(max_pending=1, journal=RequestJournal(box))
    assert t.request(part_id="A") and not t.request() and not t.request(part_id="B")
    assert [(o["r"], o["part_id"], o["why"]) for o in kept(t)] == [(1, "A", None), (2, "B", kept(t)[1]["why"])]
    assert kept(t)[1]["why"].startswith("a part not inspected: the trigger came while 1")
    a = t.take(0)
    assert a.r == 1 and [o["r"] for o in kept(t)] == [1, 2]  # taken, not answered: still kept
    t.answered(1)
    assert [o["part_id"] for o in kept(t)] == ["B"]
    n, why, pid, r, lines = t.skipped_request()
    assert (n, pid, r, lines) == (1, "B", 2, True) and [o["r"] for o in kept(t)] == [2]
    t.answered(2)
    assert kept(t) == [] and json.loads(journal_path(box).read_text())["next"] == 3
    # a kill: what was taken and not answered is what the next start finds
    assert t.request(part_id="C") and t.take(0).part_id == "C" and t.request(part=True)
    t.refuse("a part not inspected: its trigger/set part_id \"x y\" is not ...")
    assert t.journal.settle()
    again = RequestJournal(box)
    left = again.start(answered=0)
    assert [(o.r, o.part_id, o.part) for o in left] == [(3, "C", True), (4, None, True), (5, None, True)]
    assert left[0].reason().startswith("a part not inspected: the agent stopped before answering it (requested at ")
    assert left[2].reason().startswith("a part not inspected: its trigger/set part_id \"x y\" is not ...; said after "
                                       "a restart: the agent stopped before answering it")
    assert again.next == 6
    # the outbox holds the answer of 3 already (a kill after it was stored, before the journal's rewrite)
    assert [o.r for o in RequestJournal(box).start(answered=3)] == [4, 5]
    fresh = RequestJournal(tmp_path / "other.db")  # the journal lost: numbers continue above the outbox's
    assert fresh.start(answered=41) == [] and fresh.next == 42


def test_the_journal_is_the_agents_own_whatever_the_umask(tmp_path):
    """Part ids of the station's parts: made 0644 under a hand-run umask, where the outbox, its
    sequence file and its run record are 0600 always."""
    import os
    old = os.umask(0o022)
    try:
        (tmp_path / "outbox.db.requests.tmp").write_text("left by a kill")  # (0644: kept by an open)
        t = CommandTrigger(max_pending=1, journal=RequestJournal(tmp_path / "outbox.db"))
        assert t.request(part_id="A") and kept(t)
    finally:
        os.umask(old)
    assert os.stat(journal_path(tmp_path / "outbox.db")).st_mode & 0o777 == 0o600


def test_merged_parts_keep_their_ids_and_their_keys_across_a_kill(tmp_path):
    """A held backlog is answered part by part up to MAX_SAID_APART waiting, and merged beyond. Until
    2026-12-07 a merged refusal kept only its first part's id and key: of a held backlog of 1,000
    named parts, 729 were answered in merged events that named one part each, and a resend of theirs
    after a kill was not known (taken again)."""
    box = tmp_path / "outbox.db"
    t = CommandTrigger(max_pending=1, journal=RequestJournal(box))
    n = CommandTrigger.MAX_SAID_APART + 5
    for i in range(n):
        t.refuse("a part not inspected: held", part_id=f"H{i}", key=f"{i}:k")
    for i in range(3):  # a flood of live requests, merged too (their ids were kept before; now their keys)
        t.request(part_id=f"L{i}", key=f"{100 + i}:live")
    merged = t._queue[CommandTrigger.MAX_SAID_APART - 1]
    assert merged.skipped == 6 and merged.part_id == ",".join(f"H{i}" for i in range(n - 6, n))
    assert t.journal.settle()
    again = RequestJournal(box)  # a kill: the next start knows every key, merged or not
    assert {f"{i}:k" for i in range(n)} | {"101:live", "102:live"} <= set(again.keys)
    said = []
    while (one := t.skipped_request()) is not None:
        said.append(one)
    assert [pid for _, _, pid, _, _ in said][-1] == merged.part_id and sum(k for k, *_ in said) == n
    assert said[-1][1] == "6 parts not inspected, the first said: a part not inspected: held"
    for _, _, _, r, _ in said:
        t.answered(r)
    assert f"{n - 1}:k" in t._recent and f"{n - 6}:k" in t._recent


def test_a_kill_while_the_leftovers_are_answered_leaves_the_others_kept_as_they_were(tmp_path):
    box = tmp_path / "outbox.db"
    t = CommandTrigger(max_pending=1, journal=RequestJournal(box))
    assert t.request(part_id="A") and not t.request(part_id="B") and not t.request(part_id="C")
    left = (j := RequestJournal(box)).start(answered=0)  # a kill; the next start
    assert [o.part_id for o in left] == ["A", "B", "C"]
    t2 = CommandTrigger(max_pending=1, journal=j)
    t2.adopt(left)
    t2.answered(left[0].r)  # A answered; a kill before B's answer
    assert j.settle()
    again = RequestJournal(box).start(answered=0)
    assert again == left[1:]  # B and C, as they were (their reasons not said twice over)
    t2.answered(left[1].r)
    t2.answered(left[2].r)
    assert j.settle() and RequestJournal(box).start(answered=0) == []


def test_a_gpio_part_is_kept_from_its_edge_not_only_from_its_delayed_request(tmp_path):
    box = tmp_path / "outbox.db"
    t = CommandTrigger(max_pending=2, journal=RequestJournal(box))
    t.announce(100.0)  # the edge; its inspection is due delay_ms later
    assert [(o["r"], o["part"], o["part_id"]) for o in kept(t)] == [(1, True, None)]
    t.announce(100.5)
    assert t.request(part=True, at=100.0)  # due: the same number, now waiting
    assert [o["r"] for o in kept(t)] == [1, 2] and t.take(0).r == 1
    assert t.journal.settle()
    left = RequestJournal(box).start(answered=0)  # a kill: the part being inspected, and the one within its delay
    assert [(o.r, o.reason().startswith("a part not inspected: the agent stopped")) for o in left] == \
        [(1, True), (2, True)]
    said = t.left("SIGTERM")  # a stop: the part within its delay is answered with its number
    assert [(a.r, a.why) for a in said] == [(2, "requested inspection not made: the agent stopped (SIGTERM)")]


def test_a_request_that_comes_while_the_agent_stops_is_kept_for_the_next_start(tmp_path):
    box = tmp_path / "outbox.db"
    t = CommandTrigger(max_pending=1, journal=RequestJournal(box))
    assert t.request(part_id="A")
    assert [a.part_id for a in t.left("SIGTERM")] == ["A"]
    t.answered(1)  # answered at the stop
    assert not t.request(part_id="B") and not t.request()  # after it: not taken, but kept
    t.refuse("a part not inspected: its trigger/set was refused (300 bytes, more than 256)")
    assert [(o["part_id"], o["part"], o["why"] is None) for o in kept(t)] == [("B", True, True), (None, False, True),
                                                                          (None, True, False)]
    left = RequestJournal(box).start(answered=1)
    assert [o.reason().split(":")[0] for o in left] == ["a part not inspected", "requested inspection not made",
                                                        "a part not inspected"]


def test_the_answer_number_is_stored_with_its_event_and_read_at_the_next_open(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    assert box.answered == 0
    box.put("e1", "t", b"{}", 1, answers=7)
    box.put("e2", "t", b"{}", 1)
    box.put("e3", "t", b"{}", 1, answers=5)  # (a number below one stored never lowers it)
    assert box.answered == 7
    box.ack("e1")
    box.close()
    assert Outbox(tmp_path / "outbox.db").answered == 7


def test_a_request_that_meets_a_full_disk_first_is_kept_in_the_outboxs_reserve(small_fs, caplog):
    """A request is written before the event that answers it, so it is often the first write to meet
    a full disk. It released nothing, and was kept in memory only (a kill lost it) until an event's
    store released the outbox's reserve; now it releases the reserve itself and is kept on disk."""
    box = Outbox(small_fs / "outbox.db", reserve_bytes=256_000)
    assert box.reserve.held()
    t = CommandTrigger(max_pending=2, journal=RequestJournal(box.path, box.reserve))
    filler = fill_file_system(small_fs)
    with caplog.at_level(logging.ERROR):
        assert t.request(part_id="FULL-1")
    assert [o["part_id"] for o in kept(t)] == ["FULL-1"]  # on disk: a kill now does not lose it
    assert t.journal.status()["stored"] and box.reserve.status() == {"bytes": 256_000, "held": False, "released": 1}
    assert "its reserve" in caplog.text and "so the requests waiting are kept on disk" in caplog.text
    filler.unlink()
    box.close()


def test_a_journal_that_cannot_be_read_or_written_is_said_and_requests_go_on(tmp_path, caplog):
    box = tmp_path / "outbox.db"
    journal_path(box).write_text("{not json")
    with caplog.at_level(logging.ERROR):
        j = RequestJournal(box)
    assert j.start(0) == [] and "cannot be read" in caplog.text
    assert not journal_path(box).exists() and list(tmp_path.glob("outbox.db.requests.unreadable-*"))
    said = j.status()["unreadable"]  # (status.requests.journal: what SCADA sees, not only the log)
    assert said["moved_to"] == str(next(tmp_path.glob("outbox.db.requests.unreadable-*")))
    assert said["error"].startswith("JSONDecodeError") and said["at"].endswith("Z")
    assert RequestJournal(tmp_path / "other.db").status()["unreadable"] is None
    blocked = tmp_path / "file"
    blocked.write_text("")
    t = CommandTrigger(max_pending=2, journal=RequestJournal(blocked / "outbox.db"))  # its folder is a file
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert t.request(part_id="A") and t.request(part_id="B")
    assert "cannot be kept" in caplog.text and caplog.text.count("cannot be kept") == 1  # said once a minute
    st = t.journal.status()
    assert st["stored"] is False and st["failed_writes"] == 2 and "NotADirectoryError" in st["error"]
    assert t.take(0).part_id == "A"  # answered as before


def test_a_request_over_mqtt_is_acted_on_only_once_the_journal_holds_it(tmp_path):
    """Before 2026-12-06 the loop could take a request while its journal entry was still being
    flushed: answered, then killed before paho's PUBACK, it came again from the broker and was
    answered twice. A GPIO part (its edge's `at`) is written by the journal's thread, as before."""
    import threading

    class Slow(RequestJournal):
        def __init__(self, *a):
            super().__init__(*a)
            self.go = threading.Event()

        def keep(self, *a, **k):
            self.go.wait(10)
            return super().keep(*a, **k)

    t = CommandTrigger(max_pending=5, journal=Slow(tmp_path / "outbox.db"))
    asking = threading.Thread(target=lambda: t.request(part_id="A", key="1:ab"))
    asking.start()
    assert t.take(0.3) is None  # on its way to the disk: not yet
    t.journal.go.set()
    asking.join(10)
    a = t.take(5)
    assert a is not None and a.part_id == "A"
    t.refuse("a part not inspected: ...", "B")
    assert t.skipped_request()[2] == "B"
    t.answered(a.r)
    assert t.journal.settle() and json.loads(t.journal.path.read_text())["recent"] == ["1:ab"]


@pytest.mark.parametrize("barrier", [True, False])
def test_a_batch_of_trigger_sets_is_kept_in_one_write_before_paho_acknowledges_it(broker, tmp_path, monkeypatch,
                                                                                  barrier):
    """paho's network thread takes the trigger/sets of a batch it read, hands the journal's write to
    its writer thread, and waits for it at the batch's barrier, before paho writes the batch's
    acknowledgements (one write for the batch, where each request cost two flushes before
    2026-12-06). Without the barrier (`barrier` False: what this test catches) acknowledgements went
    out before the requests were on disk, and a kill then lost them."""
    real = request_journal.durable.write_text
    writes = []

    def slowly(path, text, room=None, **kw):  # (a slow SD card)
        time.sleep(0.2)
        writes.append(text)
        return real(path, text, room, **kw)
    monkeypatch.setattr(request_journal.durable, "write_text", slowly)
    journal = RequestJournal(tmp_path / "outbox.sqlite")
    journal.defer = reading_batch
    t = CommandTrigger(max_pending=50, journal=journal)
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=broker.port),
                    commands={"trigger": lambda p: t.request(part_id=json.loads(p)["part_id"],
                                                              key=pub.commands.taking())})
    if barrier:
        pub.commands.barrier = t.barrier
    on_disk = []
    write = pub.client.loop_write

    def loop_write():  # (paho's only writer of queued packets: each acknowledgement goes out here)
        if t.pending:
            kept = json.loads(journal.path.read_text())["open"] if journal.path.exists() else []
            on_disk.append((t.pending, len(kept) >= t.pending))
        return write()
    pub.client.loop_write = loop_write
    pub.start()
    try:
        assert pub.commands_ready.wait(10)
        plc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc")
        plc.connect("127.0.0.1", broker.port)
        plc.loop_start()
        for i in range(20):
            plc.publish("adgan/st1/trigger/set", json.dumps({"part_id": f"P{i}"}), qos=1).wait_for_publish(10)
        plc.loop_stop()
        plc.disconnect()
        assert wait(lambda: (20, True) in on_disk or (20, False) in on_disk, 20), (t.pending, on_disk)
        oks = [ok for _, ok in list(on_disk)]
        if barrier:
            assert all(oks), on_disk
            assert len(writes) < 20, len(writes)  # (one write per batch read: each request's own before)
            assert [t.take(0).part_id for _ in range(20)] == [f"P{i}" for i in range(20)]
        else:
            assert not all(oks)
    finally:
        pub.stop()


def test_a_class_switch_waiting_its_turn_is_kept_until_it_is_made(tmp_path):
    t = CommandTrigger(max_pending=5, journal=RequestJournal(tmp_path / "outbox.db"))
    assert t.request(part_id="A") and t.switch(b"cylinder", key="7:ab") and t.request(part_id="C")
    assert [(o["part_id"], o.get("switch")) for o in kept(t)] == [("A", None), (None, "cylinder"), ("C", None)]
    assert t.take(0).part_id == "A" and t.switched() == b"cylinder"
    assert [o.get("switch") for o in kept(t)] == [None, "cylinder", None]  # (taken, not yet made: kept)
    t.made()
    assert [(o["part_id"], o.get("switch")) for o in kept(t)] == [("A", None), ("C", None)]
    again = RequestJournal(tmp_path / "outbox.db")  # (a start: what the run before left)
    assert [(o.part_id, o.switch) for o in again.start(0)] == [("A", None), ("C", None)]
    # a made switch's class/set is known to the next start (a resend after a kill is not made again), and
    # so are both of two switches with nothing between them (until 2026-12-07 neither, and the first's)
    assert "7:ab" in again.keys
    assert t.switch(b"sphere", key="8:cd") and t.switch(b"cylinder", key="9:ef")
    assert [o["key"] for o in kept(t) if o.get("switch")] == ["8:cd,9:ef"]
    assert {"8:cd", "9:ef"} <= set(RequestJournal(tmp_path / "outbox.db").keys)


def test_a_switch_a_kill_left_waiting_is_known_after_the_start_that_made_it(tmp_path):
    """A switch a kill left waiting is made at the next start. Until 2026-12-07 its key was known to
    that start only: the start's first snapshot dropped it, and the broker's resend after a second
    kill was made again (a class the PLC had switched away from since, switched back)."""
    box = tmp_path / "outbox.db"
    t = CommandTrigger(max_pending=5, journal=RequestJournal(box))
    assert t.request(part_id="A", key="1:a") and t.switch(b"cylinder", key="2:s")
    assert t.journal.settle()
    left = (j := RequestJournal(box)).start(answered=0)  # a kill; the next start makes the switch
    assert [(o.part_id, o.switch, o.key) for o in left] == [("A", None, "1:a"), (None, "cylinder", "2:s")]
    t2 = CommandTrigger(max_pending=5, journal=j)
    t2.adopt(left)  # (as the agent's start does, once it has made the switch)
    assert j.settle()
    again = RequestJournal(box)  # a second kill
    assert {"1:a", "2:s"} <= set(again.keys)
    assert [(o.part_id, o.switch) for o in again.start(0)] == [("A", None)]  # (the switch is not made twice)


def test_a_class_switch_a_kill_left_waiting_is_made_at_the_next_start(broker, two_classes, synth_data, tmp_path):
    """The PLC requests the old product's last parts and switches the class while they wait; the agent
    is killed before the switch's turn. Until 2026-12-06 the switch was lost without a word (its
    class/set acknowledged): the next start expected the old product, and the new product's parts were
    scored by its model. Now the switch is kept with the requests, and the start makes it."""
    cfg, sub, cmd, state = paced_station(broker, two_classes, synth_data, tmp_path)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(commands_ready, 60), agent.output()
        for pid in ("K0", "K1", "K2", "K3", "K4", "K5"):
            cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": pid}), qos=1).wait_for_publish(5)
        cmd.publish("adgan/st1/class/set", "cylinder", qos=1).wait_for_publish(5)
        assert sub.wait_for(lambda m: len(events(sub)) >= 1, 30), agent.output()
        agent.kill()  # SIGKILL, with parts still waiting ahead of the switch
        assert state("class") == b"sphere", agent.output()
        again = AgentProcess(cfg, tmp_path / "again.log")
        try:
            assert sub.wait_for(lambda m: state("class") == b"cylinder", 60), again.output()
            cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": "NEW"}), qos=1).wait_for_publish(5)
            assert sub.wait_for(lambda m: "NEW" in {e["part_id"] for e in events(sub)}, 60), again.output()
            assert again.terminate(30) == 0
        finally:
            again.stop()
        new = [e for e in once(events(sub)) if e["part_id"] == "NEW"]
        assert new[0]["expected_class"] == "cylinder", new
        assert "a class switch the last run took was not made" in again.output()
    finally:
        agent.stop()
        hang_up(cmd, sub)


def test_requests_a_kill_left_unanswered_are_answered_once_at_the_next_start(broker, two_classes, synth_data,
                                                                             tmp_path):
    late, log = _kill_while_requests_wait(broker, two_classes, synth_data, tmp_path)
    assert "were not answered (it was killed" in log


def test_requests_the_broker_had_not_handed_over_at_a_kill_are_answered_as_held(broker, two_classes, synth_data,
                                                                                tmp_path):
    """Each journal write takes 0.25 s per flush here (an SD card), and the PLC goes on asking after the
    kill: the broker holds those for the station, and those it had handed over and the agent not yet kept
    (before 2026-12-06 its clean session dropped them: CI saw it). Until 2026-12-06 each request was kept
    on its own (two flushes), and the broker still held most of the ten at the kill; now one write keeps
    each batch paho reads, so the ten are taken at once."""
    late, log = _kill_while_requests_wait(broker, two_classes, synth_data, tmp_path, wrap=slow_disk("fsync", 0.25),
                                          more=3)
    assert any(HELD in e["error"] for e in late), late
    assert "came before its fence" in log


def paced_station(broker, two_classes, synth_data, tmp_path):
    """mqtt_station's station inspecting one part every half second (the replay's pace), with room for
    20 requests to wait."""
    cfg, sub, cmd, state = mqtt_station(broker, two_classes, synth_data, tmp_path, loop=True)
    cfg.write_text(cfg.read_text().replace("fps = 0", "fps = 2").replace('mode = "mqtt"',
                                                                          'mode = "mqtt"\nmax_pending = 20'))
    return cfg, sub, cmd, state


def _kill_while_requests_wait(broker, two_classes, synth_data, tmp_path, wrap=None,
                              more: int = 0) -> tuple[list[dict], str]:
    """Ten named parts requested, the agent (run under `wrap`) SIGKILLed after the first verdict (and
    `more` parts requested then) and started again: every part is answered once, in order. (The late
    answers, the second run's log.)"""
    cfg, sub, cmd, state = paced_station(broker, two_classes, synth_data, tmp_path)
    ids = [f"K{i}" for i in range(10 + more)]

    agent = AgentProcess(cfg, tmp_path / "agent.log", wrap=wrap)
    try:
        assert sub.wait_for(commands_ready, 60), agent.output()
        for pid in ids[:10]:
            cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": pid}), qos=1).wait_for_publish(5)
        assert sub.wait_for(lambda m: len(events(sub)) >= 1, 30), agent.output()
        agent.kill()  # SIGKILL, with most requests still waiting
        for pid in ids[10:]:  # (the PLC goes on: the broker holds them for the station)
            cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": pid}), qos=1).wait_for_publish(5)
        before = {e["part_id"] for e in once(events(sub))}
        assert len(before) < len(ids) - 2, before
        sub.messages.clear()
        again = AgentProcess(cfg, tmp_path / "again.log")
        try:
            assert sub.wait_for(lambda m: {e["part_id"] for e in events(sub)} >= set(ids) - before, 60), \
                again.output()
            time.sleep(1.0)
            assert again.terminate(30) == 0
        finally:
            again.stop()
        after = once(events(sub))
        # every part answered, once (an event stored before the kill comes again with its own id)
        answers = {}
        for e in after:
            if e["part_id"] in ids:
                answers.setdefault(e["part_id"], set()).add(e["event_id"])
        assert set(answers) >= set(ids) - before and all(len(v) == 1 for v in answers.values()), \
            [(e["part_id"], e["verdict"], e["seq"], (e.get("error") or "")[:50]) for e in after]
        late = [e for e in after if e["part_id"] in set(ids) - before and e["verdict"] == "error"]
        assert len(late) >= len(ids) - len(before) - 1  # (the one being inspected at the kill may have been stored)
        # those the agent had taken, and those the broker had not yet handed over (or the agent not yet
        # taken) at the kill: the broker keeps the station's session (before 2026-12-06 those were lost)
        assert all("the agent stopped before answering it" in e["error"] or HELD in e["error"] for e in late), late
        assert [e["part_id"] for e in late] == sorted((e["part_id"] for e in late), key=ids.index)  # in order
        return late, again.output()
    finally:
        agent.stop()
        hang_up(cmd, sub)


def test_the_cost_benchmark_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "bench" / "request_journal.py"), str(tmp_path), "--parts", "20"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["no", "journal"] and all("ms per part" in ln for ln in lines)
    assert list(tmp_path.iterdir()) == []  # (its folder removed)


def test_the_answers_a_start_gives_for_a_kills_requests_do_not_pulse_the_gpio_verdict_lines():
    """The lines name no part: a PLC counting pulses would take them for the next parts' verdicts."""
    import types

    from agent.interfaces import Interfaces
    from agent.requests import Requests
    from agent.request_journal import Open
    shown = []
    faces = Interfaces.__new__(Interfaces)
    faces._waiting = lambda: False
    faces.metrics = types.SimpleNamespace(verdict=lambda *a: shown.append(("metrics", a[1])))
    faces.gpio = types.SimpleNamespace(verdict=lambda v, more: shown.append(("gpio", v)))
    faces.opcua = types.SimpleNamespace(event=lambda e: shown.append(("opcua", e["verdict"])))
    faces.web = types.SimpleNamespace(event=lambda e, v: shown.append(("web", e["verdict"])))
    agent = types.SimpleNamespace(interfaces=faces, commands=CommandTrigger(), s=None,
                                  _leftovers=[Open(1, "A", True, 1, None, 0)],
                                  counters=types.SimpleNamespace(add=lambda *a: None))
    settings = types.SimpleNamespace(source=types.SimpleNamespace(type="folder"))
    agent._asked = lambda part_id, r, lines=True: Requests._asked(types.SimpleNamespace(s=settings), part_id, r, lines)
    agent._error = lambda work, why: faces.event("sphere", {"verdict": "error", "part_id": work.part_id}, None,
                                                 work.lines)  # (as Agent._emit hands it on)
    Requests._answer_leftovers(agent)
    assert ("gpio", "error") not in shown and ("opcua", "error") in shown and ("web", "error") in shown
    faces.event("sphere", {"verdict": "ok"})
    assert ("gpio", "ok") in shown


def test_the_answers_to_requests_the_broker_held_do_not_pulse_the_gpio_verdict_lines():
    """As a kill's leftovers: by then the part has passed, and the lines name no part. A bad id
    refused as it comes is answered on them as before."""
    import types

    from agent.interfaces import Interfaces
    from agent.requests import Requests
    shown = []
    faces = Interfaces.__new__(Interfaces)
    faces._waiting = lambda: False
    faces.metrics = types.SimpleNamespace(verdict=lambda *a: None)
    faces.gpio = types.SimpleNamespace(verdict=lambda v, more: shown.append(("gpio", v)))
    faces.opcua = types.SimpleNamespace(event=lambda e: shown.append(("opcua", e["part_id"])))
    faces.web = types.SimpleNamespace(event=lambda e, v: None)
    held = types.SimpleNamespace(taking=lambda: None, held_why=None)  # (held while away, not in a freeze)
    agent = types.SimpleNamespace(interfaces=faces, commands=CommandTrigger(),
                                  publisher=types.SimpleNamespace(commands=held),
                                  counters=types.SimpleNamespace(add=lambda *a: None), _echo_trigger=lambda: None)
    settings = types.SimpleNamespace(source=types.SimpleNamespace(type="folder"))
    agent._asked = lambda part_id, r, lines=True: Requests._asked(types.SimpleNamespace(s=settings), part_id, r, lines)
    agent._error = lambda work, why: faces.event("sphere", {"verdict": "error", "part_id": work.part_id}, None,
                                                 work.lines)  # (as Agent._emit hands it on)
    Requests._on_trigger_held(agent, b'{"part_id": "H1"}')
    Requests._on_trigger_command(agent, b'{"part_id": "not one"}')
    Requests._answer_ahead(agent)
    assert shown == [("opcua", "H1"), ("gpio", "error"), ("opcua", None)]
    # at a stop, what still waits is answered the same way
    Requests._on_trigger_held(agent, b'{"part_id": "H2"}')
    Requests._on_trigger_command(agent, b'{"part_id": "not one"}')
    agent._stop_cause = "SIGTERM"
    Requests._answer_left(agent)
    assert shown[3:] == [("opcua", "H2"), ("gpio", "error"), ("opcua", None)]


def test_a_journal_whose_writer_thread_cannot_start_writes_in_the_callers_thread(tmp_path, monkeypatch, caplog):
    """No thread for the journal's writer (a unit's TasksMax= reached): the request raised out of
    the trigger, and the unstarted writer was kept, so no later request was ever written either.
    Now each is written by the thread that takes it, said once."""
    import threading

    class NoThread(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")
    monkeypatch.setattr(request_journal.threading, "Thread", NoThread)
    journal = RequestJournal(tmp_path / "outbox.db")
    journal.defer = lambda: True  # (as on paho's thread reading a batch: written by the journal's thread)
    t = CommandTrigger(max_pending=2, journal=journal)
    with caplog.at_level(logging.ERROR):
        assert t.request(part_id="A") and t.request(part_id="B")
        t.barrier()
    assert [o["part_id"] for o in kept(t)] == ["A", "B"]
    said = [r for r in caplog.records if "no thread to write the requests waiting" in r.getMessage()]
    assert len(said) == 1 and "can't start new thread" in said[0].getMessage()
