"""`gradscope dashboard`: Streamlit on a run database, plus one background worker for it.

The dashboard is `streamlit run dashboard/app.py` in a child process, told which database to
show through $GRADSCOPE_DB (and the worker's pid through $GRADSCOPE_WORKER_PID, for the
sidebar's worker status). Both children stop when the dashboard stops: Ctrl-C, SIGTERM, or
Streamlit exiting on its own.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from gradscope.cli.common import DB_HELP, MaxCsvOption, MaxParamsOption


def app_path() -> Path:
    """The Streamlit entry script, found without importing the dashboard (or Streamlit)."""
    spec = importlib.util.find_spec("gradscope.dashboard")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "app.py"


STOP_TIMEOUT_S = 10.0
POLL_S = 0.5


def host_problem(host: str) -> str | None:
    """Why `host` cannot be listened on (not an address or name this machine resolves), or
    None. Checked before the port, so a typo is not reported as a port in use."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"--host {host!r} is not an address or host name this machine can resolve ({exc})"
    return None


def loopback_only(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback one (only this machine)."""
    import ipaddress

    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (as Streamlit's, with SO_REUSEADDR, so
    connections of a server that just stopped do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def streamlit_command(host: str, port: int) -> list[str]:
    from gradscope.db.share.source import DASHBOARD_UPLOAD_MB

    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_path()),
        "--server.headless",
        "true",
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        # The app's files do not change under a user: no file watcher polling the tree.
        "--server.fileWatcherType",
        "none",
        # No "Deploy" button or developer menu for people using the tool.
        "--client.toolbarMode",
        "minimal",
        # The server refuses larger uploads whatever the uploader says (default 200 MB): allow
        # the size the Share page's uploader offers and an import accepts.
        "--server.maxUploadSize",
        str(DASHBOARD_UPLOAD_MB),
    ]


def startup_lines(
    url: str, database: str, *, worker: bool, read_only: bool, width: int = 80
) -> list[str]:
    """What `gradscope dashboard` says when it starts, in lines that fit `width` columns: the
    address, then the database on a line of its own (a path is never wrapped in the middle,
    so it can be copied), then what is off."""
    lines = [f"gradscope dashboard: {url}"]
    where = f"database: {database}"
    lines += [where] if len(where) <= width else ["database:", database]
    if not worker:
        lines.append("no background worker (--no-worker): start one with gradscope worker")
    if read_only:
        lines.append("reachable from other machines: read-only (--allow-writes to change)")
    return lines


def dashboard(
    db: Annotated[str | None, typer.Option("--db", help=DB_HELP, show_default=False)] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 127.0.0.1 keeps it on this machine.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8501,
    no_worker: Annotated[
        bool,
        typer.Option("--no-worker", help="Do not start a background worker for queued runs."),
    ] = False,
    max_csv_mb: MaxCsvOption = None,
    max_params: MaxParamsOption = None,
    allow_writes: Annotated[
        bool,
        typer.Option(
            "--allow-writes",
            help="Let visitors queue, cancel, delete and import runs when --host is not a "
            "loopback address (a dashboard reachable from other machines is read-only "
            "without it).",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="The folder CSV files named in the New run form must lie in (default: none; "
            "a dashboard reachable from other machines then refuses CSV paths from the form).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Open the dashboard on a database (and start one worker that trains queued runs)."""
    from gradscope.cli.common import console, fail, open_engine
    from gradscope.db.engine import display_url, resolve_db

    if (problem := host_problem(host)) is not None:
        fail(problem)
    target = resolve_db(db)
    if "://" not in target:
        target = str(Path(target).expanduser().absolute())  # the children's cwd may differ
    # Fail here, readably, on a bad path/URL or old schema. A file this process can't write
    # (read-only mount) is opened read-only: the pages show it; writes fail in one line.
    open_engine(target, read_only=None).dispose()
    if not port_free(host, port):
        fail(f"port {port} on {host} is already in use; choose another with --port")

    worker = None
    from gradscope.vocab.protocol import DB_ENV, WORKER_PID_ENV, access_env

    exposed = not loopback_only(host)
    if data_dir is not None and not data_dir.expanduser().is_dir():
        fail(f"--data-dir {data_dir} is not a folder")
    env = {**os.environ, DB_ENV: target}
    env |= access_env(exposed=exposed, allow_writes=allow_writes, data_dir=data_dir)
    if not no_worker:
        from gradscope.runner.worker import spawn_worker_process

        worker = spawn_worker_process(target)
        env[WORKER_PID_ENV] = str(worker.pid)
    app = subprocess.Popen(streamlit_command(host, port), env=env, stdin=subprocess.DEVNULL)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # one clean-up path for Ctrl-C and SIGTERM

    previous = signal.signal(signal.SIGTERM, on_signal)
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    for line in startup_lines(
        f"http://{shown}:{port}",
        display_url(target),
        worker=worker is not None,
        read_only=exposed and not allow_writes,
        width=console.width,
    ):
        # soft_wrap: a path longer than the terminal is never broken by a newline of ours.
        console.print(line, highlight=False, soft_wrap=True)
    code = 0
    try:
        while (code := app.poll()) is None:
            if worker is not None and worker.poll() is not None:
                console.print(
                    f"the background worker exited (code {worker.returncode}); queued runs "
                    "wait until you start one: gradscope worker",
                    highlight=False,
                )
                worker = None
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        code = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        # The same SIGTERM, wait, SIGKILL-if-it-hangs as for the worker.
        from gradscope.runner.worker import stop_worker_process

        stop_worker_process(app, STOP_TIMEOUT_S)
        if worker is not None:
            stop_worker_process(worker)
    raise typer.Exit(code or 0)


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command()(dashboard)
