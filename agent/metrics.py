"""The Prometheus endpoint (`[metrics]`, off by default): per-stage latency histograms, verdicts
per class, and the station's state (outbox depth, MQTT link, engine warm, frames, drops).

It serves `http://<host>:<port>/metrics` (prometheus-client's WSGI app) from its own thread,
bound to loopback unless configured, with the operator page's bounds on connections
(web/bounded.py). A port that cannot be bound is logged, reported under
`interfaces.metrics` in `status`, and inspection goes on without it.
"""
from __future__ import annotations

import calendar
import logging
import threading
import time
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agent.opcua import ACTIVATION_S, MAX_CHUNK_BYTES
from agent.web.bounded import Bounded, address_family, server_status, start_serving

log = logging.getLogger(__name__)

STAGES = ("capture", "segment", "score", "publish")
# seconds: a frame's stages run from well under a millisecond to a slow engine's seconds
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _StateCollector:
    """Read at each scrape from the agent's `status()`: nothing to keep in step."""

    def __init__(self, status: Callable[[], dict], warm: Callable[[], bool]) -> None:
        self.status, self.warm = status, warm

    def collect(self):
        st = self.status()
        c, ob = st["counters"], st["outbox"]
        yield GaugeMetricFamily("adgan_outbox_depth", "events stored and not yet acknowledged by the broker",
                                value=ob.get("depth", 0))
        yield CounterMetricFamily("adgan_outbox_dropped_events", "events dropped because the outbox was full",
                                  value=ob.get("dropped", 0))
        yield GaugeMetricFamily("adgan_outbox_unsaved", "events held in memory only (the disk cannot be written): "
                                "a kill would lose them", value=ob.get("unsaved", 0))
        reserve = ob.get("reserve") or {}
        yield GaugeMetricFamily("adgan_outbox_reserve_held", "1 while the outbox's reserve for a full disk is set "
                                "aside; 0 once a full disk released it (or none is configured)",
                                value=1.0 if reserve.get("held") else 0.0)
        yield CounterMetricFamily("adgan_outbox_reserve_released", "times a full disk released the outbox's reserve",
                                  value=reserve.get("released", 0))
        yield CounterMetricFamily("adgan_clock_jumps", "jumps of the wall clock that stamps the events (NTP, a "
                                  "person, a suspend)", value=(st.get("clock") or {}).get("jumps", 0))
        yield CounterMetricFamily("adgan_runs_ended_without_stop", "runs of this outbox's agent that ended without "
                                  "stopping (killed, crashed, the machine restarted under it), counted across runs",
                                  value=(st.get("previous_run") or {}).get("runs_ended_without_stop", 0))
        yield GaugeMetricFamily("adgan_config_edited", "1 while agent.toml or its env file has been edited since the "
                                "start: read only at start, the edit waits for a restart",
                                value=1.0 if (st.get("config") or {}).get("edited") else 0.0)
        yield CounterMetricFamily("adgan_log_lines_dropped", "log lines dropped because the log's output (the "
                                  "journal) took nothing and health.log_buffer_kb filled, or failed",
                                  value=(st.get("log") or {}).get("dropped", 0))
        yield GaugeMetricFamily("adgan_mqtt_connected", "1 while the MQTT link is up",
                                value=1.0 if st["mqtt_connected"] else 0.0)
        mq = st.get("mqtt") or {}
        yield CounterMetricFamily("adgan_mqtt_events_rejected", "events the broker refused (MQTT 5: not authorised, "
                                  "too large); kept in the outbox unless they can never be accepted",
                                  value=mq.get("events_rejected", 0))
        yield CounterMetricFamily("adgan_mqtt_messages_refused", "messages other than events that the broker refused "
                                  "(MQTT 5: the verdict, availability, a state): their readers do not get them",
                                  value=mq.get("messages_refused", 0))
        yield CounterMetricFamily("adgan_mqtt_events_unconfirmed", "events the broker acknowledged and did not "
                                  "deliver back to this station (MQTT 3.1.1 links): likely dropped by its ACL",
                                  value=mq.get("events_unconfirmed", 0))
        yield CounterMetricFamily("adgan_mqtt_sessions_lost", "connections on which the broker kept no session for "
                                  "this station (restarted without persistence): commands sent meanwhile were lost",
                                  value=mq.get("sessions_lost", 0))
        yield CounterMetricFamily("adgan_mqtt_broker_dropped", "messages the broker said it dropped (its count for all "
                                  "its clients, a queue full: mosquitto max_queued_messages) while this agent ran",
                                  value=mq.get("broker_dropped", 0))
        yield CounterMetricFamily("adgan_process_freezes", "times this agent's process did not run for 2 s or more "
                                  "(or trigger.max_wait_s where shorter, 1 s at least; stopped, a container paused, "
                                  "the machine suspended): trigger/sets that came meanwhile are answered as not "
                                  "inspected (when it lasted trigger.max_wait_s)", value=mq.get("freezes", 0))
        yield CounterMetricFamily("adgan_mqtt_commands_qos0", "commands that came at QoS 0: one sent so while the "
                                  "station is away is lost by the broker, unanswered (send commands at QoS 1)",
                                  value=mq.get("commands_qos0", 0))
        tls = mq.get("tls") or {}
        if tls.get("not_after"):
            yield GaugeMetricFamily("adgan_mqtt_client_cert_expiry_timestamp_seconds", "when the client certificate "
                                    "(mqtt.tls_cert) expires, in seconds since the epoch (renewed files are loaded at "
                                    "the next connection attempt)", value=calendar.timegm(
                                        time.strptime(tls["not_after"], "%Y-%m-%dT%H:%M:%SZ")))
        op = (st.get("interfaces") or {}).get("opcua") or {}
        yield CounterMetricFamily("adgan_opcua_connections_refused", "OPC UA connections closed at once because "
                                  "opcua.max_clients were open", value=op.get("connections_refused", 0))
        yield CounterMetricFamily("adgan_opcua_idle_closed", "OPC UA connections closed because they opened no "
                                  f"session within {ACTIVATION_S:g} s", value=op.get("idle_closed", 0))
        yield CounterMetricFamily("adgan_opcua_chunks_refused", "OPC UA connections closed because they sent a "
                                  f"message chunk over the receive buffer ({MAX_CHUNK_BYTES} bytes)",
                                  value=op.get("chunks_refused", 0))
        yield GaugeMetricFamily("adgan_engine_warm", "1 while the models are loaded and warmed up",
                                value=1.0 if self.warm() else 0.0)
        yield GaugeMetricFamily("adgan_source_running", "1 while the frame source delivers",
                                value=1.0 if st["source"]["state"] == "running" else 0.0)
        yield CounterMetricFamily("adgan_frames", "frames read from the source", value=c["frames"])
        yield CounterMetricFamily("adgan_frames_dropped", "frames read but not inspected because of an error "
                                  "(error events and suppressed repeats)",
                                  value=c["error"] + c["errors_suppressed"])
        yield CounterMetricFamily("adgan_source_failures", "failures of the frame source (each reopened)",
                                  value=st["source"]["failures"])
        yield CounterMetricFamily("adgan_parts_not_inspected", "parts (GPIO edges, requests naming a part_id) "
                                  "that came while trigger.max_pending inspections waited, and requests left at a "
                                  "stop: each an error event", value=c.get("parts_not_inspected", 0))
        yield CounterMetricFamily("adgan_requests_late", "requested inspections whose frame was not taken within "
                                  "trigger.max_wait_s of their request (the loop or the disk held them, or the camera "
                                  "was slow): each answered by an error event, not inspected",
                                  value=c.get("requests_late", 0))
        yield CounterMetricFamily("adgan_internal_errors", "frames on which a library or the engine failed "
                                  "unexpectedly (each an error event where an inspection was due)",
                                  value=c.get("internal_errors", 0))


