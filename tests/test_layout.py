"""The floors never cross, and the dashboard never loads torch.

Rooms, bottom to top: vocab < db < analysis < runner < api < cli and dashboard. Everything
installs under one name, `gradscope`; the folders db/, runner/ and dashboard/ stay at the top of
the repository and are mapped onto `gradscope.db`, `gradscope.runner`, `gradscope.dashboard`.

Read from the source (every `import`, at any depth, including lazy ones inside functions), so a
crossing is caught even on a code path no other test runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where each room's source lives in the repository.
ROOMS = {
    "vocab": ROOT / "gradscope" / "vocab",
    "db": ROOT / "db",
    "analysis": ROOT / "gradscope" / "analysis",
    "runner": ROOT / "runner",
    "api": ROOT / "gradscope" / "api",
    # Lightning / Hugging Face callbacks: at the API's level, built on its public calls.
    "integrations": ROOT / "gradscope" / "integrations",
    "cli": ROOT / "gradscope" / "cli",
    "dashboard": ROOT / "dashboard",
}
# What each room may import from the project's own rooms.
ALLOWED = {
    "vocab": {"vocab"},
    "db": {"vocab", "db"},
    "analysis": {"vocab", "db", "analysis"},
    "runner": {"vocab", "db", "analysis", "runner"},
    "api": {"vocab", "db", "analysis", "runner", "api"},
    "integrations": {"vocab", "db", "analysis", "runner", "api", "integrations"},
    # The CLI starts the dashboard as a child process; it imports none of its modules.
    "cli": {"vocab", "db", "analysis", "runner", "api", "cli"},
    "dashboard": {"vocab", "db", "analysis", "dashboard"},
}
# Third-party packages a room must not load at all.
FORBIDDEN = {
    "vocab": {"torch", "numpy", "streamlit", "sqlalchemy", "altair", "pandas"},
    "db": {"torch", "streamlit", "altair"},
    "analysis": {"torch", "streamlit", "altair"},
    "runner": {"streamlit", "altair"},
    "api": {"streamlit", "altair"},
    "integrations": {"streamlit", "altair"},
    "cli": {"streamlit", "altair"},
    "dashboard": {"torch"},
}
# The source lines of no room may exceed this share of the whole product.
MAX_ROOM_SHARE = 0.30


def room_of(module: str) -> str | None:
    """The room a `gradscope.…` module belongs to (None: not a project module)."""
    parts = module.split(".")
    if parts[0] != "gradscope":
        return None
    if len(parts) == 1:
        return "api"  # the package's own __init__ re-exports the API
    return parts[1] if parts[1] in ROOMS else "api"


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import statement in the file (relative imports resolved)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            found.append((node.lineno, node.module))
            # `from gradscope.runner import batched` imports gradscope.runner.batched
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def files_of(room: str) -> list[Path]:
    return sorted(ROOMS[room].rglob("*.py"))


def edges() -> list[tuple[str, str, str]]:
    """(room, file:line, imported module) for every import in every room."""
    result = []
    for room in ROOMS:
        for path in files_of(room):
            for line, module in imports_of(path):
                result.append((room, f"{path.relative_to(ROOT)}:{line}", module))
    return result


def module_file(module: str) -> Path | None:
    """The source file of a `gradscope.…` module in this checkout, or None."""
    parts = module.split(".")
    room = room_of(module)
    if room is None:
        return None
    base = ROOMS[room] if room in ROOMS and len(parts) > 1 and parts[1] == room else None
    rest = parts[2:] if base is not None else parts[1:]
    base = base if base is not None else ROOT / "gradscope"
    candidate = base.joinpath(*rest)
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if path.is_file():
            return path
    return None


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_no_import_runs_up_a_floor(room: str) -> None:
    crossings = [
        f"{where} imports {module}"
        for owner, where, module in edges()
        if owner == room and room_of(module) not in (None, *ALLOWED[room])
    ]
    assert crossings == []


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_keep_heavy_libraries_out(room: str) -> None:
    loaded = [
        f"{where} imports {module}"
        for owner, where, module in edges()
        if owner == room and module.split(".")[0] in FORBIDDEN[room]
    ]
    assert loaded == []


def test_nothing_imports_the_old_top_level_names() -> None:
    """db, runner, dashboard and vocab exist only as gradscope.db, gradscope.runner, ..."""
    old = {"db", "runner", "dashboard", "vocab"}
    stray = [
        f"{where} imports {module}" for _, where, module in edges() if module.split(".")[0] in old
    ]
    assert stray == []


def test_the_dashboard_reaches_no_runner_module_and_no_torch_transitively() -> None:
    """Follow every project import from the dashboard's files: none reaches gradscope.runner,
    the API or the CLI, and no file on the way imports torch."""
    seen: set[Path] = set()
    todo = list(files_of("dashboard"))
    reached: list[str] = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for _, module in imports_of(path):
            if module.split(".")[0] == "torch":
                reached.append(f"{path.relative_to(ROOT)} imports {module}")
            room = room_of(module)
            if room in {"runner", "api", "cli"}:
                reached.append(f"{path.relative_to(ROOT)} imports {module}")
            found = module_file(module)
            if found is not None:
                todo.append(found)
    assert reached == []
    assert len(seen) > len(files_of("dashboard"))  # the walk did follow imports below it


def test_no_sys_path_edits_in_the_package() -> None:
    edits = [
        f"{path.relative_to(ROOT)}"
        for room in ROOMS
        for path in files_of(room)
        if "sys.path" in path.read_text()
    ]
    assert edits == []


def test_no_room_holds_more_than_its_share_of_the_source() -> None:
    lines = {room: sum(len(p.read_text().splitlines()) for p in files_of(room)) for room in ROOMS}
    lines["api"] += sum(len(p.read_text().splitlines()) for p in (ROOT / "gradscope").glob("*.py"))
    total = sum(lines.values())
    too_big = {room: round(n / total, 3) for room, n in lines.items() if n > MAX_ROOM_SHARE * total}
    assert too_big == {}


def test_module_names_are_not_shared_across_rooms() -> None:
    seen: dict[str, str] = {}
    clashes = []
    for room in ROOMS:
        for path in files_of(room):
            # Page scripts are run by Streamlit, never imported; migrations are Alembic's.
            if path.name in {"__init__.py", "__main__.py", "app.py"}:
                continue
            if {"migrations", "app_pages"} & set(path.parts):
                continue
            if path.stem in seen and seen[path.stem] != room:
                clashes.append(f"{path.stem}: {seen[path.stem]} and {room}")
            seen.setdefault(path.stem, room)
    assert clashes == []
