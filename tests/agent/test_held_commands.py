"""Commands that come while the station is away (stopped, killed, its link down): the broker keeps
the station's session and hands them over when it is back (agent/mqtt/commands.py). Until
2026-12-06 the session was clean, and the broker dropped them without a word: a PLC's trigger/set
was acknowledged, and its part never had an answer."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest

from agent.mqtt import commands as commands_module
from agent.mqtt.commands import Commands
from agent.mqtt.frozen import FreezeWatch
from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.requests import HELD
from agent.settings import MqttSettings
from tests.agent.conftest import AgentProcess, Relay, slow_disk
from tests.agent.mqtt.test_faults import send, wait
from tests.agent.test_service_triggers import commands_ready, events, hang_up, mqtt_station, once


class _Client:
    """What Commands.subscribe asks of paho's client."""

    def __init__(self) -> None:
        self.mid = 0

    def subscribe(self, topic, qos):
        self.mid += 1
        return mqtt.MQTT_ERR_SUCCESS, self.mid


def _commands():
    taken, held, sent = [], [], []
    c = Commands("adgan/st1", {"trigger": taken.append, "class": taken.append}, {"commands_refused": 0})
    c.on_held = {"trigger": held.append}

    def publish(topic, payload, qos):
        sent.append((topic, payload))
        return True
    return c, taken, held, sent, publish


def test_what_comes_before_the_fence_was_held_and_a_resend_of_a_command_taken_is_dropped(caplog, monkeypatch):
    c, taken, held, sent, publish = _commands()
    c.subscribe(_Client(), resumed=True, publish=publish)
    assert [t for t, _ in sent] == ["adgan/st1/trigger/set"]
    fence = sent[0][1].encode()
    c.handle("adgan/st1/trigger/set", b'{"part_id": "A"}', False, mid=1)
    c.handle("adgan/st1/class/set", b"cylinder", False, mid=2)  # a switch is made: the PLC asked for it
    with caplog.at_level(logging.WARNING):
        c.handle("adgan/st1/trigger/set", b'{"fence": "not this process\'s"}', False, mid=3)  # never a command
        assert "a fence this process did not send" in caplog.text and c.counters["commands_refused"] == 1
        c.handle("adgan/st1/trigger/set", fence, False, mid=4)
    assert "1 commands the broker held for this station while it was away came before its fence" in caplog.text
    c.handle("adgan/st1/trigger/set", b'{"part_id": "B"}', False, mid=5)
    assert held == [b'{"part_id": "A"}'] and taken == [b"cylinder", b'{"part_id": "B"}']
    # the broker sends B again (DUP: its acknowledgement was lost with the link): taken already
    c.subscribe(_Client(), resumed=True, publish=publish)
    c.handle("adgan/st1/trigger/set", b'{"part_id": "B"}', False, mid=5, dup=True)
    c.handle("adgan/st1/trigger/set", b'{"part_id": "C"}', False, mid=5, dup=True)  # another message: held
    assert taken == [b"cylinder", b'{"part_id": "B"}'] and held[-1] == b'{"part_id": "C"}'
    assert c.counters["commands_resent"] == 1 and c.counters["commands_held"] == 2  # (status.mqtt)
    c.handle("adgan/st1/trigger/set", b'{"part_id": "B"}', False, mid=5)  # not a resend: a new request
    assert held[-1] == b'{"part_id": "B"}' and len(held) == 3
    refused = c.counters["commands_refused"]
    c.handle("adgan/st1/trigger/set", fence, False, mid=9)  # the first connection's fence, late: dropped quietly
    assert c.counters["commands_refused"] == refused and len(held) == 3 and len(taken) == 2
    # a fence that does not come back (an ACL): said, and what comes after a pause is taken as new
    monkeypatch.setattr(commands_module, "FENCE_S", 0.0)
    monkeypatch.setattr(commands_module, "BACK_TO_BACK_S", 0.0)
    with caplog.at_level(logging.WARNING):
        c.handle("adgan/st1/trigger/set", b"go", False, mid=6)
    assert taken[-1] == b"go" and "did not come back (" in caplog.text


def test_a_session_the_broker_did_not_keep_has_no_fence_and_nothing_held(caplog):
    c, taken, held, sent, publish = _commands()
    c.subscribe(_Client(), resumed=False, publish=publish)  # a first connection, no run before: nothing lost
    c.handle("adgan/st1/trigger/set", b"go", False, mid=1)
    assert sent == [] and held == [] and taken == [b"go"] and c.counters["sessions_lost"] == 0
    c.ran_before = True  # (the outbox numbered events before: the station had a session)
    with caplog.at_level(logging.WARNING):
        c.subscribe(_Client(), resumed=False, publish=publish)
    assert c.counters["sessions_lost"] == 1 and "kept no session for this station" in caplog.text


