"""Spike rules: exact episodes of the rate-of-change/drop check and the robust z-score."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from cloud_consumer.detect.engine import Engine
from cloud_consumer.detect.episodes import Alert
from cloud_consumer.detect.rules.spike import (
    MAD_SCALE,
    RobustZConfig,
    RobustZDetector,
    SpikeConfig,
    SpikeDetector,
    median_and_mad,
)
from cloud_consumer.detect.validate import Flag
from cloud_consumer.replay_input import ReadingColumns
from meterlink_wire.vocab import Channel, Unit

POWER = int(Channel.POWER)
Reading = tuple[str, int, float]  # meter, ts_ms, value


def columns(readings: Sequence[Reading]) -> ReadingColumns:
    ids = tuple(dict.fromkeys(r[0] for r in readings))
    n = len(readings)
    return ReadingColumns(
        meter_ids=ids,
        meter=np.array([ids.index(r[0]) for r in readings], dtype=np.int32),
        channel=np.full(n, POWER, dtype=np.uint8),
        unit=np.full(n, int(Unit.KW), dtype=np.uint8),
        ts_ms=np.array([r[1] for r in readings], dtype=np.int64),
        value=np.array([r[2] for r in readings], dtype=np.float64),
    )


def series(meter: str, values: Sequence[float], step: int = 1000) -> list[Reading]:
    return [(meter, step * i, v) for i, v in enumerate(values)]


def spike_evidence(value: float, previous: float) -> dict[str, float]:
    return {
        "value": value,
        "previous": previous,
        "change": (value - previous) / abs(previous),
        "rise_threshold": 5.0,
        "drop_threshold": 0.1,
    }


def spike(meter: str, opened: int, resolved: int | None, value: float, prev: float) -> Alert:
    return Alert(meter, POWER, "spike", "warning", opened, resolved, spike_evidence(value, prev))


# 1 (first: not judged), 1, 6 (exactly +500 %: no), 1, 7 (+600 %: opens), 10 (+43 %: resolves),
# 1 (exactly -90 %: no), 10 (+900 %: opens), 0.99 (-90.1 %: drop, still open), 0.99 (resolves)
SPIKE_VALUES = [1.0, 1.0, 6.0, 1.0, 7.0, 10.0, 1.0, 10.0, 0.99, 0.99]
SPIKE_EXPECTED = [
    spike("m1", 4000, None, 7.0, 1.0),
    spike("m1", 4000, 5000, 7.0, 1.0),
    spike("m1", 7000, None, 10.0, 1.0),
    spike("m1", 7000, 9000, 10.0, 1.0),
]


@pytest.mark.parametrize("batch", [1, 3, 100])
def test_spike_and_drop_exact_episodes(batch: int) -> None:
    engine = Engine([SpikeDetector()])
    readings = series("m1", SPIKE_VALUES)
    alerts: list[Alert] = []
    for start in range(0, len(readings), batch):
        alerts += engine.process(columns(readings[start : start + batch])).alerts
    assert alerts == SPIKE_EXPECTED
    assert engine.open_alerts() == []


def test_first_reading_of_a_meter_is_not_judged_and_zero_previous_is_a_spike() -> None:
    engine = Engine([SpikeDetector()])
    assert engine.process(columns([("new", 0, 1e6)])).alerts == []
    assert engine.process(columns([("zero", 1, 0.0), ("zero", 2, 0.5)])).alerts == [
        Alert(
            "zero",
            POWER,
            "spike",
            "warning",
            2,
            None,
            {
                "value": 0.5,
                "previous": 0.0,
                "change": 0.5 / 1e-9,
                "rise_threshold": 5.0,
                "drop_threshold": 0.1,
            },
        )
    ]


def test_several_meters_out_of_order_in_one_batch() -> None:
    readings = series("m1", SPIKE_VALUES) + series("m2", [5.0, 5.0, 40.0, 5.0])
    shuffled = [readings[i] for i in np.random.default_rng(5).permutation(len(readings))]
    alerts = Engine([SpikeDetector()]).process(columns(shuffled)).alerts
    expected = [*SPIKE_EXPECTED, spike("m2", 2000, None, 40.0, 5.0)]
    expected += [spike("m2", 2000, 3000, 40.0, 5.0)]
    key = lambda a: (a.opened_ms if a.resolved_ms is None else a.resolved_ms, a.meter_id)  # noqa: E731
    assert alerts == sorted(expected, key=key)


def test_nan_is_rejected_and_leaves_no_trace() -> None:
    engine = Engine([SpikeDetector(), RobustZDetector()])
    clean = Engine([SpikeDetector(), RobustZDetector()])
    for e in (engine, clean):
        e.process(columns(series("m1", [1.0, 2.0])))
    found = engine.process(columns([("m1", 5000, 3.0), ("m2", 5000, float("nan"))]))
    clean.process(columns([("m1", 5000, 3.0)]))
    assert found.quality.tolist() == [100, 0]
    assert found.rejected == 1
    assert engine.snapshot() == clean.snapshot()


def test_duplicate_and_backdated_readings_are_rejected() -> None:
    """A redelivered reading (same timestamp) or an older one never enters the window."""
    engine, clean = Engine([SpikeDetector()]), Engine([SpikeDetector()])
    engine.process(columns(series("m", [1.0, 2.0])))
    clean.process(columns(series("m", [1.0, 2.0])))
    found = engine.process(columns([("m", 1000, 50.0), ("m", 500, 9.0), ("m", 2000, 2.0)]))
    clean.process(columns([("m", 2000, 2.0)]))
    assert found.flags.tolist() == [int(Flag.BACKDATED), int(Flag.BACKDATED), 0]
    assert found.alerts == []  # the 50.0 redelivery would have been a spike
    assert engine.snapshot() == clean.snapshot()


def test_spike_config_thresholds() -> None:
    engine = Engine([SpikeDetector(SpikeConfig(rise=1.0, drop=0.5, severity="info"))])
    alerts = engine.process(columns(series("m", [1.0, 2.5, 2.5, 1.0]))).alerts
    assert [(a.opened_ms, a.resolved_ms, a.severity) for a in alerts] == [
        (1000, None, "info"),
        (1000, 2000, "info"),
        (3000, None, "info"),
    ]


# A window with median 10 and MAD 1: |deviations| are 1,1,1,0,0,0,1,1,1.
BASE = [9.0, 10.0, 11.0, 9.0, 10.0, 11.0, 9.0, 10.0, 11.0]


def robust(threshold: float = 3.5, min_points: int = 9) -> Engine:
    return Engine([RobustZDetector(RobustZConfig(threshold, min_points))], window=16)


def test_robust_z_exact_episode_and_evidence() -> None:
    engine = robust()
    alerts = engine.process(columns(series("m", [*BASE, 20.0, 10.0]))).alerts
    z = 10.0 / MAD_SCALE
    evidence = {"value": 20.0, "median": 10.0, "mad": 1.0, "z": z, "threshold": 3.5}
    assert alerts == [
        Alert("m", POWER, "spike_robust_z", "warning", 9000, None, evidence),
        Alert("m", POWER, "spike_robust_z", "warning", 9000, 10000, evidence),
    ]


def test_robust_z_exactly_at_threshold_does_not_fire() -> None:
    value = 15.2
    z = abs(value - 10.0) / (MAD_SCALE * 1.0)  # the detector's own arithmetic
    assert robust(threshold=z).process(columns(series("m", [*BASE, value]))).alerts == []
    below = float(np.nextafter(z, 0.0))
    fired = robust(threshold=below).process(columns(series("m", [*BASE, value]))).alerts
    assert [a.opened_ms for a in fired] == [9000]


def test_robust_z_waits_for_min_points_and_needs_a_positive_mad() -> None:
    # 8 points (< min_points 9): an outlier is not judged; one more point and it is.
    assert robust().process(columns(series("m", [*BASE[:8], 50.0]))).alerts == []
    later = robust().process(columns(series("m", [*BASE, 50.0]))).alerts
    assert [a.opened_ms for a in later] == [9000]
    # A flat window has MAD 0: no scale, no verdict (the stuck-value rule's business).
    assert robust().process(columns(series("m", [5.0] * 12 + [500.0]))).alerts == []


def test_robust_z_uses_a_time_based_window() -> None:
    engine = Engine([RobustZDetector(RobustZConfig(min_points=9))], window=32, horizon_ms=20_000)
    # 9 points 1 s apart, then a 60 s gap: the window has emptied, so 50.0 is not judged.
    readings = [*series("m", BASE), ("m", 70_000, 50.0)]
    assert engine.process(columns(readings)).alerts == []
    # Within the horizon the same window judges the outlier.
    near = Engine([RobustZDetector(RobustZConfig(min_points=9))], window=32, horizon_ms=20_000)
    alerts = near.process(columns([*series("m", BASE), ("m", 9000, 50.0)])).alerts
    assert [a.opened_ms for a in alerts] == [9000]


def baselines(refresh: int, values: list[float]) -> list[float]:
    """The median each reading was judged against (NaN before min_points)."""
    engine = Engine(
        [RobustZDetector(RobustZConfig(min_points=4, refresh=refresh, threshold=1e9))], window=8
    )
    medians = []
    for i, value in enumerate(values):  # one reading per batch: read the evidence back
        frame = columns([("m", 1000 * i, value)])
        found = engine.process(frame)
        assert found.alerts == []
        detector = engine.detectors[0]
        assert isinstance(detector, RobustZDetector)
        row = engine.table.rows_for(["m"], np.array([POWER]))
        medians.append(float(detector._median.get(row)[0]) if i >= 4 else float("nan"))
    return medians


def test_robust_z_baseline_is_recomputed_every_refresh_readings() -> None:
    values = [float(v) for v in range(1, 21)]
    exact = baselines(1, values)
    # refresh=1: the median of the (up to 8) readings before each reading, from the 5th on.
    assert exact[4:] == [float(np.median(values[max(0, i - 8) : i])) for i in range(4, 20)]
    # refresh=3: computed at the 5th reading (4 seen), then at 7, 10, 13 seen...: reused between.
    hopped = baselines(3, values)
    assert hopped[4:] == [exact[4 + 3 * ((i - 4) // 3)] for i in range(4, 20)]


def test_robust_z_refresh_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refresh"):
        RobustZDetector(RobustZConfig(refresh=0))


def test_median_and_mad_ignore_padding_and_match_numpy() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(5.0, 1.0, (40, 9))
    fill = rng.integers(1, 10, 40)
    values[np.arange(9)[None, :] >= fill[:, None]] = np.nan  # partly filled windows
    values[0, :] = [4.0, 1.0, 2.0, 9.0, 3.0, 5.0, 6.0, 8.0, 7.0]  # full: median 5, MAD 2
    values[1, :] = [3.0, 1.0] + [np.nan] * 7  # median 2, MAD 1
    expected_median = np.nanmedian(values, axis=1)
    expected_mad = np.nanmedian(np.abs(values - expected_median[:, None]), axis=1)
    median, mad = median_and_mad(values.copy())
    assert median[:2].tolist() == [5.0, 2.0]
    assert mad[:2].tolist() == [2.0, 1.0]
    np.testing.assert_array_equal(median, expected_median)
    np.testing.assert_array_equal(mad, expected_mad)


@pytest.mark.parametrize("width", [1, 2, 9, 60])
def test_median_and_mad_of_full_windows_match_numpy(width: int) -> None:
    """Full rows only (a warm table) take the column-slice path; both widths' parities."""
    rng = np.random.default_rng(width)
    values = np.round(rng.normal(5.0, 1.0, (50, width)), 1)  # rounded: ties in value and MAD
    expected_median = np.median(values, axis=1)
    expected_mad = np.median(np.abs(values - expected_median[:, None]), axis=1)
    median, mad = median_and_mad(values.copy())
    np.testing.assert_array_equal(median, expected_median)
    np.testing.assert_array_equal(mad, expected_mad)


