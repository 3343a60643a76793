"""Test helpers for the reading sources: a recording intake and real servers to read from.

`RecordingIntake` stands in for the pipeline (our own logic, so a double is fine): it records what
is submitted and calls `on_durable` from its own thread, in order, like the pipeline does, or
withholds the callbacks, or refuses. The servers are real: a mosquitto process and pymodbus's own
Modbus TCP server, each on a free loopback port.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.reading import Reading
from tests.conftest import free_port, wait_for_port

MOSQUITTO = "/usr/sbin/mosquitto"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it is true; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


def line(meter: str = "elec-000001", value: Any = 1.42, **fields: Any) -> bytes:
    """One JSON reading line (newline included), overriding any field."""
    doc = {"meter": meter, "channel": "power", "value": value, "unit": "kW", "ts": 1764201600.5}
    doc.update(fields)
    return orjson.dumps(doc) + b"\n"


@dataclass(frozen=True)
class Submission:
    """One call to `submit`, as the intake saw it."""

    readings: tuple[Reading, ...]
    source: str
    rejected: int
    accepted: bool


class RecordingIntake:
    """Records submissions; acknowledges them from a 'pipeline' thread unless told otherwise.

    `hold` withholds on_durable callbacks (release them with `release()`); `refuse` makes submit
    return False; `delay_s` waits before each callback (a slow group commit).
    """

    def __init__(self, *, hold: bool = False, refuse: bool = False, delay_s: float = 0.0) -> None:
        self.hold = hold
        self.refuse = refuse
        self.delay_s = delay_s
        self.submissions: list[Submission] = []
        self.durable_calls = 0
        self._held: list[Callable[[], None]] = []
        self._pending: list[Callable[[], None]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._pipeline, name="test-pipeline", daemon=True)
        self._thread.start()

    def submit(
        self,
        readings: Sequence[Reading],
        *,
        source: str,
        rejected: int = 0,
        on_durable: Callable[[], None] | None = None,
    ) -> bool:
        with self._cond:
            accepted = not self.refuse
            self.submissions.append(Submission(tuple(readings), source, rejected, accepted))
            if accepted and on_durable is not None:
                (self._held if self.hold else self._pending).append(on_durable)
                self._cond.notify_all()
            return accepted

    @property
    def readings(self) -> list[Reading]:
        """Every reading of every accepted submission, in order."""
        with self._cond:
            return [r for s in self.submissions if s.accepted for r in s.readings]

    @property
    def rejected(self) -> int:
        with self._cond:
            return sum(s.rejected for s in self.submissions)

    @property
    def refused(self) -> int:
        with self._cond:
            return sum(1 for s in self.submissions if not s.accepted)

    def release(self) -> int:
        """Acknowledge every withheld submission (in order) and stop holding; returns how many."""
        with self._cond:
            self.hold = False
            released = len(self._held)
            self._pending.extend(self._held)
            self._held.clear()
            self._cond.notify_all()
            return released

    @property
    def held(self) -> int:
        with self._cond:
            return len(self._held)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)

    def _pipeline(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                callback = self._pending.pop(0)
            if self.delay_s:
                time.sleep(self.delay_s)
            callback()
            with self._cond:
                self.durable_calls += 1


class Mosquitto:
    """A real mosquitto on a free loopback port: plain TCP, anonymous, no persistence.

    Run as root, mosquitto drops to the `mosquitto` user before reading its config, so the
    config lives in a folder of its own (0755) and is world-readable (0644); the broker's log
    goes to a file this process opened, so that user never needs to write anywhere.
    """

    def __init__(self, extra_config: str = "", port: int | None = None) -> None:
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="meterlink-mosq-"))
        self.folder.chmod(0o755)
        self.config = self.folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type all\n" + extra_config
        )
        self.config.chmod(0o644)
        self.log = self.folder / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def give_to_broker(path: Path) -> None:
    """Let the broker's user read `path` (a key stays 0600): as root it runs as `mosquitto`."""
    if os.geteuid() == 0:
        owner = pwd.getpwnam("mosquitto")
        os.chown(path, owner.pw_uid, owner.pw_gid)


class ModbusServer:
    """pymodbus's own Modbus TCP server, with its own event loop in a background thread.

    `stop()` and `start()` again on the same port simulate a meter that goes away and comes back.
    """

    def __init__(self, devices: list[SimDevice], port: int | None = None) -> None:
        self.devices = devices
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: ModbusTcpServer | None = None

    def start(self) -> ModbusServer:
        async def serve() -> ModbusTcpServer:
            server = ModbusTcpServer(self.devices, address=("127.0.0.1", self.port))
            await server.serve_forever(background=True)
            return server

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        wait_for_port(self.port, timeout=10)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            stopping = server.shutdown()  # type: ignore[no-untyped-call]
            asyncio.run_coroutine_threadsafe(stopping, self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def register_device(
    device_id: int, holding: dict[int, int], inputs: dict[int, int] | None = None
) -> SimDevice:
    """A device with separate holding and input register tables, preloaded with raw words.

    Addresses not given are invalid: reading them gets a Modbus exception response.
    """

    def blocks(words: dict[int, int]) -> list[SimData]:
        return [
            SimData(address, values=value, datatype=DataType.REGISTERS)
            for address, value in sorted(words.items())
        ]

    # Coils and discrete inputs are unused but the separate-tables form needs all four lists.
    bits = [SimData(0, values=False, datatype=DataType.BITS)]
    return SimDevice(
        device_id,
        simdata=(bits, list(bits), blocks(holding), blocks(inputs or {0: 0})),
    )
