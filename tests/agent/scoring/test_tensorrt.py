"""The TensorRT plugin. TensorRT and CUDA cannot be installed here: the buffer and iteration
logic runs against a fake engine (each engine's ONNX graph in ONNX Runtime over fake
device memory), and the real path runs only where tensorrt imports and a GPU exists."""
import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from adgan.cli import main
from agent.scoring.bundle import Bundle, BundleError
from agent.scoring.onnxruntime import OnnxRuntimeBackend
from agent.scoring.search import Searcher
from agent.scoring.tensorrt import TensorRTBackend, TensorRTUnavailable, check_version
from agent.segment.preprocess import sample_to_input
from agent.sources.dataset import read_sample

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None


class FakeCuda:
    """Device memory as numpy byte arrays at made-up addresses; counts every copy."""

    def __init__(self):
        self.mem, self.next, self.copies = {}, 1 << 20, {"htod": 0, "dtoh": 0, "dtod": 0}

    def describe(self):
        return {"gpu": "fake", "compute_capability": "0.0", "cuda_driver": 0}

    def alloc(self, nbytes):
        addr = self.next  # cudaMalloc's alignment: 256 bytes
        self.mem[addr] = np.zeros(nbytes, np.uint8)
        self.next = (self.next + nbytes + 511) // 256 * 256
        return addr

    def view(self, addr, nbytes):
        for base, buf in self.mem.items():
            if base <= addr and addr + nbytes <= base + len(buf):
                return buf[addr - base: addr - base + nbytes]
        raise AssertionError(f"bad device address {addr}")

    def htod(self, dst, src):
        src = np.ascontiguousarray(src)
        self.view(dst, src.nbytes)[:] = src.view(np.uint8).reshape(-1)
        self.copies["htod"] += 1

    def dtoh(self, dst, src):
        dst.view(np.uint8).reshape(-1)[:] = self.view(src, dst.nbytes)
        self.copies["dtoh"] += 1

    def dtod(self, dst, src, nbytes):
        self.view(dst, nbytes)[:] = self.view(src, nbytes)
        self.copies["dtod"] += 1

    def zero(self, dst, nbytes):
        self.view(dst, nbytes)[:] = 0

    stream_handle = 0

    def sync(self):
        pass

    def close(self):
        pass


class Named:
    """A TensorRT enum value: the backend compares them by name."""

    def __init__(self, name):
        self.name = name


class FakeEngine:
    """The engine's tensor API (TensorRT 10: names, modes, shapes, dtypes) over the graph's ONNX."""

    def __init__(self, path, cuda, rename=None):
        self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.cuda = cuda
        self.tensors = {}
        for mode, items in (("INPUT", self.sess.get_inputs()), ("OUTPUT", self.sess.get_outputs())):
            for t in items:
                self.tensors[(rename or {}).get(t.name, t.name)] = (mode, tuple(t.shape), "FLOAT")

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return Named(self.tensors[name][0])

    def get_tensor_shape(self, name):
        return self.tensors[name][1]

    def get_tensor_dtype(self, name):
        return Named(self.tensors[name][2])

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine):
        self.e, self.addr, self.runs = engine, {}, 0

    def set_tensor_address(self, name, addr):
        """Refused like TensorRT: an unknown tensor, or an address not aligned to 256 bytes."""
        if name not in self.e.tensors or addr % 256:
            return False
        self.addr[name] = addr
        return True

    def execute_async_v3(self, stream):
        missing = set(self.e.tensors) - set(self.addr)
        assert not missing, f"tensors without an address: {missing}"
        io = self.e.sess
        feed = {}
        for i in io.get_inputs():
            shape = [d for d in i.shape]
            n = int(np.prod(shape)) if shape else 1
            feed[i.name] = self.e.cuda.view(self.addr[i.name], 4 * n).view(np.float32).reshape(shape).copy()
        outs = io.run(None, feed)
        for o, val in zip(io.get_outputs(), outs):
            self.e.cuda.view(self.addr[o.name], val.nbytes)[:] = np.ascontiguousarray(val).view(np.uint8).reshape(-1)
        self.runs += 1
        return True


def fake_loader(bundle, fp16, cuda):
    return None, None, {r: FakeEngine(bundle.graph_path(r), cuda) for r in ("step", "loss")}, {"tensorrt": "fake"}


