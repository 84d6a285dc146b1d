"""`validate-config` makes every check `run` makes before its loop, and both exit 2 naming the
setting and the file (issue 14, item 5); thresholds are bound to their engine (item 10)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from adgan.cli import main
from tests.agent.conftest import ROOT, agent_config


def validate(cfg, capsys) -> tuple[int, str]:
    rc = main(["agent", "validate-config", "--config", str(cfg), "--env-file", "/nonexistent"])
    return rc, capsys.readouterr().err


def run(cfg, capsys) -> tuple[int, str]:
    rc = main(["agent", "run", "--config", str(cfg), "--env-file", "/nonexistent"])
    return rc, capsys.readouterr().err


def in_mqtt(cfg, text: str):
    cfg.write_text(cfg.read_text().replace("[mqtt]\n", f"[mqtt]\n{text}\n"))
    return cfg


SRC = 'type = "synthetic"\ncount = 1'


def test_a_valid_configuration_passes(calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    rc, err = validate(agent_config(tmp_path, 1, bundle, thresholds, SRC), capsys)
    assert rc == 0, err


def test_a_tampered_bundle_is_refused_by_both_naming_the_bundle(calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    bad = tmp_path / "bundle"
    shutil.copytree(bundle, bad)
    onnx = next(bad.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    cfg = agent_config(tmp_path, 1, bad, thresholds, SRC)
    for call in (validate, run):
        rc, err = call(cfg, capsys)
        assert rc == 2 and "model.bundles.sphere" in err and str(bad) in err and "Traceback" not in err, err


def test_a_missing_bundle_names_the_setting_and_the_path(calibrated, tmp_path, capsys):
    _, thresholds = calibrated
    cfg = agent_config(tmp_path, 1, tmp_path / "nowhere", thresholds, SRC)
    for call in (validate, run):
        rc, err = call(cfg, capsys)
        assert rc == 2 and "model.bundles.sphere" in err and str(tmp_path / "nowhere") in err, err


def test_thresholds_of_another_bundle_a_seed_or_an_engine_mismatch(calibrated, bundles, tmp_path, capsys):
    bundle, thresholds = calibrated
    rc, err = validate(agent_config(tmp_path, 1, bundles[("all", "mse")], thresholds, SRC), capsys)
    assert rc == 2 and "model.thresholds" in err and "recalibrate" in err, err
    rc, err = validate(_with_seed(agent_config(tmp_path, 1, bundle, thresholds, SRC), 7), capsys)
    assert rc == 2 and "model.seed" in err, err
    doc = json.loads(thresholds.read_text())
    doc["classes"]["sphere"]["engine"] = "tensorrt/fp16"
    other = tmp_path / "thresholds-trt.json"
    other.write_text(json.dumps(doc))
    cfg = agent_config(tmp_path, 1, bundle, other, SRC)
    for call in (validate, run):
        rc, err = call(cfg, capsys)
        assert rc == 2 and "model.backend" in err and "tensorrt/fp16" in err and \
            "onnxruntime/CPUExecutionProvider" in err, err


def _with_seed(cfg, seed: int):
    cfg.write_text(cfg.read_text().replace("[model]\n", f"[model]\nseed = {seed}\n"))
    return cfg


def test_calibrate_records_the_engine(calibrated):
    _, thresholds = calibrated
    rec = json.loads(thresholds.read_text())["classes"]["sphere"]
    assert rec["engine"] == "onnxruntime/CPUExecutionProvider"


def test_tls_files_that_are_missing_unreadable_or_not_certificates(calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    for ca in (tmp_path / "missing.pem", garbage):
        cfg = in_mqtt(agent_config(tmp_path, 1, bundle, thresholds, SRC), f'tls_ca = "{ca}"')
        for call in (validate, run):
            rc, err = call(cfg, capsys)
            assert rc == 2 and "mqtt.tls_ca" in err and str(ca) in err and "Traceback" not in err, err


def test_an_outbox_that_cannot_be_written(calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = agent_config(tmp_path, 1, bundle, thresholds, SRC)
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "outbox.sqlite"), str(blocker / "outbox.sqlite")))
    rc, err = validate(cfg, capsys)
    assert rc == 2 and "outbox.path" in err and str(blocker) in err, err
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                                           capture_output=True).returncode:
        return  # a read-only file system needs root to mount; the first case stands
    try:
        cfg.write_text(cfg.read_text().replace(str(blocker / "outbox.sqlite"), str(ro / "outbox.sqlite")))
        for call in (validate, run):
            rc, err = call(cfg, capsys)
            assert rc == 2 and "outbox.path" in err and "Read-only" in err, err
            assert f"its file system (tmpfs at {ro}) is mounted read-only: so mounted, or made so by the kernel" in err
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_an_outbox_in_a_read_only_view_of_a_writable_disk_names_the_units_sandbox(calibrated, tmp_path, capsys):
    """systemd's ProtectSystem=strict makes every path outside the unit's StateDirectory= and ReadWritePaths=
    read-only for the service, by read-only bind mounts over file systems that are writable. An outbox put
    there (/opt/adgan, a home folder) was refused with "the kernel makes a disk it finds failing read-only:
    see dmesg, and repair it (fsck)": advice to check a sound disk. Such a view is made here as systemd makes
    it (a bind mount remounted read-only)."""
    bundle, thresholds = calibrated
    rw, view = tmp_path / "rw", tmp_path / "view"
    rw.mkdir()
    view.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(rw), str(view)], capture_output=True).returncode:
        pytest.skip("a bind mount needs root")
    try:
        assert subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True).returncode == 0
        cfg = agent_config(tmp_path, 1, bundle, thresholds, SRC)
        cfg.write_text(cfg.read_text().replace(str(tmp_path / "outbox.sqlite"), str(view / "outbox.sqlite")))
        for call in (validate, run):
            rc, err = call(cfg, capsys)
            assert rc == 2 and "Read-only file system" in err and "fsck" not in err, err
            assert f"its mount {view} is read-only for this process, over a file system that is writable: " \
                "systemd's ProtectSystem=strict does this to every path outside the unit's StateDirectory= " \
                "(/var/lib/adgan)" in err, err
            assert f"add {view} to ReadWritePaths=" in err, err
        # a folder to make there: said as the one it would be made in (before: "cannot create ... under ...")
        cfg.write_text(cfg.read_text().replace(str(view / "outbox.sqlite"), str(view / "state" / "outbox.sqlite")))
        rc, err = validate(cfg, capsys)
        assert rc == 2 and f"cannot write in {view / 'state'} (Read-only file system; its mount {view} is " \
            "read-only for this process, over a file system that is writable" in err, err
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)


def test_an_outbox_on_a_disk_the_kernel_made_read_only_is_refused_naming_the_cause(calibrated, tmp_path, capsys,
                                                                                  failing_disk):
    """A restart after the station's disk failed (read-only, while the mount still reads `rw`)."""
    bundle, thresholds = calibrated
    failing_disk.fail()
    cfg = agent_config(tmp_path, 1, bundle, thresholds, SRC)
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "outbox.sqlite"), str(failing_disk.mnt / "outbox.sqlite")))
    for call in (validate, run):
        rc, err = call(cfg, capsys)
        assert rc == 2 and "outbox.path" in err and "Read-only file system" in err and "dmesg" in err, err


