"""The expected class across restarts (agent/decide/expected.py): a class/set switch is stored
beside the outbox and expected again at the next start, unless agent.toml changed since."""
from __future__ import annotations

import json
import logging

from agent.decide.expected import ExpectedClass, record_path, start_words
from agent.mqtt.outbox import Outbox
from tests.agent.conftest import fill_file_system

KNOWN = ("cylinder", "rectangle", "sphere")


def made(tmp_path, configured="sphere", known=KNOWN):
    refused = []
    return ExpectedClass(configured, known, tmp_path / "outbox.sqlite", lambda: refused.append(1) or len(refused)), \
        refused


def test_a_switch_is_stored_and_expected_after_a_restart(tmp_path):
    ec, _ = made(tmp_path)
    assert ec.name == "sphere" and ec.status() is None
    assert ec.apply(b" cylinder\n") is True and ec.name == "cylinder"
    rec = json.loads(record_path(tmp_path / "outbox.sqlite").read_text())
    assert (rec["class"], rec["configured"]) == ("cylinder", "sphere") and rec["at"].endswith("Z")
    again, _ = made(tmp_path)  # a restart
    assert again.name == "cylinder" and again.status()["at"] == rec["at"] and again.status()["stored"]
    assert again.apply(b"sphere") is True  # back to the configured class: the start expects it too
    assert made(tmp_path)[0].name == "sphere" and made(tmp_path)[0].status() is None


def test_an_unknown_or_same_class_changes_nothing_and_refusals_are_counted(tmp_path, caplog):
    ec, refused = made(tmp_path)
    with caplog.at_level(logging.WARNING):
        for bad in (b"banana", b"\xff\xfe", b"cylinder/x"):
            assert ec.apply(bad) is False and ec.name == "sphere"
    assert len(refused) == 3 and caplog.text.count("refused: no bundle") == 1  # one line per 10 s
    assert ec.apply(b"sphere") is False
    assert not record_path(tmp_path / "outbox.sqlite").exists()


def test_agent_toml_changed_since_the_switch_is_the_newer_word(tmp_path, caplog):
    ec, _ = made(tmp_path)
    ec.apply(b"cylinder")
    with caplog.at_level(logging.INFO):
        later, _ = made(tmp_path, configured="rectangle")
    assert later.name == "rectangle" and "no longer sphere as when class/set chose cylinder" in caplog.text
    assert not record_path(tmp_path / "outbox.sqlite").exists()  # removed: agent.toml set back to sphere
    # does not bring the old switch back
    assert made(tmp_path)[0].name == "sphere"


def test_a_stored_class_without_a_bundle_or_a_damaged_record_falls_back_and_is_said(tmp_path, caplog):
    ec, _ = made(tmp_path)
    ec.apply(b"cylinder")
    with caplog.at_level(logging.WARNING):
        assert made(tmp_path, known=("sphere", "rectangle"))[0].name == "sphere"
    assert "has no bundle now" in caplog.text
    path = record_path(tmp_path / "outbox.sqlite")
    for junk in (b"", b"\x00" * 10, b'{"class": 3, "configured": "sphere"}', b"[" * 100000, b"\xff\xfe{",
                 json.dumps({"class": "cylinder", "configured": "sphere", "pad": "x" * 5000}).encode()):
        path.write_bytes(junk)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert made(tmp_path)[0].name == "sphere"
        assert "cannot be read" in caplog.text, junk[:20]


def test_a_switch_that_cannot_be_stored_applies_and_is_said(tmp_path, caplog):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state folder should be")
    ec = ExpectedClass("sphere", KNOWN, blocker / "outbox.sqlite", lambda: 0)
    with caplog.at_level(logging.ERROR):
        assert ec.apply(b"cylinder") is True and ec.name == "cylinder"
    st = ec.status()
    assert st["stored"] is False and st["error"] and "after a restart the station would expect" in caplog.text


def test_a_switch_that_meets_a_full_disk_is_stored_in_the_outboxs_reserve(small_fs, caplog):
    """Before, it applied and was said, but a restart (a kill, the watchdog) went back to agent.toml's
    class while the PLC had switched it; now it releases the outbox's reserve, as an event does."""
    box = Outbox(small_fs / "outbox.sqlite", reserve_bytes=256_000)
    ec = ExpectedClass("sphere", KNOWN, small_fs / "outbox.sqlite", lambda: 0)
    ec.reserve = box.reserve
    filler = fill_file_system(small_fs)
    with caplog.at_level(logging.ERROR):
        assert ec.apply(b"cylinder") is True
    assert ec.status()["stored"] and box.reserve.status()["released"] == 1
    assert "so the class switch is kept on disk" in caplog.text
    assert ExpectedClass("sphere", KNOWN, small_fs / "outbox.sqlite", lambda: 0).name == "cylinder"  # a restart
    filler.unlink()
    box.close()


def test_validate_config_says_what_a_start_would_expect_and_changes_nothing(tmp_path):
    outbox = tmp_path / "outbox.sqlite"
    assert start_words(outbox, "sphere", KNOWN) == ""
    ec, _ = made(tmp_path)
    ec.apply(b"cylinder")
    assert start_words(outbox, "sphere", KNOWN).startswith("expecting cylinder, as class/set chose it at ")
    assert "the file is the newer word" in start_words(outbox, "rectangle", KNOWN)
    assert record_path(outbox).exists()  # (a start removes the stale record; a check does not)
