"""bench/damage_sizes.py: the same defects at several sizes, evaluated on one bundle."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import damage_sizes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_a_sweep_grows_the_defects_and_reports_every_scale(bundles, synth_data, tmp_path):
    out = tmp_path / "sizes"
    cmd = [sys.executable, str(ROOT / "bench/damage_sizes.py"), str(bundles[("none", "fg")]),
           "--data", str(synth_data / "test" / "sphere"), "--frames", "0:1000", "--scales", "1.5,0.5",
           "--seed", "3", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = damage_sizes.sweep_rows(out, [0.5, 1.5])
    defects = {"chunk", "dent", "foreign", "hole", "stain", "all"}
    assert {(x["scale"], x["class"], x["defect"]) for x in rows} == {(f, "sphere", d) for f in (0.5, 1.5)
                                                                     for d in defects}
    share = {(x["scale"], x["defect"]): x["share"] for x in rows}
    for d in defects:
        assert share[(1.5, d)] > share[(0.5, d)] > 0, d
    assert all(0 <= x["image_auroc"] <= 1 for x in rows)
    table = (out / "damage_sizes.md").read_text()
    assert "| sphere | x0.5 | x1.5 |" in table and table.count("\n| ") >= 8
    assert "--size-scale 0.5" in (out / "commands.txt").read_text()
    # run again: every step is done, nothing is run again
    n = len((out / "commands.txt").read_text().splitlines())
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0 and len((out / "commands.txt").read_text().splitlines()) == n
    # another seed or another bundle into the same folder: refused, nothing mixed
    r = subprocess.run(cmd[:-4] + ["--seed", "4", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode != 0 and "made with seed 3" in r.stderr
    other = [cmd[0], cmd[1], str(bundles[("all", "fg")])] + cmd[3:]
    r = subprocess.run(other, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode != 0 and "another bundle" in r.stderr


def test_bad_scales_and_frames_are_refused(tmp_path):
    with pytest.raises(SystemExit) as e:
        damage_sizes.main(["B", "--data", "D", "--frames", "0:10", "--scales", "a,b", "--out", str(tmp_path)])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        damage_sizes.main(["B", "--data", "D", "--frames", "0:10", "--scales", "1,9", "--out", str(tmp_path)])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        damage_sizes.main(["B", "--data", "D", "--frames", "10", "--out", str(tmp_path)])
    assert e.value.code == 2