def test_a_corrupt_outbox_is_a_warning_and_run_moves_it_aside(calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, 1, bundle, thresholds, SRC)
    (tmp_path / "outbox.sqlite").write_bytes(os.urandom(8192))
    rc, err = validate(cfg, capsys)
    assert rc == 0 and "is not a readable database" in err and "moves it aside" in err, err


def test_a_reserve_without_room_is_warned_about(calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, 1, bundle, thresholds, SRC)
    rc, err = validate(cfg, capsys)
    assert rc == 0 and "reserve" not in err, err  # 1 MB: there is room
    cfg.write_text(cfg.read_text().replace("reserve_mb = 1", "reserve_mb = 1000000"))  # a terabyte
    rc, err = validate(cfg, capsys)
    assert rc == 0 and "outbox.reserve_mb:" in err and "less than twice the reserve (1000000.0 MB)" in err, err


def test_a_password_in_the_file_or_without_tls_is_warned_about(calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    cfg = in_mqtt(agent_config(tmp_path, 1, bundle, thresholds, SRC), 'username = "u"\npassword = "pw-in-file"')
    rc, err = validate(cfg, capsys)
    assert rc == 0 and "mqtt.password is written in" in err and "pw-in-file" not in err, err
    cfg = in_mqtt(agent_config(tmp_path, 1, bundle, thresholds, SRC), 'username = "u"')
    cfg.write_text(cfg.read_text().replace('host = "127.0.0.1"', 'host = "broker.example"'))
    os.environ["ADGAN_MQTT__PASSWORD"] = "secret-env"
    try:
        rc, err = validate(cfg, capsys)
    finally:
        del os.environ["ADGAN_MQTT__PASSWORD"]
    assert rc == 0 and "without TLS" in err and "secret-env" not in err, err


def test_mqtt_3_1_1_without_the_delivery_check_is_warned_about(calibrated, tmp_path, capsys):
    bundle, thresholds = calibrated
    for text, warned in (('protocol = "3.1.1"\ncheck_delivery = false', True), ('protocol = "3.1.1"', False),
                         ('check_delivery = false', False)):  # (auto: MQTT 5 wherever the broker speaks it)
        rc, err = validate(in_mqtt(agent_config(tmp_path, 1, bundle, thresholds, SRC), text), capsys)
        assert rc == 0 and ("mqtt.check_delivery is off" in err) == warned, (text, err)


def test_an_environment_variable_that_names_no_setting_is_said(calibrated, tmp_path, capsys, monkeypatch):
    """pydantic-settings skips an ADGAN_* variable that names no setting without a word: one
    underscore short (ADGAN_MQTT_PASSWORD) left the password unset, and the broker refused the
    station. Now said by validate-config and run, with the setting it may have meant."""
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, 1, bundle, thresholds, SRC)
    monkeypatch.setenv("ADGAN_MQTT_PASSWORD", "secret")
    monkeypatch.setenv("ADGAN_VERSION", "3")
    monkeypatch.setenv("ADGAN_MQTT__KEEPALIVE_S", "30")  # (settings: read, not said)
    monkeypatch.setenv("ADGAN_MODEL__BUNDLES__SPHERE", str(bundle))  # (a table of free keys)
    rc, err = validate(cfg, capsys)
    said = [ln for ln in err.splitlines() if "environment variable" in ln]
    assert rc == 0 and len(said) == 2, err
    assert said[0].endswith("ADGAN_MQTT_PASSWORD names no setting and is not read: did you mean ADGAN_MQTT__PASSWORD?")
    assert said[1].endswith("ADGAN_VERSION names no setting and is not read (nested tables are joined by __, e.g. "
                            "ADGAN_MQTT__PORT; docs/agent-toml.md lists every setting)")


