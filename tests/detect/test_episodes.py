"""Alert episodes: deterministic ids, open/hold/resolve/re-open, batching, snapshots."""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_consumer.detect.episodes import (
    EPISODE_SNAPSHOT_MAGIC,
    Alert,
    Episode,
    EpisodeTracker,
    episode_id,
)
from cloud_consumer.detect.state import SeriesTable, SnapshotError


def expected_id(meter: str, channel: int, rule: str, start_ms: int) -> str:
    """The documented recipe, computed independently of the module."""
    payload = f'["{meter}",{channel},"{rule}",{start_ms}]'.encode()
    return hashlib.sha256(payload).hexdigest()[:32]


def table_with(*meters: str) -> tuple[SeriesTable, np.ndarray]:
    table = SeriesTable(4)
    return table, table.rows_for(list(meters), np.full(len(meters), 3))


def test_episode_id_is_deterministic_and_documented() -> None:
    assert episode_id("m1", 3, "spike", 1000) == "da753c56ee68ff53dc0af9b8339336db"
    assert episode_id("m1", 3, "spike", 1000) == expected_id("m1", 3, "spike", 1000)
    assert episode_id("m1", 3, "spike", 1001) != episode_id("m1", 3, "spike", 1000)
    assert episode_id("m1", 4, "spike", 1000) != episode_id("m1", 3, "spike", 1000)
    # The JSON framing keeps fields apart: no concatenation ambiguity.
    assert episode_id("m1,3", 3, "spike", 1) != episode_id("m1", 3, "3,spike", 1)
    assert Episode("m1", 3, "spike", 1000).id == episode_id("m1", 3, "spike", 1000)


def test_open_hold_resolve_reopen_one_alert_per_episode() -> None:
    table, rows = table_with("m1")
    row = rows[0]
    tracker = EpisodeTracker("overload", "critical")
    verdicts = [(1000, False), (2000, True), (3000, True), (4000, True), (5000, False)]
    verdicts += [(6000, False), (7000, True), (8000, True)]
    opened: list[Alert] = []
    resolved: list[Alert] = []
    for at, holds in verdicts:  # one reading per batch
        changes = tracker.update([row], [holds], [at], table, {"value": [at / 100]})
        opened += changes.opened
        resolved += changes.resolved
    assert opened == [
        Alert("m1", 3, "overload", "critical", 2000, None, {"value": 20.0}),
        Alert("m1", 3, "overload", "critical", 7000, None, {"value": 70.0}),
    ]
    assert resolved == [Alert("m1", 3, "overload", "critical", 2000, 5000, {"value": 20.0})]
    assert [a.episode_id for a in opened] == [
        expected_id("m1", 3, "overload", 2000),
        expected_id("m1", 3, "overload", 7000),
    ]
    assert resolved[0].episode_id == opened[0].episode_id
    assert tracker.is_open(rows).tolist() == [True]
    assert tracker.open_alerts(table) == [opened[1]]


def test_whole_sequence_in_one_batch_out_of_order() -> None:
    table, rows = table_with("m1", "m2")
    a, b = rows.tolist()
    tracker = EpisodeTracker("spike", "warning")
    # Readings shuffled across series and time; the tracker orders them by (row, time).
    batch = [
        (b, 30, True),
        (a, 40, False),
        (a, 10, True),
        (b, 10, False),
        (a, 20, True),
        (a, 30, False),
        (a, 50, True),
        (b, 20, True),
    ]
    row_ids, ats, holds = zip(*[(r, t, h) for r, t, h in batch], strict=True)
    changes = tracker.update(row_ids, holds, ats, table)
    assert [(x.meter_id, x.opened_ms, x.resolved_ms) for x in changes.opened] == [
        ("m1", 10, None),
        ("m1", 50, None),
        ("m2", 20, None),
    ]
    assert [(x.meter_id, x.opened_ms, x.resolved_ms) for x in changes.resolved] == [("m1", 10, 30)]
    assert tracker.is_open([a, b]).tolist() == [True, True]
    # Holding in the next batch adds nothing; clearing resolves with the original start.
    held = tracker.update([a, b], [True, True], [60, 60], table)
    assert held == ([], [])
    cleared = tracker.update([b, a], [False, True], [70, 70], table)
    assert cleared.opened == []
    assert [(x.meter_id, x.opened_ms, x.resolved_ms, x.episode_id) for x in cleared.resolved] == [
        ("m2", 20, 70, expected_id("m2", 3, "spike", 20))
    ]


