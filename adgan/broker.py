"""A loopback MQTT broker for `adgan demo`, the tests and the benchmarks: mosquitto when it is
installed, otherwise amqtt, a maintained pure-Python broker (the `broker` extra:
`pip install 'adgan-edge[broker]'`), so the demo runs without root.

Either way the broker is a child process, started on a free 127.0.0.1 port and stopped by
PID, anonymous and without persistence: for a demo on one machine, not for a plant.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """True once something accepts connections on 127.0.0.1:port; False on timeout or if proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


def broker_command(workdir: Path, port: int, python_broker: bool) -> tuple[list[str], str]:
    """(command line, kind) of a loopback broker on `port`, its configuration written in workdir."""
    exe = None if python_broker else mosquitto_path()
    if exe:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        return [exe, "-c", str(conf)], "mosquitto"
    if importlib.util.find_spec("amqtt") is None:
        raise FileNotFoundError("no MQTT broker here: install mosquitto (apt-get install mosquitto) or the "
                                "Python one (pip install 'adgan-edge[broker]', which brings amqtt)")
    conf = workdir / "amqtt.yaml"
    conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
    return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)], "amqtt"


class BrokerProcess:
    """A broker child process on 127.0.0.1: mosquitto if installed (unless `embedded`, which asks
    for the Python broker), else amqtt."""

    def __init__(self, workdir: str | Path, embedded: bool = False, port: int | None = None) -> None:
        self.port = port or free_port()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        cmd, self.kind = broker_command(workdir, self.port, embedded)
        self.log = open(workdir / "broker.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        if wait_for_port(self.port, self.proc, 30):
            return
        self.stop()
        raise RuntimeError(f"the {self.kind} broker did not start on port {self.port} (see {workdir / 'broker.log'})")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.log.close()

    def __enter__(self) -> "BrokerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
