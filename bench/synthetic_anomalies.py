"""A learned local check, screened by blocked cross-validation: a segmenter trained on made-up damage.

The search's residual misses local damage on a new batch because the whole instance is new
(bench/RESULTS.md, "Why image scores miss damage"). The usual answer in the field (DRAEM, Zavrtanik
et al. 2021; CutPaste, Li et al. 2021) trains a small network to find *local inconsistencies*
that are pasted into normal images, so it need not know the instance. This screen measures it
before anything is built, with the folds, purge gap and damage seed of bench/blocked_cv.py:

- training: the class's frames outside the block and its purge gap. Each step takes normal parts
  and copies with one made-up irregular region, drawn in the stored frame (before the crop, as
  `adgan dataset damage` draws), of one of three generic kinds: another training frame's pixels
  pasted and blended (texture, material added, or material taken away where the other frame has
  none), a smooth push of the depth in or out, or a colour change (a blend toward a random colour
  or a random gain per channel). Both go through the same JPEG round trip (quality 95) and the
  crop to the part (Preprocessing(framing="object"), 64 px), with flips and quarter turns;
- model: a small U-Net (16/32/64 channels) gives a per-pixel logit; the image score is the
  maximum of its sigmoid averaged over 5x5 pixels;
- evaluation on the block: the damaged twins (`adgan dataset damage`, all five defects) against
  their intact copies, written through the same encoding; class swaps: the other classes' intact
  copies of the block against the class's own. Pixel AUROC of the map against the masks.

The made-up damage does not use `adgan dataset damage`'s code or its five kinds' parameters. It was
written knowing that those five kinds exist, so a check by damage made by a different hand is what
tells whether it generalises.

    .venv/bin/python bench/synthetic_anomalies.py ../shared/data/paper-rgbd --out runs/synth-anom
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from blocked_cv import blocks, damage_command, run, screen_arguments  # noqa: E402

SIZE = 64
JPEG_Q = 95


def want():
    from agent.segment.preprocess import Preprocessing
    return Preprocessing(framing="object", size=SIZE)


def jpeg(rgb: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_Q])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def region(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An irregular region near the part: a noisy disc around a part pixel (half the time on its rim),
    its radius 15-45% of the part's equivalent radius."""
    ys, xs = np.nonzero(mask)
    R = np.sqrt(len(xs) / np.pi)
    if rng.random() < 0.5:
        rim = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        ys, xs = np.nonzero(rim) if rim.any() else (ys, xs)
    i = rng.integers(len(xs))
    r = max(1.5, R * rng.uniform(0.15, 0.45))
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]].astype(np.float32)
    noise = cv2.GaussianBlur(rng.normal(0, 1, mask.shape).astype(np.float32), (0, 0), rng.uniform(1.0, 3.0))
    noise /= max(float(noise.std()), 1e-6)
    d = np.sqrt((xx - xs[i]) ** 2 + (yy - ys[i]) ** 2) / r + 0.35 * noise
    return d < 1.0


