"""Runs real `edge-agent` processes against the local stack and feeds them like meters do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from meterlink_stack import stack
from meterlink_wire import Kind, ReadingBatch, decode
from tests.integration.stackclient import LocalStack, StreamReader


def agent_config(
    st: LocalStack,
    root: Path,
    gateway_id: str,
    *,
    window_s: int = 1,
    lateness_s: float = 0.2,
    max_bytes: int = 64 * 1024 * 1024,
    when_full: str = "drop_oldest",
    metrics_port: int | None = None,
) -> Path:
    """An agent config for `gateway_id` against the local stack, tuned for quick tests."""
    settings: dict[str, dict[str, Any]] = {
        "windows": {"size_s": window_s, "allowed_lateness_s": lateness_s},
        "buffer": {"max_bytes": max_bytes, "when_full": when_full},
        "publish": {"backoff_min_s": 1, "backoff_max_s": 2, "status_interval_s": 1},
        "priority": {"enabled": False},
    }
    if metrics_port:
        settings["metrics"] = {"port": metrics_port}
    return stack.agent_config(st.paths, gateway_id, folder=root, settings=settings)


#: Every agent a test started, so a failing test cannot leave one running (see conftest).
STARTED: list[AgentProcess] = []


@dataclass
class AgentProcess:
    """An `edge-agent` subprocess with its log file."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.config.parent / "agent.log"

    @property
    def socket_path(self) -> Path:
        return self.config.parent / "readings.sock"

    def start(self, timeout: float = 20.0) -> None:
        self.socket_path.unlink(missing_ok=True)
        STARTED.append(self)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout
        # Ready means accepting: the socket file appears at bind(), before listen().
        while not _accepts(self.socket_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"agent did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class Feeder:
    """A meter adapter writing JSON lines to the agent's socket and counting its `ok` replies."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sent = 0
        self.acked = 0
        self._pending = b""

    def send(self, readings: list[dict[str, Any]]) -> None:
        self.sock.sendall(b"".join(orjson.dumps(r) + b"\n" for r in readings))
        self.sent += len(readings)

    def send_raw(self, data: bytes, lines: int) -> None:
        self.sock.sendall(data)
        self.sent += lines

    def read_acks(self, timeout: float = 0.0) -> None:
        """Consume `ok N` replies (N counts lines consumed on this connection)."""
        self.sock.settimeout(timeout if timeout > 0 else 0.0001)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self._pending += chunk
                *lines, self._pending = self._pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"ok "):
                        self.acked = max(self.acked, int(line.split()[1]))
                if timeout <= 0:
                    continue
        except (TimeoutError, BlockingIOError, OSError):
            pass

    def wait_acked(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < count and time.monotonic() < deadline:
            self.read_acks(0.2)
        assert self.acked >= count, f"{self.acked} of {count} lines acknowledged"

    def close(self) -> None:
        self.sock.close()


def readings(
    meters: int,
    per_meter: int,
    *,
    start_s: float,
    step_s: float = 0.01,
    channel: str = "power",
    unit: str = "kW",
) -> list[dict[str, Any]]:
    """`meters` x `per_meter` valid readings with value 1.0, in time order."""
    return [
        {
            "meter": f"m-{m:04d}",
            "channel": channel,
            "unit": unit,
            "value": 1.0,
            "ts": start_s + i * step_s,
        }
        for i in range(per_meter)
        for m in range(meters)
    ]


def delivered(reader: StreamReader, gateway_id: str, seen: dict[int, ReadingBatch]) -> int:
    """Collect the gateway's telemetry batches from Kinesis, deduped by sequence; sum counts."""
    for _shard, record in reader.poll():
        if record["PartitionKey"] != gateway_id:
            continue
        batch = decode(record["Data"])
        if batch.kind is Kind.TELEMETRY:
            seen[batch.sequence] = batch
    return sum(int(b.count.sum()) for b in seen.values())


def wait_delivered(
    reader: StreamReader, gateway_id: str, expected: int, timeout: float = 60.0
) -> dict[int, ReadingBatch]:
    """Wait until Kinesis holds `expected` readings of the gateway (deduped); returns batches."""
    seen: dict[int, ReadingBatch] = {}
    deadline = time.monotonic() + timeout
    total = 0
    while time.monotonic() < deadline:
        total = delivered(reader, gateway_id, seen)
        if total >= expected:
            break
        time.sleep(0.3)
    return seen
