"""What a scoring recipe costs: ms per score of several bundles, against the first.

One process, the bundles interleaved sample by sample (so machine load hits them alike),
medians over the samples; the same samples for every bundle. The ratio to the first
bundle is the result (absolute times on a shared machine are noise).

    .venv/bin/python bench/score_variants.py runs/b-mean runs/b-top4 runs/b-std4 \\
        --samples ../shared/data/paper-rgbd/sphere --frames 700:760 [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

from calibration.scoring import make_scorer
from agent.scoring.bundle import Bundle
from agent.segment.preprocess import sample_to_input
from agent.sources.dataset import check_preprocessing, frame_numbers, parse_frames, read_model_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--samples", required=True, help="a class folder")
    ap.add_argument("--frames", default=None)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    bundles = [Bundle.load(b) for b in a.bundles]
    scorers = [make_scorer(b, "onnxruntime", 0, a.threads) for b in bundles]
    from pathlib import Path
    folder = Path(a.samples)
    xs = []
    for n in frame_numbers(folder, parse_frames(a.frames)):
        per = []
        for b in bundles:
            rec = check_preprocessing(folder, b.preprocessing)
            per.append(sample_to_input(read_model_sample(folder, n, b.preprocessing, rec), b.size))
        xs.append(per)
    times: list[list[float]] = [[] for _ in bundles]
    for per in xs:
        for i, (s, x) in enumerate(zip(scorers, per)):
            t0 = time.perf_counter()
            s.score(x)
            times[i].append(time.perf_counter() - t0)
    base = statistics.median(times[0])
    print(f"{len(xs)} samples of {folder}, ONNX Runtime, medians")
    print("| bundle | framing | score | ms per score | ratio to the first |")
    print("|---|---|---|---|---|")
    for path, b, t in zip(a.bundles, bundles, times):
        m = statistics.median(t)
        print(f"| {path} | {b.preprocessing.framing} | {b.search.describe_score()} | {1e3 * m:.1f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
