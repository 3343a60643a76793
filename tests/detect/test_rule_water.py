"""Water rules: exact episodes of the leak (continuous flow), burst and backflow alarms."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pytest

from cloud_consumer.detect.base import Detector, StatefulDetector, pack_sections
from cloud_consumer.detect.engine import Engine
from cloud_consumer.detect.episodes import Alert
from cloud_consumer.detect.rules.water import (
    BurstConfig,
    BurstDetector,
    ContinuousFlowConfig,
    ContinuousFlowDetector,
    ReverseFlowConfig,
    ReverseFlowDetector,
)
from cloud_consumer.detect.state import SnapshotError
from cloud_consumer.detect.validate import Validator
from meterlink_wire.vocab import Channel, Unit
from tests.detect.readings import Reading, columns

FLOW = int(Channel.FLOW)
VOLUME = int(Channel.VOLUME)
LPM = int(Unit.L_PER_MIN)
M3 = int(Unit.M3)
HOUR = 3_600_000
MINUTE = 60_000
NAN = math.nan
BATCHES = [1, 7, 10_000]


def readings_of(
    meter: str,
    times: Iterable[int],
    value: float = 1.5,
    at: Mapping[int, float] | None = None,
    *,
    channel: int = FLOW,
    unit: int = LPM,
) -> list[Reading]:
    """One series: ``value`` at each time, except where ``at`` says otherwise."""
    overrides = at or {}
    return [(meter, t, overrides.get(t, value), channel, unit) for t in times]


def values_of(
    meter: str, values: Sequence[float], *, step: int = MINUTE, channel: int = FLOW
) -> list[Reading]:
    """One series of evenly spaced readings from ts 0."""
    unit = M3 if channel == VOLUME else LPM
    return [(meter, i * step, v, channel, unit) for i, v in enumerate(values)]


def feed(engine: Engine, readings: Sequence[Reading], batch: int = 10_000) -> list[Alert]:
    alerts: list[Alert] = []
    for start in range(0, len(readings), batch):
        alerts += engine.process(columns(readings[start : start + batch])).alerts
    return alerts


def detect(detector: Detector, readings: Sequence[Reading], batch: int = 10_000) -> list[Alert]:
    return feed(Engine([detector]), readings, batch)


def shuffled(readings: Sequence[Reading], seed: int = 5) -> list[Reading]:
    return [readings[i] for i in np.random.default_rng(seed).permutation(len(readings))]


def resumed(
    factory: Callable[[], Detector], readings: Sequence[Reading], cut_ms: int, batch: int = 7
) -> list[Alert]:
    """Alerts of readings before ``cut_ms``, then of the rest in an engine restored from a
    snapshot with a fresh detector."""
    engine = Engine([factory()])
    alerts = feed(engine, [r for r in readings if r[1] < cut_ms], batch)
    restored = Engine.restore(engine.snapshot(), [factory()])
    return alerts + feed(restored, [r for r in readings if r[1] >= cut_ms], batch)


# --- continuous flow (leak) ------------------------------------------------------------------


def ten_minutes(first_hour: int, last_hour: int, skip: Iterable[int] = ()) -> list[int]:
    """Reading times every 10 minutes over whole clock hours (hours in ``skip`` left out)."""
    missing = set(skip)
    return [
        h * HOUR + k * 10 * MINUTE
        for h in range(first_hour, last_hour + 1)
        if h not in missing
        for k in range(6)
    ]


def leak(
    meter: str, opened: int, resolved: int | None, run: int = 24, hour_min: float = 1.5
) -> Alert:
    evidence = {"run_hours": float(run), "hour_min_flow": hour_min, "threshold_hours": 24.0}
    return Alert(meter, FLOW, "continuous_flow", "warning", opened, resolved, evidence)


# Flow every 10 minutes for 28 hours; hours 0-23 flow throughout, so the first reading of hour 24
# (2.5 L/min) opens the episode; a 0.5 later in the hour keeps it open; the zero at 26:20 resolves.
LEAK = readings_of(
    "m",
    ten_minutes(0, 27),
    at={24 * HOUR: 2.5, 24 * HOUR + 10 * MINUTE: 0.5, 26 * HOUR + 20 * MINUTE: 0.0},
)
LEAK_ALERTS = [
    leak("m", 24 * HOUR, None, hour_min=2.5),
    leak("m", 24 * HOUR, 26 * HOUR + 20 * MINUTE, hour_min=2.5),
]


@pytest.mark.parametrize("batch", BATCHES)
def test_leak_opens_after_24_flowing_hours_and_resolves_at_a_zero(batch: int) -> None:
    engine = Engine([ContinuousFlowDetector()])
    assert feed(engine, LEAK, batch) == LEAK_ALERTS
    assert engine.open_alerts() == []  # the zero hour ended the run: hour 27 does not re-open


def test_leak_needs_24_complete_hours() -> None:
    engine = Engine([ContinuousFlowDetector()])
    # 23 complete hours, then hour 23 up to its last millisecond: one hour short.
    assert (
        feed(engine, [*readings_of("m", ten_minutes(0, 23)), ("m", 24 * HOUR - 1, 1.5, FLOW, LPM)])
        == []
    )
    assert feed(engine, readings_of("m", [24 * HOUR])) == [leak("m", 24 * HOUR, None)]
    assert engine.open_alerts() == [leak("m", 24 * HOUR, None)]


@pytest.mark.parametrize("no_flow", [0.0, -0.0, -0.3])
def test_an_hour_with_a_reading_without_flow_does_not_count(no_flow: float) -> None:
    readings = readings_of("m", ten_minutes(0, 25), at={50 * MINUTE: no_flow})
    assert detect(ContinuousFlowDetector(), readings) == [leak("m", 25 * HOUR, None)]


@pytest.mark.parametrize("batch", BATCHES)
def test_an_hour_without_readings_breaks_the_run(batch: int) -> None:
    # Hours 0-11, none in hour 12, hours 13-40: the run restarts at 13, 24 hours later is 37.
    readings = readings_of("m", ten_minutes(0, 40, skip=[12]))
    assert detect(ContinuousFlowDetector(), readings, batch) == [leak("m", 37 * HOUR, None)]


def test_one_reading_an_hour_is_enough_but_sparser_never_fires() -> None:
    hourly = readings_of("m", [h * HOUR + 59 * MINUTE for h in range(30)])
    assert detect(ContinuousFlowDetector(), hourly) == [leak("m", 24 * HOUR + 59 * MINUTE, None)]
    sparse = readings_of("m", [i * 90 * MINUTE for i in range(40)])  # hours without readings
    assert detect(ContinuousFlowDetector(), sparse) == []


def test_a_meter_seen_for_the_first_time_late_in_an_hour() -> None:
    # Its first hour holds one reading (00:50) and counts: the rule cannot see before it.
    readings = readings_of("new", [50 * MINUTE, *ten_minutes(1, 24)])
    assert detect(ContinuousFlowDetector(), readings) == [leak("new", 24 * HOUR, None)]


def test_leak_duplicate_timestamps() -> None:
    repeated = readings_of("m", ten_minutes(0, 25))
    repeated += [r for r in repeated if 10 * HOUR <= r[1] < 11 * HOUR or r[1] == 24 * HOUR]
    assert detect(ContinuousFlowDetector(), repeated) == [leak("m", 24 * HOUR, None)]
    # A retransmission with another value at the same timestamp is rejected by the engine
    # (backdated) before any rule sees it: the zero does not end the hour's flow.
    tie = [
        *readings_of("t", ten_minutes(0, 23)),
        ("t", 24 * HOUR, 2.0, FLOW, LPM),
        ("t", 24 * HOUR, 0.0, FLOW, LPM),
    ]
    assert detect(ContinuousFlowDetector(), tie) == [leak("t", 24 * HOUR, None, hour_min=2.0)]


def test_leak_several_meters_out_of_order_and_other_channels_ignored() -> None:
    readings = (
        [("a", *r[1:]) for r in LEAK]
        + readings_of("b", ten_minutes(0, 40, skip=[12]))
        + readings_of("vol", ten_minutes(0, 30), 5.0, channel=VOLUME, unit=M3)
        + readings_of("pwr", ten_minutes(0, 30), 2.0, channel=int(Channel.POWER), unit=int(Unit.KW))
    )
    assert detect(ContinuousFlowDetector(), shuffled(readings)) == [
        leak("a", 24 * HOUR, None, hour_min=2.5),
        leak("a", 24 * HOUR, 26 * HOUR + 20 * MINUTE, hour_min=2.5),
        leak("b", 37 * HOUR, None),
    ]


@pytest.mark.parametrize(
    "cut_ms",
    [12 * HOUR + 30 * MINUTE, 20 * HOUR, 36 * HOUR + 55 * MINUTE, 37 * HOUR + 20 * MINUTE],
)
def test_leak_survives_snapshot_restore(cut_ms: int) -> None:
    # A zero at 12:10 ends the run (a cut at 12:30 must keep the hour's minimum), flow again from
    # hour 13: opens at 37:00, the zero at 38:00 resolves.
    readings = readings_of(
        "m", ten_minutes(0, 40), at={12 * HOUR + 10 * MINUTE: 0.0, 38 * HOUR: 0.0}
    )
    expected = [leak("m", 37 * HOUR, None), leak("m", 37 * HOUR, 38 * HOUR)]
    assert detect(ContinuousFlowDetector(), readings) == expected
    assert resumed(ContinuousFlowDetector, readings, cut_ms) == expected


def test_leak_config_and_damaged_state() -> None:
    detector = ContinuousFlowDetector(ContinuousFlowConfig(min_hours=2, severity="critical"))
    alerts = detect(detector, readings_of("m", ten_minutes(0, 3), at={3 * HOUR: 0.0}))
    assert alerts == [
        Alert(
            "m",
            FLOW,
            "continuous_flow",
            "critical",
            2 * HOUR,
            None,
            {"run_hours": 2.0, "hour_min_flow": 1.5, "threshold_hours": 2.0},
        ),
        Alert(
            "m",
            FLOW,
            "continuous_flow",
            "critical",
            2 * HOUR,
            3 * HOUR,
            {"run_hours": 2.0, "hour_min_flow": 1.5, "threshold_hours": 2.0},
        ),
    ]
    assert isinstance(detector, StatefulDetector)
    with pytest.raises(ValueError, match="min_hours"):
        ContinuousFlowDetector(ContinuousFlowConfig(min_hours=0))
    fresh = ContinuousFlowDetector()
    hours = np.array([5], dtype="<i8").tobytes()
    minimum = np.array([1.5], dtype="<f8").tobytes()
    good = pack_sections(hours, minimum, np.array([3], dtype="<i8").tobytes())
    fresh.restore(good)
    assert fresh.snapshot() == good
    for bad in (
        b"\x01\x02\x03",
        pack_sections(hours, minimum),  # a section missing
        pack_sections(hours, minimum, np.array([-1], dtype="<i8").tobytes()),  # negative run
        pack_sections(np.array([-2], dtype="<i8").tobytes(), minimum, b""),  # hour before none
        pack_sections(hours, np.array([NAN], dtype="<f8").tobytes(), b""),
        pack_sections(hours, minimum[:5], b""),
    ):
        with pytest.raises(SnapshotError):
            fresh.restore(bad)
        assert fresh.snapshot() == good  # untouched


# --- burst -----------------------------------------------------------------------------------


def burst(
    meter: str, opened: int, resolved: int | None, value: float, start: int, duration: float = 30.0
) -> Alert:
    evidence = {
        "value": value,
        "run_start_ms": float(start),
        "duration_min": duration,
        "threshold_flow": 30.0,
        "threshold_min": 30.0,
    }
    return Alert(meter, FLOW, "burst", "critical", opened, resolved, evidence)


# One reading a minute: 5 L/min, exactly 30.0 (the threshold) at minute 10, 45 from 11 (50 at
# minute 40: exactly 30 minutes into the run, it opens), 29.99 at minute 46 resolves.
BURST_VALUES = [5.0] * 10 + [30.0] + [45.0] * 29 + [50.0] + [45.0] * 5 + [29.99] + [5.0] * 14
BURST_ALERTS = [
    burst("m", 40 * MINUTE, None, 50.0, 10 * MINUTE),
    burst("m", 40 * MINUTE, 46 * MINUTE, 50.0, 10 * MINUTE),
]


@pytest.mark.parametrize("batch", BATCHES)
def test_burst_opens_after_exactly_30_minutes_at_or_above_30_lpm(batch: int) -> None:
    engine = Engine([BurstDetector()])
    assert feed(engine, values_of("m", BURST_VALUES), batch) == BURST_ALERTS
    assert engine.open_alerts() == []


def test_burst_one_minute_short_and_a_dip_restarts_the_run() -> None:
    short = values_of("s", [5.0] * 10 + [40.0] * 30 + [29.0] + [40.0] * 5)  # 10..39: 29 minutes
    assert detect(BurstDetector(), short) == []
    dip = values_of("d", [40.0] * 26 + [29.0] + [40.0] * 40)  # run restarts at minute 27
    assert detect(BurstDetector(), dip) == [burst("d", 57 * MINUTE, None, 40.0, 27 * MINUTE)]


def test_burst_run_spans_gaps_between_readings_and_starts_at_a_new_meter() -> None:
    # A meter first seen mid-burst: the run starts at its first reading, whatever came before.
    sparse = readings_of("new", [100 * MINUTE, 120 * MINUTE, 150 * MINUTE], 40.0)
    assert detect(BurstDetector(), sparse) == [
        burst("new", 150 * MINUTE, None, 40.0, 100 * MINUTE, 50.0)
    ]


def test_burst_duplicate_timestamps() -> None:
    times = [0, 10 * MINUTE, 20 * MINUTE, 30 * MINUTE, 30 * MINUTE]
    assert detect(BurstDetector(), readings_of("m", times, 60.0)) == [
        burst("m", 30 * MINUTE, None, 60.0, 0)
    ]
    # A differing retransmission at the same timestamp is rejected (backdated): no resolve.
    tie = [*readings_of("t", times[:4], 60.0), ("t", 30 * MINUTE, 5.0, FLOW, LPM)]
    assert detect(BurstDetector(), tie) == [burst("t", 30 * MINUTE, None, 60.0, 0)]


def test_burst_several_meters_out_of_order_and_other_channels_ignored() -> None:
    readings = (
        values_of("a", BURST_VALUES)
        + readings_of("b", [0, 20 * MINUTE, 50 * MINUTE, 51 * MINUTE], 40.0, at={51 * MINUTE: 1.0})
        + values_of("vol", [100.0] * 60, channel=VOLUME)
        + readings_of(
            "pwr",
            [i * MINUTE for i in range(60)],
            100.0,
            channel=int(Channel.POWER),
            unit=int(Unit.KW),
        )
    )
    assert detect(BurstDetector(), shuffled(readings)) == [
        burst("a", 40 * MINUTE, None, 50.0, 10 * MINUTE),
        burst("a", 40 * MINUTE, 46 * MINUTE, 50.0, 10 * MINUTE),
        burst("b", 50 * MINUTE, None, 40.0, 0, 50.0),
        burst("b", 50 * MINUTE, 51 * MINUTE, 40.0, 0, 50.0),
    ]


@pytest.mark.parametrize("cut_ms", [5 * MINUTE, 25 * MINUTE, 40 * MINUTE, 43 * MINUTE])
def test_burst_survives_snapshot_restore(cut_ms: int) -> None:
    assert resumed(BurstDetector, values_of("m", BURST_VALUES), cut_ms) == BURST_ALERTS


def test_burst_config_and_damaged_state() -> None:
    detector = BurstDetector(BurstConfig(min_flow=10.0, min_duration_ms=0, severity="warning"))
    alerts = detect(detector, values_of("m", [9.0, 10.0, 12.0, 9.99]))
    evidence = {
        "value": 10.0,
        "run_start_ms": 60_000.0,
        "duration_min": 0.0,
        "threshold_flow": 10.0,
        "threshold_min": 0.0,
    }
    assert alerts == [
        Alert("m", FLOW, "burst", "warning", MINUTE, None, evidence),
        Alert("m", FLOW, "burst", "warning", MINUTE, 3 * MINUTE, evidence),
    ]
    assert isinstance(detector, StatefulDetector)
    for config in (
        BurstConfig(min_flow=0.0),
        BurstConfig(min_flow=-5.0),
        BurstConfig(min_flow=NAN),
        BurstConfig(min_flow=math.inf),
        BurstConfig(min_duration_ms=-1),
    ):
        with pytest.raises(ValueError, match="min_"):
            BurstDetector(config)
    fresh = BurstDetector()
    good = np.array([-1, 1000], dtype="<i8").tobytes()
    fresh.restore(good)
    assert fresh.snapshot() == good
    for bad in (b"\x01\x02\x03", np.array([-2], dtype="<i8").tobytes()):
        with pytest.raises(SnapshotError):
            fresh.restore(bad)
        assert fresh.snapshot() == good


# --- reverse flow (backflow) -----------------------------------------------------------------


def reverse(
    meter: str,
    channel: int,
    opened: int,
    resolved: int | None,
    value: float,
    previous: float,
    tolerance: float,
) -> Alert:
    evidence = {"value": value, "previous": previous, "tolerance": tolerance}
    return Alert(meter, channel, "reverse_flow", "warning", opened, resolved, evidence)


def same(alerts: list[Alert], expected: list[Alert]) -> None:
    """Equal alert lists, NaN evidence included (compared by repr)."""
    assert repr(alerts) == repr(expected)


# Flow: 0.0 and -0.0 are no backflow; -0.1 opens, 0.0 resolves; -1.0 opens, 1.0 resolves.
REVERSE_FLOW = [1.0, 0.0, -0.0, 2.0, -0.1, -3.0, 0.0, 0.5, -1.0, 1.0]
# Volume register (m3): level, a 0.5-litre step back (within the 1-litre tolerance), then a
# 4.5-litre step back opens, a further step back continues, an increase resolves.
REGISTER = [100.0, 100.01, 100.01, 100.0095, 100.005, 100.0, 100.02]


@pytest.mark.parametrize("batch", BATCHES)
def test_reverse_flow_on_flow_and_volume(batch: int) -> None:
    readings = values_of("f", REVERSE_FLOW) + values_of("v", REGISTER, channel=VOLUME)
    # One batch gives event order (f and v interleaved); smaller ones give batch order.
    alerts = sorted(detect(ReverseFlowDetector(), readings, batch), key=lambda a: a.meter_id)
    same(
        alerts,
        [
            reverse("f", FLOW, 4 * MINUTE, None, -0.1, NAN, 0.0),
            reverse("f", FLOW, 4 * MINUTE, 6 * MINUTE, -0.1, NAN, 0.0),
            reverse("f", FLOW, 8 * MINUTE, None, -1.0, NAN, 0.0),
            reverse("f", FLOW, 8 * MINUTE, 9 * MINUTE, -1.0, NAN, 0.0),
            reverse("v", VOLUME, 4 * MINUTE, None, 100.005, 100.0095, 0.001),
            reverse("v", VOLUME, 4 * MINUTE, 6 * MINUTE, 100.005, 100.0095, 0.001),
        ],
    )


def test_reverse_flow_exactly_at_the_tolerances() -> None:
    detector = ReverseFlowDetector(ReverseFlowConfig(flow_tolerance=0.25, volume_tolerance=0.25))
    readings = values_of("f", [-0.25, -0.5, 0.0]) + values_of(
        "v", [10.0, 9.75, 9.25, 9.5], channel=VOLUME
    )
    same(
        detect(detector, readings),
        [
            reverse("f", FLOW, MINUTE, None, -0.5, NAN, 0.25),
            reverse("f", FLOW, MINUTE, 2 * MINUTE, -0.5, NAN, 0.25),
            reverse("v", VOLUME, 2 * MINUTE, None, 9.25, 9.75, 0.25),
            reverse("v", VOLUME, 2 * MINUTE, 3 * MINUTE, 9.25, 9.75, 0.25),
        ],
    )


def test_reverse_flow_first_reading_and_previous_from_an_earlier_batch() -> None:
    engine = Engine([ReverseFlowDetector()])
    assert feed(engine, [("new", 0, 10.0, VOLUME, M3)]) == []  # nothing to compare with
    same(
        feed(engine, [("new", MINUTE, 9.0, VOLUME, M3)]),
        [reverse("new", VOLUME, MINUTE, None, 9.0, 10.0, 0.001)],
    )


# A five-digit register (rolls over at 100,000 m3): it wraps from 99,999.8 to 0.3 (a 0.5 m3 step
# forward), climbs, then runs 0.2 m3 backwards.
WRAPPING = [99_999.2, 99_999.8, 0.3, 0.9, 0.7, 1.0]


@pytest.mark.parametrize("batch", BATCHES)
def test_a_register_rollover_is_not_backflow_when_the_rollover_is_known(batch: int) -> None:
    known = ReverseFlowDetector(ReverseFlowConfig(register_rollover=100_000.0))
    readings = values_of("v", WRAPPING, channel=VOLUME)
    same(
        detect(known, readings, batch),
        [
            reverse("v", VOLUME, 4 * MINUTE, None, 0.7, 0.9, 0.001),
            reverse("v", VOLUME, 4 * MINUTE, 5 * MINUTE, 0.7, 0.9, 0.001),
        ],
    )
    # Unknown rollover: the wrap itself reads as the register running backwards.
    unknown = [a for a in detect(ReverseFlowDetector(), readings, batch) if a.resolved_ms is None]
    assert [(a.opened_ms, a.evidence["previous"]) for a in unknown] == [
        (2 * MINUTE, 99_999.8),
        (4 * MINUTE, 0.9),
    ]


def test_a_drop_near_the_top_of_the_register_is_still_backflow() -> None:
    known = ReverseFlowDetector(ReverseFlowConfig(register_rollover=100_000.0))
    readings = values_of("v", [99_999.5, 99_999.2], channel=VOLUME)
    opened = [a for a in detect(known, readings) if a.resolved_ms is None]
    assert [(a.opened_ms, a.evidence["value"]) for a in opened] == [(MINUTE, 99_999.2)]


@pytest.mark.parametrize("rollover", [0.0, -1.0, math.inf, math.nan])
def test_register_rollover_must_be_positive_and_finite(rollover: float) -> None:
    with pytest.raises(ValueError, match="register_rollover"):
        ReverseFlowDetector(ReverseFlowConfig(register_rollover=rollover))


def test_reverse_flow_duplicate_timestamps() -> None:
    repeated = [
        ("m", 0, 10.0, VOLUME, M3),
        ("m", MINUTE, 10.5, VOLUME, M3),
        ("m", MINUTE, 10.5, VOLUME, M3),
    ]
    assert detect(ReverseFlowDetector(), repeated) == []
    # A retransmission with a lower register at the same timestamp is rejected by the engine
    # (backdated), so it is not backflow; a real step back later is.
    tie = [*repeated[:2], ("m", MINUTE, 10.2, VOLUME, M3), ("m", 2 * MINUTE, 10.4, VOLUME, M3)]
    same(
        detect(ReverseFlowDetector(), tie),
        [reverse("m", VOLUME, 2 * MINUTE, None, 10.4, 10.5, 0.001)],
    )


def test_reverse_flow_out_of_order_and_other_channels_ignored() -> None:
    readings = (
        values_of("v", REGISTER, channel=VOLUME)
        + values_of("e", [5.0, 4.0, 3.0], channel=int(Channel.ENERGY_IMPORT))
        + values_of("p", [-5.0, -6.0], channel=int(Channel.POWER))
        + values_of("t", [-3.0, -4.0], channel=int(Channel.TEMPERATURE))
    )
    same(
        detect(ReverseFlowDetector(), shuffled(readings)),
        [
            reverse("v", VOLUME, 4 * MINUTE, None, 100.005, 100.0095, 0.001),
            reverse("v", VOLUME, 4 * MINUTE, 6 * MINUTE, 100.005, 100.0095, 0.001),
        ],
    )


@pytest.mark.parametrize("cut_ms", [MINUTE, 4 * MINUTE, 5 * MINUTE])
def test_reverse_flow_survives_snapshot_restore(cut_ms: int) -> None:
    readings = values_of("v", REGISTER, channel=VOLUME)
    same(
        resumed(ReverseFlowDetector, readings, cut_ms),
        [
            reverse("v", VOLUME, 4 * MINUTE, None, 100.005, 100.0095, 0.001),
            reverse("v", VOLUME, 4 * MINUTE, 6 * MINUTE, 100.005, 100.0095, 0.001),
        ],
    )


def test_reverse_flow_config() -> None:
    assert not isinstance(ReverseFlowDetector(), StatefulDetector)
    detector = ReverseFlowDetector(ReverseFlowConfig(severity="critical"))
    alerts = detect(detector, values_of("f", [-1.0, 1.0]))
    assert [(a.opened_ms, a.resolved_ms, a.severity) for a in alerts] == [
        (0, None, "critical"),
        (0, MINUTE, "critical"),
    ]
    for config in (
        ReverseFlowConfig(flow_tolerance=-0.1),
        ReverseFlowConfig(volume_tolerance=-0.001),
        ReverseFlowConfig(flow_tolerance=NAN),
        ReverseFlowConfig(volume_tolerance=math.inf),
    ):
        with pytest.raises(ValueError, match="tolerance"):
            ReverseFlowDetector(config)


# --- with the engine's validation stage ------------------------------------------------------


def test_rules_read_canonical_units_converted_by_validation() -> None:
    """Flow in m3/h and volume in litres reach the rules as L/min and m3."""
    start = 472_223 * HOUR  # 2023-11-14T23:00Z: a valid timestamp for the validator
    m3_per_h, litres = int(Unit.M3_PER_H), int(Unit.L)
    burst_flow = [(start + i * MINUTE, 3.0 if 1 <= i <= 31 else 0.3) for i in range(33)]
    register = [1000.0, 1010.0, 1005.0, 1020.0]  # litres: 5 litres back at the third
    readings = [("f", t, v, FLOW, m3_per_h) for t, v in burst_flow] + [
        ("v", start + i * MINUTE, v, VOLUME, litres) for i, v in enumerate(register)
    ]
    engine = Engine([BurstDetector(), ReverseFlowDetector()], validator=Validator())
    alerts = feed(engine, readings)  # one batch: alerts in event order
    assert [(a.meter_id, a.rule, a.opened_ms, a.resolved_ms) for a in alerts] == [
        ("v", "reverse_flow", start + 2 * MINUTE, None),
        ("v", "reverse_flow", start + 2 * MINUTE, start + 3 * MINUTE),
        ("f", "burst", start + 31 * MINUTE, None),
        ("f", "burst", start + 31 * MINUTE, start + 32 * MINUTE),
    ]
    assert alerts[2].evidence["value"] == pytest.approx(50.0)  # 3 m3/h = 50 L/min
    assert alerts[0].evidence["previous"] == pytest.approx(1.010)  # m3
