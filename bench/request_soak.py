"""Soak of the request path: a PLC sends named trigger/sets at a steady rate while the agent is
SIGKILLed and restarted again and again, and (with --broker-restarts) the broker is restarted
too, with persistence, as a station's broker should run; (with --stops) the agent's process is
stopped for 3-8 s (SIGSTOP, then SIGCONT: Ctrl-Z, a container paused). Every part the PLC sent must
be answered, none twice, and none sent while the process was stopped inspected (agent/request_journal.py,
agent/mqtt/commands.py, agent/mqtt/frozen.py).

A real agent process (`adgan agent run`, ONNX Runtime), a real mosquitto, a PLC client and a
gateway client with kept sessions (as a PLC and a SCADA gateway would run). Reports the parts
sent (and those whose PUBACK the PLC never saw: handed to paho while the broker restarted, and
sent on its reconnect), answered, missing, answered twice, how they were answered, repeated sequence
numbers. Not part of `make test` (minutes).

    .venv/bin/python bench/request_soak.py --bundle out/demo/bundles/sphere \\
        --thresholds out/demo/thresholds.json --source ../shared/data/paper-rgbd/sphere --seconds 90
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from tests.agent.conftest import AgentProcess, Broker, agent_config, free_port, slow_disk  # noqa: E402  (the tests')


def kept_client(cid: str, port: int, on_message=None, topic: str | None = None) -> mqtt.Client:
    """A 3.1.1 client with a kept session (the broker holds its messages while it is away)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    if topic:
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
    c.on_message = on_message
    c.reconnect_delay_set(0.2, 1)
    c.connect("127.0.0.1", port, keepalive=5)
    c.loop_start()
    return c


def acked(info, deadline: float) -> bool:
    """Whether the broker acknowledged it (waiting until `deadline`). One handed to paho while the PLC
    was not connected says so for good (paho sends it on its reconnect, and the broker's PUBACK is
    not told): counted apart, as not seen."""
    while True:
        try:
            if info.is_published():
                return True
        except RuntimeError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def named(event: dict) -> list[str]:
    """The parts an event answers: its part_id, or those of a merged answer (joined by commas)."""
    return (event.get("part_id") or "").split(",") if event.get("part_id") else []


def said_dropped(log: str) -> int:
    """The broker's count of dropped messages as an agent's log said it (agent/mqtt/broker_drops.py): the
    count at its first sight, and the rises after it."""
    first = re.findall(r"the broker has dropped (\d+) messages since it started", log)
    return (int(first[0]) if first else 0) + sum(int(n) for n in re.findall(r"the broker dropped (\d+) more", log))


