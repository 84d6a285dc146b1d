import pytest
from pydantic import ValidationError

from adgan.cli import main
from agent.settings import load_settings

GOOD = """
station_id = "line1-st3"

[source]
type = "synthetic"
seed = 4

[segmentation]
max_depth_mm = 650
roi = [10, 20, 300, 200]

[model]
bundles = { rectangle = "/var/lib/adgan/rectangle", cylinder = "/var/lib/adgan/cylinder" }
expected_class = "rectangle"
thresholds = "/var/lib/adgan/thresholds.json"
backend = { type = "onnxruntime", threads = 2 }

[mqtt]
host = "broker.local"
username = "station"
"""


def write(tmp_path, text, name="agent.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_valid_config_loads_with_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    s = load_settings(write(tmp_path, GOOD), env_file=None)
    assert s.station_id == "line1-st3" and s.source.type == "synthetic" and s.source.seed == 4
    assert s.segmentation.roi == (10, 20, 300, 200) and s.segmentation.surface_tolerance == 0.1
    assert s.model.backend.type == "onnxruntime" and s.model.backend.threads == 2
    assert s.mqtt.port == 1883 and s.mqtt.qos == 1 and s.trigger.mode == "continuous"
    assert s.source.variety == "family"
    from agent.sources.open import open_source
    s = load_settings(write(tmp_path, GOOD.replace("seed = 4", 'seed = 4\nvariety = "product"')), env_file=None)
    assert open_source(s.source).station.variety == "product"


def test_environment_overrides_nested_fields_and_secrets_stay_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("ADGAN_MQTT__PORT", "8883")
    monkeypatch.setenv("ADGAN_MQTT__PASSWORD", "hunter2")
    monkeypatch.setenv("ADGAN_MODEL__BACKEND__THREADS", "1")
    s = load_settings(write(tmp_path, GOOD), env_file=None)
    assert s.mqtt.port == 8883 and s.mqtt.host == "broker.local"  # the file's other fields stay
    assert s.mqtt.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert s.model.backend.type == "onnxruntime" and s.model.backend.threads == 1
    # switching the engine from the environment while the file keeps an onnxruntime-only
    # option is refused, not silently ignored
    monkeypatch.setenv("ADGAN_MODEL__BACKEND__TYPE", "tensorrt")
    monkeypatch.delenv("ADGAN_MODEL__BACKEND__THREADS")
    with pytest.raises(ValidationError, match="threads"):
        load_settings(write(tmp_path, GOOD), env_file=None)


def test_password_from_systemd_credentials_and_dotenv(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.delenv("ADGAN_MQTT__PASSWORD", raising=False)
    s = load_settings(write(tmp_path, GOOD), env_file=None)
    assert s.mqtt.password.get_secret_value() == "from-credential"
    env = write(tmp_path, "ADGAN_MQTT__KEEPALIVE_S=60\n", ".env")
    assert load_settings(write(tmp_path, GOOD), env_file=env).mqtt.keepalive_s == 60


@pytest.mark.parametrize("edit, path", [
    (lambda t: t.replace('station_id = "line1-st3"', 'station_id = "line1/st3"'), "station_id"),
    # a NUL in a topic makes the broker hang up on every CONNECT (its Last Will names the topic)
    (lambda t: t.replace('station_id = "line1-st3"', 'station_id = "line1\\u0000st3"'), "station_id"),
    (lambda t: t.replace('station_id = "line1-st3"', 'station_id = "line1\\u001bst3"'), "station_id"),
    (lambda t: t.replace('station_id = "line1-st3"', f'station_id = "{"s" * 129}"'), "station_id"),
    (lambda t: t.replace('host = "broker.local"', 'host = "broker.local"\ntopic_prefix = "plant\\u0085"'),
     "mqtt.topic_prefix"),
    (lambda t: t.replace('type = "synthetic"', 'type = "webcam"'), "source"),
    (lambda t: t.replace('seed = 4', 'seed = 4\nvariety = "batch"'), "source.synthetic.variety"),
    (lambda t: t.replace('expected_class = "rectangle"', 'expected_class = "sphere"'), "model"),
    (lambda t: t.replace('host = "broker.local"', 'host = "broker.local"\nqos = 3'), "mqtt.qos"),
    (lambda t: t.replace("max_depth_mm = 650", "max_depth_mm = -5"), "segmentation.max_depth_mm"),
    (lambda t: t.replace('[mqtt]', '[mqtt]\ncolour = "red"'), "mqtt.colour"),
    # TOML has inf and nan: inf passes a lower bound (a camera that stops would never be reopened)
    (lambda t: t + "[health]\nframe_timeout_s = inf\n", "health.frame_timeout_s"),
    (lambda t: t + "[health]\nreconnect_max_s = +inf\n", "health.reconnect_max_s"),
    (lambda t: t.replace('seed = 4', 'seed = 4\nfps = nan'), "source.synthetic.fps"),
    # run refused these with a bare ValueError after validate-config had passed them
    (lambda t: t.replace("roi = [10, 20, 300, 200]", "roi = [-1, 20, 300, 200]"), "segmentation.roi"),
    (lambda t: t.replace("roi = [10, 20, 300, 200]", "roi = [10, 20, 0, 200]"), "segmentation.roi"),
    # paths the system cannot be asked about: the checks before the start ended in 'File name too long'
    # (an OSError's traceback) or 'embedded null byte', naming no setting
    (lambda t: t + f'[outbox]\npath = "/var/lib/{"a" * 256}/outbox.sqlite"\n', "outbox.path"),
    (lambda t: t + '[outbox]\npath = "/var/lib/adgan/out\\u0000box.sqlite"\n', "outbox.path"),
    (lambda t: t.replace('thresholds = "/var/lib/adgan/thresholds.json"', f'thresholds = "/{"d/" * 2100}t.json"'),
     "model.thresholds"),
    (lambda t: t.replace('rectangle = "/var/lib/adgan/rectangle"', f'rectangle = "/x/{"b" * 300}"'),
     "model.bundles.rectangle"),
])
def test_bad_fields_are_named(tmp_path, monkeypatch, edit, path):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ValidationError) as e:
        load_settings(write(tmp_path, edit(GOOD)), env_file=None)
    locs = [".".join(str(p) for p in err["loc"]) for err in e.value.errors()]
    assert any(loc.startswith(path) for loc in locs), locs


def test_validate_config_cli_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    # well-formed, but the bundles do not exist here: every check 'run' makes is made (test_preflight.py)
    assert main(["agent", "validate-config", "--config", str(write(tmp_path, GOOD))]) == 2
    err = capsys.readouterr().err
    assert "invalid setting" not in err and "model.bundles.rectangle: /var/lib/adgan/rectangle" in err, err
    bad = GOOD.replace("max_depth_mm = 650", "max_depth_mm = -5").replace('station_id = "line1-st3"', 'station_id = ""')
    assert main(["agent", "validate-config", "--config", str(write(tmp_path, bad, "bad.toml"))]) == 2
    err = capsys.readouterr().err
    assert "2 invalid setting(s)" in err and "segmentation.max_depth_mm" in err and "station_id" in err
    assert main(["agent", "validate-config", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err
    assert main(["agent", "validate-config", "--config", str(tmp_path)]) == 2  # (a folder: it "did not exist")
    assert f"config file {tmp_path} is a folder, not a file" in capsys.readouterr().err


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path, monkeypatch):
    """Windows Notepad saves "UTF-8 with BOM": tomllib refused it as 'Invalid statement (at line
    1, column 1)', which names nothing a person sees in the file."""
    from agent.mqtt.start_refused import reach
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    p = tmp_path / "agent.toml"
    p.write_text(GOOD.replace("\n", "\r\n"), encoding="utf-8-sig")
    assert p.read_bytes().startswith(b"\xef\xbb\xbf\r\nstation_id")
    plain = load_settings(write(tmp_path, GOOD, "plain.toml"), env_file=None)
    assert load_settings(p, env_file=None).model_dump() == plain.model_dump()
    assert reach(p, None).station_id == "line1-st3"  # (what says a refusal on MQTT reads it the same way)


def test_the_example_config_in_the_repository_is_valid(monkeypatch):
    from pathlib import Path
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    example = Path(__file__).resolve().parents[2] / "systemd" / "agent.example.toml"
    s = load_settings(example, env_file=None)
    assert s.source.type == "realsense" and s.model.backend.type == "tensorrt"


def test_inf_from_the_environment_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("ADGAN_HEALTH__STOP_FLUSH_S", "inf")
    with pytest.raises(ValidationError, match="finite"):
        load_settings(write(tmp_path, GOOD), env_file=None)


@pytest.mark.parametrize("edit, words", [
    # smaller than trigger.min_area_px (1500): the object mask is cut to it, so no part would count
    (lambda t: t.replace("roi = [10, 20, 300, 200]", "roi = [10, 20, 30, 40]"), "1200 pixels, fewer than"),
    # past a live camera's frame: the station would be blind without a word
    (lambda t: t.replace('type = "synthetic"\nseed = 4', 'type = "realsense"\nwidth = 424\nheight = 240')
     .replace("roi = [10, 20, 300, 200]", "roi = [500, 20, 300, 200]"), "outside the camera's 424x240 frame"),
    (lambda t: t.replace('type = "synthetic"\nseed = 4', 'type = "realsense"\nwidth = 16\nheight = 16')
     .replace("roi = [10, 20, 300, 200]\n", ""), r"min_area_px \(1500\) is more than the camera's 16x16"),
])
def test_a_region_of_interest_no_part_could_fill_is_refused(tmp_path, monkeypatch, edit, words):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ValidationError, match=words):
        load_settings(write(tmp_path, edit(GOOD)), env_file=None)
    # a recording brings its own size: the frames are checked as they come (test_roi_outside_the_frame...)
    rec = GOOD.replace('type = "synthetic"\nseed = 4', 'type = "realsense"\nrecording = "x.db3"\nwidth = 424')
    assert load_settings(write(tmp_path, rec.replace("roi = [10, 20, 300, 200]", "roi = [500, 20, 300, 200]")),
                         env_file=None).segmentation.roi == (500, 20, 300, 200)
