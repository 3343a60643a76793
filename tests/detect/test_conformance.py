"""Conformance suite every rule passes: batch-size independence and snapshot/restore equivalence.

Parametrised over :data:`cloud_consumer.detect.rules.DETECTORS`, so a rule joins the suite by being
registered there. Streams are seeded random series (several meters and channels interleaved, each
series in time order, some duplicate timestamps) with planted spikes, drops and overload runs, so
every rule fires; each test also asserts that it did, so it cannot pass vacuously.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_consumer.detect.base import Detector, Frame, RuleKind, Scores, StatefulDetector
from cloud_consumer.detect.engine import Engine
from cloud_consumer.detect.episodes import Alert, Severity
from cloud_consumer.detect.rules import DETECTORS, default_detectors
from cloud_consumer.detect.state import SeriesTable, SnapshotError
from cloud_consumer.replay_input import ReadingColumns
from meterlink_wire.vocab import Channel, Unit
from tests.detect.plants import all_plants
from tests.detect.readings import columns as batch

WINDOW = 60
Reading = tuple[str, int, int, int, float]  # meter, channel, unit, ts_ms, value

RULES = sorted(DETECTORS)
PLANTS = all_plants()


def columns(readings: Sequence[Reading]) -> ReadingColumns:
    """One batch of plant-ordered readings (see :mod:`tests.detect.readings`)."""
    return batch([(m, ts, v, c, u) for m, c, u, ts, v in readings])


def stream(
    seed: int, meters: int = 6, per_series: int = 150, rules: Sequence[str] = ()
) -> list[Reading]:
    """Series in time order, interleaved at random across series, with planted faults.

    The base series plant spikes, drops and overload runs; each rule in ``rules`` with an entry in
    :mod:`tests.detect.plants` adds its own planted series (defaults to every planted rule).
    """
    rng = np.random.default_rng(seed)
    series: list[list[Reading]] = []
    for m in range(meters):
        channel, unit = (Channel.POWER, Unit.KW) if m % 3 else (Channel.VOLTAGE, Unit.V)
        values = rng.uniform(2.0, 8.0, per_series)
        for start in rng.choice(per_series - 12, 3, replace=False):
            kind = rng.integers(3)
            if kind == 0:
                values[start] *= 10.0  # spike
            elif kind == 1:
                values[start] *= 0.05  # drop
            else:
                values[start : start + rng.integers(4, 11)] = rng.uniform(21.0, 30.0)  # overload
        ts = np.cumsum(rng.choice([0, 60_000, 60_000, 60_000], per_series))  # some duplicates
        series.append(
            [
                (f"m{m}", int(channel), int(unit), int(t), float(v))
                for t, v in zip(ts, values, strict=True)
            ]
        )
    for rule in rules or sorted(PLANTS):
        if rule in PLANTS:
            series += PLANTS[rule](rng)
    owner = rng.permutation(np.repeat(np.arange(len(series)), [len(s) for s in series]))
    cursors = [0] * len(series)
    out: list[Reading] = []
    for m in owner.tolist():
        out.append(series[m][cursors[m]])
        cursors[m] += 1
    return out


def ordered(alerts: list[Alert]) -> list[tuple[object, ...]]:
    """Alerts in a batching-independent order, compared by repr (NaN-safe)."""
    return sorted(
        (
            a.opened_ms if a.resolved_ms is None else a.resolved_ms,
            a.meter_id,
            a.channel,
            a.rule,
            a.resolved_ms is not None,
            repr(a),
        )
        for a in alerts
    )


def run(
    factory: Callable[[], Detector], readings: Sequence[Reading], batch: int
) -> tuple[list[Alert], Engine]:
    engine = Engine([factory()], window=WINDOW)
    alerts: list[Alert] = []
    for start in range(0, len(readings), batch):
        alerts += engine.process(columns(readings[start : start + batch])).alerts
    return alerts, engine


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seed", [1, 2])
def test_batch_size_independence(rule: str, seed: int) -> None:
    readings = stream(seed, rules=[rule])
    results = {size: run(DETECTORS[rule], readings, size) for size in (1, 7, 10_000)}
    reference, engine = results[10_000]
    assert any(a.rule == rule for a in reference), "the stream must make the rule fire"
    assert any(a.resolved_ms is not None for a in reference)
    for size in (1, 7):
        alerts, other = results[size]
        assert ordered(alerts) == ordered(reference), f"batch size {size}"
        assert repr(other.open_alerts()) == repr(engine.open_alerts())
        assert other.snapshot() == engine.snapshot()


@pytest.mark.parametrize("rule", RULES)
def test_snapshot_restore_equivalence(rule: str) -> None:
    """A+B == A, snapshot, restore, B, at cuts every 29 readings (inside planted faults too)."""
    readings = stream(7, rules=[rule])
    whole, engine = run(DETECTORS[rule], readings, 50)
    assert any(a.rule == rule for a in whole)
    for split in range(1, len(readings), max(29, len(readings) // 40)):
        first, part = run(DETECTORS[rule], readings[:split], 50)
        restored = Engine.restore(part.snapshot(), [DETECTORS[rule]()])
        second: list[Alert] = []
        rest = readings[split:]
        for start in range(0, len(rest), 50):
            second += restored.process(columns(rest[start : start + 50])).alerts
        assert ordered(first + second) == ordered(whole), f"cut at {split}"
        assert restored.snapshot() == engine.snapshot()


def test_every_rule_together_matches_each_alone() -> None:
    """Detectors sharing one engine do not disturb each other."""
    readings = stream(3)
    engine = Engine(default_detectors(), window=WINDOW)
    together: list[Alert] = []
    for start in range(0, len(readings), 7):
        together += engine.process(columns(readings[start : start + 7])).alerts
    alone = [a for rule in RULES for a in run(DETECTORS[rule], readings, 7)[0]]
    assert ordered(together) == ordered(alone)
    restored = Engine.restore(engine.snapshot(), default_detectors())
    assert restored.snapshot() == engine.snapshot()


@pytest.mark.parametrize("rule", RULES)
def test_detector_contract(rule: str) -> None:
    detector = DETECTORS[rule]()
    assert isinstance(detector, Detector)
    assert detector.name == rule
    assert detector.severity in ("info", "warning", "critical")
    assert detector.__doc__ and len(detector.__doc__) > 40  # names its utility practice
    config = getattr(detector, "config", None)
    assert config is not None
    with pytest.raises(AttributeError):
        config.severity = "info"  # frozen


@pytest.mark.parametrize("rule", RULES)
def test_restore_rejects_other_detectors_and_damage(rule: str) -> None:
    _, engine = run(DETECTORS[rule], stream(4, meters=2, per_series=30), 10)
    data = engine.snapshot()
    other = next(name for name in RULES if name != rule)
    with pytest.raises(SnapshotError):
        Engine.restore(data, [DETECTORS[other]()])
    with pytest.raises(SnapshotError):
        Engine.restore(data[:-3], [DETECTORS[rule]()])
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x40
    with pytest.raises(SnapshotError):
        Engine.restore(bytes(flipped), [DETECTORS[rule]()])
    with pytest.raises(SnapshotError):
        Engine.restore(b"nonsense", [DETECTORS[rule]()])


def test_stateful_detectors_are_recognised() -> None:
    stateful = {name for name in RULES if isinstance(DETECTORS[name](), StatefulDetector)}
    assert {"overload"} <= stateful
    assert "spike" not in stateful


values = st.sampled_from([0.0, 1.0, 2.0, 3.0, 12.0, 25.0, 30.0, 100.0])
# Runs of repeated values, so run-length rules (overload) open and straddle batch cuts.
series_values = st.lists(st.tuples(values, st.integers(1, 8)), min_size=1, max_size=10).map(
    lambda runs: [value for value, repeat in runs for _ in range(repeat)]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from(RULES),
    data=st.lists(series_values, min_size=1, max_size=3),
    cuts=st.lists(st.integers(1, 120), max_size=6),
    order_seed=st.integers(0, 2**32 - 1),
)
def test_property_any_batching_gives_the_same_alerts(
    rule: str, data: list[list[float]], cuts: list[int], order_seed: int
) -> None:
    """Any interleaving of time-ordered series, cut into any batches, gives the same alerts."""
    per_series = [
        [(f"m{m}", int(Channel.POWER), int(Unit.KW), 1000 * i, v) for i, v in enumerate(vals)]
        for m, vals in enumerate(data)
    ]
    owner = np.random.default_rng(order_seed).permutation(
        np.repeat(np.arange(len(data)), [len(v) for v in data])
    )
    cursors = [0] * len(data)
    readings: list[Reading] = []
    for m in owner.tolist():
        readings.append(per_series[m][cursors[m]])
        cursors[m] += 1
    whole, _ = run(DETECTORS[rule], readings, len(readings))
    bounds = sorted({c for c in cuts if c < len(readings)})
    engine = Engine([DETECTORS[rule]()], window=WINDOW)
    pieces: list[Alert] = []
    for start, end in zip([0, *bounds], [*bounds, len(readings)], strict=True):
        pieces += engine.process(columns(readings[start:end])).alerts
    assert ordered(pieces) == ordered(whole)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from(RULES),
    data=st.lists(series_values, min_size=1, max_size=3),
    cut=st.integers(0, 120),
)
def test_property_snapshot_anywhere_gives_the_same_alerts(
    rule: str, data: list[list[float]], cut: int
) -> None:
    readings = [
        (f"m{m}", int(Channel.POWER), int(Unit.KW), 1000 * i, v)
        for i in range(max(map(len, data)))
        for m, vals in enumerate(data)
        if i < len(vals)
        for v in [vals[i]]
    ]
    whole, engine = run(DETECTORS[rule], readings, 5)
    first, part = run(DETECTORS[rule], readings[:cut], 5)
    restored = Engine.restore(part.snapshot(), [DETECTORS[rule]()])
    second: list[Alert] = []
    for start in range(cut, len(readings), 5):
        second += restored.process(columns(readings[start : start + 5])).alerts
    assert ordered(first + second) == ordered(whole)
    assert restored.snapshot() == engine.snapshot()


class Probe:
    """A detector recording what the engine shows it, to check the round contract."""

    name = "probe"
    severity: Severity = "info"
    kind: RuleKind = "data"

    def __init__(self) -> None:
        self.frames: list[tuple[list[int], list[int], list[int]]] = []

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        self.frames.append(
            (frame.rows.tolist(), frame.ts_ms.tolist(), table.seen(frame.rows).tolist())
        )
        size = len(frame)
        return Scores(np.zeros(size, dtype=np.bool_), np.zeros(size), {})

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        pass


def test_rounds_show_each_series_once_per_step_in_time_order() -> None:
    probe = Probe()
    engine = Engine([probe])
    batch = [
        ("b", 3, 5, 30, 1.0),
        ("a", 3, 5, 20, 1.0),
        ("a", 3, 5, 10, 1.0),
        ("b", 3, 5, 10, 1.0),
        ("a", 3, 5, 30, 1.0),
        ("c", 3, 5, 10, 1.0),
    ]
    assert engine.process(columns(batch)).alerts == []
    a, b, c = engine.table.rows_for(["a", "b", "c"], np.full(3, 3)).tolist()
    assert len(engine.table) == 3
    assert (b, a, c) == (0, 1, 2)  # rows in meter-dictionary order
    # Round k holds the k-th reading of each series (in row order); the table has seen k of them.
    assert probe.frames == [
        ([b, a, c], [10, 10, 10], [0, 0, 0]),
        ([b, a], [30, 20], [1, 1]),
        ([a], [30], [2]),
    ]
