"""Edge tests: no agent process outlives the test that started it, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.edge.agent_harness import STARTED


@pytest.fixture(autouse=True)
def _reap_agents() -> Iterator[None]:
    yield
    while STARTED:
        agent = STARTED.pop()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()