def test_a_fence_that_cannot_be_sent_is_said_and_commands_are_taken_as_new(caplog):
    c, taken, held, sent, publish = _commands()
    with caplog.at_level(logging.WARNING):
        c.subscribe(_Client(), resumed=True, publish=lambda *a, **k: False)
    c.handle("adgan/st1/trigger/set", b"go", False, mid=1)
    assert "could not be sent" in caplog.text and taken == [b"go"] and held == []


def test_a_freeze_sends_a_fence_at_once_and_what_comes_before_it_is_held(caplog):
    """A freeze (agent/mqtt/frozen.py), found by the first command read after it or by the watch's
    thread: a fence is sent at once, and what comes before it comes back is held, with the freeze's
    reason; what comes after it is new. A freeze while the link is down sends none (the next
    connection's fence tells what the broker held)."""
    now = [100.0]
    c, taken, held, sent, publish = _commands()
    c.freeze = FreezeWatch(c._froze, clock=lambda: now[0])
    c.freeze.start(thread=False)
    c.subscribe(_Client(), resumed=False, publish=publish)
    c.subscribed(1, [])
    c.subscribed(2, [])  # (both command subscriptions granted)
    c.handle("adgan/st1/trigger/set", b"go", False, mid=1)
    assert taken == [b"go"] and sent == []
    now[0] += 25  # stopped for 25 s (SIGSTOP): the broker kept sending into the socket
    with caplog.at_level(logging.WARNING):
        c.handle("adgan/st1/trigger/set", b'{"part_id": "F0"}', False, mid=2)  # (the first to look)
        c.handle("adgan/st1/trigger/set", b'{"part_id": "F1"}', False, mid=3)
    assert [t for t, _ in sent] == ["adgan/st1/trigger/set"] and held == [b'{"part_id": "F0"}', b'{"part_id": "F1"}']
    assert "did not run for 25.0 s" in caplog.text and c.counters["freezes"] == 1
    assert c.held_why == commands_module.FROZE.format(25.0) and "did not run for 25 s" in c.held_why
    with caplog.at_level(logging.WARNING):
        c.handle("adgan/st1/trigger/set", sent[0][1].encode(), False, mid=4)  # the fence is back
    assert "2 commands that came while this station's process did not run came before its fence" in caplog.text
    c.handle("adgan/st1/trigger/set", b'{"part_id": "B0"}', False, mid=5)
    assert taken[-1] == b'{"part_id": "B0"}' and len(sent) == 1
    now[0] += 30  # another freeze, found by the watch's thread: its fence goes at once
    c.freeze.check()
    assert len(sent) == 2 and c.counters["freezes"] == 2
    c.handle("adgan/st1/trigger/set", sent[1][1].encode(), False, mid=6)  # back, with nothing before it
    c.handle("adgan/st1/trigger/set", b'{"part_id": "B1"}', False, mid=7)
    assert taken[-1] == b'{"part_id": "B1"}' and len(held) == 2
    c.ready.clear()  # the link lost: a freeze meanwhile is counted, and sends no fence
    now[0] += 10
    c.freeze.check()
    assert len(sent) == 2 and c.counters["freezes"] == 3
    c.subscribe(_Client(), resumed=True, publish=publish)  # a connection's fence: held while away
    assert len(sent) == 3 and c.held_why is None


def test_a_freeze_shorter_than_max_wait_s_is_said_and_what_came_meanwhile_is_taken(caplog):
    """The fence follows trigger.max_wait_s (Commands.wait_at_most): a freeze shorter than it is
    counted and said, and the commands read after it are taken (the line holds its parts that
    long); one as long is fenced; with 0 none is; a limit under FROZEN_S makes shorter gaps freezes."""
    now = [100.0]
    c, taken, held, sent, publish = _commands()
    c.freeze = FreezeWatch(c._froze, clock=lambda: now[0])
    c.wait_at_most(10.0)
    c.freeze.start(thread=False)
    c.subscribe(_Client(), resumed=False, publish=publish)
    c.subscribed(1, [])
    c.subscribed(2, [])
    now[0] += 5  # stopped for 5 s
    with caplog.at_level(logging.WARNING):
        c.handle("adgan/st1/trigger/set", b'{"part_id": "F0"}', False, mid=1)
    assert taken == [b'{"part_id": "F0"}'] and held == [] and sent == [] and c.counters["freezes"] == 1
    assert "did not run for 5.0 s" in caplog.text and "taken (trigger.max_wait_s)" in caplog.text
    now[0] += 12  # 12 s: fenced
    c.freeze.check()
    assert len(sent) == 1 and c.counters["freezes"] == 2
    c.handle("adgan/st1/trigger/set", sent[0][1].encode(), False, mid=2)  # (the fence back)
    c.wait_at_most(0.0)  # no limit: never fenced
    now[0] += 60
    c.freeze.check()
    assert len(sent) == 1 and c.counters["freezes"] == 3
    c.wait_at_most(0.5)  # a limit under FROZEN_S: a 1 s gap is a freeze, and fenced
    now[0] += 1.0
    c.freeze.check()
    assert len(sent) == 2 and c.counters["freezes"] == 4
    c.wait_at_most(0.01)  # under the watch's tick: a gap of a few ticks (a thread woken late) is no freeze
    for _ in range(4):    # (until the floor, every tick was one: said and fenced 4 times a second)
        now[0] += 0.3
        c.freeze.check()
    assert len(sent) == 2 and c.counters["freezes"] == 4


