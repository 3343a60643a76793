"""Modbus TCP source: polls meter registers every `poll_s` with pymodbus's sync client.

Registers next to each other on the same device and table are read in one request (up to 125
registers, the protocol's limit), so a meter's dozen values cost one round trip. Every reading of
a poll carries the poll's time. An unreachable meter is retried with capped, jittered backoff;
errors are counted and logged on state changes, never raised out of the polling thread.
"""

from __future__ import annotations

import logging
import math
import random
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from edge_agent.errors import RejectedReadingError
from edge_agent.metrics import AgentMetrics
from edge_agent.reading import Reading, make_reading
from edge_agent.sources.base import Door, Intake
from meterlink_wire import Channel, Unit, validate_meter_id

log = logging.getLogger("edge_agent.sources.modbus")

#: dtype → (registers, struct format of the big-endian bytes).
DTYPES: dict[str, tuple[int, str]] = {
    "uint16": (1, ">H"),
    "int16": (1, ">h"),
    "uint32": (2, ">I"),
    "int32": (2, ">i"),
    "float32": (2, ">f"),
}
KINDS = ("holding", "input")
WORD_ORDERS = ("big", "little")
#: Most registers one read may ask for (Modbus application protocol, function codes 3 and 4).
MAX_READ_REGISTERS = 125
#: Error kinds counted in `ModbusSource.errors`.
ERROR_KINDS = ("connect", "io", "exception", "short_response")


@dataclass(frozen=True)
class RegisterSpec:
    """One meter value in a device's registers and how to decode it.

    `word_order` "little" means the low 16-bit word comes first (bytes within a word are always
    big-endian, as Modbus sends them). The decoded number is multiplied by `scale`. Raises
    ValueError (or the wire's WireError for the meter id) for a spec that cannot work.
    """

    meter: str
    channel: Channel
    unit: Unit
    address: int
    dtype: str = "uint16"
    kind: str = "holding"
    word_order: str = "big"
    scale: float = 1.0
    device_id: int = 1

    def __post_init__(self) -> None:
        validate_meter_id(self.meter)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.word_order not in WORD_ORDERS:
            raise ValueError(f"word_order must be 'big' or 'little', got {self.word_order!r}")
        if not 0 <= self.address <= 0xFFFF - self.count + 1:
            raise ValueError(f"address {self.address} out of range for {self.dtype}")
        if not 0 <= self.device_id <= 255:
            raise ValueError(f"device_id must be 0..255, got {self.device_id}")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"scale must be a finite non-zero number, got {self.scale}")

    @property
    def count(self) -> int:
        """Registers this value occupies."""
        return DTYPES[self.dtype][0]

    def decode(self, words: Sequence[int]) -> float:
        """The scaled value held by `words` (exactly `count` registers)."""
        ordered = reversed(words) if self.word_order == "little" else words
        raw = b"".join(word.to_bytes(2, "big") for word in ordered)
        number: float = struct.unpack(DTYPES[self.dtype][1], raw)[0]
        return number * self.scale if self.scale != 1.0 else float(number)


@dataclass(frozen=True)
class ModbusSettings:
    """Which device to poll, how often, and what to read."""

    host: str
    port: int = 502
    registers: tuple[RegisterSpec, ...] = ()
    poll_s: float = 15.0
    timeout_s: float = 2.0
    backoff_first_s: float = 1.0
    backoff_max_s: float = 60.0
    #: Unused registers a read may span to join two values into one request (0: only adjacent).
    max_gap: int = 0

    def __post_init__(self) -> None:
        if self.poll_s <= 0 or self.timeout_s <= 0:
            raise ValueError("poll_s and timeout_s must be positive")
        if not 0 <= self.max_gap < MAX_READ_REGISTERS:
            raise ValueError(f"max_gap must be 0..{MAX_READ_REGISTERS - 1}, got {self.max_gap}")


class ReadBlock(NamedTuple):
    """One read request: a run of registers in one table of one device, and the values in it."""

    device_id: int
    kind: str
    address: int
    size: int
    specs: tuple[RegisterSpec, ...]


def plan_reads(
    registers: Sequence[RegisterSpec], *, max_gap: int = 0, max_count: int = MAX_READ_REGISTERS
) -> list[ReadBlock]:
    """Group register specs into as few reads as the gap and size limits allow."""
    ordered = sorted(registers, key=lambda s: (s.device_id, s.kind, s.address))
    blocks: list[ReadBlock] = []
    group: list[RegisterSpec] = []
    start = end = 0
    for spec in ordered:
        spec_end = spec.address + spec.count
        joins = (
            group
            and (spec.device_id, spec.kind) == (group[0].device_id, group[0].kind)
            and spec.address <= end + max_gap
            and max(end, spec_end) - start <= max_count
        )
        if joins:
            group.append(spec)
            end = max(end, spec_end)
            continue
        if group:
            blocks.append(_block(group, start, end))
        group, start, end = [spec], spec.address, spec_end
    if group:
        blocks.append(_block(group, start, end))
    return blocks


def _block(group: list[RegisterSpec], start: int, end: int) -> ReadBlock:
    return ReadBlock(group[0].device_id, group[0].kind, start, end - start, tuple(group))


@dataclass
class _LinkState:
    up: bool = True
    backoff_s: float = 0.0
    failing_blocks: set[int] = field(default_factory=set)


