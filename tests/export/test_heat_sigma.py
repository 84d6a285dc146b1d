"""The anomaly map's smoothing: recorded by export, read by the bundle, honoured by evaluate."""
import csv
import json
import shutil

import numpy as np
import pytest

from adgan.cli import main
from agent.scoring.bundle import Bundle, BundleError

FAST = ["--theta-scope", "none", "--loss", "fg", "--k", "3", "--no-relief", "--no-shape"]


def test_export_smooths_the_map_by_default_for_the_inputs_size_and_records_it(encoded_run, tmp_path, capsys):
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "d"), *FAST]) == 0
    assert "smoothed by a Gaussian of 1 px of the 32 px input" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["heat"]["sigma"] == 1.0
    assert Bundle.load(tmp_path / "d").heat_sigma == 1.0  # 2 per 64 px of input
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "s"), *FAST, "--heat-sigma", "2.5"]) == 0
    assert Bundle.load(tmp_path / "s").heat_sigma == 2.5
    for args in (["--heat-sigma", "0"], ["--paper", "--k", "3"]):
        out = tmp_path / "raw"
        assert main(["export", str(encoded_run), "--out", str(out), "--force", *(FAST if "--paper" not in args
                                                                                 else []), *args]) == 0
        assert "anomaly map: unsmoothed" in capsys.readouterr().out
        assert "sigma" not in json.loads((out / "manifest.json").read_text()).get("heat", {})
        assert Bundle.load(out).heat_sigma == 0.0
    for bad in ("-1", "nan", "inf"):
        assert main(["export", str(encoded_run), "--out", str(tmp_path / "bad"), *FAST, "--heat-sigma", bad]) == 2
        assert "--heat-sigma must be a number >= 0" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()  # refused before any work


def _with_heat(src, dst, heat) -> None:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["heat"] = heat
    (dst / "manifest.json").write_text(json.dumps(m))


def _twins_scored(bundles, synth_data, tmp_path, defects: str, heat: dict):
    """Damaged sphere twins (`defects`), the plain fg bundle and a copy with the `heat` block, and
    both bundles' score_damage results on them: (damaged root, plain, copy, plain's, copy's)."""
    from calibration.damage_eval import score_damage
    from calibration.scoring import make_scorer
    dmg = tmp_path / "damaged"
    assert main(["dataset", "damage", str(synth_data / "test" / "sphere"), "--out", str(dmg), "--seed", "3",
                 "--defects", defects, "--quiet"]) == 0
    plain = Bundle.load(bundles[("none", "fg")])
    _with_heat(plain.path, tmp_path / "variant", heat)
    variant = Bundle.load(tmp_path / "variant")
    return (dmg, plain, variant,
            *(score_damage(make_scorer(b, "onnxruntime", 0), b, dmg, progress=False) for b in (plain, variant)))


@pytest.mark.parametrize("heat", [{"sigma": -1}, {"sigma": "2"}, {"sigma": None}, [2.0]])
def test_a_bundle_with_a_bad_heat_block_is_refused(bundles, tmp_path, heat):
    _with_heat(bundles[("none", "fg")], tmp_path / "b", heat)
    with pytest.raises(BundleError, match="heat|sigma"):
        Bundle.load(tmp_path / "b")


