import numpy as np
"""The explicit backward and fused Adam against PyTorch autograd and torch.optim.Adam."""
import copy

import pytest
import torch

from export.graphs import SearchStep, theta_names
from export.autograd import score
from training.losses import reconstruction_loss
from tests.export.conftest import random_generator, sample_x

CASES = ([(s, l, 1.0, 1) for s in ("all", "bn", "none") for l in ("mse", "fg")]
         + [("none", "fg_input", 1.0, 1), ("all", "fg_input", 1.0, 1)]
         + [("all", "mse", 3.0, 1), ("bn", "fg", 0.5, 1), ("none", "fg_input", 3.0, 1), ("all", "fg_input", 3.0, 1)]
         + [("none", "fg_input", 1.0, 8), ("all", "fg_input", 3.0, 4), ("bn", "fg", 1.0, 2), ("all", "mse", 1.0, 4)])


def autograd_grads(g, x, z, loss, dw=1.0, pool=1):
    """Per seed: (loss, dz, {theta name: grad}) by autograd on a private copy."""
    out = []
    for s in range(z.shape[0]):
        gs = copy.deepcopy(g)
        zz = z[s:s + 1].clone().requires_grad_(True)
        l = reconstruction_loss(gs(zz), x, loss, depth_weight=dw, pool=pool).sum()
        l.backward()
        mods, grads, i, j = list(gs.net), {}, 0, 0
        while j < len(mods):
            grads[f"w{i}"] = mods[j].weight.grad
            if j + 1 < len(mods) and isinstance(mods[j + 1], torch.nn.BatchNorm2d):
                grads[f"gamma{i}"], grads[f"beta{i}"] = mods[j + 1].weight.grad, mods[j + 1].bias.grad
                j += 3
            else:
                grads[f"bias{i}"] = mods[j].bias.grad
                j += 2
            i += 1
        out.append((l.item(), zz.grad[0], grads))
    return out


def max_rel_err(core, g, x, z, scope, loss, dw=1.0, pool=1):
    theta = dict(zip(core.trainable, core.init_theta(g)))
    l, grads, dz = core.forward_backward(x, z, theta)
    worst = 0.0
    for s, (ls, dzs, gs) in enumerate(autograd_grads(g, x, z, loss, dw, pool)):
        worst = max(worst, abs(l[s].item() - ls) / abs(ls), ((dz[s] - dzs).norm() / dzs.norm()).item())
        for n in core.trainable:
            mine = grads[n].reshape(z.shape[0], -1, *grads[n].shape[1:])[s] if scope == "all" and n[0] == "w" else grads[n][s]
            ref = gs[n].reshape(mine.shape)
            worst = max(worst, ((mine - ref).norm() / ref.norm()).item())
    return worst