def test_a_relative_path_that_exists_only_beside_the_configuration_is_said(calibrated, tmp_path, capsys,
                                                                           monkeypatch):
    """A relative path is read from the folder the agent runs in (/ under systemd): a
    configuration tried by hand in its own folder failed under the unit as a bundle that is not
    there, naming no cause, and a relative outbox was a new, empty one (the events kept in the
    other never sent). Now the cause is said, and such an outbox refused."""
    bundle, thresholds = calibrated
    station = tmp_path / "station"
    (station / "frames").mkdir(parents=True)
    shutil.copytree(bundle, station / "bundle")
    shutil.copy(thresholds, station / "thresholds.json")
    cfg = agent_config(station, 1, "bundle", "thresholds.json", 'type = "folder"\npath = "frames"')
    cfg.write_text(cfg.read_text().replace(str(station / "outbox.sqlite"), "outbox.sqlite"))
    monkeypatch.chdir(station)  # beside its files: valid, nothing said
    rc, err = validate(cfg, capsys)
    assert rc == 0 and "relative" not in err, err
    monkeypatch.chdir(tmp_path)  # elsewhere, as under a unit
    rc, err = validate(cfg, capsys)
    said = [ln for ln in err.splitlines() if "is a relative path" in ln]
    assert rc == 2 and [ln.split(": warning: ")[1].split(":")[0] for ln in said] == \
        ["source.path", "model.bundles.sphere", "model.thresholds"], err
    assert f"read from the folder the agent runs in ({tmp_path}; a systemd unit runs it in /), where it does " \
           f"not exist; it exists beside the configuration ({station / 'bundle'}): write the whole path" in err
    assert "outbox.path" not in err  # (no outbox beside it yet: nothing would be left behind)
    (station / "outbox.sqlite").touch()
    for call in (validate, run):
        rc, err = call(cfg, capsys)
        assert rc == 2 and "outbox.path: outbox.sqlite is a relative path" in err and \
            "(the events kept in that outbox would never be sent)" in err, err
    assert not (tmp_path / "outbox.sqlite").exists()
    gone = tmp_path / "gone"  # a shell left in a folder deleted since: said, not a traceback
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    rc, err = validate(cfg, capsys)
    assert rc == 2 and "the folder the agent runs in cannot be found (No such file or directory): the relative " \
                       "paths (source.path, model.bundles.sphere, model.thresholds, outbox.path)" in err, err


