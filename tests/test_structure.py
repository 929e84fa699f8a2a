"""The package's shape: imports run one way, without loops, and nothing reaches into
another package's private modules (the CLI, the benchmarks and the tests included)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "autoquant"
# Rooms and the rooms each may import (besides the top-level helpers: errors, _io, _version, ...).
ALLOWED = {
    "policy": set(),
    "runtimes": set(),
    "targets": {"runtimes"},
    "report": set(),
    "compress": {"policy", "targets", "runtimes"},
    "evaluate": {"compress", "policy", "targets", "runtimes"},
    "search": {"evaluate", "compress", "policy", "targets", "report", "runtimes"},
    "agents": {"search", "evaluate", "compress", "policy", "targets", "runtimes"},
    "actorq": {"evaluate", "compress", "policy", "targets", "runtimes"},
    "export": {"search", "actorq", "evaluate", "compress", "policy", "targets", "runtimes"},
    "cli": {"export", "agents", "search", "actorq", "evaluate", "compress", "policy", "targets", "report",
            "runtimes"},
}
# The libraries of the execution engines: imported by the runtimes' room alone.
RUNTIME_LIBRARIES = ("onnxruntime", "ai_edge_litert", "tflite_runtime")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every autoquant module a file imports, at any depth of the file (lazy imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module]) if module else ".".join(base)
            if module.startswith("autoquant"):
                found.add(module)
                found.update(f"{module}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("autoquant"))
    return found


def _package_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_import_loops_between_modules() -> None:
    modules = _package_modules()
    graph = {name: {m for m in _imports(path) if m in modules and m != name and not name.startswith(m + ".")}
             for name, path in modules.items()}
    loops = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loops.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not loops, f"import loops: {loops}"


def test_rooms_import_one_way() -> None:
    wrong = []
    for name, path in _package_modules().items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in ALLOWED:
            continue
        for module in _imports(path):
            target = module.split(".")
            if len(target) > 1 and target[1] in ALLOWED and target[1] != parts[1] \
                    and target[1] not in ALLOWED[parts[1]]:
                wrong.append(f"{name} -> {module}")
    assert not wrong, f"imports against the flow cli -> export -> agents -> search/actorq -> evaluate -> compress: {wrong}"


def test_the_search_names_agents_by_entry_point_only() -> None:
    """The search makes agents through its registry's entry points; every built-in entry
    point resolves to a factory in the ``autoquant.agents`` package (its public names, or a
    module of its own: a new agent is its file plus one row of the registry)."""
    from autoquant.search import AGENTS

    for entry in AGENTS.values():
        assert isinstance(entry.entry_point, str) and entry.entry_point.startswith(("autoquant.agents:",
                                                                                    "autoquant.agents."))
        assert callable(entry.factory()), entry.name


def test_nobody_imports_another_packages_private_modules() -> None:
    """Tests mirror the package: ``tests/ROOM/`` may look inside ``autoquant.ROOM``; nothing else may."""
    files = [path for folder in ("autoquant", "benchmarks", "examples", "tools", "tests")
             for path in (ROOT / folder).rglob("*.py")]
    assert any(path.parts[-2] == "tools" for path in files)
    wrong = []
    for path in files:
        name = _module_name(path)
        for module in _imports(path):
            parts = module.split(".")
            private = next((i for i, p in enumerate(parts) if i >= 2 and p.startswith("_")
                            and not p.startswith("__")), None)
            if private is None:
                continue
            owner = ".".join(parts[:private])  # the package whose private module this is
            mirror = "tests." + owner.removeprefix("autoquant.")
            if not (name == owner or name.startswith((owner + ".", mirror + "."))):
                wrong.append(f"{path.relative_to(ROOT)} -> {module}")
    assert not wrong, f"private modules reached from outside their package: {wrong}"


def test_only_the_runtimes_room_imports_an_execution_engine() -> None:
    """onnxruntime and LiteRT sit behind ``autoquant.runtimes``: targets, the search, the
    evaluation and ActorQ reach them through its sessions, never by importing them."""
    wrong = []
    for name, path in _package_modules().items():
        if name.startswith("autoquant.runtimes"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            wrong += [f"{name} imports {m}" for m in modules if m.split(".")[0] in RUNTIME_LIBRARIES]
    assert not wrong, wrong
