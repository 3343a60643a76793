"""Gap rules and short-gap interpolation: exact retrospective alerts and exact estimates."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_consumer.detect.engine import Detection, Engine
from cloud_consumer.detect.episodes import Alert
from cloud_consumer.detect.rules import default_detectors
from cloud_consumer.detect.rules.gaps import (
    EXTENDED,
    SHORT,
    Estimates,
    InterpolationConfig,
    Interpolator,
    MissingDataConfig,
    MissingExtendedDetector,
    MissingShortDetector,
)
from cloud_consumer.detect.validate import Flag, Validator
from meterlink_wire.vocab import Channel, Unit
from tests.detect.readings import Reading, columns

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
MINUTE = 60_000
HOUR = 3_600_000
CADENCE = 15 * MINUTE
POWER, FLOW = int(Channel.POWER), int(Channel.FLOW)
KW = int(Unit.KW)


def at(meter: str, ts: int, value: float = 1.0, channel: int = POWER, unit: int = KW) -> Reading:
    return (meter, ts, value, channel, unit)


def short(meter: str, opened: int, resolved: int, gap_h: float) -> Alert:
    evidence = {"gap_h": gap_h, "threshold_h": 4.0}
    return Alert(meter, POWER, "missing_short", "warning", opened, resolved, evidence)


def extended(meter: str, opened: int, resolved: int, gap_h: float) -> Alert:
    evidence = {"gap_h": gap_h, "threshold_h": 24.0}
    return Alert(meter, POWER, "missing_extended", "critical", opened, resolved, evidence)


def gap_engine(interpolator: Interpolator | None = None) -> Engine:
    return Engine([MissingShortDetector(), MissingExtendedDetector()], interpolator=interpolator)


def run(engine: Engine, readings: Sequence[Reading], batch: int) -> list[Detection]:
    return [
        engine.process(columns(readings[start : start + batch]))
        for start in range(0, len(readings), batch)
    ]


def estimates_of(found: Sequence[Detection]) -> Estimates:
    return Estimates.join([d.estimates for d in found])


# A 15-minute series: four readings, then each gap followed by four readings (the first closes
# the gap). Gaps: exactly 4 h, 1 ms short of 4 h, exactly 24 h, 23.99 h, 30 h.
JUST_UNDER_4H = 4 * HOUR - 1  # 3 h 59 min 59.999 s
GAPS = [4 * HOUR, JUST_UNDER_4H, 24 * HOUR, 86_364_000, 30 * HOUR]
A0 = T0 + 45 * MINUTE  # newest reading before the first gap
B0 = A0 + 4 * HOUR
A1 = B0 + 45 * MINUTE
B1 = A1 + JUST_UNDER_4H
A2 = B1 + 45 * MINUTE
B2 = A2 + 24 * HOUR
A3 = B2 + 45 * MINUTE
B3 = A3 + 86_364_000
A4 = B3 + 45 * MINUTE
B4 = A4 + 30 * HOUR


def gappy(meter: str) -> list[Reading]:
    readings: list[Reading] = []
    ts = T0
    for gap in [0, *GAPS]:
        ts += gap
        readings += [at(meter, ts + i * CADENCE, 1.0 + i) for i in range(4)]
        ts += 3 * CADENCE
    return readings


EXPECTED = [
    short("g", A0, B0, 4.0),  # exactly 4 h: short
    # A1 -> B1 (4 h less 1 ms): no alert, interpolated instead
    extended("g", A2, B2, 24.0),  # exactly 24 h: extended, not short
    short("g", A3, B3, 23.99),
    extended("g", A4, B4, 30.0),
]


def test_series_timestamps() -> None:
    ts = [r[1] for r in gappy("g")]
    assert len(ts) == 24
    assert [ts[3], ts[4], ts[7], ts[8], ts[11], ts[12], ts[15], ts[16], ts[19], ts[20]] == [
        A0, B0, A1, B1, A2, B2, A3, B3, A4, B4,
    ]  # fmt: skip
    assert B0 == T0 + 4 * HOUR + 45 * MINUTE
    assert B3 - A3 == 23.99 * HOUR


@pytest.mark.parametrize("batch", [1, 7, 24])
def test_exact_gap_alerts_whatever_the_batching(batch: int) -> None:
    found = run(gap_engine(), gappy("g"), batch)
    alerts = [a for d in found for a in d.alerts]
    assert alerts == EXPECTED
    assert all(a.resolved_ms is not None for a in alerts)  # one resolved alert per episode
    assert [d.quality.tolist() for d in found] == [
        [100] * len(d.quality) for d in found
    ]  # a gap costs the reading nothing
    engine = gap_engine()
    run(engine, gappy("g"), batch)
    assert engine.open_alerts() == []


@pytest.mark.parametrize("batch", [1, 7, 24])
def test_interpolation_is_batch_size_independent(batch: int) -> None:
    found = estimates_of(run(gap_engine(Interpolator()), gappy("g"), batch))
    # Only the 4 h - 1 ms gap is filled: round(gap / 15 min) - 1 = 15 estimates, 4 h rounded up.
    assert len(found) == 15
    assert found.quality.tolist() == [60] * 15
    assert found.ts_ms.tolist() == [A1 + JUST_UNDER_4H * k // 16 for k in range(1, 16)]
    assert found.value.tolist() == [4.0 + (1.0 - 4.0) * k / 16 for k in range(1, 16)]
    assert found.rows.tolist() == [0] * 15


def test_duplicates_and_out_of_order_readings_close_no_gap() -> None:
    engine = gap_engine(Interpolator())
    engine.process(columns([at("d", T0), at("d", T0 + CADENCE), at("d", T0 + 5 * HOUR)]))
    found = engine.process(
        columns([at("d", T0 + 5 * HOUR), at("d", T0 + HOUR), at("d", T0 + 5 * HOUR + CADENCE)])
    )
    back = int(Flag.BACKDATED)
    assert found.flags.tolist() == [back, back, 0]
    assert found.alerts == []
    assert len(found.estimates) == 0
    dup = engine.process(columns([at("d", T0 + 10 * HOUR)] * 3))
    assert dup.flags.tolist() == [0, back, back]
    assert dup.alerts == [short("d", T0 + 5 * HOUR + CADENCE, T0 + 10 * HOUR, 4.75)]


def test_first_reading_of_a_meter_closes_no_gap() -> None:
    engine = gap_engine(Interpolator())
    engine.process(columns([at("old", T0)]))
    found = engine.process(columns([at("new", T0 + 100 * HOUR), at("new2", T0 + 200 * HOUR)]))
    assert found.alerts == []
    assert len(found.estimates) == 0
    later = engine.process(columns([at("new", T0 + 130 * HOUR), at("old", T0 + 5 * HOUR)]))
    assert later.alerts == [
        short("old", T0, T0 + 5 * HOUR, 5.0),
        extended("new", T0 + 100 * HOUR, T0 + 130 * HOUR, 30.0),
    ]  # in event order: resolved time first


def test_several_meters_and_channels_in_one_batch() -> None:
    readings = [
        at("a", T0),
        at("b", T0, channel=FLOW, unit=int(Unit.L_PER_MIN)),
        at("a", T0, channel=FLOW, unit=int(Unit.L_PER_MIN)),
        at("b", T0 + 6 * HOUR, channel=FLOW, unit=int(Unit.L_PER_MIN)),
        at("a", T0 + 25 * HOUR),
        at("a", T0 + 4 * HOUR, channel=FLOW, unit=int(Unit.L_PER_MIN)),
    ]
    shuffled = [readings[i] for i in np.random.default_rng(3).permutation(len(readings))]
    alerts = gap_engine().process(columns(shuffled)).alerts
    flow_short = Alert(
        "a", FLOW, "missing_short", "warning", T0, T0 + 4 * HOUR,
        {"gap_h": 4.0, "threshold_h": 4.0},
    )  # fmt: skip
    b_short = Alert(
        "b", FLOW, "missing_short", "warning", T0, T0 + 6 * HOUR,
        {"gap_h": 6.0, "threshold_h": 4.0},
    )  # fmt: skip
    assert alerts == [flow_short, b_short, extended("a", T0, T0 + 25 * HOUR, 25.0)]
    assert alerts[0].episode_id != alerts[1].episode_id


def test_gap_alerts_with_every_rule_and_a_validator() -> None:
    engine = Engine(default_detectors(), validator=Validator(), interpolator=Interpolator())
    alerts = [a for d in run(engine, gappy("g"), 5) for a in d.alerts]
    assert [a for a in alerts if a.rule.startswith("missing_")] == EXPECTED


def test_detector_config() -> None:
    assert MissingShortDetector().config == SHORT
    assert MissingExtendedDetector().config == EXTENDED
    assert (MissingShortDetector().severity, MissingExtendedDetector().severity) == (
        "warning",
        "critical",
    )
    one_hour = MissingShortDetector(MissingDataConfig(HOUR, 2 * HOUR, "info"))
    found = Engine([one_hour]).process(
        columns([at("m", T0), at("m", T0 + HOUR), at("m", T0 + 3 * HOUR), at("m", T0 + 4 * HOUR)])
    )
    assert found.alerts == [
        Alert(
            "m", POWER, "missing_short", "info", T0, T0 + HOUR,
            {"gap_h": 1.0, "threshold_h": 1.0},
        ),
        Alert(
            "m", POWER, "missing_short", "info", T0 + 3 * HOUR, T0 + 4 * HOUR,
            {"gap_h": 1.0, "threshold_h": 1.0},
        ),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="min_gap_ms must be positive"):
        MissingShortDetector(MissingDataConfig(0, None, "warning"))
    with pytest.raises(ValueError, match="max_gap_ms must exceed"):
        MissingExtendedDetector(MissingDataConfig(HOUR, HOUR, "warning"))


# --- interpolation ------------------------------------------------------------------------------


def cadence_then_gap(meter: str, gap: int, end: float = 6.0, count: int = 3) -> list[Reading]:
    """``count`` readings 15 minutes apart (1.0, ..., 2.0 last), then one after ``gap``."""
    readings = [at(meter, T0 + i * CADENCE, 1.0) for i in range(count - 1)]
    last = T0 + (count - 1) * CADENCE
    return [*readings, at(meter, last, 2.0), at(meter, last + gap, end)]


def test_one_hour_gap_gets_three_estimates_of_quality_90() -> None:
    engine = gap_engine(Interpolator())
    found = engine.process(columns(cadence_then_gap("m", HOUR)))
    assert found.alerts == []
    est = found.estimates
    assert est.ts_ms.tolist() == [T0 + 45 * MINUTE, T0 + 60 * MINUTE, T0 + 75 * MINUTE]
    assert est.value.tolist() == [3.0, 4.0, 5.0]  # 2.0 -> 6.0, linearly
    assert est.quality.tolist() == [90, 90, 90]
    assert found.quality.tolist() == [100, 100, 100, 100]  # the readings themselves are clean


def test_two_and_a_half_hour_gap_gets_quality_70() -> None:
    found = gap_engine(Interpolator()).process(
        columns(cadence_then_gap("m", 150 * MINUTE, end=12.0))
    )
    est = found.estimates
    assert est.ts_ms.tolist() == [T0 + 30 * MINUTE + k * CADENCE for k in range(1, 10)]
    assert est.value.tolist() == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    assert est.quality.tolist() == [70] * 9


def test_estimates_land_on_the_cadence_to_the_millisecond() -> None:
    # 5-minute cadence, 75-minute gap: 14 estimates, each exactly on a 5-minute slot.
    readings = [at("m", T0 + i * 5 * MINUTE) for i in range(3)]
    readings.append(at("m", T0 + 85 * MINUTE, 16.0))
    est = gap_engine(Interpolator()).process(columns(readings)).estimates
    assert est.ts_ms.tolist() == [T0 + 10 * MINUTE + k * 5 * MINUTE for k in range(1, 15)]
    assert est.value.tolist() == [1.0 + k for k in range(1, 15)]
    assert est.quality.tolist() == [80] * 14


@pytest.mark.parametrize(
    ("gap", "count"),
    [
        (int(1.5 * CADENCE), 0),  # not longer than 1.5 cadences: no gap
        (int(1.5 * CADENCE) + 1, 1),  # round(1.5...) - 1 = 1
        (30 * MINUTE, 1),
        (4 * HOUR, 0),  # exactly 4 h: reported, not filled
    ],
)
def test_what_counts_as_a_gap(gap: int, count: int) -> None:
    est = gap_engine(Interpolator()).process(columns(cadence_then_gap("m", gap))).estimates
    assert len(est) == count


def test_max_points_caps_the_estimates() -> None:
    interpolator = Interpolator(InterpolationConfig(max_points=2))
    found = gap_engine(interpolator).process(columns(cadence_then_gap("m", HOUR, end=5.0)))
    est = found.estimates
    assert est.ts_ms.tolist() == [T0 + 50 * MINUTE, T0 + 70 * MINUTE]  # a third and two thirds
    assert est.value.tolist() == [3.0, 4.0]
    assert est.quality.tolist() == [90, 90]


def test_penalty_per_hour_and_its_floor() -> None:
    interpolator = Interpolator(InterpolationConfig(penalty_per_hour=40, max_gap_ms=5 * HOUR))
    found = gap_engine(interpolator).process(columns(cadence_then_gap("m", 3 * HOUR)))
    assert found.estimates.quality.tolist() == [0] * 11
    with pytest.raises(ValueError, match="interpolation"):
        InterpolationConfig(tolerance=1.0)
    with pytest.raises(ValueError, match="interpolation"):
        InterpolationConfig(max_points=0)
    with pytest.raises(ValueError, match="interpolation"):
        InterpolationConfig(max_gap_ms=0)


def test_no_estimates_before_a_cadence_is_established() -> None:
    engine = gap_engine(Interpolator())
    # The second reading of a series has no previous interval to compare with.
    first = engine.process(columns([at("m", T0), at("m", T0 + CADENCE)]))
    assert len(first.estimates) == 0
    # The third has one: 15 minutes, so a 1 h interval is a gap.
    third = engine.process(columns([at("m", T0 + CADENCE + HOUR, 5.0)]))
    assert third.estimates.ts_ms.tolist() == [T0 + 30 * MINUTE, T0 + 45 * MINUTE, T0 + 60 * MINUTE]
    assert third.estimates.value.tolist() == [2.0, 3.0, 4.0]
    # A long first interval is no gap either (one reading, then 2 h later a second).
    other = engine.process(columns([at("x", T0), at("x", T0 + 2 * HOUR)]))
    assert len(other.estimates) == 0


def test_describe_names_meters_channels_and_canonical_units() -> None:
    engine = Engine([], validator=Validator(), interpolator=Interpolator())
    m3h = int(Unit.M3_PER_H)  # converted to L/min by the validator: 0.06 m3/h = 1 L/min
    readings = [
        *[at("b", T0 + i * CADENCE, 0.06, FLOW, m3h) for i in range(3)],
        *[at("a", T0 + i * CADENCE, 1000.0, POWER, int(Unit.W)) for i in range(3)],
        at("a", T0 + 90 * MINUTE, 3000.0, POWER, int(Unit.W)),
        at("b", T0 + 60 * MINUTE, 0.24, FLOW, m3h),
    ]
    found = engine.process(columns(readings))
    described = engine.describe(found.estimates)
    assert described.meter_ids == ("b", "a")
    assert described.meter_names() == ["b", "a", "a", "a"]
    assert described.meter.dtype == np.int32
    assert described.channel.tolist() == [FLOW, POWER, POWER, POWER]
    assert described.unit.tolist() == [int(Unit.L_PER_MIN)] + [int(Unit.KW)] * 3
    assert described.ts_ms.tolist() == [
        T0 + 45 * MINUTE,
        T0 + 45 * MINUTE,
        T0 + 60 * MINUTE,
        T0 + 75 * MINUTE,
    ]
    assert described.value.tolist() == [2.5, 1.5, 2.0, 2.5]  # canonical units: L/min, kW
    assert found.estimates.quality.tolist() == [90, 90, 90, 90]
    empty = engine.describe(Estimates.empty())
    assert empty.meter_ids == ()
    assert len(empty) == 0


@pytest.mark.parametrize("batch", [1, 7, 24])
def test_estimates_never_enter_the_windows(batch: int) -> None:
    readings = gappy("g") + cadence_then_gap("h", HOUR)
    with_estimates = Engine(default_detectors(), interpolator=Interpolator())
    without = Engine(default_detectors())
    found = run(with_estimates, readings, batch)
    plain = run(without, readings, batch)
    assert len(estimates_of(found)) == 18
    assert len(estimates_of(plain)) == 0
    assert with_estimates.snapshot() == without.snapshot()
    assert [a for d in found for a in d.alerts] == [a for d in plain for a in d.alerts]
    assert [d.quality.tolist() for d in found] == [d.quality.tolist() for d in plain]


# --- the live sweep: a meter that falls silent is found before its next reading ----------------

S0 = T0 + 3 * CADENCE  # the silent meter's newest reading


def silent_engine(*, also_quiet: bool = False) -> Engine:
    """Meter "s" heard until S0; ``also_quiet``: meter "q" too, until S0 + 3 h."""
    engine = gap_engine()
    readings = [at("s", T0 + i * CADENCE) for i in range(4)]
    if also_quiet:
        readings += [at("q", T0 + i * CADENCE) for i in range(16)]
    engine.process(columns(readings))
    return engine


def live(rule: str, opened: int, gap_h: float, resolved: int | None = None) -> Alert:
    """A gap episode opened by the sweep: its evidence is the gap when the sweep saw it."""
    maker = short if rule == "missing_short" else extended
    return dataclasses.replace(maker("s", opened, 0, gap_h), resolved_ms=resolved)


def test_sweep_opens_missing_short_at_four_hours_of_silence_and_only_once() -> None:
    engine = silent_engine(also_quiet=True)  # "q": silent for 1 h at S0 + 4 h
    assert engine.sweep(S0 + 4 * HOUR - 1) == []
    opened = engine.sweep(S0 + 4 * HOUR)
    assert opened == [live("missing_short", S0, 4.0)]
    assert engine.sweep(S0 + 5 * HOUR) == []  # still open: no second alert
    assert engine.open_alerts() == opened
    assert engine.sweep(S0 + HOUR) == []  # a clock set back leaves it open
    assert engine.open_alerts() == opened


def test_the_retrospective_alert_resolves_the_live_episode_under_its_id() -> None:
    engine = silent_engine(also_quiet=True)
    (opened,) = engine.sweep(S0 + 5 * HOUR)
    found = engine.process(columns([at("s", S0 + 6 * HOUR), at("q", S0 + 6 * HOUR)]))
    assert found.alerts == [short("s", S0, S0 + 6 * HOUR, 6.0)]  # one alert, final evidence
    assert found.alerts[0].episode_id == opened.episode_id
    assert engine.open_alerts() == []
    assert engine.sweep(S0 + 6 * HOUR) == []


def test_silence_past_a_day_escalates_to_missing_extended() -> None:
    engine = silent_engine()
    engine.sweep(S0 + 4 * HOUR)
    assert engine.sweep(S0 + 24 * HOUR - 1) == []
    escalated = engine.sweep(S0 + 30 * HOUR)
    # missing_short ended when the gap reached 24 h, whenever the sweep noticed.
    assert escalated == [
        live("missing_extended", S0, 30.0),
        live("missing_short", S0, 4.0, resolved=S0 + 24 * HOUR),
    ]
    assert engine.open_alerts() == [live("missing_extended", S0, 30.0)]
    back = engine.process(columns([at("s", S0 + 50 * HOUR)]))
    assert back.alerts == [extended("s", S0, S0 + 50 * HOUR, 50.0)]
    assert back.alerts[0].episode_id == escalated[0].episode_id
    assert engine.open_alerts() == []


def test_a_return_past_a_day_without_a_sweep_between_ends_missing_short_at_24_hours() -> None:
    engine = silent_engine()
    engine.sweep(S0 + 5 * HOUR)
    back = engine.process(columns([at("s", S0 + 30 * HOUR)]))
    assert back.alerts == [
        live("missing_short", S0, 5.0, resolved=S0 + 24 * HOUR),
        extended("s", S0, S0 + 30 * HOUR, 30.0),
    ]
    assert engine.open_alerts() == []


@pytest.mark.parametrize("batch", [1, 3, 10])
def test_a_late_backlog_with_no_gap_ends_the_live_episode_at_its_first_reading(
    batch: int,
) -> None:
    engine = silent_engine()
    engine.sweep(S0 + 5 * HOUR)  # the gateway was offline, its agent kept the readings
    backlog = [at("s", S0 + i * CADENCE) for i in range(1, 11)]
    found = run(engine, backlog, batch)
    assert [a for d in found for a in d.alerts] == [
        live("missing_short", S0, 5.0, resolved=S0 + CADENCE)
    ]
    assert engine.open_alerts() == []


def test_a_rejected_reading_does_not_end_the_silence() -> None:
    engine = silent_engine()
    engine.sweep(S0 + 5 * HOUR)
    found = engine.process(columns([at("s", S0), at("s", S0 + 2 * HOUR, value=float("nan"))]))
    assert found.flags.tolist() == [int(Flag.BACKDATED), int(Flag.NOT_FINITE)]
    assert found.alerts == []
    assert engine.open_alerts() == [live("missing_short", S0, 5.0)]


def test_live_episodes_survive_snapshot_and_restore() -> None:
    engine = silent_engine()
    engine.sweep(S0 + 5 * HOUR)
    restored = Engine.restore(
        engine.snapshot(), [MissingShortDetector(), MissingExtendedDetector()]
    )
    assert restored.open_alerts() == [live("missing_short", S0, 5.0)]
    assert restored.sweep(S0 + 6 * HOUR) == []
    back = restored.process(columns([at("s", S0 + 30 * HOUR)]))
    assert back.alerts == [
        live("missing_short", S0, 5.0, resolved=S0 + 24 * HOUR),
        extended("s", S0, S0 + 30 * HOUR, 30.0),
    ]


def test_sweep_finds_every_silent_series_and_nothing_without_gap_rules() -> None:
    engine = silent_engine(also_quiet=True)
    opened = engine.sweep(S0 + 7 * HOUR)
    assert [(a.meter_id, a.rule, a.opened_ms) for a in opened] == [
        ("s", "missing_short", S0),
        ("q", "missing_short", T0 + 15 * CADENCE),
    ]
    # A series with a row but no reading yet (its only reading, before 1970, was refused):
    # there is no silence to measure.
    refused = engine.process(columns([at("pre-epoch", -5)]))
    assert refused.flags.tolist() == [int(Flag.BACKDATED)]
    assert engine.sweep(S0 + 7 * HOUR) == []
    assert Engine([]).sweep(S0 + 100 * HOUR) == []
    others = Engine(default_detectors()[:3])
    others.process(columns([at("s", T0)]))
    assert others.sweep(T0 + 100 * HOUR) == []


QUARTERS = st.integers(min_value=1, max_value=40 * 4)  # a gap of up to 40 h, in 15-min steps


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(QUARTERS, st.lists(st.integers(min_value=0, max_value=40 * 4), max_size=4)),
        min_size=1,
        max_size=8,
    )
)
def test_sweeps_between_readings_leave_the_retrospective_alerts_as_they_were(
    plan: list[tuple[int, list[int]]],
) -> None:
    """Sweeps while a meter is silent add only the ``missing_short`` a day-long gap outgrew.

    Each step: a gap (15-minute steps), and sweeps at offsets into it (those before its end).
    Alerts are written to a store by id, last write winning, as the alert sink does.
    """
    quiet, swept = gap_engine(), gap_engine()
    readings: list[Reading] = [at("p", T0)]
    for engine in (quiet, swept):
        engine.process(columns(readings))
    expected: dict[str, Alert] = {}
    store: dict[str, Alert] = {}
    ts = T0
    for quarters, offsets in plan:
        gap = quarters * CADENCE
        seen_in_range = [o * CADENCE for o in sorted(offsets) if 4 * HOUR <= o * CADENCE < gap]
        for offset in sorted(o * CADENCE for o in offsets if o * CADENCE < gap):
            store.update((a.episode_id, a) for a in swept.sweep(ts + offset))
        reading = [at("p", ts + gap)]
        for alert in quiet.process(columns(reading)).alerts:
            expected[alert.episode_id] = alert
        store.update((a.episode_id, a) for a in swept.process(columns(reading)).alerts)
        outgrown = [o for o in seen_in_range if o < 24 * HOUR]
        if gap >= 24 * HOUR and outgrown:
            extra = short("p", ts, ts + 24 * HOUR, outgrown[0] / HOUR)
            expected[extra.episode_id] = extra
        ts += gap
    assert store == expected
    assert swept.open_alerts() == []
