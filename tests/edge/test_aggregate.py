import itertools
import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.aggregate import COUNTER_CHANNELS, ClosedWindows, WindowAggregator
from edge_agent.reading import Reading
from meterlink_wire import Channel, ReadingBatch, Unit, WindowRow, decode, encode

T0 = 1_764_201_600_000  # 2025-11-27T00:00:00Z, a multiple of every window used here
W = 60_000  # the 60 s window, in ms
E, KWH = Channel.ENERGY_IMPORT, Unit.KWH
P, KW = Channel.POWER, Unit.KW


def energy(ts: int, value: float, meter: str = "m1") -> Reading:
    return Reading(meter, E, KWH, ts, value)


def power(ts: int, value: float, meter: str = "m1") -> Reading:
    return Reading(meter, P, KW, ts, value)


def only(closed: ClosedWindows) -> WindowRow:
    assert len(closed.rows) == 1
    return closed.rows[0]


def deltas(aggregator: WindowAggregator, values: list[float], step_ms: int = 10_000) -> float:
    """Feed one energy series in time order, close everything, return the summed delta."""
    aggregator.add([energy(T0 + i * step_ms, v) for i, v in enumerate(values)])
    rows = aggregator.close_all().rows
    assert all(r.delta is not None and r.delta >= 0.0 for r in rows)
    return sum(r.delta for r in rows if r.delta is not None)


# --- exact aggregates ---------------------------------------------------------------------------


def test_window_row_has_exact_statistics():
    agg = WindowAggregator(60, 0)
    late = agg.add(
        [
            energy(T0, 10.0),
            power(T0 + 1_000, 2.5),
            energy(T0 + 15_000, 10.5),
            power(T0 + 16_000, 0.5),
            energy(T0 + 30_000, 11.0),
            power(T0 + 31_000, 4.0),
            energy(T0 + 45_000, 11.25),
        ]
    )
    assert late == 0
    assert agg.open_readings == 7
    closed = agg.close_due(T0 + W)
    assert closed == ClosedWindows(
        [
            WindowRow("m1", E, KWH, T0, 4, 10.0, 11.25, 10.6875, 11.25, None, 1.25),
            WindowRow("m1", P, KW, T0, 3, 0.5, 4.0, 7.0 / 3, 4.0, None, None),
        ],
        7,
    )
    assert agg.open_readings == 0
    assert agg.closed_until_ms == T0 + W


def test_delta_is_measured_from_the_previous_window_last():
    agg = WindowAggregator(60, 0)
    agg.add([energy(T0, 10.0), energy(T0 + 45_000, 11.25)])
    assert only(agg.close_due(T0 + W)).delta == 1.25  # no reference yet: from the first reading
    agg.add([energy(T0 + W, 11.5), energy(T0 + W + 30_000, 12.0)])
    row = only(agg.close_due(T0 + 2 * W))
    assert (row.start_ms, row.count, row.min, row.last, row.delta) == (T0 + W, 2, 11.5, 12.0, 0.75)


def test_delta_across_a_gap_lands_in_the_next_window():
    agg = WindowAggregator(60, 0)
    agg.add([energy(T0, 10.0)])
    assert only(agg.close_due(T0 + W)).delta == 0.0
    agg.add([energy(T0 + 3 * W, 12.0), energy(T0 + 3 * W + 1, 13.0)])  # silent for two windows
    assert only(agg.close_due(T0 + 4 * W)).delta == 3.0


def test_delta_only_for_counter_channels():
    assert frozenset({Channel.ENERGY_IMPORT, Channel.ENERGY_EXPORT, Channel.VOLUME}) == (
        COUNTER_CHANNELS
    )
    agg = WindowAggregator(60, 0)
    agg.add(
        [
            Reading("w1", Channel.VOLUME, Unit.M3, T0, 88.0),
            Reading("w1", Channel.VOLUME, Unit.M3, T0 + 1, 88.5),
            Reading("e1", Channel.ENERGY_EXPORT, Unit.KWH, T0, 3.0),
            Reading("e1", Channel.ENERGY_EXPORT, Unit.KWH, T0 + 1, 3.25),
            Reading("e1", Channel.VOLTAGE, Unit.V, T0, 230.0),
            Reading("e1", Channel.VOLTAGE, Unit.V, T0 + 1, 232.0),
        ]
    )
    rows = agg.close_all().rows
    assert [(r.meter_id, r.channel, r.delta) for r in rows] == [
        ("e1", Channel.ENERGY_EXPORT, 0.25),
        ("e1", Channel.VOLTAGE, None),
        ("w1", Channel.VOLUME, 0.5),
    ]
    # Configurable: power as a "counter" is nonsense, but proves the set is honoured.
    custom = WindowAggregator(60, 0, counter_channels={P})
    custom.add([power(T0, 1.0), power(T0 + 1, 3.0), energy(T0, 1.0), energy(T0 + 1, 2.0)])
    assert [r.delta for r in custom.close_all().rows] == [None, 2.0]


