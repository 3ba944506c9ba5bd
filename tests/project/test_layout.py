"""The layout holds: the Pulumi program's package (components/) imports neither the operator CLI
(openhands_cli/) nor the policy pack (policy/), and no module imports itself back through others.

Import edges are read from the source: every ``import`` (at the top or inside a function; not the
``if TYPE_CHECKING:`` ones, which never run), and the modules ``importlib.import_module`` loads: a
module that calls it gets an edge to every module named by a string constant in itself or in a module
it imports (the program loads the models named in components/deployment.py's registry; the CLI its
offline commands).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.harness import ROOT

PACKAGES = ("components", "openhands_cli", "policy")


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _scan(path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str], bool]:
    """(modules imported, modules named by string constants, whether it calls import_module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    imported: set[str] = set()
    named: set[str] = set()
    dynamic = False
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import"  # the code base uses absolute imports
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    imported.add(sub)  # a submodule: `from components import contract`
                elif node.module in modules:
                    imported.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            named.add(node.value)
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            dynamic = True
    return imported, named, dynamic


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    scans = {name: _scan(path, modules) for name, path in modules.items()}
    graph = {}
    for name, (imported, _, dynamic) in scans.items():
        edges = set(imported)
        if dynamic:
            for source in (name, *imported):
                edges |= scans[source][1]
        edges.discard(name)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

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
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    graph = _graph()
    assert graph["components.program"] >= {"components.docker.local", "components.kubernetes"}, (
        "the model registry's importlib edges are not seen"
    )
    assert _cycles(graph) == []


def test_the_program_never_imports_the_operator_or_the_policy_pack():
    # components/__main__.py is the one-release shim of `python -m components check`; the
    # program (Pulumi.yaml's __main__.py) never loads it.
    bad = {
        f"{m} -> {d}"
        for m, deps in _graph().items()
        if m.startswith("components") and m != "components.__main__"
        for d in deps
        if d.startswith(("openhands_cli", "policy"))
    }
    assert not bad


def test_the_policy_pack_does_not_import_the_operator():
    bad = {f"{m} -> {d}" for m, deps in _graph().items() if m.startswith("policy") for d in deps
           if d.startswith("openhands_cli")}
    assert not bad


def test_a_circle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
