"""Overload rule: exact episodes of the run-length high-usage check."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from cloud_consumer.detect.engine import Engine
from cloud_consumer.detect.episodes import Alert
from cloud_consumer.detect.rules.overload import OverloadConfig, OverloadDetector
from cloud_consumer.detect.state import SnapshotError
from cloud_consumer.detect.validate import Flag
from meterlink_wire.vocab import Channel, Unit
from tests.detect.readings import Reading, columns

POWER = int(Channel.POWER)


def series(
    meter: str,
    values: Sequence[float],
    *,
    start: int = 0,
    channel: int = POWER,
    unit: int = int(Unit.KW),
) -> list[Reading]:
    return [(meter, 1000 * (start + i), v, channel, unit) for i, v in enumerate(values)]


def overload(meter: str, opened: int, resolved: int | None, value: float = 25.0) -> Alert:
    evidence = {"value": value, "limit": 20.0, "run": 6.0}
    return Alert(meter, POWER, "overload", "critical", opened, resolved, evidence)


# 5 above (run too short), 19 (breaks it), 6 above (opens at the 6th: index 11), 1 more above,
# 20.0 exactly at the limit (not above: resolves), then 20.0 readings never count.
VALUES = [25.0] * 5 + [19.0] + [25.0] * 7 + [20.0] * 8


@pytest.mark.parametrize("batch", [1, 4, 6, 100])
def test_exact_episode_whatever_the_batching(batch: int) -> None:
    engine = Engine([OverloadDetector()])
    readings = series("m1", VALUES)
    alerts: list[Alert] = []
    for start in range(0, len(readings), batch):
        alerts += engine.process(columns(readings[start : start + batch])).alerts
    assert alerts == [overload("m1", 11000, None), overload("m1", 11000, 13000)]


def test_first_readings_of_a_meter_and_episode_stays_open() -> None:
    engine = Engine([OverloadDetector()])
    assert engine.process(columns(series("new", [30.0] * 5))).alerts == []
    opened = engine.process(columns(series("new", [30.0] * 3, start=5))).alerts
    assert opened == [overload("new", 5000, None, 30.0)]
    assert (
        engine.process(columns(series("new", [30.0] * 3, start=8))).alerts == []
    )  # one per episode
    assert engine.open_alerts() == opened


def test_units_and_channels() -> None:
    engine = Engine([OverloadDetector()])
    watts = series("w", [25_000.0] * 6, unit=int(Unit.W))  # 25 kW
    small = series("s", [19_000.0] * 6, unit=int(Unit.W))  # 19 kW
    volts = series("v", [240.0] * 6, channel=int(Channel.VOLTAGE), unit=int(Unit.V))
    alerts = engine.process(columns(watts + small + volts)).alerts
    assert alerts == [overload("w", 5000, None)]


def test_several_meters_out_of_order_in_one_batch() -> None:
    readings = series("a", VALUES) + series("b", [21.0] * 6 + [3.0])
    shuffled = [readings[i] for i in np.random.default_rng(11).permutation(len(readings))]
    alerts = Engine([OverloadDetector()]).process(columns(shuffled)).alerts
    assert alerts == [
        overload("b", 5000, None, 21.0),
        overload("b", 5000, 6000, 21.0),
        overload("a", 11000, None),
        overload("a", 11000, 13000),
    ]


def test_run_survives_snapshot_restore() -> None:
    engine = Engine([OverloadDetector()])
    engine.process(columns(series("m", [25.0] * 5)))
    restored = Engine.restore(engine.snapshot(), [OverloadDetector()])
    assert restored.process(columns(series("m", [25.0], start=5))).alerts == [
        overload("m", 5000, None)
    ]
    with pytest.raises(SnapshotError):
        OverloadDetector().restore(b"\x01\x02\x03")
    with pytest.raises(SnapshotError):
        OverloadDetector().restore(np.array([-1], dtype="<i8").tobytes())


def test_nan_is_rejected_and_leaves_no_trace() -> None:
    engine, clean = Engine([OverloadDetector()]), Engine([OverloadDetector()])
    for e in (engine, clean):
        e.process(columns(series("m", [25.0] * 3)))
    bad = [("m", 3000, float("nan"), POWER, int(Unit.KW)), *series("m", [25.0], start=4)]
    found = engine.process(columns(bad))
    clean.process(columns(series("m", [25.0], start=4)))
    assert found.flags.tolist() == [int(Flag.NOT_FINITE), 0]
    assert found.quality.tolist() == [0, 100]
    assert found.rejected == 1
    assert engine.snapshot() == clean.snapshot()


def test_config() -> None:
    detector = OverloadDetector(OverloadConfig(limit_kw=5.0, min_run=2, severity="warning"))
    alerts = Engine([detector]).process(columns(series("m", [6.0, 6.0, 4.0]))).alerts
    assert [(a.opened_ms, a.resolved_ms, a.severity) for a in alerts] == [
        (1000, None, "warning"),
        (1000, 2000, "warning"),
    ]
    with pytest.raises(ValueError, match="min_run"):
        OverloadDetector(OverloadConfig(min_run=0))
