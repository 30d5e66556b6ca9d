"""The library's floors: no import cycle, module or function level.

Every ``import`` of every module of :mod:`lplr_index` is read with :mod:`ast` (at module
level and inside functions alike; ``if TYPE_CHECKING:`` blocks are skipped, they never
run) and resolved to the module it loads; the graph must have no cycle. On top of that,
the floors the code relies on: the helpers every layer shares (:mod:`lplr_index._common`)
import nothing of the library but validation, no library module below the command line
imports the user-facing :mod:`lplr_index.evaluation`, the codes and their training
never import the search layer, and the parts the index composes never import the index.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lplr_index

ROOT = Path(lplr_index.__file__).parent
PACKAGE = "lplr_index"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The library modules ``name`` imports anywhere in its code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == PACKAGE:
                for alias in node.names:  # `from .search import blas` loads lplr_index.search.blas
                    sub = f"{target}.{alias.name}"
                    out.add(sub if sub in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out.discard(name)
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
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

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def reaches(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in edges.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_import_graph_has_no_cycle():
    edges = graph()
    assert len(edges) > 20 and edges["lplr_index.index"]  # the reader finds the modules and their imports
    found = cycles(edges)
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_floors():
    edges = graph()
    assert edges["lplr_index._common"] <= {"lplr_index._validation"}
    # evaluation is for users: the command line, the package root and the classifier (a user of
    # its voting) may import it, the library's layers never
    users = {"lplr_index", "lplr_index.cli", "lplr_index.classifier", "lplr_index.evaluation"}
    below = sorted(m for m, deps in edges.items() if "lplr_index.evaluation" in deps and m not in users)
    assert below == [], f"library modules importing lplr_index.evaluation: {below}"
    # the codes and their training never reach the search layer, even through a function's import
    for codec in ("lplr_index.vq", "lplr_index.train", "lplr_index.quantize", "lplr_index.packing",
                  "lplr_index.codes", "lplr_index.factorize", "lplr_index._common"):
        search = sorted(m for m in reaches(edges, codec) | {codec} if m.startswith("lplr_index.search"))
        assert search == [], f"{codec} reaches {search}"



#: the parts :class:`lplr_index.LPLRIndex` composes: each may be used (and is tested) without the index
INDEX_PARTS = ("lplr_index.ids", "lplr_index.builder", "lplr_index.snapshot", "lplr_index.sizing",
               "lplr_index.layout", "lplr_index.search.router")


def test_the_index_parts_never_reach_the_index():
    edges = graph()
    assert edges["lplr_index.index"] >= set(INDEX_PARTS)  # the index composes them
    for part in INDEX_PARTS:
        assert part in edges, f"{part} is not a module of the library"
        assert "lplr_index.index" not in reaches(edges, part), f"{part} reaches lplr_index.index"
    # ids are the bottom of the parts: numpy and bit packing only (the snapshot is a type hint)
    assert edges["lplr_index.ids"] <= {"lplr_index.packing"}


def test_the_reader_finds_function_level_imports_and_cycles(tmp_path):
    # the test's own parts: a cycle made only by a function's import is found
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n    return x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    mods = {module_name_in(tmp_path, p): p for p in pkg.glob("*.py")}
    edges = {n: imports(n, p, set(mods)) for n, p in mods.items()}
    assert edges["lplr_index.b"] == {"lplr_index.a"} and edges["lplr_index.c"] == set()
    assert cycles(edges) == [["lplr_index.a", "lplr_index.b"]]


def module_name_in(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)
