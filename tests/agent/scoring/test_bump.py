"""The bump check: surface pushed towards the camera, against the part's own local depth."""
import json

import numpy as np
import pytest

from agent.scoring.bump import Bump, BumpCheck, bump_map, bump_score
from agent.scoring.relief import Relief, relief_score

S = 64
LEVEL = 1 / 127.5  # one step of the 8-bit depth in model units


def part(levels_of=lambda xx, yy: 0 * xx, radius=26.0):
    """A (4, S, S) model input: a disk of a smooth sphere-like depth (8-bit levels) plus `levels_of`
    (negative: nearer the camera), background -1."""
    yy, xx = np.mgrid[:S, :S].astype(np.float64)
    r2 = (xx - 31.5) ** 2 + (yy - 31.5) ** 2
    disk = r2 <= radius ** 2
    d8 = 140 + 0.02 * r2 + levels_of(xx, yy)  # farther towards the rim, as a ball
    x = np.full((4, S, S), -1.0, np.float32)
    x[:3][:, disk] = 0.2
    x[3][disk] = (np.clip(np.rint(d8[disk]), 1, 255) / 127.5 - 1).astype(np.float32)
    return x


def bump(cx, cy, sigma, levels):
    return lambda xx, yy: -levels * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))


def test_a_bump_reads_as_its_height_and_a_smooth_part_as_nothing():
    assert bump_score(part()) < 1.5 * LEVEL  # a ball's own curvature, rounded to 8 bits
    raised = bump_score(part(bump(36, 28, 3.0, 25)))
    assert 15 * LEVEL < raised <= 25 * LEVEL
    # the relief check looks only behind its fitted surface: it reads the bump's surroundings, not the bump
    behind = relief_score(part(bump(36, 28, 3.0, 25)), Relief(surface="quadric"))
    assert behind < 0.3 * raised and behind == pytest.approx(relief_score(part(), Relief(surface="quadric")),
                                                             abs=3 * LEVEL)


def test_depth_dropouts_are_left_out_not_read_as_bumps():
    """Pixels the camera did not measure, mixed into the part by resizing: far nearer than any surface."""
    def holes(xx, yy):
        return np.where(((xx - 25) ** 2 + (yy - 36) ** 2 <= 4) | ((xx - 40) ** 2 + (yy - 24) ** 2 <= 2), -130, 0)
    assert bump_score(part(holes)) < 1.5 * LEVEL
    both = part(lambda xx, yy: holes(xx, yy) + bump(36, 40, 3.0, 25)(xx, yy))
    assert bump_score(both) > 15 * LEVEL  # a bump beside them still shows
    m = bump_map(both)
    assert m[36, 25] == 0 and m.shape == (S, S) and m.dtype == np.float32
    # the price, documented: a narrow protrusion more than `dropout` (40 levels) above its surroundings
    # reads as a dropout too, and is left to the search (45 levels: 36 read; 60: 7)
    assert bump_score(part(bump(36, 28, 3.0, 45))) > 30 * LEVEL > 10 * LEVEL > bump_score(part(bump(36, 28, 3.0, 60)))


def test_bad_parameters_and_manifest_blocks_are_refused():
    for bad, why in (({"k": 14}, "k must be odd"), ({"k": 1}, "k must be odd"), ({"dropout": 0.0}, "above 0"),
                     ({"window": 0}, "window must be"), ({"erode": True}, "erode must be"),
                     ({"open_frac": 1.0}, "open_frac must be")):
        with pytest.raises(ValueError, match=why):
            Bump(**bad)
    with pytest.raises(ValueError, match="unknown bump field"):
        Bump.from_dict({"k": 15, "colour": 1})
    with pytest.raises(ValueError, match="the bump block needs"):
        BumpCheck.from_dict({"k": 15})
    check = BumpCheck.from_samples(Bump(), [0.10, 0.12, 0.11, 0.13], [0.01, 0.02, 0.015, 0.012], "0..9")
    again = BumpCheck.from_dict(json.loads(json.dumps(check.to_dict())))
    assert again == check and isinstance(again.params, Bump)
    assert check.decides(0.10, 0.2) and not check.decides(0.14, 0.01)


def test_export_with_bump_records_it_and_the_score_takes_the_larger(encoded_run, tmp_path, capsys):
    """`adgan export --bump`: opt-in; the bundle's "bump" block, its reference of training parts, and
    the scorer's score the largest of the search's, the relief's and the bump's (in search units)."""
    from adgan.cli import main
    from agent.scoring.bundle import Bundle, BundleError
    from calibration.scoring import make_scorer
    out = tmp_path / "b"
    assert main(["export", str(encoded_run), "--out", str(out), "--theta-scope", "none", "--loss", "fg", "--k", "3",
                 "--relief-samples", "5", "--bump"]) == 0
    said = capsys.readouterr().out
    assert "bump check (local median 15 px): referenced to 5 training parts" in said, said
    b = Bundle.load(out)
    assert b.bump is not None and b.bump.params == Bump() and b.bump.samples == 5
    assert b.describe_score() == "mean + relief (quadric) + bump + shape" and ", bump," in b.describe()
    n = b.size
    flat = part()[:, ::S // n, ::S // n] if n < S else part()
    raised = part(bump(36, 28, 3.0, 25))[:, ::S // n, ::S // n] if n < S else part(bump(36, 28, 3.0, 25))
    scorer = make_scorer(b, "onnxruntime")
    r_flat, r_raised = scorer.score(flat), scorer.score(raised)
    assert r_raised.bump == pytest.approx(bump_score(raised, b.bump.params)) and r_raised.bump > r_flat.bump
    assert r_raised.score >= b.bump.in_search_units(r_raised.bump) - 1e-9
    assert r_raised.score >= r_raised.search and r_raised.relief_heat is not None
    # a part the search draws as well as the training parts': where the bump gives the score, it decides,
    # and relief_heat (the event's anomaly_box where the relief decides) holds the bump at full scale
    from agent.scoring.search import result
    typical = np.array([b.bump.search_median], np.float32)
    r = result(b, raised, typical, r_raised.reconstruction)
    assert b.bump.in_search_units(r.bump) > max(r.search, b.relief.in_search_units(r.relief))
    assert r.relief_decides and r.score >= b.bump.in_search_units(r.bump)  # (plus the shape check's excess)
    step = S // n
    assert r.relief_heat[28 // step, 36 // step] >= 0.99  # (full scale where the bump stands)
    assert (b.bump.heat(bump_map(raised, b.bump.params)) <= r.relief_heat).all()
    plain = tmp_path / "p"
    assert main(["export", str(encoded_run), "--out", str(plain), "--theta-scope", "none", "--loss", "fg", "--k", "3",
                 "--relief-samples", "5"]) == 0
    assert Bundle.load(plain).bump is None and make_scorer(Bundle.load(plain), "onnxruntime").score(flat).bump is None
    m = json.loads((out / "manifest.json").read_text())
    m["bump"]["k"] = 4
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="bump k must be odd"):
        Bundle.load(out)
