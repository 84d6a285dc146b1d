"""Competing models for class swaps, by blocked cross-validation (issue 15; agent/decide/class_check.py).

A part of another product may be reproduced well by the expected class's model; it is
reproduced better still by its own product's. For the expected class c, a part's margin is

    ln s_c(x) - min over the other classes o of ln s_o(x)

with each class's model trained only on its frames outside the block (and the purge gap).
Class-swap AUROC: c's block frames (normal) against the other classes' block frames.

    pca     per-class PCA reconstruction error (a screen: seconds), own error against the margin
    classifier  a station classifier over the three classes per block (logistic regression on
            the pixels, and a small CNN): class c's score is -log p(c | x)
    folds   the generators of a bench/blocked_cv.py run of all three classes: the bundles' own
            scores (its evaluate reports) against the margins of the full scores, and of the
            scores at k 0 (the encoder's start; what the station runs); plus the k-0 margin on
            each class's damaged twins against their intact copies

    .venv/bin/python bench/competing.py pca ../shared/data/paper-rgbd --size 32 --components 16
    .venv/bin/python bench/competing.py pca ../shared/data/paper-rgbd --size 64 --pool 2   # the bundle's class PCA
    .venv/bin/python bench/competing.py classifier ../shared/data/paper-rgbd --size 32 --seed 0
    .venv/bin/python bench/competing.py folds ../shared/data/paper-rgbd runs/cv/compete-q
    .venv/bin/python bench/competing.py operating ../shared/data/paper-rgbd runs/cv/compete-q --fpr 0.05,0.1

    --pca (folds, operating): also the check with the bundles' class PCAs (model "pca", the default since
            2026-12-08), beside the generators' at k 0.

    operating: the station's rule at one false alarm rate: a part is flagged when its score (the
            full search) is over its threshold, or, with the check, when its k-0 margin is over its
            own; thresholds from the block's own intact parts (the same for both rules), the check's
            sharing the budget (calibration/metrics.py joint_target_fpr_thresholds). Reports the
            share of class swaps and of damaged twins (all five defects) flagged.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

CLASSES = ("sphere", "cylinder", "rectangle")
DEFECTS = ("chunk", "hole", "stain", "foreign", "dent")


def blocks(folds: int) -> list[tuple[int, int]]:
    from blocked_cv import blocks as cut
    return cut(0, 1000, folds)


def report(res: dict) -> None:
    for (c, name), v in res.items():
        print(f"{c:10s} {name:16s} worst {min(v):.3f} mean {np.mean(v):.3f} folds " + "/".join(f"{a:.3f}" for a in v))


def log_margin(own: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """agent/decide/class_check.py's margin, for arrays of scores."""
    from agent.decide.class_check import FLOOR
    return np.log(np.maximum(own, FLOOR)) - np.log(np.maximum(np.min(others, axis=0), FLOOR))


