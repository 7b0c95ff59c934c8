"""The package's shape: one import name, no import cycles, data/ and models/ free of Ray and MLflow."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from conftest import REPO_ROOT

# Top-level folders and the import name each installs as (pyproject's package-dir).
PACKAGE_DIRS = {"data": "leukotune.data", "models": "leukotune.models", "tuner": "leukotune.tuner"}


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO_ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE_DIRS[parts[0]], *parts[1:]])


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in PACKAGE_DIRS for p in (REPO_ROOT / folder).rglob("*.py")}


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every leukotune module this file imports, at any depth (inside functions too), relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` imports the module; `from pkg import name`, pkg
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m.startswith("leukotune.")}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(path, name, set(modules)) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    assert len(graph) > 30  # the walk really saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("folder", ["data", "models"])
def test_data_and_models_never_import_ray_or_mlflow(folder: str) -> None:
    for path in (REPO_ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"ray", "mlflow", "optuna"}, f"{path}: imports {name}"
                assert not name.startswith("leukotune.tuner"), f"{path}: imports {name} (tuner wires data/models)"


def test_pyproject_lists_every_package_folder() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {module_name(p) for folder in PACKAGE_DIRS for p in (REPO_ROOT / folder).rglob("__init__.py")}
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {v: k for k, v in PACKAGE_DIRS.items()}


def test_one_import_name_outside_the_repository(tmp_path: Path) -> None:
    probe = ("import importlib.util, leukotune.data, leukotune.models, leukotune.tuner, leukotune.tuner.cli\n"
             "print([n for n in ('data', 'models', 'tuner') if importlib.util.find_spec(n) is not None])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