def test_evaluate_reads_the_map_the_bundle_smooths(bundles, synth_data, tmp_path):
    """Same scores; the smoothed bundle's maps are the raw maps through its Gaussian, before they go
    back to the sample's frame (a sigma that evaluate ignored would leave them equal)."""
    import cv2

    from calibration.damage_eval import damage_rows
    dmg, raw_b, smooth_b, raw, smoothed = _twins_scored(bundles, synth_data, tmp_path, "stain,hole", {"sigma": 2.0})
    checked = 0
    for name in raw:
        for r, s in zip(raw[name], smoothed[name]):
            assert s.score == pytest.approx(r.score) and s.heat.shape == r.heat.shape
            if r.heat.shape == (raw_b.size, raw_b.size):  # whole-frame samples: no crop in between
                want = cv2.GaussianBlur(r.heat, (0, 0), 2.0, borderType=cv2.BORDER_REPLICATE)
                assert np.allclose(s.heat, want, atol=1e-5)
                checked += 1
            tv = lambda h: np.abs(np.diff(h, axis=0)).sum() + np.abs(np.diff(h, axis=1)).sum()  # noqa: E731
            assert tv(s.heat) < tv(r.heat)
    assert checked == sum(len(v) for v in raw.values())
    rows_raw, rows_smooth = (damage_rows("sphere", raw_b.kind, d) for d in (raw, smoothed))
    assert [r["image_auroc"] for r in rows_raw] == pytest.approx([r["image_auroc"] for r in rows_smooth])
    assert [r["pixel_auroc"] for r in rows_raw] != pytest.approx([r["pixel_auroc"] for r in rows_smooth])
    # evaluate's table says which map its pixel metrics are of
    out = tmp_path / "report"
    assert main(["evaluate", "--bundles", str(raw_b.path), str(smooth_b.path), "--damage", str(dmg), "--out", str(out),
                 "--quiet", "--no-search-figure"]) == 0
    with open(out / "damage.csv") as fh:
        sigmas = {float(r["map_sigma"]) for r in csv.DictReader(fh)}
    assert sigmas == {0.0, 2.0}


def test_export_compares_the_background_with_the_generators_own_by_default_and_records_it(encoded_run, tmp_path,
                                                                                         capsys):
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "d"), *FAST]) == 0
    assert "background against the generator's own" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["heat"] == {"sigma": 1.0, "background": "drawn"}
    assert Bundle.load(tmp_path / "d").heat_background == "drawn"
    for args in (["--heat-background", "black"], ["--paper", "--k", "3"]):
        out = tmp_path / "black"
        assert main(["export", str(encoded_run), "--out", str(out), "--force",
                     *(FAST if "--paper" not in args else []), *args]) == 0
        assert "background against -1" in capsys.readouterr().out
        assert "background" not in json.loads((out / "manifest.json").read_text()).get("heat", {})
        assert Bundle.load(out).heat_background == "black"
    assert main(["export", str(encoded_run), "--out", str(tmp_path / "p"), "--paper", "--k", "3",
                 "--heat-background", "drawn"]) == 0
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["heat"] == {"background": "drawn"}
    with pytest.raises(SystemExit) as e:  # argparse refuses it, naming the choices
        main(["export", str(encoded_run), "--out", str(tmp_path / "bad"), *FAST, "--heat-background", "grey"])
    assert e.value.code == 2 and "choose from 'drawn', 'black'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("heat", [{"background": "white"}, {"background": None}, {"sigma": 1.0, "background": 3}])
def test_a_bundle_with_a_bad_heat_background_is_refused(bundles, tmp_path, heat):
    _with_heat(bundles[("none", "fg")], tmp_path / "b", heat)
    with pytest.raises(BundleError, match="background"):
        Bundle.load(tmp_path / "b")


def test_evaluate_reads_the_background_the_bundle_compares_with(bundles, synth_data, tmp_path):
    """Same scores; the drawn bundle's maps are the black bundle's except where the input shows
    background, and there they are G's drawing against its own median."""
    dmg, black_b, drawn_b, black, drawn = _twins_scored(bundles, synth_data, tmp_path, "chunk",
                                                         {"background": "drawn"})
    differs = 0
    for name in black:
        for r, s in zip(black[name], drawn[name]):
            assert s.score == pytest.approx(r.score) and s.heat.shape == r.heat.shape
            differs += int(not np.allclose(s.heat, r.heat))
    assert differs > 0
    # evaluate's table says which background its pixel metrics are of
    out = tmp_path / "report"
    assert main(["evaluate", "--bundles", str(black_b.path), str(drawn_b.path), "--damage", str(dmg), "--out", str(out),
                 "--quiet", "--no-search-figure"]) == 0
    with open(out / "damage.csv") as fh:
        assert {r["map_background"] for r in csv.DictReader(fh)} == {"black", "drawn"}


def test_export_of_a_run_that_is_not_there_says_so_and_nothing_else(tmp_path, capsys):
    assert main(["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "b")]) == 2
    out = capsys.readouterr()
    assert f"no checkpoint at {tmp_path / 'no-run'}" in out.err
    assert "encoder" not in out.out  # no note about the missing run's encoder (it named the parent folder)
    assert not (tmp_path / "b").exists()
