"""A latent density screen, by blocked cross-validation (issue 15).

The search starts at the encoder's code E(x). A part of another product, or a damaged one, may be
reproduced well by G and still be coded where the training parts never were. Two scores, on the
bundles of a bench/blocked_cv.py run of all three classes (their evaluate reports hold the full
scores), with rules written before the numbers (bench/RESULTS.md):

    A  the Mahalanobis distance (squared) of E(x) from a Gaussian of the class's training frames'
       codes (0:1000 outside the block and its purge gap, every `--every` frame; Ledoit-Wolf
       shrinkage)
    B  zA + zS: ln A and ln(the bundle's full score), each standardised by its mean and standard
       deviation over the same training frames

    .venv/bin/python bench/latent_density.py ../shared/data/paper-rgbd runs/cv/compete-q

Class swaps: a class's block frames (every `--every`) against the other classes'; damage: each
class's damaged twins (the run's fold*/damaged) against their intact copies.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import numpy as np  # noqa: E402
from sklearn.covariance import LedoitWolf  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from competing import CLASSES, DEFECTS, blocks, report  # noqa: E402


def inputs(bundle, folder: Path, numbers) -> np.ndarray:
    """The model inputs of `folder`'s samples numbered `numbers` (the bundle's preprocessing)."""
    from agent.segment.preprocess import sample_to_input
    from agent.sources.dataset import check_preprocessing, read_model_sample
    rec = check_preprocessing(folder, bundle.preprocessing)
    return np.stack([sample_to_input(read_model_sample(folder, n, bundle.preprocessing, rec), bundle.size)
                     for n in numbers]).astype(np.float32)


def encoder(bundle):
    """E, the bundle's own encoder graph: a function of a batch of inputs, one code per row."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(bundle.path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: np.concatenate([sess.run(None, {name: x[i:i + 1]})[0].reshape(1, -1) for i in range(len(x))])


def full_scores(bundle, x: np.ndarray) -> np.ndarray:
    from calibration.scoring import make_scorer
    scorer = make_scorer(bundle, "onnxruntime", 0)
    return np.array([scorer.score(xi).score for xi in x])


def numbers_in(folder: Path, keep) -> list[int]:
    from agent.sources.dataset import frame_numbers
    return [n for n in frame_numbers(folder, None) if keep(n)]


def screen(a, features, name: str) -> dict:
    """The blocked screen both this script and bench/silhouette.py run: for each block and class, A the
    squared Mahalanobis distance of `features(bundle)(folder, numbers)` (an array, one row per sample)
    from a Ledoit-Wolf Gaussian of the class's training frames', and B ln A and ln(the bundle's full
    score) standardised over the same frames and summed; class swaps and damage AUROCs per fold, keyed
    (class, "swap own" / "swap A <name>" / "dmg <defect> B combined" ...)."""
    from agent.scoring.bundle import Bundle
    from agent.sources.dataset import rgb_path
    data, out, res = Path(a.data), Path(a.run), {}
    for f, (b0, b1) in enumerate(blocks(a.folds)):
        fold = out / f"fold{f}"
        block = {c: numbers_in(data / c, lambda n: b0 <= n < b1 and (n - b0) % a.every == 0) for c in CLASSES}
        for c in CLASSES:
            b = Bundle.load(fold / c / f"bundle-{a.variant}")
            feats = features(b)
            tr = numbers_in(data / c, lambda n: (n < b0 - a.purge or n >= b1 + a.purge) and n % a.every == 0)
            ft = feats(data / c, tr)
            lw = LedoitWolf().fit(ft)
            la_t = np.log(lw.mahalanobis(ft))
            ls_t = np.log(full_scores(b, inputs(b, data / c, tr)))

            def combined(la, ls):
                return (la - la_t.mean()) / la_t.std() + (ls - ls_t.mean()) / ls_t.std()
            scores = fold / c / f"report-{a.variant}-every{a.every}" / "scores"
            with open(scores / f"{c}-{b.kind}-{b.bundle_hash[:8]}.csv") as fh:
                full = {r["path"]: float(r["score"]) for r in csv.DictReader(fh)}
            la, ls, y = [], [], []
            for o in CLASSES:
                la.append(np.log(lw.mahalanobis(feats(data / o, block[o]))))
                ls.append(np.log([full[str(rgb_path(data / o, n))] for n in block[o]]))
                y += [int(o != c)] * len(block[o])
            la, ls, y = np.concatenate(la), np.concatenate(ls), np.array(y)
            for label, s in (("own", ls), (f"A {name}", la), ("B combined", combined(la, ls))):
                res.setdefault((c, f"swap {label}"), []).append(roc_auc_score(y, s))
            with open(scores / f"damage-{c}-{b.kind}-{b.bundle_hash[:8]}.csv") as fh:
                dfull = {(r["folder"], int(r["frame"])): float(r["score"]) for r in csv.DictReader(fh)}
            by_folder: dict[str, list[int]] = {}
            for folder, n in sorted(dfull):
                by_folder.setdefault(folder, []).append(n)
            dla, dls, lab = [], [], []
            for folder, ns in by_folder.items():
                dla.append(np.log(lw.mahalanobis(feats(fold / "damaged" / folder, ns))))
                dls.append(np.log([dfull[(folder, n)] for n in ns]))
                lab += [folder] * len(ns)
            dla, dls, lab = np.concatenate(dla), np.concatenate(dls), np.array(lab)
            for d in (*DEFECTS, "all"):
                m = (lab == c) | ((lab == f"{c}_{d}") if d != "all" else np.char.startswith(lab, c + "_"))
                yy = (lab[m] != c).astype(int)
                for label, s in (("own", dls), (f"A {name}", dla), ("B combined", combined(dla, dls))):
                    res.setdefault((c, f"dmg {d} {label}"), []).append(roc_auc_score(yy, s[m]))
            print(f"fold {f} {c} done", flush=True)
    return res


def arguments(doc: str):
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("run")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--purge", type=int, default=20)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--variant", default="def")
    return p.parse_args()


def main() -> int:
    a = arguments(__doc__)

    def codes(bundle):
        e = encoder(bundle)
        return lambda folder, numbers: e(inputs(bundle, folder, numbers))
    res = screen(a, codes, "latent")
    print(f"{a.run}: latent density screen, {a.folds} blocks, every {a.every}, purge {a.purge}")
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