def test_rows_are_sorted_by_start_meter_channel():
    agg = WindowAggregator(60, 0)
    agg.add(
        [
            power(T0 + W, 1.0, "b"),
            energy(T0 + W, 1.0, "a"),
            power(T0, 1.0, "b"),
            power(T0, 1.0, "a"),
            energy(T0, 1.0, "b"),
        ]
    )
    rows = agg.close_all().rows
    assert [(r.start_ms, r.meter_id, r.channel) for r in rows] == [
        (T0, "a", P),
        (T0, "b", E),
        (T0, "b", P),
        (T0 + W, "a", E),
        (T0 + W, "b", P),
    ]


def test_closed_rows_make_a_valid_wire_batch_with_delta():
    agg = WindowAggregator(60, 0)
    agg.add([energy(T0, 10.0), energy(T0 + 1, 10.5), power(T0, 3.0), power(T0 + 1, 4.0)])
    rows = agg.close_all().rows
    batch = ReadingBatch.from_rows("gw-0001", 1, T0 + W, 60, rows)
    assert batch.delta is not None
    assert batch.delta.tolist() == [0.5, 0.0]
    assert decode(encode(batch)).equals(batch)


# --- order, boundaries, lateness ----------------------------------------------------------------


def test_out_of_order_within_a_window():
    agg = WindowAggregator(60, 0)
    agg.add(
        [
            energy(T0 + 30_000, 5.0),
            energy(T0 + 10_000, 1.0),
            energy(T0 + 50_000, 9.0),
            energy(T0 + 20_000, 3.0),
        ]
    )
    row = only(agg.close_all())
    assert (row.count, row.min, row.max, row.mean, row.last, row.delta) == (
        4,
        1.0,
        9.0,
        4.5,
        9.0,
        8.0,
    )


def test_last_is_the_greatest_timestamp_and_ties_go_to_the_later_arrival():
    agg = WindowAggregator(60, 0)
    agg.add([power(T0 + 50_000, 9.0), power(T0 + 5_000, 1.0)])
    agg.add([power(T0 + 50_000, 7.0), power(T0 + 49_999, 8.0)])
    row = only(agg.close_all())
    assert (row.count, row.min, row.max, row.mean, row.last) == (4, 1.0, 9.0, 6.25, 7.0)


def test_window_start_is_inclusive_and_end_exclusive():
    agg = WindowAggregator(60, 0)
    agg.add([power(T0, 1.0), power(T0 + W - 1, 2.0), power(T0 + W, 3.0)])
    assert agg.close_due(T0 + W - 1) == ClosedWindows([], 0)
    assert agg.closed_until_ms == T0
    row = only(agg.close_due(T0 + W))
    assert (row.start_ms, row.count, row.last) == (T0, 2, 2.0)
    assert agg.closed_until_ms == T0 + W
    assert agg.add([power(T0 + W - 1, 4.0)]) == 1  # its window was emitted: late
    assert agg.add([power(T0 + W, 5.0)]) == 0
    row = only(agg.close_due(T0 + 2 * W))
    assert (row.start_ms, row.count, row.min, row.max) == (T0 + W, 2, 3.0, 5.0)


