"""Golden-sample enrollment, a feasibility study on blocked cross-validation (issue 15).

No model-only score has caught stains, chunks or foreign bodies on the paper's boxes and
cylinders: each class is many printed products, and one generator cannot tell a stain from
print it has never seen. A station inspects one product, so it could first be shown K intact
parts of that product ("enrollment") and compare each new part with them. This measures what
such a comparison would give, before anything is built into the agent.

Each fold's bundle (--point) scores every --every-th frame of its block through the agent's
own search (bench/map_scores.py's dump: x, G(z*), the score and the frame number per sample,
kept in OUT as map_scores.dump_path names them, and reused). The golden set of a sample is the K intact
samples of the block nearest to it in frame number, its own frame left out, so its intact twin
is never golden (`--golden nearest`), or the K nearest before it (`--golden before`). With
`--golden first`, as a station enrols at a product change: the objects' runs of captures come
from --objects (bench/paper_rgbd_objects.json, read by eye); the golden set is the first K intact
samples of the sample's run inside the block, and only the run's later samples are scored (a
sample of another class belongs to the run its frame number falls in). Scores:

- `bundle`: the bundle's own score (the baseline);
- `golden-input`: P x P patches at stride P/2 over the whole input x (4 channels); a patch's
  distance is the least mean squared difference to the golden samples' patch at the same
  place, shifted by up to --shift pixels (step --shift-step); the score is the largest;
- `golden-residual`: the same on the residual G(z*) - x;
- `golden-combined` (exploratory: conceived after the two above were seen on these folds, so
  its numbers flatter it): the larger of `bundle` and `golden-input`, each divided by its mean
  over the sample's golden set (a golden sample's own `golden-input` is against its own set), as
  a station could calibrate both at enrollment.

    .venv/bin/python bench/enrollment.py runs/cv/sphere-e300 runs/cv/cyl-e300 runs/cv/rectangle-e300 \\
        --point def --out runs/enrollment

Nothing here ships: it says whether a per-product enrollment is worth building.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from blocked_cv import damage_command  # noqa: E402
from map_scores import cv_folds, dump, job_aucs, load_dump  # noqa: E402

SCORES = ("bundle", "golden-input", "golden-residual", "golden-combined")


def golden_index(n_test: np.ndarray, n_intact: np.ndarray, k: int, before: bool = False) -> np.ndarray:
    """(N, k) indices into the intact samples: the k nearest in frame number, the same frame left out.
    before: the k nearest before the frame, as a station enrols parts it saw earlier; a frame with fewer
    than k before it makes up the set with the nearest after it."""
    if len(n_intact) <= k:
        raise ValueError(f"a golden set of {k} needs more than {k} intact samples; the block has {len(n_intact)}")
    diff = n_test[:, None].astype(np.int64) - n_intact[None, :].astype(np.int64)
    d = np.abs(diff).astype(np.float64)
    if before:
        d[diff < 0] += 1e6  # after the frame: only when there are too few before it
    d[diff == 0] = np.inf
    # ties (one frame before, one after) go to the earlier frame, deterministically
    d += n_intact[None, :] * 1e-9
    return np.argsort(d, axis=1)[:, :k]


def first_index(n_test: np.ndarray, n_intact: np.ndarray, starts: list[int], k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The golden set of a station that enrols at a product change: (N, k) indices into the intact
    samples, the first k of the object's run (`starts`: each run's first frame) that holds the test
    frame, and (N,) whether the frame is scored: it comes after that golden set, in a run with more
    than k intact samples. Rows of unscored frames are 0."""
    starts = sorted(starts)
    run = np.searchsorted(np.asarray(starts), n_test, side="right") - 1
    run_i = np.searchsorted(np.asarray(starts), n_intact, side="right") - 1
    order = np.argsort(n_intact, kind="stable")
    idx = np.zeros((len(n_test), k), np.int64)
    scored = np.zeros(len(n_test), bool)
    for i, (n, r) in enumerate(zip(n_test, run)):
        members = [j for j in order if run_i[j] == r]
        if r < 0 or len(members) <= k or n <= n_intact[members[k - 1]]:
            continue
        idx[i], scored[i] = members[:k], True
    return idx, scored


