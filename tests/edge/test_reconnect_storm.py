"""A hundred gateways lose the broker at once: they come back spread out, within IoT Core's
connect rate (one CONNECT per second per client id), and nothing they buffered is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

import pytest

from edge_agent.metrics import AgentMetrics
from edge_agent.publish.publisher import Publisher, PublishSettings
from meterlink_stack import stack
from meterlink_wire import GatewayStatus, Kind
from tests.integration.stackclient import LocalStack, sample_payload

pytestmark = pytest.mark.integration

GATEWAYS = 100


@dataclass(frozen=True)
class Message:
    id: int
    kind: Kind
    sequence: int
    payload: bytes
    readings: int
    created_ms: int


class MemoryOutbox:
    """The outbox as the publisher sees it; the durable one is tested on its own."""

    def __init__(self, gateway: str, count: int) -> None:
        self._lock = threading.Lock()
        self.messages = {
            i: Message(i, Kind.TELEMETRY, i, sample_payload(gateway, i), 3, 0) for i in range(count)
        }
        self.delivered: list[int] = []

    def pending(self, limit: int, *, exclude: Collection[int] = ()) -> list[Message]:
        with self._lock:
            return [m for i, m in sorted(self.messages.items()) if i not in exclude][:limit]

    def ack(self, ids: Collection[int]) -> int:
        with self._lock:
            gone = [self.messages.pop(i) for i in ids if i in self.messages]
            self.delivered.extend(m.id for m in gone)
            return sum(m.readings for m in gone)

    def add(self, count: int) -> None:
        with self._lock:
            start = max([*self.messages, *self.delivered], default=-1) + 1
            for i in range(start, start + count):
                self.messages[i] = Message(i, Kind.TELEMETRY, i, b"{}", 3, 0)


def test_hundred_gateways_reconnect_within_the_connect_rate(private_stack: LocalStack) -> None:
    stop = threading.Event()
    fleet: list[tuple[str, Publisher, MemoryOutbox]] = []
    for n in range(GATEWAYS):
        gw = f"gw-storm-{n:03d}"
        cert, key = private_stack.issue(gw)
        settings = PublishSettings(
            host="localhost",
            port=private_stack.info.mqtt_port,
            ca_file=private_stack.layout.ca_cert,
            cert_file=cert,
            key_file=key,
            backoff_min_s=1.0,
            backoff_max_s=8.0,
            status_interval_s=3600,
            poll_interval_s=0.2,
        )
        outbox = MemoryOutbox(gw, 5)
        status = GatewayStatus(gateway_id=gw, state="online", sent_ms=0, version="test")
        fleet.append(
            (
                gw,
                Publisher(
                    settings, outbox, AgentMetrics(), gateway_id=gw, status=lambda s=status: s
                ),
                outbox,
            )
        )
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for _, p, _ in fleet]
    for t in threads:
        t.start()
    try:
        _wait(lambda: all(p.connected for _, p, _ in fleet), 60, "initial connects")
        _wait(lambda: all(not o.messages for _, _, o in fleet), 60, "initial delivery")
        before = [p.connects for _, p, _ in fleet]

        stack.stop_broker(private_stack.paths)
        _wait(lambda: not any(p.connected for _, p, _ in fleet), 30, "disconnects")
        for _, _, outbox in fleet:
            outbox.add(5)  # buffered while the broker is away
        outage = 5.0
        time.sleep(outage)
        restarted = time.monotonic()
        stack.start_broker(private_stack.paths)
        _wait(lambda: all(p.connected for _, p, _ in fleet), 90, "reconnects")
        _wait(lambda: all(not o.messages for _, _, o in fleet), 90, "delivery after the outage")
        took = time.monotonic() - restarted
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)

    attempts = [p.connects - b for (_, p, _), b in zip(fleet, before, strict=True)]
    # Each client: never more than one CONNECT per second over the outage and the recovery
    # (+1 for the attempt that succeeds).
    window = outage + took
    assert max(attempts) <= int(window) + 1, (max(attempts), window)
    # Jittered backoff spreads the fleet instead of all clients hammering in lockstep.
    assert sum(attempts) < GATEWAYS * (window + 1) / 2
    assert all(len(o.delivered) == 10 for _, _, o in fleet)
    assert all(sorted(o.delivered) == list(range(10)) for _, _, o in fleet)


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
