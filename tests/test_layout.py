"""The package's layering, read from its source: no import cycles (imports inside
functions included), and Celery reached only from the Celery adapter and the front ends
that start or probe its processes."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "scheduled_prompts"

#: Modules that may import celery or kombu, directly or through the adapter.
CELERY_EDGE = {
    "scheduled_prompts",  # `celery -A scheduled_prompts` finds the app here, lazily
    "scheduled_prompts.celery_app",
    "scheduled_prompts.tasks",
    "scheduled_prompts.worker",
    "scheduled_prompts.api",  # publish(): hands occurrences to tasks.publish
    "scheduled_prompts.cli.doctor",  # pings the workers
}
ADAPTER = {"scheduled_prompts.celery_app", "scheduled_prompts.tasks", "scheduled_prompts.worker"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (absolute names)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module or ""
            target = (f"{base}.{module}" if module else base) if node.level else module
            # `from . import engine` imports the module scheduled_prompts.engine (its
            # package is being imported already); `from .x import y` imports x.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(
                    sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else target
                )
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path) & modules.keys() - {name} for name, path in modules.items()}


def _external(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        hits = {m for m in _imports(path) if m.split(".")[0] in prefixes}
        if hits:
            out[_module_name(path)] = hits
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle_counting_imports_inside_functions() -> None:
    graph = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_graph_sees_imports_inside_functions() -> None:
    # api.publish imports the adapter inside the function: the reader must see it.
    assert "scheduled_prompts.tasks" in _graph()["scheduled_prompts.api"]


def test_celery_and_kombu_are_imported_only_by_the_adapter() -> None:
    assert set(_external(("celery", "kombu"))) <= ADAPTER


def test_only_the_edge_reaches_the_adapter() -> None:
    graph = _graph()
    reaching = {m for m, deps in graph.items() if deps & ADAPTER} - ADAPTER
    assert reaching <= CELERY_EDGE, sorted(reaching - CELERY_EDGE)
