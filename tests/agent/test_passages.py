"""Continuous mode's passages when parts follow each other without the view clearing between
them (a belt, a robot, a hand that stays in view): each part is inspected once, and a hand
over an inspected part, or carrying it away, is not a part."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from agent.capture import capture_frames
from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import SegmentationConfig
from agent.segment.station import StationSegmenter
from agent.sources.dataset import read_raw_frame, write_raw_frame
from agent.sources.folder import FolderSource
from agent.sources.synthetic_station import SyntheticStation
from agent.trigger import Passage, PassageTrigger
from tests.agent.conftest import agent_config, replay_events

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import passages as bench_passages  # noqa: E402

TABLE, TOP, HAND = 500, 450, 380  # millimetres: the table, a part's top, a hand over it


def view(rng, parts=(), hand=None):
    """(mask, depth) of a 120x160 view of a table: square parts (x, y, side) 50 mm high with
    2 mm of noise and an edge row that flickers, and a hand (x, y, w, h) nearer than them."""
    depth = np.full((120, 160), TABLE, np.float32)
    for x, y, side in parts:
        depth[y:y + side, x:x + side] = TOP
        row = depth[y + side, x:x + side]
        row[rng.random(row.size) < 0.5] = TOP
    if hand is not None:
        x, y, w, h = hand
        depth[y:y + h, x:x + w] = HAND
    d = np.clip(depth + rng.normal(0, 2, depth.shape), 0, None).astype(np.uint16)
    return d < TABLE - 20, d


def passages(frames, masks: bool = True) -> list[tuple[int, str]]:
    t = PassageTrigger(min_area_px=100, settle_frames=3, settle_tolerance=0.1, clear_frames=2)
    got = [t.update(int(m.sum()), m, d) if masks else t.update(int(m.sum())) for m, d in frames]
    return [(i, p.name) for i, p in enumerate(got) if p is not Passage.NONE]


PART = (40, 30, 40)


def test_a_hand_over_the_inspected_part_or_carrying_it_away_is_not_a_new_part():
    rng = np.random.default_rng(0)
    frames = [view(rng, [PART]) for _ in range(12)]  # sensor noise and a flickering edge
    frames += [view(rng, [PART], hand=(60 + 10 * i, 40, 30, 20)) for i in range(6, -1, -1)]  # a hand comes in
    frames += [view(rng, [PART], hand=(60, 40, 30, 20)) for _ in range(6)]  # and rests on a third of it
    frames += [view(rng, [PART], hand=(40, 30, 40, 28)) for _ in range(6)]  # on 70% of it, grasping it
    frames += [view(rng, [(40 + 8 * i, 30, 40)], hand=(40 + 8 * i, 30, 40, 28)) for i in range(16)]  # carries it out
    frames += [view(rng) for _ in range(3)]
    assert passages(frames) == [(2, "SCORE")]  # one inspection, and no "passed without settling"


def test_a_part_that_follows_without_the_view_clearing_is_a_new_passage():
    rng = np.random.default_rng(1)
    # put down elsewhere while the hand stays in view: inspected again where it settled
    frames = [view(rng, [PART]) for _ in range(6)]
    frames += [view(rng, [(40 + 8 * i, 30 + 4 * i, 40)], hand=(60 + 8 * i, 40 + 4 * i, 30, 20)) for i in range(9)]
    frames += [view(rng, [(112, 66, 40)], hand=(140, 100, 20, 20)) for _ in range(6)]
    assert passages(frames) == [(2, "SCORE"), (17, "SCORE")]
    assert passages(frames, masks=False) == [(2, "SCORE")]  # the area alone: one passage
    # a smaller part swapped in where the first stood, between two frames: it covers 39% of its place
    frames = [view(rng, [PART]) for _ in range(6)] + [view(rng, [(50, 40, 25)]) for _ in range(6)]
    assert passages(frames) == [(2, "SCORE"), (9, "SCORE")]


def test_a_part_sliding_along_at_a_constant_area_is_inspected_when_it_stops():
    rng = np.random.default_rng(2)
    frames = [view(rng, [(10 + 6 * i, 30, 40)]) for i in range(10)] + [view(rng, [(70, 30, 40)]) for _ in range(5)]
    assert passages(frames) == [(12, "SCORE")]  # its third frame standing (until 2026-12-06: its third in view)
    assert passages(frames, masks=False) == [(2, "SCORE")]


@pytest.fixture(scope="module")
def belt(tmp_path_factory):
    """A raw-layout folder of a belt at 320x240 (bench/passages.py) and its surface reference:
    three parts, each sliding in from the left 15 mm a frame, standing 5 frames, and sliding
    out to the right as the next slides in, so that one part is always in view (the first
    comes into an empty view). Returns (folder, reference, the frames where each part has
    stood still for its third frame)."""
    root = tmp_path_factory.mktemp("belt")
    station = SyntheticStation(320, 240, seed=5, variety="product")
    SurfaceReference.from_frames(station.render(np.random.default_rng([9, j]), None) for j in range(5)) \
        .save(root / "reference.npz")
    still, run = [], 0
    for n, frame in enumerate(bench_passages.belt(station, ("cylinder", "sphere", "rectangle"))):
        run = run + 1 if frame.meta["still"] else 0
        if run == 3:
            still.append(n)
        write_raw_frame(root / "frames", n, frame)
    return root / "frames", root / "reference.npz", still


def test_capture_frames_keeps_each_part_on_a_belt_that_never_clears(belt, tmp_path):
    frames, reference, still = belt
    assert still == [6, 19, 32]
    seg = StationSegmenter(SegmentationConfig(), reference)
    report = capture_frames(FolderSource(frames), tmp_path / "kept", 10,
                            passage=PassageTrigger(min_area_px=300), segmenter=seg)
    # until 2026-12-06: the first part only, on frame 2, as it slid in (its area was constant)
    assert report.written == [0, 1, 2] and report.unsettled == 0
    for n, i in enumerate(still):
        assert np.array_equal(read_raw_frame(tmp_path / "kept", n).depth, read_raw_frame(frames, i).depth)


def test_the_agent_inspects_each_part_of_a_belt_that_never_clears(belt, broker, calibrated, tmp_path):
    frames, reference, still = belt
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds, f'type = "folder"\npath = "{frames}"\nfps = 0',
                       trigger="continuous", extra=f'[segmentation]\nreference = "{reference}"\n')
    cfg.write_text(cfg.read_text().replace('mode = "continuous"', 'mode = "continuous"\nmin_area_px = 300'))
    evs, said = replay_events(cfg, broker.port, tmp_path / "agent.log", 3)
    assert [e["source"]["frame"] for e in evs] == still, said
    assert all(e["verdict"] in ("ok", "anomaly") for e in evs)


def test_a_part_that_slides_through_without_stopping_is_an_error_event(broker, calibrated, tmp_path):
    """On a belt that never stops no part is still: each is said, not inspected while it moves
    (until 2026-12-06 its constant area counted as still, and it was inspected mid-motion)."""
    station = SyntheticStation(320, 240, seed=5, variety="product")
    SurfaceReference.from_frames(station.render(np.random.default_rng([9, j]), None) for j in range(5)) \
        .save(tmp_path / "reference.npz")
    rng = np.random.default_rng(3)
    sphere = station.product("sphere")
    frames = [station.render(rng, bench_passages.moved(sphere, dx)) for dx in np.arange(-60.0, 61.0, 15.0)]
    for n, frame in enumerate(frames + [station.render(rng, None) for _ in range(3)]):
        write_raw_frame(tmp_path / "frames", n, frame)
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds,
                       f'type = "folder"\npath = "{tmp_path / "frames"}"\nfps = 0', trigger="continuous",
                       extra=f'[segmentation]\nreference = "{tmp_path / "reference.npz"}"\n')
    cfg.write_text(cfg.read_text().replace('mode = "continuous"', 'mode = "continuous"\nmin_area_px = 300'))
    evs, said = replay_events(cfg, broker.port, tmp_path / "agent.log", 1)
    assert [e["verdict"] for e in evs] == ["error"], said
    assert evs[0]["error"].startswith("an object passed without settling: not inspected (it did not stand still"), \
        evs[0]["error"]
