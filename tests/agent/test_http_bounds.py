"""The operator page's and the metrics endpoint's HTTP servers keep their resources bounded
(agent/web/bounded.py): idle connections cannot pile up threads in the agent, a connection
over the limit is answered 503 at once, and a client that goes quiet is dropped, after which
the server answers again. Real sockets on loopback; the limits are made small for the test."""
from __future__ import annotations

import socket
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest

from agent.metrics import Metrics
from agent.web import bounded
from agent.web.page import OperatorPage
from tests.agent.conftest import free_port

LIMIT, IDLE_S = 4, 3.0


def status() -> dict:
    return {"station": "st1", "expected_class": "cylinder", "source": {"state": "running", "failures": 0},
            "mqtt_connected": True, "outbox": {"depth": 0, "dropped": 0},
            "counters": {"frames": 0, "error": 0, "errors_suppressed": 0}}


def page_server(host: str, port: int):
    page = OperatorPage(SimpleNamespace(enabled=True, host=host, port=port, history=5), status, lambda: True)
    return page, f"http://{host if ':' not in host else '[' + host + ']'}:{port}/state.json"


def metrics_server(host: str, port: int):
    m = Metrics(SimpleNamespace(enabled=True, host=host, port=port), status, lambda: True)
    return m, f"http://{host if ':' not in host else '[' + host + ']'}:{port}/metrics"


SERVERS = {"page": page_server, "metrics": metrics_server}


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(bounded.Bounded, "max_connections", LIMIT)
    monkeypatch.setattr(bounded.Bounded, "idle_timeout_s", IDLE_S)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_idle_connections_are_bounded_refused_over_the_limit_and_dropped(kind, small_limits):
    port = free_port()
    server, url = SERVERS[kind]("127.0.0.1", port)
    server.start()
    assert server.status()["state"] == "serving", server.status()
    idle: list[socket.socket] = []
    try:
        assert get(url)[0] == 200
        time.sleep(0.2)  # its handler's thread ends (and frees its slot) just after the answer
        threads = threading.active_count()
        for _ in range(LIMIT):  # each sends half a request and then nothing
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"GET / HTTP/1.1\r\n")
            idle.append(c)
        time.sleep(0.3)
        t0 = time.monotonic()
        over = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]  # a burst
        for c in over:  # answered at once, without a thread each
            c.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert c.recv(1024).startswith(b"HTTP/1.1 503 "), kind
            c.close()
        assert time.monotonic() - t0 < IDLE_S, "too slow for the idle clients to be still there: no check"
        assert threading.active_count() <= threads + LIMIT
        assert server.status()["refused"] == 20
        t0 = time.monotonic()
        for c in idle:  # the quiet clients are dropped after the idle timeout, not held for ever
            c.settimeout(IDLE_S + 5)
            while c.recv(1024):
                pass
        assert time.monotonic() - t0 < IDLE_S + 5
        deadline = time.monotonic() + 5  # the slots are free again
        while get(url)[0] != 200:
            assert time.monotonic() < deadline, "the server did not answer again after the idle clients left"
            time.sleep(0.1)
    finally:
        for c in idle:
            c.close()
        server.close()
    assert server.status()["state"] == "stopped"


def test_the_live_streams_of_clients_that_went_away_free_their_slots(small_limits):
    """A stream holds a slot while its browser is there; one closed is noticed at the next
    write (an event, or the 2 s refresh), so a page reloaded again and again never locks out."""
    page, url = page_server("127.0.0.1", free_port())
    page.start()
    try:
        for round_ in range(3):  # every slot taken by streams, then their clients leave
            deadline, streams = time.monotonic() + 8, []
            while len(streams) < LIMIT:
                try:
                    r = urllib.request.urlopen(url.replace("state.json", "events"), timeout=5)
                except urllib.error.HTTPError as e:
                    assert e.code == 503 and time.monotonic() < deadline, f"round {round_}: slots not freed"
                    page.event({"verdict": "ok", "seq": round_})  # wakes the streams: they write, and see
                    time.sleep(0.2)
                    continue
                assert r.readline().startswith(b"event: state")
                streams.append(r)
            for r in streams:
                r.close()
    finally:
        page.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_an_ipv6_address_is_served(kind):
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    server, url = SERVERS[kind]("::1", port)
    server.start()
    try:
        assert server.status()["state"] == "serving", server.status()
        assert get(url)[0] == 200
    finally:
        server.close()


def test_names_bind_ipv4_where_they_have_it_and_ipv6_addresses_bind_ipv6():
    assert bounded.address_family("localhost", 80) == socket.AF_INET  # as the page always bound it
    assert bounded.address_family("0.0.0.0", 80) == socket.AF_INET
    assert bounded.address_family("::", 80) == socket.AF_INET6