def test_a_command_sent_at_qos_0_is_taken_and_said_once_in_a_while(broker, tmp_path, caplog):
    """A PLC that publishes its trigger/sets at QoS 0: the broker keeps none of them for the station
    while it is away (a probe: three named parts sent at QoS 0 while the agent restarted had no answer
    and no word; three at QoS 1 were answered as held). The station cannot see those; it takes the
    ones that come, and says (at most every QOS0_SAY_S) and counts that they come at QoS 0."""
    import paho.mqtt.client as paho
    taken = []
    pub = Publisher("st1", Outbox(tmp_path / "b.sqlite"), MqttSettings(port=broker.port),
                    commands={"trigger": taken.append})
    plc = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="plc-qos0")
    plc.connect("127.0.0.1", broker.port)
    plc.loop_start()
    pub.start()
    try:
        assert wait(lambda: pub.commands_ready.is_set(), 10)
        with caplog.at_level(logging.WARNING, logger="agent.mqtt.commands"):
            for i, qos in enumerate((0, 0, 1)):
                plc.publish("adgan/st1/trigger/set", json.dumps({"part_id": f"Z{i}"}), qos=qos).wait_for_publish(5)
            assert wait(lambda: len(taken) == 3, 10), taken
    finally:
        pub.stop()
        plc.loop_stop()
        plc.disconnect()
    assert pub.counters["commands_qos0"] == 2  # (the QoS 1 one is not)
    said = [r.getMessage() for r in caplog.records if "came at QoS 0" in r.getMessage()]
    assert len(said) == 1 and "send commands at QoS 1" in said[0], said