class _Quiet(WSGIRequestHandler):
    def log_message(self, fmt, *args) -> None:  # a scrape every few seconds is not the journal's business
        log.debug("metrics: " + fmt, *args)


def serve(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """prometheus-client's start_http_server, with bounded connections; serves from a daemon thread."""
    family = address_family(host, port)

    class Server(Bounded, WSGIServer):
        label = "metrics"
        address_family = family
    server = make_server(host, port, make_wsgi_app(registry), Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class Metrics:
    """The agent's metrics. `status` is the agent's status(), `warm` says whether its engines are warm."""

    def __init__(self, settings, status: Callable[[], dict], warm: Callable[[], bool]) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()  # the state collector is read at scrapes only
        self.stage = Histogram("adgan_stage_seconds", "time per pipeline stage of one frame", ["stage"],
                               buckets=BUCKETS, registry=self.registry)
        self.verdicts = Counter("adgan_verdicts", "events per expected class and verdict",
                                ["class", "verdict"], registry=self.registry)
        self.registry.register(_StateCollector(status, warm))
        # process_open_fds against process_max_fds, resident memory, CPU: a leak seen before it stops a part
        ProcessCollector(registry=self.registry)
        self._server = None
        self._stop = threading.Event()
        self.state = {"state": "off"} if not settings.enabled else {"state": "starting"}

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}/metrics"

    def start(self) -> None:
        """Serve the endpoint; a failure is reported, never raised."""
        if not self.settings.enabled:
            return
        start_serving(self, "metrics", self._stop, without="them")

    def bind(self) -> None:
        """Bind the port and serve from prometheus-client's thread. Raises OSError."""
        self._server = serve(self.registry, self.settings.host, self.settings.port)
        self.state = {"state": "serving", "url": self.url}
        log.info("metrics on %s", self.url)

    def status(self) -> dict:
        """`state`, and while serving the connections refused for being over the limit."""
        return server_status(self.state, self._server)

    def observe(self, work) -> None:
        """The stage times of one frame (Work's *_ms fields); stages that did not run are skipped."""
        if not self.settings.enabled:  # nothing to record on the per-frame path when nobody scrapes
            return
        for stage in STAGES:
            ms = getattr(work, f"{stage}_ms")
            if ms > 0:
                self.stage.labels(stage).observe(ms / 1e3)

    def verdict(self, cls: str, verdict: str) -> None:
        if not self.settings.enabled:
            return
        self.verdicts.labels(cls, verdict).inc()

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self.state = {"state": "stopped"}
