"""`adgan calibrate`: a class threshold from scores of labelled samples, with the device's scorer."""
from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from agent.decide.thresholds import check_writable, write_threshold
from agent.scoring.bundle import Bundle
from agent.sources.dataset import parse_frames
from calibration.class_check import aligned, check_model, class_check_record, load_rivals, with_threshold
from calibration.metrics import (POLICIES, auc, equal_rates_threshold, joint_target_fpr_thresholds,
                                 max_accuracy_threshold, rates, summary, target_fpr_threshold)
from calibration.scoring import SCORER_BACKENDS, engine_id, make_scorer, score_folder

FEW_ANOMALIES = 10


def choose_threshold(normal: np.ndarray, anomalous: np.ndarray, policy: str, fpr: float) -> tuple[float, list[str]]:
    """(threshold, warnings) for a policy."""
    warns = []
    if policy not in POLICIES:
        raise ValueError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if len(normal) < 2:
        raise ValueError(f"calibration needs normal samples; got {len(normal)}")
    if policy != "target-fpr" and len(anomalous) == 0:
        raise ValueError(f"--policy {policy} needs anomalous samples (--anomalous DIR); with normal samples only "
                         "use --policy target-fpr")
    if 0 < len(anomalous) < FEW_ANOMALIES:
        warns.append(f"only {len(anomalous)} anomalous samples: the threshold and the reported rates are uncertain")
    if len(anomalous) and anomalous.min() > normal.max():
        warns.append("normal and anomalous scores do not overlap at all: a suspiciously easy set; check that the "
                     "anomalies look like the defects the line will see")
    if policy == "target-fpr" and fpr * len(normal) < 1:
        warns.append(f"--fpr {fpr} with {len(normal)} normal samples allows no false alarm on this set: the "
                     "threshold is the highest normal score")
    if policy == "max-accuracy":
        return max_accuracy_threshold(normal, anomalous), warns
    if policy == "equal-rates":
        return equal_rates_threshold(normal, anomalous), warns
    return target_fpr_threshold(normal, fpr), warns


@dataclass(frozen=True)
class CalibrateOptions:
    """What `adgan calibrate` takes (see its help)."""

    bundle: str
    normal: str
    anomalous: Sequence[str] | None = None
    policy: str = "target-fpr"
    fpr: float = 0.01
    out: str = "thresholds.json"
    backend: str = "onnxruntime"
    fp16: bool = False
    seed: int = 0
    frames: str | None = None
    quiet: bool = False
    class_check: Sequence[str] | None = None
    class_check_model: str = "auto"


def check_apart(normal: str, anomalous: Sequence[str]) -> None:
    """Refuse an anomalous folder that is the normal one, holds it or lies in it: its samples would
    count as both (`--anomalous data/test` beside `--normal data/test/sphere` took the normal parts
    for anomalies, and the threshold from them was written as any other)."""
    n = Path(normal).resolve()
    for d in anomalous:
        r = Path(d).resolve()
        if r == n or r in n.parents or n in r.parents:
            raise ValueError(f"--anomalous {d} and --normal {normal} hold the same samples "
                             f"({'the same folder' if r == n else 'one folder is inside the other'}): a sample is "
                             "normal or anomalous; give the anomalous class folders one by one")