def stopped(pid: int) -> bool:
    """Whether every thread of process `pid` is stopped (state T in /proc)."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as fh:
                states.append(fh.read().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:  # (a thread that ended meanwhile)
            continue
    return bool(states) and all(st in ("T", "t") for st in states)


def test_requests_sent_while_the_agent_did_not_run_are_answered_as_not_inspected(broker, two_classes, synth_data,
                                                                                  tmp_path):
    """The agent stopped (SIGSTOP: Ctrl-Z on an agent run by hand; a container paused) for 5 s, within
    the keepalive: the broker sent it three named parts meanwhile, read the moment it ran again. Until
    2026-12-07 they were inspected as if just sent, and each part's id had the verdict of whatever the
    camera showed by then (a probe of 25 s: two inspected, three refused as too many waiting)."""
    cfg, sub, cmd, state = mqtt_station(broker, two_classes, synth_data, tmp_path, loop=True)
    cfg.write_text(cfg.read_text().replace('mode = "mqtt"', 'mode = "mqtt"\nmax_pending = 20'))
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(commands_ready, 60), agent.output()
        cmd.publish("adgan/st1/trigger/set", '{"part_id": "A0"}', qos=1).wait_for_publish(5)
        assert sub.wait_for(lambda m: any(e["part_id"] == "A0" for e in events(sub)), 60), agent.output()
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            assert wait(lambda: stopped(agent.proc.pid), 10)  # (every thread: a signal is delivered, not sent)
            for pid in ("F0", "F1", "F2"):
                cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": pid}), qos=1).wait_for_publish(5)
            time.sleep(5)
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        assert sub.wait_for(lambda m: {"F0", "F1", "F2"} <= {e["part_id"] for e in events(sub)}, 60), agent.output()
        late = [e for e in once(events(sub)) if e["part_id"] in ("F0", "F1", "F2")]
        assert all(e["verdict"] == "error" and "did not run for" in e["error"] for e in late), late
        cmd.publish("adgan/st1/trigger/set", '{"part_id": "B0"}', qos=1).wait_for_publish(5)
        assert sub.wait_for(lambda m: any(e["part_id"] == "B0" for e in events(sub)), 60), agent.output()
        assert sub.wait_for(lambda m: sub.documents("adgan/st1/status")[-1]["mqtt"]["freezes"] >= 1, 30)
        assert agent.terminate(30) == 0
    finally:
        agent.stop()
        hang_up(cmd, sub)
    got = {e["part_id"]: e for e in once(events(sub))}
    for pid in ("F0", "F1", "F2"):
        assert got[pid]["verdict"] == "error" and "did not run for" in got[pid]["error"], got[pid]
        assert got[pid]["error"].startswith("a part not inspected"), got[pid]
    assert got["A0"]["verdict"] in ("ok", "anomaly") and got["B0"]["verdict"] in ("ok", "anomaly"), got["B0"]
    assert "process did not run for" in agent.output()


def test_requests_sent_while_the_agent_was_stopped_are_answered_when_it_is_back(broker, two_classes, synth_data,
                                                                                tmp_path):
    cfg, sub, cmd, state = mqtt_station(broker, two_classes, synth_data, tmp_path, loop=True)

    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(commands_ready, 60), agent.output()
        assert agent.terminate(30) == 0, agent.output()
        # the PLC asks while the station is stopped: the broker acknowledges, and keeps them for it
        for payload in ('{"part_id": "H1"}', "go", '{"part_id": "no spaces"}', '{"part_id": "H2"}'):
            cmd.publish("adgan/st1/trigger/set", payload, qos=1).wait_for_publish(5)
        cmd.publish("adgan/st1/class/set", "cylinder", qos=1).wait_for_publish(5)
        sub.messages.clear()
        again = AgentProcess(cfg, tmp_path / "again.log")
        try:
            assert sub.wait_for(lambda m: len(events(sub)) >= 4, 60), again.output()
            assert sub.wait_for(lambda m: state("class") == b"cylinder", 30), again.output()
            cmd.publish("adgan/st1/trigger/set", '{"part_id": "N1"}', qos=1).wait_for_publish(5)
            assert sub.wait_for(lambda m: any(e["part_id"] == "N1" for e in events(sub)), 60), again.output()
            assert sub.wait_for(lambda m: sub.documents("adgan/st1/status")[-1]["mqtt"]["commands_held"] == 4, 30)
            assert again.terminate(30) == 0
        finally:
            again.stop()
        got = once(events(sub))
        assert [e["part_id"] for e in got] == ["H1", None, None, "H2", "N1"], got
        assert all(e["verdict"] == "error" for e in got[:4])
        assert HELD in got[0]["error"] and HELD in got[1]["error"] and HELD in got[3]["error"]
        assert got[0]["error"].startswith("a part not inspected") and got[1]["error"].startswith("requested inspection")
        assert "is not 1-64" in got[2]["error"] and HELD in got[2]["error"]
        # a request after the station is back is inspected, by the class switched to while it was away
        assert got[4]["verdict"] in ("ok", "anomaly") and got[4]["expected_class"] == "cylinder"
        assert "came before its fence" in again.output()
    finally:
        agent.stop()
        hang_up(cmd, sub)


def test_a_trigger_set_a_kill_left_unanswered_is_not_taken_again_when_the_broker_resends_it(tmp_path):
    """The kill can come after the request is kept and before paho acknowledges it: the broker sends it
    again (DUP) to the next run, which answers it as left by the run before, not a second time as held."""
    from agent.mqtt.commands import message_key
    from agent.request_journal import RequestJournal
    from agent.trigger import CommandTrigger
    box = tmp_path / "outbox.db"
    t = CommandTrigger(max_pending=1, journal=RequestJournal(box))
    key = message_key(7, b'{"part_id": "K"}')
    assert t.request(part_id="K", key=key)
    assert t.journal.settle()
    left = RequestJournal(box).start(0)
    assert [(o.part_id, o.key) for o in left] == [("K", key)]
    c, taken, held, sent, publish = _commands()
    c.seed(o.key for o in left)
    c.subscribe(_Client(), resumed=True, publish=publish)
    c.handle("adgan/st1/trigger/set", b'{"part_id": "K"}', False, mid=7, dup=True)
    c.handle("adgan/st1/trigger/set", b'{"part_id": "L"}', False, mid=8, dup=True)
    assert taken == [] and held == [b'{"part_id": "L"}']


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_trigger_sent_while_the_link_is_down_is_held_and_a_new_one_after_is_taken(broker, tmp_path, protocol):
    taken, held = [], []
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"),
                    MqttSettings(port=broker.port, keepalive_s=5, protocol=protocol),
                    commands={"trigger": taken.append})
    pub.commands.on_held = {"trigger": held.append}
    pub.start()
    try:
        assert pub.commands_ready.wait(10)
        connects = pub.counters["connects"]
        pub.client.reconnect_delay_set(min_delay=3, max_delay=3)  # (room for the PLC's message, under load too)
        pub.client.socket().shutdown(socket.SHUT_RDWR)  # the link drops; paho reconnects 3 s later
        send(broker.port, "adgan/st1/trigger/set", b'{"part_id": "L1"}')  # the broker keeps it for the station
        assert wait(lambda: held == [b'{"part_id": "L1"}'], 20), (held, taken)
        assert pub.counters["connects"] == connects + 1 and pub.counters["commands_held"] == 1
        assert wait(lambda: not pub.commands.fencing, 10)  # the fence is back: what comes now is new
        send(broker.port, "adgan/st1/trigger/set", b'{"part_id": "L2"}')
        assert wait(lambda: taken == [b'{"part_id": "L2"}'], 20), (held, taken)
    finally:
        pub.stop()


def test_a_command_whose_acknowledgement_a_silent_link_lost_is_taken_once_however_late_it_comes_again(
        broker, tmp_path, monkeypatch):
    """A link that goes silent (a cable pulled) right after the station took a trigger/set: its PUBACK
    never reaches the broker, paho sees the link is dead only after its keepalive (up to 1.5 of them), and
    on the next connection the broker sends the trigger/set again (DUP). It is the same request. Until
    2026-12-06 the resend was known for RESEND_S (60 s) after it was taken, and a link found dead later
    (keepalive 30 s, and the reconnect's backoff) had it answered twice; now the window runs from the
    end of the connection it came on. (RESEND_S is 2 s here, and the keepalive 5 s.)"""
    monkeypatch.setattr(commands_module, "RESEND_S", 2.0)
    relay = Relay(broker.port)
    taken = []
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=relay.port, keepalive_s=5),
                    commands={"trigger": taken.append})
    pub.start()
    try:
        assert pub.commands_ready.wait(10)
        connects = pub.counters["connects"]
        relay.mute(up_only=True)  # what the station sends is lost from now on: the PUBACK below
        send(broker.port, "adgan/st1/trigger/set", b'{"part_id": "S1"}')
        assert wait(lambda: taken == [b'{"part_id": "S1"}'], 10), taken
        relay.mute()  # and the link goes silent both ways, still open
        assert wait(lambda: pub.counters["connects"] == connects + 1 and pub.commands_ready.is_set(), 40)
        assert wait(lambda: pub.counters["commands_resent"] == 1, 10), (taken, pub.counters["commands_resent"])
        assert taken == [b'{"part_id": "S1"}']
    finally:
        pub.stop()
        relay.close()


def test_the_fence_comes_back_on_a_command_topic_new_to_the_kept_session(broker, tmp_path, caplog):
    """A station whose topic_prefix changed resumes a session subscribed to the old topics: the fence
    goes after the SUBSCRIBEs, so the broker has the new subscription when it routes the fence."""
    first = Publisher("st1", Outbox(tmp_path / "a.sqlite"), MqttSettings(port=broker.port, topic_prefix="old"),
                      commands={"trigger": [].append})
    first.start()
    assert first.commands_ready.wait(10)
    first.stop()
    taken, held = [], []
    pub = Publisher("st1", Outbox(tmp_path / "b.sqlite"), MqttSettings(port=broker.port, topic_prefix="new"),
                    commands={"trigger": taken.append})
    pub.commands.on_held = {"trigger": held.append}
    with caplog.at_level(logging.DEBUG, logger="agent.mqtt.commands"):
        pub.start()
        try:
            assert pub.commands_ready.wait(10)
            assert wait(lambda: "0 commands the broker held for this station" in caplog.text, 5), caplog.text
            send(broker.port, "new/st1/trigger/set", b"go")
            assert wait(lambda: taken == [b"go"], 10) and held == []
        finally:
            pub.stop()


def test_a_hostile_fence_nested_past_the_parsers_depth_is_refused_as_too_large(broker, tmp_path):
    """`{"fence": [[[...]]]}` nested 100,000 deep: the fence check parsed it before the size limit,
    outside the handler's guard, and its RecursionError reached the link's callback guard (an ERROR
    traceback), and the command was neither refused nor counted."""
    taken, held = [], []
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=broker.port, keepalive_s=5),
                    commands={"trigger": taken.append})
    pub.commands.on_held = {"trigger": held.append}
    pub.start()
    try:
        assert pub.commands_ready.wait(10)
        assert wait(lambda: not pub.commands.fencing, 10)
        send(broker.port, "adgan/st1/trigger/set", b'{"fence": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        send(broker.port, "adgan/st1/trigger/set", b"go")
        assert wait(lambda: taken == [b"go"], 15), (taken, held, dict(pub.counters))
        assert held == [] and pub.counters["commands_refused"] == 1
    finally:
        pub.stop()


def held_backlog(broker, tmp_path, n: int) -> mqtt.Client:
    """The station's session made once (its commands subscribed, then it stops), and a PLC client (returned,
    connected) that then sent it `n` named trigger/sets, H0, H1, ...: the broker holds them for it."""
    first = Publisher("st1", Outbox(tmp_path / "a.sqlite"), MqttSettings(port=broker.port),
                      commands={"trigger": [].append})
    first.start()
    assert first.commands_ready.wait(10)
    first.stop()
    plc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc")
    plc.connect("127.0.0.1", broker.port)
    plc.loop_start()
    for info in [plc.publish("adgan/st1/trigger/set", json.dumps({"part_id": f"H{i}"}), qos=1) for i in range(n)]:
        info.wait_for_publish(10)
    return plc


def test_held_commands_taken_slowly_keep_the_fence_waiting_until_they_are_all_in(broker, tmp_path, monkeypatch):
    """A station whose disk flushes slowly takes each held trigger/set slowly (its journal write comes
    before paho acknowledges it), and the broker sends the next ones as it acknowledges. The fence is
    behind them all. It was given up FENCE_S after it was sent, and the held requests still coming were
    taken as new: inspected, and answered with the verdict of whatever part was at the camera then."""
    monkeypatch.setattr(commands_module, "FENCE_S", 1.0)  # (the drain below takes ~3 s: 60 x 50 ms)
    plc = held_backlog(broker, tmp_path, 60)
    try:
        taken, held = [], []

        def slowly(payload):  # (as a journal on an SD card: ~50 ms a flush)
            time.sleep(0.05)
            held.append(payload)
        pub = Publisher("st1", Outbox(tmp_path / "b.sqlite"), MqttSettings(port=broker.port, keepalive_s=30),
                        commands={"trigger": taken.append})
        pub.commands.on_held = {"trigger": slowly}
        pub.start()
        try:
            assert wait(lambda: len(held) + len(taken) >= 60, 30), (len(held), taken)
            assert wait(lambda: not pub.commands.fencing, 10)
            assert taken == [] and len(held) == 60
            plc.publish("adgan/st1/trigger/set", b'{"part_id": "NEW"}', qos=1).wait_for_publish(5)
            assert wait(lambda: taken == [b'{"part_id": "NEW"}'], 10), (taken, len(held))
        finally:
            pub.stop()
    finally:
        plc.loop_stop()
        plc.disconnect()


def test_a_backlog_of_held_commands_taken_slowly_does_not_silence_the_link(broker, tmp_path):
    """Each held trigger/set is taken slowly on paho's network thread (the journal's flushes), and paho
    read as many messages as it had in flight (here the outbox's events) before it wrote anything: with
    a backlog, not even its acknowledgements went out for as long as the backlog took. The broker
    dropped the silent link after 1.5 keepalives and sent the unacknowledged commands again (with 950
    held on a real agent at 30 ms a flush, those taken over RESEND_S before were answered twice). paho's
    thread now writes after at most link.READ_BATCH messages read."""
    plc = held_backlog(broker, tmp_path, 100)
    try:
        box = Outbox(tmp_path / "b.sqlite")
        for i in range(300):  # (events to send: paho reads as many messages as it has unacknowledged, or more)
            box.put(f"e{i}", "adgan/st1/events", b'{"e": %d}' % i)
        taken, held = [], []

        def slowly(payload):  # (as the journal's two flushes on a slow SD card)
            time.sleep(0.15)
            held.append(payload)
        pub = Publisher("st1", box, MqttSettings(port=broker.port, keepalive_s=5), commands={"trigger": taken.append})
        pub.commands.on_held = {"trigger": slowly}
        pub.start()
        try:
            assert wait(lambda: len(held) + len(taken) >= 100 and not pub.commands.fencing, 60), (len(held), taken)
            assert pub.counters["connects"] == 1, pub.link  # (before: the broker dropped the link after 7.5 s)
            assert len(held) == 100 and taken == [] and pub.counters["commands_resent"] == 0
            assert wait(lambda: len(box) == 0, 10)
        finally:
            pub.stop()
    finally:
        plc.loop_stop()
        plc.disconnect()


def test_the_fence_waits_while_held_commands_come_back_to_back_and_at_most_fence_max_s(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(commands_module.time, "monotonic", lambda: clock[0])
    c, taken, held, sent, publish = _commands()

    def slow(payload):  # each held one taken in 1 s (a very slow disk); the next one is there already
        held.append(payload)
        clock[0] += 1.0
    c.on_held = {"trigger": slow}
    c.subscribe(_Client(), resumed=True, publish=publish)
    for i in range(300):  # a held stream of 300 s, back to back
        c.handle("adgan/st1/trigger/set", b"go", False, mid=i + 1)
    assert len(held) == commands_module.FENCE_MAX_S and len(taken) == 300 - len(held)  # (then given up, said)
    c, taken, held, sent, publish = _commands()  # (a fence given up makes the next ones taken as refused: below)
    c.subscribe(_Client(), resumed=True, publish=publish)
    c.handle("adgan/st1/trigger/set", b"go", False, mid=400)
    clock[0] += commands_module.FENCE_S - 1  # a pause, but within FENCE_S of the last held: the fence is on its way
    assert c.fencing
    clock[0] += 2
    assert not c.fencing


def test_a_fence_the_broker_refuses_ends_at_the_first_pause_of_the_held_stream(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(commands_module.time, "monotonic", lambda: clock[0])
    c, taken, held, sent, publish = _commands()
    c.subscribe(_Client(), resumed=True, publish=publish)
    assert not c.fence_refused("adgan/st1/class/set", "Not authorized")  # (not a fence's topic)
    with caplog.at_level(logging.WARNING):
        assert c.fence_refused("adgan/st1/trigger/set", "Not authorized")
    assert "refused this station's fence" in caplog.text
    for i in range(3):
        c.handle("adgan/st1/trigger/set", b"go", False, mid=i + 1)
        clock[0] += 0.1
    clock[0] += 1.0  # the stream pauses: the fence cannot come, so what comes now is new
    c.handle("adgan/st1/trigger/set", b"new", False, mid=9)
    assert len(held) == 3 and taken == [b"new"]


@contextmanager
def _fence_forbidden(tmp_path, protocol: str):
    """(broker, publisher not started, taken, held): mosquitto with an ACL that lets the station (user
    "station") read its commands but not publish on them (anonymous clients, the PLC, may), and three
    named parts sent while the station was away, held for its kept session."""
    import shutil
    import subprocess
    from tests.agent.conftest import Broker, free_port
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd is needed (make install)")
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "station", "s3cret"], check=True, capture_output=True)
    pw.chmod(0o600)
    acl.write_text("topic readwrite adgan/#\n\nuser station\ntopic read adgan/st1/#\n"  # (anonymous: the PLC)
                   + "".join(f"topic readwrite adgan/st1/{t}\n" for t in ("events", "status", "verdict",
                                                                         "availability", "+/state", "start_refused")))
    b = Broker(tmp_path, free_port())
    b.conf.write_text(b.conf.read_text() + f"password_file {pw}\nacl_file {acl}\n"
                      + ("user root\n" if os.geteuid() == 0 else ""))
    b.start()
    settings = MqttSettings(port=b.port, keepalive_s=30, protocol=protocol, username="station", password="s3cret")
    try:
        first = Publisher("st1", Outbox(tmp_path / "a.sqlite"), settings, commands={"trigger": [].append})
        first.start()
        assert first.commands_ready.wait(10)
        first.stop()
        for i in range(3):
            send(b.port, "adgan/st1/trigger/set", json.dumps({"part_id": f"H{i}"}).encode())
        taken, held = [], []
        pub = Publisher("st1", Outbox(tmp_path / "b.sqlite"), settings, commands={"trigger": taken.append})
        pub.commands.on_held = {"trigger": held.append}
        yield b, pub, taken, held
    finally:
        b.stop()


def test_an_mqtt_5_broker_whose_acl_refuses_the_fence_says_so_and_new_commands_are_taken(tmp_path, caplog):
    """mosquitto with an ACL that lets the station read its commands but not publish on them: its PUBACK
    refuses the fence. The held commands are answered as held; one sent after a pause is taken at once
    (before: only FENCE_S after the connection, and nothing said until then)."""
    with _fence_forbidden(tmp_path, "5") as (b, pub, taken, held):
        t0 = time.monotonic()
        caplog.set_level(logging.WARNING, logger="agent.mqtt.commands")
        pub.start()
        try:
            assert wait(lambda: len(held) == 3, 10), (held, taken)
            assert wait(lambda: "refused this station's fence" in caplog.text, 10)  # (its PUBACK: not authorized)
            assert wait(lambda: not pub.commands.fencing, 5) and time.monotonic() - t0 < commands_module.FENCE_S
            send(b.port, "adgan/st1/trigger/set", b'{"part_id": "NEW"}')
            assert wait(lambda: taken == [b'{"part_id": "NEW"}'], 10), (held, taken)
            assert pub.counters["messages_refused"] == 1
        finally:
            pub.stop()


def test_on_a_disk_slow_to_flush_every_held_request_is_answered_as_held(broker, two_classes, synth_data, tmp_path):
    """The agent runs with every fsync 0.25 s late (an SD card): each held request is kept in the
    journal before paho acknowledges it (two flushes), so 30 held ones come back over ~15 s. Before
    2026-12-06 the fence was given up 10 s after it was sent: the rest were inspected as new parts."""
    cfg, sub, cmd, state = mqtt_station(broker, two_classes, synth_data, tmp_path, loop=True)
    ids = [f"S{i}" for i in range(30)]

    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(commands_ready, 60), agent.output()
        assert agent.terminate(30) == 0, agent.output()
        for pid in ids:
            cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": pid}), qos=1).wait_for_publish(5)
        sub.messages.clear()
        again = AgentProcess(cfg, tmp_path / "again.log", wrap=slow_disk("fsync", 0.25))
        try:
            assert sub.wait_for(lambda m: {e["part_id"] for e in events(sub)} >= set(ids), 90), again.output()
            assert again.terminate(30) == 0
        finally:
            again.stop()
        got = once(events(sub))
        assert [e["part_id"] for e in got] == ids, [(e["part_id"], e["verdict"]) for e in got]
        assert all(e["verdict"] == "error" and HELD in e["error"] for e in got), [e["verdict"] for e in got]
        assert "did not come back" not in again.output()
    finally:
        agent.stop()
        hang_up(cmd, sub)


@pytest.mark.parametrize("persistence", [False, True])
def test_a_broker_restarted_without_its_sessions_is_said(broker, tmp_path, persistence, caplog):
    """A broker restarted without persistence forgets the station's session: what a PLC sends before the
    station is back is lost, and the station cannot know what. It can see that the session is gone
    (session present is false on a reconnect): said, and counted in status.mqtt.sessions_lost. With
    persistence (as a station's broker should run), what came meanwhile is held and answered."""
    if persistence:
        broker.stop()
        broker.conf.write_text(broker.conf.read_text().replace(
            "persistence false", f"persistence true\npersistence_location {tmp_path}/"
                                 + ("\nuser root" if os.geteuid() == 0 else "")))
        broker.start()
    taken, held = [], []
    pub = Publisher("st1", Outbox(tmp_path / "outbox.sqlite"), MqttSettings(port=broker.port, keepalive_s=5),
                    commands={"trigger": taken.append})
    pub.commands.on_held = {"trigger": held.append}
    caplog.set_level(logging.WARNING, logger="agent.mqtt.commands")
    pub.start()
    try:
        assert pub.commands_ready.wait(10) and pub.counters["sessions_lost"] == 0
        pub.client.reconnect_delay_set(min_delay=3, max_delay=3)  # (room for the PLC's message)
        broker.stop()
        broker.start()
        send(broker.port, "adgan/st1/trigger/set", b'{"part_id": "R1"}')  # before the station is back
        assert wait(lambda: pub.counters["connects"] == 2 and pub.commands_ready.is_set(), 20)
        if persistence:
            assert wait(lambda: held == [b'{"part_id": "R1"}'], 10), (held, taken)
            assert pub.counters["sessions_lost"] == 0 and "kept no session" not in caplog.text
        else:
            assert pub.counters["sessions_lost"] == 1 and "kept no session for this station" in caplog.text
            assert held == [] and taken == []  # (lost by the broker: the station could only say so)
    finally:
        pub.stop()


def test_commands_after_a_pause_do_not_hold_a_fence_that_does_not_come_back(monkeypatch, caplog):
    """A 3.1.1 broker whose ACL forbids the station to publish on its command topics acknowledges its
    fence and drops it. Before, each command that came within FENCE_S of the last one taken as held
    was taken as held too: parts every few seconds were all answered as held for FENCE_MAX_S (2
    minutes) after every connection. Now only the held stream (back to back) holds the fence
    longer; after the fence was given up once, the next connections' fences are taken as refused
    (the held stream ends at its first pause) until one comes back."""
    clock = [1000.0]
    monkeypatch.setattr(commands_module.time, "monotonic", lambda: clock[0])
    c, taken, held, sent, publish = _commands()
    c.subscribe(_Client(), resumed=True, publish=publish)
    for i in range(3):  # what the broker held, back to back
        c.handle("adgan/st1/trigger/set", f"H{i}".encode(), False, mid=i + 1)
        clock[0] += 0.1
    with caplog.at_level(logging.WARNING):
        for i in range(20):  # then a part every 4 s
            clock[0] += 4.0
            c.handle("adgan/st1/trigger/set", f"P{i}".encode(), False, mid=10 + i)
    # within FENCE_S of the held stream's end the fence may still be on its way: held; after it, taken
    assert held == [b"H0", b"H1", b"H2", b"P0", b"P1"] and taken == [f"P{i}".encode() for i in range(2, 20)]
    assert "did not come back" in caplog.text and "the next fences on it are taken as refused" in caplog.text
    c.subscribe(_Client(), resumed=True, publish=publish)  # the next connection: its held stream ends at a pause
    assert c.fencing
    c.handle("adgan/st1/trigger/set", b"A", False, mid=100)
    clock[0] += 0.1
    c.handle("adgan/st1/trigger/set", b"B", False, mid=101)
    clock[0] += 1.0
    c.handle("adgan/st1/trigger/set", b"new", False, mid=102)
    assert held[-2:] == [b"A", b"B"] and taken[-1] == b"new"
    c.subscribe(_Client(), resumed=True, publish=publish)  # a fence that comes back (the ACL put right) ...
    c.handle("adgan/st1/trigger/set", sent[-1][1].encode(), False, mid=200)
    c.subscribe(_Client(), resumed=True, publish=publish)  # ... and the next is waited for again
    clock[0] += commands_module.FENCE_S - 1
    assert c.fencing


def test_a_3_1_1_broker_whose_acl_drops_the_fence_holds_parts_for_fence_s_at_most(tmp_path, caplog):
    """mosquitto with an ACL that lets the station read its commands but not publish on them, over
    MQTT 3.1.1: the fence is acknowledged and dropped. The held commands are answered as held; parts
    sent every 2 s after them were all taken as held before (each within FENCE_S of the last);
    now those sent more than FENCE_S after the connection (and the held stream) are taken."""
    with _fence_forbidden(tmp_path, "3.1.1") as (b, pub, taken, held):
        caplog.set_level(logging.WARNING, logger="agent.mqtt.commands")
        t0 = time.monotonic()
        pub.start()
        try:
            assert wait(lambda: len(held) == 3, 10), (held, taken)
            sent_at = {}
            while time.monotonic() - t0 < commands_module.FENCE_S + 9:
                pid = f"P{len(sent_at)}"
                sent_at[pid] = time.monotonic() - t0
                send(b.port, "adgan/st1/trigger/set", json.dumps({"part_id": pid}).encode())
                time.sleep(2.0)
            late = [p for p, t in sent_at.items() if t > commands_module.FENCE_S + 3]  # (the held ones may be slow)
            assert wait(lambda: all(json.dumps({"part_id": p}).encode() in taken for p in late), 10), (held, taken)
            assert len(late) >= 2 and "did not come back" in caplog.text
        finally:
            pub.stop()
