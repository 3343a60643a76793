"""The Modbus source against pymodbus's own TCP server: decoding, batching, outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from edge_agent.metrics import AgentMetrics, value
from edge_agent.reading import Reading
from edge_agent.sources.modbus import (
    ModbusSettings,
    ModbusSource,
    ReadBlock,
    RegisterSpec,
    plan_reads,
)
from meterlink_wire import Channel, Unit, WireError
from tests.conftest import free_port
from tests.edge.sources_helpers import ModbusServer, RecordingIntake, register_device, wait_until

pytestmark = pytest.mark.integration

# Raw register words, written out so the test does not share the decoder's arithmetic.
HOLDING_1 = {
    100: 0x0001,  # uint32 big 0x0001E240 = 123456
    101: 0xE240,
    102: 0x5678,  # uint32 little 0x12345678 = 305419896
    103: 0x1234,
    104: 0xFB2E,  # int16 -1234
    105: 0x4366,  # float32 big 0x43668000 = 230.5
    106: 0x8000,
    107: 0x0000,  # float32 little 0x42480000 = 50.0
    108: 0x4248,
    # 109 is not a register on this device: reading it gets an exception response.
    110: 0xFFFF,  # int32 big -2
    111: 0xFFFE,
    112: 0xFFFF,  # uint16 65535
}
INPUT_1 = {0: 0x7960, 1: 0xFFFE}  # int32 little 0xFFFE7960 = -100000
HOLDING_2 = {0: 7, 10: 0x7FC0, 11: 0x0000}  # uint16 7; float32 NaN

M1, M2 = "elec-000001", "elec-000002"
SPECS = (
    RegisterSpec(M1, Channel.ENERGY_IMPORT, Unit.KWH, 100, "uint32", scale=0.01),
    RegisterSpec(M1, Channel.ENERGY_EXPORT, Unit.WH, 102, "uint32", word_order="little"),
    RegisterSpec(M1, Channel.POWER, Unit.W, 104, "int16", scale=0.5),
    RegisterSpec(M1, Channel.VOLTAGE, Unit.V, 105, "float32"),
    RegisterSpec(M1, Channel.FREQUENCY, Unit.HZ, 107, "float32", word_order="little"),
    RegisterSpec(M1, Channel.REACTIVE_POWER, Unit.VAR, 110, "int32", scale=0.25),
    RegisterSpec(M1, Channel.CURRENT, Unit.A, 112, "uint16"),
    RegisterSpec(M1, Channel.TEMPERATURE, Unit.DEG_C, 0, "int32", "input", "little", scale=0.001),
    RegisterSpec(M2, Channel.TAMPER, Unit.FLAG, 0, "uint16", device_id=2),
    RegisterSpec(M2, Channel.PRESSURE, Unit.BAR, 10, "float32", device_id=2),
)


def expected(ts_ms: int) -> list[Reading]:
    return [
        Reading(M1, Channel.ENERGY_IMPORT, Unit.KWH, ts_ms, 123456 * 0.01),
        Reading(M1, Channel.ENERGY_EXPORT, Unit.WH, ts_ms, 305419896.0),
        Reading(M1, Channel.POWER, Unit.W, ts_ms, -617.0),
        Reading(M1, Channel.VOLTAGE, Unit.V, ts_ms, 230.5),
        Reading(M1, Channel.FREQUENCY, Unit.HZ, ts_ms, 50.0),
        Reading(M1, Channel.REACTIVE_POWER, Unit.VAR, ts_ms, -0.5),
        Reading(M1, Channel.CURRENT, Unit.A, ts_ms, 65535.0),
        Reading(M1, Channel.TEMPERATURE, Unit.DEG_C, ts_ms, -100000 * 0.001),
        Reading(M2, Channel.TAMPER, Unit.FLAG, ts_ms, 7.0),
        # M2's pressure is NaN: rejected at the door, not passed on.
    ]


@pytest.fixture
def server() -> Iterator[ModbusServer]:
    srv = ModbusServer(
        [register_device(1, HOLDING_1, INPUT_1), register_device(2, HOLDING_2)]
    ).start()
    yield srv
    srv.close()


@pytest.fixture
def metrics() -> AgentMetrics:
    return AgentMetrics()


def fast(port: int, registers: tuple[RegisterSpec, ...] = SPECS, **kw: float) -> ModbusSettings:
    return ModbusSettings(
        host="127.0.0.1",
        port=port,
        registers=registers,
        poll_s=kw.get("poll_s", 0.1),
        timeout_s=1.0,
        backoff_first_s=0.05,
        backoff_max_s=0.2,
    )


def test_decodes_every_type_word_order_and_scale(
    server: ModbusServer, metrics: AgentMetrics
) -> None:
    intake = RecordingIntake()
    source = ModbusSource(fast(server.port, poll_s=60), metrics)
    before = int(time.time() * 1000)
    source.start(intake)
    try:
        wait_until(lambda: len(intake.submissions) == 1, what="the first poll")
        after = int(time.time() * 1000)
        (submission,) = intake.submissions
        ts_ms = submission.readings[0].ts_ms
        assert before <= ts_ms <= after
        assert list(submission.readings) == expected(ts_ms)
        assert submission.source == "modbus"
        assert submission.rejected == 1
        assert value(metrics.readings_rejected, source="modbus", reason="non_finite") == 1
        assert value(metrics.readings_in, source="modbus") == 10
        assert source.errors == {"connect": 0, "io": 0, "exception": 0, "short_response": 0}
    finally:
        source.stop()
        intake.close()


def test_adjacent_registers_are_read_together() -> None:
    assert [(b.device_id, b.kind, b.address, b.size) for b in plan_reads(SPECS)] == [
        (1, "holding", 100, 9),  # 100..108; 109 is a hole, so 110 starts a new read
        (1, "holding", 110, 3),
        (1, "input", 0, 2),
        (2, "holding", 0, 1),
        (2, "holding", 10, 2),
    ]
    assert [(b.address, b.size) for b in plan_reads(SPECS, max_gap=1)][:1] == [(100, 13)]
    many = [RegisterSpec(M1, Channel.POWER, Unit.W, a, "float32") for a in range(0, 300, 2)]
    blocks = plan_reads(many)
    assert [(b.address, b.size) for b in blocks] == [(0, 124), (124, 124), (248, 52)]
    assert sum(len(b.specs) for b in blocks) == 150
    assert isinstance(blocks[0], ReadBlock)


def test_one_failing_read_does_not_stop_the_others(
    server: ModbusServer, metrics: AgentMetrics
) -> None:
    missing = RegisterSpec(M2, Channel.VOLUME, Unit.M3, 500, "uint32")
    good = RegisterSpec(M1, Channel.CURRENT, Unit.A, 112, "uint16")
    intake = RecordingIntake()
    source = ModbusSource(fast(server.port, (missing, good)), metrics)
    source.start(intake)
    try:
        wait_until(lambda: len(intake.submissions) >= 2, what="two polls")
        assert [r.value for r in intake.submissions[0].readings] == [65535.0]
        assert source.errors["exception"] >= 2
        assert source.errors["io"] == 0
    finally:
        source.stop()
        intake.close()


def test_survives_the_meter_going_away_and_resumes(
    server: ModbusServer, metrics: AgentMetrics
) -> None:
    intake = RecordingIntake()
    source = ModbusSource(fast(server.port), metrics)
    source.start(intake)
    try:
        wait_until(lambda: source.polls >= 2, what="polls while up")
        server.stop()
        wait_until(
            lambda: source.errors["io"] + source.errors["connect"] >= 3, what="errors while down"
        )
        polls_while_down = source.polls
        submitted_while_down = len(intake.submissions)
        wait_until(lambda: source.errors["connect"] >= 3, what="reconnect attempts")
        assert source.polls == polls_while_down
        assert len(intake.submissions) == submitted_while_down
        server.start()
        wait_until(lambda: source.polls >= polls_while_down + 2, what="polls after recovery")
        last = intake.submissions[-1]
        assert list(last.readings) == expected(last.readings[0].ts_ms)
        assert source.errors["io"] + source.errors["connect"] >= 3
        assert source._thread is not None and source._thread.is_alive()
    finally:
        source.stop()
        intake.close()


def test_unreachable_from_the_start_then_the_meter_appears(metrics: AgentMetrics) -> None:
    port = free_port()
    intake = RecordingIntake()
    source = ModbusSource(fast(port), metrics)
    source.start(intake)
    srv = ModbusServer(
        [register_device(1, HOLDING_1, INPUT_1), register_device(2, HOLDING_2)], port
    )
    try:
        wait_until(lambda: source.errors["connect"] >= 3, what="failed connects")
        assert intake.submissions == []
        srv.start()
        wait_until(lambda: len(intake.submissions) >= 1, what="the first poll")
        first = intake.submissions[0]
        assert list(first.readings) == expected(first.readings[0].ts_ms)
    finally:
        source.stop()
        srv.close()
        intake.close()


def test_refused_polls_are_counted_and_polling_goes_on(
    server: ModbusServer, metrics: AgentMetrics
) -> None:
    intake = RecordingIntake(refuse=True)
    source = ModbusSource(fast(server.port), metrics)
    source.start(intake)
    try:
        wait_until(lambda: source.refused >= 3, what="refused polls")
        assert intake.readings == []
        intake.refuse = False
        wait_until(lambda: len(intake.readings) >= 9, what="accepted poll")
        accepted = next(sub for sub in intake.submissions if sub.accepted)
        assert list(accepted.readings) == expected(accepted.readings[0].ts_ms)
        assert all(len(sub.readings) == 9 for sub in intake.submissions)
    finally:
        source.stop()
        intake.close()


def test_stop_is_prompt_during_backoff(metrics: AgentMetrics) -> None:
    settings = ModbusSettings(
        host="127.0.0.1",
        port=free_port(),
        registers=SPECS[:1],
        backoff_first_s=30,
        backoff_max_s=30,
    )
    source = ModbusSource(settings, metrics)
    intake = RecordingIntake()
    source.start(intake)
    try:
        wait_until(lambda: source.errors["connect"] == 1, what="the first failure")
        started = time.monotonic()
        source.stop(timeout_s=5)
        assert time.monotonic() - started < 2
        assert not any(t.name == "source-modbus" for t in threading.enumerate())
    finally:
        intake.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"kind": "coil"}, "kind must be one of"),
        ({"word_order": "middle"}, "word_order must be"),
        ({"address": 65535, "dtype": "uint32"}, "address 65535 out of range"),
        ({"device_id": 256}, "device_id must be"),
        ({"scale": float("nan")}, "scale must be"),
    ],
)
def test_register_spec_refuses_what_cannot_work(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "meter": M1,
        "channel": Channel.POWER,
        "unit": Unit.W,
        "address": 0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        RegisterSpec(**args)


def test_register_spec_refuses_a_bad_meter_id() -> None:
    with pytest.raises(WireError):
        RegisterSpec("no spaces allowed", Channel.POWER, Unit.W, 0)
