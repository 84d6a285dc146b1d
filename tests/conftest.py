"""Shared fixtures: the paper's real captures and small synthetic datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPER_DATA = Path(os.environ.get("ADGAN_PAPER_DATA", ROOT.parent / "shared" / "data" / "paper-rgbd"))


@pytest.fixture(autouse=True)
def signal_handlers():
    """Each test leaves SIGTERM, SIGINT and SIGHUP as it found them: `adgan agent run` called in the
    test process installs its agent's stop request for them, and a later test's forked workers
    inherited that (adgan/synth.py)."""
    import signal
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in sigs}
    yield
    for s, h in saved.items():
        if h is not None and signal.getsignal(s) is not h:  # (None: a handler set outside Python, kept)
            signal.signal(s, h)


@pytest.fixture(scope="session")
def paper_data() -> Path:
    if not (PAPER_DATA / "rectangle" / "rgb").is_dir():
        pytest.skip(f"paper data not found at {PAPER_DATA} (set ADGAN_PAPER_DATA)")
    return PAPER_DATA


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the paper's layout: 6 train / 3 test / 3 defective per class."""
    from adgan.synth import synth_dataset
    from agent.segment.preprocess import Preprocessing

    out = tmp_path_factory.mktemp("synth")
    synth_dataset(out, ("rectangle", "cylinder", "sphere"), 6, 3, seed=5,
                  prep=Preprocessing(size=32), defects=("dent", "chunk", "foreign"), workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(synth_data, tmp_path_factory):
    """A tiny trained generator (32 px, features 4) on the synthetic spheres, on their whole frame
    (the samples as stored: tests feed them to its bundles directly)."""
    from adgan.cli import main
    out = tmp_path_factory.mktemp("run")
    assert main(["train", str(synth_data / "train"), "--class", "sphere", "--kind", "gan", "--size", "32",
                 "--features-g", "4", "--features-d", "4", "--batch-size", "6", "--epochs", "3", "--out", str(out),
                 "--quiet", "--encoder-epochs", "0", "--framing", "frame"]) == 0
    return out


@pytest.fixture(scope="session")
def encoded_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with an encoder (3 epochs, features 4): searches start at E(x)."""
    import shutil

    from adgan.cli import main
    run = tmp_path_factory.mktemp("encrun") / "run"
    shutil.copytree(tiny_run, run)
    assert main(["train-encoder", str(run), "--epochs", "3", "--features", "4", "--quiet"]) == 0
    return run


@pytest.fixture(scope="session")
def bundles(tiny_run, tmp_path_factory):
    """Bundles of the tiny run: {(scope, loss): path}."""
    from agent.scoring.bundle import SearchDefaults
    from export.bundle import write_bundle
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for scope, loss in (("all", "mse"), ("all", "fg"), ("bn", "mse"), ("none", "fg")):
        p = root / f"{scope}-{loss}"
        write_bundle(tiny_run, p, SearchDefaults(theta_scope=scope, loss=loss, k=5, lr_theta=1e-4))
        out[(scope, loss)] = p
    return out