@pytest.mark.parametrize("scope, loss, dw, pool", CASES)
def test_gradients_match_autograd_float64(scope, loss, dw, pool):
    g = random_generator(torch.float64)
    core = SearchStep(g, 3, scope, loss, depth_weight=dw, pool=pool).to(torch.float64)
    z = torch.randn(3, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert max_rel_err(core, g, sample_x(torch.float64), z, scope, loss, dw, pool) < 1e-10


@pytest.mark.parametrize("scope, loss, dw, pool", CASES)
def test_gradients_match_autograd_float32(scope, loss, dw, pool):
    # Below 1e-5 except where a ReLU input sits within rounding of 0: there the two
    # computations may take different sides of the kink. These seeds have none.
    g = random_generator(torch.float32)
    core = SearchStep(g, 3, scope, loss, depth_weight=dw, pool=pool)
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    assert max_rel_err(core, g, sample_x(), z, scope, loss, dw, pool) < 1e-5


COLOUR_CASES = [("colour", "fg_input", 1.0, 1), ("colour", "fg", 10.0, 1), ("colour", "fg_input", 1.0, 4),
                ("colour", "mse", 3.0, 2)]


@pytest.mark.parametrize("scope, loss, dw, pool", COLOUR_CASES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_colour_layers_gradients_match_autograd(scope, loss, dw, pool, dtype, tol):
    """Theta scope colour: G's weights frozen, a colour layer after G adapts. Checked away from
    the identity (a transposed matrix would pass there) and with the loss scale of bundles."""
    from training.model import apply_colour
    g = random_generator(dtype)
    x, z = sample_x(dtype), torch.randn(3, 100, dtype=dtype, generator=torch.Generator().manual_seed(2))
    core = SearchStep(g, 3, scope, loss, depth_weight=dw, pool=pool, loss_scale=4096.0).to(dtype)
    assert core.trainable == ["colour"]
    c = core.init_theta(g)[0].to(dtype) + 0.2 * torch.randn(3, 12, dtype=dtype, generator=torch.Generator().manual_seed(4))
    l, grads, dz = core.forward_backward(x, z, {"colour": c})
    for s in range(3):
        zz, cc = z[s:s + 1].clone().requires_grad_(True), c[s:s + 1].clone().requires_grad_(True)
        ref = reconstruction_loss(apply_colour(g(zz), cc), x, loss, depth_weight=dw, pool=pool).sum()
        ref.backward()
        assert abs(l[s].item() - ref.item()) / abs(ref.item()) < tol
        assert ((dz[s] / 4096.0 - zz.grad[0]).norm() / zz.grad.norm()).item() < tol
        assert ((grads["colour"][s] / 4096.0 - cc.grad[0]).norm() / cc.grad.norm()).item() < tol
    assert grads["colour"].shape == (3, 12)


@pytest.mark.parametrize("scope, loss, dw, pool", CASES + COLOUR_CASES)
def test_k_steps_match_torch_optim_adam_float64(scope, loss, dw, pool):
    g = random_generator(torch.float64)
    x, S, k, lr_theta = sample_x(torch.float64), 3, 7, 1e-3  # lr_theta large enough to move theta
    z = torch.randn(S, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    core = SearchStep(g, S, scope, loss, depth_weight=dw, pool=pool).to(torch.float64)
    th = core.init_theta(g)
    st = [z, torch.zeros_like(z), torch.zeros_like(z), *th, *[torch.zeros_like(t) for t in th],
          *[torch.zeros_like(t) for t in th]]
    one = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for t in range(1, k + 1):
        st = list(core.step(x, one(float(t)), one(5e-2), one(lr_theta), *st)[1:])
    n = len(core.trainable)
    final = core.loss(x, st[0], *st[3:3 + n])
    _, per = score(g, x, z, k, 5e-2, lr_theta, scope, loss, depth_weight=dw, pool=pool)
    assert ((final - torch.tensor(per, dtype=torch.float64)).abs() / final.abs()).max() < 1e-10


@pytest.mark.parametrize("loss", ["mse", "fg_input"])
def test_depth_weight_scales_the_depth_error_as_documented(loss):
    # weights (1, 1, 1, w) scaled to mean 1: with w = 3 depth counts 4 * 3 / 6 = 2, RGB 4 / 6
    x = -torch.ones(1, 4, 8, 8)
    x[:, :, 2:6, 2:6] = 0.0  # a 4x4 part
    only_depth, only_rgb = x.clone(), x.clone()
    only_depth[:, 3, 2:6, 2:6] += 0.5
    only_rgb[:, 0, 2:6, 2:6] += 0.5
    for y, factor in ((only_depth, 2.0), (only_rgb, 4 / 6)):
        plain = reconstruction_loss(y, x, loss)
        assert torch.allclose(reconstruction_loss(y, x, loss, depth_weight=3.0), plain * factor)
    with pytest.raises(ValueError, match="depth_weight"):
        reconstruction_loss(x, x, loss, depth_weight=0.0)


def test_scopes_train_what_they_say():
    g = random_generator()
    names = theta_names(g.arch)
    assert SearchStep(g, 2, "all").trainable == names
    assert SearchStep(g, 2, "bn").trainable == [n for n in names if n.startswith(("gamma", "beta"))]
    assert SearchStep(g, 2, "none").trainable == []
    assert SearchStep(g, 2, "colour").trainable == ["colour"]
    # the CLI's own copies (it reads the command line without importing torch) stay the bundle's
    import export.cli
    from adgan.cli import build_parser
    from agent.scoring.bundle import THETA_SCOPES
    from training.model import COLOUR
    assert export.cli.COLOUR == COLOUR
    for scope in THETA_SCOPES:
        assert build_parser().parse_args(["export", "RUN", "--out", "B", "--theta-scope", scope]).theta_scope == scope
    with pytest.raises(ValueError, match="scope"):
        SearchStep(g, 2, "some")
    with pytest.raises(ValueError, match="loss"):
        SearchStep(g, 2, "all", "ssim")


def test_adam_is_finite_where_the_gradient_is_zero():
    p, g, m, v = torch.ones(3), torch.zeros(3), torch.zeros(3), torch.zeros(3)
    out, _, _ = SearchStep.adam(p, g, m, v, torch.tensor(1.0), torch.tensor(0.1))
    assert torch.equal(out, p)


def test_pool_averages_the_residual_over_each_cells_object_pixels():
    x = -torch.ones(1, 4, 8, 8)
    x[:, :, 0:4, 0:4] = 0.0  # one 4x4 cell all object; the other three cells background
    x[:, :, 4, 4] = 0.0      # one object pixel alone in its cell
    checker, shifted = x.clone(), x.clone()
    checker[:, :, 0:4, 0:4] += 0.5 * (1 - 2 * ((torch.arange(4)[:, None] + torch.arange(4)) % 2))  # +-0.5
    shifted[:, :, 0:4, 0:4] += 0.5  # the whole cell off by 0.5
    for loss in ("fg_input", "fg"):
        per_pixel = reconstruction_loss(checker, x, loss)
        assert per_pixel.item() == pytest.approx(16 * 0.25 / 17)  # 16 of 17 object pixels off by 0.5
        assert reconstruction_loss(checker, x, loss, pool=4).item() == pytest.approx(0.0, abs=1e-12)
        assert reconstruction_loss(shifted, x, loss, pool=4).item() == pytest.approx(reconstruction_loss(shifted, x, loss).item())
        assert torch.equal(reconstruction_loss(checker, x, loss, pool=1), per_pixel)
    # background pixels do not dilute a cell: the lone pixel's error counts in full
    lone = x.clone()
    lone[:, :, 4, 4] += 1.0
    assert reconstruction_loss(lone, x, "fg_input", pool=4).item() == pytest.approx(4 * 1.0 / (17 * 4))
    with pytest.raises(ValueError, match="pool"):
        reconstruction_loss(x, x, "fg_input", pool=3)
    with pytest.raises(ValueError, match="pool"):
        SearchStep(random_generator(torch.float32), 3, "none", "fg_input", pool=3)


def test_the_local_score_is_the_mean_of_the_cells_that_differ_most():
    from training.losses import local_score
    x = -torch.ones(1, 4, 8, 8)
    x[:, :, 0:8, 0:4] = 0.0               # the part: the left half (two 4x4 cells)
    y = x.clone()
    y[:, :, 0:4, 0:4] += 0.2               # one cell off by 0.2 in every channel: energy 0.04
    y[:, 3, 4:8, 0:4] += 0.6               # the other off by 0.6 in depth only: energy 0.36 / 4 = 0.09
    assert local_score(y, x, "fg_input", 1, pool=4).item() == pytest.approx(0.09)
    assert local_score(y, x, "fg_input", 2, pool=4).item() == pytest.approx((0.09 + 0.04) / 2)
    # the background cells count nothing, so more cells than the part has dilute it
    assert local_score(y, x, "fg_input", 4, pool=4).item() == pytest.approx((0.09 + 0.04) / 4)
    # one damaged pixel in a part of 32: the loss (a mean) barely moves, the top cell does
    hit = x.clone()
    hit[:, :, 2, 2] += 1.0
    assert reconstruction_loss(hit, x, "fg_input").item() == pytest.approx(1 / 32)
    assert local_score(hit, x, "fg_input", 1).item() == pytest.approx(1.0)


@pytest.mark.parametrize("scope, loss, dw, pool, cells, std", [("none", "fg_input", 1.0, 4, 3, False),
                                                               ("all", "fg", 3.0, 1, 10, False),
                                                               ("bn", "mse", 1.0, 2, 1, False),
                                                               ("none", "fg_input", 1.0, 4, 3, True),
                                                               ("all", "fg", 1.0, 2, 5, True)])
def test_the_loss_graphs_local_score_matches_the_reference(scope, loss, dw, pool, cells, std):
    from training.losses import local_score
    g = random_generator(torch.float64)
    n = (32 // pool) ** 2
    rng = np.random.default_rng(3)
    stats = (rng.uniform(0, 0.1, n), rng.uniform(0.01, 0.2, n)) if std else None
    core = SearchStep(g, 3, scope, loss, depth_weight=dw, pool=pool, score_cells=cells,
                      cell_stats=stats).to(torch.float64)
    z = torch.randn(3, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = sample_x(torch.float64)
    got, y = core.reconstruct(x, z, *core.init_theta(g))
    want = local_score(y, x.expand(3, -1, -1, -1), loss, cells, depth_weight=dw, pool=pool, cell_stats=stats)
    assert torch.allclose(got, want, rtol=1e-10)
    if std:  # standardising reorders the cells: a cell counts by how unusual it is there
        raw = local_score(y, x.expand(3, -1, -1, -1), loss, cells, depth_weight=dw, pool=pool)
        assert not torch.allclose(got, raw)
    with pytest.raises(ValueError, match="score_cells"):
        SearchStep(g, 3, scope, loss, pool=pool, score_cells=(32 // pool) ** 2 + 1)
    with pytest.raises(ValueError, match="positive deviations"):
        SearchStep(g, 3, scope, loss, pool=pool, score_cells=1, cell_stats=(np.zeros(n), np.zeros(n)))
    with pytest.raises(ValueError, match="need score_cells"):
        SearchStep(g, 3, scope, loss, pool=pool, cell_stats=(np.zeros(n), np.ones(n)))


def test_a_standardised_cell_counts_by_how_unusual_it_is_there():
    from training.losses import local_score
    x = -torch.ones(1, 4, 8, 8)
    x[:, :, 0:8, 0:4] = 0.0                # the part: the left half (cells 0 and 2 of four 4x4 cells)
    y = x.clone()
    y[:, :, 0:4, 0:4] += 0.2               # cell 0: energy 0.04, where training parts differ by 0.04 +- 0.01
    y[:, 3, 4:8, 0:4] += 0.2               # cell 2: energy 0.01, where they differ by 0.002 +- 0.002
    mu, sd = np.array([0.04, 0.0, 0.002, 0.0]), np.array([0.01, 1.0, 0.002, 1.0])
    assert local_score(y, x, "fg_input", 1, pool=4).item() == pytest.approx(0.04)  # raw: cell 0 wins
    assert local_score(y, x, "fg_input", 1, pool=4, cell_stats=(mu, sd)).item() == pytest.approx(4.0)  # cell 2


@pytest.mark.parametrize("scope, loss", [("none", "fg_input"), ("all", "mse"), ("bn", "fg")])
def test_the_loss_scale_is_exact_in_float32(scope, loss):
    """The bundles' loss scale (2^12, for fp16 engines) changes no float32 step: z and theta are
    bit for bit those of the unscaled step, the moments exactly scale and scale^2 times theirs."""
    from export.graphs import LOSS_SCALE
    g = random_generator(torch.float32)
    x, S = sample_x(), 2
    z = torch.randn(S, 100, generator=torch.Generator().manual_seed(4))
    plain, scaled = SearchStep(g, S, scope, loss), SearchStep(g, S, scope, loss, loss_scale=LOSS_SCALE)
    th = plain.init_theta(g)
    st = [z, torch.zeros_like(z), torch.zeros_like(z), *th, *[torch.zeros_like(t) for t in th],
          *[torch.zeros_like(t) for t in th]]
    a, b = list(st), list(st)
    one = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    n = len(plain.trainable)
    for t in range(1, 6):
        a = list(plain.step(x, one(float(t)), one(5e-2), one(1e-3), *a)[1:])
        b = list(scaled.step(x, one(float(t)), one(5e-2), one(1e-3), *b)[1:])
        assert torch.equal(a[0], b[0]) and all(torch.equal(p, q) for p, q in zip(a[3:3 + n], b[3:3 + n]))
        assert torch.equal(a[1] * LOSS_SCALE, b[1]) and torch.equal(a[2] * LOSS_SCALE ** 2, b[2])
    with pytest.raises(ValueError, match="power of two"):
        SearchStep(g, S, scope, loss, loss_scale=1000.0)
