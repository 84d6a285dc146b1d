"""The package layers of DESIGN.md as a checked contract: who may import whom, and no import
circle, counting imports inside functions too (a function-level import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "training", "export", "calibration", "adgan")

# DESIGN.md, "Layout": the packages each package may import (besides itself).
MAY_IMPORT = {
    "agent": set(),
    "training": {"agent"},
    "export": {"agent", "training"},
    "calibration": {"agent"},
    "adgan": {"agent", "training", "export", "calibration"},
}
# "calibration imports training and export only for the PyTorch reference scorer of the
# paper's experiments": the modules that hold it.
REFERENCE_SCORER = {"calibration.scoring": {"export"}, "calibration.evaluate": {"export"}}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports anywhere in its file (the longest known prefix of each)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.Import):
            cands = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - n.level + 1] + ([base] if base else []))
            cands = [f"{base}.{a.name}" for a in n.names] + [base]
        else:
            continue
        for c in cands:
            parts = c.split(".")
            for i in range(len(parts), 0, -1):
                m = ".".join(parts[:i])
                if m in known:
                    if m != name:
                        found.add(m)
                    break
    return found


GRAPH = None


def graph() -> dict[str, set[str]]:
    global GRAPH
    if GRAPH is None:
        mods = modules()
        GRAPH = {m: imports_of(m, p, set(mods)) for m, p in mods.items()}
    return GRAPH


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert circles(graph()) == []


def test_packages_import_only_what_the_layout_allows():
    bad = []
    for mod, deps in graph().items():
        top = mod.split(".")[0]
        allowed = MAY_IMPORT[top] | REFERENCE_SCORER.get(mod, set())
        bad += [f"{mod} imports {d}" for d in sorted(deps) if d.split(".")[0] not in allowed | {top}]
    assert bad == []


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_circle_finder_finds_circles(edges, expected):
    assert circles(edges) == expected


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import os\n\ndef f():\n    from agent.scoring import backend\n    import training.model as tm\n")
    known = {"agent.scoring.backend", "agent.scoring", "training.model", "training"}
    assert imports_of("calibration.m", p, known) == {"agent.scoring.backend", "agent.scoring", "training.model"}
