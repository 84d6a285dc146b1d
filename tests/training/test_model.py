import pytest
import torch
from torch import nn

from training.model import KINDS, Architecture, Discriminator, Generator


@pytest.mark.parametrize("size, g_mults", [(32, [16, 8, 4]), (64, [16, 8, 4, 2]), (128, [16, 8, 4, 2, 1])])
def test_generator_layer_shapes(size, g_mults):
    arch = Architecture(size=size, features_g=3, features_d=2)
    g = Generator(arch)
    x = torch.randn(2, 100)
    shapes = []
    h = x.reshape(2, 100, 1, 1)
    for m in g.net:
        h = m(h)
        if isinstance(m, nn.ConvTranspose2d):
            shapes.append(tuple(h.shape[1:]))
    want = [(3 * m, 4 * 2**i, 4 * 2**i) for i, m in enumerate(g_mults)] + [(4, size, size)]
    assert shapes == want
    out = g(x)
    assert out.shape == (2, 4, size, size) and out.abs().max() <= 1


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("kind", KINDS)
def test_discriminator_layer_shapes_and_norms(size, kind):
    arch = Architecture(size=size, features_g=2, features_d=3, kind=kind)
    d = Discriminator(arch)
    h = torch.randn(2, 4, size, size)
    sizes = []
    for m in d.net:
        h = m(h)
        if isinstance(m, nn.Conv2d):
            sizes.append(h.shape[-1])
    assert sizes[-2] == 4 and sizes[-1] == 1 and h.shape[1] == 1
    assert d(torch.randn(5, 4, size, size)).shape == (5,)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert has_bn is (kind != "wgan-gp")  # per-sample gradient penalty needs a critic without BatchNorm
    assert not any(isinstance(m, nn.Sigmoid) for m in d.modules())


def test_dcgan_init():
    torch.manual_seed(0)
    g = Generator(Architecture(size=32, features_g=16))
    w = g.net[0].weight
    assert abs(w.mean().item()) < 2e-3 and w.std().item() == pytest.approx(0.02, rel=0.05)
    bn = g.net[1]
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.01) and bn.bias.abs().max() == 0


def test_architecture_validation_and_roundtrip():
    a = Architecture(size=32, features_g=8, kind="wgan")
    assert Architecture.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="size"):
        Architecture(size=48)
    with pytest.raises(ValueError, match="kind"):
        Architecture(kind="vae")
    with pytest.raises(ValueError, match="unknown"):
        Architecture.from_dict({"size": 32, "depth": 3})


def test_output_bias_starts_generator_at_the_data_level():
    g = Generator(Architecture(size=32, features_g=4)).eval()
    mean = torch.tensor([-0.9, -0.5, 0.0, 0.3])
    g.init_output_bias(mean)
    with torch.no_grad():
        out = g(torch.randn(8, 100)).mean(dim=(0, 2, 3))
    assert torch.allclose(out, mean, atol=0.05)
