"""The layers of docs/architecture.md, checked on the source: imports point down, never in a cycle.

Reads every module of ``src/smoothcert`` as text (nothing is imported or run) and collects its imports of
the package's own modules, wherever they stand: module level, inside functions, under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "smoothcert"

#: Each top-level module or package of smoothcert and its layer; a module may import its own layer and the
#: ones below, never one above. A new module must be placed here (and in docs/architecture.md).
LAYERS: dict[str, int] = {
    # bottom: no smoothcert imports but each other
    "errors": 0, "rng": 0, "ops": 0, "checks": 0, "files": 0, "registry": 0, "_version": 0,
    # distributions, statistics, process groups
    "noise": 1, "stats": 1, "distributed": 1,
    # the checkpoint core, architectures and their checkpoints, datasets, off-the-shelf models
    "checkpoints": 2, "models": 2, "data": 2, "pretrained": 2,
    # methods: attacks, training, denoisers
    "attacks": 3, "train": 3, "denoise": 3, "attacks_regression": 3,
    # sampling f(x + noise)
    "engine": 4,
    # certify layer
    "certificate": 5, "adaptive": 5, "smooth": 5, "lipschitz": 5, "soft": 5, "regression": 5,
    # result files, analysis of their rows
    "results": 6,
    "analysis": 7,
    # runs over datasets, command line, package front door
    "runs": 8,
    "cli": 9, "cli_superres": 9, "__main__": 9, "__init__": 9,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported smoothcert module, line, at module level)`` for every import of the package's own code."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if stem.split(".")[0] == "smoothcert":
                targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == "smoothcert"]
        for t in targets:
            found.append((t, node.lineno, id(node) in top))
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target, _, _ in _imports(path):
            # "from .x import y" names module x.y when y is a submodule, else module x
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
        graph[name] = deps
    return graph


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({_top(m) for m in _modules()} - set(LAYERS))
    assert not unplaced, f"place these in LAYERS (tests/test_architecture.py) and docs/architecture.md: {unplaced}"


def test_imports_point_down() -> None:
    upward = []
    for name, deps in _graph().items():
        for dep in deps:
            a, b = _top(name), _top(dep)
            if a in LAYERS and b in LAYERS and LAYERS[b] > LAYERS[a]:
                upward.append(f"{name} (layer {LAYERS[a]}) imports {dep} (layer {LAYERS[b]})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_own_modules_imported_at_module_level(path: Path) -> None:
    """An import of the package's own code inside a function is how a cycle gets hidden; optional
    third-party packages (torchvision, the pretrained extras) may still be imported where they are used."""
    inner = [f"line {line}: {target}" for target, line, at_top in _imports(path) if not at_top]
    assert not inner, f"{path.name} imports smoothcert modules inside functions or under a condition: {inner}"
