"""The `events` payload: one JSON document per inspected object (DESIGN.md, MQTT contract).

The pydantic model below is the single definition. `event.schema.json` beside this module
is generated from it (`python -m agent.mqtt.events > agent/mqtt/event.schema.json`) and
published for PLC / SCADA integrators; a test keeps the two identical.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

EVENT_SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("event.schema.json")
Verdict = Literal["ok", "anomaly", "no_object", "error"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelRef(_Doc):
    cls: str = Field(alias="class", description="product class the bundle was trained on")
    kind: str = Field(description="training recipe: gan, wgan or wgan-gp")
    bundle_hash: str = Field(description="sha256 of the bundle manifest (identifies the model exactly)")
    backend: str = Field(description="engine that ran the search: onnxruntime or tensorrt")


class Latency(_Doc):
    capture_ms: float = Field(ge=0, description="waiting for and reading the frame")
    segment_ms: float = Field(ge=0, description="segmentation and preprocessing")
    score_ms: float = Field(ge=0, description="the latent search (Algorithm 1)")
    total_ms: float = Field(ge=0, description="frame arrival to event")


class SourceRef(_Doc):
    type: str = Field(description="realsense, folder or synthetic")
    frame: Optional[int] = Field(None, description="frame number within the source, when it has one")
    path: Optional[str] = Field(None, description="file the frame came from (folder replay)")
    truth: Optional[dict[str, Any]] = Field(None, description="ground truth the source knows (synthetic scenes)")


class AnomalyMap(_Doc):
    format: Literal["png"] = Field("png", description="8-bit greyscale PNG")
    encoding: Literal["base64"] = Field("base64", description="how `data` encodes the PNG bytes")
    width: int = Field(ge=1, description="pixels (the model's input size)")
    height: int = Field(ge=1, description="pixels")
    max: float = Field(ge=0, le=1, description="largest difference (1 = full range)")
    mean: float = Field(ge=0, le=1, description="mean difference")
    peak_xy: list[int] = Field(min_length=2, max_length=2, description="x, y of the largest difference")
    data: str = Field(description="the PNG: 255 = a difference of the full value range, max over R, G, B, depth")


class AnomalyBox(_Doc):
    x: int = Field(description="left edge, pixels")
    y: int = Field(description="top edge, pixels")
    width: int = Field(ge=1, description="pixels")
    height: int = Field(ge=1, description="pixels")
    frame: Literal["camera", "sample"] = Field(description="camera: pixels of the camera frame (colour image); "
                                                           "sample: of the replayed sample (no camera frame)")
    peak: float = Field(ge=0, le=1, description="largest difference in the region (1 = full range)")


class ClassCheckResult(_Doc):
    margin: float = Field(description="ln(score of the expected class's bundle) - ln(score of the closest other "
                                      "class's bundle), both at k 0 (the encoder's start): above 0, the other class's "
                                      "generator reproduces the part better")
    threshold: float = Field(description="the margin's calibrated threshold: not the expected class's part when "
                                         "margin > threshold")
    closest_class: str = Field(description="the other class whose bundle reproduces the part best")
    anomaly: bool = Field(description="margin > threshold: the verdict is anomaly whatever the score")


class Event(_Doc):
    schema_version: Literal[1] = Field(EVENT_SCHEMA_VERSION, description="version of this document")
    event_id: str = Field(min_length=1, description="unique id; a resend carries the same id. Delivery is at least "
                                                    "once (at most once per connection): consumers deduplicate on it")
    seq: int = Field(ge=1, description="per-station sequence number: never repeats and never goes backwards, across "
                                       "restarts, kills and disk errors")
    station: str = Field(description="station id")
    captured_at: str = Field(description="UTC time the frame was taken (ISO 8601)")
    decided_at: str = Field(description="UTC time the verdict was made (ISO 8601)")
    expected_class: str = Field(description="the class being inspected")
    model: Optional[ModelRef] = Field(None, description="the model that scored the object (absent when none ran)")
    trigger: Literal["continuous", "mqtt", "every_frame", "gpio"] = Field(description="what started this inspection")
    part_id: Optional[str] = Field(None, description="the part's id, as its request gave it (trigger/set "
                                                     "{\"part_id\": ...}; several joined by commas in one error "
                                                     "event for a flood of parts not inspected); null otherwise")
    verdict: Verdict = Field(description="ok, anomaly (score > threshold, or the class check's margin > its "
                                         "threshold), no_object, or error")
    score: Optional[float] = Field(None, description="anomaly score (mean final loss over seeds); higher is worse")
    threshold: Optional[float] = Field(None, description="calibrated threshold: anomaly when score > threshold")
    object_area_px: Optional[int] = Field(None, ge=0, description="segmented object area in frame pixels")
    latency_ms: Latency = Field(description="time per stage")
    source: SourceRef = Field(description="where the frame came from")
    error: Optional[str] = Field(None, description="why the frame could not be inspected (verdict error)")
    class_check: Optional[ClassCheckResult] = Field(
        None, description="whether the part is of another of the station's classes (ok and anomaly verdicts of a "
                          "class calibrated with --class-check); null otherwise")
    anomaly_box: Optional[AnomalyBox] = Field(
        None, description="where the damage is: the bounding box of the hottest region of |G(z*) - x| on the "
                          "part (pixels within half the peak difference, connected to the peak), or, where the "
                          "bundle's depth relief check gave the score, of the surface pushed in behind the smooth "
                          "surface fitted to the part; on anomaly verdicts")
    anomaly_map: Optional[AnomalyMap] = Field(
        None, description="where the part differs from the model's reconstruction, |G(z*) - x|, and with a depth "
                          "relief check the larger of that and the relief where it is unusual (0 up to the training "
                          "parts' median, 1 from two of their spreads above it) (anomaly verdicts, when the "
                          "station's model.anomaly_map is on)")

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=False).encode()


def reason(event: dict) -> str:
    """Why an event's verdict is what it is, in one line for an operator (the operator page, OPC UA
    LastReason): the error, or what made the part an anomaly (the score over its threshold, the class
    check's other class, where the damage is); "" for an ok part."""
    verdict = event.get("verdict")
    if verdict == "error":
        return event.get("error") or "not inspected"
    if verdict == "no_object":
        return "no part in view"
    if verdict != "anomaly":
        return ""
    why = []
    score, threshold, cc, box = (event.get(k) for k in ("score", "threshold", "class_check", "anomaly_box"))
    if score is not None and threshold is not None and score > threshold:
        where = (f" at x {box['x']}-{box['x'] + box['width'] - 1}, y {box['y']}-{box['y'] + box['height'] - 1} "
                 f"({box['frame']} pixels)" if box else "")
        why.append(f"score {score:.4g} over its threshold {threshold:.4g}{where}")
    if cc and cc.get("anomaly"):
        why.append(f"looks like {cc['closest_class']}, not {event.get('expected_class')} (class check: margin "
                   f"{cc['margin']:.3g} over {cc['threshold']:.3g})")
    return "; ".join(why) or "anomaly"


def utc_iso(ts: float, timespec: str = "milliseconds") -> str:
    """`ts` as UTC ISO 8601 with a Z ("seconds": to the second, as logs and certificates say it)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def utc_seconds(ts: float) -> str:
    return utc_iso(ts, "seconds")


def json_schema() -> dict[str, Any]:
    s = Event.model_json_schema(by_alias=True)
    s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    s["$id"] = "https://github.com/adgan-edge/adgan-edge/agent/mqtt/event.schema.json"
    s["title"] = "adgan-edge inspection event"
    s["description"] = ("One JSON document per inspected object on adgan/<station>/events (QoS 1). "
                        "Delivered at least once, in seq order, each event_id at most once per connection: "
                        "deduplicate on event_id. The bare OK/NG on .../verdict is live only (never replayed "
                        "after an outage); this document is the record.")
    return s


def schema_text() -> str:
    return json.dumps(json_schema(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
