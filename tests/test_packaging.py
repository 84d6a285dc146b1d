"""A built wheel installs one top-level name (adgan_edge) and its `adgan` command runs."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("adgan", "agent", "training", "export", "calibration", "adgan_edge")


def run(*cmd, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
    return r


def test_a_built_wheel_installs_under_one_name_and_adgan_help_runs(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the repository
    for f in FOLDERS:
        shutil.copytree(ROOT / f, src / f, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / f, src / f)
    run(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
        cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("adgan_edge-*.whl"))

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel, cwd=tmp_path)
    site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip())
    installed = {p.name for p in site.iterdir()} - {"__pycache__"}
    assert {p for p in installed if not p.endswith(".dist-info") and not p.startswith("_")} == {"adgan_edge"}, installed
    # the dependencies (numpy, paho-mqtt, ...) from this environment, after the wheel's own folder
    (site / "zz-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    out = run(venv / "bin" / "adgan", "--help", cwd=tmp_path).stdout
    assert "COMMAND" in out and "agent" in out and "demo" in out
    run(venv / "bin" / "adgan", "agent", "validate-config", "--help", cwd=tmp_path)
    # nothing generic is importable to other programs of that environment...
    r = subprocess.run([py, "-c", "import agent"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "No module named 'agent'" in r.stderr
    # ...while the agent's own process finds its packages inside adgan_edge
    where = run(py, "-c", "import adgan_edge, agent, export; print(agent.__file__, export.__file__)",
                cwd=tmp_path).stdout
    assert where.count(str(site / "adgan_edge")) == 2, where
