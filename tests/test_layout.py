"""How aelight's modules depend on one another."""

import ast
from pathlib import Path

from tests.conftest import REPO


def import_graph() -> dict[str, set[str]]:
    """Each aelight module and the aelight modules it imports, at module level or inside functions."""
    files = {}
    for path in (REPO / "aelight").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def module_of(name: str):
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        imported = set()
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                imported |= {module_of(a.name) for a in node.names if a.name.startswith("aelight")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aelight"):
                imported |= {module_of(f"{node.module}.{a.name}") for a in node.names}
        graph[name] = imported - {None, name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_aelight_s_modules_import_one_another_without_a_cycle():
    graph = import_graph()
    assert {"aelight.cli", "aelight.sweep.command", "aelight.checkpoints.trust", "aelight.models.autoencoder"} <= set(
        graph
    )
    assert "aelight.checkpoints.trust" in graph["aelight.models.autoencoder"]  # imports inside functions count too
    assert cycles(graph) == []