def test_condition_never_holding_yields_nothing() -> None:
    table, rows = table_with("m1")
    tracker = EpisodeTracker("gap", "info")
    assert tracker.update(np.repeat(rows, 3), [False] * 3, [1, 2, 3], table) == ([], [])
    assert tracker.update([], [], [], table) == ([], [])
    assert tracker.open_alerts(table) == []


def test_bad_arguments() -> None:
    table, rows = table_with("m1")
    with pytest.raises(ValueError, match="severity"):
        EpisodeTracker("x", "fatal")  # type: ignore[arg-type]
    tracker = EpisodeTracker("x", "info")
    with pytest.raises(ValueError, match="equal length"):
        tracker.update(rows, [True, False], [1], table)
    with pytest.raises(ValueError, match="negative"):
        tracker.update([-1], [True], [1], table)


def test_tracker_grows_with_the_table() -> None:
    table = SeriesTable(2, capacity=1)
    rows = table.rows_for([f"m{i:04d}" for i in range(3000)], np.full(3000, 1))
    tracker = EpisodeTracker("x", "info", capacity=1)
    changes = tracker.update(rows, rows % 2 == 0, np.zeros(3000, dtype=np.int64), table)
    assert len(changes.opened) == 1500
    assert changes.opened[-1].meter_id == "m2998"


def test_snapshot_restore_keeps_open_episodes_and_evidence() -> None:
    table, rows = table_with("m1", "m2")
    tracker = EpisodeTracker("leak", "warning")
    tracker.update(
        rows, [True, False], [100, 100], table, {"flow": [2.5, 0.0], "std": [math.nan, 1]}
    )
    data = tracker.snapshot()
    assert data.startswith(EPISODE_SNAPSHOT_MAGIC)
    restored = EpisodeTracker.restore(data)
    assert restored.rule == "leak"
    assert restored.severity == "warning"
    assert restored.is_open(rows).tolist() == [True, False]
    changes = restored.update(rows, [False, False], [200, 200], table)
    [alert] = changes.resolved
    assert (alert.opened_ms, alert.resolved_ms, alert.evidence["flow"]) == (100, 200, 2.5)
    assert math.isnan(alert.evidence["std"])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"MLEPISODES",
        b"MLEPISODES{",
        b"MLEPISODES[]",
        b"XXEPISODES{}",
        b'MLEPISODES{"version":2}',
        b'MLEPISODES{"version":1,"rule":"r","severity":"fatal","capacity":4,"open":[]}',
        b'MLEPISODES{"version":1,"rule":"r","severity":"info","capacity":0,"open":[]}',
        b'MLEPISODES{"version":1,"rule":"r","severity":"info","capacity":4,"open":[[9,1,{}]]}',
        b'MLEPISODES{"version":1,"rule":"r","severity":"info","capacity":4,"open":[[1,1,[]]]}',
        b'MLEPISODES{"version":1,"rule":"r","severity":"info","capacity":4,'
        b'"open":[[1,1,{}],[1,2,{}]]}',
        b'MLEPISODES{"version":1,"rule":"r","severity":"info","capacity":4,"open":[[1,1e400,{}]]}',
        b'MLEPISODES{"version":1,"rule":"r","severity":"info","capacity":4,'
        b'"open":[[1,99999999999999999999,{}]]}',
    ],
)
def test_corrupt_episode_snapshot_raises_snapshot_error(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        EpisodeTracker.restore(data)


# --- properties -------------------------------------------------------------------------------

verdicts = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.booleans()), max_size=50
)


