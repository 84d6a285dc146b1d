"""Depth relief: a surface pushed in behind the part's plane, without a model."""
import numpy as np
import pytest

from agent.scoring.relief import Relief, interior, relief_map, relief_score, robust_fit, surface_residual

S = 32
LEVEL = 1 / 127.5  # one step of the 8-bit depth in model units


def part(depth_of, radius=12.0, tilt=(0.0, 0.0), rgb=0.2):
    """A (4, S, S) model input: a disk of depth `depth_of(xx, yy)` (8-bit levels), background -1."""
    yy, xx = np.mgrid[:S, :S].astype(np.float64)
    disk = (xx - 15.5) ** 2 + (yy - 15.5) ** 2 <= radius ** 2
    d8 = 120 + tilt[0] * (xx - 15.5) + tilt[1] * (yy - 15.5) + depth_of(xx, yy)
    x = np.full((4, S, S), -1.0, np.float32)
    x[:3][:, disk] = rgb
    x[3][disk] = (np.rint(d8[disk]) / 127.5 - 1).astype(np.float32)
    return x


def flat(xx, yy):
    return 0 * xx


def pit(cx, cy, r, levels):
    def f(xx, yy):
        return np.where((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r, levels, 0.0)
    return f


def test_a_plane_has_no_relief_however_tilted():
    for tilt in [(0, 0), (2.0, -1.0), (-3.0, 3.0)]:
        assert relief_score(part(flat, tilt=tilt)) < 0.6 * LEVEL  # rounding to 8 bits only


def test_a_pit_reads_as_its_depth_and_does_not_pull_the_plane():
    # a pit of 40 levels over ~8% of the part: the robust fit leaves it out, so the window
    # over its middle reads the full 40 levels (a plain least-squares plane would read less)
    for tilt in [(0, 0), (2.0, 1.0)]:
        s = relief_score(part(pit(18, 14, 3.5, 40.0), tilt=tilt))
        assert s == pytest.approx(40 * LEVEL, rel=0.05)


def test_relief_grows_with_the_dent_and_a_bump_towards_the_camera_is_not_relief():
    scores = [relief_score(part(pit(15, 16, 3.0, lv))) for lv in (5, 15, 30, 60)]
    assert scores == sorted(scores) and scores[0] > 3 * LEVEL
    assert relief_score(part(pit(15, 16, 3.0, -40.0))) < 0.6 * LEVEL  # nearer: the search's job


def test_the_rim_is_not_read():
    # the outermost ring of the part holds mixed depth (a resized crop's rim): eroded away
    def ring(xx, yy):
        rr = np.sqrt((xx - 15.5) ** 2 + (yy - 15.5) ** 2)
        return np.where(rr > 10.5, 80.0, 0.0)
    x = part(ring, radius=12.0)
    assert relief_score(x, Relief(erode=2)) < 0.6 * LEVEL
    assert relief_score(x, Relief(erode=0)) > 20 * LEVEL


def test_the_map_is_zero_outside_the_interior_and_peaks_on_the_pit():
    x = part(pit(20, 12, 3.0, 40.0))
    m = relief_map(x)
    inside = interior(x[3], 2)
    assert m.shape == (S, S) and m.dtype == np.float32
    assert (m[~inside] == 0).all()
    y, xx = np.unravel_index(np.argmax(m), m.shape)
    assert abs(xx - 20) <= 1 and abs(y - 12) <= 1


def test_too_small_a_part_scores_zero_and_bad_input_is_refused():
    assert relief_score(part(pit(15, 15, 2, 50.0), radius=2.5)) == 0.0
    assert relief_score(np.full((4, S, S), -1.0, np.float32)) == 0.0  # no part at all
    with pytest.raises(ValueError, match="model input"):
        relief_map(np.zeros((S, S), np.float32))
    with pytest.raises(ValueError, match="model input"):
        relief_map(np.zeros((3, S, S), np.float32))


@pytest.mark.parametrize("bad", [dict(erode=-1), dict(window=0), dict(iterations=1.5), dict(min_pixels=2),
                                 dict(window=True), dict(open_frac=1.0), dict(open_frac=-0.1), dict(open_frac=True),
                                 dict(open_frac="0.3"), dict(surface="quadric", min_pixels=5)])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError, match="relief"):
        Relief(**bad)


def test_parameters_round_trip_and_unknown_fields_are_refused():
    p = Relief(erode=1, window=5, iterations=2, min_pixels=20)
    assert Relief.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown relief"):
        Relief.from_dict({**p.to_dict(), "radius": 3})


