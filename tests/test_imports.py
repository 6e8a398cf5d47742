"""The package's import graph: no cycle anywhere, imports only run down the layers, and serving never
pulls in the training stack."""

from __future__ import annotations

import ast
from pathlib import Path

import asl_platform

PACKAGE = Path(asl_platform.__file__).parent
TRAINING_STACK = ("asl_platform.training", "asl_platform.stages", "asl_platform.pipeline", "asl_platform.inference",
                  "asl_platform.batch_predict", "asl_platform.data.reading", "asl_platform.data.synthetic")
# The layers, bottom first: a module imports from its own layer or the ones below, never above.
LAYERS = (
    ("asl_platform.errors", "asl_platform.limits", "asl_platform.config", "asl_platform.runtime", "asl_platform.gcs_store",
     "asl_platform.tracking"),
    ("asl_platform.data",),
    ("asl_platform.hands",),
    ("asl_platform.model",),
    ("asl_platform.inference",),
    ("asl_platform.training",),
    ("asl_platform.stages",),
    ("asl_platform.pipeline", "asl_platform.batch_predict", "asl_platform.serving", "asl_platform.cli"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, anywhere in the file (lazy imports inside functions too)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            found |= {target for target in targets if target in modules and target != name}
        graph[name] = found
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for target in graph[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "asl_platform.training.loop" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_serving_imports_nothing_from_training():
    graph = import_graph()
    serving = [name for name in graph if name.startswith("asl_platform.serving")]
    assert serving
    for name in serving:
        pulled = {m for m in _closure(graph, name) if m.startswith(TRAINING_STACK)}
        assert not pulled, f"{name} imports {sorted(pulled)}"


def layer_of(module: str) -> int:
    for number, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return number
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py: add it to LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
                  for name, targets in graph.items() if name != "asl_platform" for target in targets
                  if layer_of(target) > layer_of(name))


def test_imports_run_down_the_layers():
    assert upward_imports(import_graph()) == []


def test_an_upward_import_is_found():
    graph = {"asl_platform.data.decode": {"asl_platform.model.card"}, "asl_platform.model.card": {"asl_platform.errors"}}
    assert upward_imports(graph) == ["asl_platform.data.decode (layer 1) imports asl_platform.model.card (layer 3)"]


def test_serving_and_the_model_decode_images_without_listing_or_ray_data():
    graph = import_graph()
    for start in ("asl_platform.serving.app", "asl_platform.model.predictor"):
        pulled = {m for m in _closure(graph, start) if m.startswith("asl_platform.data.")}
        assert pulled <= {"asl_platform.data.decode", "asl_platform.data.storage"}, f"{start} imports {sorted(pulled)}"


def missing_names(path: Path) -> list[str]:
    """The package names a script imports (lazy imports inside functions too) that the package does not have."""
    import importlib

    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "asl_platform":
            module = importlib.import_module(node.module)
            missing += [f"{path.name}:{node.lineno} {node.module}.{alias.name}" for alias in node.names
                        if not hasattr(module, alias.name)
                        and importlib.util.find_spec(f"{node.module}.{alias.name}") is None]
    return missing


def test_benchmarks_and_jobs_import_only_what_the_package_has():
    """bench/ and jobs/ run outside the test suite: a rename in the package must not break them unseen."""
    root = PACKAGE.parent
    scripts = sorted([*(root / "bench").glob("*.py"), *(root / "jobs").glob("*.py")])
    assert len(scripts) > 5
    assert [name for script in scripts for name in missing_names(script)] == []
