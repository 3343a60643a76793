"""The whole agent as a process against the real local stack: exact counts end to end."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest

from edge_agent.buffer import DurableBuffer
from meterlink_stack import pki, stack
from meterlink_wire import TopicKind, decode_status, topic_for
from tests.conftest import free_port
from tests.edge.agent_harness import (
    AgentProcess,
    Feeder,
    agent_config,
    delivered,
    readings,
    wait_delivered,
)
from tests.edge.test_publish import Observer
from tests.integration.stackclient import LocalStack, StreamReader

pytestmark = pytest.mark.integration


#: A PEM-shaped key that is not a key (spelled in parts so no scanner takes it for a real one).
FAKE_KEY_PEM = b"-----BEGIN " + b"PRIVATE KEY-----\nbroken\n-----END " + b"PRIVATE KEY-----\n"


def buffer_stats(config: Path) -> object:
    buf = DurableBuffer(config.parent / "buffer.db", max_bytes=64 * 1024 * 1024)
    try:
        return buf.stats()
    finally:
        buf.close()


def test_readings_reach_kinesis_with_exact_accounting(local_stack: LocalStack, tmp_path) -> None:
    gw = "gw-e2e-count"
    config = agent_config(local_stack, tmp_path / "agent", gw, window_s=1)
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    agent = AgentProcess(config)
    agent.start()
    feeder = Feeder(agent.socket_path)
    try:
        good = readings(20, 50, start_s=time.time())
        garbage = (
            b"not json\n"
            b'{"meter":"m-1"}\n'
            b'{"meter":"m 1","channel":"power","unit":"kW","value":1,"ts":1}\n'
        )
        feeder.send(good[:500])
        feeder.send_raw(garbage, 3)
        feeder.send(good[500:])
        feeder.wait_acked(1003)
        seen = wait_delivered(reader, gw, 1000)
    finally:
        feeder.close()
        assert agent.terminate() == 0
    assert sum(int(b.count.sum()) for b in seen.values()) == 1000
    assert {m for b in seen.values() for m in b.meters} == {f"m-{m:04d}" for m in range(20)}
    # Sequences are contiguous from the first, so the consumer can see gaps.
    assert sorted(seen) == list(range(min(seen), min(seen) + len(seen)))
    stats = buffer_stats(config)
    assert stats.delivered_readings == 1000  # type: ignore[attr-defined]
    assert stats.messages == 0 and stats.journal_readings == 0  # type: ignore[attr-defined]


def test_sigterm_closes_open_windows_and_delivers_them(local_stack: LocalStack, tmp_path) -> None:
    gw = "gw-e2e-sigterm"
    config = agent_config(local_stack, tmp_path / "agent", gw, window_s=900, lateness_s=10)
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    agent = AgentProcess(config)
    agent.start()
    feeder = Feeder(agent.socket_path)
    feeder.send(readings(10, 30, start_s=time.time()))
    feeder.wait_acked(300)
    feeder.close()
    assert agent.terminate() == 0  # the 15-minute windows are still open here
    seen = wait_delivered(reader, gw, 300, timeout=20)
    assert sum(int(b.count.sum()) for b in seen.values()) == 300
    assert "stopped drained=True" in agent.log.read_text()


def test_broker_outage_loses_nothing(private_stack: LocalStack, tmp_path) -> None:
    gw = "gw-e2e-outage"
    config = agent_config(private_stack, tmp_path / "agent", gw, window_s=1)
    reader = StreamReader(private_stack.kinesis(), private_stack.info.stream)
    agent = AgentProcess(config)
    agent.start()
    feeder = Feeder(agent.socket_path)
    try:
        t0 = time.time()
        feeder.send(readings(10, 100, start_s=t0))
        feeder.wait_acked(1000)
        stack.stop_broker(private_stack.paths)
        feeder.send(readings(10, 100, start_s=t0 + 1.5))  # accepted while the uplink is down
        feeder.wait_acked(2000)
        time.sleep(3)
        stack.start_broker(private_stack.paths)
        seen = wait_delivered(reader, gw, 2000, timeout=90)
    finally:
        feeder.close()
        assert agent.terminate() == 0
    assert sum(int(b.count.sum()) for b in seen.values()) == 2000
    assert buffer_stats(config).delivered_readings == 2000  # type: ignore[attr-defined]


def test_agent_sigkilled_repeatedly_loses_no_acknowledged_reading(
    private_stack: LocalStack, tmp_path
) -> None:
    """Readings in (journaled) = delivered + dropped, across five SIGKILLs mid-publish."""
    gw = "gw-e2e-kill"
    config = agent_config(private_stack, tmp_path / "agent", gw, window_s=1, lateness_s=5)
    reader = StreamReader(private_stack.kinesis(), private_stack.info.stream)
    agent = AgentProcess(config)
    acked = sent = 0
    t0 = time.time()
    for round_ in range(6):
        agent.start()
        feeder = Feeder(agent.socket_path)
        feeder.send(readings(20, 50, start_s=t0 + round_ * 0.6, step_s=0.01))
        feeder.wait_acked(1000)
        acked += feeder.acked
        sent += feeder.sent
        time.sleep(0.3 * (round_ % 3))  # kill while windows close and messages are in flight
        feeder.close()
        if round_ < 5:
            agent.kill()
    seen = wait_delivered(reader, gw, acked, timeout=90)
    assert agent.terminate() == 0
    total = delivered(reader, gw, seen)
    stats = buffer_stats(config)
    journaled = (
        stats.journal_readings  # type: ignore[attr-defined]
        + stats.outbox_readings  # type: ignore[attr-defined]
        + stats.delivered_readings  # type: ignore[attr-defined]
        + stats.dropped_readings  # type: ignore[attr-defined]
    )
    assert acked == sent == 6000
    assert journaled == 6000  # every acknowledged line was journaled before its `ok`
    assert stats.dropped_readings == 0  # type: ignore[attr-defined]
    assert total == stats.delivered_readings == 6000  # type: ignore[attr-defined]


def test_register_advance_is_kept_across_sigkill_and_restarts(
    private_stack: LocalStack, tmp_path
) -> None:
    """Energy registers that only rise: per meter, the deltas delivered add up to the register's
    whole advance (last - first), though the agent is SIGKILLed once and restarted twice."""
    gw = "gw-e2e-registers"
    config = agent_config(private_stack, tmp_path / "agent", gw, window_s=1)
    reader = StreamReader(private_stack.kinesis(), private_stack.info.stream)
    agent = AgentProcess(config)
    meters, steps, step = 5, 10, 0
    for round_ in range(3):
        agent.start()
        feeder = Feeder(agent.socket_path)
        start = time.time()
        feeder.send(
            [
                {
                    "meter": f"m-{m:04d}",
                    "channel": "energy_import",
                    "unit": "kWh",
                    "value": 1000.0 + 100 * m + 0.25 * (step + i),
                    "ts": start + 0.1 * i,
                }
                for i in range(steps)
                for m in range(meters)
            ]
        )
        step += steps
        feeder.wait_acked(meters * steps)
        feeder.close()
        time.sleep(1.5)  # some windows close and are committed, the newest are still open
        if round_ == 0:
            agent.kill()
        else:
            assert agent.terminate() == 0
    seen = wait_delivered(reader, gw, 3 * meters * steps)
    advance: dict[str, float] = {}
    for batch in seen.values():
        assert batch.delta is not None
        for index, delta in zip(batch.meter.tolist(), batch.delta.tolist(), strict=True):
            advance[batch.meters[index]] = advance.get(batch.meters[index], 0.0) + delta
    assert sum(int(b.count.sum()) for b in seen.values()) == 3 * meters * steps
    assert advance == {f"m-{m:04d}": 0.25 * (3 * steps - 1) for m in range(meters)}


def test_corrupt_buffer_is_moved_aside_and_agent_runs(local_stack: LocalStack, tmp_path) -> None:
    gw = "gw-e2e-corrupt"
    config = agent_config(local_stack, tmp_path / "agent", gw, window_s=1)
    (config.parent / "buffer.db").write_bytes(b"\x00garbage, not a database" * 100)
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    agent = AgentProcess(config)
    agent.start()
    feeder = Feeder(agent.socket_path)
    feeder.send(readings(5, 20, start_s=time.time()))
    feeder.wait_acked(100)
    seen = wait_delivered(reader, gw, 100)
    feeder.close()
    assert agent.terminate() == 0
    assert sum(int(b.count.sum()) for b in seen.values()) == 100
    moved = list(config.parent.glob("buffer.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"\x00garbage")
    assert "buffer_corrupt_file" in agent.log.read_text()


def test_full_buffer_drops_oldest_and_counts_exactly(private_stack: LocalStack, tmp_path) -> None:
    """Uplink down, 1 MiB buffer, raw mode: the oldest are dropped, every reading accounted."""
    gw = "gw-e2e-full"
    port = free_port()
    config = agent_config(
        private_stack,
        tmp_path / "agent",
        gw,
        window_s=0,
        max_bytes=1024 * 1024,
        metrics_port=port,
    )
    reader = StreamReader(private_stack.kinesis(), private_stack.info.stream)
    stack.stop_broker(private_stack.paths)
    agent = AgentProcess(config)
    try:
        agent.start()
        feeder = Feeder(agent.socket_path)
        t0 = time.time()
        for chunk in range(60):
            feeder.send(readings(50, 20, start_s=t0 + chunk * 0.2))
        feeder.wait_acked(60_000, timeout=90)
        feeder.close()
        deadline = time.monotonic() + 30
        while scrape(port, "meterlink_agent_readings_dropped_total") == 0:
            assert time.monotonic() < deadline, "nothing was dropped"
            time.sleep(0.5)
    finally:
        stack.start_broker(private_stack.paths)
    deadline = time.monotonic() + 120
    while (
        scrape(port, "meterlink_agent_buffer_messages") > 0
        or scrape(port, "meterlink_agent_connected") < 1
    ):
        assert time.monotonic() < deadline, "backlog did not drain"
        time.sleep(0.5)
    # The retained status topic reports the drops too (what fleet monitoring sees).
    observer = Observer(private_stack, topic_for(gw, TopicKind.STATUS))
    try:
        time.sleep(2.5)  # status every second: the last one reflects the drained buffer
        statuses = [decode_status(m.payload) for m in observer.received()]
    finally:
        observer.close()
    assert agent.terminate() == 0
    stats = buffer_stats(config)
    total = delivered(reader, gw, {})
    assert stats.dropped_readings > 0  # type: ignore[attr-defined]
    assert stats.messages == 0  # type: ignore[attr-defined]
    assert total == stats.delivered_readings  # type: ignore[attr-defined]
    assert stats.delivered_readings + stats.dropped_readings == 60_000  # type: ignore[attr-defined]
    assert statuses and statuses[-1].state == "online"
    assert statuses[-1].dropped_readings == stats.dropped_readings  # type: ignore[attr-defined]
    assert statuses[-1].buffer_rows == 0


def scrape(port: int, name: str) -> float:
    """Sum of a metric's samples from the agent's Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_systemd_notify_protocol(local_stack: LocalStack, tmp_path) -> None:
    gw = "gw-e2e-notify"
    config = agent_config(local_stack, tmp_path / "agent", gw)
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.2)
    agent = AgentProcess(
        config, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
    )
    messages: list[str] = []

    def collect(until: str | None, timeout: float) -> None:
        """Read datagrams until one contains `until` (or, with None, for the whole timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue
            if until is not None and until in messages[-1]:
                return

    try:
        agent.start()
        collect("READY=1", 20)
        ready_at = len(messages)
        collect(None, 2.2)
        pings = [m for m in messages[ready_at:] if "WATCHDOG=1" in m]
        assert agent.terminate() == 0
        collect("STOPPING=1", 10)
    finally:
        sock.close()
    assert any("READY=1" in m.split("\n") for m in messages)
    assert len(pings) >= 3  # every 0.5 s (half of WATCHDOG_USEC) for ~2 s
    assert any("STOPPING=1" in m for m in messages)


def test_certificate_rotation_on_sighup(local_stack: LocalStack, tmp_path) -> None:
    gw = "gw-e2e-rotate"
    config = agent_config(local_stack, tmp_path / "agent", gw, window_s=1)
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    agent = AgentProcess(config)
    agent.start()
    feeder = Feeder(agent.socket_path)
    t0 = time.time()
    feeder.send(readings(5, 20, start_s=t0))
    feeder.wait_acked(100)
    # A new valid certificate for the same gateway (the old one is superseded in the CRL).
    pki.issue_client(local_stack.paths.pki_dir, gw, overwrite=True)
    assert agent.proc is not None
    agent.proc.send_signal(1)  # SIGHUP
    feeder.send(readings(5, 20, start_s=t0 + 1))
    feeder.wait_acked(200)
    deadline = time.monotonic() + 30
    while "certificate rotated" not in agent.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "certificate rotated" in agent.log.read_text()
    # A broken key is refused; the agent keeps the working certificate and keeps delivering.
    key = local_stack.layout.client_key(gw)
    good_key = key.read_bytes()
    key.write_bytes(FAKE_KEY_PEM)
    agent.proc.send_signal(1)
    deadline = time.monotonic() + 30
    while "rotation refused" not in agent.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    feeder.send(readings(5, 20, start_s=t0 + 2))
    feeder.wait_acked(300)
    seen = wait_delivered(reader, gw, 300)
    feeder.close()
    key.write_bytes(good_key)
    assert agent.terminate() == 0
    assert "rotation refused" in agent.log.read_text()
    assert sum(int(b.count.sum()) for b in seen.values()) == 300
