"""When the agent inspects: object passages, MQTT requests, class switches; capture-reference."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest

from adgan.cli import main
from agent.sources.synthetic import DEFECTS, SyntheticSource
from agent.trigger import Passage, PassageTrigger
from tests.agent.conftest import AgentProcess, Subscriber, agent_config, poll, replay_events


def events(sub, station="st1"):
    return sub.documents(f"adgan/{station}/events")


def test_one_inspection_per_passage_on_a_settled_frame():
    t = PassageTrigger(min_area_px=100, settle_frames=3, settle_tolerance=0.1, clear_frames=2)
    areas = [0, 50, 400, 900, 1000, 1010, 1005, 1000, 0, 1000, 1000, 0, 0, 0, 1000, 990, 1000, 1000, 0, 0]
    got = [t.update(a) for a in areas]
    # arrives (400, 900, 1000: still moving by more than 10%), settles at the third stable frame, is scored once; a
    # one-frame dropout does not end the passage; it leaves after two empty frames; the next
    # part settles and is scored; nothing for empty frames.
    assert [i for i, p in enumerate(got) if p is Passage.SCORE] == [6, 16]
    assert Passage.UNSETTLED not in got


def test_an_object_that_leaves_before_settling_is_reported_once():
    t = PassageTrigger(min_area_px=100, settle_frames=3, clear_frames=1)
    got = [t.update(a) for a in (500, 1000, 2000, 0, 0)]
    assert got == [Passage.NONE] * 3 + [Passage.UNSETTLED, Passage.NONE]


def test_continuous_mode_on_a_synthetic_station_with_a_captured_reference(broker, calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    ref = tmp_path / "reference.npz"
    src = 'type = "synthetic"\nclasses = ["sphere", "cylinder"]\ndefect_rate = 0.3\nseed = 4\n' \
          'frames_per_part = 4\ngap_frames = 2\ncount = 36\nfps = 0'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src, trigger="continuous",
                       extra=f'[segmentation]\nreference = "{ref}"\n')
    # capture-reference with the camera looking at the empty table (here: the synthetic station, emptied)
    import os
    os.environ["ADGAN_SOURCE__EMPTY_RATE"] = "1"
    try:
        assert main(["agent", "capture-reference", "--config", str(cfg), "--frames", "5",
                     "--env-file", "/nonexistent"]) == 0
    finally:
        del os.environ["ADGAN_SOURCE__EMPTY_RATE"]
    out = capsys.readouterr()
    assert "surface reference from 5 frames" in out.out and ref.is_file() and "stands on" not in out.err
    # a part left on the table while recording (frames 2-4 show one): said, where it is
    assert main(["agent", "capture-reference", "--config", str(cfg), "--frames", "5", "--env-file", "/nonexistent",
                 "--out", str(tmp_path / "with_part.npz")]) == 0
    assert "warning: something stands on the recorded surface (" in capsys.readouterr().err
    evs, _ = replay_events(cfg, broker.port, tmp_path / "agent.log", 6)
    # 36 frames = 6 parts of 4 frames + 2 empty frames each: six passages, six inspections,
    # each on a frame of its own part after it settled (the third identical frame, settle_frames 3).
    stream = SyntheticSource(("sphere", "cylinder"), seed=4, frames_per_part=4, gap_frames=2, defects=DEFECTS,
                             defect_rate=0.3)
    assert [e["source"]["frame"] for e in evs] == [6 * p + 2 for p in range(6)]
    for e in evs:
        f = stream.frame(e["source"]["frame"])
        assert e["source"]["truth"] == {"class": f.meta["class"], "defect": f.meta["defect"]}
        assert e["verdict"] in ("ok", "anomaly") and e["trigger"] == "continuous"
        if e["verdict"] == "anomaly":  # where, in the camera's pixels, inside the 640x480 frame
            b = e["anomaly_box"]
            assert b["frame"] == "camera" and 0 <= b["x"] and b["x"] + b["width"] <= 640 + 1
    # The agent scores the pixels the model was trained on: the training samples' RGB was stored
    # as JPEG (quality 95, found by training), so a live sample goes through the same round trip.
    from agent.decide.inspector import load_class_model
    from agent.segment.preprocess import like_stored, make_sample, sample_to_input
    from agent.segment.segmentation import SegmentationConfig
    from agent.segment.station import StationSegmenter
    from agent.settings import load_settings
    st = load_settings(cfg, env_file=None)
    model = load_class_model("sphere", bundle, thresholds, st.model.seed, st.model.backend)
    prep = model.bundle.preprocessing
    assert prep.rgb_jpeg_quality == 95
    seg = StationSegmenter(SegmentationConfig(), ref)
    raw_differs = []
    for e in evs:
        f = stream.frame(e["source"]["frame"])
        s = make_sample(f, seg(f), prep)
        live = model.searcher.score(sample_to_input(like_stored(s, prep), model.bundle.size)).score
        assert e["score"] == pytest.approx(live, rel=1e-4)
        raw = model.searcher.score(sample_to_input(s, model.bundle.size)).score
        raw_differs.append(abs(raw - live) > 1e-3 * live)
    assert any(raw_differs)  # without the round trip the agent would score other pixels


def commands_ready(messages) -> bool:
    """Whether a station's status among `messages` (a Subscriber's) says its commands are subscribed."""
    return any(t == "adgan/st1/status" and json.loads(p)["mqtt"].get("commands_ready") for t, p, _ in messages)


def once(evs: list[dict]) -> list[dict]:
    """Events as a consumer keeps them: each event id once, in the order first received."""
    kept: dict[str, dict] = {}
    for e in evs:
        kept.setdefault(e["event_id"], e)
    return list(kept.values())


def mqtt_station(broker, two_classes, synth_data, tmp_path, loop: bool = False):
    """(config, subscriber to adgan/st1/#, a PLC client, state(feature)) for a two-class
    station in mqtt trigger mode replaying the cylinder samples."""
    sphere, cyl, th = two_classes
    src = f'type = "folder"\npath = "{synth_data / "test" / "cylinder"}"\nfps = 0' + ("\nloop = true" if loop else "")
    cfg = agent_config(tmp_path, broker.port, sphere, th, src, trigger="mqtt")
    cfg.write_text(cfg.read_text().replace(f'bundles = {{ sphere = "{sphere}" }}',
                                           f'bundles = {{ sphere = "{sphere}", cylinder = "{cyl}" }}'))
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    cmd = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc")
    cmd.connect("127.0.0.1", broker.port)
    cmd.loop_start()

    def state(feature):
        vals = [p for t, p, _ in sub.messages if t == f"adgan/st1/{feature}/state"]
        return vals[-1] if vals else None
    return cfg, sub, cmd, state


def hang_up(cmd, sub) -> None:
    """The PLC client and the subscriber, disconnected."""
    cmd.loop_stop()
    cmd.disconnect()
    sub.close()


@contextmanager
def plc_station(broker, two_classes, synth_data, tmp_path, max_pending: int | None = None):
    """(subscriber, PLC client, agent process) for mqtt_station's station, looping its samples,
    once its commands are subscribed; stopped (and checked to stop cleanly) after."""
    cfg, sub, cmd, state = mqtt_station(broker, two_classes, synth_data, tmp_path, loop=True)
    if max_pending is not None:
        cfg.write_text(cfg.read_text().replace('mode = "mqtt"', f'mode = "mqtt"\nmax_pending = {max_pending}'))
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(commands_ready, 60), agent.output()
        yield sub, cmd, agent
        time.sleep(0.5)
        assert agent.terminate(30) == 0
    finally:
        agent.stop()
        hang_up(cmd, sub)


def test_mqtt_trigger_and_class_switch(broker, two_classes, synth_data, tmp_path, capsys):
    cfg, sub, cmd, state = mqtt_station(broker, two_classes, synth_data, tmp_path)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(lambda m: state("class") == b"sphere", timeout=60), agent.output()
        time.sleep(1.0)
        assert events(sub) == []  # nothing is inspected without a request
        cmd.publish("adgan/st1/trigger/set", "go", qos=1).wait_for_publish(5)
        assert sub.wait_for(lambda m: len(events(sub)) == 1), agent.output()
        cmd.publish("adgan/st1/class/set", "banana", qos=1).wait_for_publish(5)  # unknown: refused, state kept
        assert sub.wait_for(lambda m: sum(t.endswith("class/state") for t, _, _ in m) >= 2), agent.output()
        assert state("class") == b"sphere"
        cmd.publish("adgan/st1/class/set", "cylinder", qos=1).wait_for_publish(5)
        assert sub.wait_for(lambda m: state("class") == b"cylinder"), agent.output()
        cmd.publish("adgan/st1/trigger/set", "go", qos=1).wait_for_publish(5)
        assert sub.wait_for(lambda m: len(events(sub)) == 2), agent.output()
        assert sub.wait_for(lambda m: state("trigger") == b"idle")
        agent.kill()  # a power cut after the product change: the PLC sends its class/set once
        assert main(["agent", "validate-config", "--config", str(cfg), "--env-file", "/nonexistent"]) == 0
        assert "expecting cylinder, as class/set chose it at" in capsys.readouterr().err
        # a restart expects the class switched to, not agent.toml's (until 2026-12-06: sphere again)
        n = len(sub.messages)
        agent = AgentProcess(cfg, tmp_path / "agent2.log")
        assert sub.wait_for(lambda m: any(t == "adgan/st1/class/state" for t, _, _ in m[n:]), 60), agent.output()
        assert state("class") == b"cylinder", agent.output()
        assert "expecting cylinder, as class/set chose it at" in agent.output()
        # (commands sent before the agent's subscription is granted are not kept: clean session)
        assert sub.wait_for(lambda m: commands_ready(m[n:]), 30), agent.output()
        cmd.publish("adgan/st1/trigger/set", "go", qos=1).wait_for_publish(5)
        # (an event whose acknowledgement the kill cut off is sent again: at least once, deduplicated on its id)
        assert sub.wait_for(lambda m: len(once(events(sub))) == 3), agent.output()
        assert agent.terminate(30) == 0
    finally:
        agent.stop()
    # agent.toml edited since the switch: the file is the newer word
    cfg.write_text(cfg.read_text().replace('expected_class = "sphere"', 'expected_class = "cylinder"'))
    n = len(sub.messages)
    agent = AgentProcess(cfg, tmp_path / "agent3.log")
    try:
        assert sub.wait_for(lambda m: any(t == "adgan/st1/class/state" for t, _, _ in m[n:]), 60), agent.output()
        assert state("class") == b"cylinder" and "as class/set chose it" not in agent.output()
        assert "agent.toml's expected_class is cylinder, no longer sphere" in agent.output()
        assert agent.terminate(30) == 0
    finally:
        agent.stop()
        hang_up(cmd, sub)
    first, second, third = once(events(sub))
    assert (first["expected_class"], first["model"]["class"]) == ("sphere", "sphere")
    assert (second["expected_class"], second["model"]["class"]) == ("cylinder", "cylinder")
    assert (third["expected_class"], third["model"]["class"]) == ("cylinder", "cylinder")
    assert first["trigger"] == second["trigger"] == "mqtt"
    assert [first["source"]["frame"], second["source"]["frame"]] == [0, 1]  # a replay advances per request


def test_a_retained_class_command_does_not_switch_on_restart_and_a_trigger_burst_is_one(broker, two_classes,
                                                                                        synth_data, tmp_path):
    cfg, sub, cmd, state = mqtt_station(broker, two_classes, synth_data, tmp_path, loop=True)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(lambda m: state("class") == b"sphere", timeout=60), agent.output()
        cmd.publish("adgan/st1/class/set", "cylinder", qos=1, retain=True).wait_for_publish(5)  # an accident
        assert sub.wait_for(lambda m: state("class") == b"cylinder"), agent.output()  # live: a command
        cmd.publish("adgan/st1/class/set", "sphere", qos=1).wait_for_publish(5)
        assert sub.wait_for(lambda m: state("class") == b"sphere"), agent.output()
        before = len(sub.messages)
        for _ in range(300):                               # a burst: one request waits, the rest coalesce
            cmd.publish("adgan/st1/trigger/set", "go", qos=0)
        assert sub.wait_for(lambda m: len(events(sub)) >= 1), agent.output()
        time.sleep(3.0)
        done = len(events(sub))
        assert 1 <= done <= 30, done                       # not 300 queued inspections
        echoes = sum(t == "adgan/st1/trigger/state" for t, _, _ in sub.messages[before:])
        assert echoes <= 2 * done + 2, (echoes, done)      # a state change echoed, not every command

        def coalesced(m):
            st = [json.loads(p) for t, p, _ in m if t == "adgan/st1/status"]
            return st and st[-1]["counters"]["triggers_coalesced"] + st[-1]["counters"]["events"] == 300
        assert sub.wait_for(coalesced), agent.output()
        assert agent.terminate(30) == 0
    finally:
        agent.stop()
    n = len(sub.messages)
    agent = AgentProcess(cfg, tmp_path / "agent2.log")     # restart: the retained 'cylinder' comes back
    try:
        assert sub.wait_for(lambda m: any(t == "adgan/st1/class/state" for t, _, _ in m[n:]), 60), agent.output()
        time.sleep(1.5)
        assert state("class") == b"sphere", agent.output()
        assert "switched" not in agent.output() and "retained" in agent.output()
        assert agent.terminate(30) == 0
    finally:
        agent.stop()
        cmd.publish("adgan/st1/class/set", b"", qos=1, retain=True).wait_for_publish(5)
        hang_up(cmd, sub)


def test_command_requests_beyond_max_pending_are_coalesced():
    from agent.trigger import CommandTrigger
    t = CommandTrigger(max_pending=2)

    def skipped() -> list:  # taken one at a time: the rest are still waiting while one is answered
        said = []
        while (one := t.skipped()) is not None:
            said.append(one)
            assert t.waiting == (len(said) < n_skipped)
        return said
    assert [t.request() for _ in range(5)] == [True, True, False, False, False]
    assert t.take(0) and t.take(0) and not t.take(0)
    assert t.request()
    # a part's edge is a part: kept in its turn as one not inspected, said after the inspections before it
    assert t.request(part=True) is True and t.request(part=True) is False  # (2 wait now)
    assert t.request() is False and t.request(part=True) is False and t.pending == 2
    assert t.skipped() is None and t.take(0) and t.take(0) and t.waiting
    n_skipped = 2
    assert not t.take(0) and [n for n, *_ in skipped()] == [1, 1] and not t.take(0) and t.skipped() is None
    assert not t.waiting
    for _ in range(2 + CommandTrigger.MAX_SAID_APART + 48):  # a flood: said one by one up to a bound, then together
        t.request(part=True)
    assert t.take(0) and t.take(0)
    n_skipped = CommandTrigger.MAX_SAID_APART
    assert [n for n, *_ in skipped()] == [1] * (CommandTrigger.MAX_SAID_APART - 1) + [1 + 48]
    with pytest.raises(ValueError, match="max_pending"):
        CommandTrigger(0)


def test_a_request_naming_its_part_is_a_part_and_its_id_is_kept_in_its_turn():
    from agent.requests import part_request
    from agent.trigger import CommandTrigger
    assert part_request(b"go") == part_request(b"") == part_request(b"{bad json") == (False, None, None)
    assert part_request(b'{"other": 1}') == part_request(b'["part_id"]') == (False, None, None)
    assert part_request(b'{"part_id": "SN-2026/12:06.7#a+b_c"}') == (True, "SN-2026/12:06.7#a+b_c", None)
    assert part_request(b' {"part_id": 123456789, "x": 1}') == (True, "123456789", None)
    for bad in (b'{"part_id": ""}', b'{"part_id": "a,b"}', b'{"part_id": "has space"}', b'{"part_id": true}',
                b'{"part_id": -1}', b'{"part_id": 1.5}', b'{"part_id": null}', b'{"part_id": ["x"]}',
                b'{"part_id": "' + b"x" * 65 + b'"}', '{"part_id": "\u00e9t\u00e9"}'.encode()):
        part, pid, why = part_request(bad)
        assert part and pid is None and why.startswith("a part not inspected: its trigger/set part_id "), bad
    assert len(part_request(b'{"part_id": "' + b"y" * 200 + b'"}')[2]) < 200  # the bad id is shown cut short
    for botched in (b"{'part_id': 'A-1'}", b'{"part_id": "A-1"', b'{part_id: A-1}', b'{"part_id": "\xff"}'):
        part, pid, why = part_request(botched)  # (until 2026-12-07: inspected as "go", without its id)
        assert part and pid is None and why.startswith("a part not inspected: its trigger/set names a part_id and "
                                                       "is not JSON: "), botched
    assert len(part_request(b"{'part_id': '" + b"z" * 300 + b"'}")[2]) < 200

    t = CommandTrigger(max_pending=1)
    assert t.request(part_id="A") and not t.request() and not t.request(part_id="B") and not t.request(part=True)
    t.refuse("bad id")
    assert t.take(0).part_id == "A" and t.take(0) is None  # the parts behind it are answered first
    late = "a part not inspected: the trigger came while 1 inspection(s) waited"
    said = [t.skipped() for _ in range(4)]
    assert [(n, why.startswith(late), pid) for n, why, pid in said[:2]] == [(1, True, "B"), (1, True, None)]
    assert said[2:] == [(1, "bad id", None), None] and not t.waiting
    for i in range(1 + CommandTrigger.MAX_SAID_APART + 5):  # a flood of named parts: merged, their ids kept
        t.request(part_id=f"P{i}")
    assert t.take(0).part_id == "P0"
    said = []
    while (one := t.skipped()) is not None:
        said.append(one)
    assert [p for *_, p in said[:-1]] == [f"P{i}" for i in range(1, CommandTrigger.MAX_SAID_APART)]
    assert said[-1][0] == 6 and said[-1][2] == ",".join(f"P{i}" for i in range(CommandTrigger.MAX_SAID_APART, 106))
    t.request(part_id="Q")
    t.request(part_id="R")
    assert t.switch(b"cylinder") and t.switch(b"sphere")  # nothing between them: the last one counts
    q, r, sw = t.left("SIGTERM")
    assert (q.skipped, q.why, q.part_id) == (1, "requested inspection not made: the agent stopped (SIGTERM)", "Q")
    assert (r.skipped, r.part_id) == (1, "R") and r.why.startswith(late) and not t.waiting
    assert sw.switch == b"sphere" and not sw.skipped


def test_class_switches_wait_their_turn_among_the_requests():
    from agent.trigger import CommandTrigger
    t = CommandTrigger(max_pending=2)
    assert t.switch(b"a") and t.switched() == b"a" and t.switched() is None  # nothing ahead: at once
    assert t.request(part_id="P1") and t.switch(b"b") and t.request(part_id="P2")
    assert not t.request(part_id="P3") and t.switch(b"c") and t.switch(b"d")
    assert t.switched() is None and t.take(0).part_id == "P1"
    assert t.take(0) is None and t.skipped() is None and t.switched() == b"b"  # after P1, before P2
    assert t.take(0).part_id == "P2" and t.switched() is None
    assert t.skipped()[2] == "P3" and t.take(0) is None and t.switched() == b"d" and not t.waiting
    assert t.switch(b"x") and t.waiting is False and t.pending == 0  # a switch is not something to answer
    t.switched()
    for i in range(CommandTrigger.MAX_WAITING):  # a flood: parts and switches alternating
        t.request(part_id=f"F{i}")
        t.switch(b"y")
    assert CommandTrigger.MAX_WAITING <= len(t._queue) <= CommandTrigger.MAX_WAITING + 1  # bounded
    assert not t.switch(b"z")  # refused beyond the bound (the agent says so and counts it)
    merged = t._queue[-1]
    assert merged.skipped > 1 and merged.part_id.endswith(f"F{CommandTrigger.MAX_WAITING - 1}")  # no id lost


def test_parts_named_in_their_requests_each_get_one_event_with_their_id(broker, two_classes, synth_data, tmp_path):
    """A PLC that names each part (trigger/set {"part_id": ...}) gets one event per part, in
    order, its id echoed; until 2026-12-06 a request that came while one waited was coalesced
    into it: three parts sent at once gave two events, and nothing said which part they were."""
    with plc_station(broker, two_classes, synth_data, tmp_path) as (sub, cmd, agent):
        for pid in ("A-1", "B-2", "C-3"):  # at once: the second and third come while the first is inspected
            cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": pid}), qos=1)
        assert sub.wait_for(lambda m: len(once(events(sub))) >= 3, 30), (once(events(sub)), agent.output())
        cmd.publish("adgan/st1/trigger/set", b'{"part_id": "two words"}', qos=1)  # answered, not dropped
        assert sub.wait_for(lambda m: len(once(events(sub))) >= 4, 30), agent.output()
        cmd.publish("adgan/st1/trigger/set", b"go", qos=1)  # no id: as before
        assert sub.wait_for(lambda m: len(once(events(sub))) >= 5, 30), agent.output()
    evs = once(events(sub))
    assert [e["part_id"] for e in evs] == ["A-1", "B-2", "C-3", None, None], evs
    assert evs[0]["verdict"] in ("ok", "anomaly")
    for e in evs[1:3]:  # inspected in turn, or said not inspected: never silent
        assert e["verdict"] in ("ok", "anomaly") or e["error"].startswith("a part not inspected: the trigger came")
    assert evs[3]["error"].startswith('a part not inspected: its trigger/set part_id "two words" is not')
    assert evs[4]["verdict"] in ("ok", "anomaly")


def test_a_class_switch_applies_after_the_parts_requested_before_it(broker, two_classes, synth_data, tmp_path):
    """A product change: the PLC requests the old product's last parts, switches the class and
    requests the new one's, all while an inspection runs. Each part is scored by the class in
    force when it was requested. Until 2026-12-06 a switch applied at the loop's next turn, ahead
    of parts still waiting (the old product's last parts were scored by the new product's model:
    false NGs at every changeover), and of two switches only the last counted."""
    plan = [("S1", "sphere"), ("S2", "sphere"), ("S3", "sphere"), "cylinder", ("C1", "cylinder"),
            ("C2", "cylinder"), "sphere", ("S4", "sphere")]
    with plc_station(broker, two_classes, synth_data, tmp_path, max_pending=10) as (sub, cmd, agent):
        for step in plan:  # at once, in order, from one client
            if isinstance(step, str):
                cmd.publish("adgan/st1/class/set", step, qos=1)
            else:
                cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": step[0]}), qos=1)
        assert sub.wait_for(lambda m: len(once(events(sub))) >= 6, 60), (once(events(sub)), agent.output())
    evs = once(events(sub))
    assert [(e["part_id"], e["expected_class"]) for e in evs] == [s for s in plan if not isinstance(s, str)]
    assert all(e["verdict"] in ("ok", "anomaly") and e["model"]["class"] == e["expected_class"] for e in evs), evs
    assert [p.decode() for t, p, _ in sub.messages if t == "adgan/st1/class/state"][-2:] == ["cylinder", "sphere"]


def test_at_a_stop_switches_among_waiting_requests_are_made_in_turn_and_a_flood_is_refused(broker, two_classes,
                                                                                           synth_data, tmp_path):
    """A SIGTERM while a part of each product waits, a switch between them: each is answered
    under its own class, and the switch is stored for the restart. A switch beyond MAX_WAITING
    waiting entries is refused, counted and the class in force echoed."""
    import signal

    from agent.decide.expected import record_path
    from agent.service import Agent
    from agent.settings import load_settings
    cfg, sub, cmd, state = mqtt_station(broker, two_classes, synth_data, tmp_path)
    cfg.write_text(cfg.read_text().replace('mode = "mqtt"', 'mode = "mqtt"\nmax_pending = 10'))
    cmd.loop_stop()
    cmd.disconnect()
    agent = Agent(load_settings(cfg, env_file=None))
    agent.start()  # (its loop is not run: the requests wait)
    try:
        agent._on_trigger_command(b'{"part_id": "S1"}')
        agent._on_class_command(b"cylinder")
        agent._on_trigger_command(b'{"part_id": "C1"}')
        agent.commands.MAX_WAITING = 3
        agent._on_class_command(b"sphere")
        assert agent.counters.get("classes_refused") == 1
        st = agent.status()["requests"]
        assert st["journal"]["stored"] is True and st["journal"]["path"].endswith(".requests")
        assert {k: v for k, v in st.items() if k != "journal"} == {"inspections": 2, "parts_not_inspected": 0,
                                                                   "class_switches": 1, "in_flight": 0}
        agent.request_stop(signal.SIGTERM)
    finally:
        agent.shutdown()
    assert sub.wait_for(lambda m: len(events(sub)) == 2), events(sub)
    sub.close()
    assert [(e["part_id"], e["expected_class"], e["error"]) for e in events(sub)] == [
        (p, c, "requested inspection not made: the agent stopped (SIGTERM)") for p, c in (("S1", "sphere"),
                                                                                        ("C1", "cylinder"))]
    assert json.loads(record_path(tmp_path / "outbox.sqlite").read_text())["class"] == "cylinder"
    assert [p for t, p, _ in sub.messages if t == "adgan/st1/class/state"][-2:] == [b"sphere", b"cylinder"]


def test_a_class_switch_during_a_gpio_parts_delay_comes_after_that_part(broker, two_classes, tmp_path):
    """A light barrier before the camera (gpio.delay_ms 300): the PLC sees the old product's last
    part pass the barrier and switches the class at once, within the part's delay. That part is
    scored by the old class, the next by the new. Until 2026-12-06 the part's request was made
    only after the delay, so the switch, made meanwhile, came first."""
    import uuid

    from agent.gpio.lines import MemoryChip
    from tests.agent.test_gpio import READY, TRIGGER, Running, gpio_config
    sphere, cyl, th = two_classes
    name = f"test-{uuid.uuid4()}"
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    cfg = gpio_config(tmp_path, broker, (sphere, th), tmp_path, name)
    cfg.write_text(cfg.read_text().replace(f'type = "folder"\npath = "{tmp_path}"\nfps = 0',
                                           'type = "synthetic"\nclasses = ["sphere"]\nfps = 10')
                   .replace(f'bundles = {{ sphere = "{sphere}" }}', f'bundles = {{ sphere = "{sphere}", cylinder = '
                                                                    f'"{cyl}" }}')
                   .replace("dead_time_ms = 40", "dead_time_ms = 40\ndelay_ms = 300"))
    run = Running(cfg)
    chip = MemoryChip.named(name)
    try:
        assert poll(lambda: chip.outputs[READY].active), "ready never went active"
        line = chip.inputs[TRIGGER]
        line.drive(True)
        line.drive(False)
        time.sleep(0.05)
        run.agent._on_class_command(b"cylinder")  # (as class/set: the same handler)
        time.sleep(0.5)
        line.drive(True)
        line.drive(False)
        assert poll(lambda: len(events(sub)) >= 2), events(sub)
    finally:
        run.stop()
        sub.close()
    evs = events(sub)  # (what the synthetic camera shows then, a part or none, does not matter here)
    assert [e["expected_class"] for e in evs] == ["sphere", "cylinder"] and "error" not in [e["verdict"] for e in evs]


def test_a_part_seen_before_a_switch_goes_ahead_of_it_when_requested_later():
    from agent.trigger import CommandTrigger
    t = CommandTrigger(max_pending=3)
    t0 = time.monotonic()
    t.announce(t0)  # a GPIO edge; its request comes delay_ms later
    assert t.switch(b"new")
    assert t.switched() is None  # the part on its way goes first
    assert t.request(part=True, at=t0) and t.switched() is None
    assert t.take(0) is not None and t.switched() == b"new"
    t.announce(time.monotonic() - CommandTrigger.MAX_FLIGHT_S - 1)  # never requested (a lost thread): forgotten
    assert t.switch(b"again") and t.switched() == b"again"
    assert t.status() == {"inspections": 0, "parts_not_inspected": 0, "class_switches": 0, "in_flight": 0,
                          "journal": None}
    t.switch(b"one")
    t2 = time.monotonic()
    t.announce(t2)  # a part seen between two switches: they are not merged into one
    t.switch(b"two")
    assert t.status() == {"inspections": 0, "parts_not_inspected": 0, "class_switches": 2, "in_flight": 1,
                          "journal": None}
    t.request(part=True, at=t2)
    assert t.status() == {"inspections": 1, "parts_not_inspected": 0, "class_switches": 2, "in_flight": 0,
                          "journal": None}
    assert t.switched() == b"one" and t.take(0) is not None and t.switched() == b"two"
    t1 = time.monotonic()
    t.announce(t1)
    t.switch(b"last")
    said = t.left("SIGTERM")  # at a stop: the part seen is answered, ahead of the switch made after it
    assert [(a.skipped, a.why, a.switch) for a in said] == [
        (1, "requested inspection not made: the agent stopped (SIGTERM)", None), (0, None, b"last")]
    assert not t.request(part=True, at=t1) and not t.switch(b"x") and not t.waiting  # stopped: nothing taken


def test_a_flood_of_bad_part_requests_is_bounded_and_every_one_counted():
    from agent.trigger import CommandTrigger
    t = CommandTrigger()
    for i in range(10_000):  # faster than the loop answers them (each answer is a stored event)
        t.refuse(f"a part not inspected: its trigger/set part_id '{i} x' is not ...")
    assert len(t._queue) == CommandTrigger.MAX_SAID_APART
    said = []
    while (one := t.skipped()) is not None:
        said.append(one)
    assert sum(n for n, *_ in said) == 10_000 and said[0][1].startswith('a part not inspected: its trigger/set')
    assert said[-1][1].startswith(f"{10_000 - 99} parts not inspected, the first said: a part not inspected: its")


def test_a_trigger_too_large_to_take_is_answered(broker, two_classes, synth_data, tmp_path):
    """A PLC gateway that sends its part's whole record (over 256 bytes) gets an error event for
    it; until 2026-12-06 only the agent's log said it, and the PLC waited for a verdict."""
    record = json.dumps({"part_id": "SN-1", "recipe": "x" * 300}).encode()
    with plc_station(broker, two_classes, synth_data, tmp_path) as (sub, cmd, agent):
        cmd.publish("adgan/st1/trigger/set", record, qos=1)
        assert sub.wait_for(lambda m: len(once(events(sub))) >= 1, 30), agent.output()
        cmd.publish("adgan/st1/trigger/set", b'{"part_id": "SN-2"}', qos=1)
        assert sub.wait_for(lambda m: len(once(events(sub))) >= 2, 30), agent.output()
        n = len(sub.messages)
        cmd.publish("adgan/st1/class/set", b"cylinder" + b" " * 300, qos=1)  # too large: the class in force echoed
        assert sub.wait_for(lambda m: any(t == "adgan/st1/class/state" for t, _, _ in m[n:]), 30), agent.output()
        assert [p for t, p, _ in sub.messages[n:] if t == "adgan/st1/class/state"] == [b"sphere"]
    first, second = once(events(sub))
    assert first["error"] == f"requested inspection not made: its trigger/set was refused ({len(record)} bytes, " \
                             "more than 256)" and first["part_id"] is None
    assert second["part_id"] == "SN-2" and second["verdict"] in ("ok", "anomaly")


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))


