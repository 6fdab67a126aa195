"""No import cycle between any two modules of vaest, a package's ``__init__`` included.

CI's ``lint-imports`` (contracts in pyproject.toml) checks the layers and cycles between sibling modules; its
``acyclic_siblings`` contract does not see a cycle through a package's own ``__init__`` (``vaest.corpus`` ->
``vaest.corpus.affwild2`` -> ``vaest.corpus``), which this test does, on the same graph (grimp: every import
statement, inside functions and under TYPE_CHECKING too)."""

import importlib.util
import sys

import pytest

if importlib.util.find_spec("grimp") is None:
    print("grimp (installed with import-linter, the dev extra) is missing")
    pytest.skip("grimp is not installed (pip install -e '.[dev]')", allow_module_level=True)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_package_init() -> None:
    g = {"p": {"p.a"}, "p.a": {"p"}, "p.b": {"p.a"}, "q": set()}
    assert strongly_connected(g) == [["p", "p.a"]]


def test_no_import_cycle_in_vaest() -> None:
    import grimp

    graph = grimp.build_graph("vaest", cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert len(edges) > 50  # the package was found and read
    assert strongly_connected(edges) == []
