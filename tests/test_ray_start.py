"""`--ray local` starts fast (issue 25, item 2): it reuses a Ray instance already running on
this machine (RAY_ADDRESS naming this machine, or the one `ray start --head` recorded) and
leaves it running; only when there is none does it start a private one. Which one was used is
said in the driver's first line. The driver reusing a `ray start --head` instance is tested
with the other head tests in test_ray.py."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

from gradscope.runner.ray_workers import (
    _ScopedEnv,
    running_local_instance,
)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port on 127.0.0.1 where something answers (stands in for a GCS)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def no_ray_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RAY_ADDRESS, and Ray's default temp dir moved to an empty private folder."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray" / "ray_current_cluster"


def test_ray_address_on_this_machine_is_reused_when_it_answers(
    no_ray_address: Path, listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{listening}")
    assert running_local_instance() == f"127.0.0.1:{listening}"
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing answers there
    assert running_local_instance() is None


def test_ray_address_elsewhere_or_a_client_address_is_not_local(
    no_ray_address: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for address in ("192.0.2.1:6379", "ray://127.0.0.1:10001", "not-a-host.invalid:6379"):
        monkeypatch.setenv("RAY_ADDRESS", address)
        assert running_local_instance() is None, address


def test_the_address_ray_start_recorded_is_reused(no_ray_address: Path, listening: int) -> None:
    assert running_local_instance() is None  # no file yet
    no_ray_address.write_text(f"127.0.0.1:{listening}\n")
    assert running_local_instance() == f"127.0.0.1:{listening}"
    no_ray_address.write_text(f"127.0.0.1:{free_port()}")  # a stopped instance's file
    assert running_local_instance() is None


def test_a_private_instance_does_not_see_ray_address_and_it_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ray.init would connect to RAY_ADDRESS instead of starting the private instance (one
    that is not this machine's is not reused): hidden for that start, restored after."""
    monkeypatch.setenv("RAY_ADDRESS", "192.0.2.1:6379")
    env = _ScopedEnv()
    env.set({"RAY_AUTH_MODE": "token"}, unset=("RAY_ADDRESS",))
    assert "RAY_ADDRESS" not in os.environ and os.environ["RAY_AUTH_MODE"] == "token"
    env.restore()
    assert os.environ["RAY_ADDRESS"] == "192.0.2.1:6379"
