"""Flatline rules: exact episodes of the stuck-value, zero-run and low-variance checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from cloud_consumer.analytics import DAY_MS, HOUR_MS
from cloud_consumer.detect.base import Detector, pack_sections
from cloud_consumer.detect.engine import Engine
from cloud_consumer.detect.episodes import Alert
from cloud_consumer.detect.rules import DETECTORS
from cloud_consumer.detect.rules.flatline import (
    LowVarianceConfig,
    LowVarianceDetector,
    StuckValueConfig,
    StuckValueDetector,
    ZeroRunConfig,
    ZeroRunDetector,
)
from cloud_consumer.detect.state import SnapshotError
from cloud_consumer.detect.validate import Flag
from meterlink_wire.vocab import Channel, Unit
from tests.detect.readings import Reading, columns

H = HOUR_MS
POWER = int(Channel.POWER)
START = 19_676 * DAY_MS  # a UTC midnight (2023-11-15T00:00Z)


def hourly(
    meter: str,
    values: Sequence[float],
    *,
    start_h: int = 0,
    channel: int = POWER,
    unit: int = int(Unit.KW),
    origin: int = 0,
) -> list[Reading]:
    return [(meter, origin + H * (start_h + i), v, channel, unit) for i, v in enumerate(values)]


def process(detectors: Sequence[Detector], readings: Sequence[Reading], batch: int) -> list[Alert]:
    engine = Engine(detectors)
    alerts: list[Alert] = []
    for start in range(0, len(readings), batch):
        alerts += engine.process(columns(readings[start : start + batch])).alerts
    return alerts


def shuffled(readings: Sequence[Reading], seed: int) -> list[Reading]:
    return [readings[i] for i in np.random.default_rng(seed).permutation(len(readings))]


BATCHES = [1, 7, 10_000]

# --- stuck value ------------------------------------------------------------------------------


def stuck(
    meter: str,
    opened_h: int,
    resolved_h: int | None,
    value: float,
    start_h: int,
    *,
    channel: int = POWER,
    origin: int = 0,
) -> Alert:
    evidence = {
        "value": value,
        "run_start_ms": float(origin + start_h * H),
        "duration_h": float(opened_h - start_h),
        "threshold_h": 24.0,
    }
    resolved = None if resolved_h is None else origin + resolved_h * H
    return Alert(
        meter, channel, "stuck_value", "warning", origin + opened_h * H, resolved, evidence
    )


# h0-23: 5.0 (23 h: one reading short); h24-49: 6.0 (run from h24, exactly 24 h at h48: opens);
# h50: 7.0 resolves; h51-80: zeros (30 h, never stuck); h81-95: 1.0, h96: 1.5 breaks the run,
# h97-110: 1.0 (a new run, 13 h).
STUCK_VALUES = [5.0] * 24 + [6.0] * 26 + [7.0] + [0.0] * 30 + [1.0] * 15 + [1.5] + [1.0] * 14


@pytest.mark.parametrize("batch", BATCHES)
def test_stuck_value_exact_episode_whatever_the_batching(batch: int) -> None:
    alerts = process([StuckValueDetector()], hourly("m", STUCK_VALUES), batch)
    assert alerts == [stuck("m", 48, None, 6.0, 24), stuck("m", 48, 50, 6.0, 24)]


@pytest.mark.parametrize("batch", BATCHES)
def test_stuck_value_duplicate_timestamps(batch: int) -> None:
    # h0-24 at 9.0 (opens at h24); the h24 reading retransmitted, then a different value at the
    # same h24 timestamp: the engine drops both (backdated), so neither continues nor breaks the
    # run. The 8.0 at h25 resolves it.
    readings = hourly("d", [9.0] * 25)
    readings += [("d", 24 * H, 9.0, POWER, int(Unit.KW)), ("d", 24 * H, 8.0, POWER, int(Unit.KW))]
    readings += hourly("d", [8.0] * 3, start_h=25)
    alerts = process([StuckValueDetector()], readings, batch)
    assert alerts == [stuck("d", 24, None, 9.0, 0), stuck("d", 24, 25, 9.0, 0)]
    found = Engine([StuckValueDetector()]).process(columns(readings))
    assert [i for i, f in enumerate(found.flags.tolist()) if f & Flag.BACKDATED] == [25, 26]


def test_stuck_value_channels_and_shuffled_batch() -> None:
    volts = hourly("v", [230.0] * 26, channel=int(Channel.VOLTAGE), unit=int(Unit.V))
    tamper = hourly("t", [1.0] * 30, channel=int(Channel.TAMPER), unit=int(Unit.FLAG))
    register = hourly(
        "e",
        [float(i) for i in range(5)] + [4.0] * 30,
        channel=int(Channel.ENERGY_IMPORT),
        unit=int(Unit.KWH),
    )
    power = hourly("m", STUCK_VALUES)
    alerts = Engine([StuckValueDetector()]).process(
        columns(shuffled(volts + tamper + register + power, 3))
    )
    assert alerts.alerts == [
        stuck("v", 24, None, 230.0, 0, channel=int(Channel.VOLTAGE)),
        stuck("e", 28, None, 4.0, 4, channel=int(Channel.ENERGY_IMPORT)),
        stuck("m", 48, None, 6.0, 24),
        stuck("m", 48, 50, 6.0, 24),
    ]


def test_stuck_value_meter_seen_for_the_first_time() -> None:
    engine = Engine([StuckValueDetector()])
    assert engine.process(columns(hourly("a", [2.0] * 20))).alerts == []
    # "b" appears with a's value: its run starts at its own first reading (h10), not before.
    later = hourly("a", [2.0] * 10, start_h=20) + hourly("b", [2.0] * 25, start_h=10)
    assert engine.process(columns(later)).alerts == [
        stuck("a", 24, None, 2.0, 0),
        stuck("b", 34, None, 2.0, 10),
    ]
    assert engine.open_alerts() == [stuck("a", 24, None, 2.0, 0), stuck("b", 34, None, 2.0, 10)]


def test_stuck_value_config() -> None:
    detector = StuckValueDetector(
        StuckValueConfig(min_duration_ms=2 * H, channels=frozenset({POWER}), severity="info")
    )
    volts = hourly("v", [230.0] * 4, channel=int(Channel.VOLTAGE), unit=int(Unit.V))
    alerts = Engine([detector]).process(columns(hourly("m", [3.0] * 3 + [4.0]) + volts)).alerts
    assert [(a.meter_id, a.opened_ms, a.resolved_ms, a.severity) for a in alerts] == [
        ("m", 2 * H, None, "info"),
        ("m", 2 * H, 3 * H, "info"),
    ]
    assert alerts[0].evidence["threshold_h"] == 2.0
    for bad in (0, -H):
        with pytest.raises(ValueError, match="min_duration_ms"):
            StuckValueDetector(StuckValueConfig(min_duration_ms=bad))
    with pytest.raises(ValueError, match="channel"):
        StuckValueDetector(StuckValueConfig(channels=frozenset({256})))


# --- zero run ---------------------------------------------------------------------------------


def zero(
    meter: str, opened_h: int, resolved_h: int | None, start_h: int, *, channel: int = POWER
) -> Alert:
    evidence = {
        "run_start_ms": float(start_h * H),
        "duration_h": float(opened_h - start_h),
        "threshold_h": 48.0,
    }
    resolved = None if resolved_h is None else resolved_h * H
    return Alert(meter, channel, "zero_run", "warning", opened_h * H, resolved, evidence)


# h0: 2.0; h1-48 zeros (47 h: one reading short); h49: 0.5; h50-98 zeros (exactly 48 h at h98:
# opens); h99: -0.0 (still zero); h100: 0.25 resolves; h101-110: 5.0 stuck but never zero.
ZERO_VALUES = [2.0] + [0.0] * 48 + [0.5] + [0.0] * 49 + [-0.0] + [0.25] + [5.0] * 10


@pytest.mark.parametrize("batch", BATCHES)
def test_zero_run_exact_episode_whatever_the_batching(batch: int) -> None:
    alerts = process([ZeroRunDetector()], hourly("z", ZERO_VALUES), batch)
    assert alerts == [zero("z", 98, None, 50), zero("z", 98, 100, 50)]


@pytest.mark.parametrize("batch", BATCHES)
def test_zero_run_duplicate_timestamps_and_first_reading(batch: int) -> None:
    # A series starting at zero runs from its first reading. A retransmitted h48 reading and a
    # non-zero reading at the same timestamp are dropped by the engine (backdated): the episode
    # stays open until the non-zero reading at h49.
    readings = hourly("f", [0.0] * 49)
    readings += [("f", 48 * H, 0.0, POWER, int(Unit.KW)), ("f", 48 * H, 1.0, POWER, int(Unit.KW))]
    readings += hourly("f", [1.0], start_h=49)
    alerts = process([ZeroRunDetector()], readings, batch)
    assert alerts == [zero("f", 48, None, 0), zero("f", 48, 49, 0)]


def test_zero_run_channels_and_shuffled_batch() -> None:
    flow = hourly("w", [0.0] * 49, channel=int(Channel.FLOW), unit=int(Unit.L_PER_MIN))
    energy = hourly("e", [0.0] * 60, channel=int(Channel.ENERGY_IMPORT), unit=int(Unit.KWH))
    volts = hourly("v", [0.0] * 60, channel=int(Channel.VOLTAGE), unit=int(Unit.V))
    readings = shuffled(flow + energy + volts + hourly("z", ZERO_VALUES), 5)
    assert Engine([ZeroRunDetector()]).process(columns(readings)).alerts == [
        zero("w", 48, None, 0, channel=int(Channel.FLOW)),
        zero("z", 98, None, 50),
        zero("z", 98, 100, 50),
    ]


def test_zero_run_vacant_whitelist() -> None:
    config = ZeroRunConfig(vacant_meters=frozenset({"vacant-1", "elsewhere"}))
    engine = Engine([ZeroRunDetector(config)])
    readings = hourly("vacant-1", [0.0] * 60) + hourly("occupied", [0.0] * 60)
    assert engine.process(columns(shuffled(readings, 1))).alerts == [zero("occupied", 48, None, 0)]
    more = hourly("vacant-1", [0.0] * 5, start_h=60) + hourly("vacant-2", [0.0] * 50)
    assert engine.process(columns(more)).alerts == [zero("vacant-2", 48, None, 0)]
    # The vacancy cache is config, not state: a restored engine applies its own whitelist.
    restored = Engine.restore(engine.snapshot(), [ZeroRunDetector()])
    assert restored.process(columns(hourly("vacant-1", [0.0], start_h=65))).alerts == [
        zero("vacant-1", 65, None, 0)
    ]
    assert sorted(restored.open_alerts(), key=lambda a: a.meter_id) == [
        zero("occupied", 48, None, 0),
        zero("vacant-1", 65, None, 0),
        zero("vacant-2", 48, None, 0),
    ]


def test_zero_run_config() -> None:
    detector = ZeroRunDetector(ZeroRunConfig(min_duration_ms=H, channels=frozenset({POWER})))
    alerts = Engine([detector]).process(columns(hourly("m", [0.0, 0.0, 3.0]))).alerts
    assert [(a.opened_ms, a.resolved_ms) for a in alerts] == [(H, None), (H, 2 * H)]
    with pytest.raises(ValueError, match="min_duration_ms"):
        ZeroRunDetector(ZeroRunConfig(min_duration_ms=0))


# --- low variance -----------------------------------------------------------------------------


def alternating(hours: int, *, first_h: int = 0) -> list[float]:
    """99.5 on even hours of the day, 100.5 on odd ones: mean 100, std 0.5 over balanced days."""
    return [99.5 if (first_h + i) % 2 == 0 else 100.5 for i in range(hours)]


def low(meter: str, opened_ms: int, resolved_ms: int | None, **evidence: float) -> Alert:
    return Alert(meter, POWER, "low_variance", "info", opened_ms, resolved_ms, evidence)


FLAT_EVIDENCE = {"cv": 0.005, "mean": 100.0, "std": 0.5, "days": 7.0, "threshold": 0.01}


@pytest.mark.parametrize("batch", BATCHES)
def test_low_variance_flat_week_opens_once_observed_noise_resolves(batch: int) -> None:
    # First reading at h1 of day 0; judged from day 7 h1 (7 full days observed), where the window
    # (days 1-7) holds 6 balanced days and h0, h1 of day 7: 146 readings, mean 100, std 0.5.
    flat = hourly("f", alternating(8 * 24 - 1, first_h=1), start_h=1, origin=START)
    noisy = hourly("f", [150.0, 100.0], start_h=8 * 24, origin=START)
    alerts = process([LowVarianceDetector()], flat + noisy, batch)
    opened = START + 7 * DAY_MS + H
    resolved = START + 8 * DAY_MS
    assert alerts == [
        low("f", opened, None, **FLAT_EVIDENCE),
        low("f", opened, resolved, **FLAT_EVIDENCE),
    ]


def test_low_variance_noisy_week_zero_mean_and_channels() -> None:
    rng = np.random.default_rng(9)
    noisy = hourly("n", rng.uniform(50.0, 150.0, 9 * 24).tolist(), origin=START)
    zeros = hourly("z", [0.0] * (9 * 24), origin=START)
    balanced = hourly("b", [(-1.0) ** i for i in range(9 * 24)], origin=START)  # mean 0 or 1/n
    volts = hourly(
        "v", alternating(9 * 24), channel=int(Channel.VOLTAGE), unit=int(Unit.V), origin=START
    )
    readings = shuffled(noisy + zeros + balanced + volts, 2)
    engine = Engine([LowVarianceDetector()])
    assert engine.process(columns(readings)).alerts == []


def test_low_variance_window_is_the_last_calendar_days() -> None:
    # Day 0 is noisy; days 1-8 are flat. Judged from day 7 h0, when day 0 has left the window: the
    # rule opens at once, although the series' first week was noisy.
    rng = np.random.default_rng(4)
    values = rng.uniform(50.0, 150.0, 24).tolist() + alternating(8 * 24)
    alerts = Engine([LowVarianceDetector()]).process(columns(hourly("c", values, origin=START)))
    assert [(a.opened_ms, a.resolved_ms) for a in alerts.alerts] == [(START + 7 * DAY_MS, None)]
    assert alerts.alerts[0].evidence["cv"] < 0.01


def test_low_variance_meter_seen_for_the_first_time() -> None:
    engine = Engine([LowVarianceDetector()])
    first = hourly("a", alternating(4 * 24), origin=START)
    assert engine.process(columns(first)).alerts == []
    # "b" starts on day 4 (h1): judged only from day 11 h1, seven days after its first reading.
    a_rest = hourly("a", alternating(8 * 24, first_h=4 * 24), start_h=4 * 24, origin=START)
    b = hourly("b", alternating(7 * 24 + 1, first_h=1), start_h=4 * 24 + 1, origin=START)
    alerts = engine.process(columns(shuffled(a_rest + b, 8))).alerts
    assert [(a.meter_id, a.opened_ms) for a in alerts] == [
        ("a", START + 7 * DAY_MS),
        ("b", START + 11 * DAY_MS + H),
    ]
    assert alerts[1] == low("b", START + 11 * DAY_MS + H, None, **FLAT_EVIDENCE)


def test_low_variance_config() -> None:
    config = LowVarianceConfig(days=1, max_cv=0.2, severity="warning")
    # A day of 1.0/2.0 alternating (cv 1/3), a day of 10.0/11.0 (cv 1/21 < 0.2) ending on 30.0.
    # Judged from h24, whose window (day 1) holds that single reading: cv 0 opens at once; the
    # 30.0 at h47 resolves it.
    values = [1.0 + i % 2 for i in range(24)] + [10.0 + i % 2 for i in range(23)] + [30.0]
    alerts = Engine([LowVarianceDetector(config)]).process(columns(hourly("m", values))).alerts
    evidence = {"cv": 0.0, "mean": 10.0, "std": 0.0, "days": 1.0, "threshold": 0.2}
    assert alerts == [
        Alert("m", POWER, "low_variance", "warning", DAY_MS, None, evidence),
        Alert("m", POWER, "low_variance", "warning", DAY_MS, 47 * H, evidence),
    ]
    with pytest.raises(ValueError, match="days"):
        LowVarianceDetector(LowVarianceConfig(days=0))
    for bad in (-0.01, float("nan")):
        with pytest.raises(ValueError, match="max_cv"):
            LowVarianceDetector(LowVarianceConfig(max_cv=bad))


# --- together ---------------------------------------------------------------------------------


def flatline_detectors() -> list[Detector]:
    return [StuckValueDetector(), ZeroRunDetector(), LowVarianceDetector()]


def mixed() -> list[Reading]:
    """Series that make each rule open and resolve, interleaved in time order."""
    stuck_series = hourly("s", STUCK_VALUES, origin=START)
    zero_series = hourly("z", ZERO_VALUES, origin=START)
    flat = hourly("f", alternating(8 * 24 - 1, first_h=1), start_h=1, origin=START)
    flat += hourly("f", [150.0, 100.0], start_h=8 * 24, origin=START)
    return sorted(stuck_series + zero_series + flat, key=lambda r: (r[1], r[0]))


@pytest.mark.parametrize("cut", [1, 30, 75, 150, 199, 260, 330, 400])
def test_snapshot_restore_mid_run(cut: int) -> None:
    readings = mixed()
    whole = process(flatline_detectors(), readings, 25)
    assert {a.rule for a in whole} == {"stuck_value", "zero_run", "low_variance"}
    engine = Engine(flatline_detectors())
    first = engine.process(columns(readings[:cut])).alerts
    restored = Engine.restore(engine.snapshot(), flatline_detectors())
    second = restored.process(columns(readings[cut:])).alerts
    assert first + second == whole


def test_restore_rejects_damage() -> None:
    for detector in (StuckValueDetector(), ZeroRunDetector()):
        with pytest.raises(SnapshotError):
            detector.restore(b"\x01\x02\x03")
    with pytest.raises(SnapshotError):
        LowVarianceDetector().restore(b"junk")
    with pytest.raises(SnapshotError):
        LowVarianceDetector().restore(pack_sections(b"", b"", b"", b"", b""))
    with pytest.raises(SnapshotError):  # a bucket row of 7 int64 days cut short
        LowVarianceDetector().restore(pack_sections(b"", b"", b"\x00" * 8, b"", b"", b""))
    negative = np.array([-1, 0, 0, 0, 0, 0, 0], dtype="<i4").tobytes()
    with pytest.raises(SnapshotError, match="negative"):
        LowVarianceDetector().restore(pack_sections(b"", b"", b"", negative, b"", b""))


def test_state_bytes_per_series() -> None:
    """The documented per-row budget: 8 + 8 + 212 bytes of snapshotted state at default config."""
    engine = Engine(flatline_detectors())
    engine.process(columns(hourly("m", [-1.0, 0.0], origin=START)))  # no all-zero state
    sizes = [
        len(d.snapshot())
        for d in engine.detectors
        if isinstance(d, StuckValueDetector | ZeroRunDetector)
    ]
    assert sizes == [8, 8]
    low_variance = engine.detectors[2]
    assert isinstance(low_variance, LowVarianceDetector)
    assert len(low_variance.snapshot()) == 212 + 6 * 8  # six sections, each with its length


def test_registered() -> None:
    assert DETECTORS["stuck_value"] is StuckValueDetector
    assert DETECTORS["zero_run"] is ZeroRunDetector
    assert DETECTORS["low_variance"] is LowVarianceDetector
    kinds = {(d.name, d.kind, d.severity) for d in flatline_detectors()}
    assert kinds == {
        ("stuck_value", "fault", "warning"),
        ("zero_run", "fault", "warning"),
        ("low_variance", "fault", "info"),
    }