def test_straggler_within_allowed_lateness_counts_in_its_window():
    agg = WindowAggregator(60, 10.0)
    agg.add([power(T0 + 5_000, 1.0)])
    assert agg.close_due(T0 + W + 9_999) == ClosedWindows([], 0)
    assert agg.closed_until_ms == T0
    assert agg.add([power(T0 + 59_000, 3.0), power(T0 + W + 1_000, 8.0)]) == 0
    assert agg.open_readings == 3
    closed = agg.close_due(T0 + W + 10_000)
    assert closed == ClosedWindows([WindowRow("m1", P, KW, T0, 2, 1.0, 3.0, 2.0, 3.0)], 2)
    assert agg.closed_until_ms == T0 + W
    assert agg.open_readings == 1


def test_straggler_beyond_allowed_lateness_is_late_and_counted():
    agg = WindowAggregator(60, 10.0)
    agg.add([power(T0 + 5_000, 1.0)])
    agg.close_due(T0 + W + 10_000)
    assert agg.add([power(T0 + 59_999, 2.0), power(T0 + 5_000, 3.0), power(T0 + W, 4.0)]) == 2
    assert agg.open_readings == 1
    assert agg.close_all().readings == 1


def test_watermark_is_aligned_and_never_moves_back():
    agg = WindowAggregator(60, 2.5)
    agg.close_due(T0 + 3 * W + 2_499)
    assert agg.closed_until_ms == T0 + 2 * W
    agg.close_due(T0 + 3 * W + 2_500)
    assert agg.closed_until_ms == T0 + 3 * W
    agg.close_due(T0)
    assert agg.closed_until_ms == T0 + 3 * W
    agg.close_due(0)  # before the epoch plus lateness: negative boundary, ignored
    assert agg.closed_until_ms == T0 + 3 * W


def test_restored_watermark_makes_older_readings_late():
    agg = WindowAggregator(60, 0, closed_until_ms=T0 + W)
    assert agg.add([power(T0 + W - 1, 1.0), power(T0 + W, 2.0)]) == 1
    assert agg.open_readings == 1


def test_unaligned_watermark_after_a_window_change_closes_the_straddling_window_when_due():
    # The previous run used 60 s windows up to T0 + 2 min; this one uses 15 min windows.
    agg = WindowAggregator(900, 0, closed_until_ms=T0 + 2 * W)
    assert (
        agg.add([power(T0 + 2 * W - 1, 1.0), power(T0 + 2 * W, 2.0), power(T0 + 3 * W, 4.0)]) == 1
    )
    assert agg.close_due(T0 + 899_999) == ClosedWindows([], 0)
    assert agg.closed_until_ms == T0 + 2 * W
    closed = agg.close_due(T0 + 900_000)
    assert closed == ClosedWindows([WindowRow("m1", P, KW, T0, 2, 2.0, 4.0, 3.0, 4.0)], 2)
    assert agg.closed_until_ms == T0 + 900_000


# --- close_all: partial windows at shutdown -----------------------------------------------------


def test_close_all_emits_partial_windows_without_moving_the_watermark():
    agg = WindowAggregator(60, 5.0)
    agg.add([energy(T0 + 1_000, 10.0), energy(T0 + 2_000, 10.5)])
    agg.close_due(T0 + 30_000)
    assert agg.closed_until_ms == T0
    first = agg.close_all()
    assert first == ClosedWindows(
        [WindowRow("m1", E, KWH, T0, 2, 10.0, 10.5, 10.25, 10.5, None, 0.5)], 2
    )
    assert agg.closed_until_ms == T0
    assert agg.open_readings == 0
    # More readings for the same window are not late; they make a second partial row whose delta
    # continues from the first, so the consumer can merge the two by count and sum the deltas.
    assert agg.add([energy(T0 + 3_000, 11.0), energy(T0 + 4_000, 12.0)]) == 0
    second = agg.close_due(T0 + W + 5_000)
    assert second == ClosedWindows(
        [WindowRow("m1", E, KWH, T0, 2, 11.0, 12.0, 11.5, 12.0, None, 1.5)], 2
    )
    merged_count = first.rows[0].count + second.rows[0].count
    merged_mean = (10.25 * 2 + 11.5 * 2) / merged_count
    assert (merged_count, merged_mean) == (4, 10.875)


def test_close_all_then_a_new_process_accepts_the_current_window():
    agg = WindowAggregator(60, 0)
    agg.add([power(T0 + 1_000, 1.0)])
    agg.close_due(T0 + 2_000)
    agg.close_all()
    restarted = WindowAggregator(60, 0, closed_until_ms=agg.closed_until_ms)
    assert restarted.add([power(T0 + 3_000, 2.0)]) == 0