def calibrate(o: CalibrateOptions) -> dict:
    """Score the labelled samples with the bundle and the device's scorer, choose the threshold by
    the policy and write it into the thresholds file; the record written."""
    check_apart(o.normal, o.anomalous or [])
    check_writable(o.out)  # (refused before minutes of scoring, not after)
    bundle = Bundle.load(o.bundle)
    rivals = load_rivals(bundle, o.class_check) if o.class_check else None  # refused before minutes of scoring
    if o.class_check_model != "auto" and not rivals:
        raise ValueError("--class-check-model chooses the class check's model: give --class-check BUNDLE ... too")
    model = check_model(bundle, rivals, o.class_check_model) if rivals else None
    scorer = make_scorer(bundle, o.backend, o.seed, fp16=o.fp16)
    frames = parse_frames(o.frames)
    normal_rows = [(f"{o.normal}:{p}", s) for p, _, s in score_folder(scorer, bundle, o.normal, frames, not o.quiet)]
    anomalous_rows = [(f"{d}:{p}", s) for d in (o.anomalous or [])
                      for p, _, s in score_folder(scorer, bundle, d, frames, not o.quiet)]
    normal, anomalous = np.array([s for _, s in normal_rows]), np.array([s for _, s in anomalous_rows])
    threshold, warns = choose_threshold(normal, anomalous, o.policy, o.fpr)
    for w in warns:  # (printed once: a log line as well said each twice)
        print(f"warning: {w}")
    check = None
    if rivals:
        cc = class_check_record(o, bundle, rivals, frames, model)
        m_normal = aligned(cc["normal"], [k for k, _ in normal_rows])
        m_anomalous = aligned(cc["anomalous"], [k for k, _ in anomalous_rows])
        if o.policy == "target-fpr":  # one budget for both: the station flags a part when either is over
            both, share = joint_target_fpr_thresholds(np.stack([normal, m_normal], 1), o.fpr)
            threshold, m_threshold = float(both[0]), float(both[1])
            m_warns = []
        else:
            m_threshold, m_warns = choose_threshold(m_normal, m_anomalous, o.policy, o.fpr)
            share = None
        check = with_threshold(cc, m_threshold, m_warns, m_normal, m_anomalous)
        either = {"fpr": float(((normal > threshold) | (m_normal > m_threshold)).mean())}
        if len(anomalous):
            either["tpr"] = float(((anomalous > threshold) | (m_anomalous > m_threshold)).mean())
        check["combined"] = {"budget": "shared" if share is not None else "each", "per_check_allowance": share,
                             "metrics": either}
    metrics = None
    if len(anomalous):
        metrics = {"auc": auc(normal, anomalous), **rates(normal, anomalous, threshold)}
    else:
        metrics = {"fpr": float((normal > threshold).mean())}
    params = getattr(scorer, "params", bundle.search)
    record = {
        "threshold": threshold, "policy": o.policy, "fpr_target": o.fpr if o.policy == "target-fpr" else None,
        "bundle_hash": bundle.bundle_hash, "bundle": str(bundle.path), "backend": o.backend,
        "engine": engine_id(o.backend, o.fp16), "seed": o.seed,
        "search": asdict(params), "counts": {"normal": int(len(normal)), "anomalous": int(len(anomalous))},
        "normal_scores": summary(normal), "anomalous_scores": summary(anomalous) if len(anomalous) else None,
        "metrics": metrics, "warnings": warns,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if check is not None:
        for w in check["warnings"]:
            print(f"warning: class check: {w}")
        record["class_check"] = check
    write_threshold(o.out, bundle.cls, record)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    print(f"{bundle.cls}: threshold {threshold:.6g} ({o.policy}) from {len(normal)} normal and {len(anomalous)} "
          f"anomalous samples; {shown} -> {o.out}")
    if check is not None:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in check["metrics"].items())
        both = ", ".join(f"{k} {v:.3f}" for k, v in check["combined"]["metrics"].items())
        shared = check["combined"]["per_check_allowance"]
        how = "the classes' PCA" if check["model"] == "pca" else f"the generators at k {check['k']}"
        print(f"{bundle.cls}: class check against {', '.join(check['rivals'])} ({how}): margin threshold "
              f"{check['threshold']:.6g}; {shown}; score or check: {both}"
              + (f" (the --fpr budget shared: each flags at most {shared} of the {len(normal)} normal samples)"
                 if shared is not None else ""))
    return record


def cmd_calibrate(a: argparse.Namespace) -> int:
    calibrate(CalibrateOptions(**{f.name: getattr(a, f.name) for f in fields(CalibrateOptions)}))
    return 0


def add_parser(sub) -> None:
    q = sub.add_parser("calibrate", help="calibrate per-class anomaly thresholds from labelled samples",
                       description="Score labelled samples with the bundle and the scorer the device runs, and "
                                   "write the class threshold to thresholds.json (other classes' entries are kept). "
                                   "A threshold is valid only for that bundle: the agent refuses it otherwise.")
    q.add_argument("bundle", help="bundle folder")
    q.add_argument("--normal", required=True, help="folder of normal samples of the bundle's class")
    q.add_argument("--anomalous", action="append", help="folder of anomalous samples (repeatable)")
    q.add_argument("--policy", choices=POLICIES, default=CalibrateOptions.policy,
                   help="max-accuracy; equal-rates (the paper's 'optimal': TPR = TNR); target-fpr (normal "
                        "samples only: flag at most --fpr of them; the default)")
    q.add_argument("--fpr", type=float, default=CalibrateOptions.fpr,
                   help="false alarm budget for target-fpr (default 0.01)")
    q.add_argument("--out", default=CalibrateOptions.out, help="thresholds file to create or update")
    q.add_argument("--backend", choices=SCORER_BACKENDS, default=CalibrateOptions.backend,
                   help="the engine the device will run: scores differ slightly between engines, so the agent "
                        "refuses a threshold calibrated on another engine (default onnxruntime)")
    q.add_argument("--fp16", action="store_true",
                   help="with --backend tensorrt: the fp16 engines (the agent's model.backend.fp16 must match)")
    q.add_argument("--seed", type=int, default=0, help="seed of the initial latents; the agent must use the same")
    q.add_argument("--frames", default=None, help="LO:HI frame numbers (half-open)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.add_argument("--class-check", nargs="+", metavar="BUNDLE", default=None,
                   help="bundles of the station's other classes: also calibrate the class check, which flags a "
                        "part that one of them reproduces better than this class's bundle does (ln ratio of the "
                        "class PCAs' errors, or of the generators' scores at k 0: --class-check-model), with the "
                        "same policy; with target-fpr the score and the check share the --fpr budget (a part over "
                        "either is flagged); the station must load these bundles")
    q.add_argument("--class-check-model", choices=("auto", "pca", "generator"), default="auto",
                   help="what the class check compares: each bundle's class PCA (pca), or each generator at k 0 "
                        "(generator); auto (the default): pca where every bundle has a class PCA (exported since "
                        "2026-12-08), else generator")
    q.set_defaults(func=cmd_calibrate)
