"""The Prometheus endpoint of a running agent, scraped over loopback (issue 17)."""
from __future__ import annotations

import re
import resource
import time

from tests.agent.conftest import AgentProcess, Subscriber, agent_config, free_port, scrape
from tests.agent.test_service import mixed_folder


def value(text: str, name: str, **labels) -> float:
    """One sample's value from the exposition text."""
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}{re.escape('{' + lab + '}') if lab else ''} (\S+)$", text, re.M)
    assert m, f"{name} {labels} not in:\n{text}"
    return float(m.group(1))


def statuses(sub):
    return sub.documents("adgan/st1/status")


def test_a_running_agent_serves_its_metrics(broker, calibrated, synth_data, tmp_path):
    bundle, thresholds = calibrated
    n = mixed_folder(synth_data, tmp_path / "samples")
    port = free_port()
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds,
                       f'type = "folder"\npath = "{tmp_path / "samples"}"\nfps = 20\nloop = true',
                       extra=f"[metrics]\nenabled = true\nport = {port}\n")
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        deadline = time.monotonic() + 60
        while True:  # until a full pass over the folder has been scored
            text = scrape(f"http://127.0.0.1:{port}/metrics", timeout=30)
            scoring = 'adgan_stage_seconds_count{stage="score"}' in text  # no sample before the first score
            if scoring and value(text, "adgan_stage_seconds_count", stage="score") >= n or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        scored = value(text, "adgan_stage_seconds_count", stage="score")
        assert scored >= n, agent.output()
        verdicts = value(text, "adgan_verdicts_total", **{"class": "sphere", "verdict": "ok"}) + \
            value(text, "adgan_verdicts_total", **{"class": "sphere", "verdict": "anomaly"})
        assert verdicts >= n and value(text, "adgan_frames_total") >= verdicts
        assert value(text, "adgan_stage_seconds_bucket", le="+Inf", stage="score") == scored
        assert value(text, "adgan_stage_seconds_sum", stage="score") > 0
        assert value(text, "adgan_engine_warm") == 1 and value(text, "adgan_mqtt_connected") == 1
        assert value(text, "adgan_source_running") == 1 and value(text, "adgan_frames_dropped_total") == 0
        assert value(text, "adgan_parts_not_inspected_total") == 0
        assert value(text, "adgan_internal_errors_total") == 0
        assert value(text, "adgan_requests_late_total") == 0
        assert value(text, "adgan_outbox_depth") >= 0 and value(text, "adgan_outbox_dropped_events_total") == 0
        assert value(text, "adgan_outbox_unsaved") == 0 and value(text, "adgan_outbox_reserve_held") == 1
        assert value(text, "adgan_outbox_reserve_released_total") == 0 and value(text, "adgan_clock_jumps_total") == 0
        for name in ("events_rejected", "messages_refused", "events_unconfirmed", "sessions_lost", "broker_dropped"):
            assert value(text, f"adgan_mqtt_{name}_total") == 0, name
        assert value(text, "adgan_process_freezes_total") == 0
        # the process's own: open files against its limit, memory
        limit = resource.prlimit(agent.agent_pid(), resource.RLIMIT_NOFILE)[0]
        assert value(text, "process_max_fds") == limit and 0 < value(text, "process_open_fds") < limit
        assert value(text, "process_resident_memory_bytes") > 10e6
        assert sub.wait_for(lambda m: any(s["interfaces"]["metrics"].get("state") == "serving"
                                          for s in statuses(sub)))
        assert statuses(sub)[-1]["mqtt"]["protocol"] == "5"  # the default, auto, against mosquitto
        assert agent.terminate() == 0
    finally:
        agent.stop()
        sub.close()


def test_a_taken_port_is_reported_and_inspection_goes_on(broker, calibrated, synth_data, tmp_path, taken_port):
    bundle, thresholds = calibrated
    n = mixed_folder(synth_data, tmp_path / "samples")
    port = taken_port
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds,
                       f'type = "folder"\npath = "{tmp_path / "samples"}"\nfps = 0',
                       extra=f"[metrics]\nenabled = true\nport = {port}\n")
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert agent.wait(120) == 0, agent.output()
        assert sub.wait_for(lambda m: sum(t == "adgan/st1/events" for t, _, _ in m) >= n)
        metrics = [s["interfaces"]["metrics"] for s in statuses(sub)]
        assert metrics and all(m["state"] == "error" for m in metrics), metrics
        assert f"127.0.0.1:{port}" in metrics[-1]["error"]
        assert "inspection goes on without them" in agent.output()
    finally:
        agent.stop()
        sub.close()