def test_late_partial_window_counts_no_advance_twice():
    agg = WindowAggregator(60, 0)
    agg.add([energy(T0 + 1_000, 10.0), energy(T0 + W + 1_000, 11.0)])
    assert [r.delta for r in agg.close_all().rows] == [0.0, 1.0]
    # A straggler for the first window, older than the reference (11.0): no reference step.
    agg.add([energy(T0 + 2_000, 10.25)])
    assert [r.delta for r in agg.close_all().rows] == [0.0]
    agg.add([energy(T0 + W + 2_000, 11.5)])  # the reference is still 11.0
    assert [r.delta for r in agg.close_all().rows] == [0.5]
    # Even above the reference, a window older than it takes no step from it (that would count
    # a rise backwards in time).
    agg.add([energy(T0 + 3_000, 12.0)])
    assert [r.delta for r in agg.close_all().rows] == [0.0]


# --- register references across a restart ----------------------------------------------------


def test_a_close_reports_the_references_it_moved():
    agg = WindowAggregator(60, 0)
    agg.add([energy(T0, 10.0), energy(T0 + 5_000, 10.5), power(T0 + 6_000, 3.0)])
    agg.add([energy(T0 + 2_000, 9.0, meter="m2"), energy(T0 + W + 1_000, 12.0)])
    first = agg.close_due(T0 + W)
    assert first.registers == {
        ("m1", E, KWH): (T0 + 5_000, 10.5),
        ("m2", E, KWH): (T0 + 2_000, 9.0),
    }
    second = agg.close_all()
    assert second.registers == {("m1", E, KWH): (T0 + W + 1_000, 12.0)}
    assert agg.close_all().registers == {}
    # A late partial window older than the reference moves nothing back.
    assert agg.add([energy(T0 + W + 500, 11.0)]) == 0
    late = agg.close_all()
    assert [r.delta for r in late.rows] == [0.0]
    assert late.registers == {}


def test_references_given_back_carry_the_advance_across_a_restart():
    before = WindowAggregator(60, 0)
    before.add([energy(T0, 100.0), energy(T0 + 30_000, 101.0)])
    closed = before.close_all()
    assert [r.delta for r in closed.rows] == [1.0]
    # The agent stops; the register runs on (2.5 kWh) while it is down.
    restarted = WindowAggregator(
        60, 0, closed_until_ms=before.closed_until_ms, registers=closed.registers
    )
    restarted.add([energy(T0 + 5 * W, 103.5), energy(T0 + 5 * W + 30_000, 104.0)])
    assert only(restarted.close_all()).delta == 3.0  # 101 -> 103.5 -> 104
    forgetful = WindowAggregator(60, 0, closed_until_ms=before.closed_until_ms)
    forgetful.add([energy(T0 + 5 * W, 103.5), energy(T0 + 5 * W + 30_000, 104.0)])
    assert only(forgetful.close_all()).delta == 0.5  # what the agent did before it kept them


def test_the_aggregator_keeps_its_own_copy_of_the_references():
    given = {("m1", E, KWH): (T0, 1.0)}
    agg = WindowAggregator(60, 0, registers=given)
    agg.add([energy(T0 + W, 2.0)])
    assert only(agg.close_all()).delta == 1.0
    assert given == {("m1", E, KWH): (T0, 1.0)}


# --- a clock set back ---------------------------------------------------------------------------


def test_clock_went_back_only_past_two_windows_or_fifteen_minutes():
    agg = WindowAggregator(60, 0, closed_until_ms=T0)
    assert not agg.clock_went_back(T0 - 15 * W)  # the boundary 15 min back: at the floor
    assert agg.clock_went_back(T0 - 15 * W - 1)
    hourly = WindowAggregator(3600, 0, closed_until_ms=T0)
    assert not hourly.clock_went_back(T0 - 2 * 3_600_000)
    assert hourly.clock_went_back(T0 - 2 * 3_600_000 - 1)
    assert WindowAggregator(60, 0, closed_until_ms=T0, clock_tolerance_ms=0).clock_went_back(T0 - 1)
    assert not WindowAggregator(0, 0, closed_until_ms=T0).clock_went_back(0)  # pass-through