def cmd_pca(a) -> None:
    from training.data import load_class
    data = {}
    for c in CLASSES:
        d = load_class(a.data, c, a.size, (0, 1000), framing="object")
        x = d.x.numpy()
        if a.pool > 1:  # the bundle's input, averaged over pool x pool pixels (agent/decide/class_model.py)
            n, ch, h, w = x.shape
            x = x.reshape(n, ch, h // a.pool, a.pool, w // a.pool, a.pool).mean((3, 5))
        data[c] = (x.reshape(len(d.frames), -1), np.array(d.frames))
    res: dict = {}
    for b0, b1 in blocks(a.folds):
        test = {c: x[(n >= b0) & (n < b1)] for c, (x, n) in data.items()}
        train = {c: x[(n < b0 - a.purge) | (n >= b1 + a.purge)] for c, (x, n) in data.items()}
        allx = np.concatenate([test[c] for c in CLASSES])
        lab = np.concatenate([np.full(len(test[c]), c) for c in CLASSES])
        err = {}
        for c in CLASSES:
            mu = train[c].mean(0)
            v = np.linalg.svd(train[c] - mu, full_matrices=False)[2][: a.components]
            r = (allx - mu) - ((allx - mu) @ v.T) @ v
            err[c] = (r ** 2).mean(1)
        for c in CLASSES:
            y = (lab != c).astype(int)
            others = [err[o] for o in CLASSES if o != c]
            res.setdefault((c, "own"), []).append(roc_auc_score(y, err[c]))
            res.setdefault((c, "difference"), []).append(roc_auc_score(y, err[c] - np.min(others, axis=0)))
            res.setdefault((c, "log margin"), []).append(roc_auc_score(y, log_margin(err[c], others)))
    print(f"PCA, {a.components} components, {a.size} px cropped to the part (pooled {a.pool}), {a.folds} blocks "
          f"of 0:1000, "
          f"purge {a.purge}")
    report(res)


def classifier_net(channels: int = 4, n: int = 3):
    """The screen's small CNN: 4 stride-2 convolutions (32-64-128-128), BN, ReLU, global average pool."""
    import torch.nn as nn
    layers, c = [], channels
    for w in (32, 64, 128, 128):
        layers += [nn.Conv2d(c, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n))


def train_classifier(x, y, seed: int, epochs: int = 30):
    """The CNN on samples `x` (N, 4, S, S; [-1, 1]) with labels `y`: Adam 1e-3, batch 64, classes
    sampled evenly, flips and a brightness/contrast jitter of the RGB; returns log p(class | x) on call."""
    import torch
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    net = classifier_net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    weights = (1.0 / np.bincount(y))[y]
    weights /= weights.sum()
    for _ in range(epochs):
        net.train()
        for _ in range(max(1, len(y) // 64)):
            i = torch.as_tensor(gen.choice(len(y), 64, p=weights))
            xb = xt[i].clone()
            if gen.random() < 0.5:
                xb = xb.flip(3)
            if gen.random() < 0.5:
                xb = xb.flip(2)
            gain = torch.as_tensor(gen.uniform(0.7, 1.3, (64, 1, 1, 1)), dtype=xb.dtype)
            shift = torch.as_tensor(gen.uniform(-0.1, 0.1, (64, 1, 1, 1)), dtype=xb.dtype)
            xb[:, :3] = (xb[:, :3] * gain + shift).clamp(-1, 1)
            loss = torch.nn.functional.cross_entropy(net(xb), yt[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    def log_p(xs):
        with torch.no_grad():
            return torch.log_softmax(net(torch.as_tensor(xs)), 1).numpy()
    return log_p


def cmd_classifier(a) -> None:
    """A station classifier over the three classes, per block (the screen in bench/RESULTS.md)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from training.data import load_class
    torch.set_num_threads(a.threads)
    data = {}
    for c in CLASSES:
        d = load_class(a.data, c, a.size, (0, 1000), framing="object")
        data[c] = (d.x.numpy(), np.array(d.frames))
    res: dict = {}
    for b0, b1 in blocks(a.folds):
        test = {c: x[(n >= b0) & (n < b1)] for c, (x, n) in data.items()}
        train = {c: x[(n < b0 - a.purge) | (n >= b1 + a.purge)] for c, (x, n) in data.items()}
        xtr = np.concatenate([train[c] for c in CLASSES])
        ytr = np.concatenate([np.full(len(train[c]), i) for i, c in enumerate(CLASSES)])
        xte = np.concatenate([test[c] for c in CLASSES])
        lab = np.concatenate([np.full(len(test[c]), c) for c in CLASSES])
        flat = {k: v.reshape(len(v), -1).astype(np.float64) for k, v in (("tr", xtr), ("te", xte))}
        scaler = StandardScaler().fit(flat["tr"])
        lr = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(flat["tr"]), ytr)
        lp = {"logistic": lr.predict_log_proba(scaler.transform(flat["te"])),
              "cnn": train_classifier(xtr, ytr, a.seed)(xte)}
        for name, logp in lp.items():
            for i, c in enumerate(CLASSES):
                res.setdefault((c, name), []).append(roc_auc_score((lab != c).astype(int), -logp[:, i]))
        print(f"block {b0}:{b1} done", flush=True)
    print(f"station classifier, {a.size} px cropped to the part, {a.folds} blocks of 0:1000, purge {a.purge}, "
          f"training seed {a.seed}")
    report(res)


def read_scores(path: Path) -> dict:
    with open(path) as fh:
        return {r["path"]: (r["class"], float(r["score"])) for r in csv.DictReader(fh)}


def k0_scores(bundle, frames, root: Path, cache: Path) -> dict:
    """path -> (class folder, the bundle's score at k 0) of every sample under root (cached)."""
    from calibration.scoring import make_scorer, score_folder
    if cache.exists():
        return read_scores(cache)
    scorer = make_scorer(bundle, "onnxruntime", 0, k=0)
    rows = list(score_folder(scorer, bundle, root, frames, False))
    with open(cache, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "class", "score"])
        w.writerows(rows)
    return {p: (c, s) for p, c, s in rows}


def pca_errors(bundle, frames, root: Path) -> dict:
    """path -> (class folder, the bundle's class PCA error) of every sample under root (agent/scoring/class_pca.py:
    the class check's model "pca")."""
    from calibration.class_check import PCAScorer
    from calibration.scoring import score_folder
    if bundle.class_pca is None:
        raise SystemExit(f"{bundle.path} has no class PCA (exported before 2026-12-08): export it again")
    return {p: (c, s) for p, c, s in score_folder(PCAScorer(bundle), bundle, root, frames, False)}


def evaluated_folds(a):
    """For each fold of the run whose classes are all evaluated: (its folder, its reports and
    bundles by class, frames, full scores and k-0 scores by class (path -> (class, score)), the
    block's paths in order, their class labels)."""
    from agent.scoring.bundle import Bundle
    out = Path(a.run)
    for f, (b0, b1) in enumerate(blocks(a.folds)):
        fold = out / f"fold{f}"
        reports = {c: fold / c / f"report-{a.variant}-every{a.every}" for c in CLASSES}
        if not all((r / "scores").is_dir() for r in reports.values()):
            print(f"fold {f}: not every class is evaluated yet; left out")
            continue
        bundles = {c: Bundle.load(fold / c / f"bundle-{a.variant}") for c in CLASSES}
        full = {c: read_scores(reports[c] / "scores" / f"{c}-{b.kind}-{b.bundle_hash[:8]}.csv")
                for c, b in bundles.items()}
        frames = (b0, b1, a.every)
        k0 = {c: k0_scores(b, frames, Path(a.data), out / f"k0-{b.bundle_hash[:12]}-data.csv")
              for c, b in bundles.items()}
        paths = sorted(full[CLASSES[0]])
        lab = np.array([full[CLASSES[0]][p][0] for p in paths])
        yield fold, reports, bundles, frames, full, k0, paths, lab


def cmd_folds(a) -> None:
    out, res = Path(a.run), {}
    for fold, reports, bundles, frames, full, k0, paths, lab in evaluated_folds(a):
        F = {c: np.array([full[c][p][1] for p in paths]) for c in CLASSES}
        K = {c: np.array([k0[c][p][1] for p in paths]) for c in CLASSES}
        for c in CLASSES:
            y = (lab != c).astype(int)
            others = [o for o in CLASSES if o != c]
            for name, s in (("own", F[c]), ("difference", F[c] - np.min([F[o] for o in others], axis=0)),
                            ("log margin", log_margin(F[c], [F[o] for o in others])), ("own k0", K[c]),
                            ("k0 log margin", log_margin(K[c], [K[o] for o in others]))):
                res.setdefault((c, name), []).append(roc_auc_score(y, s))
            if a.pca:
                pe = {o: pca_errors(b, frames, Path(a.data)) for o, b in bundles.items()}
                P = {o: np.array([pe[o][p][1] for p in paths]) for o in CLASSES}
                res.setdefault((c, "pca log margin"), []).append(
                    roc_auc_score(y, log_margin(P[c], [P[o] for o in others])))
        damaged = fold / "damaged"
        kd = {c: k0_scores(b, frames, damaged, out / f"k0-{b.bundle_hash[:12]}-damaged.csv")
              for c, b in bundles.items()}
        for c in CLASSES:
            intact = [p for p, (folder, _) in kd[c].items() if folder == c]
            for d in (*DEFECTS, "all"):
                bad = [p for p, (folder, _) in kd[c].items()
                       if folder == f"{c}_{d}" or (d == "all" and folder.startswith(c + "_"))]
                ps = intact + bad
                m = log_margin(np.array([kd[c][p][1] for p in ps]),
                               [np.array([kd[o][p][1] for p in ps]) for o in CLASSES if o != c])
                res.setdefault((c, f"damage {d}"), []).append(
                    roc_auc_score(np.r_[np.zeros(len(intact)), np.ones(len(bad))], m))
    print(f"{out}: class swaps and damage by the k-0 margin, {a.folds} blocks, every {a.every}")
    report(res)


def damage_full(report: Path, c: str, b) -> dict:
    """(folder, frame) -> the bundle's full score of its damaged twins and their intact copies."""
    with open(report / "scores" / f"damage-{c}-{b.kind}-{b.bundle_hash[:8]}.csv") as fh:
        return {(r["folder"], int(r["frame"])): float(r["score"]) for r in csv.DictReader(fh)}


def at_budget(own, marg, normal, d_own, d_marg, alpha: float) -> dict[str, tuple]:
    """rule -> (class swaps flagged, damaged flagged, normals flagged, per-check allowance) at false
    alarm budget `alpha` on the parts where `normal`, for the score alone and for the score or the
    check with the budget shared (as `adgan calibrate --class-check` chooses them)."""
    from calibration.metrics import joint_target_fpr_thresholds, target_fpr_threshold
    t = target_fpr_threshold(own[normal], alpha)
    (ts, tm), j = joint_target_fpr_thresholds(np.stack([own[normal], marg[normal]], 1), alpha)
    out = {}
    for name, fs, fd, share in (("score", own > t, d_own > t, None),
                                ("score+check", (own > ts) | (marg > tm), (d_own > ts) | (d_marg > tm), j)):
        out[name] = (fs[~normal].mean(), fd.mean(), fs[normal].mean(), share)
    return out


def cmd_operating(a) -> None:
    out, res = Path(a.run), {}
    alphas = [float(v) for v in a.fpr.split(",")]
    for fold, reports, bundles, frames, full, k0, paths, lab in evaluated_folds(a):
        kd = {c: k0_scores(b, frames, fold / "damaged", out / f"k0-{b.bundle_hash[:12]}-damaged.csv")
              for c, b in bundles.items()}
        kd = {c: {(folder, int(Path(p).stem)): s for p, (folder, s) in v.items()} for c, v in kd.items()}
        for c in CLASSES:
            others = [o for o in CLASSES if o != c]
            own = np.array([full[c][p][1] for p in paths])
            marg = log_margin(np.array([k0[c][p][1] for p in paths]),
                              [np.array([k0[o][p][1] for p in paths]) for o in others])
            dfull = damage_full(reports[c], c, bundles[c])
            bad = sorted(k for k in dfull if k[0].startswith(c + "_"))
            d_own = np.array([dfull[k] for k in bad])
            d_marg = log_margin(np.array([kd[c][k] for k in bad]), [np.array([kd[o][k] for k in bad]) for o in others])
            pm = pm_d = None
            if a.pca:  # the class check with the bundles' class PCAs (model "pca"), the same budget
                pe = {o: pca_errors(b, frames, Path(a.data)) for o, b in bundles.items()}
                pd = {o: {(folder, int(Path(p).stem)): e for p, (folder, e) in
                          pca_errors(b, frames, fold / "damaged").items()} for o, b in bundles.items()}
                pm = log_margin(np.array([pe[c][p][1] for p in paths]),
                                [np.array([pe[o][p][1] for p in paths]) for o in others])
                pm_d = log_margin(np.array([pd[c][k] for k in bad]),
                                  [np.array([pd[o][k] for k in bad]) for o in others])
            for alpha in alphas:
                for name, v in at_budget(own, marg, lab == c, d_own, d_marg, alpha).items():
                    res.setdefault((c, alpha, name), []).append(v)
                if pm is not None:
                    v = at_budget(own, pm, lab == c, d_own, pm_d, alpha)["score+check"]
                    res.setdefault((c, alpha, "score+pca"), []).append(v)
    print(f"{out}: flagged at one false alarm budget on the block's intact parts, {a.folds} blocks, every {a.every}")
    print("class      fpr   rule          swaps worst/mean   damage worst/mean   normals flagged   per-check j")
    for (c, alpha, name), v in res.items():
        v = np.array(v, dtype=object)
        print(f"{c:10s} {alpha:.2f}  {name:12s}  {v[:, 0].min():.3f} / {v[:, 0].mean():.3f}      "
              f"{v[:, 1].min():.3f} / {v[:, 1].mean():.3f}       " + "/".join(f"{x:.3f}" for x in v[:, 2])
              + ("   " + "/".join(str(int(x)) for x in v[:, 3]) if v[0, 3] is not None else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("pca")
    q.add_argument("data")
    q.add_argument("--size", type=int, default=32)
    q.add_argument("--components", type=int, default=16)
    q.add_argument("--pool", type=int, default=1, help="average the input over pool x pool pixels first")
    q.add_argument("--folds", type=int, default=3)
    q.add_argument("--purge", type=int, default=20)
    q.set_defaults(func=cmd_pca)
    q = sub.add_parser("classifier")
    q.add_argument("data")
    q.add_argument("--size", type=int, default=32)
    q.add_argument("--folds", type=int, default=3)
    q.add_argument("--purge", type=int, default=20)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=2)
    q.set_defaults(func=cmd_classifier)
    for name, func in (("folds", cmd_folds), ("operating", cmd_operating)):
        q = sub.add_parser(name)
        q.add_argument("data", help="the dataset root the run was made from, spelled as it was (report paths match)")
        q.add_argument("run", help="a bench/blocked_cv.py --out folder with all three classes (k-0 scores are "
                                   "cached there)")
        q.add_argument("--folds", type=int, default=3)
        q.add_argument("--every", type=int, default=3)
        q.add_argument("--variant", default="def")
        q.add_argument("--pca", action="store_true",
                       help="also the class check with the bundles' class PCAs (bundles exported since 2026-12-08)")
        if name == "operating":
            q.add_argument("--fpr", default="0.05,0.1", help="false alarm budgets, comma-separated")
        q.set_defaults(func=func)
    a = ap.parse_args()
    a.func(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
