"""What keeping requests across kills costs (agent/request_journal.py): a part requested, taken
and answered, with and without the journal, on the file system of a folder given.

    .venv/bin/python bench/request_journal.py /var/lib/adgan --parts 300
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

from agent.request_journal import RequestJournal  # noqa: E402
from agent.trigger import CommandTrigger  # noqa: E402


def run(journal, n: int) -> tuple[float, float, float]:
    """(ms per part: request, take, answer; the request's median and 99th percentile, ms)."""
    t = CommandTrigger(max_pending=4, journal=journal)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        a = time.perf_counter()
        t.request(part_id=f"P{i}")
        lat.append(time.perf_counter() - a)
        t.answered(t.take(0).r)
    lat.sort()
    return (time.perf_counter() - t0) / n * 1e3, lat[n // 2] * 1e3, lat[int(n * 0.99)] * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="a folder on the file system the outbox lives on")
    ap.add_argument("--parts", type=int, default=300)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.folder) as d:
        for name, journal in (("no journal", None), ("journal", RequestJournal(Path(d) / "outbox.db"))):
            per, med, p99 = run(journal, a.parts)
            if journal is not None:
                journal.settle()  # (its thread's last write, before the folder goes)
            print(f"{name:11s} {per:.3f} ms per part (requested, taken, answered); the request: median {med:.3f} ms, "
                  f"p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
