import numpy as np
import pytest

from agent.frame import Intrinsics, RGBDFrame, Sample


def frame(h=48, w=64, **kw):
    args = dict(rgb=np.zeros((h, w, 3), np.uint8), depth=np.zeros((h, w), np.uint16),
                timestamp=0.0, intrinsics=Intrinsics.default(w, h))
    args.update(kw)
    return RGBDFrame(**args)


def test_valid_frame_keeps_arrays():
    f = frame()
    assert (f.height, f.width) == (48, 64)


@pytest.mark.parametrize("kw, msg", [
    (dict(depth=np.zeros((48, 64), np.float32)), "uint16"),
    (dict(depth=np.full((48, 64), np.nan, np.float64)), "uint16"),
    (dict(depth=np.zeros((48, 64, 1), np.uint16)), "uint16 HxW"),
    (dict(rgb=np.zeros((48, 64), np.uint8)), "uint8 HxWx3"),
    (dict(rgb=np.zeros((48, 64, 3), np.float32)), "uint8 HxWx3"),
    (dict(rgb=np.zeros((48, 64, 4), np.uint8)), "uint8 HxWx3"),
    (dict(depth=np.zeros((40, 64), np.uint16)), "sizes differ"),
    (dict(intrinsics=Intrinsics.default(320, 240)), "intrinsics are for 320x240"),
    (dict(timestamp=float("nan")), "timestamp"),
    (dict(depth=[[0]]), "numpy array"),
])
def test_bad_frames_name_the_problem(kw, msg):
    with pytest.raises(ValueError, match=msg):
        frame(**kw)


def test_empty_frame_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        RGBDFrame(np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), np.uint16), 0.0, Intrinsics.default(1, 1))


def test_sample_needs_8bit_depth_of_same_size():
    Sample(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        Sample(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint16))
    with pytest.raises(ValueError, match="sizes differ"):
        Sample(np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16), np.uint8))


def test_intrinsics_roundtrip_and_validation():
    k = Intrinsics.default(640, 480)
    assert Intrinsics.from_dict(k.to_dict()) == k
    assert k.fx == pytest.approx(320 / np.tan(np.radians(34.5)))
    with pytest.raises(ValueError, match="focal"):
        Intrinsics(640, 480, -1.0, 1.0, 0, 0)
    with pytest.raises(ValueError, match="height: Field required"):
        Intrinsics.from_dict({"width": 640})


def test_a_colour_image_that_shows_no_part_is_told_from_every_real_frame():
    """`unlit`: black (light off, lens covered) or blown-out white colour images, against every
    10th frame of the paper's three classes, lit as they were captured, which it must pass."""
    from pathlib import Path

    from agent.frame import unlit, same_problem
    from agent.sources.dataset import frame_numbers, read_sample
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "paper-rgbd"
    if not root.is_dir():
        pytest.skip(f"{root} is not here")
    said = set()
    for cls in ("sphere", "cylinder", "rectangle"):
        for n in frame_numbers(root / cls)[::10]:
            rgb = read_sample(root / cls, n).rgb
            assert unlit(rgb) is None, (cls, n)
            said.add(unlit((rgb * 0.05).astype(np.uint8)))  # the station's light off: 5% of it
            assert unlit(np.clip(rgb.astype(int) + 250, 0, 255).astype(np.uint8)).startswith("the colour image is "
                                                                                            "blown out")
    assert len(said) == 1 and said.pop().startswith("the colour image is black"), said  # one problem, one text
    assert same_problem(unlit(np.zeros((480, 640, 3), np.uint8))) == same_problem(unlit(np.zeros((32, 32, 3), np.uint8)))
