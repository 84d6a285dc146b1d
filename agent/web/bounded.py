"""The station's HTTP servers (the operator's page, the metrics endpoint) with bounded
resources: a thread per connection, but at most MAX_CONNECTIONS at once, and a connection
that sends nothing (or reads nothing) for IDLE_TIMEOUT_S is closed.

Without the bounds, every connection that opens and then says nothing holds a thread of
the agent for ever: a port scanner, a forgotten client or a hostile one could pile up
threads and memory in the process that inspects parts. With them, a connection beyond the
limit is answered `503 Service Unavailable` and closed at once; refusals are counted
(`refused`) and logged at most once per LOG_EVERY_S. Inspection never waits for HTTP.
"""
from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from socketserver import ThreadingMixIn

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32     # open connections per server (a page's live stream holds one)
IDLE_TIMEOUT_S = 30.0    # a request not sent, or a response not read, within this is dropped
LOG_EVERY_S = 10.0
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 25\r\n"
        b"Retry-After: 5\r\nConnection: close\r\n\r\ntoo many open connections")


class Bounded(ThreadingMixIn):
    """Mix in before an HTTP server class (`class S(Bounded, HTTPServer)`). The limits are
    class attributes so that a subclass (or a test) can set its own."""

    daemon_threads = True
    request_queue_size = 64  # the listen backlog: a burst of clients is accepted, not left retrying SYNs
    max_connections = MAX_CONNECTIONS
    idle_timeout_s = IDLE_TIMEOUT_S
    label = "http"

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0
        self._next_log = 0.0

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            request.settimeout(self.idle_timeout_s)
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that timed out, reset or went away is its own business (debug); anything else
        goes to the log once, not as a bare traceback on stderr."""
        e = sys.exc_info()[1]
        if isinstance(e, OSError):
            log.debug("%s: connection from %s ended: %s", self.label, client_address[0], e)
        else:
            log.error("%s: a request from %s failed", self.label, client_address[0], exc_info=True)

    def _refuse(self, request, client_address) -> None:
        self.refused += 1
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + LOG_EVERY_S
            log.warning("%s: %d connections open, the most allowed; %s:%s refused (503), %d refused so far "
                        "(logged at most every %.0f s)", self.label, self.max_connections, *client_address[:2],
                        self.refused, LOG_EVERY_S)
        try:
            request.settimeout(0)  # a fresh socket's buffer takes the answer; never wait for a client
            request.send(BUSY)
        except OSError:
            pass
        self.shutdown_request(request)


def address_family(host: str, port: int) -> socket.AddressFamily:
    """The family to bind `host` with: IPv4 if it has an IPv4 address ("0.0.0.0", "127.0.0.1",
    "localhost"), otherwise IPv6 ("::1", "::", an IPv6-only name)."""
    families = [info[0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)]
    return socket.AF_INET if socket.AF_INET in families else families[0]


RETRY_S = 30.0  # a server that could not start is tried again this often


def keep_trying(label: str, start, stop: threading.Event, close) -> None:
    """After a server could not start (its port held by another process, an address not yet up at
    boot): call `start` again every RETRY_S on a daemon thread until it works or `stop` is set, and
    say when it serves; `close` it where the agent stopped while it was starting. Until 2026-12-07
    it stayed down until the agent's next restart."""
    def run() -> None:
        while not stop.wait(RETRY_S):
            try:
                start()
            except OSError:
                continue
            if stop.is_set():  # (closed while it bound: no server left listening)
                close()
                return
            log.warning("%s: serving now (it could not start before)", label)
            return
    threading.Thread(target=run, name=f"{label} retry", daemon=True).start()


def start_serving(owner, label: str, stop: threading.Event, without: str = "it") -> None:
    """Call `owner.bind()` (bind and serve); where it cannot (OSError), set `owner.state` to the
    error, say it once, and keep trying (`keep_trying`). Inspection never waits for it."""
    try:
        owner.bind()
    except OSError as e:
        owner.state = {"state": "error", "error": f"cannot serve {owner.url}: {e}; tried again every {RETRY_S:.0f} s"}
        log.error("%s: %s; inspection goes on without %s", label, owner.state["error"], without)
        keep_trying(label, owner.bind, stop, owner.close)


def server_status(state: dict, server: Bounded | None) -> dict:
    """An interface's `state`, and while it serves, the connections refused for being over the limit."""
    return {**state, "refused": server.refused} if server is not None else dict(state)
