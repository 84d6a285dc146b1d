import numpy as np
import pytest

from agent.frame import Intrinsics, NoObjectError, RGBDFrame, Sample
from agent.segment.preprocess import (Preprocessing, input_to_sample, make_sample, normalise_depth,
                                      sample_to_input)
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
    with pytest.raises(ValueError, match="unknown Preprocessing fields"):
        Preprocessing.from_dict({**p.to_dict(), "gamma": 2})
    with pytest.raises(ValueError, match="size"):
        Preprocessing(size=48)
    with pytest.raises(ValueError, match="depth_min_mm"):
        Preprocessing(depth_min_mm=700, depth_max_mm=300)
    with pytest.raises(ValueError, match="version"):
        Preprocessing.from_dict({**p.to_dict(), "version": 99})