def test_plane_residual_is_exact_for_a_plane():
    yy, xx = np.mgrid[:S, :S].astype(np.float32)
    d = 0.01 * xx - 0.02 * yy + 0.3
    inside = np.zeros((S, S), bool)
    inside[4:28, 6:26] = True
    r = surface_residual(d, inside, 3)
    assert np.abs(r).max() < 1e-5 and (r[~inside] == 0).all()


def roof(xx, yy):
    """A box seen at an angle: two faces meeting at a vertical edge nearest the camera, the
    depth rising 2 levels a pixel away from it on both sides."""
    return 2.0 * np.abs(xx - 15.5)


def test_a_quadric_follows_a_curved_face_that_a_plane_reads_as_relief():
    yy, xx = np.mgrid[:S, :S].astype(np.float32)
    bowl = 0.3 + 0.0015 * ((xx - 16) ** 2 + 0.5 * (yy - 16) ** 2) + 0.002 * xx
    inside = np.zeros((S, S), bool)
    inside[4:28, 4:28] = True
    assert np.abs(surface_residual(bowl, inside, 3, "quadric")).max() < 1e-4
    assert surface_residual(bowl, inside, 3, "plane").max() > 0.05


def test_a_quadric_reads_less_relief_on_two_faces_and_still_sees_a_pit_in_one():
    plane, quadric = Relief(), Relief(surface="quadric")
    faces = part(roof)
    assert relief_score(faces, quadric) < 0.5 * relief_score(faces, plane)
    pitted = part(lambda xx, yy: roof(xx, yy) + pit(20, 11, 2.5, 40.0)(xx, yy))
    assert relief_score(pitted, quadric) > relief_score(faces, quadric) + 25 * LEVEL
    m = relief_map(pitted, quadric)
    y, x = np.unravel_index(np.argmax(m), m.shape)
    assert abs(y - 11) <= 2 and abs(x - 20) <= 2


def test_the_surface_is_a_checked_parameter_and_old_blocks_have_a_plane():
    old = {k: v for k, v in Relief().to_dict().items() if k != "surface"}
    assert Relief.from_dict(old).surface == "plane"
    assert Relief.from_dict(Relief(surface="quadric").to_dict()).surface == "quadric"
    with pytest.raises(ValueError, match="surface must be one of"):
        Relief(surface="sphere")
    with pytest.raises(ValueError, match="min_pixels must be at least 6"):
        Relief(surface="quadric", min_pixels=5)


# -- the relief check beside the search: reference, bundle, scores, maps -------------------------

from agent.scoring.relief import RELIEF_SCALE_FLOOR, ReliefCheck  # noqa: E402


def test_the_relief_heat_shows_only_unusual_relief_and_saturates_two_spreads_above():
    from agent.scoring.relief import HEAT_SPREADS
    c = ReliefCheck(Relief(), 1.0, 0.1, relief_median=0.05, relief_scale=0.02)
    m = np.array([[0.0, 0.05, 0.05 + 0.02], [0.05 + HEAT_SPREADS * 0.02, 0.5, 0.04]], np.float32)
    h = c.heat(m)
    assert h.dtype == np.float32 and h.shape == m.shape
    np.testing.assert_allclose(h, [[0, 0, 1 / HEAT_SPREADS], [1, 1, 0]], atol=1e-6)


def test_the_check_keeps_the_search_score_for_a_normal_surface_and_maps_relief_onto_it():
    c = ReliefCheck.from_samples(Relief(), [1.0, 1.2, 0.8, 1.1, 0.9], [0.02, 0.03, 0.04, 0.03, 0.02])
    assert c.search_median == pytest.approx(1.0) and c.relief_median == pytest.approx(0.03)
    assert c.score(1.5, 0.03) == 1.5 and not c.decides(1.5, 0.03)
    # a relief as many spreads above its median as a search score above its: the same score
    k = 4.0
    assert c.in_search_units(0.03 + k * c.relief_scale) == pytest.approx(1.0 + k * c.search_scale)
    assert c.score(1.0, 0.5) > 1.0 and c.decides(1.0, 0.5)
    # identical training parts: the spreads are floored, not zero
    same = ReliefCheck.from_samples(Relief(), [1.0] * 4, [0.02] * 4)
    assert same.relief_scale == RELIEF_SCALE_FLOOR and same.search_scale > 0
    assert ReliefCheck.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("bad", [dict(search_scale=0.0), dict(relief_scale=-1.0), dict(relief_median=float("nan")),
                                 dict(search_median="1")])
