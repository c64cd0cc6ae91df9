"""No import cycles in attnlab: every module imports on its own, and the graph of the package's
own imports (read from the source, function-level imports included) has no cycle."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import attnlab

ROOT = Path(attnlab.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py")) if p.name != "__main__.py"}


def ancestors(name: str) -> set:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def imported(name: str, path: Path) -> set:
    """The attnlab modules that importing `name` runs first. Importing a.b.c runs the packages
    a.b and a first, except the importer's own (already running); `from pkg import name` of a
    name, not a submodule, needs pkg itself, even the importer's own package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    needed = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            submodules = [f"{source}.{alias.name}" for alias in node.names]
            targets = [m for m in submodules if m in MODULES]
            if len(targets) < len(submodules):
                targets.append(source)
        else:
            continue
        for target in targets:
            needed |= {target} | (ancestors(target) - ancestors(name))
    return {m for m in needed if m in MODULES and m != name}


def find_cycle(graph: dict) -> list:
    """One cycle as [a, b, ..., a], or [] when the graph has none."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_module_import_graph_has_no_cycle():
    graph = {name: imported(name, path) for name, path in MODULES.items()}
    assert graph["attnlab.checkpoint"] >= {"attnlab.compression.structure", "attnlab.compression"}  # the parse sees edges
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_a_name_from_the_own_package_is_an_edge_a_submodule_is_not(tmp_path):
    assert "attnlab.training.tasks" not in imported("attnlab.interop.hf", MODULES["attnlab.interop.hf"])
    source = tmp_path / "mod.py"
    source.write_text("from . import Run\nfrom . import lm\n")
    needs = imported("attnlab.training.tasks.mod", source)
    assert needs == {"attnlab.training.tasks", "attnlab.training.tasks.lm"}


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *MODULES], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
    assert result.returncode == 0, result.stderr[-3000:]