def test_rewind_emits_open_windows_then_moves_the_watermark_back():
    agg = WindowAggregator(60, 0, closed_until_ms=T0 + 10 * W, registers={("m2", E, KWH): (1, 9.0)})
    agg.add([energy(T0 + 10 * W + 1_000, 7.0), power(T0 + 10 * W + 2_000, 1.5)])
    closed = agg.rewind(T0 + 30_000)
    assert closed == ClosedWindows(
        [
            WindowRow("m1", E, KWH, T0 + 10 * W, 1, 7.0, 7.0, 7.0, 7.0, None, 0.0),
            WindowRow("m1", P, KW, T0 + 10 * W, 1, 1.5, 1.5, 1.5, 1.5, None, None),
        ],
        2,
    )
    # The reference stamped after the new watermark keeps its value, just before it in time;
    # the older one is left alone.
    assert closed.registers == {("m1", E, KWH): (T0 - 1, 7.0)}
    assert (agg.closed_until_ms, agg.open_readings) == (T0, 0)
    assert agg.add([energy(T0 + 5_000, 7.5)]) == 0  # no longer late
    assert only(agg.close_due(T0 + W)).delta == 0.5
    # Never forwards: a rewind to a clock ahead of the watermark only emits the windows.
    assert agg.rewind(T0 + 100 * W).rows == []
    assert agg.closed_until_ms == T0 + W


def test_ahead_limit_is_the_clock_plus_the_tolerance():
    assert WindowAggregator(60, 0).ahead_limit(T0) == T0 + 15 * W
    assert WindowAggregator(900, 0).ahead_limit(T0) == T0 + 30 * W
    assert WindowAggregator(60, 0, clock_tolerance_ms=5).ahead_limit(T0) == T0 + 5
    assert WindowAggregator(0, 0).ahead_limit(T0) is None  # pass-through: nothing waits


def test_clock_tolerance_must_be_a_non_negative_int():
    for bad in (-1, 1.5, "60"):
        with pytest.raises(ValueError, match="clock_tolerance_ms must be an int >= 0"):
            WindowAggregator(60, 0, clock_tolerance_ms=bad)  # type: ignore[arg-type]


# --- a register that goes down --------------------------------------------------------------


def test_a_drop_inside_a_window_counts_zero_across_it():
    # Meter replaced mid-window: 100 -> 101 (+1), drop to 2 (0), 2 -> 3 (+1).
    assert deltas(WindowAggregator(60, 0), [100.0, 101.0, 2.0, 3.0]) == 2.0


def test_rollover_is_not_a_huge_or_negative_delta():
    assert deltas(WindowAggregator(60, 0), [99_998.0, 99_999.0, 0.0, 1.0]) == 2.0


def test_a_drop_across_windows_restarts_from_the_lower_value():
    agg = WindowAggregator(60, 0)
    agg.add([energy(T0, 500.0), energy(T0 + 1_000, 510.0)])
    assert only(agg.close_due(T0 + W)).delta == 10.0
    agg.add([energy(T0 + W, 3.0), energy(T0 + W + 1_000, 4.0)])
    row = only(agg.close_due(T0 + 2 * W))
    assert (row.last, row.delta) == (4.0, 1.0)


def test_a_window_that_only_goes_down_has_zero_delta():
    assert deltas(WindowAggregator(60, 0), [50.0, 40.0, 30.0]) == 0.0


def test_absurd_values_still_give_a_valid_row():
    agg = WindowAggregator(60, 0)
    big = 1.7e308
    agg.add([energy(T0, big), energy(T0 + 1, big), energy(T0 + 2, -big), energy(T0 + 3, big)])
    row = only(agg.close_all())
    # The sum overflowed (mean clamped into [min, max]) and so did the rise -big -> big.
    assert (row.min, row.max, row.mean, row.last, row.delta) == (-big, big, big, big, 0.0)
    ReadingBatch.from_rows("gw-0001", 1, T0, 60, [row])


# --- pass-through -----------------------------------------------------------------------------


