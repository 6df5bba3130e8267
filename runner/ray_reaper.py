"""Cleans up after a `gradscope worker --ray local` driver that was killed (kill -9 runs no
cleanup of its own): waits for the driver's process to end, then ends every process whose
command line or open files name the driver's private Ray temp folder (GCS, raylet, agents,
workers: Ray passes each its session folder, and each logs there) and removes the folder. A
driver that exits cleanly shuts Ray down itself and kills this process first. Linux only
(pidfd); `python -m` entry point.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
from pathlib import Path


def ray_processes(temp_dir: str) -> list[int]:
    """Processes whose command line or open files name `temp_dir` (only ours: the folder is
    private)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if temp_dir in cmdline or _holds_file_under(entry, temp_dir):
            found.append(int(entry.name))
    return found


def _holds_file_under(proc: Path, temp_dir: str) -> bool:
    """Ray's agents retitle themselves ("ray::DashboardAgent"), so their command line no
    longer names the folder; their open log files under it still do."""
    try:
        return any(temp_dir in os.readlink(fd) for fd in (proc / "fd").iterdir())
    except OSError:
        return False


def reap(temp_dir: str) -> None:
    for pid in ray_processes(temp_dir):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to end
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def main(argv: list[str]) -> None:
    driver, temp_dir = int(argv[0]), argv[1]
    if not Path(temp_dir).name.startswith("gs-ray-"):
        raise SystemExit("refusing: not a gradscope Ray temp folder")
    try:
        fd = os.pidfd_open(driver)
    except ProcessLookupError:
        fd = None  # already gone
    if fd is not None:
        select.select([fd], [], [])  # readable once the driver has exited
        os.close(fd)
    reap(temp_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
