"""Parts asked for while the inspection loop is held: a PLC sends named trigger/sets at a steady
pace to a station in `mqtt` mode whose disk flushes slowly (strace delays every fdatasync, SQLite's,
as an SD card or a worn eMMC does), so each stored event holds the loop. Reports each part's answer
and, for a part inspected, how long after its request its frame was taken. Runs the same for each
--max-wait value (trigger.max_wait_s; 0 lifts the limit, as before 2026-12-07) in one go.

A real agent process (`adgan agent run`, ONNX Runtime), a real mosquitto, a PLC client. Not part
of `make test` (a minute or two per value).

    .venv/bin/python bench/late_requests.py --bundle out/demo/bundles/sphere \\
        --thresholds out/demo/thresholds.json --source ../shared/data/paper-rgbd/sphere
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from tests.agent.conftest import AgentProcess, Broker, Subscriber, agent_config, free_port, slow_disk  # noqa: E402


def kind(event: dict) -> str:
    """How a part was answered: inspected, or why it was not (a known reason's name, else its first words)."""
    if event["verdict"] in ("ok", "anomaly"):
        return "inspected"
    why = (event.get("error") or "").split(": ", 1)[-1]
    return "waited past max_wait_s" if "for its turn, more than trigger.max_wait_s" in why else \
        "frame past max_wait_s" if "after its request, more than trigger.max_wait_s" in why else \
        "came while one waited" if "inspection(s) waited" in why else why[:60]


def run(a, max_wait: float, tmp: Path) -> dict:
    """One station run: when each part was sent (wall clock, as the events' captured_at) and every event."""
    broker = Broker(tmp, free_port())
    broker.start()
    src = f'type = "folder"\npath = "{Path(a.source).resolve()}"\nfps = 0\nloop = true'
    cfg = agent_config(tmp, broker.port, Path(a.bundle).resolve(), Path(a.thresholds).resolve(), src, trigger="mqtt")
    cfg.write_text(cfg.read_text().replace('mode = "mqtt"', f'mode = "mqtt"\nmax_wait_s = {max_wait}'))
    sub = Subscriber(broker.port, "adgan/st1/#")
    plc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-plc")
    plc.connect("127.0.0.1", broker.port)
    plc.loop_start()
    agent = AgentProcess(cfg, tmp / "agent.log", wrap=slow_disk("fdatasync", a.flush_s))
    sent: dict[str, float] = {}
    try:
        if not sub.wait_for(lambda m: any(t.endswith("/status") and json.loads(p)["mqtt"].get("commands_ready")
                                          for t, p, _ in m), 120):
            raise SystemExit(f"the agent did not come up:\n{agent.output()[-3000:]}")
        for i in range(a.parts):
            pid = f"P{i}"
            sent[pid] = time.time()
            plc.publish("adgan/st1/trigger/set", json.dumps({"part_id": pid}), qos=1).wait_for_publish(5)
            time.sleep(1.0 / a.rate)
        print(f"  max_wait_s {max_wait:g}: {a.parts} parts sent; waiting for their answers", flush=True)
        answered = lambda m: set(sent) <= {e["part_id"] for e in sub.documents("adgan/st1/events")}  # noqa: E731
        complete = sub.wait_for(answered, 30 + a.parts * (a.flush_s * 2 + 1))
        agent.terminate(60)
    finally:
        agent.stop()
        plc.loop_stop()
        plc.disconnect()
        sub.close()
        broker.stop()
    return {"sent": sent, "events": sub.documents("adgan/st1/events"), "complete": complete}


def report(max_wait: float, got: dict) -> None:
    sent, answers = got["sent"], collections.defaultdict(list)
    for e in got["events"]:
        answers[e["part_id"]].append(e)
    ids = {pid: {e["event_id"] for e in answers.get(pid, [])} for pid in sent}
    kinds = collections.Counter(kind(answers[pid][0]) for pid in sent if answers.get(pid))
    waits = {pid: datetime.fromisoformat(answers[pid][0]["captured_at"].replace("Z", "+00:00")).timestamp() - t
             for pid, t in sent.items() if answers.get(pid) and kind(answers[pid][0]) == "inspected"}
    late = {pid: w for pid, w in waits.items() if w >= 2.0}
    print(f"max_wait_s {max_wait:g}: {len(sent)} sent, {sum(bool(v) for v in ids.values())} answered, "
          f"{sum(len(v) > 1 for v in ids.values())} answered twice, {sum(not v for v in ids.values())} missing")
    print("  answers: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    print("  inspected, request to frame (s): " + ", ".join(f"{p} {w:.2f}" for p, w in waits.items()))
    print(f"  inspected 2 s or more after the request: {len(late)}" +
          (f" (longest {max(late.values()):.1f} s)" if late else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--thresholds", required=True)
    ap.add_argument("--source", required=True, help="a folder of samples the agent replays (looped)")
    ap.add_argument("--parts", type=int, default=12, help="named parts the PLC requests")
    ap.add_argument("--rate", type=float, default=2.0, help="parts a second")
    ap.add_argument("--flush-s", type=float, default=3.0, help="each fdatasync this many seconds late")
    ap.add_argument("--max-wait", default="0,2", help="trigger.max_wait_s values to run, comma-separated")
    a = ap.parse_args()
    for value in (float(v) for v in a.max_wait.split(",")):
        with tempfile.TemporaryDirectory(prefix="late-requests-") as tmp:
            got = run(a, value, Path(tmp))
        report(value, got)
        if not got["complete"]:
            print("  (not every part was answered within the wait)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
