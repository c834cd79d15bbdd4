"""Find import cycles among a package's modules, counting every import.

Imports under ``if TYPE_CHECKING:`` and inside functions count too: they hide a cycle
from the interpreter, not from the reader. Run ``python tests/importcycles.py gateway``
(``make test`` does): it prints each cycle (a strongly connected component of the import
graph) and exits 1, or exits 0 when there is none.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_graph(root: Path) -> dict[str, set[str]]:
    """Each module under ``root`` (dotted name) and the modules of the package it imports."""
    base = root.parent
    mods = {".".join(p.relative_to(base).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            found: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                found = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            graph[name].update(f for f in found if f in mods and f != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    limit = sys.getrecursionlimit()

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    # Deep enough for a long import chain, for this walk only: a higher limit left behind
    # changed what other tests in the same process see (json's "nested too deeply").
    sys.setrecursionlimit(max(10_000, limit))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(out)


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "gateway")
    found = cycles(module_graph(root))
    for component in found:
        sys.stdout.write("import cycle: " + " <-> ".join(component) + "\n")
    if not found:
        sys.stdout.write(f"no import cycles in {root}/\n")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
