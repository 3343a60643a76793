"""Shared fixtures: real servers on free loopback ports, started and stopped by the tests.

`local_stack` is the whole local stack (mosquitto mTLS + moto + rule bridge), once per session.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterlink_stack import stack
from tests.integration.stackclient import LocalStack, searchable_tmpdir, stack_paths

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real moto server (Kinesis, DynamoDB, S3 on one endpoint) for the whole session."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_stack() -> Iterator[LocalStack]:
    """A whole local stack on free ports in a temporary folder, stopped on exit."""
    with searchable_tmpdir() as root:
        paths = stack_paths(root)
        info = stack.up(paths, mqtt_port=0, aws_port=0)
        try:
            yield LocalStack(paths, info)
        finally:
            stack.down(paths)


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    with running_stack() as st:
        yield st


@pytest.fixture(scope="module")
def private_stack() -> Iterator[LocalStack]:
    """A stack of the test module's own, for tests that stop and start its broker."""
    with running_stack() as st:
        yield st


@pytest.fixture
def stack_root() -> Iterator[Path]:
    """A folder for a stack of the test's own."""
    with searchable_tmpdir() as root:
        yield root
