"""bench/competing.py and bench/class_check_cost.py: the benchmark's margin is the station's
(agent/decide/class_check.py), the PCA screen separates the classes it is given, and the cost
benchmark times the check as the agent runs it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import competing  # noqa: E402

from agent.decide.class_check import margin  # noqa: E402


def test_the_benchmarks_margin_is_the_stations():
    rng = np.random.default_rng(0)
    own, a, b = rng.uniform(0.01, 1, (3, 20))
    got = competing.log_margin(own, [a, b])
    want = [margin(o, {"a": x, "b": y})[0] for o, x, y in zip(own, a, b)]
    assert np.allclose(got, want)
    assert competing.log_margin(np.zeros(1), [np.zeros(1)])[0] == margin(0.0, {"a": 0.0})[0] == 0.0


def test_the_pca_screen_and_the_cost_benchmark_run_on_the_papers_frames(paper_data):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "competing.py"), "pca", str(paper_data),
                          "--components", "4", "--folds", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if " worst " in line]
    assert {(r[0], " ".join(r[1:r.index("worst")])) for r in rows} == {
        (c, s) for c in competing.CLASSES for s in ("own", "difference", "log margin")}
    assert all(0.5 < float(r[r.index("worst") + 1]) <= 1.0 for r in rows if r[1] == "log")  # better than chance
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "class_check_cost.py"), str(paper_data / "sphere"),
                          "--n", "2", "--threads", "1", "--rivals", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "class check against 1 rivals" in out.stdout and "x the score alone" in out.stdout


def test_at_one_false_alarm_budget_the_check_shares_it_with_the_score():
    # 20 intact parts and 10 of another class: the score ranks the swaps among the intact parts,
    # the margin puts them on top; damaged twins are seen by the score only
    rng = np.random.default_rng(1)
    own = np.r_[np.arange(20.0), rng.uniform(0, 20, 10)]
    marg = np.r_[rng.uniform(-1, 0, 20), np.full(10, 5.0)]
    normal = np.r_[np.ones(20, bool), np.zeros(10, bool)]
    d_own, d_marg = np.full(4, 100.0), np.full(4, -1.0)
    r = competing.at_budget(own, marg, normal, d_own, d_marg, 0.1)
    swaps, damaged, normals, share = r["score+check"]
    assert swaps == 1.0 and damaged == 1.0 and normals <= 0.1 and share in (1, 2)
    swaps, damaged, normals, share = r["score"]
    assert normals == 0.1 and damaged == 1.0 and share is None
    assert swaps == np.mean(own[10:] > 17.0)  # two of 20 intact parts over: the threshold is the 18th
