"""The package's import layers, read from the source with `ast` (imports inside functions too).

Three layers, bottom up:
- lower modules, shared by every stage (records, config, prompts, generation, ...);
- stages, one job each (ingest, synth, build, train, evaluate, ask, serve, ...);
- orchestrators, which chain stages (pipeline, cli).
A module imports only from its own layer's unit or from layers below it: no stage imports
another stage, no lower module imports a stage or an orchestrator, and there is no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ragtune"

LOWER = {
    "ragtune",
    "records",
    "runfolder",
    "config",
    "prompts",
    "retrieval",
    "models",
    "modelstore",
    "generation",
    "batching",
    "metrics",
    "errors",
    "abstain",
    "adapter_check",
    "llm_client",
    "qa_formats",
    "training_core",
}
STAGES = {"ingest", "synth", "importers", "build", "train", "evaluate", "ask", "serve", "gguf_export"}
ORCHESTRATORS = {"pipeline", "cli", "__main__"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports, anywhere in its body."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _target(node, name, path.name == "__init__.py")
                # `from ragtune.synth import llm` imports the module ragtune.synth.llm
                subs = {f"{target}.{a.name}" for a in node.names} & files.keys()
                found.update(subs or {target})
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def unit(module: str) -> str:
    """The layer unit a module belongs to: its top-level module or package under ragtune."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer(module: str) -> str:
    u = unit(module)
    return "lower" if u in LOWER else "stage" if u in STAGES else "orchestrator" if u in ORCHESTRATORS else "?"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path for each import cycle found by depth-first search."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state[n] == 1:
                found.append([*path[path.index(n) :], n])
            elif state[n] == 0:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if state[m] == 0:
            visit(m, [m])
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports across units that go sideways between stages or up a layer."""
    rank = {"lower": 0, "stage": 1, "orchestrator": 2}
    out = []
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            if unit(m) == unit(t):
                continue
            if rank[layer(t)] > rank[layer(m)] or layer(m) == layer(t) == "stage":
                out.append(f"{m} ({layer(m)}) imports {t} ({layer(t)})")
    return out


def test_every_module_has_a_layer():
    unplaced = sorted({unit(m) for m in import_graph() if layer(m) == "?"})
    assert not unplaced, f"add these to a layer in {Path(__file__).name}: {unplaced}"


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_stage_imports_another_stage_and_no_lower_module_imports_a_stage():
    found = violations(import_graph())
    assert not found, "imports across layers (move what is shared into a lower module):\n" + "\n".join(found)


def test_the_checks_catch_a_planted_import_inside_a_function(tmp_path):
    """The scan sees function-level and relative imports: a planted one is reported."""
    pkg = tmp_path / "ragtune"
    (pkg / "evaluate").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "records.py").write_text("def f():\n    from ragtune import serve\n")
    (pkg / "serve.py").write_text("from ragtune.evaluate import core\n")
    (pkg / "evaluate" / "__init__.py").write_text("")
    (pkg / "evaluate" / "core.py").write_text("def g():\n    from ..records import f\n    from . import judge\n")
    (pkg / "evaluate" / "judge.py").write_text("import json\n")
    graph = import_graph(pkg)
    assert graph["ragtune.evaluate.core"] == {"ragtune.records", "ragtune.evaluate.judge"}
    assert violations(graph) == [
        "ragtune.records (lower) imports ragtune.serve (stage)",
        "ragtune.serve (stage) imports ragtune.evaluate.core (stage)",
    ]
    assert cycles(graph) == [["ragtune.evaluate.core", "ragtune.records", "ragtune.serve", "ragtune.evaluate.core"]]


@pytest.mark.parametrize("name", sorted((LOWER | STAGES | ORCHESTRATORS) - {"ragtune"}))
def test_every_named_unit_exists(name):
    assert (SRC / f"{name}.py").is_file() or (SRC / name / "__init__.py").is_file()
