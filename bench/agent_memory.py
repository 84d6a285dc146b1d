"""The agent's memory over a long run: a real agent process (`adgan agent run`, ONNX Runtime,
every frame inspected as fast as it can, anomaly maps on, its Prometheus endpoint scraped) and a
real mosquitto; every interval it reports the events so far, the process's resident memory, open
files and threads. A station runs for months on a Jetson whose 8 GB the GPU shares: memory that
grows with the parts inspected would end it. Not part of `make test` (minutes to days).

    .venv/bin/python bench/agent_memory.py --bundle out/demo/bundles/sphere \\
        --thresholds out/demo/thresholds.json --source ../shared/data/paper-rgbd/sphere --seconds 600

The last line is the growth per 1,000 events from the first report to the last (the first
`--warm-up` seconds, while the engine and the allocator settle, are left out).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from request_soak import station_arguments  # noqa: E402  (beside this file)
from tests.agent.conftest import AgentProcess, Broker, Subscriber, agent_config, free_port  # noqa: E402  (the tests')


def process(pid: int) -> dict:
    """Resident memory (kB), open files and threads of a process, from /proc."""
    rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
               if ln.startswith("VmRSS:"))
    return {"rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": len(os.listdir(f"/proc/{pid}/task"))}


def main() -> int:
    ap = station_arguments(__doc__, 600)
    ap.add_argument("--interval", type=float, default=60, help="seconds between reports")
    ap.add_argument("--warm-up", type=float, default=30, help="seconds before the first report")
    a = ap.parse_args()
    for p in (a.bundle, a.thresholds, a.source):
        if not Path(p).exists():
            ap.error(f"{p} does not exist")
    with tempfile.TemporaryDirectory(prefix="adgan-memory-") as tmp:
        tmp = Path(tmp)
        broker = Broker(tmp, free_port())
        broker.start()
        metrics = free_port()
        src = f'type = "folder"\npath = "{Path(a.source).resolve()}"\nloop = true\nfps = 0'
        cfg = agent_config(tmp, broker.port, Path(a.bundle).resolve(), Path(a.thresholds).resolve(), src,
                           extra=f"[metrics]\nenabled = true\nport = {metrics}\n")
        cfg.write_text(cfg.read_text().replace("[model.backend]", "anomaly_map = true\n[model.backend]"))
        sub = Subscriber(broker.port, "adgan/st1/status")
        agent = AgentProcess(cfg, tmp / "agent.log")
        rows = []
        try:
            time.sleep(a.warm_up)
            t0 = time.monotonic()
            while True:
                docs = sub.documents("adgan/st1/status")
                with sub.lock:
                    sub.messages.clear()
                if agent.proc.poll() is not None or not docs:
                    print(f"the agent stopped or said nothing:\n{agent.output()[-2000:]}", file=sys.stderr)
                    return 1
                scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read()
                row = {"s": round(time.monotonic() - t0 + a.warm_up), "events": docs[-1]["counters"]["events"],
                       "errors": docs[-1]["counters"]["error"], **process(agent.agent_pid()),
                       "metrics_kb": len(scraped) // 1024}
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                if time.monotonic() - t0 + a.interval > a.seconds - a.warm_up:
                    break
                time.sleep(a.interval)
        finally:
            agent.stop()
            sub.c.loop_stop()
            broker.stop()
    first, last = rows[0], rows[-1]
    n = last["events"] - first["events"]
    if n > 0:
        print(f"{n} events from {first['s']} s to {last['s']} s: resident memory {first['rss_kb'] / 1024:.1f} -> "
              f"{last['rss_kb'] / 1024:.1f} MB ({(last['rss_kb'] - first['rss_kb']) / n * 1000:+.1f} kB per 1,000 "
              f"events; the largest {max(r['rss_kb'] for r in rows) / 1024:.1f} MB), open files "
              f"{first['fds']} -> {last['fds']}, threads {first['threads']} -> {last['threads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
