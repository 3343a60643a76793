"""Replay's time ordering: an external merge sort that is exact, stable and memory-bounded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_consumer import replay_order
from cloud_consumer.replay_input import ReadingColumns, RowError
from cloud_consumer.replay_order import in_time_order


def chunk(ts: list[int], meters: list[str], counts: bool = False) -> ReadingColumns:
    """A reader-style chunk: its own dictionary, values that number the rows."""
    ids = tuple(dict.fromkeys(meters))
    index = {m: i for i, m in enumerate(ids)}
    return ReadingColumns(
        meter_ids=ids,
        meter=np.array([index[m] for m in meters], np.int32),
        channel=np.full(len(ts), 3, np.uint8),
        unit=np.full(len(ts), 2, np.uint8),
        ts_ms=np.array(ts, np.int64),
        value=np.arange(len(ts), dtype=np.float64),
        count=np.arange(len(ts), dtype=np.int64) + 1 if counts else None,
    )


def rows(columns: ReadingColumns) -> list[tuple[int, str, float]]:
    return list(
        zip(
            columns.ts_ms.tolist(),
            columns.meter_names(),
            columns.value.tolist(),
            strict=True,
        )
    )


def reference(chunks: list[ReadingColumns]) -> list[tuple[int, str, float, int]]:
    """Every row, tagged with its place in the file, stably sorted by time."""
    tagged = []
    for c, columns in enumerate(chunks):
        for ts, meter, value in rows(columns):
            tagged.append((ts, meter, value + 1_000 * c))
    return sorted(tagged, key=lambda row: row[0])


def tag(chunks: list[ReadingColumns]) -> list[ReadingColumns]:
    """Make each row's value unique across the file: its chunk * 1000 + its row."""
    return [
        ReadingColumns(
            c.meter_ids, c.meter, c.channel, c.unit, c.ts_ms, c.value + 1_000 * i, c.count
        )
        for i, c in enumerate(chunks)
    ]


def merged(
    chunks: list[ReadingColumns], chunk_rows: int, tmp_path: Path, block: int = 1_024
) -> list[tuple[ReadingColumns, list[RowError]]]:
    pairs = ((c, []) for c in tag(chunks))
    return list(in_time_order(pairs, chunk_rows, tmp_path, min_block_rows=block))


def test_meter_sorted_chunks_come_out_in_time_order_stably(tmp_path: Path) -> None:
    # Three chunks, each one meter's history; m2 repeats a timestamp (a duplicate, kept in
    # file order) and every meter shares timestamps with the others.
    chunks = [
        chunk([0, 10, 20, 30], ["m1"] * 4),
        chunk([0, 10, 10, 20], ["m2"] * 4),
        chunk([5, 10, 25, 30], ["m3"] * 4),
    ]
    out = merged(chunks, 4, tmp_path)
    flat = [row for columns, _ in out for row in rows(columns)]
    assert flat == reference(chunks)
    assert [row[0] for row in flat] == [0, 0, 5, 10, 10, 10, 10, 20, 20, 25, 30, 30]
    # equal timestamps keep file order: m1's 10, m2's two 10s (first row first), then m3's
    assert [row[2] for row in flat if row[0] == 10] == [1.0, 1_001.0, 1_002.0, 2_001.0]
    assert all(errors == [] for _, errors in out)
    assert sum(len(columns) for columns, _ in out) == 12


def test_chunks_hold_about_chunk_rows_and_list_each_meter_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    chunks = [
        chunk(sorted(rng.integers(0, 10_000, 3_000).tolist()), [f"m{k}"] * 3_000) for k in range(5)
    ]
    out = merged(chunks, 2_500, tmp_path)
    sizes = [len(columns) for columns, _ in out]
    assert sum(sizes) == 15_000
    assert all(size >= 2_500 for size in sizes[:-1])
    assert all(size <= 2_500 + 5 * replay_order.MIN_BLOCK_ROWS for size in sizes)
    flat = [row for columns, _ in out for row in rows(columns)]
    assert flat == reference(chunks)
    for columns, _ in out:
        # each id once, and only the ids the chunk's rows use
        assert sorted(columns.meter_ids) == sorted(set(columns.meter_names()))
        assert columns.dictionaries == ()
        assert columns.meter.dtype == np.int32