def _run(items: list[tuple[str, int, bool]], size: int, cut: int | None = None) -> list[Alert]:
    """Feed (meter, time step, holds) in batches of ``size``; snapshot/restore at ``cut``."""
    table = SeriesTable(2)
    meters = [m for m, _, _ in items]
    ats = np.cumsum([step for _, step, _ in items], dtype=np.int64)
    holds = np.array([h for _, _, h in items], dtype=np.bool_)
    rows = table.rows_for(sorted(set(meters)), np.ones(len(set(meters)), dtype=np.int64))
    lookup = dict(zip(sorted(set(meters)), rows.tolist(), strict=True))
    row = np.array([lookup[m] for m in meters], dtype=np.int64)
    tracker = EpisodeTracker("r", "info")
    alerts: list[Alert] = []
    for begin in range(0, len(items), size):
        if cut is not None and begin >= cut:
            tracker = EpisodeTracker.restore(tracker.snapshot())
            cut = None
        part = slice(begin, begin + size)
        evidence = {"at": ats[part].astype(np.float64)}
        changes = tracker.update(row[part], holds[part], ats[part], table, evidence)
        alerts += changes.opened + changes.resolved
    alerts += tracker.open_alerts(table)
    return sorted(alerts, key=lambda a: (a.meter_id, a.opened_ms, a.resolved_ms is not None))


@settings(max_examples=200, deadline=None)
@given(verdicts)
def test_batch_size_does_not_change_episodes(items: list[tuple[str, int, bool]]) -> None:
    one = _run(items, 1)
    assert _run(items, 7) == one
    assert _run(items, 10_000) == one
    # Each resolved record shares its id with an open record of the same episode, later or equal.
    opened = {a.episode_id: a.opened_ms for a in one if a.resolved_ms is None}
    for alert in one:
        if alert.resolved_ms is not None:
            assert opened[alert.episode_id] == alert.opened_ms <= alert.resolved_ms


@settings(max_examples=200, deadline=None)
@given(verdicts, st.integers(0, 50), st.sampled_from([1, 4]))
def test_snapshot_restore_does_not_change_episodes(
    items: list[tuple[str, int, bool]], cut: int, size: int
) -> None:
    assert _run(items, size, cut) == _run(items, size)


def test_distinct_rows_in_any_order_give_the_same_episodes() -> None:
    table, rows = table_with("a", "b", "c", "d")
    steps = [  # one reading per series per batch, in a different order each time
        ([2, 0, 3, 1], [True, False, True, False]),
        ([1, 3, 0, 2], [True, True, False, False]),
        ([3, 2, 1, 0], [False, False, True, True]),
    ]
    plain, fast = EpisodeTracker("r", "warning"), EpisodeTracker("r", "warning")
    for at, (order, holds) in enumerate(steps, start=1):
        batch = rows[order]
        expected = plain.update(batch, holds, [at] * 4, table)
        got = fast.update(batch, holds, [at] * 4, table, ordered=True, distinct=True)
        assert got == expected
    assert [a.meter_id for a in plain.open_alerts(table)] == ["a", "b"]
    assert fast.open_alerts(table) == plain.open_alerts(table)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=4, max_size=4), max_size=12), st.randoms())
def test_distinct_path_gives_the_general_paths_episodes_and_state(
    steps: list[list[bool]], rnd: random.Random
) -> None:
    table, rows = table_with("a", "b", "c", "d")
    plain, fast = EpisodeTracker("r", "warning"), EpisodeTracker("r", "warning")
    for at, holds in enumerate(steps, start=1):
        order = rnd.sample(range(4), k=rnd.randint(0, 4))  # some series, in any order
        batch = rows[order]
        verdicts = np.array(holds, dtype=np.bool_)[order]
        times = [at] * len(order)
        evidence = {"at": np.full(len(order), at / 2), "row": batch.astype(np.float64)}
        expected = plain.update(batch, verdicts, times, table, evidence)
        got = fast.update(batch, verdicts, times, table, evidence, ordered=True, distinct=True)
        assert got == expected
    assert fast.snapshot() == plain.snapshot()
