"""The package's import graph, read with ``ast``: no cycle, no import of its own modules inside a function, and
nothing from the project's own checks (``tools/``).

Imports under ``if TYPE_CHECKING:`` count too: a loop that only type checkers follow is still two modules
that need each other (break it with a Protocol, or by moving the shared piece down a layer). Optional
third-party packages may be imported inside functions (timm, torchvision, matplotlib); the package's own
modules may not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "freezable"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for each import of a ``freezable`` module in ``path``,
    those under ``if TYPE_CHECKING:`` included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target == "freezable" or target.startswith("freezable."):
                    if child.module is None or target == "freezable":  # from . import a, b: the submodules
                        found.extend((f"{target}.{a.name}", child.lineno, in_function) for a in child.names)
                    else:
                        found.append((target, child.lineno, in_function))
            elif isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names
                             if a.name == "freezable" or a.name.startswith("freezable."))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return found


def graph() -> dict[str, dict[str, int]]:
    modules = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges[name] = {}
        for target, line, _ in own_imports(path):
            while target not in modules and "." in target:  # `from .errors import X`: X is a name, not a module
                target = target.rpartition(".")[0]
            if target != name and not (name == "freezable" or target == "freezable"):
                edges[name].setdefault(target, line)
    return edges


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in edges.get(node, {}):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_imports_the_package_s_own_modules(path):
    inside = [f"line {line}: {target}" for target, line, in_function in own_imports(path) if in_function]
    assert not inside, f"{path.name} imports freezable modules inside functions: {inside}"


def test_the_checks_see_a_type_only_cycle():
    """The oracle: a file whose only import of another module is under ``if TYPE_CHECKING:`` gives an edge, and
    with the other module importing it back, a cycle."""
    fake = PACKAGE / "_fake_for_test.py"
    assert not fake.exists()
    fake.write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .errors import closest\n")
    try:
        assert own_imports(fake) == [("freezable.errors", 4, False)]
        edges = graph()
        assert "freezable.errors" in edges["freezable._fake_for_test"]
        edges["freezable.errors"]["freezable._fake_for_test"] = 1  # errors importing the fake back: a loop
        assert set(find_cycle(edges)) == {"freezable._fake_for_test", "freezable.errors"}
    finally:
        fake.unlink()


def absolute_imports(path: Path) -> list[tuple[str, int]]:
    """``(module, line)`` of every absolute import in ``path``, wherever it sits (functions, ``TYPE_CHECKING``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
    return found


def test_the_package_imports_nothing_from_the_project_s_tools():
    """The oracles and sweeps under ``tools/`` are checks of the library, never part of it."""
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {module}" for path in sorted(PACKAGE.rglob("*.py"))
             for module, line in absolute_imports(path) if module == "tools" or module.startswith("tools.")]
    assert not found, f"freezable imports the project's tools: {found}"


def test_the_checks_see_a_cycle_and_a_function_level_import(tmp_path):
    """The oracle: a graph with a known cycle, and a file with a known function-level import."""
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None
    assert graph()["freezable.wrapper"].keys() >= {"freezable.mixin", "freezable.presets"}
    assert "freezable.mixin" not in graph()["freezable.optim"]  # a Protocol (optim.Grouped) stands for the mixin
    fake = PACKAGE / "_fake_for_test.py"
    assert not fake.exists()
    source = ("from .errors import closest\n\ndef f():\n    from . import mixin\n    import freezable.guard\n"
              "    from tools.oracles import groups\n")
    fake.write_text(source)
    try:
        assert own_imports(fake) == [("freezable.errors", 1, False), ("freezable.mixin", 4, True),
                                     ("freezable.guard", 5, True)]
        assert ("tools.oracles", 6) in absolute_imports(fake)
    finally:
        fake.unlink()