def shifted(img: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """(..., C, H, W) moved by (dy, dx) pixels, the uncovered border set to `fill`."""
    out = np.full_like(img, fill)
    h, w = img.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = img[..., ys, xs]
    return out


def patch_means(e: np.ndarray, p: int) -> np.ndarray:
    """(..., H, W) -> (..., H/(p/2) - 1, W/(p/2) - 1): the mean over p x p patches at stride p/2."""
    s = p // 2
    h, w = e.shape[-2:]
    c = e.reshape(*e.shape[:-2], h // s, s, w // s, s).sum((-3, -1))
    return (c[..., :-1, :-1] + c[..., 1:, :-1] + c[..., :-1, 1:] + c[..., 1:, 1:]) / (p * p)


def golden_score(test: np.ndarray, golden: np.ndarray, idx: np.ndarray, p: int, shift: int, step: int,
                 fill: float) -> np.ndarray:
    """(N,) the largest patch distance of each test image to its golden images (see the module's text)."""
    offs = [(dy, dx) for dy in range(-shift, shift + 1, step) for dx in range(-shift, shift + 1, step)]
    moved = np.stack([shifted(golden, dy, dx, fill) for dy, dx in offs], 1)  # (G, S, C, H, W)
    out = np.empty(len(test), np.float64)
    for i, t in enumerate(test):
        g = moved[idx[i]]  # (k, S, C, H, W)
        e = ((g - t[None, None]) ** 2).mean(2)  # (k, S, H, W)
        pm = patch_means(e, p)
        out[i] = pm.reshape(-1, *pm.shape[-2:]).min(0).max()
    return out


def make_damage(data: str, out: Path, block: tuple[int, int], seed: int) -> None:
    """The block's damaged twins with another seed, as blocked_cv.py makes them with its own."""
    cmd = damage_command(data, out, block, seed)
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])


