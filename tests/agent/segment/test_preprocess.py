import numpy as np
import pytest

from agent.frame import Intrinsics, NoObjectError, RGBDFrame, Sample
from agent.segment.preprocess import (Preprocessing, input_to_sample, like_stored, make_sample, normalise_depth,
                                      reframe, sample_to_input, uncrop_map)
from agent.segment.segmentation import Segmentation, SegmentationConfig, segment_depth
from agent.sources.synthetic import SyntheticSource
from agent.segment.reference import SurfaceReference


def _seg(mask):
    z = np.zeros_like(mask)
    return Segmentation(object=mask, surface=~mask, background=z, invalid=z)


def _frame(h=96, w=128):
    rgb = np.full((h, w, 3), 200, np.uint8)
    depth = np.full((h, w), 600, np.uint16)
    return RGBDFrame(rgb, depth, 0.0, Intrinsics.default(w, h))


def test_minmax_maps_object_depth_to_1_255_far_bright():
    depth = np.array([[400, 500, 600, 900]], np.uint16)
    mask = np.array([[True, True, True, False]])
    out = normalise_depth(depth, mask, Preprocessing())
    assert out.tolist() == [[1, 128, 255, 0]]


def test_fixed_range_clips_and_keeps_absolute_depth():
    depth = np.array([[200, 300, 500, 700, 800]], np.uint16)
    mask = np.ones((1, 5), bool)
    out = normalise_depth(depth, mask, Preprocessing(depth_norm="fixed", depth_min_mm=300, depth_max_mm=700))
    assert out.tolist() == [[1, 1, 128, 255, 255]]


def test_flat_object_minmax_does_not_divide_by_zero():
    out = normalise_depth(np.full((2, 2), 500, np.uint16), np.ones((2, 2), bool), Preprocessing())
    assert (out == 1).all()


def test_make_sample_masks_rgb_and_frames_the_central_square():
    f = _frame()
    mask = np.zeros((96, 128), bool)
    mask[40:56, 56:72] = True  # a 16x16 part in the centre
    s = make_sample(f, _seg(mask), Preprocessing(size=32))
    assert s.rgb.shape == (32, 32, 3) and s.depth.shape == (32, 32)
    # central 96x96 square -> 32x32: the part covers 16/3 pixels around the centre
    ys, xs = np.nonzero(s.depth)
    assert 12 <= ys.min() and ys.max() <= 19 and 12 <= xs.min() and xs.max() <= 19
    assert s.rgb[0, 0].tolist() == [0, 0, 0] and s.rgb[16, 16].tolist() == [200, 200, 200]


def test_object_framing_fills_the_sample():
    f = _frame()
    mask = np.zeros((96, 128), bool)
    mask[5:15, 100:120] = True  # off-centre part
    s = make_sample(f, _seg(mask), Preprocessing(size=32, framing="object", margin=0.0))
    assert (s.depth[8:24, :] > 0).mean() > 0.9  # the 20x10 box spans the width


def test_no_object_is_explicit():
    with pytest.raises(NoObjectError):
        make_sample(_frame(), _seg(np.zeros((96, 128), bool)), Preprocessing())


def test_preprocessing_is_bit_identical_twice():
    src = SyntheticSource(seed=3)
    ref = SurfaceReference.from_frames(src.empty_frames(5))
    f = src.frame(1)
    outs = []
    for _ in range(2):
        seg = segment_depth(f.depth, ref.depth, SegmentationConfig())
        outs.append(sample_to_input(make_sample(f, seg, Preprocessing())))
    assert outs[0].dtype == np.float32 and outs[0].shape == (4, 64, 64)
    assert outs[0].tobytes() == outs[1].tobytes()


def test_input_range_and_inverse():
    rgb = np.arange(32 * 32 * 3, dtype=np.uint32).reshape(32, 32, 3).astype(np.uint8)
    depth = (np.arange(32 * 32) % 256).astype(np.uint8).reshape(32, 32)
    x = sample_to_input(Sample(rgb, depth))
    assert x.min() == -1.0 and x.max() == 1.0
    back = input_to_sample(x)
    np.testing.assert_array_equal(back.rgb, rgb)
    np.testing.assert_array_equal(back.depth, depth)
    assert sample_to_input(Sample(rgb, depth), size=16).shape == (4, 16, 16)


