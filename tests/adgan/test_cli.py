import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adgan.cli import build_parser, main
from agent.sources.dataset import frame_numbers, read_sample

ROOT = Path(__file__).resolve().parents[2]


def test_every_command_has_help(capsys):
    parser = build_parser()
    top = parser.format_help()
    for name in ["dataset", "demo", "train", "export", "score", "calibrate", "evaluate", "agent"]:
        assert name in top
    for cmd in (["dataset", "synth"], ["dataset", "grid"], ["dataset", "segment-preview"], ["train"], ["demo"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        assert len(capsys.readouterr().out) > 100


@pytest.mark.parametrize("cmd, said", [
    (["train", "D", "--class", "c", "--out", "R", "--n-critic", "0"], "--n-critic: must be a whole number >= 1, got 0"),
    (["train", "D", "--class", "c", "--out", "R", "--threads", "-1"], "--threads: must be a whole number >= 0, got -1"),
    (["train", "D", "--class", "c", "--out", "R", "--sample-every", "-1"], "--sample-every: must be a whole number"),
    (["train-encoder", "R", "--epochs", "1", "--features", "0"], "--features: must be a whole number >= 1, got 0"),
    (["evaluate", "--bundles", "B", "--data", "D", "--out", "E", "--n-rank", "-1"], "--n-rank: must be a whole"),
    (["dataset", "grid", "D", "--out", "g.png", "--scale", "0"], "--scale: must be a whole number >= 1, got 0"),
    (["dataset", "grid", "D", "--out", "g.png", "--n", "x"], "--n: must be a whole number >= 1, got 'x'"),
    (["agent", "capture-frames", "--config", "C", "--out", "F", "--every", "0"], "--every: must be a whole number"),
    (["agent", "capture-reference", "--config", "C", "--count", "0"], "--count/--frames: must be a whole number")])
def test_numbers_a_command_cannot_use_are_refused_when_the_command_line_is_read(tmp_path, capsys, cmd, said):
    """(--n-critic 0 took the recipe's 5; --threads -1 ended in torch's traceback after the data
    loaded; --n-rank -1 wrote a report; --scale 0 ended in OpenCV's assertion.)"""
    with pytest.raises(SystemExit) as e:
        main(cmd)
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_agent_run_with_a_missing_config_says_so(tmp_path, capsys):
    assert main(["agent", "run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err
    saved = tmp_path / "agent.toml"  # by Notepad as "Unicode": said so, not as a codec's error
    saved.write_text('station_id = "st1"\n', encoding="utf-16")
    assert main(["agent", "validate-config", "--config", str(saved), "--env-file", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text (byte 0); save it as UTF-8" in err and "codec" not in err, err


def test_synth_writes_the_paper_layout(synth_data):
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("rectangle", "cylinder", "sphere"):
            nums = frame_numbers(synth_data / split / cls)
            assert nums == list(range(n))
            s = read_sample(synth_data / split / cls, 0)
            assert s.rgb.shape == (32, 32, 3) and s.depth.max() > 0
    rows = list(csv.DictReader(open(synth_data / "test" / "labels.csv")))
    assert len(rows) == 3 * 3 * 2
    assert {r["defect"] for r in rows if r["anomalous_for_class"] == "1"} == {"dent", "chunk", "foreign"}


def test_synth_is_deterministic(tmp_path, synth_data):
    assert main(["dataset", "synth", str(tmp_path), "--train", "6", "--test", "3", "--size", "32", "--seed", "5",
                 "--defects", "dent,chunk,foreign", "--workers", "1"]) == 0
    for rel in ("train/sphere/depth/4.png", "test/rectangle_defect/rgb/2.jpg"):
        assert (tmp_path / rel).read_bytes() == (synth_data / rel).read_bytes()


def test_synth_product_variety_makes_alike_parts(tmp_path):
    spread = {}
    for v in ("family", "product"):
        assert main(["dataset", "synth", str(tmp_path / v), "--classes", "cylinder", "--train", "6", "--test", "0",
                     "--size", "32", "--framing", "object", "--workers", "1", "--variety", v]) == 0
        colours = []
        for n in range(6):
            s = read_sample(tmp_path / v / "train" / "cylinder", n)
            colours.append(s.rgb[s.depth > 0].mean(axis=0) / s.rgb[s.depth > 0].mean())  # hue, not brightness
        spread[v] = float(np.ptp(colours, axis=0).max())
    assert spread["product"] < 0.5 * spread["family"], spread


def test_grid_and_info(tmp_path, synth_data, capsys):
    out = tmp_path / "grid.png"
    assert main(["dataset", "grid", str(synth_data / "train"), "--out", str(out), "--n", "4"]) == 0
    import cv2
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 3 * 2 * 32 * 2  # 3 rows of RGB-above-depth tiles at scale 2
    assert main(["dataset", "info", str(synth_data / "test")]) == 0
    assert "rectangle_defect: 3 samples" in capsys.readouterr().out


def test_raw_reference_preview_and_prepare(tmp_path):
    raw = tmp_path / "station"
    assert main(["dataset", "synth-raw", str(raw), "--count", "3", "--empty", "4", "--width", "320",
                 "--height", "240"]) == 0
    assert main(["dataset", "reference", str(raw / "empty"), "--out", str(tmp_path / "ref.npz")]) == 0
    a = np.load(raw / "reference.npz")["depth"]
    b = np.load(tmp_path / "ref.npz")["depth"]
    np.testing.assert_array_equal(a, b)
    png = tmp_path / "steps.png"
    assert main(["dataset", "segment-preview", str(raw / "frames"), "--reference", str(tmp_path / "ref.npz"),
                 "--out", str(png)]) == 0
    import cv2
    img = cv2.imread(str(png))
    assert img.shape[1] >= 3 * 320 and img.shape[0] >= 2 * 240
    out = tmp_path / "samples" / "part"
    assert main(["dataset", "prepare", str(raw / "frames"), "--reference", str(raw / "reference.npz"),
                 "--out", str(out), "--size", "32"]) == 0
    assert frame_numbers(out) == [0, 1, 2]


def test_input_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["dataset", "grid", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert main(["dataset", "segment-preview", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    for sub in ("rgb", "depth"):
        (tmp_path / "empty" / "part" / sub).mkdir(parents=True)
    capsys.readouterr()
    assert main(["dataset", "grid", str(tmp_path / "empty"), "--out", str(tmp_path / "g.png")]) == 2
    assert "no samples to draw" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dataset", "synth", str(tmp_path), "--classes", "torus"])


def test_a_value_a_record_refuses_is_one_line_naming_the_field(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "b"), "--fg-threshold", "nan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "adgan export: error: SearchDefaults: fg_threshold must be in (-1, 1), got nan"


def test_agent_side_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import agent.frame, agent.sources.folder, agent.sources.synthetic, agent.segment.preprocess, "
            "agent.segment.segmentation, agent.visual, adgan.cli, adgan.dataset, adgan.score, agent.settings, "
            "agent.cli, agent.scoring.bundle, agent.scoring.search, agent.scoring.onnxruntime, "
            "agent.scoring.tensorrt, agent.decide.thresholds, agent.service, agent.sources.realsense, "
            "agent.decide.inspector, agent.mqtt.events, agent.health, agent.trigger\n"
            "from adgan.cli import build_parser; build_parser()\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "adgan", "--version"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "adgan-edge" in r.stdout


def _under_address_space(limit_kb: int, *args: str) -> subprocess.CompletedProcess:
    """`adgan ARGS` with its address space limited by `ulimit -v` (as a unit's LimitAS= does)."""
    return subprocess.run(["bash", "-c", f'ulimit -v {limit_kb}; exec "$0" "$@"', sys.executable, "-m", "adgan", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_low_address_space_limit_is_said_not_a_silent_crash(tmp_path):
    """Under `ulimit -v` 450,000 kB (LimitAS=) `adgan agent validate-config` and `run` died of SIGSEGV in
    OpenCV's import, without a word (rc -11: a unit restarting for ever); at 600,000 kB `run` ended in
    "can't start new thread". Now one line names the limit and the fix, exit 2; a limit above the
    floor is a warning and the command goes on."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text('station_id = "st1"\n')
    for kb in (450_000, 600_000):
        r = _under_address_space(kb, "agent", "validate-config", "--config", str(cfg))
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        said = f"adgan: error: this process may map at most {round(kb / 1024)} MiB of address space (LimitAS= or "
        assert r.stderr.startswith(said + "'ulimit -v')"), r.stderr
        assert "not started. Bound memory with MemoryMax= in the unit" in r.stderr and "invalid setting" not in r.stderr
    r = _under_address_space(3_000_000, "agent", "validate-config", "--config", str(cfg))
    assert r.stderr.startswith("adgan: warning: this process may map at most 2930 MiB of address space"), r.stderr
    assert r.returncode == 2 and "invalid setting(s)" in r.stderr  # (it went on to read the configuration)


def test_the_settings_reference_where_it_cannot_be_written_is_one_line(tmp_path, capsys):
    """(an agent command, so an OSError was its traceback: `--out` under a file, a full disk)"""
    (tmp_path / "a-file").touch()
    assert main(["agent", "settings-reference", "--out", str(tmp_path / "a-file" / "agent-toml.md")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("adgan agent: error: Not a directory: ") and "Traceback" not in err, err


def test_address_space_bands():
    import resource

    from adgan.cli import ADDRESS_SPACE_FLOOR, address_space
    assert address_space(resource.RLIM_INFINITY) is None
    assert address_space(ADDRESS_SPACE_FLOOR - 1)[1] is True
    words, refused = address_space(ADDRESS_SPACE_FLOOR)
    assert refused is False and "MemoryMax=" in words and "1024 MiB" in words


def test_synth_damage_writes_twins_that_differ_by_the_defect_alone(tmp_path):
    """The renderer's own defects: each twin is the intact scene (same pose, light and sensor
    noise) with one defect, its mask the pixels the defect changed; same seed, same bytes."""
    import cv2

    from agent.sources.dataset import read_mask, read_preprocessing
    args = ["dataset", "synth-damage", "--classes", "cylinder", "--n", "3", "--seed", "4", "--workers", "1"]
    assert main([*args, str(tmp_path / "a")]) == 0
    assert main([*args, str(tmp_path / "b")]) == 0
    a = tmp_path / "a"
    assert sorted(p.name for p in a.iterdir()) == ["cylinder", "cylinder_blemish", "cylinder_chunk", "cylinder_dent",
                                                     "cylinder_foreign", "cylinder_hole", "damage.json"]
    assert json.loads((a / "damage.json").read_text())["seed"] == 4
    for f in sorted(a.rglob("*.*")):
        if f.suffix in (".png", ".jpg"):
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(a)).read_bytes(), f
    # a second run into it would leave the first one's folders and frames: refused, or replaced whole
    assert main(["dataset", "synth-damage", "--classes", "sphere", "--n", "2", "--defects", "hole", "--workers", "1",
                 str(tmp_path / "b")]) == 2
    assert main(["dataset", "synth-damage", "--classes", "sphere", "--n", "2", "--defects", "hole", "--workers", "1",
                 "--seed", "5", "--force", str(tmp_path / "b")]) == 0
    b = tmp_path / "b"
    assert sorted(p.name for p in b.iterdir()) == ["damage.json", "sphere", "sphere_hole"]
    assert json.loads((b / "damage.json").read_text())["seed"] == 5 and frame_numbers(b / "sphere") == [0, 1]
    assert read_preprocessing(a / "cylinder").framing == "object" and read_preprocessing(a / "cylinder").size == 32
    for n in frame_numbers(a / "cylinder_blemish"):
        intact, stained = read_sample(a / "cylinder", n), read_sample(a / "cylinder_blemish", n)
        mask = read_mask(a / "cylinder_blemish", n)
        assert mask.any() and mask.mean() < 0.3
        # a blemish changes colour (and loses depth where it is dark): same silhouette, same crop;
        # the samples differ near it and nowhere else
        near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        d = np.abs(intact.rgb.astype(int) - stained.rgb.astype(int)).max(axis=-1)
        dz = np.abs(intact.depth.astype(int) - stained.depth.astype(int))
        assert d[~near].max() <= 12 and dz[~near].max() == 0  # JPEG ringing (8x8 blocks) at most
        assert d[mask].max() > 12 or dz[mask].max() > 0
    for n in frame_numbers(a / "cylinder_hole"):  # a hole goes deeper: depth changes inside its mask
        intact, holed = read_sample(a / "cylinder", n), read_sample(a / "cylinder_hole", n)
        m = read_mask(a / "cylinder_hole", n)
        assert (intact.depth != holed.depth)[m].any()