def test_tensorrt_plugin_buffers_and_iteration_with_a_fake_engine(bundles, synth_data):
    b = Bundle.load(bundles[("all", "mse")])
    cuda = FakeCuda()
    trt_backend = TensorRTBackend(b, cuda=cuda, loader=fake_loader)
    xs = [sample_to_input(read_sample(synth_data / "test" / c, 0), 32) for c in ("sphere", "cylinder")]
    ref = Searcher(b, OnnxRuntimeBackend(b), seed=4)
    got = Searcher(b, trt_backend, seed=4)
    before = dict(cuda.copies)
    for x in xs:
        np.testing.assert_array_equal(got.score(x).per_seed, ref.score(x).per_seed)
    # per sample: x and z up, theta copied on the device, loss and G(z) down; nothing per step
    per_sample = {k: (cuda.copies[k] - before[k]) / len(xs) for k in before}
    assert per_sample["htod"] <= 2 + 2 / len(xs)  # + the learning rates, once
    assert per_sample["dtoh"] == 2 and per_sample["dtod"] == len(b.trainable)
    assert trt_backend.versions["tensorrt"] == "fake"
    # the two step contexts (A -> B, B -> A) alternate: odd steps on one, even on the other
    k = b.search.k
    assert [c.runs for c in trt_backend.step_ctx] == [len(xs) * ((k + 1) // 2), len(xs) * (k // 2)]


def test_the_fake_engine_is_strict_and_the_backend_checks_the_engines_tensors(bundles):
    """What the fake can catch of the desk review (issue 18): misaligned tensor addresses (the
    step table was 4 bytes a step), and engines whose tensors are not the bundle's."""
    b = Bundle.load(bundles[("all", "mse")])
    cuda = FakeCuda()
    ctx = FakeEngine(b.graph_path("step"), cuda).create_execution_context()
    assert not ctx.set_tensor_address("t", cuda.alloc(4000) + 4)  # 4-byte steps are refused
    assert not ctx.set_tensor_address("no-such-tensor", cuda.alloc(4))

    def renamed(bundle, fp16, cuda):
        engines = {r: FakeEngine(bundle.graph_path(r), cuda, rename={"z": "latent"} if r == "step" else None)
                   for r in ("step", "loss")}
        return None, None, engines, {"tensorrt": "fake"}
    with pytest.raises(BundleError, match="step engine does not match the bundle.*z: the engine has no such tensor"):
        TensorRTBackend(b, cuda=FakeCuda(), loader=renamed)


def test_tensorrt_before_10_is_refused_with_the_jetpack_it_needs():
    check_version("10.3.0.30")
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT 8.6.2 is too old: .*TensorRT 10 .*JetPack 6.1"):
        check_version("8.6.2")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_clear_error_not_a_traceback(bundles, synth_data, tmp_path, capsys):
    with pytest.raises(TensorRTUnavailable, match="JetPack"):
        TensorRTBackend(Bundle.load(bundles[("all", "mse")]))
    rc = main(["score", str(bundles[("all", "mse")]), str(synth_data / "test" / "sphere"), "--backend", "tensorrt",
               "--out", str(tmp_path / "s.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "TensorRT is not installed" in err and "Traceback" not in err
    assert main(["export", "build-engine", str(bundles[("all", "mse")])]) == 2


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT, pycuda and an NVIDIA GPU (a Jetson)")
def test_tensorrt_engine_scores_like_onnxruntime(bundles, synth_data, tmp_path):
    import shutil
    from agent.scoring.tensorrt import build_engine
    p = tmp_path / "b"
    shutil.copytree(bundles[("all", "mse")], p)
    build_engine(p)
    b = Bundle.load(p)
    x = sample_to_input(read_sample(synth_data / "test" / "sphere", 0), 32)
    got = Searcher(b, TensorRTBackend(b), seed=1).score(x)
    ref = Searcher(b, OnnxRuntimeBackend(b), seed=1).score(x)
    assert abs(got.score / ref.score - 1) < 1e-3


def test_an_engine_tensorrt_cannot_load_or_run_refuses_the_start_in_one_line(bundles, tmp_path, monkeypatch):
    """An engine file TensorRT cannot deserialise (its hash intact: another TensorRT build) is a
    BundleError that says how to rebuild it; an execution context not made (the GPU's memory held
    by another process) is the engine failing to start. Both ended `adgan agent run` with a
    traceback (RuntimeError). TensorRT is faked: it cannot be installed here."""
    import json
    import shutil
    import types

    from agent.scoring import tensorrt as plugin
    from agent.scoring.backend import BackendUnavailable, open_backend
    from agent.scoring.bundle import sha256_file
    from agent.scoring.tensorrt import TensorRTSettings

    p = tmp_path / "b"
    shutil.copytree(bundles[("all", "mse")], p)
    b = Bundle.load(p)
    cuda = FakeCuda()
    (p / "engines").mkdir()
    engines = {}
    for role in ("step", "loss"):
        (p / "engines" / f"{role}.plan").write_bytes(b"not a plan " + role.encode())
        engines[role] = {"file": f"{role}.plan", "sha256": sha256_file(p / "engines" / f"{role}.plan")}
    (p / "engines" / "fake-trt10.3.0-fp32.json").write_text(json.dumps({"bundle_hash": b.bundle_hash,
                                                                        "engines": engines}))

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return None

    logger = type("Logger", (), {"WARNING": 0, "__init__": lambda self, level: None})
    trt = types.SimpleNamespace(__version__="10.3.0", Logger=logger, Runtime=Runtime)
    monkeypatch.setattr(plugin, "_import_trt", lambda: trt)
    with pytest.raises(BundleError, match=r"TensorRT 10.3.0 could not load .*step.plan .*adgan export build-engine"):
        plugin._load_engines(b, False, cuda)

    def no_context(bundle, fp16, cuda):
        trt_, rt, eng, meta = fake_loader(bundle, fp16, cuda)
        eng["loss"].create_execution_context = lambda: None
        return trt_, rt, eng, meta

    monkeypatch.setattr(plugin, "_load_engines", no_context)
    monkeypatch.setattr(plugin, "CudaDevice", lambda device: FakeCuda())
    with pytest.raises(BackendUnavailable, match=r"the tensorrt engine could not start: RuntimeError: TensorRT "
                                                 r"could not create an execution context \(out of GPU memory\?\)"):
        open_backend(b, TensorRTSettings())


def test_an_engine_tensorrt_cannot_build_is_said_in_one_line_and_the_earlier_engines_stay(bundles, tmp_path,
                                                                                          monkeypatch, capsys):
    """`adgan export build-engine` ended in a traceback when TensorRT could not parse or build a graph
    (RuntimeError), and its bindings' own errors; a step engine built before a failing loss engine
    replaced the earlier build's. TensorRT is faked: it cannot be installed here."""
    import shutil
    import types

    from agent.scoring import tensorrt as plugin

    p = tmp_path / "b"
    shutil.copytree(bundles[("all", "mse")], p)
    (p / "engines").mkdir()
    earlier = {"fake-trt10.3.0-fp32-step.plan": b"earlier step", "fake-trt10.3.0-fp32-loss.plan": b"earlier loss",
               "fake-trt10.3.0-fp32.json": b"{}"}
    for name, data in earlier.items():
        (p / "engines" / name).write_bytes(data)
    how = {}  # role -> how its build fails: "parse", "none", "raise"; absent: built

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return types.SimpleNamespace(num_layers=0)

        def create_builder_config(self):
            return types.SimpleNamespace(set_memory_pool_limit=lambda *a: None, clear_flag=lambda f: None)

        def build_serialized_network(self, network, config):
            if how.get(network.role) == "raise":
                raise TypeError("build_serialized_network(): incompatible function arguments")
            return None if how.get(network.role) == "none" else f"plan of {network.role}".encode()

    class OnnxParser:
        num_errors = 1

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.role = Path(path).stem
            return how.get(self.network.role) != "parse"

        def get_error(self, i):
            return "In node 3 (Einsum): unsupported"

    logger = type("Logger", (), {"WARNING": 0, "__init__": lambda self, level: None})
    trt = types.SimpleNamespace(__version__="10.3.0", Logger=logger, Builder=Builder, OnnxParser=OnnxParser,
                                MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
                                BuilderFlag=types.SimpleNamespace(TF32=0))
    monkeypatch.setattr(plugin, "_import_trt", lambda: trt)
    monkeypatch.setattr(plugin, "CudaDevice", lambda device: FakeCuda())
    for role, failure, said in (("loss", "none", "TensorRT failed to build the loss engine of"),
                                ("loss", "parse", "TensorRT could not parse"),
                                ("loss", "raise", "failed while building the loss engine of"),
                                ("step", "raise", "TypeError: build_serialized_network(): incompatible")):
        how.clear()
        how[role] = failure
        capsys.readouterr()
        assert main(["export", "build-engine", str(p)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("adgan export: error: ") and said in err, err
        assert {f.name: f.read_bytes() for f in (p / "engines").iterdir()} == earlier  # as they were
    how.clear()  # and a build that works replaces them
    assert main(["export", "build-engine", str(p)]) == 0
    assert (p / "engines" / "fake-trt10.3.0-fp32-loss.plan").read_bytes() == b"plan of loss"
