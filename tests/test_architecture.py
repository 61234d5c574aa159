"""The architecture holds: the import-linter contracts of pyproject.toml (layers, the client standing alone, no
cycles between siblings), and no import cycle between any two modules, TYPE_CHECKING imports included.

`python -m tests.test_architecture` prints the package-level import graph as Graphviz DOT (render it with
`dot -Tsvg`); docs/architecture.md has the drawing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="import-linter (and its grimp) come with the test extra")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dynamostore", "ring", "handoff", "antientropy")


def _graph() -> "grimp.ImportGraph":
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def module_cycles(graph: "grimp.ImportGraph") -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_the_import_linter_contracts_are_kept() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    if not linter.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_module_is_part_of_an_import_cycle() -> None:
    cycles = module_cycles(_graph())
    assert cycles == [], f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    class Graph:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, m: str) -> set[str]:
            return self.edges.get(m, set())

    assert module_cycles(Graph()) == [["a", "b", "c"]]  # type: ignore[arg-type]


def package_of(module: str) -> str:
    """The node's modules by subpackage (dynamostore.kv, dynamostore.node, ...); the pure cores whole."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "dynamostore" and len(parts) > 1 else parts[0]


def dot(graph: "grimp.ImportGraph") -> str:
    """The package-level import graph in Graphviz DOT (native.py, imported by every subpackage's __init__ to
    put compiled modules first, is left out: it imports nothing of ours)."""
    edges: set[tuple[str, str]] = set()
    for m in graph.modules:
        for imported in graph.find_modules_directly_imported_by(m):
            a, b = package_of(m), package_of(imported)
            if a != b and "dynamostore.native" not in (a, b) and a != "dynamostore":
                edges.add((a, b))
    lines = ["digraph imports {", "  rankdir=TB; node [shape=box];"]
    lines += [f'  "{a}" -> "{b}";' for a, b in sorted(edges)]
    lines.append("}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(dot(_graph()))
