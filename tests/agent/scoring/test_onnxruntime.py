"""The ONNX Runtime backend keeps the search's state on the provider's device: nothing crosses
between host and device inside the k-step loop (issue 18). On this machine the device is the
CPU, through the same code path the CUDA provider takes."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from agent.scoring.backend import BackendUnavailable
from agent.scoring.bundle import Bundle
from agent.scoring.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeSettings
from agent.scoring.search import Searcher
from agent.segment.preprocess import sample_to_input
from agent.sources.dataset import read_sample


@pytest.mark.parametrize("key", [("all", "mse"), ("none", "fg")])
def test_no_host_copy_inside_the_step_loop(bundles, synth_data, key):
    b = Bundle.load(bundles[key])
    backend = OnnxRuntimeBackend(b)
    assert backend.device == "cpu" and backend.providers[0] == "CPUExecutionProvider"
    searcher = Searcher(b, backend, seed=1)
    x = sample_to_input(read_sample(synth_data / "test" / "sphere", 0), b.size)
    first = searcher.score(x)
    before = dict(backend.copies)
    # one search by hand: reset (uploads), k steps (nothing), final (two downloads)
    z0 = np.zeros((b.seeds_per_call, b.nz), np.float32)
    backend.reset(x, z0)
    after_reset = dict(backend.copies)
    assert after_reset["htod"] - before["htod"] == 3 + 3 * len(b.trainable) + 1  # x, z, moments, theta
    for t in range(1, 3 * b.search.k + 1):  # beyond the step numbers made at load, too
        backend.step(t, b.search.lr_z, b.search.lr_theta)
    after_steps = dict(backend.copies)
    backend.step(1, b.search.lr_z, b.search.lr_theta)  # step numbers are made once: no copy again
    assert dict(backend.copies) == after_steps
    assert after_steps["htod"] - after_reset["htod"] <= 2  # the learning rates, if they changed
    assert after_steps["dtoh"] == after_reset["dtoh"]
    loss, y = backend.final()
    assert backend.copies["dtoh"] - after_steps["dtoh"] == 2 and loss.shape == (b.seeds_per_call,)
    np.testing.assert_array_equal(searcher.score(x).per_seed, first.per_seed)  # the same search again


def test_providers_are_validated_with_a_clear_error(bundles):
    with pytest.raises(ValidationError, match="unknown providers \\['CUDA'\\]"):
        OnnxRuntimeSettings(providers=["CUDA"])
    with pytest.raises(ValidationError, match="at least 1 item"):
        OnnxRuntimeSettings(providers=[])
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider.*not available here.*onnxruntime-gpu"):
        OnnxRuntimeBackend(Bundle.load(bundles[("none", "fg")]),
                           OnnxRuntimeSettings(providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))


def test_graphs_this_runtime_cannot_open_are_a_bundle_error_naming_it(bundles, tmp_path):
    """A bundle exported for a newer ONNX opset than the station's ONNX Runtime knows (its hashes
    intact): ONNX Runtime raises its own Fail, not a ValueError, and the start ended with a
    traceback, said neither as a refusal nor on MQTT. It is a BundleError naming the graph."""
    import json
    import shutil

    import onnx

    from agent.scoring.bundle import BundleError, sha256_file
    src = bundles[("none", "fg")]
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    m = onnx.load(str(dst / "step.onnx"))
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 99
    onnx.save(m, str(dst / "step.onnx"))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["step.onnx"] = sha256_file(dst / "step.onnx")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"ONNX Runtime [0-9.]+ cannot open its step graph \(Fail: .*[Oo]pset"):
        OnnxRuntimeBackend(Bundle.load(dst), OnnxRuntimeSettings())
