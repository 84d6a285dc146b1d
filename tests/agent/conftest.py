"""A real mosquitto broker on a free loopback port, stopped by PID; a collecting subscriber."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt
import pytest

from adgan.broker import wait_for_port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, tmp_path, port: int) -> None:
        self.port, self.conf, self.proc = port, tmp_path / "mosquitto.conf", None
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")

    def tls(self, cert, key, extra: str = "") -> "Broker":
        """Serve TLS only, with `cert` and `key` (and `extra` lines: a cafile, a password file)."""
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             f"certfile {cert}\nkeyfile {key}\n{extra}"
                             # as root, mosquitto would drop to user 'mosquitto', who cannot read the files
                             + ("user root\n" if os.geteuid() == 0 else ""))
        return self

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait_for_port(self.port, self.proc, 10):
            return
        self.stop()
        raise RuntimeError("mosquitto did not start within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


class LoopbackServer:
    """A TCP server on a free loopback port whose accept loop runs on its own thread until `close`;
    each connection accepted is handed to `serve`, on a thread of its own."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.serve = serve
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self._thread.join(5)


class Mqtt311Front(LoopbackServer):
    """A broker that speaks MQTT 3.1.1 only, made of mosquitto (which speaks both) behind a relay:
    a CONNECT for MQTT 5 is answered as the 3.1.1 standard says (CONNACK return code 1,
    unacceptable protocol level, then the connection is closed), or with `silent`, not at all
    (amqtt's way); any other is relayed, byte for byte, to the broker on `backend_port`."""

    def __init__(self, backend_port: int, silent: bool = False) -> None:
        self.backend_port, self.refused_5, self.silent = backend_port, 0, silent
        self._held: list[socket.socket] = []
        super().__init__(self._serve)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        relayed = False
        try:
            first = conn.recv(4096)  # the CONNECT: fixed header, length, "\0\4MQTT", protocol level
            i = 1
            while first[i] & 0x80:   # the remaining length's bytes
                i += 1
            level = first[i + 1 + 6]
            if level == 5:
                self.refused_5 += 1
                if self.silent:
                    self._held.append(conn)  # open, unanswered
                    relayed = True
                else:
                    conn.sendall(bytes([0x20, 0x02, 0x00, 0x01]))
                return
            back = socket.create_connection(("127.0.0.1", self.backend_port), timeout=10)
            back.sendall(first)
            for a, b in ((conn, back), (back, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
            relayed = True
        except (OSError, IndexError):
            pass
        finally:
            if not relayed:
                conn.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        super().close()
        for conn in self._held:
            conn.close()


class Relay(LoopbackServer):
    """A TCP relay to the broker on `backend_port` whose links can go silent, as a cable pulled or a
    switch that drops them does: `mute(up_only)` makes every link open now drop what the station sends
    (`up_only`) or everything both ways, without closing it (links made later are relayed)."""

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.links: list[dict] = []
        super().__init__(self._serve)

    def _serve(self, conn: socket.socket) -> None:
        try:
            back = socket.create_connection(("127.0.0.1", self.backend_port), timeout=10)
        except OSError:
            conn.close()
            return
        link = {"up": True, "down": True, "socks": (conn, back)}
        self.links.append(link)
        for a, b, way in ((conn, back, "up"), (back, conn, "down")):
            threading.Thread(target=self._pipe, args=(a, b, link, way), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, link: dict, way: str) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(65536):
                if link[way]:
                    dst.sendall(data)
        except OSError:
            pass

    def mute(self, up_only: bool = False) -> None:
        for link in self.links:
            link["up"] = False
            if not up_only:
                link["down"] = False

    def close(self) -> None:
        super().close()
        for link in self.links:
            for s in link["socks"]:
                s.close()


def fill_file_system(folder: Path, leave: int = 0) -> Path:
    """Fill the file system under `folder` with one file, to the last block (ENOSPC), then give
    back `leave` bytes."""
    f = folder / "filler"
    with open(f, "wb", buffering=0) as fh:
        for block in (1 << 20, 65536, 4096, 512):
            try:
                while True:
                    fh.write(b"\0" * block)
            except OSError:
                pass
        if leave:
            fh.truncate(max(0, fh.tell() - leave))
    return f


def fill_inodes(folder: Path) -> Path:
    """Take every inode left on the file system under `folder` with empty files (in a folder made
    there, returned): full of files, not bytes, as `df -i` shows and `df -h` does not."""
    filler = folder / "inode-filler"
    filler.mkdir()
    for i in range(1_000_000):
        try:
            (filler / str(i)).touch()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return filler
    raise AssertionError(f"{folder}: a million files made, and its file system is not full")


def window(frame, x0: int, light: float = 1.0):
    """A camera frame seen through a 280x300 window from (x0, 60), its intrinsics moved with it, its
    colour scaled by `light`: SyntheticSource(("sphere",), seed=11).frame(0)'s part (x 306-437) lies
    wholly inside the window at x0 200, and is cut by its left edge at x0 350."""
    from agent.frame import Intrinsics, RGBDFrame
    k, win = frame.intrinsics, (slice(60, 360), slice(x0, x0 + 280))
    return RGBDFrame((frame.rgb[win] * light).astype("uint8"), frame.depth[win], frame.timestamp,
                     Intrinsics(280, 300, k.fx, k.fy, k.cx - x0, k.cy - 60))


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str = "2m", inodes: int | None = None):
    """A real file system of `size` (tmpfs) mounted at `mnt`, to fill (`inodes`: at most so many
    files and folders); skipped without root."""
    mnt.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    opts = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


NOBODY = 65534  # the user a unit's agent stands for in the tests: not root, owns nothing


@pytest.fixture
def station_user(calibrated):
    """(wrap, base): a command that runs what follows it as another user than root (`setpriv`, as a
    unit's `User=adgan`), and a folder that user may enter, holding copies of the test bundle
    (`bundle`) and thresholds (`thresholds.json`), readable by all, and a `state` folder of its
    own. Skipped unless the tests run as root."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("running as another user needs root and setpriv (util-linux)")
    import tempfile
    wrap = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    r = subprocess.run([*wrap, sys.executable, "-c", "import adgan.cli, agent.service"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    if r.returncode:  # (a checkout in root's home: another user cannot read the code)
        pytest.skip(f"another user cannot run this checkout's code here: {r.stderr.strip()[-200:]}")
    bundle, thresholds = calibrated
    base = Path(tempfile.mkdtemp(prefix="adgan-user-"))  # (pytest's own folders are root's alone)
    try:
        shutil.copytree(bundle, base / "bundle")
        shutil.copy(thresholds, base / "thresholds.json")
        for p in [base, *base.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        (base / "state").mkdir()
        os.chown(base / "state", NOBODY, NOBODY)
        yield wrap, base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MB file system (tmpfs) to fill; skipped without root."""
    with tmpfs(tmp_path / "fs") as mnt:
        yield mnt


class FailingDisk:
    """A real ext4 file system (16 MB, on a loop device) mounted `errors=remount-ro`, as a
    Jetson's root is: `fail()` has the kernel record an error on it, and it becomes read-only,
    as when an SD card or eMMC fails under a running station."""

    def __init__(self, tmp_path: Path) -> None:
        self.image, self.mnt = tmp_path / "ext4.img", tmp_path / "disk"
        self.mnt.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a loop device needs root")
        if not shutil.which("mkfs.ext4"):
            pytest.skip("mkfs.ext4 is not installed")
        with open(self.image, "wb") as f:
            f.truncate(16 << 20)
        for cmd in (["mkfs.ext4", "-q", "-F", str(self.image)],
                    ["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mnt)]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"cannot make a loop-mounted ext4 here ({' '.join(cmd[:2])}): {r.stderr.strip()}")
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.mnt)], capture_output=True, text=True)
        self.trigger = Path("/sys/fs/ext4") / Path(source.stdout.strip()).name / "trigger_fs_error"
        if not self.trigger.exists():
            self.unmount()
            pytest.skip(f"this kernel has no {self.trigger}")

    def fail(self) -> None:
        self.trigger.write_text("adgan-edge test: a failing disk")
        try:
            (self.mnt / "probe").touch()
        except OSError as e:
            assert e.errno == errno.EROFS, e
        else:
            raise AssertionError("the kernel did not make the disk read-only")

    def remount(self) -> None:
        """The repair: unmount, fsck, mount again (read-write)."""
        self.unmount()
        subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True)
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mnt)], check=True)

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)