class ModbusSource:
    """Polls one Modbus TCP device (or gateway) from its own thread."""

    def __init__(self, settings: ModbusSettings, metrics: AgentMetrics, *, name: str = "modbus"):
        if not settings.registers:
            raise ValueError("ModbusSettings.registers is empty")
        self.name = name
        self.settings = settings
        self.blocks = plan_reads(settings.registers, max_gap=settings.max_gap)
        self._door = Door(name, metrics)
        self._intake: Intake | None = None
        self._client = ModbusTcpClient(
            settings.host, port=settings.port, timeout=settings.timeout_s, retries=0
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._link = _LinkState(backoff_s=settings.backoff_first_s)
        #: Errors by kind (see ERROR_KINDS); polls completed; polls the intake refused.
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.polls = 0
        self.refused = 0

    def start(self, intake: Intake) -> None:
        """Start the polling thread; the first poll happens at once."""
        if self._thread is not None:
            raise RuntimeError(f"source {self.name} already started")
        self._intake = intake
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling, join the thread and close the connection."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("source_stop_timeout source=%s timeout_s=%s", self.name, timeout_s)
        self._close_client()

    def _run(self) -> None:
        next_poll = time.monotonic()
        while not self._stopping.wait(max(0.0, next_poll - time.monotonic())):
            if self._poll():
                self._link.backoff_s = self.settings.backoff_first_s
                next_poll += self.settings.poll_s
                now = time.monotonic()
                if next_poll < now:
                    # Late (slow device or long outage): skip the missed ticks, keep the phase.
                    next_poll += math.ceil((now - next_poll) / self.settings.poll_s) * (
                        self.settings.poll_s
                    )
            else:
                next_poll = time.monotonic() + self._next_backoff()
            self._door.tick()

    def _next_backoff(self) -> float:
        delay = self._link.backoff_s
        self._link.backoff_s = min(delay * 2, self.settings.backoff_max_s)
        # Jitter so a gateway full of meters that lost power together does not retry in step.
        return delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography

    def _poll(self) -> bool:
        """One poll; False if the device is unreachable (the caller backs off)."""
        if not self._client.connected and not self._connect_client():
            self._link_down("connect", "connection refused or timed out")
            return False
        ts_ms = int(time.time() * 1000)
        readings: list[Reading] = []
        rejected = 0
        for index, block in enumerate(self.blocks):
            try:
                response = self._read(block)
            except (ModbusException, OSError) as exc:
                self._close_client()
                self._link_down("io", str(exc))
                return False
            words = response.registers
            if response.isError() or len(words) < block.size:
                kind = "exception" if response.isError() else "short_response"
                self._block_failed(index, block, kind, response)
                continue
            self._block_ok(index, block)
            for spec in block.specs:
                offset = spec.address - block.address
                value = spec.decode(words[offset : offset + spec.count])
                try:
                    readings.append(
                        make_reading(
                            spec.meter, spec.channel.wire_name, value, spec.unit.wire_name, ts_ms
                        )
                    )
                except RejectedReadingError as err:
                    rejected += 1
                    self._door.reject(err, f"{block.kind} register {spec.address}")
        self._link_up()
        self.polls += 1
        self._door.received(len(readings) + rejected)
        self._submit(readings, rejected)
        return True

    # pymodbus is typed (py.typed) but ModbusTcpClient.connect()/close() carry no annotations.
    def _connect_client(self) -> bool:
        return bool(self._client.connect())  # type: ignore[no-untyped-call]

    def _close_client(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def _read(self, block: ReadBlock) -> ModbusPDU:
        if block.kind == "input":
            return self._client.read_input_registers(
                block.address, count=block.size, device_id=block.device_id
            )
        return self._client.read_holding_registers(
            block.address, count=block.size, device_id=block.device_id
        )

    def _submit(self, readings: list[Reading], rejected: int) -> None:
        assert self._intake is not None
        if not readings and not rejected:
            return
        # A refused poll is not retried: registers are live values, the next poll is fresher.
        if not self._intake.submit(readings, source=self.name, rejected=rejected):
            self.refused += 1

    def _link_down(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if self._link.up:
            self._link.up = False
            log.warning(
                "modbus_unreachable source=%s host=%s port=%d error=%s detail=%s",
                self.name,
                self.settings.host,
                self.settings.port,
                kind,
                detail,
            )

    def _link_up(self) -> None:
        if not self._link.up:
            self._link.up = True
            log.info(
                "modbus_reconnected source=%s host=%s port=%d errors=%s",
                self.name,
                self.settings.host,
                self.settings.port,
                self.errors,
            )

    def _block_failed(self, index: int, block: ReadBlock, kind: str, response: ModbusPDU) -> None:
        self.errors[kind] += 1
        if index not in self._link.failing_blocks:
            self._link.failing_blocks.add(index)
            log.warning(
                "modbus_read_failed source=%s device_id=%d kind=%s address=%d count=%d "
                "error=%s response=%s",
                self.name,
                block.device_id,
                block.kind,
                block.address,
                block.size,
                kind,
                response,
            )

    def _block_ok(self, index: int, block: ReadBlock) -> None:
        if index in self._link.failing_blocks:
            self._link.failing_blocks.discard(index)
            log.info(
                "modbus_read_recovered source=%s device_id=%d kind=%s address=%d",
                self.name,
                block.device_id,
                block.kind,
                block.address,
            )
