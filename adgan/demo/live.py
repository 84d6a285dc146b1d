"""The live part of `adgan demo`: a broker, the agent as a subprocess over a camera stream, and
a subscriber that listens the way a PLC gateway would, printing a line per part.

Everything started here is a child process stopped by PID in `finally`, so Ctrl-C, SIGTERM
or a failure leave nothing running.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from adgan.broker import BrokerProcess
from adgan.demo.station import STATION, write_station_config


@dataclass
class Gateway:
    """Subscribes to adgan/<station>/#; keeps events in arrival order and prints each one."""
    port: int
    truth_of: callable
    expected_is: callable = None
    quiet: bool = False
    events: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.offline = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-plc-gateway")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"adgan/{STATION}/#", qos=1)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect_async("127.0.0.1", self.port, keepalive=10)
        self.c.loop_start()

    def _on_message(self, c, u, msg) -> None:
        if msg.topic.endswith("/availability") and msg.payload == b"offline":
            self.offline.set()
        if not msg.topic.endswith("/events"):
            return
        e = json.loads(msg.payload)
        with self.lock:
            if any(x["event_id"] == e["event_id"] for x in self.events):
                return  # at-least-once delivery: a resend has the same id
            self.events.append(e)
        line = describe(e, self.truth_of(e))
        self.lines.append(line)
        if not self.quiet:
            print(line, flush=True)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def describe(e: dict, truth: dict | None) -> str:
    v = e["verdict"]
    plc = {"ok": "OK", "anomaly": "NG"}.get(v, v.upper())
    score = f"{e['score']:.4f}" if e["score"] is not None else "   -  "
    th = f"{e['threshold']:.4f}" if e["threshold"] is not None else "   -  "
    t = ""
    if truth is not None:
        what = truth["class"] + (f"+{truth['defect']}" if truth.get("defect") else "")
        want = "NG" if truth["anomalous"] else "OK"
        mark = "" if plc not in ("OK", "NG") else ("  right" if plc == want else "  WRONG")
        t = f"  truth {what:<18} -> {want}{mark}"
    err = f"  ({e['error']})" if e.get("error") else ""
    return (f"#{e['seq']:<4} expected {e['expected_class']:<9} score {score}  threshold {th}  {plc:<9} "
            f"{e['latency_ms']['total_ms']:6.0f} ms{t}{err}")


def summarise(events: list[dict], truth_of) -> dict:
    """Parts seen, detected anomalies, misses and false alarms against the stream's ground truth."""
    s = {"events": len(events), "parts_inspected": 0, "ok": 0, "ng": 0, "no_object": 0, "errors": 0,
         "true_anomalies": 0, "detected": 0, "missed": 0, "false_alarms": 0, "correct_ok": 0}
    lat = []
    for e in events:
        v = e["verdict"]
        if v in ("no_object", "error"):
            s["no_object" if v == "no_object" else "errors"] += 1
            continue
        s["parts_inspected"] += 1
        s["ng" if v == "anomaly" else "ok"] += 1
        lat.append(e["latency_ms"]["total_ms"])
        t = truth_of(e)
        if t is None:
            continue
        if t["anomalous"]:
            s["true_anomalies"] += 1
            s["detected" if v == "anomaly" else "missed"] += 1
        else:
            s["false_alarms" if v == "anomaly" else "correct_ok"] += 1
    lat.sort()
    s["latency_ms_median"] = round(lat[len(lat) // 2], 1) if lat else None
    return s


def run_live(workdir: Path, settings: dict, truth_of, timeout_s: float, embedded_broker: bool = False,
             quiet: bool = False, before_agent=None) -> tuple[list[dict], list[str], dict]:
    """Start a broker, write the station's settings with its port to workdir/agent.toml, run
    `before_agent(config, env)` and then the agent, and listen until the agent has finished;
    stop both by PID."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = agent = gw = None
    previous = signal.signal(signal.SIGTERM, _raise_exit) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        broker = BrokerProcess(workdir, embedded=embedded_broker)
        print(f"broker: {broker.kind} on 127.0.0.1:{broker.port} (pid {broker.pid})")
        config = workdir / "agent.toml"
        mqtt = {**settings.get("mqtt", {}), "port": broker.port}
        if broker.kind == "amqtt":  # (it speaks MQTT 3.1.1 only: "auto" would find that out after 10 s)
            mqtt["protocol"] = "3.1.1"
        station = write_station_config(config, {**settings, "mqtt": mqtt})
        if station.web.enabled:
            print(f"operator's page: http://{station.web.host}:{station.web.port}/ (while the agent runs)")
        if station.metrics.enabled:
            print(f"metrics: http://{station.metrics.host}:{station.metrics.port}/metrics (Prometheus, while the "
                  "agent runs)")
        env = dict(os.environ)
        if before_agent is not None:
            before_agent(config, env)
        gw = Gateway(broker.port, truth_of, quiet=quiet)
        if not gw.subscribed.wait(10):
            raise RuntimeError("the demo's subscriber could not subscribe to the broker")
        log = open(workdir / "agent.log", "wb")
        agent = subprocess.Popen([sys.executable, "-m", "adgan_edge", "agent", "run", "--config", str(config),
                                  "--env-file", os.devnull], stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"agent: pid {agent.pid}, log {workdir / 'agent.log'}; events as a PLC gateway sees them:")
        try:
            rc = agent.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the agent did not finish within {timeout_s:.0f} s (see {workdir / 'agent.log'})") \
                from None
        if rc != 0:
            raise RuntimeError(f"the agent exited with {rc}: {(workdir / 'agent.log').read_text()[-2000:]}")
        gw.offline.wait(10)  # the agent's last act is 'offline', after its events
        with gw.lock:
            events = sorted(gw.events, key=lambda e: e["seq"])
        return events, list(gw.lines), summarise(events, truth_of)
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        if gw is not None:
            gw.close()
        if broker is not None:
            broker.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)

