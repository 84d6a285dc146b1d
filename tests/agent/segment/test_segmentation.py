import logging

import numpy as np
import pytest

from agent.frame import Intrinsics, RGBDFrame
from agent.segment.reference import SurfaceReference, fit_table_plane, plane_depth_map
from agent.segment.segmentation import SegmentationConfig, Segmenter, segment_depth

RAW = SegmentationConfig(opening_px=0)  # the paper's rule, no speckle cleanup


def test_hand_made_frame_gives_known_masks():
    ref = np.full((6, 8), 500, np.uint16)
    d = ref.copy()
    d[1:3, 2:5] = 400       # object: 100 mm in front of the table
    d[4, 0] = 0             # invalid
    d[5, 7] = 900           # background (past 700 mm)
    d[0, 0] = 480           # table with 20 mm noise: surface
    seg = segment_depth(d, ref, RAW)
    want = np.zeros((6, 8), bool)
    want[1:3, 2:5] = True
    np.testing.assert_array_equal(seg.object, want)
    assert seg.invalid[4, 0] and seg.invalid.sum() == 1
    assert seg.background[5, 7] and seg.background.sum() == 1
    assert seg.surface.sum() == 48 - 6 - 2
    # exactly one class per pixel
    total = seg.object.astype(int) + seg.surface + seg.background + seg.invalid
    assert (total == 1).all()


@pytest.mark.parametrize("d, is_surface", [
    (545, True),    # |545-500| = 45 < 0.1 * 545 = 54.5
    (555, True),    # 55 < 55.5
    (556, False),   # 56 < 55.6 is false
    (455, True),    # 45 < 0.1 * max(455, 500) = 50
    (450, False),   # 50 < 50 is false: the boundary itself is object
    (449, False),
])
def test_surface_removal_at_the_ten_percent_boundary(d, is_surface):
    ref = np.full((1, 1), 500, np.uint16)
    seg = segment_depth(np.full((1, 1), d, np.uint16), ref, RAW)
    assert bool(seg.surface[0, 0]) is is_surface
    assert bool(seg.object[0, 0]) is (not is_surface)


def test_max_depth_boundary_and_zero_reference():
    d = np.array([[700, 701, 300]], np.uint16)
    seg = segment_depth(d, np.array([[0, 0, 0]], np.uint16), RAW)
    # 700 is still in range, 701 is background; a reference of 0 is unknown: never surface.
    assert seg.object.tolist() == [[True, False, True]]
    assert seg.background.tolist() == [[False, True, False]]


def test_all_zero_depth_has_no_object():
    seg = segment_depth(np.zeros((10, 10), np.uint16), np.full((10, 10), 500, np.uint16), RAW)
    assert seg.object_area == 0 and seg.invalid.all()


def test_roi_limits_the_object():
    d = np.full((10, 10), 300, np.uint16)
    seg = segment_depth(d, None, SegmentationConfig(roi=(2, 3, 4, 5), opening_px=0))
    assert seg.object_area == 20
    assert seg.object[3:8, 2:6].all()


def test_opening_drops_speckle_but_keeps_a_part():
    ref = np.full((40, 40), 500, np.uint16)
    d = ref.copy()
    d[10:30, 10:30] = 400
    d[2, 2] = 350  # one stray pixel
    seg = segment_depth(d, ref, SegmentationConfig(opening_px=1))
    assert not seg.object[2, 2] and seg.surface[2, 2]
    assert seg.object[12:28, 12:28].all()


def test_shape_mismatch_and_bad_dtype_raise():
    with pytest.raises(ValueError, match="does not match the surface reference"):
        segment_depth(np.zeros((4, 4), np.uint16), np.zeros((5, 5), np.uint16), RAW)
    with pytest.raises(ValueError, match="uint16"):
        segment_depth(np.zeros((4, 4), np.float32), None, RAW)


@pytest.mark.parametrize("kw", [dict(max_depth_mm=0), dict(surface_tolerance=1.5), dict(roi=(0, 0, 0, 5)),
                                dict(opening_px=-1)])
def test_bad_config_raises(kw):
    with pytest.raises(ValueError):
        SegmentationConfig(**kw)


def _tilted_table(k: Intrinsics, noise=0.0, seed=0):
    """Depth of the plane z_cam = 400 + 0.3 * y_cam seen by camera k."""
    plane = np.array([0.0, -0.3, 1.0, -400.0])
    plane /= np.linalg.norm(plane[:3])
    d = plane_depth_map(plane, k)
    d += np.random.default_rng(seed).normal(0, noise, d.shape)
    return np.rint(d).astype(np.uint16), plane


