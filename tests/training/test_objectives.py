import pytest
import torch
from torch import nn

from training.objectives import d_loss, g_loss, gradient_penalty


class Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.tensor(w)

    def forward(self, x):
        return (x.reshape(x.shape[0], -1) * self.w).sum(1)


class HalfSquare(nn.Module):
    def forward(self, x):
        return 0.5 * (x.reshape(x.shape[0], -1) ** 2).sum(1)


def test_gradient_penalty_of_a_linear_critic_is_its_weight_norm():
    # grad of w.x is w everywhere: penalty (||(3, 4)|| - 1)^2 = 16 whatever the samples
    real, fake = torch.randn(3, 2), torch.randn(3, 2)
    assert gradient_penalty(Linear([3.0, 4.0]), real, fake).item() == pytest.approx(16.0)


def test_gradient_penalty_hand_computed_on_interpolates():
    # grad of ||x||^2 / 2 is x_hat = eps * real + (1 - eps) * fake
    real = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    fake = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    eps = torch.tensor([0.5, 0.5])
    # sample 1: x_hat (1.5, 2), norm 2.5 -> 2.25; sample 2: (0, 0.5) -> 0.25; mean 1.25
    gp = gradient_penalty(HalfSquare(), real, fake, eps)
    assert gp.item() == pytest.approx(1.25)
    # eps = 1 picks the real samples: norms 5 and 0 -> (16 + 1) / 2
    assert gradient_penalty(HalfSquare(), real, fake, torch.ones(2)).item() == pytest.approx(8.5)


def test_gradient_penalty_trains_the_critic():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
    crit = lambda x: lin(x).reshape(-1)  # noqa: E731
    gp = gradient_penalty(crit, torch.randn(4, 2), torch.randn(4, 2))
    gp.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = 2 * 4 * (0.6, 0.8)
    assert torch.allclose(lin.weight.grad, torch.tensor([[4.8, 6.4]]))


def test_gradient_penalty_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="differ"):
        gradient_penalty(HalfSquare(), torch.zeros(2, 3), torch.zeros(3, 3))


def test_losses_hand_computed():
    zero = torch.zeros(2)
    ln2 = torch.log(torch.tensor(2.0)).item()
    assert d_loss("gan", zero, zero).item() == pytest.approx(2 * ln2)
    assert g_loss("gan", zero).item() == pytest.approx(ln2)
    assert d_loss("wgan", torch.tensor([3.0, 1.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(-1.5)
    assert g_loss("wgan-gp", torch.tensor([2.0, 4.0])).item() == pytest.approx(-3.0)
