"""The operator's page: a small HTTP server (the standard library's, a thread per connection,
bounded as in bounded.py), bound to loopback unless configured.

  /             index.html (no build step, no framework)
  /events       server-sent events: the page's state after every part, and every 2 s
  /state.json   the same state, once
  /part/<rgb|depth|map>.png   the last inspected part: RGB, depth, and the anomaly map over it

The agent hands each event (and the part's pixels) over in `event`, on its own thread; images
are encoded only when a browser asks for them.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from agent.mqtt.events import reason
from agent.web.bounded import Bounded, address_family, server_status, start_serving

log = logging.getLogger(__name__)

INDEX = Path(__file__).with_name("index.html")
KINDS = ("rgb", "depth", "map")
SCALE = 4  # sample pixels -> screen pixels


def part_images(view) -> dict[str, np.ndarray]:
    """RGB, depth and the anomaly map over the RGB (the event's map: with a relief check, the
    larger of |G(z*) - x| and the relief where it is unusual, smoothed by the bundle's sigma), as
    BGR images for PNG encoding. `view` is the service's (sample, x, G(z*), relief map, sigma,
    background reference)."""
    from agent.decide.anomaly_map import heat
    sample, x, reconstruction, relief, sigma, background = view
    rgb = cv2.cvtColor(sample.rgb, cv2.COLOR_RGB2BGR)
    depth = cv2.applyColorMap(sample.depth, cv2.COLORMAP_VIRIDIS)
    depth[sample.depth == 0] = 0
    h = heat(x, reconstruction, relief, sigma, background)
    hm = cv2.applyColorMap(np.clip(h * 255 * 2, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    over = cv2.addWeighted(rgb, 0.45, cv2.resize(hm, rgb.shape[1::-1]), 0.55, 0)
    return {k: cv2.resize(v, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_NEAREST)
            for k, v in (("rgb", rgb), ("depth", depth), ("map", over))}


class OperatorPage:
    def __init__(self, settings, status: Callable[[], dict], warm: Callable[[], bool]) -> None:
        self.s, self.status_of, self.warm = settings, status, warm
        self.state: dict = {"state": "off"}
        self.history: deque[dict] = deque(maxlen=settings.history)
        # (monotonic time, verdict) for the rates: a wall clock set by NTP (hours or years at a
        # Jetson's boot) would empty the last hour, or keep it for a day
        self.hour: deque[tuple[float, str]] = deque(maxlen=100_000)
        self.seq = 0
        self._view = None
        self._png: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server: HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.s.host}:{self.s.port}/"

    def start(self) -> None:
        if not self.s.enabled:
            return
        start_serving(self, "operator page", self._stopping)

    def bind(self) -> None:
        """Bind the port and serve from a daemon thread. Raises OSError."""
        page = self

        class Handler(_Handler):
            owner = page

        class Server(Bounded, HTTPServer):
            label = "operator page"
        Server.address_family = address_family(self.s.host, self.s.port)
        self._server = Server((self.s.host, self.s.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="operator-page", daemon=True).start()
        self.state = {"state": "serving", "url": self.url}
        log.info("operator page on %s", self.url)

    def status(self) -> dict:
        """`state`, and while serving the connections refused for being over the limit."""
        return server_status(self.state, self._server)

    def event(self, event: dict, view=None) -> None:
        """A published event, and (for a scored part) its (sample, x, G(z*))."""
        if self._server is None:
            return
        entry = {k: event.get(k) for k in ("seq", "event_id", "verdict", "score", "threshold", "expected_class",
                                           "decided_at", "error", "part_id")}
        entry["latency_ms"] = (event.get("latency_ms") or {}).get("total_ms")
        entry["reason"] = reason(event)
        with self._cond:
            self.history.appendleft(entry)
            self.hour.append((time.monotonic(), event["verdict"]))
            if view is not None:
                self._view, self._png = view, {}
            self.seq += 1
            before = self.history[1] if len(self.history) > 1 else {}
            entry["image_seq"] = self.seq if view is not None else before.get("image_seq")
            entry["image_event"] = entry["seq"] if view is not None else before.get("image_event")
            self._cond.notify_all()

    def snapshot(self) -> dict:
        st = self.status_of()
        now = time.monotonic()
        with self._cond:
            recent = [v for t, v in self.hour if now - t <= 3600]
            history = list(self.history)
            seq = self.seq
        rates = {v: recent.count(v) for v in ("ok", "anomaly", "no_object", "error")}
        return {"seq": seq, "station": st["station"], "expected_class": st["expected_class"],
                "last": history[0] if history else None, "history": history, "per_hour": rates,
                "health": {"camera": st["source"]["state"], "engine": "warm" if self.warm() else "cold",
                           "broker": "connected" if st["mqtt_connected"] else "disconnected",
                           "outbox": st["outbox"].get("depth", 0)}}

    def png(self, kind: str) -> bytes | None:
        with self._cond:
            if self._view is None:
                return None
            if not self._png:
                for k, img in part_images(self._view).items():
                    ok, buf = cv2.imencode(".png", img)
                    self._png[k] = buf.tobytes() if ok else b""
            return self._png.get(kind)

    def wait(self, seq: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.seq != seq or self._stopping.is_set(), timeout)
            return self.seq

    def close(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self.state = {"state": "stopped"}


class _Handler(BaseHTTPRequestHandler):
    owner: OperatorPage
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:  # the journal gets the agent's lines, not every GET
        log.debug("operator page: " + fmt, *args)

    def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        page, path = self.owner, self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(INDEX.read_bytes(), "text/html; charset=utf-8")
        elif path == "/state.json":
            self._send(json.dumps(page.snapshot()).encode(), "application/json")
        elif path.startswith("/part/") and path.endswith(".png") and path[6:-4] in KINDS:
            png = page.png(path[6:-4])
            if png is None:
                self._send(b"no part inspected yet\n", "text/plain", 404)
            else:
                self._send(png, "image/png")
        elif path == "/events":
            self._events(page)
        else:
            self._send(b"not found\n", "text/plain", 404)

    def _events(self, page: OperatorPage) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            while not page._stopping.is_set():
                state = page.snapshot()  # its seq: a part that arrives while this one is sent is not missed
                self.wfile.write(f"event: state\ndata: {json.dumps(state)}\n\n".encode())
                self.wfile.flush()
                page.wait(state["seq"], 2.0)
        except OSError:
            pass  # the browser went away, or stopped reading for bounded.IDLE_TIMEOUT_S