def test_ransac_plane_recovers_a_tilted_table_despite_an_object():
    k = Intrinsics.default(160, 120)
    d, plane = _tilted_table(k, noise=1.0)
    d[40:80, 60:100] -= 80  # a part on the table
    fit, inliers = fit_table_plane(d, k, max_depth_mm=700)
    assert fit[2] < 0  # the normal faces the camera
    fit = -fit  # same plane, the sign convention of `plane`
    assert np.allclose(fit[:3], plane[:3], atol=0.01)
    assert fit[3] == pytest.approx(plane[3], rel=0.01)
    assert 0.75 < inliers < 0.95


def test_segmenter_without_reference_logs_and_finds_the_part(caplog):
    k = Intrinsics.default(160, 120)
    d, _ = _tilted_table(k, noise=1.0)
    d[40:80, 60:100] -= 100
    f = RGBDFrame(np.zeros((120, 160, 3), np.uint8), d, 0.0, k)
    with caplog.at_level(logging.WARNING):
        seg = Segmenter(SegmentationConfig())(f)
    assert "RANSAC" in caplog.text
    assert seg.object[42:78, 62:98].all()
    assert seg.object_area < 40 * 40 * 1.05


def test_reference_is_the_median_and_roundtrips(tmp_path):
    k = Intrinsics.default(32, 24)
    frames = []
    for v in (500, 510, 505, 0, 503):
        d = np.full((24, 32), v, np.uint16)
        frames.append(RGBDFrame(np.zeros((24, 32, 3), np.uint8), d, 0.0, k))
    ref = SurfaceReference.from_frames(frames)
    assert (ref.depth == 504).all()  # median of the valid 500, 503, 505, 510
    ref.save(tmp_path / "ref.npz")
    back = SurfaceReference.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.depth, ref.depth)
    assert back.n_frames == 5 and back.intrinsics == k


def test_reference_holes_are_filled_from_the_plane():
    k = Intrinsics.default(160, 120)
    d, _ = _tilted_table(k)
    d[10:14, 10:14] = 0  # never measured
    ref = SurfaceReference.from_frames([RGBDFrame(np.zeros((120, 160, 3), np.uint8), d, 0.0, k)])
    full, _ = _tilted_table(k)
    assert np.abs(ref.depth[10:14, 10:14].astype(int) - full[10:14, 10:14]).max() <= 2


def test_missing_or_corrupt_reference_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="capture-reference"):
        SurfaceReference.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a surface reference"):
        SurfaceReference.load(bad)
    with pytest.raises(ValueError, match="at least one"):
        SurfaceReference.from_frames([])


def test_roi_outside_the_frame_is_said_on_every_frame_and_a_partial_one_once(caplog):
    """A region drawn on another resolution's frames: outside this frame no part can be seen,
    which the station says (a FrameError is an error event) instead of inspecting nothing."""
    from agent.frame import FrameError
    from agent.segment.station import StationSegmenter
    k = Intrinsics.default(160, 120)
    d = np.full((120, 160), 500, np.uint16)
    d[40:80, 60:100] = 400
    f = RGBDFrame(np.zeros((120, 160, 3), np.uint8), d, 0.0, k)
    for roi in ((160, 0, 50, 50), (0, 120, 50, 50)):
        with pytest.raises(FrameError, match=r"outside the 160x120 frame"):
            StationSegmenter(SegmentationConfig(roi=roi))(f)
    seg = StationSegmenter(SegmentationConfig(roi=(50, 30, 400, 400)))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert seg(f).object[42:78, 62:98].all()
    assert caplog.text.count("reaches past the 160x120 frame: only 110x90 pixels") == 1


def test_a_view_smaller_than_min_area_px_is_said():
    """trigger.min_area_px over what a frame (or its region of interest) holds: no part could ever
    count as present, which every frame says instead of passing for an empty table."""
    from agent.frame import FrameError
    from agent.segment.station import StationSegmenter
    d = np.full((120, 160), 500, np.uint16)
    f = RGBDFrame(np.zeros((120, 160, 3), np.uint8), d, 0.0, Intrinsics.default(160, 120))
    with pytest.raises(FrameError, match=r"min_area_px \(20000\) is more than the 19200 pixels of the 160x120 frame"):
        StationSegmenter(SegmentationConfig(), min_area_px=20000)(f)
    with pytest.raises(FrameError, match=r"more than the 1000 pixels of segmentation.roi \[150, 20, 100, 100\]"):
        StationSegmenter(SegmentationConfig(roi=(150, 20, 100, 100)), min_area_px=1500)(f)
    StationSegmenter(SegmentationConfig(), min_area_px=19200)(f)  # a part filling the frame would count


