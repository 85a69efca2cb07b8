"""The import graph, read from the source (every import, those inside functions too): no cycle between modules,
and no arrow from a lower layer back up. The layers, lowest first:

    pipelines.cli, pipelines.models          the CLI edge and the offline models
    pipelines.runner                         what every stage shares (config, decoding, one-output models, runs)
    pipelines.data, pipelines.tasks          data sources and formats; the tasks shelf (generators, verifiers)
    pipelines.eval                           evaluation, used by the stages for their held-out figures
    pipelines.sft|reward|ppo, .generate      the stages and the try-a-model CLI
    pipelines.demo                           runs the stages as child processes
    annotation                               the Argilla side: may use the data formats and the runner's config,
                                             never a training stage (those reach Argilla through `argilla://`)
    bench                                    anything

Outside the runner, its names come from `pipelines.runner`, never from the modules under it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "annotation", "bench")
LAYERS = {
    "pipelines.cli": 0,
    "pipelines.models": 0,
    "pipelines.runner": 1,
    "pipelines.data": 2,
    "pipelines.tasks": 2,
    "pipelines.eval": 3,
    "pipelines.sft": 4,
    "pipelines.reward": 4,
    "pipelines.ppo": 4,
    "pipelines.generate": 4,
    "pipelines.demo": 5,
    "annotation": 5,
    "bench": 6,
}
# the training stages: nothing but demo and bench may import them
STAGES = ("pipelines.sft", "pipelines.reward", "pipelines.ppo")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    known = modules()

    def owner(name: str) -> str | None:  # the project module a dotted import name lands in
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [owner(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [owner(f"{base}.{alias.name}") or owner(base) for alias in node.names]
            else:
                continue
            graph[module] |= {target for target in targets if target and target != module}
    return graph


def layer_of(module: str) -> tuple[str, int]:
    home = max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len)
    return home, LAYERS[home]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "pipelines.runner" in graph["annotation.loop"]
    assert "annotation.server.dialects.sqlite" in graph["annotation.server.search_engine"]
    # an import inside a function counts: dedup loads its embedding model at the runner's precision
    assert "pipelines.runner" in graph["pipelines.data.dedup"]


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_arrow_from_a_lower_layer_up() -> None:
    upward = []
    for module, targets in import_graph().items():
        home, level = layer_of(module)
        for target in targets:
            target_home, target_level = layer_of(target)
            if target_home != home and target_level > level:
                upward.append(f"{module} -> {target}")
            if target_home in STAGES and home not in STAGES and home not in ("pipelines.demo", "bench"):
                upward.append(f"{module} -> {target} (a training stage)")
    assert upward == []


def test_runner_names_come_from_the_runner_package() -> None:
    private = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if not module.startswith("pipelines.runner")
        for target in targets
        if target.startswith("pipelines.runner.")
    ]
    assert private == []
