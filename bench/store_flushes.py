"""How long a part waits for its event to be stored, on a disk that is slow to flush.

Each inspected part takes a sequence number and stores its event in the outbox before the
event (and its live verdict) can leave; the broker's acknowledgement then deletes it. On an SD
card or a worn eMMC a flush (fsync, fdatasync) can take tens of milliseconds to seconds. This
runs the outbox as the agent does (a part every --interval-ms, its acknowledgement from another
thread 5 ms after it is stored, as paho's), in a child process whose flushes the kernel delays
by --delay-ms (strace's fault injection), and reports the time from the decision to the stored
event, and the flushes per part. With --backlog N it first stores N events (an outage's), then
has the broker acknowledge them all at once (their deletes) while parts go on, as after an
outage, and reports how long the backlog took to leave and what the parts waited meanwhile.

    .venv/bin/python bench/store_flushes.py --parts 60 --delay-ms 50
    .venv/bin/python bench/store_flushes.py --backlog 1000 --delay-ms 50
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from agent.mqtt.outbox import Outbox
folder, parts, interval = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ob = Outbox(folder / "outbox.sqlite", reserve_bytes=0)
payload = b"x" * 1500
waits = []

def ack_later(eid):
    time.sleep(0.005)
    ob.ack(eid)

for i in range(parts):
    t0 = time.monotonic()
    ob.next_seq()
    ob.put(f"e{i}", "adgan/st1/events", payload)
    waits.append(time.monotonic() - t0)
    threading.Thread(target=ack_later, args=(f"e{i}",)).start()
    time.sleep(max(0.0, interval - (time.monotonic() - t0)))
time.sleep(0.5)
assert len(ob) == 0, len(ob)
ob.close()
print("RESULT " + json.dumps(waits), flush=True)
"""


BACKLOG_CHILD = r"""
import json, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from agent.mqtt.outbox import Outbox
folder, interval = Path(sys.argv[1]), float(sys.argv[3])
ob = Outbox(folder / "outbox.sqlite", reserve_bytes=0)
backlog = [p.event_id for p in ob.pending()]
done = threading.Event()
t_start = time.monotonic()

def acks():
    for eid in backlog:
        ob.ack(eid)
    done.set()

threading.Thread(target=acks).start()
waits, i = [], 0
while not done.is_set():
    t0 = time.monotonic()
    ob.next_seq()
    ob.put(f"live{i}", "adgan/st1/events", b"y" * 1500)
    waits.append(time.monotonic() - t0)
    ob.ack(f"live{i}")
    i += 1
    done.wait(max(0.0, interval - (time.monotonic() - t0)))
drain = time.monotonic() - t_start
assert len(ob) == 0, len(ob)
ob.close()
print("RESULT " + json.dumps({"drain_s": drain, "waits": waits}), flush=True)
"""


def fill(folder: Path, n: int) -> None:
    """An outage's backlog: n stored events, none acknowledged (written without a delay)."""
    code = ("import sys; sys.path.insert(0, sys.argv[3])\nfrom pathlib import Path\n"
            "from agent.mqtt.outbox import Outbox\n"
            "ob = Outbox(Path(sys.argv[1]) / 'outbox.sqlite', reserve_bytes=0)\n"
            "for i in range(int(sys.argv[2])):\n    ob.next_seq(); ob.put(f'b{i}', 'adgan/st1/events', b'x' * 1500)\n"
            "ob.close()")
    subprocess.run([sys.executable, "-c", code, str(folder), str(n), str(ROOT)], check=True, timeout=600)


def run_backlog(n: int, interval_s: float, delay_ms: float, folder: Path) -> dict:
    fill(folder, n)
    out = _traced(BACKLOG_CHILD, 0, interval_s, delay_ms, folder, timeout=n * (delay_ms / 1e3 + 0.01) * 4 + 120)
    waits = sorted(1e3 * w for w in out["result"]["waits"])
    return {"drain_s": out["result"]["drain_s"], "parts": len(waits), "median_ms": statistics.median(waits),
            "max_ms": waits[-1], "calls": out["calls"]}


def _traced(child: str, parts: int, interval_s: float, delay_ms: float, folder: Path, timeout: float) -> dict:
    strace = shutil.which("strace")
    if strace is None:
        sys.exit("strace is needed (apt-get install strace)")
    trace = folder / "strace.txt"
    cmd = [strace, "-f", "-qq", "-c", "-o", str(trace), "-e", "trace=fsync,fdatasync"]
    if delay_ms > 0:
        cmd += ["-e", f"inject=fsync,fdatasync:delay_exit={int(delay_ms * 1000)}"]
    cmd += [sys.executable, "-c", child, str(folder), str(parts), str(interval_s), str(ROOT)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    m = re.search(r"^RESULT (.*)$", r.stdout, re.M)
    if r.returncode or not m:
        sys.exit(f"the child failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    calls = {name: int(n) for n, name in re.findall(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$",
                                                      trace.read_text(), re.M) if name != "total"}
    return {"result": json.loads(m.group(1)), "calls": calls}


def run(parts: int, interval_s: float, delay_ms: float, folder: Path) -> dict:
    out = _traced(CHILD, parts, interval_s, delay_ms, folder, timeout=parts * (interval_s + 1) + 120)
    waits = sorted(1e3 * w for w in out["result"])
    return {"median_ms": statistics.median(waits), "p90_ms": waits[int(0.9 * (len(waits) - 1))],
            "flushes_per_part": sum(out["calls"].values()) / parts, "calls": out["calls"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=60)
    ap.add_argument("--interval-ms", type=float, default=150.0, help="a part's capture and score (default 150)")
    ap.add_argument("--delay-ms", type=float, action="append", help="flush delays to run (default 0 and 50)")
    ap.add_argument("--dir", type=Path, default=None, help="where the outbox goes (default: a temporary folder)")
    ap.add_argument("--backlog", type=int, default=0, help="an outage's backlog of N events to acknowledge at once")
    a = ap.parse_args(argv)
    for delay in a.delay_ms or [0.0, 50.0]:
        with tempfile.TemporaryDirectory(dir=a.dir) as d:
            if a.backlog:
                res = run_backlog(a.backlog, a.interval_ms / 1e3, delay, Path(d))
                print(f"flush delay {delay:5.0f} ms: a backlog of {a.backlog} acknowledged in {res['drain_s']:6.1f} s; "
                      f"{res['parts']} parts meanwhile waited median {res['median_ms']:7.1f} ms (max "
                      f"{res['max_ms']:7.1f}); {res['calls']}", flush=True)
                continue
            res = run(a.parts, a.interval_ms / 1e3, delay, Path(d))
        print(f"flush delay {delay:5.0f} ms: decision -> event stored median {res['median_ms']:7.1f} ms "
              f"(p90 {res['p90_ms']:7.1f}); flushes per part {res['flushes_per_part']:.2f} {res['calls']}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
