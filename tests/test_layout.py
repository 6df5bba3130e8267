"""The floors never cross: vocab < db < runner < dashboard (and the gradscope API beside it),
and the dashboard never loads torch.

Read from the source (every `import`, at any depth, including lazy ones inside functions), so a
crossing is caught even on a code path no other test runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each package may import from the project's own packages.
ALLOWED = {
    "vocab": {"vocab"},
    "db": {"vocab", "db"},
    "runner": {"vocab", "db", "runner"},
    "dashboard": {"vocab", "db", "runner", "dashboard"},
    # The public API stands beside the dashboard: on runner/, and nothing below imports it.
    "gradscope": {"vocab", "db", "runner", "gradscope"},
}
PROJECT = set(ALLOWED)
# Third-party packages a floor must not load at all.
FORBIDDEN = {
    "vocab": {"torch", "streamlit", "sqlalchemy", "altair"},
    "db": {"torch", "streamlit", "altair"},
    "runner": {"streamlit", "altair"},
    "dashboard": {"torch"},
    "gradscope": {"streamlit", "altair"},
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) for every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def edges() -> list[tuple[str, str, str]]:
    """(package, file:line, imported module) for every import of every project module."""
    result = []
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in imports_of(path):
                result.append((package, f"{path.relative_to(ROOT)}:{line}", module))
    return result


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_runs_up_a_floor(package: str) -> None:
    crossings = [
        f"{where} imports {module}"
        for owner, where, module in edges()
        if owner == package
        and module.split(".")[0] in PROJECT
        and module.split(".")[0] not in ALLOWED[package]
    ]
    assert crossings == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_floors_keep_heavy_libraries_out(package: str) -> None:
    loaded = [
        f"{where} imports {module}"
        for owner, where, module in edges()
        if owner == package and module.split(".")[0] in FORBIDDEN[package]
    ]
    assert loaded == []


def test_the_dashboard_imports_only_torch_free_runner_modules() -> None:
    """The dashboard may use runner modules only if they never import torch themselves."""
    used = {
        module
        for owner, _, module in edges()
        if owner == "dashboard" and module.split(".")[0] == "runner"
    }
    for module in sorted(used):
        path = ROOT / (module.replace(".", "/") + ".py")
        heavy = [m for _, m in imports_of(path) if m.split(".")[0] == "torch"]
        assert heavy == [], f"{module} imports torch"


def test_module_names_are_not_shared_across_packages() -> None:
    seen: dict[str, str] = {}
    clashes = []
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            # Page scripts are run by Streamlit, never imported; migrations are Alembic's.
            if path.name == "__init__.py" or {"migrations", "app_pages"} & set(path.parts):
                continue
            if path == ROOT / "dashboard" / "app.py":
                continue
            if path.stem in seen and seen[path.stem] != package:
                clashes.append(f"{path.stem}: {seen[path.stem]} and {package}")
            seen.setdefault(path.stem, package)
    assert clashes == []