def test_interfaces_with_bad_settings_exit_2_at_validate_config(calibrated, tmp_path, capsys):
    """Issue 17: a missing GPIO chip, a gpio trigger without its line, a line used twice."""
    bundle, thresholds = calibrated
    cases = [
        ('[gpio]\nenabled = true\nchip = "/dev/no-such-gpiochip"\nok_line = 1\n', "gpio.chip",
         "/dev/no-such-gpiochip is not a GPIO chip"),
        ('[gpio]\nenabled = true\nbackend = "memory"\nok_line = 1\nng_line = 1\n', "gpio",
         "each line offset may be used once"),
        ('[metrics]\nenabled = true\nport = 70000\n', "metrics.port", "less than or equal to 65535"),
        ('[opcua]\nenabled = true\n', "opcua", "Basic256Sha256 needs certificate, private_key, username"),
        ('[opcua]\nenabled = true\ncertificate = "/no/cert.der"\nprivate_key = "/no/key.pem"\nusername = "plc"\n',
         "opcua.certificate", "/no/cert.der does not exist"),
        ('[opcua]\nenabled = true\nsecurity = "None"\nusername = "plc"\n', "opcua.password",
         "user 'plc' has no password"),
    ]
    for extra, where, why in cases:
        rc, err = validate(agent_config(tmp_path, 1, bundle, thresholds, SRC, extra=extra), capsys)
        assert rc == 2 and where in err and why in err, (extra, err)
    cfg = agent_config(tmp_path, 1, bundle, thresholds, SRC, trigger="gpio")
    rc, err = validate(cfg, capsys)
    assert rc == 2 and "trigger.mode 'gpio' needs gpio.enabled = true and gpio.trigger_line" in err


def test_a_bundle_of_several_parts_per_call_is_warned_about(tiny_run, synth_data, tmp_path, capsys):
    b, th, t = tmp_path / "b4", tmp_path / "thresholds.json", synth_data / "test"
    assert main(["export", str(tiny_run), "--out", str(b), "--k", "2", "--parts-per-call", "4"]) == 0
    assert main(["calibrate", str(b), "--normal", str(t / "sphere"), "--anomalous", str(t / "cylinder"),
                 "--policy", "equal-rates", "--out", str(th), "--quiet"]) == 0
    rc, err = validate(agent_config(tmp_path, 1, b, th, SRC), capsys)
    assert rc == 0 and "scores 4 parts per call" in err, err


def test_a_client_certificate_near_or_past_its_end_date_is_warned_about(calibrated, tmp_path, capsys):
    """Warned, not refused: the station inspects and keeps its events, and loads a renewed
    certificate at its next connection attempt (agent/mqtt/tls.py)."""
    import datetime as dt
    pytest.importorskip("cryptography.x509")
    from tests.agent.pki import NOW, Pki
    bundle, thresholds = calibrated
    pki = Pki(tmp_path / "pki")
    for days, words in ((400, None), (5, "valid until"), (-1, "expired at")):
        pki.issue("station", NOW + dt.timedelta(days=days))
        cfg = in_mqtt(agent_config(tmp_path, 1, bundle, thresholds, SRC),
                      f'tls_ca = "{pki.d / "ca.crt"}"\ntls_cert = "{pki.d / "station.crt"}"\n'
                      f'tls_key = "{pki.d / "station.key"}"')
        rc, err = validate(cfg, capsys)
        assert rc == 0, err
        if words is None:
            assert "mqtt.tls_cert" not in err, err
        else:
            assert "mqtt.tls_cert" in err and words in err and "renew it" in err, err


def test_an_encrypted_client_key_is_refused_by_name_without_a_prompt(calibrated, tmp_path, capfd):
    import datetime as dt
    pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import serialization
    from tests.agent.pki import NOW, Pki
    bundle, thresholds = calibrated
    pki = Pki(tmp_path / "pki")
    key = pki.issue("station", NOW + dt.timedelta(days=30))
    (pki.d / "station.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    cfg = in_mqtt(agent_config(tmp_path, 1, bundle, thresholds, SRC),
                  f'tls_ca = "{pki.d / "ca.crt"}"\ntls_cert = "{pki.d / "station.crt"}"\n'
                  f'tls_key = "{pki.d / "station.key"}"')
    rc = main(["agent", "validate-config", "--config", str(cfg), "--env-file", "/nonexistent"])
    err = capfd.readouterr().err
    assert rc == 2 and "mqtt.tls_key" in err and "is encrypted" in err and "pass phrase" not in err, err


