"""A real local stack (mosquitto + moto server + rule bridge) for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meterlink_stack import stack
from tests.integration.stackclient import LocalStack, searchable_tmpdir, stack_paths


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    with searchable_tmpdir() as root:
        paths = stack_paths(root)
        info = stack.up(paths, mqtt_port=0, aws_port=0)
        try:
            yield LocalStack(paths, info)
        finally:
            stack.down(paths)


@pytest.fixture
def stack_root() -> Iterator[Path]:
    """A folder for a stack of the test's own."""
    with searchable_tmpdir() as root:
        yield root
