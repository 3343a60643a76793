"""Hourly aggregates (exact statistics, merge across chunks) and fleet peak hours."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_consumer.analytics import HOUR_MS, HourlyAggregates, fleet_peak_hours, hourly
from cloud_consumer.replay_input import ReadingColumns
from meterlink_wire import Channel, Unit

T0 = 1_764_201_600_000  # 2025-11-27T00:00:00Z
MIN = 60_000
P, E = Channel.POWER, Channel.ENERGY_IMPORT


def columns(readings: Sequence[tuple[str, int, int, int, float]]) -> ReadingColumns:
    """Readings as (meter id, channel, unit, ts_ms, value)."""
    ids: dict[str, int] = {}
    meter = [ids.setdefault(r[0], len(ids)) for r in readings]
    return ReadingColumns(
        meter_ids=tuple(ids),
        meter=np.array(meter, dtype=np.int32),
        channel=np.array([r[1] for r in readings], dtype=np.uint8),
        unit=np.array([r[2] for r in readings], dtype=np.uint8),
        ts_ms=np.array([r[3] for r in readings], dtype=np.int64),
        value=np.array([r[4] for r in readings], dtype=np.float64),
    )


def table(agg: HourlyAggregates) -> list[tuple[object, ...]]:
    return list(
        zip(
            agg.meter_names(),
            agg.channel.tolist(),
            agg.unit.tolist(),
            agg.hour_ms.tolist(),
            agg.count.tolist(),
            agg.avg.tolist(),
            agg.min.tolist(),
            agg.max.tolist(),
            agg.stddev.tolist(),
            strict=True,
        )
    )


def test_hourly_against_hand_computed_numbers() -> None:
    readings = [
        ("b", P, Unit.KW, T0 + 45 * MIN, 6.0),  # out of order on purpose
        ("b", P, Unit.KW, T0, 1.0),
        ("b", P, Unit.KW, T0 + 15 * MIN, 2.0),
        ("b", P, Unit.KW, T0 + 30 * MIN, 3.0),
        ("b", P, Unit.KW, T0 + HOUR_MS, 10.0),
        ("a", E, Unit.KWH, T0 + HOUR_MS - 1, 100.0),  # last ms of the first hour
        ("a", E, Unit.KWH, T0 + HOUR_MS, 101.0),
        ("a", P, Unit.W, T0 + 5 * MIN, 500.0),  # another unit: another row
        ("a", P, Unit.W, T0 + 6 * MIN, 700.0),
    ]
    agg = hourly(columns(readings))
    assert agg.meter_ids == ("a", "b")
    h1 = T0 + HOUR_MS
    assert table(agg) == [
        ("a", E, Unit.KWH, T0, 1, 100.0, 100.0, 100.0, 0.0),
        ("a", E, Unit.KWH, h1, 1, 101.0, 101.0, 101.0, 0.0),
        ("a", P, Unit.W, T0, 2, 600.0, 500.0, 700.0, 100.0),
        # values 1, 2, 3, 6: mean 3, deviations -2 -1 0 3, population variance 14 / 4
        ("b", P, Unit.KW, T0, 4, 3.0, 1.0, 6.0, math.sqrt(3.5)),
        ("b", P, Unit.KW, h1, 1, 10.0, 10.0, 10.0, 0.0),
    ]
    assert agg.total.tolist() == [100.0, 101.0, 1200.0, 12.0, 10.0]
    assert agg.m2.tolist() == [0.0, 0.0, 20_000.0, 14.0, 0.0]


def test_stddev_is_stable_for_large_values_with_small_spread() -> None:
    base = 1e9
    readings = [("m", E, Unit.KWH, T0 + i * MIN, base + d) for i, d in enumerate([0.0, 0.5, 1.0])]
    agg = hourly(columns(readings))
    assert agg.stddev[0] == pytest.approx(math.sqrt(1 / 6), rel=1e-9)


def test_unused_meter_ids_are_dropped() -> None:
    cols = columns([("b", P, Unit.KW, T0, 1.0), ("a", P, Unit.KW, T0, 2.0)])
    padded = ReadingColumns(
        meter_ids=("zz", "b", "unused", "a"),
        meter=np.array([1, 3], dtype=np.int32),
        channel=cols.channel,
        unit=cols.unit,
        ts_ms=cols.ts_ms,
        value=cols.value,
    )
    agg = hourly(padded)
    assert agg.meter_ids == ("a", "b")
    assert table(agg) == table(hourly(cols))


def test_hourly_of_nothing_and_merge_identity() -> None:
    empty = hourly(columns([]))
    assert len(empty) == 0 and empty.meter_ids == ()
    agg = hourly(columns([("m", P, Unit.KW, T0, 1.0)]))
    assert table(agg.merge(HourlyAggregates.empty())) == table(agg)
    assert table(HourlyAggregates.empty().merge(agg)) == table(agg)
    assert len(empty.merge(HourlyAggregates.empty())) == 0


def test_merge_joins_partial_hours_exactly() -> None:
    first = hourly(columns([("b", P, Unit.KW, T0, 1.0), ("b", P, Unit.KW, T0 + MIN, 2.0)]))
    second = hourly(columns([("a", P, Unit.KW, T0, 9.0), ("b", P, Unit.KW, T0 + 2 * MIN, 6.0)]))
    merged = first.merge(second)
    assert merged.meter_ids == ("a", "b")
    # b: 1, 2, 6 -> mean 3, squared deviations 4 + 1 + 9 = 14
    assert table(merged) == [
        ("a", P, Unit.KW, T0, 1, 9.0, 9.0, 9.0, 0.0),
        ("b", P, Unit.KW, T0, 3, 3.0, 1.0, 6.0, math.sqrt(14 / 3)),
    ]
    assert merged.m2.tolist() == [0.0, 14.0]


reading = st.tuples(
    st.sampled_from(["m1", "m2", "m3", "x.9"]),
    st.sampled_from([int(P), int(E)]),
    st.sampled_from([0, int(Unit.KW), int(Unit.W)]),
    st.integers(T0, T0 + 3 * 86_400_000),
    st.integers(-1000, 1000).map(float),  # integers: sums are exact in any order
)


@settings(max_examples=200, deadline=None)
@given(
    readings=st.lists(reading, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=5),
)
def test_merge_of_chunks_equals_one_pass(
    readings: list[tuple[str, int, int, int, float]], cuts: list[int]
) -> None:
    bounds = sorted({0, len(readings), *(min(c, len(readings)) for c in cuts)})
    chunks = [readings[a:b] for a, b in itertools.pairwise(bounds)]
    whole = hourly(columns(readings))
    merged = functools.reduce(
        HourlyAggregates.merge, (hourly(columns(c)) for c in chunks), HourlyAggregates.empty()
    )
    assert merged.meter_ids == whole.meter_ids
    for name in ("meter", "channel", "unit", "hour_ms", "count", "total", "min", "max"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name)), name
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-9, atol=1e-6)
    assert int(whole.count.sum()) == len(readings)
    # merge is commutative on keys and exact fields
    if len(chunks) >= 2:
        flipped = hourly(columns(chunks[1])).merge(hourly(columns(chunks[0])))
        forward = hourly(columns(chunks[0])).merge(hourly(columns(chunks[1])))
        assert np.array_equal(flipped.count, forward.count)
        assert np.array_equal(flipped.total, forward.total)


def test_packed_and_lexsort_grouping_agree() -> None:
    """Hours beyond the packed key's range fall back to a four-key lexsort, same result."""
    rng = np.random.default_rng(7)
    n = 500
    ids = tuple(f"m{i}" for i in range(7))
    base = dict(
        meter_ids=ids,
        meter=rng.integers(0, 7, n).astype(np.int32),
        channel=rng.choice([1, 3], n).astype(np.uint8),
        unit=rng.choice([0, 5], n).astype(np.uint8),
        value=rng.integers(0, 100, n).astype(np.float64),
    )
    ts = T0 + rng.integers(0, 5 * HOUR_MS, n)
    packed = hourly(ReadingColumns(ts_ms=ts.astype(np.int64), **base))  # type: ignore[arg-type]
    far = ts + (1 << 22) * HOUR_MS  # past 2200: does not fit the packed key
    fallback = hourly(ReadingColumns(ts_ms=far.astype(np.int64), **base))  # type: ignore[arg-type]
    assert np.array_equal(packed.hour_ms + (1 << 22) * HOUR_MS, fallback.hour_ms)
    for name in ("meter", "channel", "unit", "count", "total", "min", "max"):
        assert np.array_equal(getattr(packed, name), getattr(fallback, name)), name


