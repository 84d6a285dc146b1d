"""`adgan export --budget-ms B` and `--operating-point fast|default|best`: the validated search
that fits a time budget on the machine that exports.

The points and their quality come from `bench/frontier.py` (blocked cross-validation, see
bench/RESULTS.md), shipped as export/operating_points.json: each point is a set of search
fields around the default, its cost as a ratio to the default's, and its worst-fold quality.
Cost ratios carry from machine to machine better than milliseconds, so the default point is
timed here with the run's own generator, every point's cost is estimated from its ratio, and
the best point whose estimate fits is exported to a scratch bundle and timed itself; the
first that fits is chosen. The choice, its measured cost and its validated quality go into
the manifest (`operating_point`).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from agent.scoring.bundle import SearchDefaults

POINTS_FILE = Path(__file__).with_name("operating_points.json")
NAMED = ("fast", "default", "best")
# search fields a point may set; the rest stay the export's own
POINT_FIELDS = {"k", "theta_scope", "lr_theta", "n_seed", "z_init_noise", "pool", "score_cells"}


def load_points(path: str | Path | None = None) -> dict:
    """The validated points file: {"points": {name: {"search", "cost_ratio", "quality", "pareto", ...}}}."""
    path = Path(path) if path else POINTS_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no operating points (bench/frontier.py writes them)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    pts = doc.get("points") if isinstance(doc, dict) else None
    if not isinstance(pts, dict) or "default" not in pts:
        raise ValueError(f"{path}: needs a 'points' object with a 'default' point")
    for name, p in pts.items():
        bad = set(p.get("search", {})) - POINT_FIELDS
        if bad or not isinstance(p.get("cost_ratio"), (int, float)) or not isinstance(p.get("quality"), (int, float)):
            raise ValueError(f"{path}: point {name!r} needs search fields of {sorted(POINT_FIELDS)}, a cost_ratio "
                             f"and a quality" + (f" (unknown fields {sorted(bad)})" if bad else ""))
    return doc


def search_of(base: SearchDefaults, point: dict) -> SearchDefaults:
    """The export's search with a point's fields; seeds per call follow n_seed."""
    s = replace(base, **point.get("search", {}))
    return replace(s, seeds_per_call=s.n_seed * s.parts_per_call)


def applicable(points: dict, base: SearchDefaults) -> dict:
    """The points this run can export (k 0 needs the encoder start)."""
    out = {}
    for name, p in points.items():
        try:
            search_of(base, p)
        except ValueError:
            continue
        out[name] = p
    return out


def named(points: dict, name: str) -> str:
    """fast: the cheapest point on the Pareto front; default; best: the highest quality (then the cheaper)."""
    if name not in NAMED:
        raise ValueError(f"operating point must be one of {NAMED}, got {name!r}")
    if name == "default":
        return "default"
    if name == "best":
        return max(points, key=lambda n: (points[n]["quality"], -points[n]["cost_ratio"]))
    front = [n for n, p in points.items() if p.get("pareto")] or list(points)
    return min(front, key=lambda n: (points[n]["cost_ratio"], -points[n]["quality"]))


def choose(points: dict, budget_ms: float, measure: Callable[[str], float],
           log: Callable[[str], None] = print) -> tuple[str, float, float]:
    """(point, its measured ms, the default's measured ms): the highest-quality point whose
    measured cost here fits `budget_ms`. `measure(name)` times a point on this machine."""
    if not 0 < budget_ms < float("inf"):
        raise ValueError(f"--budget-ms must be a finite number > 0, got {budget_ms}")
    base_ms = measure("default")
    log(f"default point: {base_ms:.1f} ms per score here")
    measured = {"default": base_ms}
    order = sorted(points, key=lambda n: (-points[n]["quality"], points[n]["cost_ratio"]))
    for n in order:
        est = points[n]["cost_ratio"] * base_ms
        if est > budget_ms * 1.1:  # 10%: the ratio is an estimate; the point is timed before it is taken
            continue
        if n not in measured:
            measured[n] = measure(n)
        log(f"{n}: quality {points[n]['quality']:.3f}, estimated {est:.1f} ms, measured {measured[n]:.1f} ms")
        if measured[n] <= budget_ms:
            return n, measured[n], base_ms
    cheapest = min(points, key=lambda n: points[n]["cost_ratio"])
    raise ValueError(f"no validated operating point fits {budget_ms:g} ms per score here: the cheapest, "
                     f"{cheapest!r}, takes about {points[cheapest]['cost_ratio'] * base_ms:.0f} ms (the default "
                     f"{base_ms:.0f} ms); raise the budget or use a faster engine")


def time_bundle(bundle_dir: Path, threads: int = 0, budget_s: float = 3.0) -> float:
    """Median ms per score of a bundle on ONNX Runtime (CPU) here, on part-like inputs."""
    from agent.scoring.backend import backend_settings, open_backend
    from agent.scoring.bundle import Bundle
    from agent.scoring.search import Searcher
    b = Bundle.load(bundle_dir)
    sr = Searcher(b, open_backend(b, backend_settings("onnxruntime", threads=threads)), seed=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (b.channels, b.size, b.size)).astype(np.float32)
    m = b.size // 5
    x[:, :m], x[:, -m:] = -1.0, -1.0  # a part on an empty background
    sr.score(x)
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 100):
        t = time.perf_counter()
        sr.score(x)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def pick_for_run(run, out: Path, base: SearchDefaults, budget_ms: float | None, name: str | None,
                 points_file=None, write=None, threads: int = 0) -> tuple[SearchDefaults, dict]:
    """(search, manifest record) of the operating point for a run. `write(search, dir)` exports a
    scratch bundle to time (adgan export's own writer)."""
    doc = load_points(points_file)
    if base.z_init != "encoder":  # the points set their own seeds and start noise
        raise ValueError("the operating points were validated with the search starting at E(x); this export starts "
                         f"at {base.z_init} z (train the run's encoder: 'adgan train-encoder {run} --epochs 100')")
    pts = applicable(doc["points"], base)
    if "default" not in pts:
        raise ValueError("this run cannot export the default point")
    scratch = Path(tempfile.mkdtemp(prefix=".budget-", dir=out.parent if out.parent.exists() else None))
    cache: dict[str, float] = {}

    def measure(n: str) -> float:
        if n not in cache:
            d = scratch / n
            write(search_of(base, pts[n]), d)
            cache[n] = time_bundle(d, threads)
        return cache[n]

    try:
        if budget_ms is not None:
            chosen, ms, base_ms = choose(pts, budget_ms, measure)
        else:
            chosen = named(pts, name)
            ms = measure(chosen)
            base_ms = measure("default")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    p = pts[chosen]
    record = {"name": chosen, "asked": f"--budget-ms {budget_ms:g}" if budget_ms is not None else name,
              "measured_ms": round(ms, 1), "default_ms": round(base_ms, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}",
              "threads": threads or "all", "engine": "onnxruntime/CPUExecutionProvider",
              "quality": {k: p[k] for k in ("quality", "swap_worst", "damage_worst") if k in p},
              "points": doc.get("source", str(points_file or POINTS_FILE))}
    return search_of(base, p), record
