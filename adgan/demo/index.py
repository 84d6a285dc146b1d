"""The demo's report page: the station's summary, every part's line, samples and the
evaluation report, in out/demo/report/index.md."""
from __future__ import annotations

import json
from pathlib import Path

from adgan.demo.data import Plan


def _search_line(out: Path, cls: str) -> str:
    """The search this run's bundles run, as the manifest of its first class records it."""
    s = json.loads((out / "bundles" / cls / "manifest.json").read_text())["search"]
    return f"theta scope {s['theta_scope']}, loss {s['loss']}, pool {s['pool']}, n_seed {s['n_seed']}, k {s['k']}"


def write_index(out: Path, plan: Plan, summary: dict, lines: list[str], seconds: float) -> Path:
    a, s = plan.a, summary
    rep = out / "report"
    evaluation = (rep / "index.md").read_text() if (rep / "index.md").is_file() else ""
    gen = "".join(f"![{c}](generated-{c}.png) " for c in plan.classes if (rep / f"generated-{c}.png").is_file())
    text = [f"# adgan-edge demo ({'data ' + a.data if a.data else 'synthetic station'})", "",
            f"Finished in {seconds:.0f} s. Models: {a.kind}, {a.size} px, features {a.features}, {a.epochs} epochs; "
            f"search: {_search_line(out, plan.classes[0])}, "
            f"{f'starting at E(x) ({a.encoder_epochs}-epoch encoder)' if a.encoder_epochs else 'random z'}.", "",
            f"## The station: {s['parts_inspected']} parts inspected, expecting `{a.expected}`", "",
            "| parts | OK | NG | true anomalies | detected | missed | false alarms | errors | median latency |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {s['parts_inspected']} | {s['ok']} | {s['ng']} | {s['true_anomalies']} | {s['detected']} | "
            f"{s['missed']} | {s['false_alarms']} | {s['errors']} | {s['latency_ms_median']} ms |", "",
            "Every event as the subscriber received it: `live/events.jsonl`; the agent's log: `live/agent.log`.",
            "", "```", *lines, "```", "", "## Training samples and generated samples", "",
            "![samples](samples.png)", "", gen, "",
            *(["## Segmentation (the paper's Figure 1)", "", "![segmentation](segmentation.png)", ""]
              if (rep / "segmentation.png").is_file() else []), evaluation.replace("# Evaluation report", "## Evaluation", 1)]
    (rep / "index.md").write_text("\n".join(text) + "\n")
    return rep / "index.md"
