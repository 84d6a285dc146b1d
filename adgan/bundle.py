"""`adgan bundle info BUNDLE`: what a bundle is; `adgan engine build BUNDLE`: its TensorRT engines."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def bundle_info(path: str | Path, thresholds: str | Path | None = None) -> dict:
    """A verified bundle's identity, recipe, files, engines and (with a thresholds file) its calibration."""
    from agent.decide.thresholds import read_thresholds
    from agent.scoring.bundle import Bundle

    b = Bundle.load(path)  # refuses a tampered bundle
    m = b.manifest
    engines = []
    for sidecar in sorted((b.path / "engines").glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as e:
            meta = {"error": f"unreadable sidecar: {e}"}
        engines.append({"file": sidecar.name, "current": meta.get("bundle_hash") == b.bundle_hash,
                        "plans": sorted(e.get("file", "?") for e in (meta.get("engines") or {}).values()),
                        **{k: meta[k] for k in ("tensorrt", "gpu", "fp16", "error") if k in meta}})
    info = {"path": str(b.path), "class": b.cls, "kind": b.kind, "bundle_hash": b.bundle_hash,
            "producer": m.get("producer"), "created": m.get("created"), "architecture": m["architecture"],
            "preprocessing": m["preprocessing"], "search": m["search"], "score": b.describe_score(),
            "training": m.get("training"), "files": m["files"], "engines": engines,
            "graphs": {k: m["graphs"].get(k) for k in ("seeds_per_call", "x_batch", "loss_scale")},
            **({"operating_point": m["operating_point"]} if "operating_point" in m else {}),
            **({"relief": m["relief"]} if "relief" in m else {})}
    if thresholds is not None:
        rec = read_thresholds(thresholds)["classes"].get(b.cls)
        if rec is None:
            info["calibration"] = {"file": str(thresholds), "status": f"no threshold for class {b.cls!r}"}
        else:
            ok = rec.get("bundle_hash") == b.bundle_hash
            info["calibration"] = {"file": str(thresholds), "status": "valid for this bundle" if ok else
                                   "calibrated on another bundle: the agent refuses it",
                                   **{k: rec.get(k) for k in ("threshold", "policy", "engine", "seed", "metrics",
                                                              "created")}}
    return info


def format_info(info: dict) -> str:
    s, a, p = info["search"], info["architecture"], info["preprocessing"]
    lines = [f"bundle      {info['path']}",
             f"class       {info['class']} ({info['kind']})",
             f"hash        {info['bundle_hash']}",
             f"made by     {info['producer']} at {info['created']}",
             f"model       {a['size']} px, nz {a['nz']}, features_g {a['features_g']}",
             f"framing     {p.get('framing', 'frame')}, depth {p['depth_norm']}",
             f"search      start {s.get('z_init', 'random')}, theta scope {s['theta_scope']}, loss {s['loss']}, "
             f"pool {s.get('pool', 1)}, n_seed {s['n_seed']}, k {s['k']}, score {info['score']}"
             + (f", {s['parts_per_call']} parts per call" if s.get("parts_per_call", 1) > 1 else "")]
    if info.get("operating_point"):
        o = info["operating_point"]
        lines.append(f"operating   {o['name']} ({o['asked']}): {o['measured_ms']} ms per score on {o['machine']}, "
                     f"{o['threads']} thread(s) (default {o['default_ms']} ms); validated quality "
                     f"{o.get('quality', {}).get('quality', '?')}")
    if info.get("training"):
        t = info["training"]
        lines.append(f"trained     {t.get('run')} ({t.get('weights')}, epoch {t.get('epoch')})")
    lines += [f"file        {name}  sha256 {digest[:16]}..." for name, digest in sorted(info["files"].items())]
    if not info["engines"]:
        lines.append("engines     none (build them on the Jetson: adgan engine build BUNDLE)")
    for e in info["engines"]:
        state = "current" if e["current"] else "STALE: built from another bundle"
        lines.append(f"engine      {e['file']} ({', '.join(f'{k} {e[k]}' for k in ('tensorrt', 'gpu', 'fp16') if k in e)}"
                     f"; {state})")
    if "calibration" in info:
        c = info["calibration"]
        extra = f": threshold {c['threshold']:.6g} ({c['policy']}, engine {c['engine']})" if "threshold" in c else ""
        lines.append(f"calibration {c['file']}: {c['status']}{extra}")
    return "\n".join(lines)


def cmd_bundle_info(a: argparse.Namespace) -> int:
    info = bundle_info(a.bundle, a.thresholds)
    print(json.dumps(info, indent=1) if a.json else format_info(info))
    return 0


def cmd_engine_build(a: argparse.Namespace) -> int:
    from agent.scoring.tensorrt import build_engine
    print(f"built {build_engine(a.bundle, fp16=a.fp16, device=a.device)}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bundle", help="look at a model bundle",
                       description="Model bundles: what 'adgan export' wrote, verified like the agent does.")
    bs = p.add_subparsers(dest="bundle_cmd", required=True, metavar="COMMAND")
    q = bs.add_parser("info", help="class, recipe, hashes, engines and calibration of a bundle",
                      description="Verify a bundle (every hash, as the agent does) and show its class, GAN kind, "
                                  "preprocessing, search recipe, the sha256 of every file, its TensorRT engines "
                                  "and, with --thresholds, whether that file holds a threshold for it.")
    q.add_argument("bundle", help="bundle folder")
    q.add_argument("--thresholds", default=None, help="thresholds.json to check this bundle's calibration in")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.set_defaults(func=cmd_bundle_info)

    p = sub.add_parser("engine", help="TensorRT engines of a bundle (on the Jetson)",
                       description="TensorRT engines are built on the device that runs them.")
    es = p.add_subparsers(dest="engine_cmd", required=True, metavar="COMMAND")
    q = es.add_parser("build", help="build a bundle's TensorRT engines on this machine",
                      description="Build the step and loss engines of a bundle with this machine's TensorRT and "
                                  "GPU into BUNDLE/engines/, each with a sidecar naming the bundle hash. The old "
                                  "spelling 'adgan export build-engine BUNDLE' does the same.")
    q.add_argument("bundle", help="bundle folder")
    q.add_argument("--fp16", action="store_true", help="fp16 engines (theta and Adam moments stay fp32)")
    q.add_argument("--device", type=int, default=0, help="CUDA device index")
    q.set_defaults(func=cmd_engine_build)
