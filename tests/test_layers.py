"""The package's layers: nothing imports upwards, and no modules import each other in a loop.

models ← data ← eval ← methods, objectives, report ← config ← train, merge, selection ← workflows (compare, demo, export, gguf_export, serve) ← cli. Imports inside
functions count: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tuna"
RANKS = {"errors": 0, "atomic": 0, "migrate": 1, "rundir": 0, "sections": 0,
         "models": 1, "data": 2, "eval": 3, "methods": 4, "objectives": 4, "report": 4, "config": 5,
         "train": 6, "merge": 6, "selection": 6, "compare": 7, "demo": 7, "export": 7, "gguf_export": 7, "serve": 7, "cli": 8, "__main__": 9, "__init__": 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuna"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()  # `from tuna.x import y`
            found.update(submodules or {node.module})
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("tuna"))
    return found


def graph() -> dict[str, set[str]]:
    return {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_reaches_up_a_layer():
    upward = [f"{m} imports {dep}" for m, deps in graph().items() for dep in deps
              if package(dep) != package(m) and RANKS[package(dep)] >= RANKS[package(m)] and package(dep) != "__init__"]
    assert not upward, "\n".join(sorted(upward))


def test_every_package_has_a_layer():
    assert {package(m) for m in graph()} <= set(RANKS)


def test_no_import_cycles():
    edges, cycles = graph(), []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [node, dep]) if dep in path else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)