def test_a_bad_reference_is_refused(bad):
    good = dict(params=Relief(), search_median=1.0, search_scale=0.1, relief_median=0.02, relief_scale=0.01)
    with pytest.raises(ValueError, match="relief reference"):
        ReliefCheck(**{**good, **bad})
    with pytest.raises(ValueError, match="at least two"):
        ReliefCheck.from_samples(Relief(), [1.0], [0.1])


def _pitted(x, levels=60.0, r=3.0):
    """x with a pit pushed into the middle of its part (depth farther by `levels` 8-bit steps)."""
    x = x.copy()
    inside = interior(x[3], 2, 0.3)
    ys, xs = np.nonzero(inside)
    cy, cx = ys.mean(), xs.mean()
    yy, xx = np.mgrid[:x.shape[1], :x.shape[2]]
    pit_px = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & inside
    x[3][pit_px] = np.minimum(x[3][pit_px] + levels / 127.5, 1.0)
    return x, pit_px


@pytest.fixture(scope="module")
def relief_bundles(encoded_run, tmp_path_factory):
    """The same search exported without the relief check and with the plane one (adgan export, as a user runs it)."""
    from adgan.cli import main
    root = tmp_path_factory.mktemp("relief")
    common = ["--theta-scope", "none", "--loss", "fg", "--k", "3", "--no-shape", "--force"]
    assert main(["export", str(encoded_run), "--out", str(root / "plain"), "--no-relief"] + common) == 0
    import export.onnx_export as onnx_export
    graphs = []
    with pytest.MonkeyPatch.context() as mp:  # which ONNX graphs the export with a check makes
        real = onnx_export._export
        mp.setattr(onnx_export, "_export", lambda m, a, path, *io: (graphs.append(path.name), real(m, a, path, *io)))
        assert main(["export", str(encoded_run), "--out", str(root / "relief"), "--relief", "--relief-surface",
                     "plane", "--relief-samples", "5"] + common) == 0
    relief_exports[:] = graphs
    return root / "plain", root / "relief"


relief_exports: list[str] = []  # the ONNX graphs exported for relief_bundles' bundle with the check


def test_the_reference_bundles_graphs_are_copied_not_exported_again(relief_bundles, tmp_path):
    from dataclasses import replace

    from agent.scoring.bundle import Bundle
    from export.bundle import _copy_graphs
    assert sorted(relief_exports) == ["encoder.onnx", "loss.onnx", "step.onnx"]  # once each, not twice
    plain = Bundle.load(relief_bundles[0])  # (its file hashes checked)
    assert Bundle.load(relief_bundles[1]).manifest["graphs"] == plain.manifest["graphs"]
    with pytest.raises(ValueError, match="another search"):
        _copy_graphs(relief_bundles[0], tmp_path, replace(plain.search, k=plain.search.k + 1), True)
    with pytest.raises(ValueError, match="another search"):
        _copy_graphs(relief_bundles[0], tmp_path, plain.search, False)


def test_export_writes_the_reference_and_the_search_is_unchanged(relief_bundles, synth_data):
    import json

    from agent.scoring.bundle import Bundle
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import read_sample
    from calibration.scoring import make_scorer
    plain, rel = (Bundle.load(p) for p in relief_bundles)
    assert plain.relief is None and rel.relief is not None
    m = json.loads((relief_bundles[1] / "manifest.json").read_text())
    assert m["relief"]["reference"]["samples"] == 5 and m["relief"]["open_frac"] == Relief().open_frac
    assert rel.describe_score().endswith("+ relief")
    a, b = make_scorer(plain, "onnxruntime"), make_scorer(rel, "onnxruntime")
    oracle = make_scorer(rel, "torch")
    for i in range(3):
        x = sample_to_input(read_sample(synth_data / "test" / "sphere", i), 32)
        ra, rb, ro = a.score(x), b.score(x), oracle.score(x)
        np.testing.assert_allclose(rb.per_seed, ra.per_seed, rtol=1e-6)  # the search is the same search
        assert rb.search == pytest.approx(ra.score) and rb.relief == pytest.approx(relief_score(x, rel.relief.params))
        assert rb.score == pytest.approx(max(rb.search, rel.relief.in_search_units(rb.relief)))
        assert ro.score == pytest.approx(rb.score, rel=1e-3) and ro.relief == rb.relief  # the oracle agrees
        assert ra.relief is None and ra.search == ra.score


