import numpy as np
import pytest

from agent.decide.anomaly_map import decode_map, encode_map, heat, map_tiles, pixel_map


def test_the_map_shows_where_the_reconstruction_differs():
    x = np.full((4, 32, 32), -1.0, np.float32)
    x[:, 8:24, 8:24] = 0.5
    y = x.copy()
    y[3, 10:12, 20:22] = -0.5  # a dent in depth: 1.0 of difference
    y[0, 2, 3] = -0.9          # a faint speck in red: 0.1
    h = heat(x, y)
    assert h.shape == (32, 32) and h.max() == pytest.approx(0.5) and h[2, 3] == pytest.approx(0.05)
    assert pixel_map(x, y)[3].max() == pytest.approx(0.5) and pixel_map(x, y)[1].max() == 0
    m = encode_map(h)
    assert m["width"] == m["height"] == 32 and m["peak_xy"] == [20, 10] and m["max"] == pytest.approx(0.5)
    assert np.abs(decode_map(m) - h).max() <= 0.5 / 255 + 1e-6
    t = map_tiles(x, y, scale=1)
    assert t.shape == (64, 3 * 33, 3) and t.dtype == np.uint8
    with pytest.raises(ValueError):
        pixel_map(x, y[:3])


def test_the_hot_box_is_the_region_around_the_peak_in_sample_or_camera_pixels():
    from agent.decide.anomaly_map import hot_box
    h = np.zeros((32, 32), np.float32)
    h[10:14, 20:26] = 0.8          # the hottest region: x 20-25, y 10-13
    h[12, 22] = 1.0                # its peak
    h[0:3, 0:3] = 0.45             # below half the peak: not part of it
    h[28:30, 28:30] = 0.9          # hot, but not connected to the peak
    b = hot_box(h)
    assert (b["x"], b["y"], b["width"], b["height"], b["frame"], b["peak"]) == (20, 10, 6, 4, "sample", 1.0)
    # the sample was cut from the camera window x0 100, y0 50, side 128 (4 camera pixels per sample pixel)
    c = hot_box(h, (100, 50, 128))
    assert (c["x"], c["y"], c["width"], c["height"], c["frame"]) == (180, 90, 24, 16, "camera")
    # a crop-to-part model replaying a stored sample: the window is in the stored sample's pixels
    d = hot_box(h, (4, 6, 16), crop_frame="sample")
    assert (d["x"], d["y"], d["width"], d["height"], d["frame"]) == (14, 11, 3, 2, "sample")


def test_make_sample_records_the_camera_window_it_shows():
    from agent.segment.preprocess import Preprocessing, make_sample
    from agent.segment.segmentation import Segmentation
    from agent.frame import Intrinsics, RGBDFrame
    h, w = 120, 160
    depth = np.full((h, w), 600, np.uint16)
    depth[40:60, 90:130] = 450
    rgb = np.zeros((h, w, 3), np.uint8)
    frame = RGBDFrame(rgb=rgb, depth=depth, timestamp=0.0,
                      intrinsics=Intrinsics(width=w, height=h, fx=100, fy=100, cx=80, cy=60))
    mask = depth < 500
    seg = Segmentation(object=mask, background=~mask, surface=np.zeros_like(mask), invalid=np.zeros_like(mask))
    s = make_sample(frame, seg, Preprocessing(size=32, framing="object", margin=0.25))
    x0, y0, side = s.meta["crop"]
    assert side == 60 and (x0, y0) == (80, 20)   # 40 px wide box, 25% margin each side, centred on it
    full = make_sample(frame, seg, Preprocessing(size=32))
    assert full.meta["crop"] == (20, 0, 120)     # the paper's framing: the central square


