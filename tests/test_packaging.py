"""One installed name: everything is `gradscope.…`, so a user's own db.py, runner.py, vocab.py or
dashboard.py never shadows ours, and a pip install adds one package to site-packages.

Both tests run real processes: a user's script beside files with those names, and a wheel built
from this checkout installed into a fresh virtual environment.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The repository's folders that install as gradscope's subpackages, and where.
MAPPED = {"gradscope": "gradscope", "db": "gradscope/db", "runner": "gradscope/runner"}
MAPPED["dashboard"] = "gradscope/dashboard"
SHADOWS = ("db", "runner", "vocab", "dashboard")

USER_SCRIPT = """
import sys

import torch

import gradscope

model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(16, 3), torch.randn(16, 1)
with gradscope.init(db=sys.argv[1], name="beside my db.py") as run:
    run.watch(model, optimizer)
    for _ in range(2):
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
        run.log_epoch(train_loss=float(loss))
print(run.id)
"""


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH (the test must not see this checkout through it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_a_script_beside_db_runner_vocab_and_dashboard_py_records_a_run(tmp_path: Path) -> None:
    for name in SHADOWS:
        # A user's own modules of those names, as a training project often has.
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s {name}.py')\n")
    script = tmp_path / "train.py"
    script.write_text(USER_SCRIPT)
    database = tmp_path / "runs.db"
    result = subprocess.run(
        [sys.executable, str(script), str(database)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1]

    from gradscope.db.engine import make_engine
    from gradscope.db.queries import run_document

    document = run_document(make_engine(str(database), read_only=True), run_id)
    assert document["name"] == "beside my db.py"
    assert document["status"] == "completed"
    assert [e["epoch"] for e in document["epochs"]] == [1, 2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of this checkout's sources (a build writes build/ and
    *.egg-info beside them), without build isolation: this venv's setuptools."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    for folder in MAPPED:
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(out), str(source)],
        check=True,
        capture_output=True,
        env=_clean_env(),
        timeout=300,
    )
    (found,) = out.glob("gradscope-*.whl")
    return found


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package_and_every_source_file(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"gradscope"}
    # Every Python file of the mapped folders is in the wheel (the packages list is complete),
    # and so are the files read by path: migrations, the favicon, the page scripts.
    expected = {
        f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, target in MAPPED.items()
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".mako", ".png"} and "__pycache__" not in path.parts
    }
    assert expected - set(names) == set()
    assert "gradscope/dashboard/app_pages/runs.py" in names
    assert "gradscope/db/migrations/script.py.mako" in names


@pytest.mark.slow
def test_a_fresh_venv_with_the_wheel_exposes_only_gradscope(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + [str(wheel)],
        check=True,
        capture_output=True,
        env=_clean_env(),
        timeout=300,
    )
    # The dependencies (torch, SQLAlchemy, ...) come from this venv's site-packages, appended
    # after the fresh one's: a plain path line, so this venv's own .pth files (the editable
    # install of this checkout) are not run there.
    fresh_site = next((venv / "lib").glob("python3*/site-packages"))
    (fresh_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    probe = textwrap.dedent(
        """
        import importlib.util, json
        import gradscope, gradscope.db.engine, gradscope.cli.main
        found = {name: importlib.util.find_spec(name) is not None for name in
                 ("db", "runner", "vocab", "dashboard")}
        print(json.dumps({"gradscope": gradscope.__file__, "top_level": found}))
        """
    )
    result = subprocess.run(
        [str(python), "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["gradscope"].startswith(str(fresh_site))
    assert seen["top_level"] == dict.fromkeys(SHADOWS, False)

    # Its `gradscope` command works: it creates a database at the current schema and lists it.
    database = tmp_path / "fresh.db"
    command = venv / "bin" / "gradscope"
    upgraded = subprocess.run(
        [str(command), "db", "upgrade", "--db", str(database)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    listed = subprocess.run(
        [str(command), "runs", "--json", "--db", str(database)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