def test_a_huge_command_does_not_reach_the_agent_over_mqtt_5(broker, two_classes, synth_data, tmp_path):
    """A message up to the broker's limit (mosquitto: 256 MB unless message_size_limit is set) was
    read whole by paho and copied on its way in: a probe's 200 MB trigger/set raised the agent's
    peak memory from 121 MB to 747 MB (a Jetson shares its 8 GB with the GPU). Over MQTT 5 the
    agent now tells the broker the largest packet it takes (MAX_INCOMING_BYTES, 1 MiB), and the
    broker drops a larger one for it; commands of a normal size are answered as before."""
    from agent.mqtt.link import MAX_INCOMING_BYTES
    with plc_station(broker, two_classes, synth_data, tmp_path) as (sub, cmd, agent):
        cmd.publish("adgan/st1/trigger/set", b'{"part_id": "P0"}', qos=1)
        assert sub.wait_for(lambda m: len(once(events(sub))) >= 1, 30), agent.output()
        pid = agent.agent_pid()
        before = _peak_rss_kb(pid)
        cmd.publish("adgan/st1/trigger/set", b"x" * (64 << 20), qos=1).wait_for_publish(60)
        cmd.publish("adgan/st1/trigger/set", b"y" * (MAX_INCOMING_BYTES + 1), qos=1).wait_for_publish(60)
        cmd.publish("adgan/st1/trigger/set", b'{"part_id": "P1"}', qos=1)
        assert sub.wait_for(lambda m: any(e.get("part_id") == "P1" for e in events(sub)), 60), agent.output()
        grown_mb = (_peak_rss_kb(pid) - before) / 1024
    evs = once(events(sub))
    assert [e["part_id"] for e in evs] == ["P0", "P1"], evs  # the huge ones never reached it
    assert grown_mb < 32, f"peak memory grew by {grown_mb:.0f} MB"
