"""The agent under its unit's system-call filter (systemd/adgan-agent.service: `SystemCallFilter=`
@system-service without @privileged, @resources and @obsolete; others fail with EPERM), loaded
through libseccomp as systemd loads it. ONNX Runtime pins its threads (sched_setaffinity) and
OpenBLAS binds its buffers (mbind), both in @resources: refused, they must not stop anything.
What runs under systemd on a Jetson (CUDA, TensorRT, a live camera) cannot be checked here."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.agent.conftest import AgentProcess, Subscriber, agent_config, free_port
from tests.systemd import syscall_filter

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "adgan-agent.service"


@pytest.fixture
def wrap() -> list[str]:
    why = syscall_filter.available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why} in CI (make install installs systemd as root)")
        pytest.skip(why)
    return [sys.executable, "-m", "tests.systemd.syscall_filter", str(UNIT), "--"]


def filtered(wrap: list[str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([*wrap, sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_filter_is_the_units_and_it_refuses_what_the_unit_refuses(wrap):
    allowed, _ = syscall_filter.unit_filter(UNIT, "systemd-analyze")
    assert {"read", "openat", "futex", "socket", "clone3", "fsync"} <= allowed
    assert not {"sched_setaffinity", "mbind", "setrlimit", "fchown", "mount", "reboot"} & allowed
    r = filtered(wrap, "import os\ntry:\n    os.sched_setaffinity(0, {0})\nexcept PermissionError:\n"
                       "    print('refused')\nprint(open(os.devnull).read() == '')")
    assert r.returncode == 0 and r.stdout.split() == ["refused", "True"], r.stdout + r.stderr


def test_the_agent_inspects_delivers_and_serves_under_the_units_filter(wrap, broker, calibrated, synth_data,
                                                                       tmp_path):
    bundle, thresholds = calibrated
    web, metrics, opcua = free_port(), free_port(), free_port()
    src = f'type = "folder"\npath = "{synth_data / "test" / "sphere"}"\nloop = true\nfps = 10'
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, src, extra=f"""\
        [web]
        enabled = true
        port = {web}
        [metrics]
        enabled = true
        port = {metrics}
        [opcua]
        enabled = true
        security = "None"
        port = {opcua}
        """)
    cfg.write_text(cfg.read_text().replace("threads = 1", "threads = 2")  # (ONNX Runtime pins 2 threads)
                   .replace('expected_class = "sphere"', 'expected_class = "sphere"\nanomaly_map = true'))
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log", wrap=wrap)
    try:
        assert sub.wait_for(lambda m: len(sub.documents("adgan/st1/events")) >= 10, timeout=90), agent.output()
        assert sub.wait_for(lambda m: any(s["interfaces"]["opcua"]["state"] == "serving"
                                          for s in sub.documents("adgan/st1/status")), timeout=30), agent.output()
        for url in (f"http://127.0.0.1:{web}/", f"http://127.0.0.1:{metrics}/metrics"):
            with urllib.request.urlopen(url, timeout=10) as r:
                assert r.status == 200 and r.read()
        assert agent.terminate() == 0
    finally:
        agent.stop()
        sub.close()
    out = agent.output()
    assert "system calls allowed, others fail with EPERM" in out, out
    assert "Traceback" not in out and " ERROR " not in out and "Operation not permitted" not in out, out
    assert "stopped: every event was acknowledged by the broker" in out, out
    events = sub.documents("adgan/st1/events")
    assert all(e["verdict"] in ("ok", "anomaly") for e in events), [e for e in events if e["verdict"] == "error"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert any(e.get("anomaly_map") for e in events) or all(e["verdict"] == "ok" for e in events)


def test_a_realsense_recording_plays_back_under_the_units_filter(wrap, tmp_path):
    pytest.importorskip("pyrealsense2")
    from tests.agent.sources.rs_recording import record
    from tests.agent.sources.test_realsense import synthetic_frames
    path = tmp_path / "station.db3"
    record(path, [(f.rgb, f.depth, f.intrinsics) for f in synthetic_frames(8)])
    r = filtered(wrap, "from agent.sources.realsense import RealSenseFrameSource\n"
                       f"src = RealSenseFrameSource(recording={str(path)!r}, real_time=False, timeout_s=2)\n"
                       "got = list(src)\nsrc.close()\nprint('frames', len(got))")
    assert r.returncode == 0 and "frames" in r.stdout and int(r.stdout.split()[-1]) >= 3, r.stdout + r.stderr
    assert "Operation not permitted" not in r.stderr, r.stderr
