"""A disk that is slow to flush (an SD card, a worn eMMC: fsync taking a second or more) under a
running agent, made by delaying the agent's own system calls (strace's fault injection)."""
from __future__ import annotations

import time

from tests.agent.conftest import AgentProcess, Subscriber, agent_config, free_port, scrape, slow_disk


def on_a_slow_disk(broker, calibrated, synth_data, tmp_path, section: str, settings: str, calls: str,
                   delay_s: float, until, extra: str = "") -> tuple[str, Subscriber]:
    """Run the agent on a looping folder with `calls` (flushes) `delay_s` late and `settings`
    added to its `[section]` (and `extra` sections), until `until(sub)`; then SIGTERM. Returns
    its log and what it sent."""
    bundle, thresholds = calibrated
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 5'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src, extra=extra)
    cfg.write_text(cfg.read_text().replace(f"[{section}]\n", f"[{section}]\n{settings}\n"))
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log", wrap=slow_disk(calls, delay_s))
    try:
        assert sub.wait_for(lambda m: until(sub), timeout=90), agent.output()
        assert agent.terminate(60) == 0
    finally:
        agent.stop()
        sub.close()
    return agent.output(), sub


def test_a_slow_disk_is_said_and_its_wait_counts_in_the_verdicts_age(broker, calibrated, synth_data, tmp_path):
    """Every flush takes 1.2 s. The verdict's age used to be counted from after the sequence
    number's flush, so a verdict 1.2 s old (and more) went out as live under
    `verdict_max_age_s = 1`, and nothing said the disk was slow."""
    def until(sub):
        statuses = sub.documents("adgan/st1/status")
        return len(sub.documents("adgan/st1/events")) >= 4 and bool(statuses) and \
            statuses[-1]["mqtt"]["verdicts_skipped"] >= 3
    out, sub = on_a_slow_disk(broker, calibrated, synth_data, tmp_path, "mqtt", "verdict_max_age_s = 1.0",
                              "fsync,fdatasync", 1.2, until)
    live = [p for t, p, retained in sub.messages if t == "adgan/st1/verdict" and not retained]
    assert live == [], (live, out)                    # each left 1.2 s or more after its decision
    status = sub.documents("adgan/st1/status")[-1]
    assert status["outbox"]["slow_writes"] >= 3 and status["outbox"]["slowest_write_s"] >= 1.2, status["outbox"]
    # said once each (at most every 60 s), with the time it took
    assert out.count("storing an event took 1.") == 1, out
    assert out.count("not published: its event had not left 1.") == 1, out
    events = sub.documents("adgan/st1/events")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["latency_ms"]["total_ms"] < 1000 for e in events), [e["latency_ms"] for e in events]


def test_a_loop_stuck_on_the_disk_is_said_with_where_each_thread_is(broker, calibrated, synth_data, tmp_path):
    """A flush that does not return for seconds (an SD card stalling) holds the inspection loop.
    Under systemd its watchdog then kills the agent, and the journal said only "Watchdog timeout".
    The loop's stall is now said with every thread's stack, and its recovery."""
    metrics, scrapes = free_port(), []

    def until(sub):
        if len(scrapes) < 5 and any(s["loop"]["stalls"] >= 1 for s in sub.documents("adgan/st1/status")):
            t0 = time.monotonic()  # the loop is held in a flush: a scrape must not wait for the disk
            text = scrape(f"http://127.0.0.1:{metrics}/metrics")
            scrapes.append((time.monotonic() - t0, "adgan_outbox_depth" in text))
            return False
        return len(scrapes) == 5 and any(s["loop"]["stalls"] >= 2 and s["loop"]["longest_s"] >= 3.0
                                         for s in sub.documents("adgan/st1/status"))
    out, _ = on_a_slow_disk(broker, calibrated, synth_data, tmp_path, "health", "stall_s = 1.5\nframe_timeout_s = 0.5",
                            "fdatasync", 3.0, until, extra=f"[metrics]\nenabled = true\nport = {metrics}\n")
    # it used to wait for the flush (up to 3 s here; a scrape times out at 10 s by default)
    assert all(took < 1.5 and complete for took, complete in scrapes), scrapes
    # every part stalls: said once (at most every 60 s), with the stacks
    assert out.count("the inspection loop has not come round for 2 s (health.stall_s)") == 1, out
    stack = out[out.index("has not come round"):]
    assert "Current thread" in stack or "Thread 0x" in stack, stack[:3000]
    assert 'outbox.py", line' in stack and "in put" in stack, stack[:3000]  # where it waits: storing an event
    assert out.count("the inspection loop came round again after 3.") == 1, out


def test_a_request_that_waits_past_max_wait_s_for_its_turn_is_answered_as_not_inspected(broker, two_classes,
                                                                                        synth_data, tmp_path):
    """Every SQLite flush takes 2 s, so each event holds the loop that long: a named part asked for
    meanwhile waits for its turn. Until 2026-12-07 it was inspected when its turn came, however late,
    on the frame of that moment (a probe: a part inspected 17.6 s after its request, under its id)."""
    import json

    from tests.agent.test_service_triggers import commands_ready, events, hang_up, mqtt_station, once
    cfg, sub, cmd, _ = mqtt_station(broker, two_classes, synth_data, tmp_path, loop=True)
    cfg.write_text(cfg.read_text().replace('mode = "mqtt"', 'mode = "mqtt"\nmax_wait_s = 1.0'))
    agent = AgentProcess(cfg, tmp_path / "agent.log", wrap=slow_disk("fdatasync", 2.0))
    sent: dict[str, float] = {}
    try:
        assert sub.wait_for(commands_ready, 90), agent.output()
        for i in range(4):
            sent[f"P{i}"] = time.monotonic()
            cmd.publish("adgan/st1/trigger/set", json.dumps({"part_id": f"P{i}"}), qos=1).wait_for_publish(5)
            time.sleep(0.3)
        assert sub.wait_for(lambda m: set(sent) <= {e["part_id"] for e in events(sub)}, 90), agent.output()
        assert sub.wait_for(lambda m: sub.documents("adgan/st1/status")[-1]["counters"]["requests_late"] >= 1, 30)
        assert agent.terminate(60) == 0
    finally:
        agent.stop()
        hang_up(cmd, sub)
    got = [e for e in once(events(sub)) if e["part_id"] in sent]
    assert sorted(e["part_id"] for e in got) == sorted(sent), got  # each answered once
    by = {e["part_id"]: e for e in got}
    assert by["P0"]["verdict"] in ("ok", "anomaly"), by["P0"]         # taken at once
    assert by["P1"]["verdict"] == "error", by["P1"]                    # its turn came 2 s on: not inspected
    assert by["P1"]["error"].startswith("a part not inspected: it waited ") and \
        "more than trigger.max_wait_s (1 s)" in by["P1"]["error"], by["P1"]
    # none inspected: the others came while P1 waited (max_pending 1)
    assert [e["part_id"] for e in got if e["verdict"] in ("ok", "anomaly")] == ["P0"], got