def made_up(rgb: np.ndarray, depth: np.ndarray, other: tuple[np.ndarray, np.ndarray],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb, depth, label) of one stored frame with one made-up defect."""
    from agent.segment.preprocess import part_mask
    mask = part_mask(depth)
    reg = region(mask, rng)
    f_rgb, f_d = rgb.astype(np.float32), depth.astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # paste another frame's pixels (shifted, maybe flipped)
        o_rgb, o_d = other
        k = rng.integers(4)
        o_rgb, o_d = np.rot90(o_rgb, k), np.rot90(o_d, k)
        sh = tuple(int(v) for v in rng.integers(-12, 13, 2))
        o_rgb, o_d = np.roll(o_rgb, sh, (0, 1)).astype(np.float32), np.roll(o_d, sh, (0, 1)).astype(np.float32)
        b = rng.uniform(0.5, 1.0)
        f_rgb[reg] = (1 - b) * f_rgb[reg] + b * o_rgb[reg]
        both = reg & (f_d > 0) & (o_d > 0)
        f_d[both] = (1 - b) * f_d[both] + b * o_d[both]
        took = reg & ~both & ((f_d > 0) | (o_d > 0))
        f_d[took] = o_d[took]
        f_rgb[took & (o_d == 0)] = 0
    elif kind == 1:  # push the depth in or out, smoothly, on the part
        reg &= mask
        w = cv2.GaussianBlur(reg.astype(np.float32), (0, 0), 1.5) * reg
        f_d = np.where(mask, f_d + rng.choice([-1, 1]) * rng.uniform(10, 60) * w, f_d)
        f_d = np.where(mask, np.clip(f_d, 1, 255), f_d)  # (stray pixels off the part's mask: as they were)
    else:  # colour: toward a random colour, or a gain per channel
        reg &= mask
        if rng.random() < 0.5:
            a = rng.uniform(0.3, 0.9)
            f_rgb[reg] = (1 - a) * f_rgb[reg] + a * rng.uniform(0, 255, 3)
        else:
            f_rgb[reg] *= rng.uniform(0.3, 1.7, 3)
    out_rgb = np.clip(np.rint(f_rgb), 0, 255).astype(np.uint8)
    out_d = np.clip(np.rint(f_d), 0, 255).astype(np.uint8)
    label = reg & ((out_d > 0) | (depth > 0))  # where material is, or was
    return out_rgb, out_d, label


def crop(rgb: np.ndarray, depth: np.ndarray, label: np.ndarray | None):
    """(model input (4, S, S), label (S, S) or None) of a stored frame, cropped to its part."""
    from agent.frame import Sample
    from agent.segment.preprocess import Preprocessing, _crop, _resize, reframe, sample_to_input
    s = reframe(Sample(rgb=rgb, depth=depth, meta={}), Preprocessing(), want())
    lab = None
    if label is not None:
        x0, y0, side = s.meta["reframe"]
        lab = _resize(_crop(label.astype(np.float32), x0, y0, side), SIZE) > 0.5
    return sample_to_input(s), lab


def stored(folder: Path, numbers) -> list[tuple[np.ndarray, np.ndarray]]:
    from agent.sources.dataset import read_sample
    out = []
    for n in numbers:
        s = read_sample(folder, n)
        out.append((s.rgb, s.depth))
    return out


def net(torch):
    nn = torch.nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.e1, self.e2, self.e3 = block(4, 16), block(16, 32), block(32, 64)
            self.d2, self.d1 = block(64 + 32, 32), block(32 + 16, 16)
            self.head = nn.Conv2d(16, 1, 1)

        def forward(self, x):
            f = nn.functional
            a = self.e1(x)
            b = self.e2(f.max_pool2d(a, 2))
            c = self.e3(f.max_pool2d(b, 2))
            u = self.d2(torch.cat([f.interpolate(c, scale_factor=2), b], 1))
            u = self.d1(torch.cat([f.interpolate(u, scale_factor=2), a], 1))
            return self.head(u)[:, 0]

    return UNet()


def batch(frames, rng, n):
    """n model inputs, half normal, half with a made-up defect, flipped and turned; and their labels."""
    xs, ys = [], []
    for j in range(n):
        rgb, d = frames[rng.integers(len(frames))]
        if j % 2:
            rgb, d, lab = made_up(rgb, d, frames[rng.integers(len(frames))], rng)
        else:
            lab = np.zeros(d.shape, bool)
        try:
            x, y = crop(jpeg(rgb), d, lab)
        except Exception:  # noqa: BLE001 - a made-up defect that left no part: draw again
            x, y = crop(jpeg(frames[0][0]), frames[0][1], np.zeros(d.shape, bool))
        k = rng.integers(4)
        x, y = np.rot90(x, k, (1, 2)), np.rot90(y, k)
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return np.stack(xs), np.stack(ys).astype(np.float32)


def train(frames, steps: int, seed: int, log):
    import torch
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    m = net(torch)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.time()
    for step in range(steps):
        x, y = batch(frames, rng, 32)
        logit = m(torch.from_numpy(x))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logit, torch.from_numpy(y), pos_weight=torch.tensor(4.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    m.eval()
    return m


def maps(m, xs: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return torch.sigmoid(m(torch.from_numpy(np.ascontiguousarray(xs)))).numpy()


def image_scores(h: np.ndarray) -> np.ndarray:
    return np.array([cv2.blur(a, (5, 5)).max() for a in h])


def folder_inputs(folder: Path, with_masks: bool):
    """Model inputs (and masks) of a damage folder's samples, read as a bundle would read them."""
    from agent.segment.preprocess import _crop, _resize, part_mask, object_window
    from agent.sources.dataset import frame_numbers, read_mask, read_sample
    xs, ms = [], []
    for n in frame_numbers(folder):
        s = read_sample(folder, n)
        x, _ = crop(s.rgb, s.depth, None)
        xs.append(x)
        if with_masks:
            x0, y0, side = object_window(part_mask(s.depth), want().margin)
            ms.append(_resize(_crop(read_mask(folder, n).astype(np.float32), x0, y0, side), SIZE) > 0.5)
    return np.stack(xs), (np.stack(ms) if with_masks else None)


