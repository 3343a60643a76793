"""Neighbourhood correlation: exact alerts and episodes of the periodic peer-group check."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from cloud_consumer.analytics import DAY_MS, HOUR_MS, HourlyAggregates, hourly
from cloud_consumer.detect.episodes import Alert
from cloud_consumer.detect.neighbourhood import (
    NEIGHBOURHOOD_SNAPSHOT_MAGIC,
    NEIGHBOURHOOD_SNAPSHOT_VERSION,
    NeighbourhoodCheck,
    NeighbourhoodConfig,
    daily_profiles,
)
from cloud_consumer.detect.state import SnapshotError
from cloud_consumer.replay_input import ReadingColumns
from meterlink_wire.vocab import Channel, Unit

FloatArray = npt.NDArray[np.float64]
DayReadings = Mapping[str, FloatArray]
"""One day: meter id -> (24, PER_HOUR) readings; a NaN row is an hour without readings."""

POWER = int(Channel.POWER)
RULE = "neighbourhood_correlation"
DAY0 = 1_704_067_200_000  # 2024-01-01T00:00Z
PER_HOUR = 4
HOURS = np.arange(24, dtype=np.float64)
SHAPE = (
    0.5 + 1.5 * np.exp(-(((HOURS - 7.5) / 1.5) ** 2)) + 2.5 * np.exp(-(((HOURS - 19.0) / 2.0) ** 2))
)
"""Residential day: base load, a morning and a larger evening peak (kW)."""
INVERTED = SHAPE.max() + 0.5 - SHAPE
NIGHT: FloatArray = 0.2 + 2.0 * (np.abs(HOURS - 11.5) > 6).astype(np.float64)
"""Street lighting: on at night, off by day (another group's common shape)."""

A_GROUP = {f"a{i}": "feeder-a" for i in range(6)}
B_GROUP = {f"b{i}": "feeder-b" for i in range(4)}


def day_start(day: int) -> int:
    return DAY0 + day * DAY_MS


def meter_day(
    rng: np.random.Generator, profile: FloatArray, *, scale: float = 1.0, noise: float = 0.05
) -> FloatArray:
    """PER_HOUR noisy readings per hour around ``scale * profile``."""
    base = scale * profile[:, None]
    return base + rng.normal(0.0, noise * scale, size=(24, PER_HOUR))


def feeder_day(
    rng: np.random.Generator, prefix: str, size: int, profile: FloatArray = SHAPE
) -> dict[str, FloatArray]:
    return {f"{prefix}{i}": meter_day(rng, profile, scale=0.8 + 0.15 * i) for i in range(size)}


def drop_hours(values: FloatArray, hours: Sequence[int]) -> FloatArray:
    out = values.copy()
    out[list(hours)] = np.nan
    return out


def columns(
    days: Sequence[DayReadings], *, channel: int = POWER, unit: int = int(Unit.KW)
) -> ReadingColumns:
    ids = tuple(sorted({m for day in days for m in day}))
    position = {m: i for i, m in enumerate(ids)}
    meter: list[FloatArray] = []
    ts: list[npt.NDArray[np.int64]] = []
    value: list[FloatArray] = []
    offsets = np.arange(24 * PER_HOUR, dtype=np.int64).reshape(24, PER_HOUR) * (HOUR_MS // PER_HOUR)
    for d, day in enumerate(days):
        for m, readings in day.items():
            present = np.isfinite(readings)
            value.append(readings[present])
            ts.append(day_start(d) + offsets[present])
            meter.append(np.full(int(present.sum()), position[m], dtype=np.float64))
    size = sum(len(v) for v in value)
    return ReadingColumns(
        meter_ids=ids,
        meter=np.concatenate(meter).astype(np.int32),
        channel=np.full(size, channel, dtype=np.uint8),
        unit=np.full(size, unit, dtype=np.uint8),
        ts_ms=np.concatenate(ts),
        value=np.concatenate(value),
    )


def aggregates(days: Sequence[DayReadings]) -> HourlyAggregates:
    return hourly(columns(days))


def expected_r(day: DayReadings, meter: str, members: Sequence[str]) -> tuple[float, int]:
    """Reference implementation: leave-one-out nanmean of the others, corrcoef on shared hours."""
    own = day[meter].mean(axis=1)
    others = np.array([day[m].mean(axis=1) for m in members if m != meter])
    count = np.isfinite(others).sum(axis=0)
    reference = np.where(count > 0, np.nansum(others, axis=0) / np.maximum(count, 1), np.nan)
    both = np.isfinite(own) & np.isfinite(reference)
    return float(np.corrcoef(own[both], reference[both])[0, 1]), int(both.sum())


def alert(
    meter: str,
    opened: int,
    resolved: int | None,
    r: float,
    *,
    members: int = 6,
    hours: int = 24,
) -> Alert:
    evidence = {
        "correlation": pytest.approx(r, rel=1e-9, abs=1e-12),
        "threshold": 0.3,
        "members": float(members),
        "hours": float(hours),
    }
    return Alert(meter, POWER, RULE, "warning", opened, resolved, evidence)  # type: ignore[arg-type]


def config(groups: Mapping[str, str] | None = None, **options: object) -> NeighbourhoodConfig:
    return NeighbourhoodConfig.from_mapping(A_GROUP if groups is None else groups, **options)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240101)


# --- one day ---------------------------------------------------------------------------------


def test_inverted_meter_is_the_only_alert(rng: np.random.Generator) -> None:
    day = feeder_day(rng, "a", 5)
    day["a5"] = meter_day(rng, INVERTED)
    check = NeighbourhoodCheck(config())
    alerts = check.run_day(aggregates([day]), DAY0)
    r, hours = expected_r(day, "a5", sorted(A_GROUP))
    assert hours == 24
    assert r < -0.9
    assert alerts == [alert("a5", DAY0, None, r)]
    assert check.open_alerts() == alerts
    assert check.last_day_ms == DAY0


def test_verdicts_match_a_reference_implementation(rng: np.random.Generator) -> None:
    day = feeder_day(rng, "a", 5)
    day["a5"] = drop_hours(meter_day(rng, np.roll(SHAPE, 6)), [0, 1, 2])
    day["a1"] = drop_hours(day["a1"], [10])
    found = NeighbourhoodCheck(config()).verdicts(aggregates([day]), DAY0)
    assert found.meter_ids == tuple(sorted(A_GROUP))
    expected = [expected_r(day, m, sorted(A_GROUP)) for m in found.meter_ids]
    assert found.correlation.tolist() == pytest.approx([r for r, _ in expected], rel=1e-9)
    assert found.hours.tolist() == [h for _, h in expected] == [24, 23, 24, 24, 24, 21]
    assert found.members.tolist() == [6] * 6
    assert found.flagged.tolist() == [False] * 5 + [True]
    assert min(found.correlation[:5]) > 0.9
    assert found.correlation[5] < 0.3


def test_threshold_is_strict(rng: np.random.Generator) -> None:
    day = feeder_day(rng, "a", 5)
    day["a5"] = meter_day(rng, np.roll(SHAPE, 3))
    data = aggregates([day])
    r = float(NeighbourhoodCheck(config()).verdicts(data, DAY0).correlation[5])
    assert NeighbourhoodCheck(config(min_correlation=r)).run_day(data, DAY0) == []
    above = float(np.nextafter(r, 1.0))
    flagged = NeighbourhoodCheck(config(min_correlation=above)).run_day(data, DAY0)
    assert [a.meter_id for a in flagged] == ["a5"]
    assert flagged[0].evidence["threshold"] == above


def test_too_few_members_checks_nothing(rng: np.random.Generator) -> None:
    two = {"a0": meter_day(rng, SHAPE), "a5": meter_day(rng, INVERTED)}
    assert NeighbourhoodCheck(config()).run_day(aggregates([two]), DAY0) == []
    # Three meters, one unusable (19 hours): still only two usable members.
    three = {**two, "a1": drop_hours(meter_day(rng, SHAPE), range(5))}
    check = NeighbourhoodCheck(config())
    assert check.verdicts(aggregates([three]), DAY0).meter_ids == ()
    # With min_members=2 the pair is checked: each is the other's reference.
    pair = NeighbourhoodCheck(config(min_members=2)).run_day(aggregates([two]), DAY0)
    assert [a.meter_id for a in pair] == ["a0", "a5"]
    assert [a.evidence["members"] for a in pair] == [2.0, 2.0]


def test_min_hours_boundary(rng: np.random.Generator) -> None:
    day = feeder_day(rng, "a", 5)
    day["a5"] = drop_hours(meter_day(rng, INVERTED), range(4))  # 20 hours: usable
    alerts = NeighbourhoodCheck(config()).run_day(aggregates([day]), DAY0)
    r, hours = expected_r(day, "a5", sorted(A_GROUP))
    assert hours == 20
    assert alerts == [alert("a5", DAY0, None, r, hours=20)]
    day["a5"] = drop_hours(day["a5"], [4])  # 19 hours: not usable, group of 5 still checked
    check = NeighbourhoodCheck(config())
    assert check.run_day(aggregates([day]), DAY0) == []
    assert check.verdicts(aggregates([day]), DAY0).members.tolist() == [5] * 5


def test_constant_profile_is_not_flagged(rng: np.random.Generator) -> None:
    day = feeder_day(rng, "a", 5)
    day["a5"] = np.full((24, PER_HOUR), 1.3)
    check = NeighbourhoodCheck(config())
    assert check.run_day(aggregates([day]), DAY0) == []
    assert "a5" not in check.verdicts(aggregates([day]), DAY0).meter_ids
    # Constant neighbours: their own profiles are flat, and so is a5's reference.
    flat = {f"a{i}": np.full((24, PER_HOUR), 0.5 + i) for i in range(5)}
    flat["a5"] = meter_day(rng, INVERTED)
    assert NeighbourhoodCheck(config()).verdicts(aggregates([flat]), DAY0).meter_ids == ()
    assert NeighbourhoodCheck(config()).run_day(aggregates([flat]), DAY0) == []


def test_two_groups_are_independent(rng: np.random.Generator) -> None:
    day = feeder_day(rng, "a", 5)
    day["a5"] = meter_day(rng, INVERTED)
    day.update(feeder_day(rng, "b", 4, NIGHT))
    day["loose"] = meter_day(rng, INVERTED)  # in no group: never checked
    groups = {**A_GROUP, **B_GROUP}
    check = NeighbourhoodCheck(config(groups))
    alerts = check.run_day(aggregates([day]), DAY0)
    r, _ = expected_r(day, "a5", sorted(A_GROUP))
    assert alerts == [alert("a5", DAY0, None, r)]
    found = check.verdicts(aggregates([day]), DAY0)
    assert found.meter_ids == (*sorted(A_GROUP), *sorted(B_GROUP))
    assert found.members.tolist() == [6] * 6 + [4] * 4
    assert found.correlation[6:].min() > 0.9
    # Feeder A alone gives the same verdicts: feeder B's meters do not enter A's references.
    alone = NeighbourhoodCheck(config()).verdicts(aggregates([day]), DAY0)
    assert alone.meter_ids == found.meter_ids[:6]
    np.testing.assert_array_equal(alone.correlation, found.correlation[:6])
    # One feeder for all: street lights and houses are each other's reference, and match worse.
    merged = NeighbourhoodCheck(config(dict.fromkeys(groups, "all"))).verdicts(
        aggregates([day]), DAY0
    )
    assert merged.members.tolist() == [10] * 10
    assert merged.correlation[6:].max() < found.correlation[6:].min() - 0.2


def test_other_channel_and_alert_channel(rng: np.random.Generator) -> None:
    day = feeder_day(rng, "a", 5)
    day["a5"] = meter_day(rng, INVERTED)
    current = hourly(columns([day], channel=int(Channel.CURRENT), unit=int(Unit.A)))
    assert NeighbourhoodCheck(config()).run_day(current, DAY0) == []
    check = NeighbourhoodCheck(config(channel=Channel.CURRENT))
    alerts = check.run_day(current.merge(aggregates([feeder_day(rng, "a", 6)])), DAY0)
    assert [(a.meter_id, a.channel) for a in alerts] == [("a5", int(Channel.CURRENT))]


# --- episodes --------------------------------------------------------------------------------


def test_episode_spans_flagged_days_and_resolves(rng: np.random.Generator) -> None:
    days = []
    for d in range(5):
        day = feeder_day(rng, "a", 5)
        day["a5"] = meter_day(rng, INVERTED if d < 3 else SHAPE)
        days.append(day)
    data = aggregates(days)
    check = NeighbourhoodCheck(config())
    r, _ = expected_r(days[0], "a5", sorted(A_GROUP))
    assert check.run_day(data, day_start(0)) == [alert("a5", DAY0, None, r)]
    assert check.run_day(data, day_start(1)) == []
    assert check.run_day(data, day_start(2)) == []
    assert check.open_alerts() == [alert("a5", DAY0, None, r)]
    assert check.run_day(data, day_start(3)) == [alert("a5", DAY0, day_start(3), r)]
    assert check.open_alerts() == []
    assert check.run_day(data, day_start(4)) == []
    # run_until does the same in one call.
    again = NeighbourhoodCheck(config())
    assert again.run_until(data, day_start(5)) == [
        alert("a5", DAY0, None, r),
        alert("a5", DAY0, day_start(3), r),
    ]
    assert again.last_day_ms == day_start(4)


def test_unusable_day_leaves_state_unchanged(rng: np.random.Generator) -> None:
    days = []
    for profile, missing in [(INVERTED, 0), (SHAPE, 5), (SHAPE, 24), (INVERTED, 0), (SHAPE, 0)]:
        day = feeder_day(rng, "a", 5)
        if missing < 24:
            day["a5"] = drop_hours(meter_day(rng, profile), range(missing))
        days.append(day)
    data = aggregates(days)
    check = NeighbourhoodCheck(config())
    r, _ = expected_r(days[0], "a5", sorted(A_GROUP))
    opened = alert("a5", DAY0, None, r)
    assert check.run_day(data, day_start(0)) == [opened]
    assert check.run_day(data, day_start(1)) == []  # follows, but only 19 hours: no verdict
    assert check.run_day(data, day_start(2)) == []  # no data at all
    assert check.open_alerts() == [opened]
    assert check.run_day(data, day_start(3)) == []  # flagged again: same episode
    assert check.run_day(data, day_start(4)) == [alert("a5", DAY0, day_start(4), r)]


def test_constant_day_does_not_resolve(rng: np.random.Generator) -> None:
    first = feeder_day(rng, "a", 5)
    first["a5"] = meter_day(rng, INVERTED)
    second = feeder_day(rng, "a", 5)
    second["a5"] = np.zeros((24, PER_HOUR))  # bypassed: flat zero
    data = aggregates([first, second])
    check = NeighbourhoodCheck(config())
    assert len(check.run_until(data, day_start(2))) == 1
    assert [a.meter_id for a in check.open_alerts()] == ["a5"]


def test_run_until_takes_complete_days_only(rng: np.random.Generator) -> None:
    days = []
    for _ in range(3):
        day = feeder_day(rng, "a", 5)
        day["a5"] = meter_day(rng, INVERTED)
        days.append(day)
    data = aggregates([days[0], {}, days[2]])  # day 1 has no readings
    check = NeighbourhoodCheck(config())
    assert check.run_until(data, day_start(1) - 1) == []
    assert check.last_day_ms is None
    assert len(check.run_until(data, day_start(3) - 1)) == 1
    assert check.last_day_ms == day_start(0)
    assert check.run_until(data, day_start(3)) == []  # day 2: still flagged, episode open
    assert check.last_day_ms == day_start(2)
    assert check.run_until(data, day_start(10)) == []


def test_old_or_unaligned_day_raises(rng: np.random.Generator) -> None:
    data = aggregates([feeder_day(rng, "a", 6), feeder_day(rng, "a", 6)])
    check = NeighbourhoodCheck(config())
    check.run_day(data, day_start(1))
    with pytest.raises(ValueError, match="not after"):
        check.run_day(data, day_start(1))
    with pytest.raises(ValueError, match="not after"):
        check.run_day(data, day_start(0))
    with pytest.raises(ValueError, match="start of a UTC day"):
        check.run_day(data, day_start(2) + HOUR_MS)
    assert check.last_day_ms == day_start(1)


# --- profiles and config ---------------------------------------------------------------------


def test_daily_profiles_weights_rows_by_count() -> None:
    w, kw = int(Unit.W), int(Unit.KW)
    readings = [  # meter, ts, value, channel, unit
        ("m2", DAY0 + 2 * HOUR_MS, 1.0, POWER, kw),
        ("m2", DAY0 + 2 * HOUR_MS + 1, 2.0, POWER, kw),
        ("m2", DAY0 + 2 * HOUR_MS + 2, 6.0, POWER, w),  # another unit row, same hour
        ("m1", DAY0 + 23 * HOUR_MS, 4.0, POWER, kw),
        ("m1", DAY0 + 5 * HOUR_MS, 9.0, int(Channel.VOLTAGE), int(Unit.V)),
        ("m3", DAY0 - 1, 5.0, POWER, kw),  # previous day
        ("m3", DAY0 + DAY_MS, 5.0, POWER, kw),  # next day
    ]
    ids = tuple(dict.fromkeys(r[0] for r in readings))
    data = hourly(
        ReadingColumns(
            meter_ids=ids,
            meter=np.array([ids.index(r[0]) for r in readings], dtype=np.int32),
            channel=np.array([r[3] for r in readings], dtype=np.uint8),
            unit=np.array([r[4] for r in readings], dtype=np.uint8),
            ts_ms=np.array([r[1] for r in readings], dtype=np.int64),
            value=np.array([r[2] for r in readings], dtype=np.float64),
        )
    )
    meters, profiles = daily_profiles(data, DAY0, Channel.POWER)
    assert meters == ("m1", "m2")
    assert profiles.shape == (2, 24)
    assert profiles.dtype == np.float64
    expected = np.full((2, 24), np.nan)
    expected[0, 23] = 4.0
    expected[1, 2] = 3.0
    np.testing.assert_array_equal(profiles, expected)
    meters, profiles = daily_profiles(data, DAY0 + 7 * DAY_MS)
    assert meters == ()
    assert profiles.shape == (0, 24)
    with pytest.raises(ValueError):
        daily_profiles(data, DAY0 + 1)


def test_empty_aggregates_and_empty_groups(rng: np.random.Generator) -> None:
    assert NeighbourhoodCheck(config()).run_day(HourlyAggregates.empty(), DAY0) == []
    assert NeighbourhoodCheck().run_day(aggregates([feeder_day(rng, "a", 6)]), DAY0) == []
    assert NeighbourhoodCheck(config()).run_until(HourlyAggregates.empty(), DAY0 + DAY_MS) == []


def test_config_freezes_groups() -> None:
    made = NeighbourhoodConfig.from_mapping({"m2": "x", "m1": "y"}, min_members=4)
    assert made.groups == (("m1", "y"), ("m2", "x"))
    assert made.group_of == {"m1": "y", "m2": "x"}
    assert hash(made) == hash(NeighbourhoodConfig(groups=(("m2", "x"), ("m1", "y")), min_members=4))
    defaults = NeighbourhoodConfig()
    assert (defaults.min_correlation, defaults.channel, defaults.min_hours) == (
        0.3,
        Channel.POWER,
        20,
    )
    assert (defaults.min_members, defaults.severity, defaults.rule) == (
        3,
        "warning",
        RULE,
    )
    with pytest.raises(ValueError, match="two groups"):
        NeighbourhoodConfig(groups=(("m1", "x"), ("m1", "y")))
    for bad in (
        {"min_correlation": 1.5},
        {"min_hours": 1},
        {"min_hours": 25},
        {"min_members": 1},
        {"severity": "loud"},
        {"rule": ""},
    ):
        with pytest.raises(ValueError):
            NeighbourhoodConfig.from_mapping({}, **bad)


# --- snapshot --------------------------------------------------------------------------------


def test_snapshot_mid_episode_gives_the_same_later_alerts(rng: np.random.Generator) -> None:
    days = []
    for d in range(6):
        day = feeder_day(rng, "a", 5)
        day["a5"] = meter_day(rng, INVERTED if d < 4 else SHAPE)
        day["a2"] = meter_day(rng, INVERTED if d in (1, 2) else SHAPE)
        days.append(day)
    data = aggregates(days)
    whole = NeighbourhoodCheck(config())
    expected = whole.run_until(data, day_start(6))
    assert [(a.meter_id, a.opened_ms, a.resolved_ms) for a in expected] == [
        ("a5", day_start(0), None),
        ("a2", day_start(1), None),
        ("a2", day_start(1), day_start(3)),
        ("a5", day_start(0), day_start(4)),
    ]
    first = NeighbourhoodCheck(config())
    before = first.run_until(data, day_start(2))
    data_snapshot = first.snapshot()
    second = NeighbourhoodCheck.restore(data_snapshot, config())
    assert second.open_alerts() == first.open_alerts()
    assert len(second.open_alerts()) == 2
    assert second.last_day_ms == day_start(1)
    assert second.snapshot() == data_snapshot
    assert before + second.run_until(data, day_start(6)) == expected
    assert second.snapshot() == whole.snapshot()
    with pytest.raises(ValueError, match="not after"):
        NeighbourhoodCheck.restore(data_snapshot, config()).run_day(data, day_start(1))


def test_fresh_snapshot_round_trips() -> None:
    restored = NeighbourhoodCheck.restore(NeighbourhoodCheck(config()).snapshot(), config())
    assert restored.last_day_ms is None
    assert restored.open_alerts() == []


def _forge(body: object, *, version: int = NEIGHBOURHOOD_SNAPSHOT_VERSION) -> bytes:
    raw = orjson.dumps(body)
    prefix = struct.pack("<12sHI", NEIGHBOURHOOD_SNAPSHOT_MAGIC, version, zlib.crc32(raw))
    return prefix + raw


def test_damaged_snapshots_raise_snapshot_error(rng: np.random.Generator) -> None:
    day = feeder_day(rng, "a", 5)
    day["a5"] = meter_day(rng, INVERTED)
    check = NeighbourhoodCheck(config())
    check.run_day(aggregates([day]), DAY0)
    good = check.snapshot()
    damaged = [good[:n] for n in range(len(good))]
    damaged += [good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :] for i in range(len(good))]
    damaged += [good + b" ", b"", b"garbage" * 10]
    entry = ["a5", DAY0, {"correlation": -0.9}]
    body = {"rule": RULE, "channel": POWER, "last_day_ms": DAY0, "open": [entry]}
    assert NeighbourhoodCheck.restore(_forge(body), config()).open_alerts()[0].meter_id == "a5"
    forged = [
        _forge(body, version=2),
        _forge([body]),
        _forge({**body, "rule": "other"}),
        _forge({**body, "channel": int(Channel.CURRENT)}),
        _forge({**body, "last_day_ms": DAY0 + 1}),
        _forge({**body, "last_day_ms": None}),
        _forge({**body, "last_day_ms": DAY0 - DAY_MS}),
        _forge({**body, "open": None}),
        _forge({**body, "open": [entry, entry]}),
        _forge({**body, "open": [["a5", DAY0 + 1, {}]]}),
        _forge({**body, "open": [["a5", DAY0, {"x": "y"}]]}),
        _forge({**body, "open": [["a5", DAY0, {"x": True}]]}),
        _forge({**body, "open": [[5, DAY0, {}]]}),
        _forge({**body, "open": [["a5", DAY0]]}),
    ]
    for data in damaged + forged:
        with pytest.raises(SnapshotError):
            NeighbourhoodCheck.restore(data, config())
    with pytest.raises(SnapshotError, match="rule"):
        NeighbourhoodCheck.restore(good, config(rule="other_rule"))
    with pytest.raises(SnapshotError):
        NeighbourhoodCheck.restore("text", config())  # type: ignore[arg-type]