def test_pass_through_keeps_every_reading_as_a_raw_row():
    agg = WindowAggregator(0, 30.0, closed_until_ms=T0 + 5)
    assert agg.add([power(T0 + 9, 2.0), energy(T0 + 3, 7.5), power(T0 + 3, 1.0, "a")]) == 0
    assert agg.open_readings == 3
    closed = agg.close_due(0)
    assert closed == ClosedWindows(
        [
            WindowRow("a", P, KW, T0 + 3, 1, 1.0, 1.0, 1.0, 1.0),
            WindowRow("m1", E, KWH, T0 + 3, 1, 7.5, 7.5, 7.5, 7.5),
            WindowRow("m1", P, KW, T0 + 9, 1, 2.0, 2.0, 2.0, 2.0),
        ],
        3,
    )
    assert agg.open_readings == 0
    assert agg.closed_until_ms == T0 + 5
    agg.add([power(T0 + 1, 4.0)])
    assert agg.close_all() == ClosedWindows(
        [WindowRow("m1", P, KW, T0 + 1, 1, 4.0, 4.0, 4.0, 4.0)], 1
    )
    batch = ReadingBatch.from_rows("gw-0001", 1, T0, 0, closed.rows)
    assert batch.delta is None
    assert decode(encode(batch)).equals(batch)


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_s": -1, "allowed_lateness_s": 0},
        {"window_s": 86_401, "allowed_lateness_s": 0},
        {"window_s": True, "allowed_lateness_s": 0},
        {"window_s": 60.0, "allowed_lateness_s": 0},
        {"window_s": 60, "allowed_lateness_s": -0.001},
        {"window_s": 60, "allowed_lateness_s": math.nan},
        {"window_s": 60, "allowed_lateness_s": math.inf},
        {"window_s": 60, "allowed_lateness_s": "5"},
        {"window_s": 60, "allowed_lateness_s": 0, "closed_until_ms": -W},
        {"window_s": 60, "allowed_lateness_s": 0, "closed_until_ms": float(T0)},
    ],
)
def test_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        WindowAggregator(**kwargs)


def test_window_s_and_lateness_round_to_milliseconds():
    agg = WindowAggregator(900, 0.0016)
    assert agg.window_s == 900
    agg.add([power(T0, 1.0)])
    assert agg.close_due(T0 + 900_000 + 1).readings == 0  # lateness rounds to 2 ms
    assert agg.close_due(T0 + 900_000 + 2).readings == 1


# --- properties -------------------------------------------------------------------------------

SETTINGS = settings(
    max_examples=200,
    deadline=None,  # shared, slow machine
    suppress_health_check=[HealthCheck.too_slow],
)
SERIES = [("m1", E, KWH), ("m1", P, KW), ("m2", E, KWH), ("m2", Channel.VOLUME, Unit.M3)]
values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_subnormal=False)


@st.composite
def reading_lists(draw: st.DrawFn) -> list[Reading]:
    out = []
    for _ in range(draw(st.integers(0, 80))):
        meter, channel, unit = draw(st.sampled_from(SERIES))
        ts = T0 + draw(st.integers(0, 4 * W - 1))
        out.append(Reading(meter, channel, unit, ts, draw(values)))
    return out


def add_in_chunks(agg: WindowAggregator, readings: list[Reading], cuts: list[int]) -> int:
    late = 0
    bounds = [0, *sorted(c % (len(readings) + 1) for c in cuts), len(readings)]
    for lo, hi in itertools.pairwise(bounds):
        late += agg.add(readings[lo:hi])
    return late


@SETTINGS
@given(readings=reading_lists(), cuts=st.lists(st.integers(0, 1000), max_size=6))
def test_any_split_into_add_calls_gives_the_same_windows(readings, cuts):
    whole = WindowAggregator(60, 0)
    assert whole.add(readings) == 0
    expected = whole.close_all()
    split = WindowAggregator(60, 0)
    assert add_in_chunks(split, readings, cuts) == 0
    assert split.close_all() == expected
    # Exact accounting, and each row agrees with a plain recomputation from all its readings.
    assert expected.readings == sum(r.count for r in expected.rows) == len(readings)
    groups: dict[tuple[int, str, Channel, Unit], list[Reading]] = defaultdict(list)
    for r in readings:
        groups[(r.ts_ms - r.ts_ms % W, r.meter_id, r.channel, r.unit)].append(r)
    assert [(r.start_ms, r.meter_id, r.channel, r.unit) for r in expected.rows] == sorted(groups)
    for row in expected.rows:
        group = groups[(row.start_ms, row.meter_id, row.channel, row.unit)]
        group_values = [r.value for r in group]
        latest = max(r.ts_ms for r in group)
        assert row.count == len(group)
        assert (row.min, row.max) == (min(group_values), max(group_values))
        assert row.last == [r.value for r in group if r.ts_ms == latest][-1]
        assert row.min <= row.mean <= row.max
        scale = math.fsum(abs(v) for v in group_values)
        assert math.isclose(
            row.mean * row.count, math.fsum(group_values), rel_tol=1e-9, abs_tol=1e-9 * scale
        )
        assert (row.delta is not None) is (row.channel in COUNTER_CHANNELS)
        assert row.delta is None or 0.0 <= row.delta < math.inf
    ReadingBatch.from_rows("gw-0001", 1, T0, 60, expected.rows)  # always wire-valid


