"""The docs tell the truth about the code: README.md and the MkDocs pages in docs/.

- the command reference (docs/cli.md) is exactly what docs/gen_cli.py makes from `--help`;
- every `gradscope …` command shown (code blocks and inline code) exists, with only options it
  has; every `gradscope.x.y` name and `from gradscope… import …` shown resolves;
- README.md stays a front page (at most 250 lines); relative links point to files that exist;
- `mkdocs build --strict` passes (broken links and anchors between pages fail it).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
from markdown_it import MarkdownIt
from script_loader import load_script

from gradscope.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 250
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
PLACEHOLDERS = {"…", "..."}  # "gradscope …": any command; also words in capitals (COMMAND, RUN_ID)

_markdown = MarkdownIt("commonmark").enable("table")


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def gen_cli() -> ModuleType:
    return load_script(DOCS / "gen_cli.py")


def tokens_of(path: Path) -> Iterator[Any]:
    """Every markdown-it token of the page, inline children included."""
    for token in _markdown.parse(path.read_text(encoding="utf-8")):
        yield token
        yield from token.children or ()


def shell_lines(path: Path) -> Iterator[str]:
    """Shell lines of the page: those of shell code blocks (continuations joined), and inline
    code that starts with `gradscope `."""
    for token in tokens_of(path):
        if token.type == "fence" and token.info.strip().split(" ")[0] in SHELL_FENCES:
            yield from re.sub(r"\\\n", " ", token.content).splitlines()
        elif token.type == "code_inline" and token.content.startswith("gradscope "):
            yield token.content


def gradscope_args(line: str) -> list[str] | None:
    """The arguments after `gradscope` when the line runs it, else None."""
    line = line.strip().removeprefix("$ ")
    if "gradscope" not in line:
        return None
    words = shlex.split(line, comments=True)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value gradscope …
        words.pop(0)
    if words and (words[0] == "gradscope" or words[0].endswith("/gradscope")):
        return words[1:]
    if words[1:3] == ["-m", "gradscope.cli"] and words[0].endswith("python"):
        return words[3:]
    return None


def option_names(cmd: Any) -> dict[str, Any]:
    """Every spelling of every option of a command (`--batch`, `--no-batch`, `-q`, `--help`)."""
    names: dict[str, Any] = {"--help": None}
    for param in cmd.params:
        if param.param_type_name == "option":
            for name in [*param.opts, *param.secondary_opts]:
                names[name] = param
    return names


@functools.cache
def root_command() -> Any:
    """The click command tree Typer builds from the app (built once: ~0.05 s a time)."""
    return typer.main.get_command(app)


def check_command(args: list[str]) -> list[str]:
    """What is wrong with `gradscope ARGS` (empty: the command and its options exist)."""
    cmd = root_command()
    path = ["gradscope"]
    problems = []
    words = iter(args)
    for word in words:
        if word == "--":
            break
        if word in PLACEHOLDERS or re.fullmatch(r"[A-Z][A-Z0-9_]*", word):
            continue
        if word.startswith("-") and not re.fullmatch(r"-[\d.]+(e-?\d+)?", word):
            name = word.split("=", 1)[0]
            known = option_names(cmd)
            if name not in known:
                problems.append(f"{' '.join(path)} has no option {name}")
                continue
            param = known[name]
            takes_value = param is not None and not param.is_flag and not param.count
            if takes_value and "=" not in word:
                next(words, None)  # its value, whatever it looks like
            continue
        subcommands = getattr(cmd, "commands", None)
        if subcommands is not None:  # a group: the word names a command
            if word not in subcommands:
                problems.append(f"{' '.join(path)} has no command {word!r}")
                break
            cmd = subcommands[word]
            path.append(word)
        # else: an argument or a placeholder (RUN_ID, file names): not checked
    return problems


def shown_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for line in shell_lines(page):
            if gradscope_args(line) is not None:
                found.append((page_id(page), line.strip()))
    return found


# ---------------------------------------------------------------------------------------------


def test_cli_reference_is_generated_from_help(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = gen_cli()
    monkeypatch.setenv("COLUMNS", str(generator.WIDTH))
    expected = generator.render()
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == expected, (
        "docs/cli.md is out of date with the commands' help: run `python docs/gen_cli.py`"
    )


def test_the_cli_reference_holds_every_command_and_option() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")

    def walk(cmd: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    for path, cmd in walk(root_command(), ["gradscope"]):
        assert f"## {' '.join(path)}\n" in text
        for name in option_names(cmd):
            assert name in text, f"{' '.join(path)} {name}"


def test_the_docs_show_commands() -> None:
    lines = shown_commands()
    assert len(lines) > 50, lines  # the parser found the examples, not nothing
    pages = {page for page, _ in lines}
    assert {"README.md", "docs/queue.md", "docs/sharing.md", "docs/ray.md"} <= pages


@pytest.mark.parametrize(("page", "line"), shown_commands())
def test_every_command_shown_exists_with_its_options(page: str, line: str) -> None:
    args = gradscope_args(line)
    assert args is not None
    assert check_command(args) == [], f"{page}: {line}"


def test_the_command_checker_catches_mistakes() -> None:
    assert check_command(["sweep", "--arch", "relu", "--depth", "2,5"]) == []
    assert check_command(["db", "upgrade", "--db", "x.db"]) == []
    assert check_command(["train", "-q", "--lr=0.1", "--no-such"]) == [
        "gradscope train has no option --no-such"
    ]
    assert check_command(["swep", "--arch", "relu"]) == ["gradscope has no command 'swep'"]
    assert check_command(["db", "downgrade"]) == ["gradscope db has no command 'downgrade'"]
    assert check_command(["COMMAND", "--help"]) == []
    assert check_command(["runs", "--ray", "auto"]) == ["gradscope runs has no option --ray"]
    assert gradscope_args("GRADSCOPE_DB=x.db .venv/bin/gradscope runs  # all") == ["runs"]
    assert gradscope_args("python -m gradscope.cli show ID") == ["show", "ID"]
    assert gradscope_args("import gradscope") is None


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def link_targets(path: Path) -> Iterator[str]:
    for token in tokens_of(path):
        if token.type == "link_open":
            yield str(token.attrs.get("href", ""))
        elif token.type == "image":
            yield str(token.attrs.get("src", ""))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_point_to_files(page: Path) -> None:
    broken = []
    for target in link_targets(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, mailto:, or an anchor on the same page (mkdocs checks those)
        file = target.split("#", 1)[0]
        if not (page.parent / file).exists():
            broken.append(target)
    assert broken == []


def dotted_names(page: Path) -> Iterator[str]:
    """`gradscope.x.y` names in inline code, and `from gradscope.x import y` in Python blocks."""
    for token in tokens_of(page):
        if token.type == "code_inline":
            name = re.split(r"[(\s]", token.content, maxsplit=1)[0]
            if re.fullmatch(r"gradscope(\.[A-Za-z_]\w*)+", name):
                yield name
        elif token.type == "fence" and token.info.strip() == "python":
            for node in ast.walk(ast.parse(token.content)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradscope"):
                    yield from (f"{node.module}.{alias.name}" for alias in node.names)


def resolves(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_python_names_in_the_docs_exist() -> None:
    names = {name for page in PAGES for name in dotted_names(page)}
    assert "gradscope.db.share.importing.import_file" in names  # the scan found the examples
    assert sorted(name for name in names if not resolves(name)) == []


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is not installed (it is in the dev extras: `make install`)")
    # Not --quiet: with it, mkdocs' --strict lets warnings (broken links, anchors) pass.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "cli" / "index.html").exists()
