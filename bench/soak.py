"""Soak of the agent's delivery path: the outbox and publisher the agent uses, driven by a
producer process at a fixed rate, through a real mosquitto, with repeated faults:
broker outages (stopped and started), a frozen broker (SIGSTOP), producer SIGKILLs (also
during an outage), and a full disk under the outbox (a small tmpfs filled with a file)
during an outage.

It reports events produced, delivered, lost and duplicated, repeated sequence numbers and
the producer's resident memory, as one table. Not part of `make test` (minutes, needs root
for the tmpfs; without root the full-disk faults are skipped and said so).

    .venv/bin/python bench/soak.py --events 100000 --rate 400

Scoring is left out on purpose: 100,000 inspections at ~130 ms would take hours, and the
search has nothing to do with delivery. What `adgan agent run` adds on top (status,
verdicts, commands) goes through the same Publisher.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.agent.conftest import fill_file_system, free_port  # noqa: E402  (the tests' own helpers)


# -- the producer (a separate process, killed and restarted) -------------------------------
def produce(port: int, box: Path, produced_log: Path, total: int, rate: float) -> int:
    from agent.mqtt.outbox import Outbox
    from agent.mqtt.publisher import Publisher
    from agent.settings import MqttSettings

    ob = Outbox(box / "outbox.sqlite")
    pub = Publisher("soak", ob, MqttSettings(port=port, keepalive_s=5))
    pub.client.reconnect_delay_set(0.2, 2)
    pub.start()
    done = sum(1 for _ in open(produced_log)) if produced_log.exists() else 0
    fd = os.open(produced_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    t0, n = time.monotonic(), 0
    while done + n < total:
        seq = ob.next_seq()
        eid = str(uuid.uuid4())
        pub.publish_event({"event_id": eid, "seq": seq, "verdict": "ok" if seq % 7 else "anomaly",
                           "score": 0.1, "station": "soak", "pad": "x" * 300})
        os.write(fd, f"{eid} {seq}\n".encode())  # one append: a kill never leaves half a line
        n += 1
        ahead = t0 + n / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    os.close(fd)
    ok = pub.flush(600)
    pub.stop()
    ob.close()
    return 0 if ok else 3


# -- the harness -------------------------------------------------------------------------
class Mosquitto:
    def __init__(self, work: Path, port: int) -> None:
        self.port, self.proc = port, None
        (work / "mq").mkdir()
        self.conf = work / "mosquitto.conf"
        # persistence: the subscriber's session and its queued messages survive a restart
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {work / 'mq'}/\nmax_queued_messages 0\n"
                             + ("user root\n" if os.geteuid() == 0 else ""))

    def start(self) -> None:
        from adgan.broker import wait_for_port
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not wait_for_port(self.port, self.proc, 10):
            raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Collector:
    """A persistent-session subscriber (clean_session False): what the broker took is delivered."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        self.ids: list[str] = []
        self.seqs: dict[int, set[str]] = {}
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-collector", clean_session=False)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("adgan/soak/events", qos=1)
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.2, 2)
        self.c.connect_async("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on_message(self, c, u, msg) -> None:
        e = json.loads(msg.payload)
        with self.lock:
            self.ids.append(e["event_id"])
            self.seqs.setdefault(e["seq"], set()).add(e["event_id"])

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="events to produce in all (default 100000)")
    ap.add_argument("--rate", type=float, default=400.0, help="events per second (default 400)")
    ap.add_argument("--fault-every", type=float, default=12.0, help="seconds between faults (default 12)")
    ap.add_argument("--tmpfs-mb", type=int, default=32, help="size of the outbox's file system (default 32)")
    ap.add_argument("--faults", default="outage,sigkill,full_disk,freeze,sigkill_in_outage",
                    help="the cycle of faults, comma-separated (default: all five; leave out the kills to watch "
                         "one producer's memory over the whole run)")
    ap.add_argument("--producer", nargs=4, metavar=("PORT", "BOX", "LOG", "TOTAL"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.producer:
        port, box, log, total = a.producer
        return produce(int(port), Path(box), Path(log), int(total), a.rate)

    work = Path(tempfile.mkdtemp(prefix="adgan-soak-"))
    box = work / "box"
    box.mkdir()
    tmpfs = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={a.tmpfs_mb}m", "tmpfs", str(box)], capture_output=True).returncode == 0
    if not tmpfs:
        print("note: no tmpfs could be mounted (root needed): the full-disk faults are skipped", file=sys.stderr)
    port = free_port()
    broker = Mosquitto(work, port)
    broker.start()
    col = Collector(port)
    time.sleep(1.0)
    log = work / "produced.txt"
    faults = {"outage": 0, "freeze": 0, "sigkill": 0, "sigkill_in_outage": 0, "full_disk": 0}
    rss: list[tuple[float, int, int]] = []   # (time, producer incarnation, kB)
    before_fault: list[tuple[int, int]] = []  # (incarnation, kB) just before each fault

    def start_producer():
        return subprocess.Popen([sys.executable, __file__, "--rate", str(a.rate), "--producer", str(port), str(box),
                                 str(log), str(a.events)], cwd=ROOT)

    prod, incarnation = start_producer(), 1
    t0 = time.monotonic()
    cycle = [f for f in a.faults.split(",") if f]
    unknown = set(cycle) - set(faults)
    if unknown:
        raise SystemExit(f"--faults: unknown {sorted(unknown)}; choose from {sorted(faults)}")
    if not tmpfs and "full_disk" in cycle:
        cycle.remove("full_disk")
    next_fault, k = t0 + a.fault_every, 0
    try:
        while True:
            rc = prod.poll()
            if rc == 0:
                break
            if rc is not None:
                if rc != -signal.SIGKILL:
                    raise RuntimeError(f"producer exited with {rc}")
                prod, incarnation = start_producer(), incarnation + 1
            kb = rss_kb(prod.pid)
            if kb:
                rss.append((time.monotonic() - t0, incarnation, kb))
            if time.monotonic() >= next_fault and cycle:
                if kb:
                    before_fault.append((incarnation, kb))
                kind = cycle[k % len(cycle)]
                k += 1
                faults[kind] += 1
                print(f"{time.monotonic() - t0:7.1f} s  fault: {kind}", file=sys.stderr, flush=True)
                if kind == "outage":
                    broker.stop()
                    time.sleep(5)
                    broker.start()
                elif kind == "freeze":
                    os.kill(broker.proc.pid, signal.SIGSTOP)
                    time.sleep(3)
                    os.kill(broker.proc.pid, signal.SIGCONT)
                elif kind == "sigkill":
                    prod.kill()
                    prod.wait(10)
                elif kind == "sigkill_in_outage":
                    broker.stop()
                    time.sleep(2)
                    prod.kill()
                    prod.wait(10)
                    prod, incarnation = start_producer(), incarnation + 1
                    time.sleep(3)
                    broker.start()
                elif kind == "full_disk":
                    # the disk fills, then the broker goes too: the backlog has nowhere to go
                    # but memory (with the broker up, SQLite reuses its free pages and WAL)
                    filler = fill_file_system(box)
                    broker.stop()
                    time.sleep(8)
                    broker.start()
                    time.sleep(3)
                    filler.unlink()
                next_fault = time.monotonic() + a.fault_every
            time.sleep(0.5)
        produced = [line.split() for line in log.read_text().splitlines() if line.strip()]
        want = {eid for eid, _ in produced}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with col.lock:
                if want <= set(col.ids):
                    break
            time.sleep(0.5)
        time.sleep(2.0)
        with col.lock:
            got, seqs = list(col.ids), {s: set(v) for s, v in col.seqs.items()}
    finally:
        if prod.poll() is None:
            prod.kill()
        col.close()
        broker.stop()
        if tmpfs:
            subprocess.run(["umount", "-l", str(box)], capture_output=True)
    elapsed = time.monotonic() - t0
    lost = len(want - set(got))
    dup = len(got) - len(set(got))
    repeated_seq = sum(1 for ids in seqs.values() if len(ids) > 1)
    produced_seqs = [int(s) for _, s in produced]
    backwards = sum(1 for x, y in zip(produced_seqs, produced_seqs[1:]) if y <= x)
    longest = max({i for _, i, _ in rss}, key=lambda i: sum(1 for _, j, _ in rss if j == i))
    life = [kb for _, i, kb in rss if i == longest]
    q = max(1, len(life) // 5)
    early, late = sorted(life[q:2 * q])[len(life[q:2 * q]) // 2], sorted(life[-q:])[len(life[-q:]) // 2]
    print(f"\nsoak: {len(want)} events at {a.rate:.0f}/s in {elapsed:.0f} s, faults "
          + ", ".join(f"{k} {v}" for k, v in faults.items()))
    print("| produced | delivered | lost | duplicated | seq repeated | seq backwards | producers | "
          "peak RSS | RSS median 2nd fifth -> last fifth (longest-lived producer) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {len(want)} | {len(set(got) & want)} | {lost} | {dup} | {repeated_seq} | {backwards} | {incarnation} | "
          f"{max(kb for _, _, kb in rss) / 1024:.1f} MiB | {early / 1024:.1f} -> {late / 1024:.1f} MiB |")
    print("producer RSS just before each fault (MiB; | marks a new producer): " + " ".join(
        ("| " if i and before_fault[i - 1][0] != inc else "") + f"{kb / 1024:.1f}"
        for i, (inc, kb) in enumerate(before_fault)))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if lost == 0 and repeated_seq == 0 and backwards == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
