"""Ray drivers fail fast and clean up (issue 24, item 11): an address where nothing answers is
one clear line within seconds, not minutes of Ray's C++ warnings; after `kill -9` of a local
driver, the reaper it started ends the processes Ray started for it and removes its temp
folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gradscope.runner.ray_workers import _check_reachable, start_reaper

# Stands in for a Ray agent: retitled (its command line no longer names the folder), holding
# a log file open under the folder, living until killed.
AGENT = """
import sys
log = open(sys.argv[1], "a")
sys.argv[1:] = ["agent"]
print("ready", flush=True)
sys.stdin.read()
"""


def test_nothing_listening_at_a_ray_address_is_one_clear_line() -> None:
    with pytest.raises(RuntimeError) as caught:
        _check_reachable("127.0.0.1:1")
    message = str(caught.value)
    assert message.startswith("cannot connect to Ray at 127.0.0.1:1: nothing answers there")
    assert "\n" not in message


@pytest.mark.ray
@pytest.mark.slow
def test_an_unreachable_address_refuses_the_driver_before_ray_init() -> None:
    ray = pytest.importorskip("ray")
    from gradscope.runner.ray_workers import _Connection

    if ray.is_initialized():
        pytest.skip("another test's Ray is running in this process")
    with pytest.raises(RuntimeError, match="nothing answers there"):
        _Connection(ray, "127.0.0.1:1", 1.0)
    assert not ray.is_initialized()


def test_a_killed_drivers_processes_and_temp_folder_are_cleaned_up() -> None:
    folder = tempfile.mkdtemp(prefix="gs-ray-", dir="/tmp")
    driver = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(Path(folder) / "agent.log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "ready"
        # The reaper watches its caller: start it as the driver would, from the driver's pid.
        reaper = subprocess.Popen(
            [sys.executable, "-m", "gradscope.runner.ray_reaper", str(driver.pid), folder]
        )
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert reaper.wait(timeout=60) == 0
        assert agent.wait(timeout=60) == -signal.SIGKILL
        assert not Path(folder).exists()
    finally:
        for proc in (driver, agent):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_reaper_is_started_for_this_process_and_ends_with_a_clean_close() -> None:
    folder = tempfile.mkdtemp(prefix="gs-ray-", dir="/tmp")
    reaper = start_reaper(folder)
    assert reaper is not None and reaper.poll() is None  # waiting on this (live) process
    reaper.kill()
    reaper.wait()
    assert Path(folder).exists()  # a clean close removes the folder itself
    os.rmdir(folder)
