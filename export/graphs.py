"""Algorithm 1's inner step with the backward pass written out, for runtimes without autograd.

The generator runs in eval mode: BatchNorm is y = s * a + t with s = gamma / sqrt(var + eps)
and the running statistics as constants, gamma and beta stay trainable inputs.
Activations carry the seeds on the batch axis, (S, C, H, W). With theta scope `all` every
seed owns its weights: they are stacked along the input-channel axis, (S * Cin, Cout, k, k),
and each ConvTranspose runs as one grouped convolution (groups = S). Backward through
ConvTranspose2d(h; W):
  dL/dh = conv2d(dL/do; W)                                   (the adjoint of the adjoint)
  dL/dW = h (S, Cin, HW) @ the 16 kernel-tap slices of dL/do (S, HW, Cout*16)
which are forward operators that ONNX and TensorRT run with weights as graph inputs.
With theta scope `colour` G's weights are constants and each seed owns a colour layer after
G's output (training.model.apply_colour: y_rgb' = M y_rgb + b); its backward is two batched
matmuls: dL/dM = dL/dy_rgb' @ y_rgb^T, dL/db = the sum of dL/dy_rgb', dL/dy_rgb = M^T dL/dy_rgb'.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agent.scoring.bundle import LOSSES, THETA_SCOPES as SCOPES
from training.losses import channel_weights
from training.model import COLOUR, COLOUR_IDENTITY, Architecture, Generator, apply_colour

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
# Bundles scale the loss's gradient by this in the step graph (and Adam's eps with it, so
# the update is the same): gradients entering the backward convolutions stay above fp16's
# smallest normal (bench/fp16_gradients.py: 45% of them below it unscaled for the default
# search, 94% for the paper's; 0.1% for both at 2^12). A power of two is exact in fp32.
LOSS_SCALE = 4096.0


@dataclass(frozen=True)
class Layer:
    cin: int
    cout: int
    stride: int
    pad: int
    bn: bool  # followed by BatchNorm + ReLU (else: the output layer, bias + tanh)


def layers_of(arch: Architecture) -> list[Layer]:
    ch = arch.g_channels()
    out, c_in = [], arch.nz
    for i, c in enumerate(ch):
        out.append(Layer(c_in, c, 1 if i == 0 else 2, 0 if i == 0 else 1, True))
        c_in = c
    out.append(Layer(c_in, arch.channels, 2, 1, False))
    return out


def theta_names(arch: Architecture) -> list[str]:
    """Names of all theta tensors in graph order: W, gamma, beta per block, then W and bias out."""
    names = []
    for i, l in enumerate(layers_of(arch)):
        names.append(f"w{i}")
        if l.bn:
            names += [f"gamma{i}", f"beta{i}"]
        else:
            names.append(f"bias{i}")
    return names


def trainable_names(arch: Architecture, scope: str) -> list[str]:
    if scope == "all":
        return theta_names(arch)
    if scope == "bn":
        return [n for n in theta_names(arch) if n.startswith(("gamma", "beta"))]
    if scope == COLOUR:
        return [COLOUR]
    return []


def per_seed(name: str, t: torch.Tensor, s: int) -> torch.Tensor:
    """Theta as one seed-stacked tensor: W (S*Cin, Cout, k, k); gamma/beta/bias (S, C)."""
    if name.startswith("w"):
        return t.repeat(s, 1, 1, 1)
    return t.reshape(1, -1).repeat(s, 1)


class SearchStep(nn.Module):
    """One Adam iteration of Algorithm 1 (`step`) or the loss alone (`loss`), autograd-free.

    step inputs:  x (1 or S, 4, H, W): one part for every slot, or one per slot; t (step number, 1-based), lr_z, lr_theta, z (S, nz), m_z, v_z,
                  then for each trainable theta tensor: value, m, v.
    step outputs: loss (S,) before the update, z, m_z, v_z, then the trainable theta with m, v.
    loss inputs:  x, z, trainable theta; output loss (S,).
    Frozen theta and BatchNorm running statistics are buffers (initializers in ONNX).
    """

    def __init__(self, g: Generator, seeds_per_call: int, scope: str = "all", loss: str = "mse",
                 fg_threshold: float = -0.9, bn_eps: float = 1e-5, depth_weight: float = 1.0,
                 pool: int = 1, score_cells: int = 0, cell_stats: tuple | None = None,
                 loss_scale: float = 1.0) -> None:
        super().__init__()
        m, e = np.frexp(loss_scale)
        if loss_scale < 1 or m != 0.5:
            raise ValueError(f"loss_scale must be a power of two >= 1 (exact in fp32), got {loss_scale}")
        self.loss_scale = float(loss_scale)
        if scope not in SCOPES:
            raise ValueError(f"theta scope must be one of {SCOPES}, got {scope!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.arch, self.S, self.scope, self.loss_kind = g.arch, seeds_per_call, scope, loss  # S: seeds per call
        self.fg_threshold, self.layers = fg_threshold, layers_of(g.arch)
        if pool < 1 or g.arch.size % pool:
            raise ValueError(f"pool must be >= 1 and divide the image size {g.arch.size}, got {pool}")
        self.pool = pool
        n_cells = (g.arch.size // pool) ** 2
        if not 0 <= score_cells <= n_cells:
            raise ValueError(f"score_cells must be in 0..{n_cells} (cells of {pool}x{pool}), got {score_cells}")
        self.score_cells = score_cells
        self.standardised = cell_stats is not None
        if self.standardised:
            if not score_cells:
                raise ValueError("cell statistics standardise the local score: they need score_cells K > 0")
            mu, sd = (torch.as_tensor(np.asarray(v), dtype=torch.float64).reshape(-1) for v in cell_stats)
            if mu.numel() != n_cells or sd.numel() != n_cells or not bool((sd > 0).all()):
                raise ValueError(f"cell statistics must be {n_cells} means and {n_cells} positive deviations")
            self.register_buffer("cell_mu", mu.reshape(1, -1))
            self.register_buffer("cell_rsd", (1.0 / sd).reshape(1, -1))
        self.trainable = trainable_names(g.arch, scope)
        self.weighted = depth_weight != 1.0  # a plain mean writes no extra operators
        if self.weighted:
            # float64 so that a float64 copy of the module is exact; cast to the data's dtype in use
            cw = torch.tensor(channel_weights(g.arch.channels, depth_weight), dtype=torch.float64)
            self.register_buffer("chan_w", cw.reshape(1, -1, 1, 1))
        th = g.theta()
        for i, l in enumerate(self.layers):
            if l.bn:
                self.register_buffer(f"rstd{i}", torch.rsqrt(th[f"var{i}"] + bn_eps))
                self.register_buffer(f"mean{i}", th[f"mean{i}"].clone())
        for name in theta_names(g.arch):
            if name not in self.trainable:
                self.register_buffer(f"frozen_{name}", th[name].clone())

    # -- forward and backward, seeds on the batch axis ----------------------------------
    def _convt(self, h, w, l: Layer, grouped: bool):
        if grouped:
            s = h.shape[0]
            o = F.conv_transpose2d(h.reshape(1, -1, *h.shape[2:]), w, stride=l.stride, padding=l.pad, groups=s)
            return o.reshape(s, l.cout, *o.shape[2:])
        return F.conv_transpose2d(h, w, stride=l.stride, padding=l.pad)

    def _convt_grad_input(self, do, w, l: Layer, grouped: bool):
        if grouped:
            s = do.shape[0]
            dh = F.conv2d(do.reshape(1, -1, *do.shape[2:]), w, stride=l.stride, padding=l.pad, groups=s)
            return dh.reshape(s, l.cin, *dh.shape[2:])
        return F.conv2d(do, w, stride=l.stride, padding=l.pad)

    def _convt_grad_weight(self, h, do, l: Layer):
        """dL/dW of ConvTranspose2d(h; W) per seed, as one batched matmul.

        dW[ci, co, kh, kw] = sum_yx h[ci, y, x] * do[co, s*y - p + kh, s*x - p + kw]: for
        each of the 4x4 kernel taps a strided slice of the padded do, then
        (S, Cin, HW) @ (S, HW, Cout*16). Same FLOPs as a dilated convolution with an
        image-sized kernel, but a shape every GEMM library runs at full speed.
        """
        s_, cin, hh, ww = h.shape
        st, p = l.stride, l.pad
        dp = do
        if p:  # zero border by concatenation: a Pad op would keep the export at opset 18
            zr = do.new_zeros(s_, l.cout, p, do.shape[3])
            dp = torch.cat([zr, do, zr], dim=2)
            zc = do.new_zeros(s_, l.cout, dp.shape[2], p)
            dp = torch.cat([zc, dp, zc], dim=3)
        taps = [dp[:, :, kh: kh + st * (hh - 1) + 1: st, kw: kw + st * (ww - 1) + 1: st]
                for kh in range(4) for kw in range(4)]  # 16 x (S, Cout, H, W)
        cols = torch.stack(taps, dim=2).reshape(s_, l.cout * 16, hh * ww)  # (S, Cout*16, HW)
        gw = torch.matmul(h.reshape(s_, cin, hh * ww), cols.transpose(1, 2))  # (S, Cin, Cout*16)
        return gw.reshape(s_ * cin, l.cout, 4, 4)

    def _theta(self, name: str, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        return theta[name] if name in theta else getattr(self, f"frozen_{name}")

    def _mask(self, x, y):
        """Foreground where the sample or its reconstruction has depth (channel 3)."""
        if self.loss_kind == "fg_input":  # the sample's own object pixels only
            return (x[:, 3:4] > -1.0).to(x.dtype) * torch.ones_like(y[:, 3:4])  # (S, 1, H, W)
        return ((x[:, 3:4] > -1.0) | (y[:, 3:4] > self.fg_threshold)).to(x.dtype)  # (S, 1, H, W)

    def _loss_and_dy(self, x, y, need_grad: bool):
        diff = y - x  # (S, 4, H, W), x broadcast over seeds
        if self.pool > 1:
            return self._pooled_loss_and_dy(x, y, diff, need_grad)
        wd = diff * self.chan_w.to(diff.dtype) if self.weighted else diff  # channel-weighted residual
        if self.loss_kind == "mse":
            n = diff[0].numel()
            loss = (wd * diff).sum(dim=(1, 2, 3)) / n
            return loss, (wd * (2.0 / n) if need_grad else None)
        m = self._mask(x, y)
        cnt = torch.clamp(m.sum(dim=(1, 2, 3)), min=1.0) * x.shape[1]  # (S,)
        loss = (wd * diff * m).sum(dim=(1, 2, 3)) / cnt
        return loss, (wd * m * (2.0 / cnt).reshape(-1, 1, 1, 1) if need_grad else None)

    def _pooled_loss_and_dy(self, x, y, diff, need_grad: bool):
        """The loss on pool x pool cells: sum over cells and channels of w_c * A^2 / N over
        C * (counted pixels), A the residual summed over a cell's counted pixels, N their number.
        dL/dA = 2 w_c A / N / cnt reaches each counted pixel of the cell unchanged (A is a sum).
        Cells by Reshape + ReduceSum and back by Expand: no pooling or resize operators."""
        f, (s, c, hh, ww) = self.pool, diff.shape
        h, w = hh // f, ww // f
        m = torch.ones_like(y[:, 3:4]) if self.loss_kind == "mse" else self._mask(x, y)  # (S, 1, H, W)
        cnt = torch.clamp(m.sum(dim=(1, 2, 3)), min=1.0) * c  # (S,)
        a = (diff * m).reshape(s, c, h, f, w, f).sum(dim=(3, 5))  # (S, C, h, w)
        n = torch.clamp(m.reshape(s, 1, h, f, w, f).sum(dim=(3, 5)), min=1.0)
        r = a / n  # mean residual per cell
        wr = r * self.chan_w.to(r.dtype) if self.weighted else r
        loss = (wr * a).sum(dim=(1, 2, 3)) / cnt
        if not need_grad:
            return loss, None
        g = (wr * (2.0 / cnt).reshape(-1, 1, 1, 1)).reshape(s, c, h, 1, w, 1).expand(s, c, h, f, w, f)
        return loss, m * g.reshape(s, c, hh, ww)

    def forward_backward(self, x, z, theta: dict[str, torch.Tensor], need_grad: bool = True):
        grouped = self.scope == "all"
        s = z.shape[0]
        h = z.reshape(s, -1, 1, 1)
        cache = []
        for i, l in enumerate(self.layers):
            w = self._theta(f"w{i}", theta)
            a = self._convt(h, w, l, grouped)
            if l.bn:
                gamma = self._theta(f"gamma{i}", theta).reshape(-1, l.cout, 1, 1)
                beta = self._theta(f"beta{i}", theta).reshape(-1, l.cout, 1, 1)
                xhat = (a - getattr(self, f"mean{i}").reshape(1, -1, 1, 1)) * getattr(self, f"rstd{i}").reshape(1, -1, 1, 1)
                b = gamma * xhat + beta
                cache.append((h, xhat, b, gamma))
                h = torch.relu(b)
            else:
                o = a + self._theta(f"bias{i}", theta).reshape(-1, l.cout, 1, 1)
                y = torch.tanh(o)
                cache.append((h, None, None, None))
        out = apply_colour(y, theta[COLOUR]) if COLOUR in self.trainable else y
        loss, dy = self._loss_and_dy(x.to(y.dtype), out, need_grad)
        if not need_grad:
            return loss, {}, out
        grads: dict[str, torch.Tensor] = {}
        if self.loss_scale != 1.0:  # every gradient below is loss_scale times the true one
            dy = dy * self.loss_scale
        if COLOUR in self.trainable:  # back through the colour layer to G's output
            c, (s_, _, hh, ww) = theta[COLOUR], y.shape
            d_rgb = dy[:, :3].reshape(s_, 3, hh * ww)
            gm = torch.matmul(d_rgb, y[:, :3].reshape(s_, 3, hh * ww).transpose(1, 2))  # (S, 3, 3)
            grads[COLOUR] = torch.cat([gm.reshape(s_, 9), d_rgb.sum(dim=2)], dim=1)
            back = torch.matmul(c[:, :9].reshape(s_, 3, 3).transpose(1, 2), d_rgb).reshape(s_, 3, hh, ww)
            dy = torch.cat([back, dy[:, 3:4]], dim=1)
        d = dy * (1 - y * y)  # through tanh
        for i in range(len(self.layers) - 1, -1, -1):
            l = self.layers[i]
            h_in, xhat, b, gamma = cache[i]
            if l.bn:
                d = d * (b > 0).to(d.dtype)  # through ReLU
                if f"gamma{i}" in self.trainable:
                    grads[f"gamma{i}"] = (d * xhat).sum(dim=(2, 3))
                    grads[f"beta{i}"] = d.sum(dim=(2, 3))
                d = d * (gamma * getattr(self, f"rstd{i}").reshape(1, -1, 1, 1))
            elif f"bias{i}" in self.trainable:
                grads[f"bias{i}"] = d.sum(dim=(2, 3))
            if f"w{i}" in self.trainable:
                grads[f"w{i}"] = self._convt_grad_weight(h_in, d, l)
            d = self._convt_grad_input(d, self._theta(f"w{i}", theta), l, grouped)
        return loss, grads, d.reshape(s, -1)

    # -- graphs -------------------------------------------------------------------------
    @staticmethod
    def adam(p, g, m, v, t, lr, scale: float = 1.0):
        """torch.optim.Adam's update (no weight decay, no amsgrad), fused. With g `scale` times
        the true gradient, m and v hold scale and scale^2 times theirs, and eps * scale keeps
        the update exactly Adam's (a power-of-two scale is exact in floating point)."""
        m = BETA1 * m + (1 - BETA1) * g
        v = BETA2 * v + (1 - BETA2) * g * g
        bc1 = 1 - torch.pow(torch.full_like(t, BETA1), t)
        sq_bc2 = torch.sqrt(1 - torch.pow(torch.full_like(t, BETA2), t))
        # = lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), written so that eps never stands
        # alone: ONNX graph optimisers drop "x + 1e-8" as adding zero (seen with the
        # torch.onnx dynamo exporter's optimize=True), and then v = 0 gives 0 / 0.
        # Scalars first: every full-size operation is a pass over theta-sized memory.
        p = p - (lr / bc1 * sq_bc2) * m / (torch.sqrt(v) + (ADAM_EPS * scale) * sq_bc2)
        return p, m, v

    def step(self, x, t, lr_z, lr_theta, z, m_z, v_z, *theta_state):
        k = len(self.trainable)
        vals, ms, vs = theta_state[:k], theta_state[k:2 * k], theta_state[2 * k:]
        theta = dict(zip(self.trainable, vals))
        loss, grads, dz = self.forward_backward(x, z, theta)
        z, m_z, v_z = self.adam(z, dz, m_z, v_z, t, lr_z, self.loss_scale)
        new_p, new_m, new_v = [], [], []
        for name, p, m, v in zip(self.trainable, vals, ms, vs):
            p, m, v = self.adam(p, grads[name], m, v, t, lr_theta, self.loss_scale)
            new_p.append(p)
            new_m.append(m)
            new_v.append(v)
        return (loss, z, m_z, v_z, *new_p, *new_m, *new_v)

    def loss(self, x, z, *theta):
        return self.forward_backward(x, z, dict(zip(self.trainable, theta)), need_grad=False)[0]

    def cell_energy(self, x, y):
        """(S, cells): per pool x pool cell, the channel-weighted squared mean residual over the
        cell's counted pixels, averaged over channels (0 where a cell counts no pixel)."""
        f, (s, c, hh, ww) = self.pool, y.shape
        diff = y - x
        m = torch.ones_like(y[:, 3:4]) if self.loss_kind == "mse" else self._mask(x, y)  # (S, 1, H, W)
        if f > 1:
            a = (diff * m).reshape(s, c, hh // f, f, ww // f, f).sum(dim=(3, 5))
            n = torch.clamp(m.reshape(s, 1, hh // f, f, ww // f, f).sum(dim=(3, 5)), min=1.0)
            r2 = (a / n) * (a / n)
        else:
            r2 = diff * diff * m
        e = (r2 * self.chan_w.to(r2.dtype) if self.weighted else r2).sum(dim=1) / c  # (S, h, w)
        return e.reshape(s, -1)

    def reconstruct(self, x, z, *theta):
        """(score (S,), G(z) (S, 4, H, W)) with the given theta: the loss, or with score_cells K
        the mean energy of the K cells that differ most (local damage moves it; the mean hides it)."""
        loss, _, y = self.forward_backward(x, z, dict(zip(self.trainable, theta)), need_grad=False)
        if self.score_cells:
            e = self.cell_energy(x.to(y.dtype), y)
            if self.standardised:  # how unusual each cell is against the training frames' own residuals
                e = (e - self.cell_mu.to(e.dtype)) * self.cell_rsd.to(e.dtype)
            # sum / K, not mean: ONNX ReduceMean would need opset 18 (axes as an input)
            top = torch.topk(e, self.score_cells, dim=1).values
            loss = top.sum(dim=1) / self.score_cells
        return loss, y

    def init_theta(self, g: Generator) -> list[torch.Tensor]:
        """Per-seed copies of the trainable theta (the starting point of every search)."""
        th = g.theta()
        if self.scope == COLOUR:
            dtype = th["w0"].dtype
            return [torch.tensor(COLOUR_IDENTITY, dtype=dtype).reshape(1, -1).repeat(self.S, 1)]
        if self.scope == "all":
            return [per_seed(n, th[n], self.S) for n in self.trainable]
        return [th[n].reshape(1, -1).repeat(self.S, 1) for n in self.trainable]


class StepGraph(nn.Module):
    """`SearchStep.step` as a module's forward, for export."""

    def __init__(self, core: SearchStep) -> None:
        super().__init__()
        self.core = core

    def forward(self, *args):
        return self.core.step(*args)


class LossGraph(nn.Module):
    """`SearchStep.reconstruct` (loss per seed and G(z)) as a module's forward, for export."""

    def __init__(self, core: SearchStep) -> None:
        super().__init__()
        self.core = core

    def forward(self, x, z, *theta):
        return self.core.reconstruct(x, z, *theta)