def fold_scores(path: Path, k: int, p: int, shift: int, step: int, golden: str = "nearest",
                starts: list[int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Every score of every sample of a fold's dump, and "scored": whether the sample is scored
    (all of them, except with golden "first": see first_index)."""
    g = load_dump(path)
    if "n" not in g["intact"]:
        raise SystemExit(f"{path} has no frame numbers (dumped before they were kept): delete it and run again")
    gi = g["intact"]
    out: dict[str, dict[str, np.ndarray]] = {}
    idxs = {}
    if golden == "first" and starts is None:
        raise ValueError("golden 'first' needs the objects' runs (starts)")
    for name, v in g.items():
        if golden == "first":
            idx, scored = first_index(v["n"], gi["n"], starts, k)
        else:
            idx, scored = golden_index(v["n"], gi["n"], k, golden == "before"), np.ones(len(v["n"]), bool)
        idxs[name] = idx
        out[name] = {
            "scored": scored,
            "bundle": v["s"],
            "golden-input": golden_score(v["x"], gi["x"], idx, p, shift, step, -1.0),
            "golden-residual": golden_score(v["y"] - v["x"], gi["y"] - gi["x"], idx, p, shift, step, 0.0),
        }
    ref = dict(out["intact"])
    if golden == "first":
        # a golden sample's own golden-input: against the other k - 1 of its set, as enrollment scores it
        own = ref["golden-input"].copy()
        for row in {tuple(r) for name in idxs for r, ok in zip(idxs[name], out[name]["scored"]) if ok}:
            r = np.asarray(row)
            for j in r:  # only the set's own parts are shifted, not the block's
                others = gi["x"][r[r != j]]
                own[j] = golden_score(gi["x"][j:j + 1], others, np.arange(len(others))[None], p, shift, step,
                                      -1.0)[0]
        ref["golden-input"] = own
    for name, o in out.items():
        idx = idxs[name]
        o["golden-combined"] = np.maximum(o["bundle"] / ref["bundle"][idx].mean(1),
                                          o["golden-input"] / ref["golden-input"][idx].mean(1))
    return out


def rows(sc: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[float, float, dict[str, float]]]:
    return {name: job_aucs({k: v[name][v["scored"]] for k, v in sc.items()}) for name in SCORES}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cv", nargs="+", type=Path, help="bench/blocked_cv.py output folders (one class each)")
    ap.add_argument("--point", default="def", help="the bundle of each fold: bundle-POINT (default def)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "paper-rgbd"),
                    help="the samples the folds were cut from, for new damage (default ../shared/data/paper-rgbd)")
    ap.add_argument("--frames", default="0:1000", help="the frame range the folds cut (default 0:1000)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--every", type=int, default=3, help="every N-th frame of a block (default 3)")
    ap.add_argument("--k", type=int, default=8, help="golden samples per test sample (default 8)")
    ap.add_argument("--golden", choices=("nearest", "before", "first"), default="nearest",
                    help="golden set: the K nearest frames on either side (default), the K nearest before, or "
                         "the first K of the object's run (a station enrolling at a product change; --objects)")
    ap.add_argument("--objects", type=Path, default=Path(__file__).resolve().parent / "paper_rgbd_objects.json",
                    help="each class's runs of captures of one object, for --golden first "
                         "(default bench/paper_rgbd_objects.json)")
    ap.add_argument("--patch", type=int, default=8, help="patch side in input pixels, even (default 8)")
    ap.add_argument("--shift", type=int, default=4, help="largest shift searched, pixels (default 4)")
    ap.add_argument("--shift-step", type=int, default=2, help="shift step, pixels (default 2)")
    ap.add_argument("--damage-seed", type=int, default=7,
                    help="seed of the damaged twins: 7 (the default) reads each fold's damaged/ made by blocked_cv.py; "
                         "another makes FOLD/damaged-sS with 'adgan dataset damage' once")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.patch < 2 or a.patch % 2 or a.k < 1 or a.shift < 0 or a.shift_step < 1:
        raise SystemExit("--patch must be even and >= 2, --k >= 1, --shift >= 0, --shift-step >= 1")
    lo, hi = (int(v) for v in a.frames.split(":"))
    a.out.mkdir(parents=True, exist_ok=True)
    lines = [f"golden-sample enrollment: bundle-{a.point}, every {a.every} frame(s), damage seed {a.damage_seed}, "
             f"golden {a.golden}, K {a.k}, patch {a.patch}, "
             f"shift +-{a.shift} step {a.shift_step}; {len(SCORES)} scores", "",
             "| class | score | fold | class swaps | damage | per defect |", "|---|---|---|---|---|---|"]
    objects = json.loads(a.objects.read_text()) if a.golden == "first" else {}
    damaged = "damaged" if a.damage_seed == 7 else f"damaged-s{a.damage_seed}"
    for cv_dir, cls, i, block in cv_folds(a.cv, a.point, lo, hi, a.folds):
        if not (cv_dir / f"fold{i}" / damaged / "damage.json").exists():
            make_damage(a.data, cv_dir / f"fold{i}" / damaged, block, a.damage_seed)
        path = dump(cv_dir, cls, i, block, a.point, a.every, a.out, a.threads, damaged)
        if a.golden == "first" and cls not in objects:
            raise SystemExit(f"{a.objects} has no runs for class {cls}")
        scores = fold_scores(path, a.k, a.patch, a.shift, a.shift_step, a.golden, objects.get(cls))
        n_scored = int(scores["intact"]["scored"].sum())
        for name, (sw, dm, per) in rows(scores).items():
            d = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()))
            line = f"| {cls} | {name} | {block[0]}:{block[1]} ({n_scored} intact) | {sw:.3f} | {dm:.3f} | {d} |"
            lines.append(line)
            print(line, flush=True)
    text = "\n".join(lines) + "\n"
    (a.out / f"enrollment-{a.golden}-k{a.k}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