def slow_disk(calls: str, delay_s: float) -> list[str]:
    """A command prefix that runs a process with every one of `calls` (system calls, e.g. "fsync":
    os.fsync, the sequence file's; "fdatasync": SQLite's) returning `delay_s` late, as an SD card
    or a worn eMMC flushes: strace's fault injection, done by the kernel's ptrace stops."""
    exe = shutil.which("strace")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("strace is missing in CI (make install installs it as root)")
        pytest.skip("strace is not installed")
    if subprocess.run([exe, "-qq", "-o", os.devnull, "true"], capture_output=True).returncode:
        pytest.skip("strace cannot trace here (ptrace is not permitted)")
    return [exe, "-f", "-qq", "-o", os.devnull, "-e", f"trace={calls}", "-e",
            f"inject={calls}:delay_exit={int(delay_s * 1e6)}"]


@pytest.fixture
def failing_disk(tmp_path):
    disk = FailingDisk(tmp_path)
    yield disk
    disk.unmount()


@pytest.fixture
def broker(tmp_path):
    if not (shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")):
        pytest.skip("mosquitto is not installed (make install installs it as root)")
    b = Broker(tmp_path, free_port())
    b.start()
    yield b
    b.stop()


class Subscriber:
    """Collects (topic, payload, retain) from a topic filter; reconnects and resubscribes."""

    def __init__(self, port: int, topic: str, tls_ca: str | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.RLock()  # (documents() may be called from a wait_for predicate)
        self.subscribed = threading.Event()  # set once the broker confirmed the subscription
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{time.monotonic_ns()}")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_disconnect = lambda c, u, f, rc, p: self.subscribed.clear()
        self.c.on_message = self._on_message
        if tls_ca:
            self.c.tls_set(ca_certs=tls_ca)
        if username:
            self.c.username_pw_set(username, password)
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect_async("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on_message(self, c, u, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def documents(self, topic: str) -> list:
        """The JSON documents received on `topic` (events, status), in order."""
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def wait_for(self, predicate, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.messages)):
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# -- the agent as a real process ---------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def calibrated(bundles, synth_data, tmp_path_factory):
    """(bundle, thresholds.json) for the tiny sphere model: equal-rates threshold on the synthetic test set."""
    from adgan.cli import main
    out = tmp_path_factory.mktemp("calibrated") / "thresholds.json"
    b, t = bundles[("none", "fg")], synth_data / "test"
    assert main(["calibrate", str(b), "--normal", str(t / "sphere"), "--anomalous", str(t / "sphere_defect"),
                 "--anomalous", str(t / "cylinder"), "--policy", "equal-rates", "--out", str(out), "--quiet"]) == 0
    return b, out


def agent_config(tmp_path, port: int, bundle, thresholds, source: str, trigger: str = "every_frame",
                 extra: str = "", station: str = "st1") -> Path:
    """An agent.toml for tests: one sphere bundle, a loopback broker, a fast heartbeat."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(textwrap.dedent(f"""\
        station_id = "{station}"
        [source]
        {source}
        [model]
        expected_class = "sphere"
        thresholds = "{thresholds}"
        bundles = {{ sphere = "{bundle}" }}
        [model.backend]
        type = "onnxruntime"
        threads = 1
        [trigger]
        mode = "{trigger}"
        [mqtt]
        host = "127.0.0.1"
        port = {port}
        [outbox]
        path = "{tmp_path / 'outbox.sqlite'}"
        reserve_mb = 1
        [health]
        status_interval_s = 0.5
        reconnect_min_s = 0.2
        stop_flush_s = 5
        """) + textwrap.dedent(extra))
    return cfg


class AgentProcess:
    """`adgan agent run` as a subprocess; stopped by PID (SIGTERM, then SIGKILL) in stop()."""

    def __init__(self, config: Path, log: Path, env: dict | None = None, wrap: list[str] | None = None) -> None:
        """`wrap`: a command the agent's command line is handed to (it execs it, like systemd)."""
        self.log = log
        self.fh = open(log, "ab")
        # torch is blocked: the device never has it, so the agent must run without it.
        code = ("import sys; sys.modules['torch'] = None\nfrom adgan.cli import main\n"
                f"sys.exit(main(['agent', 'run', '--config', {str(config)!r}, '--env-file', '/nonexistent']))")
        self.proc = subprocess.Popen([*(wrap or []), sys.executable, "-c", code], cwd=ROOT, stdout=self.fh,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"agent did not finish within {timeout} s:\n{self.output()}") from None

    def output(self) -> str:
        if not self.fh.closed:
            self.fh.flush()
        return self.log.read_text(errors="replace")

    def agent_pid(self) -> int:
        """The agent's own process: the one started, or, under a wrapper that forks it (strace,
        which blocks the signals sent to it), that wrapper's child."""
        pid, python = self.proc.pid, os.path.realpath(sys.executable)
        for _ in range(3):
            try:
                if os.path.realpath(f"/proc/{pid}/exe") == python:
                    return pid
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                return self.proc.pid
            if not children:
                break
            pid = int(children[0])
        return self.proc.pid

    def terminate(self, timeout: float = 20, sig: int = signal.SIGTERM) -> int:
        os.kill(self.agent_pid(), sig)
        return self.wait(timeout)

    def kill(self) -> None:
        self._kill()
        self.proc.wait(10)

    def _kill(self) -> None:
        pid = self.agent_pid()
        if pid != self.proc.pid:  # (a wrapper's child first: killing the wrapper would leave it running)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.kill()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._kill()
            self.proc.wait(10)
        self.fh.close()


def replay_events(cfg: Path, port: int, log: Path, at_least: int, station: str = "st1") -> tuple[list, str]:
    """Run an agent on a finite replay to its end: (the events it published, its output)."""
    sub = Subscriber(port, f"adgan/{station}/events")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, log)
    try:
        assert agent.wait(120) == 0, agent.output()
        assert sub.wait_for(lambda m: len(m) >= at_least), agent.output()
    finally:
        agent.stop()
        sub.close()
    return sub.documents(f"adgan/{station}/events"), agent.output()


def scrape(url: str, timeout: float = 10.0) -> str:
    """The text of an HTTP endpoint on loopback, retried until `timeout` (it may still be starting)."""
    import urllib.request
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def poll(cond, timeout: float = 30.0, every: float = 0.005) -> bool:
    """True once cond() is, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


@pytest.fixture
def taken_port():
    """A loopback port something else is listening on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="module")
def two_classes(calibrated, synth_data, tmp_path_factory):
    """The sphere bundle plus a tiny cylinder bundle, both calibrated into one thresholds file."""
    from adgan.cli import main
    from agent.scoring.bundle import SearchDefaults
    from export.bundle import write_bundle
    sphere, th_sphere = calibrated
    root = tmp_path_factory.mktemp("two")
    assert main(["train", str(synth_data / "train"), "--class", "cylinder", "--kind", "gan", "--size", "32",
                 "--features-g", "4", "--features-d", "4", "--batch-size", "6", "--epochs", "2",
                 "--out", str(root / "run"), "--quiet", "--encoder-epochs", "0"]) == 0
    cyl = root / "cylinder"
    write_bundle(root / "run", cyl, SearchDefaults(theta_scope="none", loss="fg", k=5))
    th = root / "thresholds.json"
    shutil.copy(th_sphere, th)
    assert main(["calibrate", str(cyl), "--normal", str(synth_data / "test" / "cylinder"), "--fpr", "0.34",
                 "--out", str(th), "--quiet"]) == 0
    return sphere, cyl, th