def test_a_file_already_in_time_order_is_read_back_run_by_run(tmp_path: Path) -> None:
    chunks = [chunk([0, 1, 2], ["a", "b", "a"]), chunk([2, 3, 4], ["b", "a", "b"])]
    out = merged(chunks, 3, tmp_path)
    assert [rows(columns) for columns, _ in out] == [rows(c) for c in tag(chunks)]


def test_one_chunk_passes_through_unchanged(tmp_path: Path) -> None:
    only = chunk([5, 1, 3], ["a", "b", "a"])
    errors = [RowError(2, "bad_value: x", "x")]
    pairs = [(only, errors), (chunk([], []), [RowError(9, "bad_value: y", "y")])]
    out = list(in_time_order(iter(pairs), 100, tmp_path))
    assert out == pairs  # the very same objects: the engine orders one batch itself
    assert list(in_time_order(iter([]), 100, tmp_path)) == []


def test_row_errors_are_passed_on_and_counts_kept(tmp_path: Path) -> None:
    first = RowError(3, "bad_value: x", "x")
    second = RowError(7, "bad_timestamp: y", "y")
    pairs = [
        (chunk([4, 2], ["a", "a"], counts=True), [first]),
        (chunk([3, 1], ["b", "b"], counts=True), [second]),
    ]
    out = list(in_time_order(iter(pairs), 10, tmp_path))
    assert [errors for _, errors in out if errors] == [[first], [second]]
    readings = [columns for columns, _ in out if len(columns)]
    assert len(readings) == 1
    assert readings[0].ts_ms.tolist() == [1, 2, 3, 4]
    assert readings[0].meter_names() == ["b", "a", "b", "a"]
    assert readings[0].count is not None and readings[0].count.tolist() == [2, 2, 1, 1]


def test_the_spill_directory_is_removed_even_when_the_replay_stops_early(tmp_path: Path) -> None:
    chunks = [chunk([3, 1], ["a", "a"]), chunk([2, 0], ["b", "b"]), chunk([5, 4], ["c", "c"])]
    stream = in_time_order(((c, []) for c in chunks), 2, tmp_path)
    next(stream)
    assert len(os.listdir(tmp_path)) == 1  # the run directory, while the merge is going
    stream.close()
    assert os.listdir(tmp_path) == []
    list(in_time_order(((c, []) for c in chunks), 2, tmp_path))
    assert os.listdir(tmp_path) == []


def test_bad_chunk_rows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        list(in_time_order(iter([]), 0, tmp_path))


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.sampled_from("abcd")), min_size=0, max_size=30),
        min_size=1,
        max_size=7,
    ),
    chunk_rows=st.integers(1, 50),
)
def test_any_order_comes_out_as_a_stable_sort_by_time(
    data: list[list[tuple[int, str]]], chunk_rows: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spill = tmp_path_factory.mktemp("spill")
    chunks = [chunk([t for t, _ in part], [m for _, m in part]) for part in data]
    out = merged(chunks, chunk_rows, spill, block=1)  # many merge steps, ties across blocks
    flat = [row for columns, _ in out for row in rows(columns)]
    if sum(len(c) > 0 for c in chunks) > 1:
        assert flat == reference(chunks)
    else:  # one chunk of readings at most passes through as it is
        assert flat == [row for c in tag(chunks) for row in rows(c)]
    assert os.listdir(spill) == []


def test_wire_chunks_with_repeated_ids_come_out_with_each_id_once(tmp_path: Path) -> None:
    # A wire chunk joins message dictionaries by offset, so an id may stand twice in meter_ids.
    wire = ReadingColumns(
        meter_ids=("a", "b", "a"),
        meter=np.array([0, 1, 2, 0], np.int32),
        channel=np.full(4, 3, np.uint8),
        unit=np.full(4, 2, np.uint8),
        ts_ms=np.array([3, 2, 4, 5], np.int64),
        value=np.arange(4, dtype=np.float64),
        count=np.ones(4, np.int64),
        dictionaries=(("a", "b"), ("a",)),
    )
    out = merged([wire, chunk([1, 6], ["b", "c"], counts=True)], 10, tmp_path)
    ((columns, _),) = [pair for pair in out if len(pair[0])]
    assert columns.meter_ids == ("a", "b", "c")  # run by run, in each run's dictionary order
    assert [(ts, meter) for ts, meter, _ in rows(columns)] == [
        (1, "b"), (2, "b"), (3, "a"), (4, "a"), (5, "a"), (6, "c")
    ]  # fmt: skip