def test_a_part_left_in_the_surface_reference_is_found_where_it_stands():
    """A part on the table while the reference is recorded becomes 'surface': a part placed on that
    spot later is not seen. standing_on finds it against the reference's own table plane."""
    from agent.segment.segmentation import standing_on, standing_words
    from agent.sources.synthetic import SyntheticSource
    src = SyntheticSource(("cylinder",), seed=3, frames_per_part=8, gap_frames=0)
    assert standing_on(SurfaceReference.from_frames(src.empty_frames(3)), SegmentationConfig(), 1500) == []
    part = SurfaceReference.from_frames([src.frame(i) for i in range(3)])
    (x, y, w, h, area), = standing_on(part, SegmentationConfig(), 1500)
    truth = Segmenter(SegmentationConfig(), SurfaceReference.from_frames(src.empty_frames(3)))(src.frame(0)).object
    ys, xs = np.nonzero(truth)
    assert abs(x - xs.min()) <= 3 and abs(y - ys.min()) <= 3 and abs(area - truth.sum()) < 0.1 * truth.sum()
    assert standing_on(part, SegmentationConfig(), area + 1) == []  # smaller than any part: not said
    assert f"{area} pixels at x {x}, y {y} ({w}x{h})" in standing_words([(x, y, w, h, area)])


