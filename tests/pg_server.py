"""A private, throw-away PostgreSQL server for the test session.

Uses Debian's server binaries (``/usr/lib/postgresql/<version>/bin``). PostgreSQL refuses to
run as root, so when the tests run as root (as in CI) ``initdb`` and ``pg_ctl`` are run as the
``postgres`` OS user through ``runuser``. The cluster lives in a fresh folder under /tmp,
listens on 127.0.0.1 only, trusts every local connection, and is removed on ``stop()``.

    with PostgresServer() as server:
        url = server.create_database("test_1")  # postgresql+psycopg://postgres@127.0.0.1:P/test_1
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

PG_GLOB = "/usr/lib/postgresql/*/bin/initdb"
OS_USER = "postgres"  # created by Debian's postgresql package
DB_USER = "postgres"  # superuser created by initdb -U


class PostgresUnavailable(RuntimeError):
    """The server cannot be started here (no binaries, no postgres user); tests should skip."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (racy, so callers retry on EADDRINUSE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bindir() -> Path | None:
    """The bin folder of the newest installed PostgreSQL server, or None."""

    def version(path: str) -> tuple[int, ...]:
        found = re.search(r"/postgresql/([\d.]+)/bin/", path)
        return tuple(int(x) for x in found.group(1).split(".")) if found else (0,)

    candidates = [p for p in glob.glob(PG_GLOB) if os.access(p, os.X_OK)]
    return Path(max(candidates, key=version)).parent if candidates else None


class PostgresServer:
    """Start with ``start()`` or ``with``; ``url`` is the ``postgres`` database's URL."""

    def __init__(self, bindir: Path | None = None, startup_timeout: int = 60) -> None:
        self.bindir = bindir or find_bindir()
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.base: Path | None = None
        self.timings: dict[str, float] = {}  # seconds taken by initdb and by pg_ctl start
        self._as_root = os.geteuid() == 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        if self.bindir is None:
            raise PostgresUnavailable(
                f"no PostgreSQL server binaries ({PG_GLOB}); install Debian's 'postgresql'"
            )
        if self._as_root:
            try:
                owner = pwd.getpwnam(OS_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root but there is no '{OS_USER}' OS user to run PostgreSQL as"
                ) from None
        # /tmp is world-traversable; the folder itself must be reachable by the postgres user.
        self.base = Path(tempfile.mkdtemp(prefix="gradscope-pg-", dir="/tmp"))
        try:
            self.base.chmod(0o755)
            if self._as_root:
                os.chown(self.base, owner.pw_uid, owner.pw_gid)
            started = time.perf_counter()
            self._run(
                "initdb",
                "-D", str(self.datadir),
                "-A", "trust",
                "-U", DB_USER,
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
            )  # fmt: skip
            self.timings["initdb"] = time.perf_counter() - started
            self._start_server()
        except BaseException:
            self._cleanup()
            raise
        return self

    def _start_server(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            self.port = free_port()
            # Durability is pointless for a throw-away test cluster and costs time.
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            started = time.perf_counter()
            try:
                self._run(
                    "pg_ctl",
                    "-D", str(self.datadir),
                    "-l", str(self.logfile),
                    "-o", options,
                    "-t", str(self.startup_timeout),
                    "-w", "start",
                )  # fmt: skip
            except RuntimeError:
                # Another process may have taken the port between free_port() and bind().
                if attempt + 1 < attempts and "could not bind" in self._log_tail():
                    continue
                raise
            self.timings["start"] = time.perf_counter() - started
            return

    def stop(self) -> None:
        """Fast shutdown (disconnects clients) and delete the cluster; safe to call twice."""
        if self.base is None:
            return
        if self.port is not None and (self.datadir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):  # already gone: nothing left to stop
                self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        self._cleanup()

    def _cleanup(self) -> None:
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
        self.base = None
        self.port = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connecting --------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        assert self.base is not None, "server not started"
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        assert self.base is not None, "server not started"
        return self.base / "server.log"

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of one database on this server."""
        if self.port is None:
            raise RuntimeError("server not started")
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        if self.port is None:
            raise RuntimeError("server not started")
        # CREATE DATABASE cannot run inside a transaction, hence autocommit.
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=DB_USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    # -- helpers -----------------------------------------------------------------------------

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", OS_USER, "--", *cmd]
        # cwd: the postgres user may not be allowed into the caller's working directory.
        proc = subprocess.run(
            cmd,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.startup_timeout + 30,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{tool} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stdout}{proc.stderr}\n--- server log ---\n{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])