def test_a_bundles_sigma_smooths_the_map_into_one_region_and_keeps_its_place():
    from agent.decide.anomaly_map import check_sigma, smooth
    x = np.full((4, 32, 32), -1.0, np.float32)
    x[:, 4:28, 4:28] = 0.0
    y = x.copy()
    y[0, 14:18, 10:14] = 0.6                    # a defect: 0.3 of difference over 4 x 4 pixels
    y[1, 5, 25] = 0.8                           # one speck of 0.4 (a JPEG or print edge)
    relief = np.zeros((32, 32), np.float32)
    relief[20:24, 20:24] = 0.25                 # a dent the generator drew
    raw, smoothed = heat(x, y, relief), heat(x, y, relief, sigma=2.0)
    assert np.array_equal(heat(x, y, relief, sigma=0.0), raw)
    assert smoothed.shape == raw.shape and smoothed.dtype == np.float32
    assert 0.0 <= smoothed.min() and smoothed.max() <= raw.max()
    # the speck is the raw map's peak; smoothed, the defect's region is, where the defect is
    assert np.unravel_index(np.argmax(raw), raw.shape) == (5, 25)
    assert 14 <= np.unravel_index(np.argmax(smoothed), raw.shape)[0] <= 17
    assert smoothed[15, 11] > 2 * smoothed[5, 25]
    assert smoothed[21, 21] > smoothed[5, 25]    # the relief is smoothed with the rest
    assert smoothed.sum() == pytest.approx(raw.sum(), rel=0.02)  # spread, not lost
    assert np.array_equal(smooth(raw, 0), raw)
    tiles = map_tiles(x, y, scale=1, relief=relief, sigma=2.0)
    assert tiles.shape == (64, 3 * 33, 3)
    for bad in (-1.0, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="sigma"):
            check_sigma(bad)
        with pytest.raises(ValueError, match="sigma"):
            heat(x, y, sigma=bad)


def _drawn_scene():
    """A part on background, and a reconstruction that draws the background as noisy dark grey
    near -0.6 (as the trained generators do), the part faithfully, and material where the input's
    part has a chunk missing."""
    rng = np.random.default_rng(0)
    x = np.full((4, 32, 32), -1.0, np.float32)
    x[:, 8:24, 8:24] = 0.2
    y = np.clip(-0.6 + 0.05 * rng.standard_normal((4, 32, 32)), -1, 1).astype(np.float32)
    y[:, 8:24, 8:24] = 0.2
    x[:, 8:12, 8:12] = -1.0        # a chunk: the input shows background where the part was
    y[:, 14:17, 14:17] = 0.8       # a stain on the part: 0.3 of difference
    return x, y


def test_a_map_against_the_generators_own_background_leaves_its_grey_out_and_keeps_a_chunk():
    from agent.decide.anomaly_map import background_map, check_background
    x, y = _drawn_scene()
    black, drawn = heat(x, y), heat(x, y, background="drawn")
    bg = x[3] <= -1.0
    far = bg.copy()
    far[6:26, 6:26] = False        # background away from the part and the chunk
    # against -1 the whole background reads ~0.2, as hot as the stain's neighbourhood
    assert np.median(black[far]) == pytest.approx(0.2, abs=0.03)
    # against G's own background it reads as G's noise around its median
    assert np.median(drawn[far]) < 0.05 and drawn[far].max() < 0.15
    # the part's pixels are the same map either way; the stain stays where it is
    assert np.array_equal(drawn[~bg], black[~bg]) and drawn[15, 15] == pytest.approx(0.3)
    # missing material, where G draws the part over the input's background, stays hot
    assert drawn[9, 9] == pytest.approx((0.2 - np.median(y[:, bg], axis=1)).max() / 2, abs=1e-5) and drawn[9, 9] > 0.35
    assert np.array_equal(background_map(x, y)[~bg], np.zeros((~bg).sum(), np.float32))
    # a part that fills the input has no background to refer to: the map is |G - x|
    full = np.full_like(x, 0.2)
    assert background_map(full, y) is None and np.array_equal(heat(full, y, background="drawn"), heat(full, y))
    assert check_background("drawn") == "drawn" and check_background("black") == "black"
    for bad in ("white", None, 1, ""):
        with pytest.raises(ValueError, match="background"):
            heat(x, y, background=bad)
    tiles = map_tiles(x, y, scale=1, background="drawn")
    assert tiles.shape == (64, 3 * 33, 3)
