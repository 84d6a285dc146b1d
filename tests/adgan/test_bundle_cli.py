"""`adgan bundle info`, `adgan engine build` and the help every command shows."""
from __future__ import annotations

import argparse
import json
import shutil

import pytest

from adgan.cli import build_parser, main


def _all_parsers(p: argparse.ArgumentParser, path=()):
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, child in a.choices.items():
                yield from _all_parsers(child, (*path, name))


def test_every_option_of_every_command_has_help_and_shows_its_default():
    missing = []
    for path, p in _all_parsers(build_parser()):
        fmt = p._get_formatter()
        for a in p._actions:
            if not a.option_strings or isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if not a.help:
                missing.append(f"{' '.join(path)} {a.option_strings[0]}: no help")
            elif a.default is not None and a.default is not False and "default" not in fmt._get_help_string(a).lower():
                missing.append(f"{' '.join(path)} {a.option_strings[0]}: default not shown")
    assert missing == []


def test_bundle_info_shows_the_recipe_hashes_and_calibration(bundles, tmp_path, capsys):
    b = bundles[("none", "fg")]
    assert main(["bundle", "info", str(b)]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((b / "manifest.json").read_text())
    assert "theta scope none, loss fg" in out and "engines     none" in out
    assert all(f"{name}  sha256 {d[:16]}" in out for name, d in manifest["files"].items())

    th = tmp_path / "thresholds.json"
    th.write_text(json.dumps({"format": 1, "classes": {manifest["class"]: {
        "threshold": 0.5, "bundle_hash": "0" * 64, "policy": "equal-rates", "engine": "onnxruntime/CPUExecutionProvider"}}}))
    assert main(["bundle", "info", str(b), "--thresholds", str(th), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == manifest["class"] and info["calibration"]["status"].startswith("calibrated on another")


def test_bundle_info_refuses_a_tampered_bundle(bundles, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(bundles[("none", "fg")], b)
    with open(b / "theta.npz", "ab") as fh:
        fh.write(b"x")
    assert main(["bundle", "info", str(b)]) == 2
    assert "has been modified" in capsys.readouterr().err


def test_engine_build_without_tensorrt_says_so(bundles, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the engine build is tested in tests/agent/scoring/test_tensorrt.py")
    except ImportError:
        pass
    for argv in (["engine", "build", str(bundles[("none", "fg")])], ["export", "build-engine", str(bundles[("none", "fg")])]):
        assert main(argv) == 2
        assert "TensorRT is not installed" in capsys.readouterr().err
