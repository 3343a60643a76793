"""Pipeline with a real buffer and a clock the test sets: a gateway clock that is set back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.aggregate import WindowAggregator
from edge_agent.buffer import DurableBuffer
from edge_agent.metrics import AgentMetrics
from edge_agent.pipeline import Pipeline
from edge_agent.priority import PriorityLane
from edge_agent.reading import Reading
from meterlink_wire import Channel, Kind, ReadingBatch, Unit, decode

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in ms
W = 60_000
YEAR = 365 * 24 * 3600 * 1000
E, KWH = Channel.ENERGY_IMPORT, Unit.KWH


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


class Gateway:
    """A pipeline over a real DurableBuffer in a temporary directory, driven step by step."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.clock = clock
        self.metrics = AgentMetrics()
        self.buffer = DurableBuffer(path, max_bytes=64 * 1024 * 1024)
        self.pipeline = Pipeline(
            gateway_id="gw-clock",
            buffer=self.buffer,
            aggregator=WindowAggregator(
                60,
                5.0,
                closed_until_ms=self.buffer.closed_until_ms,
                registers=self.buffer.registers(),
            ),
            lane=PriorityLane(()),
            metrics=self.metrics,
            max_message_bytes=128_000,
            buffer_max_bytes=64 * 1024 * 1024,
            clock=clock,
        )
        self.pipeline.recover()

    def feed(self, readings: list[Reading], at_ms: int) -> None:
        self.clock.ms = at_ms
        assert self.pipeline.submit(readings, source="test")
        self.pipeline.step(0)

    def sent(self) -> list[ReadingBatch]:
        return [decode(m.payload) for m in self.buffer.pending(1000) if m.kind is Kind.TELEMETRY]

    def metric(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(f"meterlink_agent_{name}")
        return 0.0 if value is None else value


def energy(ts: int, value: float, meter: str = "m1") -> Reading:
    return Reading(meter, E, KWH, ts, value)


def rows(batches: list[ReadingBatch]) -> list[tuple[int, int, float, float | None]]:
    """(start_ms, count, last, delta) of every row sent, in order."""
    return [
        (row.start_ms, row.count, row.last, row.delta) for batch in batches for row in batch.rows()
    ]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buffer.db"


def test_a_clock_set_back_a_year_rewinds_and_loses_no_reading(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ahead = T0 + YEAR  # the gateway's clock ran a year ahead, and stamped its readings so
    gw = Gateway(path, Clock(ahead))
    gw.feed([energy(ahead + 1_000, 100.0), energy(ahead + 2_000, 101.0)], ahead + 3_000)
    gw.feed([energy(ahead + W + 1_000, 102.0)], ahead + 2 * W + 6_000)  # two windows close
    gw.feed([energy(ahead + 2 * W + 1_000, 103.0)], ahead + 2 * W + 7_000)  # stays open
    assert gw.buffer.closed_until_ms == ahead + 2 * W
    # NTP puts the clock right: a year back. Readings stamped by the right clock arrive.
    caplog.set_level(logging.ERROR, logger="edge_agent.pipeline")
    gw.feed([energy(T0 + 1_000, 104.0), energy(T0 + 2_000, 105.5)], T0 + 3_000)
    assert gw.pipeline.late == 0
    assert gw.metric("clock_rewinds_total") == 1.0
    assert gw.buffer.closed_until_ms == T0 - W  # the clock's own boundary, lateness included
    assert gw.buffer.journaled() == [energy(T0 + 1_000, 104.0), energy(T0 + 2_000, 105.5)]
    assert [r.getMessage() for r in caplog.records] == [
        f"clock_went_back watermark_ms={ahead + 2 * W} now_ms={T0 + 3_000} "
        f"rewound_to_ms={T0 - W} windows_emitted=1"
    ]
    gw.feed([], T0 + W + 6_000)
    # Every reading went out, once; the register's advance is counted whole, across the jump.
    assert rows(gw.sent()) == [
        (ahead, 2, 101.0, 1.0),
        (ahead + W, 1, 102.0, 1.0),
        (ahead + 2 * W, 1, 103.0, 1.0),  # emitted by the rewind, still open then
        (T0, 2, 105.5, 2.5),
    ]
    stats = gw.buffer.stats()
    assert (stats.outbox_readings, stats.journal_readings, stats.journaled_readings) == (6, 0, 6)
    gw.buffer.close()
    # A restart resumes from the rewound watermark and references.
    again = Gateway(path, Clock(T0 + W + 7_000))
    assert again.buffer.closed_until_ms == T0 + W
    assert again.buffer.registers() == {("m1", E, KWH): (T0 + 2_000, 105.5)}
    again.feed([energy(T0 + W + 1_000, 106.0)], T0 + 2 * W + 6_000)
    assert rows(again.sent())[-1] == (T0 + W, 1, 106.0, 0.5)
    again.buffer.close()


def test_a_clock_set_back_at_a_restart_rewinds_on_the_first_step(path: Path) -> None:
    ahead = T0 + 30 * 24 * 3600 * 1000
    gw = Gateway(path, Clock(ahead))
    gw.feed([energy(ahead + 1_000, 5.0)], ahead + W + 6_000)
    gw.buffer.close()
    restarted = Gateway(path, Clock(T0))  # the power came back with the right time
    restarted.feed([energy(T0 - 10_000, 6.0)], T0 + 1_000)
    assert restarted.pipeline.late == 0
    assert restarted.metric("clock_rewinds_total") == 1.0
    restarted.feed([], T0 + W + 6_000)
    assert rows(restarted.sent()) == [(ahead, 1, 5.0, 0.0), (T0 - W, 1, 6.0, 1.0)]
    restarted.buffer.close()


def test_a_small_step_back_keeps_the_watermark(path: Path) -> None:
    gw = Gateway(path, Clock(T0))
    gw.feed([energy(T0 + 1_000, 1.0)], T0 + 3 * W + 6_000)
    assert gw.buffer.closed_until_ms == T0 + 3 * W
    # NTP steps the clock back ten minutes: under the 15-minute floor, so no rewind, and a
    # reading for a window already closed is late, as before.
    gw.feed([energy(T0 + 2 * W, 2.0), energy(T0 + 3 * W + 1_000, 3.0)], T0 - 7 * W)
    assert gw.metric("clock_rewinds_total") == 0.0
    assert gw.pipeline.late == 1
    assert gw.buffer.closed_until_ms == T0 + 3 * W
    gw.buffer.close()


def power(ts: int, meter: str) -> Reading:
    return Reading(meter, Channel.POWER, Unit.KW, ts, 1.5)


def test_a_meter_stamping_a_year_ahead_goes_out_raw_and_holds_no_journal(path: Path) -> None:
    gw = Gateway(path, Clock(T0))
    sizes = []
    for minute in range(10):
        for second in range(0, 60, 20):
            now = T0 + minute * W + second * 1_000
            good = [power(now, f"m{m}") for m in range(3)]
            gw.feed([*good, power(now + YEAR, "bad")], now)
        sizes.append(gw.buffer.stats().journal_bytes)
    # Without the raw path every chunk held a reading a year ahead, and the journal grew each
    # minute; now it holds only the open window's chunks.
    assert len(set(sizes)) == 1
    assert gw.metric("readings_ahead_total") == 30.0
    assert gw.pipeline.late == 0
    raw = [b for b in gw.sent() if b.window_s == 0]
    assert len(raw) == 30
    assert [(r.meter_id, r.start_ms, r.count, r.last) for b in raw for r in b.rows()] == [
        ("bad", T0 + minute * W + second * 1_000 + YEAR, 1, 1.5)
        for minute in range(10)
        for second in range(0, 60, 20)
    ]
    windowed = [r for b in gw.sent() if b.window_s == 60 for r in b.rows()]
    assert {r.meter_id for r in windowed} == {"m0", "m1", "m2"}
    stats = gw.buffer.stats()
    assert (
        stats.journaled_readings
        == 120
        == (
            stats.journal_readings
            + stats.outbox_readings
            + stats.delivered_readings
            + stats.dropped_readings
        )
    )
    assert stats.outbox_readings + gw.pipeline.open_readings == 120
    gw.buffer.close()


def test_a_gateway_clock_behind_after_a_power_cut_loses_nothing(path: Path) -> None:
    gw = Gateway(path, Clock(T0))
    gw.feed([energy(T0 + 1_000, 10.0)], T0 + W + 6_000)
    gw.buffer.close()
    # Power comes back without an RTC: the clock starts at the image's date, years behind, and
    # the meters keep their own (right) time. The watermark rewinds; their readings go out raw.
    booted = T0 - 3 * YEAR
    back = Gateway(path, Clock(booted))
    back.feed([energy(T0 + 2 * W, 11.0), energy(T0 + 2 * W + 10_000, 11.5)], booted)
    assert back.metric("clock_rewinds_total") == 1.0
    assert back.metric("readings_ahead_total") == 2.0
    # NTP: the clock is right again, and readings are windowed as before.
    back.feed([energy(T0 + 3 * W + 1_000, 12.0)], T0 + 3 * W + 2_000)
    back.feed([], T0 + 4 * W + 6_000)
    assert [
        (b.window_s, r.start_ms, r.count, r.last, r.delta) for b in back.sent() for r in b.rows()
    ] == [
        (60, T0, 1, 10.0, 0.0),
        (0, T0 + 2 * W, 1, 11.0, None),
        (0, T0 + 2 * W + 10_000, 1, 11.5, None),
        (60, T0 + 3 * W, 1, 12.0, 2.0),  # the advance since the last window, raw rows included
    ]
    assert back.pipeline.late == 0
    back.buffer.close()
