"""agent/mqtt/events.py `reason`: why an event's verdict is what it is, in one line (the operator
page and OPC UA LastReason show it)."""
from __future__ import annotations

from agent.mqtt.events import reason


def test_the_reason_says_the_error_and_what_made_an_anomaly():
    assert reason({"verdict": "ok", "score": 0.1, "threshold": 0.2}) == ""
    assert reason({"verdict": "no_object"}) == "no part in view"
    assert reason({"verdict": "error", "error": "the camera stopped sending frames"}) == \
        "the camera stopped sending frames"
    assert reason({"verdict": "error", "error": None}) == "not inspected"
    box = {"x": 10, "y": 20, "width": 5, "height": 3, "frame": "camera", "peak": 0.5}
    assert reason({"verdict": "anomaly", "score": 0.31, "threshold": 0.2, "anomaly_box": box}) == \
        "score 0.31 over its threshold 0.2 at x 10-14, y 20-22 (camera pixels)"
    cc = {"margin": 0.812, "threshold": 0.3, "closest_class": "sphere", "anomaly": True}
    both = {"verdict": "anomaly", "score": 0.31, "threshold": 0.2, "class_check": cc, "expected_class": "cylinder",
            "anomaly_box": None}
    assert reason(both) == ("score 0.31 over its threshold 0.2; looks like sphere, not cylinder (class check: "
                            "margin 0.812 over 0.3)")
    assert reason({**both, "score": 0.1}) == "looks like sphere, not cylinder (class check: margin 0.812 over 0.3)"
    # a check that did not flag the part is not a reason
    assert reason({**both, "class_check": {**cc, "anomaly": False}}).startswith("score 0.31 over")
