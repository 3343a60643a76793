"""Validation: exact flags, canonical values and units for every Flag case."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pytest

from cloud_consumer.detect.engine import Engine
from cloud_consumer.detect.rules import default_detectors
from cloud_consumer.detect.rules.gaps import Interpolator
from cloud_consumer.detect.state import IntArray
from cloud_consumer.detect.validate import (
    MIN_TS_MS,
    REJECTIONS,
    Flag,
    Standardised,
    ValidationConfig,
    Validator,
)
from meterlink_wire.vocab import Channel, Unit
from tests.detect.readings import Reading, columns

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
MINUTE = 60_000
HOUR = 3_600_000
NOW = T0 + HOUR  # server time in the tests that pass one
POWER, ENERGY, VOLUME = int(Channel.POWER), int(Channel.ENERGY_IMPORT), int(Channel.VOLUME)
FLOW, PRESSURE, VOLTAGE = int(Channel.FLOW), int(Channel.PRESSURE), int(Channel.VOLTAGE)
NONE = 0  # unit not given


def one(value: float, channel: int = POWER, unit: int = int(Unit.KW), ts: int = T0) -> Reading:
    return ("m1", ts, value, channel, unit)


def check(
    readings: Sequence[Reading], now_ms: int | None = NOW, config: ValidationConfig | None = None
) -> Standardised:
    return Validator(config).check(columns(readings), now_ms)


def flags(readings: Sequence[Reading], now_ms: int | None = NOW, **config: object) -> list[int]:
    validation = ValidationConfig(**config)  # type: ignore[arg-type]
    found: list[int] = check(readings, now_ms, validation).flags.tolist()
    return found


# --- units --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "unit", "value", "expected", "canonical"),
    [
        (POWER, Unit.W, 1500.0, 1.5, Unit.KW),
        (POWER, Unit.MW, 0.015625, 15.625, Unit.KW),
        (ENERGY, Unit.WH, 2500.0, 2.5, Unit.KWH),
        (int(Channel.ENERGY_EXPORT), Unit.MWH, 0.5, 500.0, Unit.KWH),
        (VOLUME, Unit.L, 1500.0, 1.5, Unit.M3),
        (FLOW, Unit.M3_PER_H, 3.0, 50.0, Unit.L_PER_MIN),
        (FLOW, Unit.M3_PER_H, 1.2, 20.0, Unit.L_PER_MIN),
        (PRESSURE, Unit.BAR, 2.5, 250.0, Unit.KPA),
        (int(Channel.REACTIVE_POWER), Unit.VAR, 500.0, 0.5, Unit.KVAR),
    ],
)
def test_conversion_to_canonical_unit(
    channel: int, unit: Unit, value: float, expected: float, canonical: Unit
) -> None:
    found = check([one(value, channel, int(unit))])
    assert found.flags.tolist() == [int(Flag.UNIT_CONVERTED)]
    assert found.value.tolist() == [expected]
    assert found.unit.tolist() == [int(canonical)]


@pytest.mark.parametrize(
    ("channel", "unit", "value"),
    [
        (POWER, Unit.KW, 5.0),
        (ENERGY, Unit.KWH, 1234.5),
        (VOLUME, Unit.M3, 12.0),
        (FLOW, Unit.L_PER_MIN, 7.5),
        (PRESSURE, Unit.KPA, 300.0),
        (VOLTAGE, Unit.V, 230.0),
        (int(Channel.TAMPER), Unit.FLAG, 1.0),
    ],
)
def test_canonical_unit_is_clean(channel: int, unit: Unit, value: float) -> None:
    found = check([one(value, channel, int(unit))])
    assert found.flags.tolist() == [0]
    assert found.value.tolist() == [value]
    assert found.unit.tolist() == [int(unit)]


INFERRED = int(Flag.UNIT_INFERRED)
AMBIGUOUS = int(Flag.UNIT_INFERRED | Flag.UNIT_AMBIGUOUS)


@pytest.mark.parametrize(
    ("channel", "value", "expected", "expected_flags"),
    [
        (POWER, 5.0, 5.0, INFERRED),  # below 10: kW, unchanged
        (POWER, 9.999, 9.999, INFERRED),
        (POWER, 10.0, 10.0, AMBIGUOUS),  # exactly 10: ambiguous, kept as kW
        (POWER, 12.0, 12.0, AMBIGUOUS),
        (POWER, 2500.0, 2.5, INFERRED),  # above 1000: W
        (POWER, 1000.5, 1.0005, INFERRED),
        (POWER, -2500.0, -2.5, INFERRED),  # export: the magnitude decides
        (ENERGY, 1000.0, 1000.0, AMBIGUOUS),  # exactly 1000: ambiguous, kept as kWh
        (ENERGY, 2500.0, 2.5, INFERRED),  # Wh
        (ENERGY, 3.0, 3.0, INFERRED),
        (VOLUME, 5000.0, 5000.0, INFERRED),  # not inferred from magnitude: canonical assumed
        (VOLTAGE, 230.0, 230.0, INFERRED),
    ],
)
def test_missing_unit_is_inferred(
    channel: int, value: float, expected: float, expected_flags: int
) -> None:
    found = check([one(value, channel, NONE)])
    assert found.flags.tolist() == [expected_flags]
    assert found.value.tolist() == [expected]
    canonical = Unit.KW if channel == POWER else None
    if canonical is not None:
        assert found.unit.tolist() == [int(canonical)]


def test_ambiguous_1000_on_power_is_kilowatts_and_above_max() -> None:
    found = check([one(1000.0, POWER, NONE)])
    assert found.flags.tolist() == [int(Flag.UNIT_INFERRED | Flag.UNIT_AMBIGUOUS | Flag.ABOVE_MAX)]
    assert found.value.tolist() == [1000.0]


@pytest.mark.parametrize(
    ("channel", "unit", "value"),
    [
        (POWER, Unit.V, 230.0),  # a realistic voltage: not also "above 20 kW"
        (POWER, Unit.V, -5.0),
        (ENERGY, Unit.KW, -3.0),  # a rate on a register: not also "negative energy"
        (VOLUME, Unit.KWH, 1.0),
        (FLOW, Unit.L, 1.0),
        (VOLTAGE, Unit.KW, 1.0),
    ],
)
def test_unit_of_another_quantity_is_a_mismatch(channel: int, unit: Unit, value: float) -> None:
    found = check([one(value, channel, int(unit))])
    assert found.flags.tolist() == [int(Flag.UNIT_MISMATCH)]
    assert found.value.tolist() == [value]  # left as given: it is rejected anyway
    assert found.rejected().tolist() == [True]


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("channel", [POWER, ENERGY])
def test_not_finite(value: float, channel: int) -> None:
    unit = int(Unit.KW) if channel == POWER else int(Unit.KWH)
    assert flags([one(value, channel, unit)]) == [int(Flag.NOT_FINITE)]


def test_not_finite_without_unit_is_also_inferred() -> None:
    assert flags([one(float("inf"), POWER, NONE)]) == [int(Flag.NOT_FINITE | Flag.UNIT_INFERRED)]


@pytest.mark.parametrize(
    ("channel", "unit", "value", "expected"),
    [
        (ENERGY, Unit.KWH, -0.5, int(Flag.NEGATIVE)),
        (int(Channel.ENERGY_EXPORT), Unit.WH, -500.0, int(Flag.NEGATIVE | Flag.UNIT_CONVERTED)),
        (VOLUME, Unit.M3, -1.0, int(Flag.NEGATIVE)),
        (VOLTAGE, Unit.V, -230.0, int(Flag.NEGATIVE)),
        (int(Channel.CURRENT), Unit.A, -1.0, int(Flag.NEGATIVE)),
        (int(Channel.FREQUENCY), Unit.HZ, -50.0, int(Flag.NEGATIVE)),
        (ENERGY, Unit.KWH, 0.0, 0),  # zero is not negative
        (POWER, Unit.KW, -3.0, 0),  # export
        (FLOW, Unit.L_PER_MIN, -2.0, 0),  # backflow: its own rule
        (int(Channel.TEMPERATURE), Unit.DEG_C, -12.0, 0),
    ],
)
def test_negative_only_on_channels_that_cannot_be(
    channel: int, unit: Unit, value: float, expected: int
) -> None:
    assert flags([one(value, channel, int(unit))]) == [expected]


def test_negative_channels_are_configurable() -> None:
    readings = [one(-1.0, POWER), one(-1.0, ENERGY, int(Unit.KWH))]
    found = flags(readings, non_negative=frozenset({POWER}))
    assert found == [int(Flag.NEGATIVE), 0]


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (20.0, Unit.KW, 0),  # exactly at the maximum: not above
        (20.0001, Unit.KW, int(Flag.ABOVE_MAX)),
        (25.0, Unit.KW, int(Flag.ABOVE_MAX)),
        (20_000.0, Unit.W, int(Flag.UNIT_CONVERTED)),
        (20_000.1, Unit.W, int(Flag.UNIT_CONVERTED | Flag.ABOVE_MAX)),
        (25_000.0, Unit.W, int(Flag.UNIT_CONVERTED | Flag.ABOVE_MAX)),  # 25 kW after conversion
        (0.025, Unit.MW, int(Flag.UNIT_CONVERTED | Flag.ABOVE_MAX)),
        (25_000.0, NONE, int(Flag.UNIT_INFERRED | Flag.ABOVE_MAX)),  # inferred W: 25 kW
        (-25.0, Unit.KW, 0),  # export is not above the maximum
    ],
)
def test_above_max_strictly_above_20_kw(value: float, unit: int, expected: int) -> None:
    assert flags([one(value, POWER, int(unit))]) == [expected]


def test_max_value_per_channel() -> None:
    readings = [
        one(25.0, POWER),
        one(29.0, POWER),
        one(30.5, POWER),
        one(9e9, ENERGY, int(Unit.KWH)),
        one(6.5, PRESSURE, int(Unit.BAR)),  # 650 kPa
    ]
    found = flags(readings, max_value={POWER: 30.0, PRESSURE: 600.0})
    above = int(Flag.ABOVE_MAX)
    assert found == [0, 0, above, 0, above | int(Flag.UNIT_CONVERTED)]
    assert flags(readings, max_value={}) == [0, 0, 0, 0, int(Flag.UNIT_CONVERTED)]


# --- time ---------------------------------------------------------------------------------------


def test_future_beyond_the_allowed_skew() -> None:
    skew = 5 * MINUTE
    readings = [one(1.0, ts=NOW), one(1.0, ts=NOW + skew), one(1.0, ts=NOW + skew + 1)]
    assert flags(readings) == [0, 0, int(Flag.FUTURE)]
    assert flags(readings, max_future_ms=0) == [0, int(Flag.FUTURE), int(Flag.FUTURE)]
    assert check(readings).rejected().tolist() == [False, False, True]


def test_future_without_server_time_is_judged_against_the_wall_clock() -> None:
    wall = int(time.time() * 1000)
    readings = [one(1.0, ts=T0), one(1.0, ts=wall + 3600_000)]
    assert flags(readings, now_ms=None) == [0, int(Flag.FUTURE)]


def test_late_only_with_server_time() -> None:
    late = HOUR
    readings = [one(1.0, ts=NOW - late), one(1.0, ts=NOW - late - 1), one(1.0, ts=NOW)]
    assert flags(readings) == [0, int(Flag.LATE), 0]  # exactly late_ms behind: not late
    assert flags(readings, now_ms=None) == [0, 0, 0]  # replaying: nothing is late
    assert flags(readings, late_ms=2 * HOUR) == [0, 0, 0]
    assert check(readings).rejected().tolist() == [False, False, False]  # a warning


def test_bad_time_before_2000() -> None:
    readings = [one(1.0, ts=MIN_TS_MS), one(1.0, ts=MIN_TS_MS - 1), one(1.0, ts=0)]
    # Server time is 2026: a reading from 1970 is both unsynchronised and late.
    late = int(Flag.LATE)
    assert flags(readings) == [late, late | int(Flag.BAD_TIME), late | int(Flag.BAD_TIME)]
    assert flags(readings, now_ms=None) == [0, int(Flag.BAD_TIME), int(Flag.BAD_TIME)]
    assert flags([one(1.0, ts=T0 - 1)], now_ms=None, min_ts_ms=T0) == [int(Flag.BAD_TIME)]


def test_config_rejects_negative_skew_and_non_positive_late() -> None:
    with pytest.raises(ValueError, match="max_future_ms"):
        ValidationConfig(max_future_ms=-1)
    with pytest.raises(ValueError, match="late_ms"):
        ValidationConfig(late_ms=0)


# --- registry -----------------------------------------------------------------------------------


def test_registry_unknown_meter() -> None:
    readings = [
        ("known", T0, 1.0, POWER, int(Unit.KW)),
        ("stranger", T0, 1.0, POWER, int(Unit.KW)),
        ("known", T0 + 1, 2.0, ENERGY, int(Unit.KWH)),
        ("stranger", T0 + 1, float("nan"), POWER, int(Unit.KW)),
    ]
    registry = frozenset({"known", "other"})
    unknown = int(Flag.UNKNOWN_METER)
    assert flags(readings, registry=registry) == [0, unknown, 0, unknown | int(Flag.NOT_FINITE)]
    assert flags(readings) == [0, 0, 0, int(Flag.NOT_FINITE)]  # no registry: all accepted
    assert flags(readings, registry=frozenset()) == [
        unknown,
        unknown,
        unknown,
        unknown | int(Flag.NOT_FINITE),
    ]


def test_every_flag_at_once_in_one_batch() -> None:
    readings = [
        ("ok", T0, 2.0, POWER, int(Unit.KW)),
        ("ok", T0, 2000.0, POWER, int(Unit.W)),
        ("ok", T0, 50.0, POWER, NONE),
        ("ok", T0, -1.0, ENERGY, int(Unit.KWH)),
        ("ok", T0, 21.0, POWER, int(Unit.KW)),
        ("ok", T0 - 2 * HOUR, 2.0, POWER, int(Unit.KW)),
        ("ok", NOW + HOUR, 2.0, POWER, int(Unit.KW)),
        ("nobody", T0, 2.0, POWER, int(Unit.KW)),
        ("ok", 0, 2.0, POWER, int(Unit.KW)),
        ("ok", T0, float("nan"), POWER, int(Unit.KW)),
        ("ok", T0, 2.0, POWER, int(Unit.V)),
    ]
    found = check(readings, config=ValidationConfig(registry=frozenset({"ok"})))
    assert found.flags.tolist() == [
        0,
        int(Flag.UNIT_CONVERTED),
        int(Flag.UNIT_INFERRED | Flag.UNIT_AMBIGUOUS | Flag.ABOVE_MAX),
        int(Flag.NEGATIVE),
        int(Flag.ABOVE_MAX),
        int(Flag.LATE),
        int(Flag.FUTURE),
        int(Flag.UNKNOWN_METER),
        int(Flag.BAD_TIME | Flag.LATE),
        int(Flag.NOT_FINITE),
        int(Flag.UNIT_MISMATCH),
    ]
    assert found.value.tolist()[:5] == [2.0, 2.0, 50.0, -1.0, 21.0]
    assert found.rejected().tolist() == [False] * 6 + [True] * 5
    assert found.flags.dtype == np.uint16


def test_flag_bits_are_distinct_and_rejections_are_the_documented_ones() -> None:
    bits = [int(f) for f in Flag]
    assert len(set(bits)) == len(bits) == 12
    assert all(b & (b - 1) == 0 for b in bits)
    assert REJECTIONS == (
        Flag.FUTURE
        | Flag.BACKDATED
        | Flag.UNKNOWN_METER
        | Flag.BAD_TIME
        | Flag.NOT_FINITE
        | Flag.UNIT_MISMATCH
    )


def test_empty_batch() -> None:
    found = check([])
    assert found.flags.tolist() == []
    assert found.value.tolist() == []
    assert found.unit.tolist() == []


# --- backdated ----------------------------------------------------------------------------------


def i64(values: Sequence[int]) -> IntArray:
    return np.array(values, dtype=np.int64)


def test_backdated_within_one_batch() -> None:
    # Series order: row 0 oldest first (with a duplicate), then row 1; both new to the table.
    rows = i64([0, 0, 0, 0, 1, 1])
    ts = i64([100, 200, 200, 300, 200, 200])
    newest = i64([-1] * 6)
    back = Validator.backdated(rows, ts, newest)
    assert back.tolist() == [False, False, True, False, False, True]


def test_backdated_against_the_tables_newest() -> None:
    rows = i64([0, 0, 0, 1, 2])
    ts = i64([400, 500, 501, 50, 0])
    newest = i64([500, 500, 500, 40, -1])
    back = Validator.backdated(rows, ts, newest)
    assert back.tolist() == [True, True, False, False, False]
    assert Validator.backdated(i64([]), i64([]), i64([])).tolist() == []


def validated_engine() -> Engine:
    return Engine(
        default_detectors(),
        validator=Validator(ValidationConfig(registry=frozenset({"m1", "m2"}))),
        interpolator=Interpolator(),
    )


def test_engine_flags_duplicates_and_out_of_order_readings_as_backdated() -> None:
    engine = validated_engine()
    first = engine.process(columns([one(1.0, ts=T0 + i * MINUTE) for i in range(3)]), NOW)
    assert first.flags.tolist() == [0, 0, 0]
    batch = [
        one(1.0, ts=T0 + 2 * MINUTE),  # the table's newest: a duplicate
        one(1.0, ts=T0 + MINUTE),  # older than the table's newest
        one(1.5, ts=T0 + 5 * MINUTE),
        one(1.6, ts=T0 + 5 * MINUTE),  # duplicate inside the batch (second in arrival order)
        one(1.7, ts=T0 + 4 * MINUTE),  # out of order in the batch: fine, sorted by time
    ]
    found = engine.process(columns(batch), NOW)
    back = int(Flag.BACKDATED)
    assert found.flags.tolist() == [back, back, 0, back, 0]
    assert found.quality.tolist() == [0, 0, 100, 0, 100]
    assert found.rejected == 3


def test_engine_rejected_readings_leave_no_trace() -> None:
    server = T0 + 70 * MINUTE
    engine, clean = validated_engine(), validated_engine()
    history = [one(2.0 + 0.1 * i, ts=T0 + i * 15 * MINUTE) for i in range(4)]
    for e in (engine, clean):
        e.process(columns(history), server)
    good = [
        ("m1", T0 + 60 * MINUTE, 2.5, POWER, int(Unit.KW)),
        ("m2", T0 + 50 * MINUTE, 3000.0, POWER, int(Unit.W)),
    ]
    backdated = [
        ("m1", T0 + 45 * MINUTE, 9.0, POWER, int(Unit.KW)),  # the table's newest
        ("m1", T0 + 30 * MINUTE, 9.0, POWER, int(Unit.KW)),  # older
    ]
    invalid = [
        ("m1", T0 + 61 * MINUTE, float("nan"), POWER, int(Unit.KW)),
        ("m1", T0 + 62 * MINUTE, 9.0, POWER, int(Unit.V)),
        ("m1", server + 6 * MINUTE, 9.0, POWER, int(Unit.KW)),  # future
        ("m1", 0, 9.0, POWER, int(Unit.KW)),  # before 2000
        ("m3", T0 + 60 * MINUTE, 9.0, POWER, int(Unit.KW)),  # not in the registry
        ("m2", T0 + 61 * MINUTE, 9.0, ENERGY, int(Unit.KW)),  # mismatch on a new series
    ]
    mixed = [backdated[0], good[0], backdated[1], *invalid[:2], good[1], *invalid[2:]]
    found = engine.process(columns(mixed), server)
    expected = clean.process(columns(good), server)
    assert engine.snapshot() == clean.snapshot()
    assert found.quality.tolist() == [0, 100, 0, 0, 0, 95, 0, 0, 0, 0]
    assert expected.quality.tolist() == [100, 95]
    assert found.rejected == 8
    assert found.alerts == expected.alerts
    assert found.value.tolist()[5] == 3.0
    fresh = validated_engine()
    only_invalid = fresh.process(columns(invalid), server)
    assert only_invalid.quality.tolist() == [0] * len(invalid)
    assert only_invalid.rejected == len(invalid)
    assert only_invalid.alerts == []
    assert len(only_invalid.estimates) == 0
    assert fresh.snapshot() == validated_engine().snapshot()