def fleet() -> list[tuple[str, int, int, int, float]]:
    h = HOUR_MS
    d2 = T0 + 86_400_000
    return [
        ("a", P, Unit.KW, T0, 0.5),  # h0: a averages 1 kW -> 1 kWh
        ("a", P, Unit.KW, T0 + 30 * MIN, 1.5),
        ("a", P, Unit.KW, T0 + h, 2.0),  # h1: a 2 kW + b 500 W -> 2.5 kWh
        ("b", P, Unit.W, T0 + h + MIN, 500.0),
        ("c", P, Unit.MW, T0 + 2 * h, 0.25),  # h2: 250 kWh
        ("a", P, Unit.KW, T0 + 3 * h, 4.0),  # h3: 4 kWh
        ("a", E, Unit.KWH, T0 + 4 * h, 1000.0),  # energy register: not consumption here
        ("b", P, Unit.W, T0 + 5 * h, 3000.0),  # h5: b averages 4000 W -> 4 kWh (ties h3)
        ("b", P, Unit.W, T0 + 5 * h + MIN, 5000.0),
        ("c", P, 0, T0 + 6 * h, 999.0),  # unknown unit: left out
        ("a", Channel.VOLTAGE, Unit.V, T0 + 7 * h, 230.0),  # not power
        ("a", P, Unit.KW, d2 + 23 * h, 3.0),  # second day: one hour
        ("b", P, Unit.W, d2 + 23 * h, 1000.0),
    ]