def test_preprocessing_serialises_and_validates():
    p = Preprocessing(size=32, depth_norm="fixed", framing="object")
    assert Preprocessing.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="Preprocessing: unknown field 'gamma'"):
        Preprocessing.from_dict({**p.to_dict(), "gamma": 2})
    with pytest.raises(ValueError, match="size"):
        Preprocessing(size=48)
    with pytest.raises(ValueError, match="depth_min_mm"):
        Preprocessing(depth_min_mm=700, depth_max_mm=300)
    with pytest.raises(ValueError, match="version"):
        Preprocessing.from_dict({**p.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="rgb_jpeg_quality"):
        Preprocessing(rgb_jpeg_quality=101)
    old = {k: v for k, v in p.to_dict().items() if k != "rgb_jpeg_quality"}  # bundles made before it was recorded
    assert Preprocessing.from_dict(old).rgb_jpeg_quality == 0


def test_jpeg_quality_is_read_from_the_files_quantisation_table(tmp_path):
    import cv2
    from agent.sources.dataset import jpeg_quality
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for q in (5, 40, 50, 75, 90, 95, 100):
        cv2.imwrite(str(tmp_path / f"{q}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert jpeg_quality(tmp_path / f"{q}.jpg") == q
    cv2.imwrite(str(tmp_path / "x.png"), img)
    assert jpeg_quality(tmp_path / "x.png") is None
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "95.jpg").read_bytes()[:10])  # truncated before its tables
    assert jpeg_quality(tmp_path / "cut.jpg") is None


def test_a_live_sample_goes_through_the_stored_samples_jpeg(tmp_path):
    from agent.sources.dataset import read_sample, write_sample
    rng = np.random.default_rng(1)
    s = Sample(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(1, 256, (32, 32), dtype=np.uint8))
    assert like_stored(s, Preprocessing(size=32)) is s  # quality 0: nothing stored lossy, nothing done
    write_sample(tmp_path, 0, s)  # what adgan dataset writes: RGB as JPEG 95, depth as PNG
    stored = read_sample(tmp_path, 0)
    live = like_stored(s, Preprocessing(size=32, rgb_jpeg_quality=95))
    np.testing.assert_array_equal(live.rgb, stored.rgb)  # the very pixels training read
    np.testing.assert_array_equal(live.depth, s.depth)
    assert not np.array_equal(live.rgb, s.rgb)


# -- crop to the part for stored samples (the paper's layout) -------------------------------
def _stored(cx, cy, r, size=64, speck=True):
    """A stored 'frame' sample: a square part of side 2r + 1 at (cx, cy), a one-pixel speck far away."""
    yy, xx = np.mgrid[:size, :size]
    disc = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
    depth = np.where(disc, 128, 0).astype(np.uint8)
    rgb = np.where(disc[..., None], np.array([200, 40, 40], np.uint8), 0).astype(np.uint8)
    if speck:
        depth[2, 60] = 90  # a speck of table the segmentation left: must not widen the crop
    return Sample(rgb=rgb, depth=depth, meta={"source": "test"})


def test_reframe_crops_a_stored_sample_to_its_part_with_the_margin():
    want = Preprocessing(framing="object", margin=0.25)
    out = reframe(_stored(20, 30, 8), Preprocessing(), want)
    x0, y0, side = out.meta["reframe"]
    # the part's box is 17 px (12..28, 22..38); 0.25 of it on each side -> ceil(17 * 1.5) = 26
    assert side == 26 and (x0, y0) == (7, 17)
    assert out.meta["crop_scale"] == pytest.approx(26 / 64)
    assert out.depth.shape == (64, 64) and out.rgb.shape == (64, 64, 3)
    # the part fills the middle 1/1.5 of the input, centred, whatever its size or place
    rows = np.nonzero(out.depth.any(axis=1))[0]
    assert abs(rows.min() - (64 - rows.max() - 1)) <= 2
    assert (rows.max() - rows.min() + 1) / 64 == pytest.approx(1 / 1.5, abs=0.05)
    assert out.meta["source"] == "test"


def test_reframe_removes_size_and_place():
    want = Preprocessing(framing="object")
    small = sample_to_input(reframe(_stored(16, 16, 6, speck=False), Preprocessing(), want))
    big = sample_to_input(reframe(_stored(40, 36, 14, speck=False), Preprocessing(), want))
    fg_small, fg_big = (small[3] > -1).mean(), (big[3] > -1).mean()
    assert fg_small == pytest.approx(fg_big, abs=0.06)  # about the same share of the input, not 4x less


def test_reframe_same_framing_is_identity_and_object_to_frame_is_refused():
    s = _stored(20, 30, 8)
    assert reframe(s, Preprocessing(), Preprocessing(size=32)) is s
    with pytest.raises(ValueError, match="cannot reframe"):
        reframe(s, Preprocessing(framing="object"), Preprocessing())
    with pytest.raises(NoObjectError):
        reframe(Sample(rgb=np.zeros((64, 64, 3), np.uint8), depth=np.zeros((64, 64), np.uint8)),
                Preprocessing(), Preprocessing(framing="object"))


def test_reframe_composes_the_camera_window():
    s = _stored(20, 30, 8)
    s = Sample(s.rgb, s.depth, {"crop": (100, 50, 320)})  # the stored sample shows camera 100..420 x 50..370
    out = reframe(s, Preprocessing(), Preprocessing(framing="object", margin=0.25))
    assert out.meta["crop"] == (100 + 7 * 5, 50 + 17 * 5, 26 * 5)


def test_uncrop_map_puts_a_model_map_back_where_the_part_is():
    h = np.zeros((64, 64), np.float32)
    h[28:36, 28:36] = 1.0  # a hot spot in the middle of the cropped input
    back = uncrop_map(h, (10, 20, 32), (64, 64))
    ys, xs = np.nonzero(back > 0.5)
    assert 10 + 13 <= xs.min() and xs.max() <= 10 + 18 and 20 + 13 <= ys.min() and ys.max() <= 20 + 18
    assert back[:20].max() == 0 and back[:, :10].max() == 0
    edge = uncrop_map(np.ones((8, 8), np.float32), (-4, 60, 8), (64, 64))  # overhangs two sides
    assert edge.sum() == pytest.approx(4 * 4)


def test_make_sample_records_the_crop_scale():
    mask = np.zeros((96, 128), bool)
    mask[40:60, 50:70] = True
    s = make_sample(_frame(), _seg(mask), Preprocessing(framing="object", size=32))
    assert s.meta["crop_scale"] == pytest.approx(s.meta["crop"][2] / 32)