@SETTINGS
@given(
    readings=reading_lists(),
    closes=st.lists(st.integers(0, 5 * W), max_size=5),
    lateness=st.sampled_from([0.0, 1.5, 30.0, 90.0]),
)
def test_accounting_is_exact_with_closes_in_between(readings, closes, lateness):
    agg = WindowAggregator(60, lateness)
    late = emitted = 0
    step = max(1, len(readings) // (len(closes) + 1))
    chunks = [readings[i : i + step] for i in range(0, len(readings), step)]
    for i, chunk in enumerate(chunks):
        late += agg.add(chunk)
        if i < len(closes):
            now = T0 + sorted(closes)[i]
            closed = agg.close_due(now)
            emitted += closed.readings
            assert all(r.start_ms + W + round(lateness * 1000) <= now for r in closed.rows)
            assert all(r.start_ms < agg.closed_until_ms for r in closed.rows)
        assert late + emitted + agg.open_readings == sum(len(c) for c in chunks[: i + 1])
    emitted += agg.close_all().readings
    assert late + emitted == len(readings)
    assert agg.open_readings == 0


@SETTINGS
@given(
    steps=st.lists(st.floats(min_value=-50.0, max_value=100.0, allow_subnormal=False), max_size=60),
    start=st.floats(min_value=0.0, max_value=1e6),
    every_ms=st.sampled_from([1_000, 7_000, 25_000, 61_000]),
)
def test_delta_sums_the_rises_of_an_in_order_register(steps, start, every_ms):
    register = [start]
    for s in steps:
        register.append(register[-1] + s)
    total = deltas(WindowAggregator(60, 0), register, every_ms)
    rises = math.fsum(max(0.0, b - a) for a, b in itertools.pairwise(register))
    assert math.isclose(total, rises, rel_tol=1e-9, abs_tol=1e-6)


@SETTINGS
@given(
    steps=st.lists(
        st.floats(min_value=0.0, max_value=1e6, allow_subnormal=False), min_size=1, max_size=60
    ),
    restarts=st.lists(st.integers(1, 59), max_size=5),
    gaps=st.lists(st.integers(1, 3 * W), min_size=60, max_size=60),
)
def test_deltas_sum_to_the_register_advance_whatever_the_restarts(steps, restarts, gaps):
    """A register that only goes up: the deltas of every window, over any number of agent
    restarts (each flushing its partial windows, as SIGTERM does), add up to last - first."""
    register, ts, readings = 5_000.0, T0, []
    for step, gap in zip(steps, gaps, strict=False):
        register += step
        ts += gap
        readings.append(energy(ts, register))
    cuts = sorted({c for c in restarts if c < len(readings)})
    total = 0.0
    watermark, references = 0, {}
    for lo, hi in itertools.pairwise([0, *cuts, len(readings)]):
        agg = WindowAggregator(60, 0, closed_until_ms=watermark, registers=references)
        assert agg.add(readings[lo:hi]) == 0
        closed = agg.close_due(readings[hi - 1].ts_ms)
        flushed = agg.close_all()
        total += math.fsum(r.delta for r in closed.rows + flushed.rows if r.delta is not None)
        references = {**references, **closed.registers, **flushed.registers}
        watermark = agg.closed_until_ms
    advance = readings[-1].value - readings[0].value
    assert math.isclose(total, advance, rel_tol=1e-9, abs_tol=1e-6)