def test_an_outbox_held_in_memory_or_in_the_units_private_tmp_is_said(calibrated, tmp_path, capsys):
    """An outbox on a tmpfs (/tmp on many systems, /run, /dev/shm), or in the private /tmp that
    the unit's PrivateTmp=yes gives the service (removed at every stop), ran without a word and
    lost what it kept at the next restart."""
    from tests.agent.conftest import tmpfs
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, 1, bundle, thresholds, 'type = "synthetic"')
    rc, err = validate(cfg, capsys)
    assert rc == 0 and "outbox.path" not in err, err  # on a disk: nothing said
    with tmpfs(tmp_path / "ram") as ram:
        cfg.write_text(cfg.read_text().replace(str(tmp_path / "outbox.sqlite"), str(ram / "state" / "outbox.sqlite")))
        rc, err = validate(cfg, capsys)
        assert rc == 0 and f"outbox.path: {ram / 'state' / 'outbox.sqlite'} is on a tmpfs ({ram}), which lives in " \
            "memory: the events it keeps for the broker" in err, err
    # the unit's private /tmp: a bind mount of /tmp/systemd-private-<id>-adgan-agent.service-<x>/tmp
    private, seen = tmp_path / "systemd-private-0f1e-adgan-agent.service-Ab12" / "tmp", tmp_path / "private-tmp"
    private.mkdir(parents=True)
    seen.mkdir()
    if subprocess.run(["mount", "--bind", str(private), str(seen)], capture_output=True).returncode:
        pytest.skip("a bind mount needs root")
    try:
        cfg.write_text(cfg.read_text().replace(str(ram / "state" / "outbox.sqlite"), str(seen / "outbox.sqlite")))
        rc, err = validate(cfg, capsys)
        assert rc == 0 and f"is in this service's private {seen} (systemd PrivateTmp=yes), which is removed at " \
            "every stop" in err, err
        # thresholds put in /tmp for it: not in its own /tmp (before: only "does not exist")
        cfg.write_text(cfg.read_text().replace(str(thresholds), str(seen / "thresholds.json")))
        rc, err = validate(cfg, capsys)
        assert rc == 2 and f"model.thresholds: {seen / 'thresholds.json'} is in this service's private {seen} " \
            "(systemd PrivateTmp=yes): the service sees a /tmp of its own, not the one it was put in" in err, err
    finally:
        subprocess.run(["umount", "-l", str(seen)], capture_output=True)


def test_an_outbox_on_a_network_file_system_is_said(calibrated, tmp_path, capsys, monkeypatch):
    """SQLite's write-ahead log does not work over a network file system (no NFS server here: the
    mount table is what is made up)."""
    from agent import preflight
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, 1, bundle, thresholds, 'type = "synthetic"')
    monkeypatch.setattr(preflight, "mount_of", lambda p: ("/mnt/nas", "nfs4", "/exports/adgan"))
    rc, err = validate(cfg, capsys)
    assert rc == 0 and "is on a network file system (nfs4, /mnt/nas): SQLite's write-ahead log" in err, err


def test_a_disk_out_of_inodes_is_a_warning_that_names_them(calibrated, tmp_path, capsys):
    """A file system full of files, not bytes (`df -h` shows room). validate-config refused it as
    `cannot write in ... (No space left on device)`, so `run` did not start, where a disk full of
    bytes lets it run; now a warning naming the inodes, as for a disk that fills while it runs. A new
    outbox, whose files cannot be made, is refused with the same words."""
    from tests.agent.conftest import fill_inodes, tmpfs
    bundle, thresholds = calibrated
    cfg = agent_config(tmp_path, 1, bundle, thresholds, SRC)
    with tmpfs(tmp_path / "fs", size="64m", inodes=64) as fs:
        cfg.write_text(cfg.read_text().replace(str(tmp_path / "outbox.sqlite"), str(fs / "outbox.sqlite")))
        filler = fill_inodes(fs)
        for call in (validate, run):  # a new outbox: its files cannot be made, said by name
            rc, err = call(cfg, capsys)
            assert rc == 2 and f"outbox.path: {fs / 'outbox.sqlite'}: a new outbox cannot be made in {fs}, which is " \
                "full (No space left on device; no inode is free on its file system (all 64 used, `df -i`)" in err, err
        shutil.rmtree(filler)
        (fs / "outbox.sqlite").touch()  # an outbox of an earlier run (its files are there)
        (fs / "outbox.sqlite.seq").touch()
        fill_inodes(fs)
        rc, err = validate(cfg, capsys)
    assert rc == 0, err
    assert f"outbox.path: {fs} is full (No space left on device; no inode is free on its file system (all 64 " \
        "used, `df -i`): it is full of files, not bytes" in err and "the agent runs and holds" in err, err


