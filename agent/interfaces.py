"""The station's interfaces besides MQTT (README "Interfaces besides MQTT"), each off by
default and each failing alone: metrics (metrics.py), digital I/O (gpio/) and OPC UA
(opcua.py) and the operator's page (web/). The agent tells them about frames, events and readiness in one place."""
from __future__ import annotations

import logging

from agent.gpio.station import StationIO
from agent.metrics import Metrics
from agent.opcua import OpcUaServer
from agent.web.page import OperatorPage


log = logging.getLogger(__name__)


def _guarded(what: str, call, *args) -> None:
    """An interface that fails must not stop inspection: logged, never raised."""
    try:
        call(*args)
    except Exception:
        log.exception("interface %s failed", what)


class Interfaces:
    def __init__(self, agent) -> None:
        s = agent.s
        self.metrics = Metrics(s.metrics, agent.status, lambda: bool(agent.models))
        gpio = s.trigger.mode == "gpio"
        self.gpio = StationIO(s.gpio, agent._on_part_edge if gpio else None, agent._on_part_seen if gpio else None,
                              agent._on_part_late if gpio else None, late_s=s.trigger.max_wait_s)
        self.opcua = OpcUaServer(s.opcua, s.station_id, agent._on_class_command, agent._on_trigger_command,
                                 agent.status)
        self.web = OperatorPage(s.web, agent.status, lambda: bool(agent.models))
        self._waiting = lambda: agent.commands.waiting  # requests still to be answered after an event

    def start(self) -> None:
        self.metrics.start()
        self.gpio.start()
        self.opcua.start()
        self.web.start()

    def frame(self, work) -> None:
        """A frame's stage times."""
        _guarded("metrics", self.metrics.observe, work)

    def event(self, expected: str, event: dict, view=None, lines: bool = True) -> None:
        """An event, as published, and a scored part's pixels (Work.view); `lines`: on the GPIO verdict
        lines too (Work.lines)."""
        _guarded("metrics", self.metrics.verdict, expected, event["verdict"])
        if lines:
            _guarded("gpio", self.gpio.verdict, event["verdict"], self._waiting())
        _guarded("opcua", self.opcua.event, event)
        _guarded("web", self.web.event, event, view)

    def ready(self, ready: bool) -> None:
        _guarded("gpio", self.gpio.ready, ready)

    def status(self) -> dict:
        return {"metrics": self.metrics.status(), "gpio": self.gpio.status(), "opcua": self.opcua.state,
                "web": self.web.status()}

    def close(self) -> None:
        self.web.close()
        self.opcua.close()
        self.gpio.close()
        self.metrics.close()
