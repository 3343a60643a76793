import math

import pytest

from edge_agent.priority import DEFAULT_THRESHOLDS, PriorityLane, Threshold
from edge_agent.reading import Reading
from meterlink_wire import Channel, Kind, ReadingBatch, Unit, WindowRow, WireError, decode, encode

T0 = 1_764_201_600_000
P, KW = Channel.POWER, Unit.KW


def power(meter: str, ts: int, value: float, unit: Unit = KW) -> Reading:
    return Reading(meter, P, unit, ts, value)


def event(reading: Reading, reason: str) -> WindowRow:
    v = reading.value
    return WindowRow(
        reading.meter_id, reading.channel, reading.unit, reading.ts_ms, 1, v, v, v, v, reason
    )


def test_default_thresholds():
    assert (
        Threshold("overload", Channel.POWER, above=20.0),
        Threshold("reverse_flow", Channel.FLOW, below=0.0),
        Threshold("tamper", Channel.TAMPER, above=0.5),
    ) == DEFAULT_THRESHOLDS


def test_one_event_per_episode():
    lane = PriorityLane(DEFAULT_THRESHOLDS)
    series = [
        power("m1", T0, 10.0),
        power("m1", T0 + 1, 25.0),  # enters: event
        power("m1", T0 + 2, 30.0),  # holds
        power("m1", T0 + 3, 19.0),  # clears
        power("m1", T0 + 4, 21.0),  # re-enters: event
        power("m1", T0 + 5, 22.0),  # holds
    ]
    assert lane.check(series) == [event(series[1], "overload"), event(series[4], "overload")]
    assert lane.active == 1


def test_episode_spans_calls_and_clears_later():
    lane = PriorityLane(DEFAULT_THRESHOLDS)
    first = power("m1", T0, 25.0)
    assert lane.check([first]) == [event(first, "overload")]
    assert lane.active == 1
    for i in range(1, 1000):  # a stuck overload raises nothing more
        assert lane.check([power("m1", T0 + i, 25.0)]) == []
    assert lane.active == 1
    assert lane.check([power("m1", T0 + 1000, 5.0)]) == []
    assert lane.active == 0
    again = power("m1", T0 + 1001, 20.5)
    assert lane.check([again]) == [event(again, "overload")]


def test_meters_have_independent_episodes():
    lane = PriorityLane(DEFAULT_THRESHOLDS)
    readings = [
        power("m1", T0, 25.0),  # m1 enters
        power("m2", T0, 5.0),
        power("m2", T0 + 1, 26.0),  # m2 enters while m1 is still in its episode
        power("m1", T0 + 1, 27.0),
        power("m1", T0 + 2, 1.0),  # m1 clears; m2 holds
        power("m2", T0 + 2, 28.0),
        power("m1", T0 + 3, 30.0),  # m1 re-enters
    ]
    assert lane.check(readings) == [
        event(readings[0], "overload"),
        event(readings[2], "overload"),
        event(readings[6], "overload"),
    ]
    assert lane.active == 2


@pytest.mark.parametrize(
    ("channel", "unit", "value", "fires"),
    [
        (Channel.POWER, Unit.KW, 20.0, False),  # strictly above
        (Channel.POWER, Unit.KW, math.nextafter(20.0, math.inf), True),
        (Channel.FLOW, Unit.M3_PER_H, 0.0, False),  # strictly below
        (Channel.FLOW, Unit.M3_PER_H, -0.0, False),
        (Channel.FLOW, Unit.M3_PER_H, -5e-324, True),
        (Channel.TAMPER, Unit.FLAG, 0.5, False),
        (Channel.TAMPER, Unit.FLAG, 0.0, False),
        (Channel.TAMPER, Unit.FLAG, 1.0, True),
    ],
)
def test_thresholds_are_strict(channel, unit, value, fires):
    reading = Reading("m1", channel, unit, T0, value)
    reason = {Channel.POWER: "overload", Channel.FLOW: "reverse_flow", Channel.TAMPER: "tamper"}
    expected = [event(reading, reason[channel])] if fires else []
    assert PriorityLane(DEFAULT_THRESHOLDS).check([reading]) == expected


@pytest.mark.parametrize(
    ("unit", "value", "fires"),
    [
        (Unit.W, 21.0, False),  # 0.021 kW
        (Unit.W, 20_000.0, False),  # exactly 20 kW
        (Unit.W, 21_000.0, True),
        (Unit.KW, 21.0, True),
        (Unit.MW, 0.019, False),
        (Unit.MW, 0.021, True),
    ],
)
def test_power_is_compared_in_kw(unit, value, fires):
    reading = power("m1", T0, value, unit)
    events = PriorityLane(DEFAULT_THRESHOLDS).check([reading])
    # The event keeps the value and unit the meter sent; only the comparison is in kW.
    assert events == ([event(reading, "overload")] if fires else [])


