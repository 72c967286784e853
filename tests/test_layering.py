"""The import graph of sastc_jax keeps the layering of docs/ARCHITECTURE.md and has no cycle.

Read from the source with ``ast`` (every ``import`` statement, at the top of a module or
inside a function), so an import deferred into a function counts as much as any other.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sastc_jax"

# Each layer may import its own and the layers before it; ENTRY (the `python -m` modules)
# imports only CLI.
LAYERS = {
    "library": (
        "neurons",
        "methods",
        "losses",
        "param_tree",
        "trees",
        "calibration",
        "regressors",
        "models",
        "ops",
    ),
    "trainer": (
        "train",
        "checkpoints",
        "data",
        "configuration",
        "main",
        "parallel",
        "distributed",
        "metrics",
        "runlock",
        "interop.pytorch",
    ),
    "tools": (
        "analyze",
        "diagnose",
        "compare",
        "interop.nir",
        "interop.nir_plan",
        "experiments",
        "plots",
    ),
    "cli": ("cli",),
}
ORDER = list(LAYERS)
# Packages whose __init__ only names the package (its modules have their own layers).
MARKERS = ("sastc_jax", "sastc_jax.interop")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The sastc_jax modules ``path`` imports (``from P import m`` counts as ``P.m`` when
    ``m`` is a module, else as ``P``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def is_entry(module: str) -> bool:
    return module.endswith(".__main__")


def unit(module: str) -> str:
    """The layer unit of a module: ``sastc_jax.X`` (``interop.Y`` for the interop modules)."""
    parts = module.split(".")[1:]
    if parts[:1] == ["interop"] and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def layer(module: str) -> str:
    if is_entry(module):
        return "entry"
    for name, units in LAYERS.items():
        if unit(module) in units:
            return name
    return ""


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a path ``[a, ..., a]``, or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


GRAPH = import_graph()


def test_the_graph_is_read_from_the_source():
    assert "sastc_jax.train.stages" in GRAPH["sastc_jax.train"]  # from sastc_jax.train.stages
    assert "sastc_jax.cli.main" in GRAPH["sastc_jax.main.__main__"]  # from sastc_jax.cli import
    assert "sastc_jax.regressors" in GRAPH["sastc_jax.calibration"]


def test_every_module_has_a_layer():
    assert all(not GRAPH[marker] for marker in MARKERS)
    unplaced = sorted(module for module in GRAPH if module not in MARKERS and not layer(module))
    assert not unplaced, (
        f"{unplaced} belong to no layer: add them to LAYERS here and to docs/ARCHITECTURE.md"
    )


def test_no_module_imports_a_later_layer():
    wrong = []
    for module, imported in GRAPH.items():
        if not layer(module):
            continue  # test_every_module_has_a_layer names it
        for target in imported:
            if is_entry(module):
                allowed = layer(target) == "cli"
            else:
                allowed = layer(target) in ORDER and (
                    ORDER.index(layer(target)) <= ORDER.index(layer(module))
                )
            if not allowed:
                wrong.append(f"{module} ({layer(module)}) -> {target} ({layer(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_only_cli_and_the_entry_modules_import_cli():
    importers = {
        module
        for module, imported in GRAPH.items()
        if any(unit(target) == "cli" for target in imported)
    }
    assert importers and all(is_entry(m) or unit(m) == "cli" for m in importers), importers


@pytest.mark.parametrize("granularity", ["module", "unit"])
def test_the_import_graph_has_no_cycle(granularity):
    if granularity == "module":
        graph = GRAPH
    else:
        graph = {}
        for module, imported in GRAPH.items():
            if module in MARKERS or is_entry(module):
                continue
            edges = graph.setdefault(unit(module), set())
            edges.update(unit(target) for target in imported if unit(target) != unit(module))
    assert find_cycle(graph) == []


def test_a_cycle_is_found_and_named():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
