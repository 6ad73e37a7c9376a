"""The package's layers: every module of lcdense/ sits in one layer, imports only its own layer and
the ones below, and no modules import each other in a cycle (counting imports inside functions and
under ``TYPE_CHECKING``: a lazy import is still an arrow)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import lcdense

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lcdense"

#: Bottom to top. A module may import modules of its own layer and of the layers before it.
LAYERS = ("base", "core", "cost", "engine", "paper", "reporting", "api", "lcdense", "cli")


def layer_of(module: str) -> str:
    """The layer of a dotted module name of lcdense.

    >>> layer_of("lcdense.engine.runner"), layer_of("lcdense.commands.run"), layer_of("lcdense")
    ('engine', 'cli', 'lcdense')
    """
    parts = module.split(".")
    if len(parts) == 1:
        return "lcdense"  # the package's front: it re-exports the public API of every layer
    if parts[1] in ("cli", "commands", "__main__"):
        return "cli"
    return parts[1] if parts[1] in LAYERS else f"<no layer: {module}>"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The lcdense modules ``path`` imports anywhere in its body (a ``from pkg import sub`` of a
    submodule counts as an import of the submodule)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lcdense"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "lcdense":
                base = node.module
            else:
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            found |= subs or {base}
            if not subs or len(subs) < len(node.names):
                found.add(base)
    return {m for m in found if m in known} - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted.

    >>> cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) not in LAYERS] == []


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer than the importer's."""
    return [f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})" for m, deps in sorted(edges.items())
            for d in sorted(deps) if LAYERS.index(layer_of(d)) > LAYERS.index(layer_of(m))]


def test_no_module_imports_a_layer_above_its_own():
    assert upward(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_core_imports_only_the_base_and_torch():
    """The conversion core knows nothing of tasks, runs, costs or the command line."""
    for name, deps in graph().items():
        if layer_of(name) == "core":
            assert {layer_of(d) for d in deps} <= {"base", "core"}, name


def test_the_layer_test_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks can fail: a lazy import inside a function closes a cycle and runs up a layer."""
    fake = tmp_path / "lcdense"
    for rel, text in {"__init__.py": "", "base/__init__.py": "", "core/__init__.py": "",
                      "base/a.py": "def f():\n    from ..core import b\n",
                      "core/b.py": "from ..base.a import f\n"}.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    edges = graph()
    assert edges["lcdense.base.a"] == {"lcdense.core.b"} and edges["lcdense.core.b"] == {"lcdense.base.a"}
    assert cycles(edges) == [["lcdense.base.a", "lcdense.core.b"]]
    assert upward(edges) == ["lcdense.base.a (base) imports lcdense.core.b (core)"]


def test_lcdense_exports_are_importable():
    assert all(hasattr(lcdense, name) for name in lcdense.__all__)
