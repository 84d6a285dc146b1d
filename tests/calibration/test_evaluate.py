import csv

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from adgan.cli import main


@pytest.fixture(scope="module")
def report(bundles, synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["evaluate", "--bundles", str(bundles[("none", "fg")]), "--data", str(synth_data / "test"),
                 "--out", str(out), "--quiet", "--n-rank", "3"]) == 0
    return out


def test_report_has_table_figures_and_index(report):
    for f in ("table2.md", "table2.csv", "roc.png", "average-loss.png", "index.md"):
        assert (report / f).is_file(), f
    pngs = {p.stem.split("-")[0] for p in report.glob("*.png")}
    assert {"rates", "ranking", "search", "roc", "average", "maps"} <= pngs
    idx = (report / "index.md").read_text()
    assert "Table 2" in idx and "roc.png" in idx and "ranking-" in idx and "maps-" in idx


def test_table_numbers_match_scikit_learn_on_the_written_scores(report):
    row = next(csv.DictReader(open(report / "table2.csv")))
    scores = list(csv.DictReader(open(next((report / "scores").glob("*.csv")))))
    y = np.array([r["class"] != "sphere" for r in scores], float)
    s = np.array([float(r["score"]) for r in scores])
    assert float(row["auc"]) == pytest.approx(roc_auc_score(y, s))
    assert int(row["n_normal"]) == 3 and int(row["n_anomalous"]) == 15
    assert float(row["avg_loss_sphere"]) == pytest.approx(s[y == 0].mean())
    assert 0.5 <= float(row["max_accuracy"]) <= 1 and float(row["equal_rates_accuracy"]) <= float(row["max_accuracy"])


def test_same_seed_same_report(report, bundles, synth_data, tmp_path):
    assert main(["evaluate", "--bundles", str(bundles[("none", "fg")]), "--data", str(synth_data / "test"),
                 "--out", str(tmp_path), "--quiet", "--n-rank", "3", "--no-search-figure"]) == 0
    assert (tmp_path / "table2.csv").read_text() == (report / "table2.csv").read_text()


def test_pca_reconstructs_its_own_span_exactly_and_scores_outliers_higher():
    from calibration.baselines import PCA
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 4 * 8 * 8))
    train = (rng.normal(size=(40, 3)) @ basis).reshape(40, 4, 8, 8) * 0.1
    pca = PCA.fit(train, 3)
    inside = (rng.normal(size=(5, 3)) @ basis).reshape(5, 4, 8, 8) * 0.1
    outside = inside + rng.normal(size=inside.shape) * 0.1
    assert pca.scores(inside).max() < 1e-20
    assert (pca.scores(outside) > 1e-4).all()
    with pytest.raises(ValueError, match="at least 2 samples"):
        PCA.fit(train[:1], 3)


def test_evaluate_adds_pca_rows(bundles, synth_data, tmp_path):
    assert main(["evaluate", "--bundles", str(bundles[("none", "fg")]), "--data", str(synth_data / "test"),
                 "--out", str(tmp_path), "--quiet", "--no-search-figure", "--pca", "4", "--train-frames", "0:2"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "table2.csv")))
    kinds = {(r["class"], r["kind"]) for r in rows}
    assert ("sphere", "pca4") in kinds and ("cylinder_defect", "pca4-masked") in kinds


def test_evaluate_on_damaged_twins_reports_image_and_pixel_metrics(bundles, synth_data, tmp_path):
    from calibration.damage_eval import damage_rows, score_damage
    from calibration.scoring import make_scorer
    from agent.scoring.bundle import Bundle
    dmg = tmp_path / "damaged"
    # the synthetic test spheres are 32 px: big enough parts for every defect
    assert main(["dataset", "damage", str(synth_data / "test" / "sphere"), "--out", str(dmg), "--seed", "2",
                 "--quiet"]) == 0
    out = tmp_path / "report"
    b = bundles[("none", "fg")]
    assert main(["evaluate", "--bundles", str(b), "--damage", str(dmg), "--out", str(out), "--quiet",
                 "--n-rank", "2"]) == 0
    rows = list(csv.DictReader(open(out / "damage.csv")))
    assert [r["defect"] for r in rows] == ["chunk", "dent", "foreign", "hole", "stain", "all"]
    for r in rows:
        assert 0 <= float(r["image_auroc"]) <= 1 and 0 <= float(r["pixel_auroc"]) <= 1
        assert 0 <= float(r["pro_0.3"]) <= 1
    assert (out / "damage.md").is_file() and "Local damage" in (out / "index.md").read_text()
    assert "(damage seed 2, size scale 1.0)" in (out / "index.md").read_text()
    assert list(out.glob("damage-maps-*.png"))
    # the table is the metrics of the scores and maps the scorer gives (same seed, same numbers)
    bundle = Bundle.load(b)
    again = damage_rows("sphere", bundle.kind, score_damage(make_scorer(bundle, "onnxruntime", 0), bundle, dmg,
                                                            progress=False))
    assert float(rows[-1]["image_auroc"]) == pytest.approx(again[-1]["image_auroc"])
    assert float(rows[-1]["pro_0.3"]) == pytest.approx(again[-1]["pro_0.3"])
    # the same report folder again, for Table 2 only: the damage section of the first run goes (it
    # stayed beside the new index as if current); someone's notes stay; a bad bundle removes nothing
    (out / "notes.md").write_text("mine")
    assert main(["evaluate", "--bundles", str(tmp_path / "nope"), "--data", str(synth_data / "test"), "--out",
                 str(out), "--quiet"]) == 2
    assert (out / "damage.csv").is_file()
    assert main(["evaluate", "--bundles", str(b), "--data", str(synth_data / "test"), "--out", str(out), "--quiet",
                 "--n-rank", "2", "--no-search-figure"]) == 0
    assert not (out / "damage.csv").exists() and not list(out.glob("damage-maps-*.png"))
    assert not list((out / "scores").glob("damage-*.csv")) and (out / "table2.md").is_file()
    assert (out / "notes.md").read_text() == "mine" and "Local damage" not in (out / "index.md").read_text()


