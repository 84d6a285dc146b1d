"""The station agent: capture -> segment -> trigger -> score -> decide -> publish, until stopped.

One thread runs the loop; paho's network thread delivers commands (class switch, trigger)
through thread-safe hand-offs. Nothing in the loop can end the agent except a stop request
(SIGTERM / SIGINT), the end of a finite replay, or an engine broken for good (EngineFailures:
exit code 1): a bad frame, or a library failing on one, becomes an `error` event, a failed
source is reopened with doubling backoff and reported in `status`.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
import numpy as np

from agent import config_watch, logsink
from agent.decide.anomaly_map import encode_map, heat, hot_box
from agent.decide.expected import ExpectedClass
from agent.decide.inspector import ClassModel, load_models
from agent.decide.reload import ThresholdsReload
from agent.frame import FrameError, NoObjectError, RGBDFrame, Sample, same_problem, unlit
from agent.health import ClockWatch, Counters, EngineFailures, LoopWatch, SystemdNotifier, Work, iso_time, timed
from agent.interfaces import Interfaces
from agent.mqtt.events import Event, utc_iso
from agent.mqtt.files import AgentLock
from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.passage import Passage, PassageTrigger
from agent.requests import Requests
from agent.segment.preprocess import Preprocessing, like_stored, make_sample, reframe, sample_to_input
from agent.segment.station import StationSegmenter
from agent.settings import AgentSettings
from agent.sources.base import SourceError
from agent.sources.supervisor import SourceSupervisor
from agent.trigger import CommandTrigger

log = logging.getLogger(__name__)
ON_REQUEST = ("mqtt", "gpio")  # trigger modes that inspect only requested frames


class Agent(Requests):
    def __init__(self, settings: AgentSettings, notifier: SystemdNotifier | None = None) -> None:
        self.s = settings
        self.notifier = notifier or SystemdNotifier()
        self.stop_requested = threading.Event()
        self.counters = Counters("frames", "events", "ok", "anomaly", "no_object", "error", "errors_suppressed",
                                 "triggers_coalesced", "classes_refused", "parts_not_inspected", "internal_errors",
                                 "requests_late")
        self.feed = SourceSupervisor(settings.source, settings.health, lambda: self._publish_status(force=True))
        self.source_health = self.feed.health
        self.started = time.monotonic()  # (uptime: not the wall clock, which NTP may set years ahead at boot)
        self.models: dict[str, ClassModel] = {}
        self._sample_prep = Preprocessing()  # the recipe of replayed samples (the folder's own)
        self.expected = settings.model.expected_class
        self.classes: ExpectedClass | None = None  # class/set's switches, kept across restarts (at start)
        self.commands = CommandTrigger(settings.trigger.max_pending)  # (its journal comes with the outbox, at start)
        self._leftovers: list = []  # requests a kill left unanswered (request_journal.Open), answered at start
        self._trigger_echo = threading.Lock()  # trigger/state, said from several threads in turn
        t = settings.trigger
        self.passage = PassageTrigger(t.min_area_px, t.settle_frames, t.settle_tolerance, t.clear_frames)
        self.segmenter = StationSegmenter.from_settings(settings.segmentation, settings.trigger.min_area_px)
        self.outbox: Outbox | None = None
        self.publisher: Publisher | None = None
        self._said: set[str] = set()  # frame problems said since the last inspection (continuous mode)
        self._stop_cause: str | None = None  # why it stops (a signal, the source's end), said in the log
        self.thresholds: ThresholdsReload | None = None
        self._next_status = 0.0
        # seconds spent per stage over all frames (status and bench/pipeline.py)
        self.stage_s = {"capture": 0.0, "segment": 0.0, "score": 0.0, "publish": 0.0}
        self.interfaces = Interfaces(self)
        self.lock = AgentLock(settings.outbox.path)
        self.clock = ClockWatch()  # events are stamped with the wall clock: its jumps are said
        self.loop_watch = LoopWatch(settings.health.stall_s)  # a loop stuck somewhere is said, with where
        self.engine_failures = EngineFailures()
        self.exit_code = 0  # 1: the engine failed RESTART_AFTER inspections in a row (systemd restarts it)

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load and verify models (refusing bad ones), warm up, connect, open the source, READY."""
        m = self.s.model
        self.lock.acquire()  # first: a second agent on this outbox is refused before minutes of loading
        self.notifier.status("loading models")
        self.thresholds = ThresholdsReload(m)  # before the file is read: a change meanwhile is seen
        self.models = load_models(m.bundles, m.thresholds, m.seed, m.backend, m.check_bundles)
        self.classes = ExpectedClass(m.expected_class, self.models, self.s.outbox.path, self._class_refused)
        self.expected = self.classes.name
        made = [t for t in (iso_time(c.bundle.manifest.get("created")) for c in self.models.values()) if t]
        if made:
            self.clock.not_before(max(made), "the newest bundle")
        self._open_outbox_journal()  # (and what waits from before: events, and requests left unanswered)
        self.classes.reserve = self.outbox.reserve  # (a class switch meeting a full disk: stored as events are)
        self.publisher = Publisher(self.s.station_id, self.outbox, self.s.mqtt,
                                   commands={"class": self._on_class_command, "trigger": self._on_trigger_command})
        self._wire_commands(self.publisher.commands)
        self.publisher.start()
        self.interfaces.start()
        self.publisher.publish_state("class", self.expected)
        self.publisher.publish_state("trigger", "idle")
        self._answer_leftovers()  # the requests a kill left unanswered, first
        self.feed.open()
        if self.feed.source is not None and self.feed.source.segmented and self.s.source.type == "folder":
            from agent.sources.dataset import check_preprocessing
            for m in self.models.values():
                self._sample_prep = check_preprocessing(self.s.source.path, m.bundle.preprocessing)
        self.publisher.await_record()  # a new outbox's first number waits for the broker's record, briefly
        self.notifier.ready(f"inspecting {self.expected}")
        log.info("agent %s ready: classes %s, expecting %s, trigger %s", self.s.station_id, sorted(self.models),
                 self.expected, self.s.trigger.mode)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        """Inspect until a stop request or the end of a finite replay; returns the exit code."""
        try:
            self.loop_watch.start()
            while not self.stop_requested.is_set():
                self.notifier.watchdog()
                self.loop_watch.beat()
                self.clock.check()
                self.lock.check()  # its file deleted under a running agent: taken again
                self._publish_status()
                self._answer_ahead()  # class switches and parts not inspected, in their turn
                if self.thresholds is not None and (new := self.thresholds.reread(self.models)) is not None:
                    self.models = new
                self.interfaces.ready(bool(self.models) and self.source_health.state == "running")
                if self.feed.source is None:
                    if (asked := self.commands.take(0)) is not None:  # a request cannot wait for the camera
                        self._error(self._asked(asked.part_id, asked.r),
                                    f"frame source unavailable: {self.source_health.last_error}")
                    if self.feed.reopen_due():
                        self.feed.open()
                    else:
                        self.stop_requested.wait(0.1)
                    continue
                if not self._iteration():
                    self.source_health.state = "ended"
                    log.info("the source has no more frames")
                    self._stop_cause = self._stop_cause or "the source has no more frames"
                    break
            else:  # (a stop asked for; why an agent stopped must be in its log: a SIGHUP from a closed terminal?)
                log.info("stopping (%s): the frame in hand is finished; events are flushed for at most %.0f s",
                         self._stop_cause or "asked to", self.s.health.stop_flush_s)
        except BaseException as e:  # (the requests still waiting are told why: shutdown answers them)
            self._stop_cause = self._stop_cause or f"it failed: {type(e).__name__}: {e}"
            raise
        finally:
            self.shutdown()
        return self.exit_code

    def _iteration(self) -> bool:
        mode = self.s.trigger.mode
        if mode in ON_REQUEST and not self.feed.source.live:
            # A replay advances only on request: wait (bounded, so heartbeats go on).
            if (asked := self._take(0.2)) is None:
                return True
        else:
            asked = self._take(0)
        forced = asked is not None
        self.feed.pace(self.stop_requested)
        if self.stop_requested.is_set():
            if asked is not None:  # answered at the stop, with the requests still waiting
                self.commands.give_back(asked)
            return True
        t0 = time.monotonic()
        work = Work(started=t0, captured_at=time.time(), forced=forced, source={"type": self.s.source.type},
                    part_id=asked.part_id if asked else None, request=asked.r if asked else 0)
        try:
            item = self.feed.source.read()
        except FrameError as e:
            work.capture_ms = 1e3 * (time.monotonic() - t0)
            work.source.update({k: e.meta[k] for k in ("frame", "path") if k in e.meta})
            self._error(work, str(e))
            self._account(work)
            return True
        except (SourceError, OSError, RuntimeError) as e:
            if forced:  # someone is waiting for this inspection: answer now
                self._error(work, f"frame source failed: {e}", inspection=True)
            self.feed.failed(str(e))
            return True
        if item is None:
            if asked is not None:
                self.commands.give_back(asked)
            return False
        work.capture_ms = 1e3 * (time.monotonic() - t0)
        self.counters.add("frames")
        self.feed.delivered()
        meta = item.meta
        work.source.update(frame=meta.get("frame"), path=meta.get("path"))
        truth = {k: meta[k] for k in ("class", "defect") if k in meta}
        if truth:
            work.source["truth"] = truth
        if asked is not None and self._frame_late(asked, work):  # (a camera slow to deliver it)
            self._account(work)
            return True
        try:
            if isinstance(item, Sample):
                if not (mode in ON_REQUEST and not forced):
                    self._inspect_sample(work, item, forced)
            else:
                self._handle_frame(work, item, mode, forced)
        except Exception as e:  # a library failing on this frame (cv2.error...): said as the others are, and on
            self.counters.add("internal_errors")
            log.error("frame %s: %s: %s", work.source.get("frame"), type(e).__name__, e, exc_info=e)
            self._error(work, f"inspection failed: {type(e).__name__}: {e}")
        self._account(work)
        return True

    def _handle_frame(self, work: Work, frame: RGBDFrame, mode: str, forced: bool) -> None:
        if mode in ON_REQUEST and not forced:
            return  # a live camera between requests: frames keep flowing, nothing to inspect
        try:
            with timed(work, "segment_ms"):
                seg = self.segmenter(frame)
        except FrameError as e:
            return self._error(work, str(e))
        work.area = seg.object_area
        if mode == "continuous" and not forced:
            p = self.passage.update(work.area, seg.object, frame.depth)  # (the masks: parts that follow)
            if p is Passage.NONE:
                return
            if p is Passage.UNSETTLED:
                self._error(work, "an object passed without settling: not inspected (it did not stand still for "
                            "trigger.settle_frames frames; on a belt that never stops, trigger on a light barrier: "
                            "mode gpio)", inspection=True)
                return
        if work.area < self.s.trigger.min_area_px:
            return self._emit(work, "no_object")
        model = self.models[self.expected]
        if (why := self.segmenter.cut_off(seg) or unlit(frame.rgb, seg.object)) is not None:
            return self._error(work, why, inspection=True, model=model)
        try:
            with timed(work, "segment_ms"):
                prep = model.bundle.preprocessing
                # the pixels the model was trained on: the training samples' JPEG round trip
                sample = like_stored(make_sample(frame, seg, prep, roi=self.s.segmentation.roi), prep)
        except NoObjectError:
            return self._emit(work, "no_object")
        self._score(work, sample, model)

    def _inspect_sample(self, work: Work, sample: Sample, forced: bool) -> None:
        if not sample.depth.any():
            return self._emit(work, "no_object")
        model = self.models[self.expected]
        if (why := unlit(sample.rgb, sample.depth > 0)) is not None:  # (a stored sample's background is black)
            return self._error(work, why, inspection=True, model=model)
        try:  # stored whole-frame samples for a crop-to-part model are cropped here
            sample = reframe(sample, self._sample_prep, model.bundle.preprocessing)
        except (NoObjectError, ValueError) as e:
            self._error(work, f"cannot frame the sample: {e}", inspection=True, model=model)
            return
        self._score(work, sample, model)

    def _score(self, work: Work, sample: Sample, model: ClassModel) -> None:
        try:
            with timed(work, "segment_ms"):  # preprocessing counts with segmentation
                x = sample_to_input(sample, model.bundle.size)
            with timed(work, "score_ms"):
                d = model.decide(x)
        except (ValueError, RuntimeError) as e:
            self._error(work, f"scoring failed: {e}", inspection=True, model=model)
            return
        except Exception as e:  # the engine's own errors: this part is answered; a broken engine, restarted
            self.counters.add("internal_errors")
            if (cause := self.engine_failures.failed("scoring failed", e)) is not None:
                self._stop_cause, self.exit_code = cause, 1
                self.stop_requested.set()
            self._error(work, f"scoring failed: {type(e).__name__}: {e}", inspection=True, model=model)
            return
        self.engine_failures.worked()
        sigma, background = model.bundle.heat_sigma, model.bundle.heat_background
        amap, box, work.class_check = None, None, d.class_check
        work.view = (sample, x, d.reconstruction, d.relief, sigma, background)
        if d.verdict == "anomaly":
            with timed(work, "publish_ms"):
                h = heat(x, d.reconstruction, d.relief, sigma, background)
                crop, where = sample.meta.get("crop"), "camera"
                if crop is None and "reframe" in sample.meta:  # a replayed sample, cropped to its part
                    crop, where = sample.meta["reframe"], "sample"
                # where on the part: G(z)'s background speckle must not win the box; where the
                # relief check gave the score, the box is the dent's, not the residual's
                where_h = d.relief if d.relief_decides else np.where(x[3] > -1.0, h, 0.0)
                box = hot_box(where_h, tuple(crop) if crop is not None else None, crop_frame=where)
                if self.s.model.anomaly_map:
                    amap = encode_map(h)
        self._emit(work, d.verdict, model=model, score=d.score, threshold=d.threshold, anomaly_map=amap,
                   anomaly_box=box)

    def _account(self, work: Work) -> None:
        for stage in ("capture", "segment", "score", "publish"):
            self.stage_s[stage] += getattr(work, f"{stage}_ms") / 1e3
        self.interfaces.frame(work)

    # -- events --------------------------------------------------------------------------
    def _error(self, work: Work, reason: str, inspection: bool = False, model: ClassModel | None = None) -> None:
        """An `error` event, except for frame problems nobody asked about: in `mqtt` mode only
        requested frames are reported, and in `continuous` mode a frame problem already said since
        the last inspection (its numbers aside: `same_problem`) is counted (errors_suppressed)
        instead of flooding the topic; two problems that alternate are two events, not one a frame."""
        mode, problem, wanted = self.s.trigger.mode, same_problem(reason), work.forced or inspection
        quiet = not wanted and (mode in ON_REQUEST or mode == "continuous" and problem in self._said)
        if quiet:
            self.counters.add("errors_suppressed")
            log.debug("frame not inspected (suppressed repeat): %s", reason)
            return
        log.warning("frame not inspected: %s", reason)
        self._emit(work, "error", model=model, error=reason)
        if len(self._said) >= 100:  # (a bound, should problems ever come in endless kinds)
            self._said.clear()
        self._said.add(problem)

    def _emit(self, work: Work, verdict: str, model: ClassModel | None = None, score: float | None = None,
              threshold: float | None = None, error: str | None = None, anomaly_map: dict | None = None,
              anomaly_box: dict | None = None) -> None:
        if verdict != "error":
            self._said.clear()
        # Decided now: storing the sequence number and the event comes after, and a slow disk's
        # wait counts in the verdict's age (mqtt.verdict_max_age_s), not before it.
        decided, decided_wall = time.monotonic(), time.time()
        seq = self.outbox.next_seq()  # never repeats, also on a full disk (outbox.SeqFile)
        total = 1e3 * (decided - work.started)
        ev = Event(event_id=str(uuid.uuid4()), seq=seq, station=self.s.station_id,
                   captured_at=utc_iso(work.captured_at), decided_at=utc_iso(decided_wall),
                   expected_class=self.expected, model=model.ref() if model else None,
                   trigger=self.s.trigger.mode, part_id=work.part_id, verdict=verdict, score=score, threshold=threshold,
                   object_area_px=work.area, class_check=work.class_check,
                   latency_ms={"capture_ms": round(work.capture_ms, 3), "segment_ms": round(work.segment_ms, 3),
                               "score_ms": round(work.score_ms, 3), "total_ms": round(total, 3)},
                   source=work.source, error=error, anomaly_map=anomaly_map, anomaly_box=anomaly_box)
        with timed(work, "publish_ms"):
            doc = ev.model_dump(by_alias=True)
            self.publisher.publish_event(doc, decided=decided, answers=work.request)
        self.interfaces.event(self.expected, doc, work.view, work.lines)
        if work.request:  # no longer waits (after the verdict lines: the journal's flush does not delay them)
            self.commands.answered(work.request)
        self.counters.add("events")
        self.counters.add(verdict)
        if work.forced:
            self._echo_trigger()
        log.info("#%d %s %s score=%s threshold=%s%s", seq, self.expected, verdict,
                 f"{score:.6g}" if score is not None else "-", f"{threshold:.6g}" if threshold is not None else "-",
                 f" ({error})" if error else "")

    # -- health --------------------------------------------------------------------------
    def status(self) -> dict:
        c = self.counters.snapshot()
        return {"station": self.s.station_id, "time": utc_iso(time.time()),
                "uptime_s": round(time.monotonic() - self.started, 1), "clock": self.clock.status(),
                "loop": self.loop_watch.status(), "log": logsink.status(), "previous_run": self.lock.run.status(),
                "expected_class": self.expected, "class_switch": self.classes.status() if self.classes else None,
                "trigger": self.s.trigger.mode, "requests": self.commands.status(), "counters": c,
                "stage_seconds": {k: round(v, 3) for k, v in self.stage_s.items()},
                "outbox": self.outbox.status() if self.outbox is not None else {"depth": 0},
                "mqtt_connected": bool(self.publisher and self.publisher.connected.is_set()),
                "mqtt": ({**self.publisher.link, "since": utc_iso(self.publisher.link["since"]),
                          "protocol": self.publisher.protocol,
                          "commands_ready": self.publisher.commands_ready.is_set(),
                          **({"tls": self.publisher.tls_files.status()} if self.publisher.tls_files else {}),
                          **self.publisher.counters} if self.publisher else {}),
                "source": {"type": self.s.source.type, **self.source_health.to_dict()},
                "thresholds": ({"path": str(self.s.model.thresholds), **self.thresholds.state,
                                "since": utc_iso(self.thresholds.state["since"])} if self.thresholds else {}),
                "interfaces": self.interfaces.status(), "config": config_watch.status()}

    def _publish_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_status:
            return
        self._next_status = now + self.s.health.status_interval_s
        st = self.status()
        if self.publisher is not None:
            self.publisher.publish_status(st)
        c = st["counters"]
        self.notifier.status(f"{st['source']['state']}: {c['frames']} frames, {c['events']} events, "
                             f"{c['anomaly']} anomalies, outbox {st['outbox']['depth']}")

    # -- stop ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Flush what the broker accepts (bounded), publish offline, release everything. Idempotent."""
        self.notifier.stopping()
        self.loop_watch.stop()
        if self.publisher is not None:
            self._answer_left()  # (before the interfaces close: the PLC's error line says it too)
        self.interfaces.close()
        if self.publisher is not None:
            self._publish_status(force=True)
            if not self.publisher.flush(self.s.health.stop_flush_s):
                log.warning("%d events not yet acknowledged stay in the outbox for the next start",
                            len(self.outbox))
            elif self.stop_requested.is_set():
                log.info("stopped: every event was acknowledged by the broker")
            self.publisher.stop()
            self.publisher = None
        self.feed.close()
        for m in self.models.values():
            m.close()
        self.models = {}
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        self.lock.release(self._stop_cause)