def as_user(wrap, cfg) -> tuple[int, str]:
    """`validate-config` run as the station's own user (the unit's ExecStartPre)."""
    code = ("import sys\nfrom adgan.cli import main\n"
            f"sys.exit(main(['agent', 'validate-config', '--config', {str(cfg)!r}, '--env-file', '/nonexistent']))")
    r = subprocess.run([*wrap, sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stderr


def test_files_left_by_a_run_as_root_are_named_with_their_owner_and_the_fix(station_user, tmp_path, capsys):
    """An engineer ran the agent (or calibrate, capture-reference, an editor) by hand with sudo; the
    unit then runs it as its own user. The outbox's files, still root's, were refused as 'exists but is
    not a readable, writable file' or, with only the database given back, 'not an outbox database
    (unable to open database file)': a person would take it as corrupt and delete the events in it.
    Other files said `[Errno 13] Permission denied`, and an unreadable agent.toml was a traceback (exit
    1). Now each is named with its owner, its mode, the agent's user and the command that fixes it."""
    import sqlite3
    from tests.agent.conftest import NOBODY
    wrap, base = station_user
    state = base / "state"
    cfg = agent_config(base, 1, base / "bundle", base / "thresholds.json", SRC,
                       extra=f'[segmentation]\nreference = "{base / "ref.npz"}"\n')
    cfg.write_text(cfg.read_text().replace(str(base / "outbox.sqlite"), str(state / "outbox.sqlite")))
    cfg.chmod(0o644)
    assert main(["agent", "capture-reference", "--config", str(cfg), "--out", str(base / "ref.npz"), "--frames", "2",
                 "--env-file", "/nonexistent"]) == 0
    rc, err = as_user(wrap, cfg)
    assert rc == 0 and "warning" not in err, err
    with sqlite3.connect(state / "outbox.sqlite") as db:  # the state a run as root leaves (mode 0600, as the agent's)
        db.execute("CREATE TABLE t (x)")
    for name in ("outbox.sqlite", "outbox.sqlite.seq", "outbox.sqlite.requests"):
        (state / name).touch()
        (state / name).chmod(0o600)
    os.chown(state / "outbox.sqlite", NOBODY, NOBODY)  # (only the database given back: SQLite's words misled most)
    rc, err = as_user(wrap, cfg)
    assert rc == 2 and "not an outbox database" not in err, err
    assert (f"outbox.path: {state}: outbox.sqlite.seq, outbox.sqlite.requests (owner root (uid 0), mode 0600) cannot "
            f"be written by this agent's user, nobody (uid {NOBODY})") in err, err
    assert f"nothing in them is lost: give them to the agent's user, `chown nobody: {state}/outbox.sqlite*`" in err
    for name in ("outbox.sqlite.seq", "outbox.sqlite.requests"):
        os.chown(state / name, NOBODY, NOBODY)
    rc, err = as_user(wrap, cfg)
    assert rc == 0, err
    owned = f"(Permission denied; it is owned by root (uid 0), mode 0600, and this agent runs as nobody (uid {NOBODY}))"
    for f, said in ((base / "thresholds.json", "model.thresholds: "), (base / "bundle" / "manifest.json", ""),
                    (base / "ref.npz", "warning: segmentation.reference: "), (cfg, "")):
        f.chmod(0o600)
        rc, err = as_user(wrap, cfg)
        f.chmod(0o644)
        assert rc == (0 if "warning" in said else 2), err
        assert f"{said}{f} cannot be read by this agent's user {owned}: give it to that user (`chown nobody: {f}`" \
            in err
        assert "Traceback" not in err, err
    (base / "bundle").chmod(0o700)
    rc, err = as_user(wrap, cfg)
    (base / "bundle").chmod(0o755)
    assert rc == 2 and f"its folder {base / 'bundle'} cannot be entered; it is owned by root (uid 0), mode 0700" in err
    assert f"`chown -R nobody: {base / 'bundle'}`" in err, err
    os.chown(state, 0, 0)
    rc, err = as_user(wrap, cfg)
    assert rc == 2 and f"cannot write in {state} (Permission denied; it is owned by root (uid 0), mode 0755" in err
    assert f"`chown nobody: {state}`" in err, err


def test_a_source_or_reference_the_agents_user_cannot_read_is_named_not_a_traceback(station_user, synth_data):
    """A replay folder, a RealSense recording or the surface reference in a folder the unit's user may not
    enter (root's, mode 0700: copied there with sudo): validate-config and run ended in a traceback
    (PermissionError from the check that the path is there). Now named with the owner and the fix: the
    source refused (exit 2: nothing could be inspected), the reference a warning, as when it is unreadable."""
    wrap, base = station_user
    shut = base / "shut"
    shutil.copytree(synth_data / "test" / "sphere", shut / "sphere")
    shut.chmod(0o700)
    for src, key in ((f'type = "folder"\npath = "{shut / "sphere"}"', "source.path"),
                     (f'type = "realsense"\nrecording = "{shut / "x.db3"}"', "source.recording")):
        cfg = agent_config(base, 1, base / "bundle", base / "thresholds.json", src)
        cfg.write_text(cfg.read_text().replace(str(base / "outbox.sqlite"), str(base / "state" / "outbox.sqlite")))
        cfg.chmod(0o644)
        rc, err = as_user(wrap, cfg)
        assert rc == 2 and "Traceback" not in err, err
        assert f"{key}: {shut}/" in err and f"cannot be read by this agent's user (Permission denied): its folder " \
            f"{shut} cannot be entered; it is owned by root (uid 0), mode 0700" in err, err
    shut.chmod(0o755)
    (shut / "sphere").chmod(0o700)  # (the folder itself: seen, not listed)
    src = f'type = "folder"\npath = "{shut / "sphere"}"'
    cfg = agent_config(base, 1, base / "bundle", base / "thresholds.json", src,
                       extra=f'[segmentation]\nreference = "{shut / "sphere" / "ref.npz"}"\n')
    cfg.write_text(cfg.read_text().replace(str(base / "outbox.sqlite"), str(base / "state" / "outbox.sqlite")))
    cfg.chmod(0o644)
    rc, err = as_user(wrap, cfg)
    assert rc == 2 and "Traceback" not in err, err
    assert f"source.path: {shut / 'sphere'} cannot be read by this agent's user (Permission denied; it is owned by " \
        "root (uid 0), mode 0700" in err, err
    assert f"warning: segmentation.reference: {shut / 'sphere' / 'ref.npz'} cannot be read by this agent's user " \
        f"(Permission denied): its folder {shut / 'sphere'} cannot be entered" in err, err
    shut.chmod(0o700)  # TLS and OPC UA files there: named the same way (before: "[Errno 13] Permission denied", and
    cfg = agent_config(base, 1, base / "bundle", base / "thresholds.json", SRC,  # a traceback for OPC UA's)
                       extra=f'[opcua]\nenabled = true\ncertificate = "{shut / "cert.pem"}"\n'
                             f'private_key = "{shut / "key.pem"}"\nusername = "op"\n')
    cfg.write_text(cfg.read_text().replace(str(base / "outbox.sqlite"), str(base / "state" / "outbox.sqlite"))
                   .replace("[mqtt]\n", f'[mqtt]\ntls_ca = "{shut / "ca.pem"}"\n'))
    cfg.chmod(0o644)
    rc, err = as_user(wrap, cfg)
    assert rc == 2 and "Traceback" not in err, err
    for key, name in (("mqtt.tls_ca", "ca.pem"), ("opcua.certificate", "cert.pem"), ("opcua.private_key", "key.pem")):
        assert f"{key}: {shut / name} cannot be read by this agent's user (Permission denied): its folder {shut} " \
            "cannot be entered" in err, err
    # the outbox there (a state folder made with sudo, mode 0700): a traceback from the look for its folder
    cfg = agent_config(base, 1, base / "bundle", base / "thresholds.json", SRC)
    cfg.write_text(cfg.read_text().replace(str(base / "outbox.sqlite"), str(shut / "state" / "outbox.sqlite")))
    cfg.chmod(0o644)
    rc, err = as_user(wrap, cfg)
    assert rc == 2 and "Traceback" not in err, err
    assert f"outbox.path: {shut / 'state' / 'outbox.sqlite'}: {shut / 'state'} cannot be written by this agent's " \
        f"user (Permission denied; {shut} is owned by root (uid 0), mode 0700" in err, err
    assert f"`chown nobody: {shut}`" in err, err
    # agent.toml or its --env-file there: `run` ended in a traceback (its edit watch), validate-config said it
    shut.chmod(0o755)
    shutil.copy(cfg, shut / "agent.toml")
    (shut / "agent.env").write_text("ADGAN_STATION_ID=st1\n")
    shut.chmod(0o700)
    for args in (["--config", str(shut / "agent.toml")], ["--config", str(cfg), "--env-file", str(shut / "agent.env")]):
        r = subprocess.run([*wrap, sys.executable, "-m", "adgan", "agent", "run", *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"cannot be read by this agent's user (Permission denied): its folder {shut} cannot be entered" \
            in r.stderr, r.stderr


def test_a_folder_the_units_sandbox_hides_is_named_as_such_not_given_to_the_agents_user(station_user):
    """The unit's ProtectHome=yes mounts systemd's empty folder of mode 0000 (/run/systemd/inaccessible/dir)
    over /home, /root and /run/user. Thresholds kept in an engineer's home, or an outbox put there, were
    said as a folder "owned by root (uid 0), mode 0000: give it to that user (`chown -R adgan: /home`)",
    advice that would hand every home folder to the service. Made here as systemd makes it."""
    wrap, base = station_user
    hidden, home = base / "run" / "systemd" / "inaccessible" / "dir", base / "home"
    hidden.mkdir(parents=True)
    hidden.chmod(0)
    (home / "eng").mkdir(parents=True)
    shutil.copy(base / "thresholds.json", home / "eng" / "thresholds.json")
    if subprocess.run(["mount", "--bind", str(hidden), str(home)], capture_output=True).returncode:
        pytest.skip("a bind mount needs root")
    try:
        cfg = agent_config(base, 1, base / "bundle", home / "eng" / "thresholds.json", SRC)
        cfg.write_text(cfg.read_text().replace(str(base / "outbox.sqlite"), str(home / "eng" / "outbox.sqlite")))
        cfg.chmod(0o644)
        rc, err = as_user(wrap, cfg)
        assert rc == 2 and "Traceback" not in err and "chown" not in err, err
        said = f"{home} is hidden from this service by its unit's sandbox (systemd's ProtectHome=yes hides /home"
        assert f"model.thresholds: {home / 'eng' / 'thresholds.json'} cannot be read by this agent's user " \
            f"(Permission denied): {said}" in err, err
        assert f"outbox.path: {home / 'eng' / 'outbox.sqlite'}: {home / 'eng'} cannot be written by this agent's " \
            f"user (Permission denied): {said}" in err, err
    finally:
        subprocess.run(["umount", "-l", str(home)], capture_output=True)
    # a file hidden so (InaccessiblePaths=: systemd's empty file of mode 0000 over it)
    reg = hidden.parent / "reg"
    reg.touch()
    reg.chmod(0)
    if subprocess.run(["mount", "--bind", str(reg), str(base / "thresholds.json")], capture_output=True).returncode:
        pytest.skip("a bind mount over a file needs root")
    try:
        cfg = agent_config(base, 1, base / "bundle", base / "thresholds.json", SRC)
        cfg.write_text(cfg.read_text().replace(str(base / "outbox.sqlite"), str(base / "state" / "outbox.sqlite")))
        rc, err = as_user(wrap, cfg)
        assert rc == 2 and "chown" not in err and f"model.thresholds: {base / 'thresholds.json'} cannot be read by " \
            f"this agent's user (Permission denied): {base / 'thresholds.json'} is hidden from this service" in err, err
    finally:
        subprocess.run(["umount", "-l", str(base / "thresholds.json")], capture_output=True)


def test_root_in_a_folder_another_user_owns_is_warned_that_its_files_will_be_roots(calibrated, tmp_path, capsys):
    """The cause of the refusal above, said before it happens: an agent started by hand with sudo in
    the unit's state folder."""
    from tests.agent.conftest import NOBODY
    if os.geteuid() != 0:
        pytest.skip("needs root")
    bundle, thresholds = calibrated
    state = tmp_path / "state"
    state.mkdir()
    cfg = agent_config(tmp_path, 1, bundle, thresholds, SRC)
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "outbox.sqlite"), str(state / "outbox.sqlite")))
    rc, err = validate(cfg, capsys)
    assert rc == 0 and "runs as root" not in err, err
    os.chown(state, NOBODY, NOBODY)
    rc, err = validate(cfg, capsys)
    assert rc == 0 and f"warning: outbox.path: this agent runs as root in {state}, which nobody (uid {NOBODY}) " \
        "owns" in err and f"`chown nobody: {state / 'outbox.sqlite'}*`" in err, err