def test_evaluate_needs_data_or_damage(bundles, tmp_path, capsys):
    assert main(["evaluate", "--bundles", str(bundles[("none", "fg")]), "--out", str(tmp_path)]) == 2
    assert "--damage" in capsys.readouterr().err


def test_the_report_says_how_the_damaged_twins_were_made(tmp_path):
    from calibration.evaluate import damage_recipe
    assert "no readable damage.json" in damage_recipe(tmp_path)
    (tmp_path / "damage.json").write_text("[1, 2]")
    assert "not a record" in damage_recipe(tmp_path)
    (tmp_path / "damage.json").write_text('{"seed": 7, "size_scale": 2.0, "samples": {}}')
    assert damage_recipe(tmp_path) == " (damage seed 7, size scale 2.0)"
    (tmp_path / "damage.json").write_text('{"seed": 7, "samples": {}}')  # made before --size-scale
    assert damage_recipe(tmp_path) == " (damage seed 7, size scale 1.0)"
    (tmp_path / "damage.json").write_text('{"made_by": "adgan dataset synth-damage", "seed": 3, "parts": 12}')
    assert damage_recipe(tmp_path) == " (the renderer's defects, seed 3, 12 parts per class)"


def test_masks_made_elsewhere_are_read_as_written():
    from agent.sources.dataset import read_mask
    import cv2
    import tempfile
    from pathlib import Path
    truth = np.zeros((8, 8), bool)
    truth[2:5, 3:6] = True
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "mask").mkdir()
        antialiased = truth.astype(np.uint8) * 255
        antialiased[5, 3:6] = 100  # a smoothed edge below half: not damage
        labels = truth.astype(np.uint8)
        labels[3, 4] = 2  # region labels
        colour = np.zeros((8, 8, 3), np.uint8)
        colour[truth] = (0, 0, 255)
        for n, m in enumerate([truth.astype(np.uint8) * 255, truth.astype(np.uint8), antialiased, labels,
                               truth.astype(np.uint16), truth.astype(np.uint16) * 65535, colour,
                               np.zeros((8, 8), np.uint8)]):
            cv2.imwrite(str(folder / "mask" / f"{n}.png"), m)
        for n in range(7):
            assert np.array_equal(read_mask(folder, n), truth), n
        assert not read_mask(folder, 7).any()  # an empty mask stays empty
        with pytest.raises(FileNotFoundError, match="no ground-truth mask"):
            read_mask(folder, 8)


def test_damage_by_another_hand_masks_of_any_kind_or_none(bundles, synth_data, tmp_path, capsys):
    """Damaged folders with 0/1 masks give the numbers of 0/255 ones; a folder without masks
    still gets its image AUROC; a mask of the wrong size is refused by name."""
    import cv2
    import shutil
    dmg = tmp_path / "damaged"
    assert main(["dataset", "damage", str(synth_data / "test" / "sphere"), "--out", str(dmg), "--seed", "2",
                 "--defects", "hole,stain,chunk", "--quiet"]) == 0
    b = bundles[("none", "fg")]
    base = ["evaluate", "--bundles", str(b), "--damage", str(dmg), "--quiet", "--n-rank", "2"]
    assert main([*base, "--out", str(tmp_path / "ours")]) == 0
    ours = {r["defect"]: r for r in csv.DictReader(open(tmp_path / "ours" / "damage.csv"))}
    assert list(csv.DictReader(open(tmp_path / "ours" / "damage.csv")).fieldnames)[-1] == "n_masked"
    for p in (dmg / "sphere_hole" / "mask").glob("*.png"):  # 0/1 masks
        cv2.imwrite(str(p), (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8))
    shutil.rmtree(dmg / "sphere_stain" / "mask")  # no masks at all
    assert main([*base, "--out", str(tmp_path / "theirs")]) == 0
    theirs = {r["defect"]: r for r in csv.DictReader(open(tmp_path / "theirs" / "damage.csv"))}
    assert theirs["hole"]["pixel_auroc"] == ours["hole"]["pixel_auroc"] != ""
    assert theirs["hole"]["n_masked"] == ours["hole"]["n_masked"] == ours["hole"]["n_damaged"]
    assert theirs["stain"]["image_auroc"] == ours["stain"]["image_auroc"]
    assert theirs["stain"]["pixel_auroc"] == theirs["stain"]["pro_0.3"] == "" and theirs["stain"]["n_masked"] == "0"
    n_all = int(ours["all"]["n_masked"])
    assert int(theirs["all"]["n_masked"]) == n_all - int(ours["stain"]["n_masked"])  # pixels: masked parts only
    assert theirs["all"]["image_auroc"] == ours["all"]["image_auroc"]
    first = sorted((dmg / "sphere_chunk" / "mask").glob("*.png"))[0]
    cv2.imwrite(str(first), np.zeros((7, 9), np.uint8))
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad")]) == 2
    assert f"{first}: a mask of 9x7 for a sample of" in capsys.readouterr().err
