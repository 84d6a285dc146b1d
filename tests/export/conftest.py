import pytest
import torch

from training.model import Architecture, Generator


def random_generator(dtype=torch.float32, size=32, features_g=4, seed=0) -> Generator:
    """A small generator with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    g = Generator(Architecture(size=size, features_g=features_g)).to(dtype)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.mul_(4)  # gradients well above Adam's eps, as in a trained model
        g.net[-2].bias.uniform_(-0.5, 0.5)
    return g.eval()


@pytest.fixture
def rand_gen():
    return random_generator


def sample_x(dtype=torch.float32, size=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 4, size, size, generator=gen, dtype=dtype) * 2 - 1
    x[:, :, : size // 3] = -1  # removed background
    return x
