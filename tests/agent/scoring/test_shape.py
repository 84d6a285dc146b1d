"""Surface shape: the part's depth compared with the training parts' shapes, without a model."""
import json
import shutil

import numpy as np
import pytest

from agent.scoring.shape import FEATURES, Shape, ShapeCheck, cross_fitted, distances, shape_features

S = 32


def part(depth_of, radius=12.0, centre=(15.5, 15.5), tilt=(0.0, 0.0), scale=1.0, offset=120.0, squash=1.0):
    """A (4, S, S) model input: an ellipse (x radius `radius`, y radius `radius * squash`) of depth
    `offset + scale * depth_of(u, v)` in 8-bit levels, u, v the pixel's offset from the centre in
    radii; background -1."""
    yy, xx = np.mgrid[:S, :S].astype(np.float64)
    u, v = (xx - centre[0]) / radius, (yy - centre[1]) / (radius * squash)
    disk = u * u + v * v <= 1.0
    d8 = offset + tilt[0] * u * radius + tilt[1] * v * radius + scale * depth_of(u, v)
    x = np.full((4, S, S), -1.0, np.float32)
    x[:3][:, disk] = 0.3
    x[3][disk] = (np.clip(np.rint(d8[disk]), 1, 255) / 127.5 - 1).astype(np.float32)
    return x


def plane(u, v):
    return 0 * u


def can(u, v):  # a can's side seen from the front: farther towards its left and right edges
    return 40.0 * u * u


def ball(u, v):
    return 40.0 * (u * u + v * v)


def test_curvatures_tell_a_plane_a_can_and_a_ball():
    fp, fc, fb = (shape_features(part(f)) for f in (plane, can, ball))
    assert list(map(len, (fp, fc, fb))) == [len(FEATURES)] * 3
    assert abs(fp[0]) < 0.1 and abs(fp[1]) < 0.1          # flat both ways
    assert abs(fc[0]) < 0.2 and fc[1] > 1.0                # curved one way
    assert fb[0] > 1.0 and fb[1] > 1.0                     # curved both ways
    assert fp[3] > 0.9 and fc[3] > 0.9 and fb[3] > 0.9     # a quadric explains all three


def test_features_do_not_see_the_depths_scale_the_parts_size_or_its_turn():
    ref = shape_features(part(can))
    # per-image min-max depth has no scale or offset; the crop's size and the distance do not count
    for other in (part(can, scale=2.5, offset=60.0), part(can, radius=9.0), part(can, radius=14.0)):
        np.testing.assert_allclose(shape_features(other)[:2], ref[:2], rtol=0.15, atol=0.1)
    # the can turned a quarter on the table: curved along y instead of x, the same curvatures
    turned = shape_features(part(lambda u, v: can(v, u)))
    np.testing.assert_allclose(turned[:2], ref[:2], rtol=0.1, atol=0.1)
    # a 64 px model input is read at 32 px: its pixels count as the 32 px input's do
    x64 = part(can).repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(shape_features(x64), ref)
    assert not np.allclose(shape_features(x64, Shape(size=64)), ref)


def test_a_new_can_is_nearer_the_training_cans_than_a_ball_or_a_box():
    rng = np.random.default_rng(0)
    bank = np.stack([shape_features(part(lambda u, v, c=c: c * u * u, radius=r, tilt=t, squash=q))
                     for c, r, t, q in zip(rng.uniform(25, 60, 30), rng.uniform(9, 14, 30),
                                           rng.uniform(-1, 1, (30, 2)), rng.uniform(1.2, 1.8, 30))])
    new_can = shape_features(part(lambda u, v: 35.0 * u * u, radius=11.0, tilt=(0.5, -0.3), squash=1.5))
    a_ball = shape_features(part(ball, radius=11.0))
    a_box = shape_features(part(plane, radius=11.0, tilt=(2.0, 1.0), squash=1.5))
    d = distances(np.stack([new_can, a_ball, a_box]), bank, 5)
    assert d[0] < 0.5 * d[1] and d[0] < 0.5 * d[2]


def test_the_reference_leaves_each_parts_own_frame_block_out():
    # five runs of near-duplicates: against itself a part would be at distance ~0
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, len(FEATURES))) * 3
    feats = np.repeat(centres, 8, axis=0) + rng.normal(size=(40, len(FEATURES))) * 0.01
    frames = np.arange(40) * 3
    crossed = cross_fitted(feats, frames, k=3)
    assert crossed.min() > 0.3
    assert distances(feats, feats, 3).max() < 0.1  # what a reference with its own block would read
    shuffled = rng.permutation(40)  # the order parts come in does not matter, their frame numbers do
    np.testing.assert_allclose(cross_fitted(feats[shuffled], frames[shuffled], 3), crossed[shuffled])
    with pytest.raises(ValueError, match="at least 2"):
        cross_fitted(feats[:1], frames[:1], 3)


def test_the_check_adds_only_for_an_unusual_shape():
    bank = np.random.default_rng(2).normal(size=(20, len(FEATURES)))
    chk = ShapeCheck(Shape(), bank, search_scale=0.01, shape_median=1.0, shape_scale=0.5)
    assert chk.excess(None) == 0.0 and chk.excess(0.7) == 0.0 and chk.excess(1.0) == 0.0
    assert chk.excess(2.0) == pytest.approx(0.01 * 2.0)
    assert chk.distance(part(plane, radius=1.5)) is None  # too few interior pixels: nothing to compare
    assert chk.distance(part(ball)) > 0