def quiet_meter(step: float) -> list[float]:
    """A base load read to the watt: 0.100-0.102 kW (median 0.101, MAD 0.001), then a step."""
    return [0.100, 0.101, 0.102] * 3 + [0.101 + step]


def floored(min_deviation: float) -> Engine:
    config = RobustZConfig(min_points=9, min_deviation=min_deviation)
    return Engine([RobustZDetector(config)], window=16)


def test_without_a_floor_a_few_watts_on_a_quiet_meter_fire() -> None:
    # 10 W above the median: z = 0.010 / (1.4826 * 0.001) = 6.7
    alerts = floored(0.0).process(columns(series("m", quiet_meter(0.010)))).alerts
    assert [(a.opened_ms, a.resolved_ms) for a in alerts] == [(9_000, None)]
    assert alerts[0].evidence["median"] == pytest.approx(0.101)
    assert alerts[0].evidence["z"] == pytest.approx(0.010 / (MAD_SCALE * 0.001))


def test_min_deviation_keeps_small_steps_quiet_and_real_spikes_firing() -> None:
    assert floored(0.05).process(columns(series("m", quiet_meter(0.010)))).alerts == []
    spike = floored(0.05).process(columns(series("m", quiet_meter(2.0)))).alerts
    assert [(a.opened_ms, a.evidence["value"]) for a in spike] == [(9_000, 2.101)]


def test_min_deviation_is_strict() -> None:
    value = quiet_meter(0.5)[-1]
    deviation = abs(value - float(np.median(quiet_meter(0.5)[:-1])))  # the detector's arithmetic
    at = floored(deviation).process(columns(series("m", quiet_meter(0.5)))).alerts
    assert at == []
    below = float(np.nextafter(deviation, 0.0))
    fired = floored(below).process(columns(series("m", quiet_meter(0.5)))).alerts
    assert [a.opened_ms for a in fired] == [9_000]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_min_deviation_must_be_finite_and_not_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="min_deviation"):
        RobustZDetector(RobustZConfig(min_deviation=bad))
