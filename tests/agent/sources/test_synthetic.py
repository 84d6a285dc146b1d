import numpy as np
import pytest

from agent.frame import RGBDFrame
from agent.segment.reference import SurfaceReference
from agent.segment.segmentation import SegmentationConfig, segment_depth
from agent.sources.synthetic import DEFECTS, SyntheticSource, SyntheticStation


def test_same_seed_same_frames_other_seed_other_frames():
    a = SyntheticSource(seed=7, defects=DEFECTS, defect_rate=0.5)
    b = SyntheticSource(seed=7, defects=DEFECTS, defect_rate=0.5)
    c = SyntheticSource(seed=8, defects=DEFECTS, defect_rate=0.5)
    for i in (0, 3):
        fa, fb, fc = a.frame(i), b.frame(i), c.frame(i)
        assert fa.rgb.tobytes() == fb.rgb.tobytes() and fa.depth.tobytes() == fb.depth.tobytes()
        assert fa.meta == fb.meta
        assert fa.depth.tobytes() != fc.depth.tobytes()
    # order independence: frame 3 alone equals frame 3 after others
    assert SyntheticSource(seed=7, defects=DEFECTS, defect_rate=0.5).frame(3).rgb.tobytes() == a.frame(3).rgb.tobytes()


def test_frames_are_valid_realsense_like_captures():
    src = SyntheticSource(seed=1, count=4)
    frames = list(src)
    assert len(frames) == 4 and src.read() is None
    for f in frames:
        assert isinstance(f, RGBDFrame) and f.rgb.shape == (480, 640, 3) and f.depth.dtype == np.uint16
        valid = f.depth[f.depth > 0]
        assert 200 < valid.min() and (f.depth > 700).any()  # the back of the room is background
        assert 0.001 < (f.depth == 0).mean() < 0.1  # holes and dropouts, not a blank map
        assert f.meta["class"] in ("rectangle", "cylinder", "sphere") and f.meta["object_px"] > 100


def test_depth_noise_grows_with_distance_and_is_quantised():
    st = SyntheticStation(320, 240, seed=2)
    frames = [st.render(np.random.default_rng(i), None) for i in range(8)]
    d = np.stack([f.depth for f in frames]).astype(float)
    ok = (d > 0).all(0)
    sd = d.std(0)
    near = ok & (st.bg_depth < 420)
    far = ok & (st.bg_depth > 560) & (st.bg_depth < 700)
    assert near.sum() > 100 and far.sum() > 100
    assert 0.1 < sd[near].mean() < sd[far].mean() < 5


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_defect_changes_the_visible_part(defect):
    st = SyntheticStation(320, 240, seed=4)
    for k in range(5):
        part = st.random_part(np.random.default_rng([k, 1]), "rectangle")
        clean = st.render(np.random.default_rng([k, 2]), part)
        bad = st.render(np.random.default_rng([k, 2]), part, defect)
        if bad.meta["defect_px"] > 0:
            break
    assert bad.meta["defect"] == defect and bad.meta["defect_px"] > 0
    differs = (clean.rgb.astype(int) - bad.rgb).any(-1) | (clean.depth != bad.depth)
    assert differs.sum() >= bad.meta["defect_px"] * 0.5


def test_segmentation_recovers_the_synthetic_part():
    src = SyntheticSource(seed=3)
    ref = SurfaceReference.from_frames(src.empty_frames(8))
    empty = next(iter(src.empty_frames(1)))
    cfg = SegmentationConfig()
    assert segment_depth(empty.depth, ref.depth, cfg).object_area < 50
    f = src.frame(2)
    seg = segment_depth(f.depth, ref.depth, cfg)
    x, y, w, h = f.meta["roi"]
    outside = seg.object.copy()
    outside[y:y + h, x:x + w] = False
    assert seg.object_area > 0.3 * f.meta["object_px"]
    assert outside.sum() < 30


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown synthetic class"):
        SyntheticSource(classes=("torus",))
    with pytest.raises(ValueError, match="unknown defect"):
        SyntheticSource(defects=("scratch",))
    with pytest.raises(ValueError, match="needs at least one defect"):
        SyntheticSource(defect_rate=0.5)
    with pytest.raises(ValueError, match="at least 32x32"):
        SyntheticStation(16, 16)


def test_parts_stay_for_their_frames_then_the_table_is_empty():
    src = SyntheticSource(("sphere",), seed=3, frames_per_part=3, gap_frames=2)
    frames = [src.frame(i) for i in range(10)]
    assert [f.meta["part"] for f in frames] == [0, 0, 0, None, None, 1, 1, 1, None, None]
    assert np.array_equal(frames[0].depth, frames[2].depth) and frames[2].meta["frame"] == 2
    assert not np.array_equal(frames[0].depth, frames[5].depth)
    assert frames[3].meta["class"] is None and frames[3].depth.any()
    again = SyntheticSource(("sphere",), seed=3, frames_per_part=3, gap_frames=2).frame(6)
    assert np.array_equal(again.depth, frames[6].depth)  # frame i depends only on (seed, i)


def test_product_variety_makes_one_product_per_class_within_its_tolerance():
    from agent.sources.synthetic_station import COLOUR_TOLERANCE, SIZE_TOLERANCE
    st = SyntheticStation(320, 240, seed=5, variety="product")
    for cls in ("rectangle", "cylinder", "sphere"):
        p = st.product(cls)
        parts = [st.random_part(np.random.default_rng([k, 1]), cls) for k in range(30)]
        for q in parts:
            assert q.cls == cls and q.pattern == p.pattern and q.prim.shape == p.prim.shape
            k = np.asarray(q.prim.size) / np.asarray(p.prim.size)
            assert np.allclose(k, k[0]) and abs(k[0] - 1) <= SIZE_TOLERANCE + 1e-6  # the same shape, scaled
            assert q.prim.center[2] == pytest.approx(p.prim.center[2] * k[0])  # resting on the table
            assert np.all(np.abs(q.albedo / p.albedo - 1) <= COLOUR_TOLERANCE + 1e-6)
            assert (q.shininess, q.specular) == (p.shininess, p.specular)
        # anywhere on the table, at any yaw
        assert np.ptp([q.prim.center[0] for q in parts]) > 40 and len({round(q.prim.rotation[0, 0], 3) for q in parts}) > 20
    # another station seed, other products; the same seed, the same ones
    other = SyntheticStation(320, 240, seed=6, variety="product").product("cylinder")
    assert (other.prim.size, tuple(other.albedo)) != (st.product("cylinder").prim.size, tuple(st.product("cylinder").albedo))
    assert SyntheticStation(320, 240, seed=5, variety="product").product("sphere").prim.size == \
        st.product("sphere").prim.size


def test_family_variety_makes_a_new_product_every_part():
    st = SyntheticStation(320, 240, seed=5)
    parts = [st.random_part(np.random.default_rng([k, 1]), "cylinder") for k in range(30)]
    assert len({q.pattern for q in parts}) > 1 and len({q.prim.size for q in parts}) == 30
    assert np.ptp([q.albedo for q in parts], axis=0).max() > 0.3


def test_a_source_renders_the_products_of_its_station():
    a = SyntheticSource(("sphere",), seed=2, variety="product")
    b = SyntheticSource(("sphere",), seed=2)
    assert a.station.variety == "product" and b.station.variety == "family"
    assert a.frame(0).meta["class"] == "sphere"
    with pytest.raises(ValueError, match="unknown variety"):
        SyntheticStation(64, 64, variety="batch")