def test_from_samples_references_the_cross_fitted_distances_and_the_search_spread():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(30, len(FEATURES)))
    frames = np.arange(30)
    chk = ShapeCheck.from_samples(Shape(), feats, frames, search_scores=rng.normal(0.05, 0.01, 30))
    d = cross_fitted(feats, frames, Shape().k)
    assert chk.shape_median == pytest.approx(np.median(d)) and chk.samples == 30
    assert 0.005 < chk.search_scale < 0.02


def test_bad_input_and_parameters_are_refused():
    with pytest.raises(ValueError, match="model input"):
        shape_features(np.zeros((S, S), np.float32))
    assert shape_features(np.full((4, S, S), -1.0, np.float32)) is None  # no part at all
    for bad in (dict(erode=-1), dict(k=0), dict(min_pixels=3), dict(open_frac=1.0), dict(iterations=True)):
        with pytest.raises(ValueError, match="shape"):
            Shape(**bad)


def test_the_block_round_trips_and_broken_blocks_are_refused():
    bank = np.random.default_rng(4).normal(size=(6, len(FEATURES)))
    chk = ShapeCheck(Shape(k=3), bank, 0.01, 1.0, 0.5, 6, "0..99")
    back = ShapeCheck.from_dict(json.loads(json.dumps(chk.to_dict())))
    assert back.params == chk.params and back.shape_median == 1.0 and back.frames == "0..99"
    np.testing.assert_allclose(back.bank, bank, atol=1e-6)
    good = chk.to_dict()
    for mutate, match in [(lambda d: d.update(radius=3), "unknown shape"),
                          (lambda d: d.update(features=["a", "b"]), "features"),
                          (lambda d: d.update(bank=[[1.0, 2.0]]), "bank"),
                          (lambda d: d["reference"].update(shape_scale=0.0), "spreads"),
                          (lambda d: d["reference"].update(extra=1), "unknown shape reference"),
                          (lambda d: d.pop("reference"), "reference")]:
        d = json.loads(json.dumps(good))
        mutate(d)
        with pytest.raises(ValueError, match=match):
            ShapeCheck.from_dict(d)


@pytest.fixture(scope="module")
def shape_bundles(encoded_run, tmp_path_factory):
    """The same search exported with the relief check, and with the shape check beside it (adgan export)."""
    from adgan.cli import main
    root = tmp_path_factory.mktemp("shape")
    common = ["--theta-scope", "none", "--loss", "fg", "--k", "3", "--relief-samples", "5", "--force"]
    assert main(["export", str(encoded_run), "--out", str(root / "relief"), "--no-shape"] + common) == 0
    assert main(["export", str(encoded_run), "--out", str(root / "shape"), "--shape"] + common) == 0
    return root / "relief", root / "shape"


def test_export_writes_the_bank_and_the_score_adds_the_excess(shape_bundles, encoded_run, synth_data):
    from agent.scoring.bundle import Bundle
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import read_sample
    from calibration.scoring import make_scorer
    rel, shp = (Bundle.load(p) for p in shape_bundles)
    assert rel.shape is None and shp.shape is not None and shp.relief is not None
    m = json.loads((shape_bundles[1] / "manifest.json").read_text())
    assert m["shape"]["features"] == list(FEATURES) and len(m["shape"]["bank"]) == m["shape"]["reference"]["samples"]
    from training.data import load_run_data
    from training.train import load_checkpoint
    train = load_run_data(load_checkpoint(encoded_run)).x.numpy()
    with_interior = [shape_features(x) for x in train if shape_features(x) is not None]
    assert len(m["shape"]["bank"]) == len(with_interior) >= 2  # every training part with an interior
    np.testing.assert_allclose(shp.shape.bank, np.stack(with_interior), atol=1e-5)
    assert shp.describe_score().endswith("+ relief (quadric) + shape") and "surface shape" in shp.describe()
    a, b, oracle = make_scorer(rel, "onnxruntime"), make_scorer(shp, "onnxruntime"), make_scorer(shp, "torch")
    parts = [sample_to_input(read_sample(synth_data / "test" / c, 0), 32) for c in ("sphere", "cylinder", "rectangle")]
    for x in parts:
        ra, rb, ro = a.score(x), b.score(x), oracle.score(x)
        np.testing.assert_allclose(rb.per_seed, ra.per_seed, rtol=1e-6)  # the search is the same search
        assert rb.shape == pytest.approx(shp.shape.distance(x))
        assert rb.score == pytest.approx(ra.score + shp.shape.excess(rb.shape))
        assert ro.score == pytest.approx(rb.score, rel=1e-3) and ro.shape == rb.shape  # the oracle agrees
    assert ra.shape is None


def test_a_bundle_with_a_broken_shape_block_is_refused(shape_bundles, tmp_path):
    from agent.scoring.bundle import Bundle, BundleError
    b = tmp_path / "b"
    shutil.copytree(shape_bundles[1], b)
    m = json.loads((b / "manifest.json").read_text())
    m["shape"]["bank"] = m["shape"]["bank"][:1]
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="shape"):
        Bundle.load(b)
