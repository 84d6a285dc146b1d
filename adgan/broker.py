"""A loopback MQTT broker for `adgan demo`: mosquitto when it is installed, otherwise the small
pure-Python MQTT 3.1.1 broker below, so the demo needs nothing but the repository.

Either way the broker is a child process, started on a free 127.0.0.1 port and stopped by
PID. The embedded broker is for demos and tests on one machine, not for a plant: it keeps
nothing on disk, accepts every client, and delivers QoS 1 and 2 at most QoS 1 without
redelivery. What it does implement: CONNECT (clean sessions, username/password accepted,
Last Will), PUBLISH QoS 0/1/2 with PUBACK / PUBREC-PUBREL-PUBCOMP, retained messages,
SUBSCRIBE / UNSUBSCRIBE with + and # wildcards, PINGREQ, keepalive timeouts.

    python -m adgan.broker --port 1883
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("adgan.broker")

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14


def topic_matches(flt: str, topic: str) -> bool:
    f, t = flt.split("/"), topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False  # $SYS-style topics are not matched by leading wildcards
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or part not in ("+", t[i]):
            return False
    return len(f) == len(t)


def _str(b: bytes, i: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!H", b, i)
    return b[i + 2: i + 2 + n], i + 2 + n


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    n, out = len(body), bytearray([(kind << 4) | flags])
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def _publish_packet(topic: str, payload: bytes, qos: int, retain: bool, pid: int) -> bytes:
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (struct.pack("!H", pid) if qos else b"") + payload
    return _packet(PUBLISH, (qos << 1) | int(retain), body)


class Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.subs: dict[str, int] = {}
        self.will: tuple[str, bytes, int, bool] | None = None
        self.client_id = ""
        self._pid = 0

    def next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class Broker:
    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self.retained: dict[str, tuple[bytes, int]] = {}

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = (payload, qos)
            else:
                self.retained.pop(topic, None)
        for c in list(self.clients):
            granted = [q for f, q in c.subs.items() if topic_matches(f, topic)]
            if granted:
                q = min(qos, max(granted))
                c.send(_publish_packet(topic, payload, q, False, c.next_pid() if q else 0))

    async def _read_packet(self, reader: asyncio.StreamReader, timeout: float | None):
        head = await asyncio.wait_for(reader.readexactly(1), timeout)
        n, mult = 0, 1
        for _ in range(4):
            (b,) = await asyncio.wait_for(reader.readexactly(1), timeout)
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        body = await asyncio.wait_for(reader.readexactly(n), timeout) if n else b""
        return head[0] >> 4, head[0] & 0x0F, body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c, clean = Client(writer), False
        try:
            kind, _, body = await self._read_packet(reader, 10.0)
            if kind != CONNECT:
                return
            keepalive = self._connect(c, body)
            self.clients.add(c)
            c.send(_packet(CONNACK, 0, b"\x00\x00"))
            timeout = keepalive * 1.5 if keepalive else None
            while True:
                kind, flags, body = await self._read_packet(reader, timeout)
                if kind == DISCONNECT:
                    clean = True
                    return
                self._dispatch(c, kind, flags, body)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, struct.error, ValueError):
            pass
        finally:
            self.clients.discard(c)
            if c.will and not clean:
                self.publish(*c.will)
            writer.close()

    def _connect(self, c: Client, b: bytes) -> int:
        _, i = _str(b, 0)
        flags, keepalive = b[i + 1], struct.unpack_from("!H", b, i + 2)[0]
        cid, i = _str(b, i + 4)
        c.client_id = cid.decode(errors="replace")
        if flags & 0x04:
            wt, i = _str(b, i)
            wm, i = _str(b, i)
            c.will = (wt.decode(), wm, (flags >> 3) & 3, bool(flags & 0x20))
        return keepalive

    def _dispatch(self, c: Client, kind: int, flags: int, b: bytes) -> None:
        if kind == PUBLISH:
            qos, retain = (flags >> 1) & 3, bool(flags & 1)
            t, i = _str(b, 0)
            pid = b""
            if qos:
                pid, i = b[i: i + 2], i + 2
            self.publish(t.decode(), b[i:], qos, retain)
            if qos == 1:
                c.send(_packet(PUBACK, 0, pid))
            elif qos == 2:
                c.send(_packet(PUBREC, 0, pid))
        elif kind == PUBREL:
            c.send(_packet(PUBCOMP, 0, b[:2]))
        elif kind == SUBSCRIBE:
            pid, i, granted = b[:2], 2, bytearray()
            new = []
            while i < len(b):
                f, i = _str(b, i)
                q = min(b[i], 1)
                i += 1
                c.subs[f.decode()] = q
                granted.append(q)
                new.append((f.decode(), q))
            c.send(_packet(SUBACK, 0, pid + bytes(granted)))
            for topic, (payload, rq) in self.retained.items():
                qs = [q for f, q in new if topic_matches(f, topic)]
                if qs:
                    q = min(rq, max(qs))
                    c.send(_publish_packet(topic, payload, q, True, c.next_pid() if q else 0))
        elif kind == UNSUBSCRIBE:
            i = 2
            while i < len(b):
                f, i = _str(b, i)
                c.subs.pop(f.decode(), None)
            c.send(_packet(UNSUBACK, 0, b[:2]))
        elif kind == PINGREQ:
            c.send(_packet(PINGRESP, 0, b""))
        # PUBACK / PUBREC / PUBCOMP from clients: this broker does not redeliver, nothing to do.


async def serve(host: str, port: int) -> None:
    broker = Broker()
    server = await asyncio.start_server(broker.handle, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("embedded MQTT broker listening on %s:%d", host, port)
    async with server:
        await stop.wait()


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


class BrokerProcess:
    """A broker child process on 127.0.0.1: mosquitto if installed (unless `embedded`), else ours."""

    def __init__(self, workdir: str | Path, embedded: bool = False, port: int | None = None) -> None:
        self.port = port or free_port()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        exe = None if embedded else (shutil.which("mosquitto") or
                                     next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None))
        self.log = open(workdir / "broker.log", "ab")
        if exe:
            conf = workdir / "mosquitto.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            cmd, self.kind = [exe, "-c", str(conf)], "mosquitto"
        else:
            cmd, self.kind = [sys.executable, "-m", "adgan.broker", "--port", str(self.port)], "embedded"
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        if wait_for_port(self.port, self.proc, 15):
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


def main() -> None:
    ap = argparse.ArgumentParser(description="a small loopback MQTT 3.1.1 broker for demos and tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(serve(a.host, a.port))


if __name__ == "__main__":
    main()