def test_the_station_says_a_part_in_the_reference_it_loads(tmp_path, caplog):
    from agent.segment.station import StationSegmenter
    from agent.sources.synthetic import SyntheticSource
    src = SyntheticSource(("cylinder",), seed=3, frames_per_part=8, gap_frames=0)
    SurfaceReference.from_frames([src.frame(i) for i in range(3)]).save(tmp_path / "part.npz")
    SurfaceReference.from_frames(src.empty_frames(3)).save(tmp_path / "empty.npz")
    for name, said in (("empty.npz", False), ("part.npz", True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            StationSegmenter(SegmentationConfig(), tmp_path / name, min_area_px=1500)(src.frame(0))
        assert ("something stands on the recorded surface" in caplog.text) is said, caplog.text


def test_a_camera_moved_since_the_reference_was_recorded_is_said(tmp_path):
    """A bump that tilts the camera makes most of the view differ from the recorded surface: one
    'object' over most of the frame, present for good, so a station in continuous mode inspected it
    once and then nothing more, without a word."""
    import cv2

    from agent.frame import FrameError
    from agent.segment.station import StationSegmenter
    from agent.sources.synthetic import SyntheticSource
    src = SyntheticSource(("cylinder",), seed=3, frames_per_part=8, gap_frames=4)

    def tilted(f, dy):
        d = cv2.warpAffine(f.depth, np.float32([[1, 0, 0], [0, 1, dy]]), f.depth.shape[::-1],
                           flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        return RGBDFrame(f.rgb, d, 0.0, f.intrinsics)
    SurfaceReference.from_frames(src.empty_frames(3)).save(tmp_path / "ref.npz")
    seg = StationSegmenter(SegmentationConfig(), tmp_path / "ref.npz")
    for i in (0, 9):                                            # a part, the empty table
        assert seg(tilted(src.frame(i), 20)).object_area < 0.1 * 640 * 480  # a small bump: still fine
        with pytest.raises(FrameError, match=r"no longer matches the surface reference .*ref.npz: under 20% of it "
                                             r"is where it was. Has the camera or the table moved\? Then record"):
            seg(tilted(src.frame(i), 80))
    # a part on a small stand (the rest of the view beyond max_depth_mm) may cover most of the surface
    stand = np.full((120, 160), 2000, np.uint16)
    stand[40:80, 50:110] = 500
    SurfaceReference.from_frames([RGBDFrame(np.zeros((120, 160, 3), np.uint8), stand, 0.0,
                                            Intrinsics.default(160, 120))], fill_holes=False).save(tmp_path / "s.npz")
    part = stand.copy()
    part[42:78, 52:108] = 400
    got = StationSegmenter(SegmentationConfig(), tmp_path / "s.npz")(
        RGBDFrame(np.zeros((120, 160, 3), np.uint8), part, 0.0, Intrinsics.default(160, 120)))
    assert got.object_area > 0.8 * 40 * 60
    plane = StationSegmenter(SegmentationConfig(), None)       # the plane fitted at the first frame
    assert plane(src.frame(9)).object_area == 0
    with pytest.raises(FrameError, match="plane fitted at the first frame.*restart the agent"):
        plane(tilted(src.frame(9), 80))


def test_a_blocked_camera_says_one_thing_in_every_frame():
    """In continuous mode an error that repeats the previous one is counted, not sent again. The
    message named each frame's measured fraction (1.2%, 2.0%, 0.5%, ...), so a blocked camera sent
    an error event per frame (18 of 20 frames here; 30 a second live, which fills the outbox and
    drops its oldest events while the broker is away)."""
    from agent.frame import FrameError
    from agent.segment.station import StationSegmenter
    rng = np.random.default_rng(0)
    said = set()
    for _ in range(10):
        d = np.full((120, 160), 500, np.uint16)
        d[rng.random(d.shape) > rng.uniform(0.005, 0.04)] = 0
        with pytest.raises(FrameError) as e:
            StationSegmenter(SegmentationConfig())(RGBDFrame(np.zeros((120, 160, 3), np.uint8), d, 0.0,
                                                             Intrinsics.default(160, 120)))
        said.add(str(e.value))
    assert said == {"under 5% of the depth pixels hold a measurement: the camera is blocked, too close, or its "
                    "depth stream failed"}


def test_a_part_reaching_the_edge_of_the_view_is_named_by_its_edges():
    from agent.segment.segmentation import Segmentation
    from agent.segment.station import StationSegmenter

    def said(box, roi=None, speck=None):
        obj = np.zeros((120, 160), bool)
        y0, y1, x0, x1 = box
        obj[y0:y1, x0:x1] = True
        if speck is not None:  # depth noise the opening left: 3x3 pixels on an edge
            obj[speck[0]:speck[0] + 3, speck[1]:speck[1] + 3] = True
        if roi is not None:
            x, y, w, h = roi
            inside = np.zeros_like(obj)
            inside[y:y + h, x:x + w] = True
            obj &= inside
        z = np.zeros_like(obj)
        return StationSegmenter(SegmentationConfig(roi=roi)).cut_off(Segmentation(obj, ~obj, z, z))
    assert said((10, 50, 10, 50)) is None
    assert said((10, 50, 10, 50), speck=(0, 100)) is None  # under a tenth of the part: not a part cut off
    assert said((10, 18, 10, 18), speck=(117, 100)).startswith("the part reaches the bottom edge")  # over a tenth
    assert said((0, 120, 30, 60)).startswith("the part reaches the top and bottom edge of the view (the frame)")
    assert said((10, 50, 100, 160)).startswith("the part reaches the right edge of the view (the frame)")
    assert said((10, 50, 10, 50), roi=(20, 0, 140, 120)).startswith("the part reaches the left edge of the view "
                                                                      "(segmentation.roi)")
    assert said((10, 50, 30, 60), roi=(20, 0, 300, 120)) is None  # a region reaching past the frame: its part


def test_a_reference_left_unreadable_by_a_command_run_with_sudo_says_so_not_corrupt(station_user, tmp_path):
    """capture-reference run by hand as root, its file then 0600: the unit's agent (its own user) said
    'is not a surface reference file: [Errno 13] Permission denied' on every frame, as if corrupt."""
    import subprocess
    import sys

    from tests.agent.conftest import NOBODY, ROOT
    wrap, base = station_user
    k = Intrinsics.default(32, 24)
    ref = base / "ref.npz"
    SurfaceReference.from_frames([RGBDFrame(np.zeros((24, 32, 3), np.uint8), np.full((24, 32), 500, np.uint16),
                                            0.0, k)]).save(ref)
    ref.chmod(0o600)
    code = ("from agent.segment.reference import SurfaceReference\n"
            f"try:\n    SurfaceReference.load({str(ref)!r})\nexcept PermissionError as e:\n    print(e)")
    r = subprocess.run([*wrap, sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "not a surface reference" not in r.stdout, r.stdout + r.stderr
    assert f"{ref} cannot be read by this agent's user (Permission denied; it is owned by root (uid 0), mode 0600, " \
           f"and this agent runs as nobody (uid {NOBODY})): give it to that user (`chown nobody: {ref}`" in r.stdout