def test_fleet_peak_hours() -> None:
    agg = hourly(columns(fleet()))
    h = HOUR_MS
    d2 = T0 + 86_400_000
    assert fleet_peak_hours(agg) == {
        "2025-11-27": [(T0 + 2 * h, 250.0), (T0 + 3 * h, 4.0), (T0 + 5 * h, 4.0)],
        "2025-11-28": [(d2 + 23 * h, 4.0)],
    }
    assert fleet_peak_hours(agg, top=1) == {
        "2025-11-27": [(T0 + 2 * h, 250.0)],
        "2025-11-28": [(d2 + 23 * h, 4.0)],
    }
    assert fleet_peak_hours(agg, top=10)["2025-11-27"] == [
        (T0 + 2 * h, 250.0),
        (T0 + 3 * h, 4.0),
        (T0 + 5 * h, 4.0),
        (T0 + h, 2.5),
        (T0, 1.0),
    ]


def test_fleet_peak_hours_edges() -> None:
    assert fleet_peak_hours(HourlyAggregates.empty()) == {}
    assert fleet_peak_hours(hourly(columns([("a", E, Unit.KWH, T0, 1.0)]))) == {}
    with pytest.raises(ValueError, match="top"):
        fleet_peak_hours(HourlyAggregates.empty(), top=0)


def test_fleet_peak_hours_from_merged_chunks() -> None:
    readings = fleet()
    merged = hourly(columns(readings[:4])).merge(hourly(columns(readings[4:])))
    assert fleet_peak_hours(merged) == fleet_peak_hours(hourly(columns(readings)))