def auroc(neg, pos) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))


def main(argv=None) -> int:
    ap = screen_arguments(__doc__)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    from agent.sources.dataset import frame_numbers
    from calibration.damage import DAMAGE_DEFECTS
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = (int(v) for v in a.frames.split(":"))
    classes = a.classes.split(",")
    data = Path(a.data)
    logf = open(out / "log.txt", "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    rows = []
    for b0, b1 in blocks(lo, hi, a.folds):
        damaged = out / f"damaged-{b0}-{b1}"
        if not (damaged / "damage.json").exists():
            run(damage_command(str(data), damaged, (b0, b1), a.damage_seed), out / "damage-log.txt",
                out / "commands.txt")
        intact = {c: folder_inputs(damaged / c, False)[0] for c in classes}
        for c in classes:
            nums = [n for n in frame_numbers(data / c, (lo, hi))
                    if not max(lo, b0 - a.purge) <= n < min(hi, b1 + a.purge)]
            log(f"fold {b0}:{b1} {c}: {len(nums)} training frames, {a.steps} steps")
            m = train(stored(data / c, nums), a.steps, a.seed, log)
            h_own = maps(m, intact[c])
            own = image_scores(h_own)
            other = np.concatenate([image_scores(maps(m, intact[o])) for o in classes if o != c])
            row = {"fold": f"{b0}:{b1}", "class": c, "n_train": len(nums), "n_intact": len(own),
                   "swaps": auroc(own, other)}
            pix_s, pix_y, dam = [], [], []
            for d in DAMAGE_DEFECTS:
                xs, ms = folder_inputs(damaged / f"{c}_{d}", True)
                h = maps(m, xs)
                s = image_scores(h)
                dam.append(s)
                row[d] = auroc(own, s)
                pix_s += [h.ravel()]
                pix_y += [ms.ravel()]
            row["all"] = auroc(own, np.concatenate(dam))
            pix_s.append(h_own.ravel())
            pix_y.append(np.zeros(h_own.size, bool))
            row["pixel"] = auroc(np.concatenate(pix_s)[~np.concatenate(pix_y)], np.concatenate(pix_s)[np.concatenate(pix_y)])
            rows.append(row)
            log(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}))
    (out / "screen.json").write_text(json.dumps(rows, indent=1))
    keys = ["swaps"] + list(DAMAGE_DEFECTS) + ["all", "pixel"]
    log("\nworst fold per class | " + " | ".join(keys))
    for c in classes:
        rs = [r for r in rows if r["class"] == c]
        log(f"{c} | " + " | ".join(f"{min(r[k] for r in rs):.3f}" for k in keys))
    log("mean over folds per class")
    for c in classes:
        rs = [r for r in rows if r["class"] == c]
        log(f"{c} | " + " | ".join(f"{np.mean([r[k] for r in rs]):.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