def station_arguments(doc: str, seconds: float) -> argparse.ArgumentParser:
    """The options of a bench that runs a real agent: its bundle, thresholds, the samples it replays, how long."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--thresholds", required=True)
    ap.add_argument("--source", required=True, help="a folder of samples the agent replays (looped)")
    ap.add_argument("--seconds", type=float, default=seconds)
    return ap


def main() -> int:
    ap = station_arguments(__doc__, 90)
    ap.add_argument("--rate", type=float, default=4, help="parts a second the PLC requests")
    ap.add_argument("--kill-every", default="2:6", help="MIN:MAX seconds between faults")
    ap.add_argument("--broker-restarts", type=float, default=0.4, help="the share of faults that restart the broker")
    ap.add_argument("--slow-fsync", type=float, default=0.0, help="run the agent with every fsync this many seconds "
                                                                      "late (strace: an SD card)")
    ap.add_argument("--protocol", default="auto", choices=("auto", "3.1.1", "5"), help="the agent's mqtt.protocol")
    ap.add_argument("--backlog", type=int, default=0, help="first stop the agent, send this many parts, and start it "
                                                            "again: a backlog the broker held (beyond its queue "
                                                            "limit, mosquitto's max_queued_messages 1000, it drops "
                                                            "them: the agent says how many, 'broker said dropped')")
    ap.add_argument("--stops", type=float, default=0.0, help="the share of faults that stop the agent's process for "
                                                              "3-8 s (SIGSTOP, SIGCONT) instead of killing it")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    lo, hi = (float(v) for v in a.kill_every.split(":"))
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="request-soak-"))
    broker = Broker(tmp, free_port())
    broker.conf.write_text(broker.conf.read_text().replace(
        "persistence false", f"persistence true\npersistence_location {tmp}/\nautosave_interval 1\nuser root"))
    broker.start()
    src = f'type = "folder"\npath = "{Path(a.source).resolve()}"\nfps = 0\nloop = true'
    cfg = agent_config(tmp, broker.port, Path(a.bundle).resolve(), Path(a.thresholds).resolve(), src, trigger="mqtt")
    cfg.write_text(cfg.read_text().replace('mode = "mqtt"', 'mode = "mqtt"\nmax_pending = 50')
                   .replace("[mqtt]\n", f'[mqtt]\nprotocol = "{a.protocol}"\n'))
    events: list[dict] = []
    lock = threading.Lock()

    def got(c, u, m):
        with lock:
            events.append(json.loads(m.payload))
    gateway = kept_client("soak-gateway", broker.port, got, "adgan/st1/events")
    plc = kept_client("soak-plc", broker.port)
    wrap = slow_disk("fsync", a.slow_fsync) if a.slow_fsync else None
    agents = [AgentProcess(cfg, tmp / "agent0.log", wrap=wrap)]
    time.sleep(8)  # (the first start: models loaded)
    infos, stop, faults = [], threading.Event(), collections.Counter()
    sent_at: dict[str, float] = {}  # part -> when the PLC sent it (monotonic)
    stopped: list[tuple[float, float]] = []  # when the agent's process was stopped, and continued
    if a.backlog:
        agents[-1].terminate(30)
        for i in range(a.backlog):
            infos.append((f"B{i}", plc.publish("adgan/st1/trigger/set", json.dumps({"part_id": f"B{i}"}), qos=1)))
            infos[-1][1].wait_for_publish(10)
        agents.append(AgentProcess(cfg, tmp / f"agent{len(agents)}.log", wrap=wrap))
        faults["backlog held"] = a.backlog

    def request() -> None:
        i = 0
        while not stop.is_set():
            pid = f"P{i}"
            i += 1
            sent_at[pid] = time.monotonic()
            infos.append((pid, plc.publish("adgan/st1/trigger/set", json.dumps({"part_id": pid}), qos=1)))
            time.sleep(1 / a.rate)
    t = threading.Thread(target=request, daemon=True)
    t.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.seconds:
        time.sleep(rng.uniform(lo, hi))
        r = rng.random()
        if r < a.broker_restarts:
            broker.stop()
            time.sleep(rng.uniform(0.5, 3))
            broker.start()
            faults["broker restarts"] += 1
        elif r < a.broker_restarts + a.stops:
            os.kill(agents[-1].proc.pid, signal.SIGSTOP)
            began = time.monotonic()
            time.sleep(rng.uniform(3, 8))
            stopped.append((began, time.monotonic()))
            os.kill(agents[-1].proc.pid, signal.SIGCONT)
            faults["agent stops"] += 1
        else:
            agents[-1].kill()
            agents.append(AgentProcess(cfg, tmp / f"agent{len(agents)}.log", wrap=wrap))
            faults["agent SIGKILLs"] += 1
    stop.set()
    t.join()
    deadline = time.monotonic() + 60
    sent = [pid for pid, info in infos if acked(info, deadline)]
    unacked = [pid for pid, info in infos if pid not in set(sent)]
    asked = [pid for pid, _ in infos]
    end = time.monotonic() + 180 + 0.3 * a.backlog
    polls = 0
    while time.monotonic() < end:
        with lock:
            missing = set(asked) - {p for e in events for p in named(e)}
        if not missing:
            break
        polls += 1  # (the agents' logs, read every 5 s: no more missing than the broker said it dropped, which
        if polls % 10 == 0 and len(missing) <= max(said_dropped(log.read_text(errors="replace"))  # never come)
                                                   for log in tmp.glob("agent*.log")):
            break
        time.sleep(0.5)
    time.sleep(3)
    agents[-1].terminate(30)
    gateway.loop_stop()
    plc.loop_stop()
    broker.stop()
    unique = {e["event_id"]: e for e in events}.values()
    by = collections.defaultdict(set)
    for e in unique:
        for pid in named(e):
            by[pid].add(e["event_id"])
    how = collections.Counter("held" if "held its trigger" in (e.get("error") or "") else
                              "left by a kill" if "stopped before answering" in (e.get("error") or "") else
                              "came while stopped" if "did not run for" in (e.get("error") or "") else
                              e["verdict"] for e in unique)
    late = [pid for e in unique if e["verdict"] in ("ok", "anomaly") for pid in named(e)
            if any(b <= sent_at.get(pid, -1) <= c for b, c in stopped)]  # (inspected, sent while stopped)
    after = [pid for e in unique if "did not run for" in (e.get("error") or "") for pid in named(e)
             if not any(b <= sent_at.get(pid, -1) <= c for b, c in stopped)]  # (said so, sent after the stop)
    seqs = [e["seq"] for e in unique]
    logs = [log.read_text(errors="replace") for log in tmp.glob("agent*.log")]
    drops = sum(text.count("MQTT disconnected") for text in logs)
    said = max([said_dropped(text) for text in logs] or [0])  # (the broker's count as an agent last said it)
    print(f"faults: {dict(faults)}; {a.seconds:.0f} s at {a.rate:g} parts/s"
          + (f"; every fsync {a.slow_fsync:g} s late" if a.slow_fsync else "") + f"; mqtt.protocol {a.protocol}")
    print("| parts sent | PUBACK not seen by the PLC | answered | missing (PUBACK seen) | answered twice | "
          "how answered | seq repeated | links dropped | broker said dropped | inspected though sent while "
          "stopped | said stopped, sent after it |")
    print(f"| {len(asked)} | {len(unacked)} | {sum(1 for p in asked if p in by)} | "
          f"{sum(1 for p in sent if p not in by)} | {sum(1 for p in asked if len(by.get(p, ())) > 1)} | "
          f"{', '.join(f'{k} {v}' for k, v in sorted(how.items()))} | {len(seqs) - len(set(seqs))} | {drops} | "
          f"{said} | {len(late)} | {len(after)} |")
    for pid in after:  # (how far from the nearest stop each was sent: a part read before the fence came back)
        t = sent_at[pid]
        gap = min(((b - t, "before it began") if t < b else (t - c, "after it ended") for b, c in stopped),
                  default=(float("nan"), "(no stop)"))
        print(f"  said stopped, sent after it: {pid} sent {gap[0]:.3f} s {gap[1]}")
    print(f"(logs in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