def test_a_pit_raises_the_score_and_the_agent_boxes_the_pit(relief_bundles):
    from agent.decide.anomaly_map import heat, hot_box
    from agent.decide.inspector import ClassModel
    from agent.decide.thresholds import ClassThreshold
    from agent.scoring.bundle import Bundle
    from calibration.scoring import make_scorer
    plain, rel = (Bundle.load(p) for p in relief_bundles)
    a, b = make_scorer(plain, "onnxruntime"), make_scorer(rel, "onnxruntime")
    # a part cropped to its box, its face tilted, as the paper's parts are (fixed depth range)
    x = part(flat, radius=13.0, tilt=(1.0, -0.5), rgb=0.4)
    bad, pit_px = _pitted(x)
    intact, dented = b.score(x), b.score(bad)
    assert dented.relief > intact.relief + 40 / 127.5 * 0.5
    assert dented.relief_decides and dented.score > intact.score
    assert dented.score > 2 * a.score(bad).score  # the relief, not the search, lifts it
    thr = ClassThreshold("sphere", (intact.score + dented.score) / 2, rel.bundle_hash, {})
    model = ClassModel(rel, thr, b, "onnxruntime")
    d_ok, d_bad = model.decide(x), model.decide(bad)
    assert (d_ok.verdict, d_bad.verdict) == ("ok", "anomaly") and d_bad.relief_decides
    np.testing.assert_array_equal(d_bad.relief, rel.relief.heat(relief_map(bad, rel.relief.params)))  # map units
    h = heat(bad, d_bad.reconstruction, d_bad.relief)
    assert h.shape == pit_px.shape and h[pit_px].max() == pytest.approx(d_bad.relief.max()) and h[pit_px].max() > 0.5
    box = hot_box(d_bad.relief)
    ys, xs = np.nonzero(pit_px)
    assert box["x"] <= xs.mean() <= box["x"] + box["width"] and box["y"] <= ys.mean() <= box["y"] + box["height"]
    with pytest.raises(ValueError, match="relief map"):
        heat(bad, d_bad.reconstruction, d_bad.relief[:8])


def test_a_bundle_with_a_broken_relief_block_is_refused(relief_bundles, tmp_path):
    import json
    import shutil

    from agent.scoring.bundle import Bundle, BundleError
    b = tmp_path / "b"
    shutil.copytree(relief_bundles[1], b)
    m = json.loads((b / "manifest.json").read_text())
    m["relief"]["reference"]["relief_scale"] = 0
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="relief"):
        Bundle.load(b)
    m["relief"]["reference"]["relief_scale"] = 0.01
    m["relief"]["radius"] = 3
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="unknown relief"):
        Bundle.load(b)