def test_flow_is_compared_in_m3_per_h():
    lane = PriorityLane([Threshold("burst", Channel.FLOW, above=1.2)])
    readings = [
        Reading("w1", Channel.FLOW, Unit.L_PER_MIN, T0, 20.0),  # 1.2 m3/h: not above
        Reading("w2", Channel.FLOW, Unit.L_PER_MIN, T0, 21.0),  # 1.26 m3/h
        Reading("w3", Channel.FLOW, Unit.M3_PER_H, T0, 21.0),
    ]
    assert lane.check(readings) == [event(readings[1], "burst"), event(readings[2], "burst")]


def test_reactive_power_is_compared_in_kvar():
    lane = PriorityLane([Threshold("reactive_high", Channel.REACTIVE_POWER, above=5.0)])
    readings = [
        Reading("m1", Channel.REACTIVE_POWER, Unit.VAR, T0, 5_000.0),
        Reading("m2", Channel.REACTIVE_POWER, Unit.VAR, T0, 5_001.0),
        Reading("m3", Channel.REACTIVE_POWER, Unit.KVAR, T0, 6.0),
    ]
    assert lane.check(readings) == [
        event(readings[1], "reactive_high"),
        event(readings[2], "reactive_high"),
    ]


def test_two_thresholds_on_one_channel_have_separate_episodes():
    lane = PriorityLane(
        [
            Threshold("overvoltage", Channel.VOLTAGE, above=253.0),
            Threshold("undervoltage", Channel.VOLTAGE, below=207.0),
        ]
    )
    readings = [
        Reading("m1", Channel.VOLTAGE, Unit.V, T0 + i, v)
        for i, v in enumerate([230.0, 260.0, 200.0, 199.0, 261.0])
    ]
    assert lane.check(readings) == [
        event(readings[1], "overvoltage"),
        event(readings[2], "undervoltage"),
        event(readings[4], "overvoltage"),
    ]
    assert lane.active == 1


def test_band_threshold_fires_on_either_side():
    lane = PriorityLane([Threshold("frequency_out", Channel.FREQUENCY, above=50.5, below=49.5)])
    readings = [
        Reading("m1", Channel.FREQUENCY, Unit.HZ, T0 + i, v)
        for i, v in enumerate([50.0, 50.6, 49.4, 50.0, 49.0])
    ]
    # 50.6 -> 49.4 stays inside one episode: the condition never cleared.
    assert lane.check(readings) == [
        event(readings[1], "frequency_out"),
        event(readings[4], "frequency_out"),
    ]


def test_units_of_one_meter_are_separate_series():
    lane = PriorityLane(DEFAULT_THRESHOLDS)
    readings = [power("m1", T0, 25.0), power("m1", T0, 25_000.0, Unit.W)]
    assert lane.check(readings) == [event(readings[0], "overload"), event(readings[1], "overload")]
    assert lane.active == 2


def test_unwatched_channels_are_ignored():
    lane = PriorityLane(DEFAULT_THRESHOLDS)
    readings = [
        Reading("m1", Channel.VOLTAGE, Unit.V, T0, 1e9),
        Reading("m1", Channel.ENERGY_IMPORT, Unit.KWH, T0, -5.0),
    ]
    assert lane.check(readings) == []
    assert lane.active == 0
    assert PriorityLane([]).check([power("m1", T0, 1e6)]) == []


def test_events_make_a_valid_events_batch():
    lane = PriorityLane(DEFAULT_THRESHOLDS)
    rows = lane.check(
        [
            power("m1", T0, 25.0),
            Reading("w1", Channel.FLOW, Unit.L_PER_MIN, T0 + 1, -2.0),
            Reading("m1", Channel.TAMPER, Unit.FLAG, T0 + 2, 1.0),
        ]
    )
    batch = ReadingBatch.from_rows("gw-0001", 1, T0 + 3, 0, rows, kind=Kind.EVENTS)
    assert batch.reasons == ("overload", "reverse_flow", "tamper")
    assert decode(encode(batch)).rows() == rows


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reason": "Overload", "channel": P, "above": 1.0},
        {"reason": "", "channel": P, "above": 1.0},
        {"reason": "x" * 33, "channel": P, "above": 1.0},
        {"reason": "overload", "channel": P},
        {"reason": "overload", "channel": P, "above": math.nan},
        {"reason": "overload", "channel": P, "below": -math.inf},
        {"reason": "overload", "channel": P, "above": True},
        {"reason": "overload", "channel": P, "above": "20"},
        {"reason": "overload", "channel": 3, "above": 20.0},
    ],
)
def test_bad_thresholds_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        Threshold(**kwargs)


def test_bad_reason_is_the_wire_error():
    with pytest.raises(WireError):
        Threshold("Overload!", P, above=1.0)
