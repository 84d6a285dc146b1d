"""adgan/synth.py's pool workers die when the pool ends them, whatever signal handlers the process
that forked them had: an agent run in the same process (its stop request on SIGTERM) left a worker
alive at the end of `with Pool`, and the parent waited for it for ever (the demo's test, CI,
2026-12-06)."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal

import pytest

from adgan.synth import _SynthWorker
from agent.segment.preprocess import Preprocessing


def _child(q) -> None:
    _SynthWorker.init_forked(1, 64, 48, Preprocessing(size=32))
    q.put((signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGHUP) is signal.SIG_DFL,
           signal.getsignal(signal.SIGINT) is signal.SIG_IGN))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked workers only")
def test_a_forked_worker_dies_on_sigterm_whatever_its_parent_installed():
    def stop_request(*_):  # what `adgan agent run` installs: a request, not an end
        pass

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop_request)  # (the conftest's autouse fixture puts them back)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    try:
        assert q.get(timeout=60) == (True, True, True)
    finally:
        p.join(30)
    assert p.exitcode == 0