def test_relief_samples_without_the_check_are_refused(encoded_run, tmp_path, capsys):
    from adgan.cli import main
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "b"), "--no-relief", "--no-shape",
                 "--relief-samples", "5"]) != 0
    assert "--no-relief and --no-shape leave both out" in capsys.readouterr().err
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "b"), "--paper", "--relief-samples", "5"]) != 0
    assert "--paper has neither: add --relief or --shape" in capsys.readouterr().err
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "b"), "--paper", "--no-shape",
                 "--relief-samples", "5"]) != 0
    assert "--paper and --no-shape leave both out" in capsys.readouterr().err
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "b"), "--paper", "--relief-erode", "3"]) != 0
    assert "--paper has no relief check: add --relief" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_export_with_a_quadric_surface_records_it_and_scores_with_it(encoded_run, tmp_path, capsys):
    import json

    from adgan.cli import main
    from agent.scoring.bundle import Bundle
    out = tmp_path / "q"
    assert main(["export", str(encoded_run), "--out", str(out), "--theta-scope", "none", "--loss", "fg", "--k", "3",
                 "--relief", "--relief-surface", "quadric", "--relief-samples", "5"]) == 0
    assert "depth relief check (quadric, erode 4)" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["relief"]["surface"] == "quadric"
    b = Bundle.load(out)
    assert b.relief.params.surface == "quadric" and b.describe_score() == "mean + relief (quadric) + shape"
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "p"), "--no-relief", "--relief-surface",
                 "quadric"]) != 0
    assert "--no-relief leaves the check out" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_export_with_a_narrower_rim_erosion_records_it_and_reads_more_of_the_part(encoded_run, tmp_path, capsys):
    import json

    from adgan.cli import main
    from agent.scoring.bundle import Bundle
    common = ["--theta-scope", "none", "--loss", "fg", "--k", "3", "--relief-samples", "5"]
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "e2"), *common, "--relief-erode", "2"]) == 0
    assert "erode 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "e2" / "manifest.json").read_text())["relief"]["erode"] == 2
    b = Bundle.load(tmp_path / "e2")
    assert b.relief.params == Relief(erode=2, surface="quadric")
    # a camera's silhouette pixels: a 3-pixel ring on the part's rim lies behind it. The scorer reads
    # the bundle's erosion: at 2 pixels the ring shows as relief, at the default's 4 it is left out
    from calibration.scoring import make_scorer
    n = b.size
    x = np.full((4, n, n), -1.0, np.float32)
    yy, xx = np.mgrid[:n, :n]
    dist = np.hypot(yy - n / 2, xx - n / 2)
    x[:, dist < 0.4 * n] = 0.0
    x[3][(dist < 0.4 * n) & (dist >= 0.4 * n - 3)] = 0.4
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "e4"), *common]) == 0
    narrow, wide = (make_scorer(Bundle.load(tmp_path / d), "onnxruntime").score(x).relief for d in ("e2", "e4"))
    assert narrow == pytest.approx(relief_score(x, Relief(erode=2, surface="quadric")))
    assert wide == pytest.approx(relief_score(x, Relief(erode=4, surface="quadric")))
    assert narrow > 0.1 > wide
    for bad, why in ((["--relief-erode", "-1"], "erode must be an integer >= 0"),
                     (["--no-relief", "--relief-erode", "3"], "--no-relief leaves the check out"),
                     (["--paper", "--relief-erode", "3"], "--paper has no relief check")):
        assert main(["export", str(encoded_run), "--out", str(tmp_path / "bad"), *common, *bad]) == 2
        assert why in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()  # refused before any work


def test_too_few_relief_samples_are_refused_before_any_work(encoded_run, tmp_path, capsys):
    from adgan.cli import main
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "b"), "--relief", "--relief-samples", "1"]) != 0
    assert "at least 2 training samples" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_the_operators_page_draws_the_relief_where_the_generator_drew_the_pit():
    from agent.segment.preprocess import input_to_sample
    from agent.web.page import part_images
    x = part(flat, radius=13.0, tilt=(1.0, -0.5), rgb=0.4)
    bad, pit_px = _pitted(x)
    m = relief_map(bad)
    plain = part_images((input_to_sample(bad), bad, bad, None, 0.0, "drawn"))["map"]
    with_relief = part_images((input_to_sample(bad), bad, bad, m, 0.0, "drawn"))["map"]
    assert plain.shape == with_relief.shape
    ys, xs = np.nonzero(pit_px)
    k = plain.shape[0] // x.shape[1]  # screen pixels per sample pixel
    changed = np.abs(with_relief.astype(int) - plain.astype(int)).sum(axis=2) > 0
    assert changed[ys * k, xs * k].mean() > 0.5  # the pit shows on the map
    outside = ~np.kron(interior(bad[3], 2, 0.3), np.ones((k, k), bool))
    assert not changed[outside].any()  # and nothing outside the part's interior does


def test_robust_fit_leaves_outliers_out():
    """The shared fit of the relief and shape checks: a plane with a tenth of its values pushed far off
    is recovered from the rest, and the pushed values are the ones left out of the last fit."""
    rng = np.random.default_rng(0)
    u, v = rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 200)
    a = np.stack([np.ones_like(u), u, v], axis=1)
    z = 0.3 + 2.0 * u - 1.0 * v + rng.normal(0, 0.01, 200)
    off = np.arange(200) % 10 == 0
    z[off] += 5.0
    coef, r, keep = robust_fit(a, z, 2)
    np.testing.assert_allclose(coef, [0.3, 2.0, -1.0], atol=0.01)
    assert not keep[off].any() and keep[~off].mean() > 0.95
    np.testing.assert_allclose(r, z - a @ coef)
    plain, *_ = np.linalg.lstsq(a, z, rcond=None)
    assert abs(plain[0] - 0.3) > 0.4  # one plain fit is pulled off by them
    # no refits: the plain fit; too few values for the terms: no fit, residuals from the median
    np.testing.assert_allclose(robust_fit(a, z, 0)[0], plain)
    c0, r0, _ = robust_fit(a[:2], z[:2], 2)
    assert not c0.any() and np.allclose(r0, z[:2] - np.median(z[:2]))
