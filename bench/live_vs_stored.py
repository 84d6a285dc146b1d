"""Live samples against stored ones (issue 15): does a model score a part the same whether
its sample was stored (the paper's layout: RGB as JPEG) or comes live from the camera?

Takes a demo's output folder (`adgan demo --out OUT`: its bundles and its cached synthetic
test parts). Renders N new normal parts of the class on the demo's station (its seed, one
product per class), segments and frames them as the agent does, and scores them three ways
with the class's bundle: raw (the agent before it applied the stored JPEG), through the
training samples' JPEG round trip (`like_stored`, what the agent does now), and, for
reference, the demo's stored normal test parts as calibration reads them. Prints the
median, 90th percentile and maximum of each, and the median raw/stored ratio per part.

    .venv/bin/python bench/live_vs_stored.py out/demo --seed 0 --cls cylinder --n 30
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without an install

import numpy as np  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", help="an adgan demo output folder (bundles/, cache/data/test/)")
    ap.add_argument("--seed", type=int, default=0, help="the demo's --seed (its station)")
    ap.add_argument("--cls", default="cylinder")
    ap.add_argument("--n", type=int, default=30, help="new parts to render (default 30)")
    ap.add_argument("--variety", default="product", help="the demo's --variety (default product)")
    a = ap.parse_args()

    from agent.frame import Sample
    from agent.scoring.backend import backend_settings, open_backend
    from agent.scoring.bundle import Bundle
    from agent.scoring.search import Searcher
    from agent.segment.preprocess import like_stored, make_sample, sample_to_input
    from agent.segment.reference import SurfaceReference
    from agent.segment.segmentation import SegmentationConfig, Segmenter
    from agent.sources.dataset import frame_numbers, read_sample
    from agent.sources.synthetic import SyntheticSource
    from agent.sources.synthetic_station import SyntheticStation

    demo = Path(a.demo)
    b = Bundle.load(demo / "bundles" / a.cls)
    prep = b.preprocessing
    sr = Searcher(b, open_backend(b, backend_settings("onnxruntime", threads=1)), seed=0)

    def score(s: Sample) -> float:
        return float(sr.score(sample_to_input(s, b.size)).score)

    test = demo / "cache" / "data" / "test" / a.cls
    stored = [score(read_sample(test, n)) for n in frame_numbers(test)]
    station = SyntheticStation(640, 480, a.seed, a.variety)
    src = SyntheticSource(seed=a.seed, station=station)
    seg = Segmenter(SegmentationConfig(), SurfaceReference.from_frames(src.empty_frames(10)))
    q = prep.rgb_jpeg_quality or 95  # bundles made before it was recorded: what adgan dataset writes
    jprep = replace(prep, rgb_jpeg_quality=q)
    raw, live = [], []
    for i in range(a.n):
        rng = np.random.default_rng([a.seed, 99, i])
        f = station.render(rng, station.random_part(rng, a.cls), None)
        s = make_sample(f, seg(f), prep)
        raw.append(score(s))
        live.append(score(like_stored(s, jprep)))
    print(f"{a.cls}, station seed {a.seed}, bundle {b.bundle_hash[:12]} (rgb_jpeg_quality {prep.rgb_jpeg_quality}; "
          f"round trip at {q})")
    for name, v in ((f"stored test normals ({len(stored)})", stored), (f"live raw ({a.n})", raw),
                    (f"live through JPEG {q} ({a.n})", live)):
        print(f"  {name:28s} median {np.median(v):.4f}  p90 {np.quantile(v, 0.9):.4f}  max {max(v):.4f}")
    print(f"  raw / through JPEG, per part: median {np.median(np.array(raw) / np.array(live)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
