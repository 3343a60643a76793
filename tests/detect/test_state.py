"""SeriesTable: exact window statistics, batch mechanics, growth, snapshots."""

from __future__ import annotations

import contextlib
import math
import struct
import zlib

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_consumer.detect.state import (
    SNAPSHOT_MAGIC,
    SNAPSHOT_VERSION,
    SeriesTable,
    SnapshotError,
    series_order,
)
from meterlink_wire.batch import ReadingBatch, WindowRow
from meterlink_wire.vocab import Channel, Unit


def one_series(window: int = 4, horizon_ms: int | None = None) -> tuple[SeriesTable, np.ndarray]:
    table = SeriesTable(window, horizon_ms=horizon_ms)
    return table, table.rows_for(["m1"], np.array([1]))


def bits(array: np.ndarray) -> np.ndarray:
    """Bit patterns, so comparisons are exact (NaN == NaN, -0.0 != 0.0)."""
    return np.ascontiguousarray(array).view(np.uint8)


def accessors(table: SeriesTable, rows: np.ndarray) -> dict[str, np.ndarray]:
    last_value, last_ts = table.last(rows)
    window = table.window_of(rows)
    return {
        "count": table.count(rows),
        "seen": table.seen(rows),
        "mean": table.mean(rows),
        "std": table.std(rows),
        "var1": table.variance(rows, ddof=1),
        "last_value": last_value,
        "last_ts": last_ts,
        "window_values": window.values,
        "window_ts": window.ts,
        "window_valid": window.valid,
    }


def by_key(table: SeriesTable) -> dict[str, np.ndarray]:
    """Every accessor, rows ordered by series key (row numbers depend on arrival order)."""
    keys = table.key_of(np.arange(len(table)))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return accessors(table, np.array(order, dtype=np.int64))


def assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert value.shape == b[name].shape, name
        assert bits(value).tobytes() == bits(b[name]).tobytes(), name


# --- exact statistics -------------------------------------------------------------------------


def test_hand_made_series_exact_mean_std_count() -> None:
    table, row = one_series(4)
    table.update(np.repeat(row, 4), [1000, 2000, 3000, 4000], [1.0, 2.0, 3.0, 4.0])
    assert table.count(row).tolist() == [4]
    assert table.mean(row).tolist() == [2.5]
    assert table.variance(row).tolist() == [1.25]
    assert table.std(row).tolist() == [math.sqrt(1.25)]
    assert table.variance(row, ddof=1).tolist() == [5.0 / 3.0]
    # One more reading evicts the oldest: window [2, 3, 4, 10].
    table.update(row, [5000], [10.0])
    assert table.count(row).tolist() == [4]
    assert table.seen(row).tolist() == [5]
    assert table.mean(row).tolist() == [4.75]
    assert table.variance(row).tolist() == [9.6875]


def test_window_not_yet_full() -> None:
    table, row = one_series(60)
    table.update(np.repeat(row, 3), [1, 2, 3], [2.0, 4.0, 9.0])
    assert table.count(row).tolist() == [3]
    assert table.mean(row).tolist() == [5.0]
    assert table.variance(row).tolist() == [26.0 / 3.0]
    window = table.window_of(row)
    assert window.valid.sum() == 3
    assert window.values[0, -3:].tolist() == [2.0, 4.0, 9.0]
    assert np.isnan(window.values[0, :-3]).all()
    assert window.ts[0, -3:].tolist() == [1, 2, 3]
    assert (window.ts[0, :-3] == -1).all()
    assert np.nanmedian(window.values, axis=1).tolist() == [4.0]


def test_series_seen_for_the_first_time_is_empty_until_updated() -> None:
    table = SeriesTable(4)
    rows = table.rows_for(["a", "b"], np.array([1, 1]))
    assert rows.tolist() == [0, 1]
    assert table.count(rows).tolist() == [0, 0]
    assert np.isnan(table.mean(rows)).all()
    assert np.isnan(table.std(rows)).all()
    values, ts = table.last(rows)
    assert np.isnan(values).all()
    assert ts.tolist() == [-1, -1]
    assert not table.window_of(rows).valid.any()
    table.update(rows[:1], [7], [3.5])
    assert table.count(rows).tolist() == [1, 0]
    assert table.mean(rows[:1]).tolist() == [3.5]
    assert table.std(rows[:1]).tolist() == [0.0]
    assert np.isnan(table.variance(rows[:1], ddof=1)).all()


def test_ring_wrap_around_keeps_time_order() -> None:
    table, row = one_series(3)
    for step in range(7):  # 7 single-reading batches wrap a 3-slot ring twice
        table.update(row, [step * 10], [float(step)])
    window = table.window_of(row)
    assert window.values.tolist() == [[4.0, 5.0, 6.0]]
    assert window.ts.tolist() == [[40, 50, 60]]
    assert table.last(row)[0].tolist() == [6.0]
    assert table.last(row)[1].tolist() == [60]
    assert table.mean(row).tolist() == [5.0]
    assert table.seen(row).tolist() == [7]


def test_duplicates_of_one_series_in_one_batch_longer_than_the_window() -> None:
    table, row = one_series(3)
    table.update(row, [0], [100.0])
    # Five readings of the same series in one batch: only the newest three stay.
    table.update(np.repeat(row, 5), [1, 2, 3, 4, 5], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert table.window_of(row).values.tolist() == [[3.0, 4.0, 5.0]]
    assert table.seen(row).tolist() == [6]
    assert table.mean(row).tolist() == [4.0]
    assert table.last(row)[0].tolist() == [5.0]
    # The ring position continues from the reading count: the next reading evicts 3.0.
    table.update(row, [6], [6.0])
    assert table.window_of(row).values.tolist() == [[4.0, 5.0, 6.0]]


def test_out_of_order_within_a_batch_is_applied_in_time_order() -> None:
    table = SeriesTable(3)
    rows = table.rows_for(["a", "b", "a", "b", "a", "a"], np.array([1, 1, 1, 1, 1, 1]))
    ts = [40, 20, 10, 10, 30, 20]
    values = [4.0, 2.0, 1.0, 1.0, 3.0, 2.0]
    table.update(rows, ts, values)
    a, b = table.rows_for(["a", "b"], np.array([1, 1])).tolist()
    assert table.window_of([a]).values.tolist() == [[2.0, 3.0, 4.0]]
    assert table.window_of([a]).ts.tolist() == [[20, 30, 40]]
    assert table.last([a, b])[1].tolist() == [40, 20]
    assert table.mean([a, b]).tolist() == [3.0, 1.5]


def test_equal_timestamps_keep_arrival_order() -> None:
    table, row = one_series(2)
    table.update(np.repeat(row, 3), [5, 5, 5], [1.0, 2.0, 3.0])
    assert table.window_of(row).values.tolist() == [[2.0, 3.0]]


def test_time_based_window_evicts_by_timestamp() -> None:
    table, row = one_series(10, horizon_ms=1000)
    table.update(np.repeat(row, 3), [0, 400, 800], [1.0, 2.0, 3.0])
    assert table.count(row).tolist() == [3]
    assert table.mean(row).tolist() == [2.0]
    # Newest 1500: the window is (500, 1500], so 0 and 400 are out.
    table.update(row, [1500], [9.0])
    assert table.count(row).tolist() == [2]
    assert table.mean(row).tolist() == [6.0]
    assert table.variance(row).tolist() == [9.0]
    window = table.window_of(row)
    assert window.values[window.valid].tolist() == [3.0, 9.0]
    assert window.ts[window.valid].tolist() == [800, 1500]
    # Exactly horizon old is out (half-open window).
    table.update(row, [2500], [1.0])
    assert table.count(row).tolist() == [1]
    assert table.mean(row).tolist() == [1.0]


def test_time_window_is_also_capped_by_the_ring() -> None:
    table, row = one_series(2, horizon_ms=10_000)
    table.update(np.repeat(row, 3), [1, 2, 3], [1.0, 2.0, 3.0])
    assert table.count(row).tolist() == [2]
    assert table.mean(row).tolist() == [2.5]


def test_table_grows_past_initial_capacity() -> None:
    table = SeriesTable(4, capacity=2)
    first = table.rows_for(["m0"], np.array([3]))
    table.update(first, [1], [42.0])
    meters = [f"m{i:03d}" for i in range(1, 101)]
    rows = table.rows_for(meters, np.full(100, 3))
    assert rows.tolist() == list(range(1, 101))
    assert 101 <= table.capacity <= 101 + 101 // 4  # grows by a quarter, not x2
    assert len(table) == 101
    table.update(rows, np.arange(100), np.arange(100, dtype=np.float64))
    assert table.mean(first).tolist() == [42.0]  # copied across the growth
    assert table.mean(rows).tolist() == list(np.arange(100, dtype=np.float64))
    assert table.key_of([0, 1, 100]) == [("m0", 3), ("m001", 3), ("m100", 3)]


def test_rows_for_a_reading_batch_dictionary() -> None:
    t0 = 1_700_000_000_000
    batch = ReadingBatch.from_rows(
        "gw-1",
        1,
        1_700_000_000_000,
        0,
        [
            WindowRow("m2", Channel.POWER, Unit.KW, t0, 1, 1.0, 1.0, 1.0, 1.0),
            WindowRow("m1", Channel.POWER, Unit.KW, t0, 1, 2.0, 2.0, 2.0, 2.0),
            WindowRow("m2", Channel.VOLTAGE, Unit.V, t0, 1, 230.0, 230.0, 230.0, 230.0),
            WindowRow("m2", Channel.POWER, Unit.KW, t0 + 60_000, 1, 3.0, 3.0, 3.0, 3.0),
        ],
    )
    table = SeriesTable(4)
    rows = table.rows_for(batch.meters, batch.channel, batch.meter)
    assert rows[0] == rows[3]
    assert len(set(rows.tolist())) == 3
    table.update(rows, batch.start_ms, batch.last)
    keys = table.key_of(rows)
    assert [key[0] for key in keys] == ["m2", "m1", "m2", "m2"]
    assert table.mean(rows[:1]).tolist() == [2.0]
    assert table.key_of(rows[2:3]) == [("m2", int(Channel.VOLTAGE))]
    # Same pairs again map to the same rows, in either calling form.
    again = table.rows_for([batch.meters[i] for i in batch.meter.tolist()], batch.channel)
    assert again.tolist() == rows.tolist()


def test_rows_for_sparse_dictionary_uses_the_sorting_path() -> None:
    table = SeriesTable(4)
    meters = [f"m{i}" for i in range(10_000)]
    index = np.array([9_999, 5, 9_999], dtype=np.int32)
    rows = table.rows_for(meters, np.array([1, 1, 1], dtype=np.uint8), index)
    assert rows.tolist() == [1, 0, 1]
    assert table.key_of(rows) == [("m9999", 1), ("m5", 1), ("m9999", 1)]


def test_bad_update_arguments_raise_value_error() -> None:
    table, row = one_series(4)
    with pytest.raises(ValueError, match="finite"):
        table.update(row, [1], [math.nan])
    with pytest.raises(ValueError, match="outside the table"):
        table.update([5], [1], [1.0])
    with pytest.raises(ValueError, match="equal length"):
        table.update(row, [1, 2], [1.0])
    with pytest.raises(ValueError, match="channel"):
        table.rows_for(["a"], np.array([256]))
    table.update(np.zeros(0, np.int64), [], [])
    assert table.count(row).tolist() == [0]


# --- snapshots --------------------------------------------------------------------------------


def test_snapshot_round_trip_restores_exactly() -> None:
    table = SeriesTable(3, horizon_ms=50)
    rows = table.rows_for(["a", "b", "c"], np.array([1, 2, 1]))
    table.update(np.tile(rows, 5), np.repeat(np.arange(5) * 20, 3), np.arange(15) / 7)
    data = table.snapshot()
    assert data.startswith(SNAPSHOT_MAGIC)
    restored = SeriesTable.restore(data)
    assert restored.window == 3
    assert restored.horizon_ms == 50
    assert len(restored) == 3
    assert restored.key_of(rows) == table.key_of(rows)
    assert_identical(accessors(restored, rows), accessors(table, rows))
    assert restored.snapshot() == data
    assert table.rows_for(["c"], np.array([1])).tolist() == [2]
    assert restored.rows_for(["c"], np.array([1])).tolist() == [2]


def test_snapshot_of_an_empty_table() -> None:
    restored = SeriesTable.restore(SeriesTable(5).snapshot())
    assert len(restored) == 0
    assert restored.window == 5


def _snapshot_parts(data: bytes) -> tuple[dict[str, object], bytes]:
    prefix = struct.Struct("<8sHII")
    _, _, header_len, _ = prefix.unpack_from(data)
    header = orjson.loads(data[prefix.size : prefix.size + header_len])
    return header, data[prefix.size + header_len :]


def _rebuild(header: dict[str, object], arrays: bytes, version: int = SNAPSHOT_VERSION) -> bytes:
    raw = orjson.dumps(header)
    crc = zlib.crc32(raw + arrays)
    return struct.pack("<8sHII", SNAPSHOT_MAGIC, version, len(raw), crc) + raw + arrays


def _rebuild_raw(raw: bytes, arrays: bytes) -> bytes:
    crc = zlib.crc32(raw + arrays)
    return struct.pack("<8sHII", SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(raw), crc) + raw + arrays


def _sample_snapshot() -> bytes:
    table = SeriesTable(2)
    rows = table.rows_for(["a", "b"], np.array([1, 1]))
    table.update(rows, [1, 2], [1.0, 2.0])
    return table.snapshot()


def _corruptions() -> list[tuple[str, bytes]]:
    data = _sample_snapshot()
    header, arrays = _snapshot_parts(data)
    nan_arrays = bytearray(arrays)
    nan_arrays[0:8] = struct.pack("<d", math.nan)
    negative = bytearray(arrays)
    negative[-8:] = struct.pack("<q", -1)
    return [
        ("empty", b""),
        ("truncated prefix", data[:5]),
        ("truncated header", data[:20]),
        ("truncated arrays", data[:-1]),
        ("trailing bytes", data + b"\x00"),
        ("foreign magic", b"PK\x03\x04" + data[4:]),
        ("newer version", _rebuild(header, arrays, version=SNAPSHOT_VERSION + 1)),
        ("header not json", _rebuild_raw(b"{" * 10, arrays)),
        ("checksum mismatch", data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]),
        ("header not object", _rebuild([1, 2], arrays)),  # type: ignore[arg-type]
        ("bad window", _rebuild({**header, "window": 0}, arrays)),
        ("window as string", _rebuild({**header, "window": "2"}, arrays)),
        ("bad horizon", _rebuild({**header, "horizon_ms": -5}, arrays)),
        ("size mismatch", _rebuild({**header, "size": 3}, arrays)),
        ("bad key", _rebuild({**header, "keys": [["a", 1], ["b", 999]]}, arrays)),
        ("duplicate key", _rebuild({**header, "keys": [["a", 1], ["a", 1]]}, arrays)),
        ("nan in window", _rebuild(header, bytes(nan_arrays))),
        ("negative count", _rebuild(header, bytes(negative))),
    ]


@pytest.mark.parametrize(("name", "data"), _corruptions(), ids=[n for n, _ in _corruptions()])
def test_corrupt_snapshot_raises_snapshot_error(name: str, data: bytes) -> None:
    with pytest.raises(SnapshotError) as info:
        SeriesTable.restore(data)
    assert info.value.reason
    assert info.value.retriable is False


def test_restore_of_a_non_bytes_value_raises_snapshot_error() -> None:
    with pytest.raises(SnapshotError):
        SeriesTable.restore("not bytes")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_snapshot_restores_or_raises_snapshot_error(data: st.DataObject) -> None:
    original = bytearray(_sample_snapshot())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(original) - 1))
        original[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    # Anything but SnapshotError (or success) fails the test.
    with contextlib.suppress(SnapshotError):
        SeriesTable.restore(bytes(original[:cut]))


# --- properties -------------------------------------------------------------------------------

readings = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from([1, 2]),
        st.integers(0, 30),  # time step to the next reading (0 makes equal timestamps)
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    ),
    max_size=60,
)


def _columns(
    items: list[tuple[str, int, int, float]], offset: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    meters = [m for m, _, _, _ in items]
    channels = np.array([c for _, c, _, _ in items], dtype=np.int64)
    ts = offset + np.cumsum([step for _, _, step, _ in items], dtype=np.int64)
    values = np.array([v for _, _, _, v in items], dtype=np.float64)
    return meters, channels, ts, values


def _feed(
    table: SeriesTable, items: list[tuple[str, int, int, float]], size: int, offset: int = 0
) -> None:
    meters, channels, ts, values = _columns(items, offset)
    for begin in range(0, len(items), size):
        part = slice(begin, begin + size)
        rows = table.rows_for(meters[part], channels[part])
        table.update(rows, ts[part], values[part])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings, st.sampled_from([(3, None), (5, 40), (1, None)]))
def test_batch_size_does_not_change_any_accessor(
    items: list[tuple[str, int, int, float]], shape: tuple[int, int | None]
) -> None:
    window, horizon = shape
    results = []
    for size in (1, 7, 10_000):
        table = SeriesTable(window, horizon_ms=horizon, capacity=1)
        _feed(table, items, size)
        results.append(by_key(table))
    assert_identical(results[0], results[1])
    assert_identical(results[0], results[2])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings, readings, st.sampled_from([(3, None), (4, 25)]), st.sampled_from([1, 5, 100]))
def test_snapshot_restore_between_batches_is_invisible(
    first: list[tuple[str, int, int, float]],
    second: list[tuple[str, int, int, float]],
    shape: tuple[int, int | None],
    size: int,
) -> None:
    window, horizon = shape
    straight = SeriesTable(window, horizon_ms=horizon, capacity=1)
    _feed(straight, first + second, size)
    resumed = SeriesTable(window, horizon_ms=horizon, capacity=1)
    _feed(resumed, first, size)
    resumed = SeriesTable.restore(resumed.snapshot())
    _feed(resumed, second, size, offset=sum(step for _, _, step, _ in first))
    # Row numbers follow batch boundaries, which differ here; compare series by key.
    assert_identical(by_key(straight), by_key(resumed))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings, readings, st.sampled_from([1, 5, 100]))
def test_snapshot_restore_with_the_same_batches_is_bit_identical(
    first: list[tuple[str, int, int, float]],
    second: list[tuple[str, int, int, float]],
    size: int,
) -> None:
    offset = sum(step for _, _, step, _ in first)
    straight = SeriesTable(3, capacity=1)
    _feed(straight, first, size)
    data = straight.snapshot()
    _feed(straight, second, size, offset)
    resumed = SeriesTable.restore(data)
    _feed(resumed, second, size, offset)
    rows = np.arange(len(straight))
    assert straight.key_of(rows) == resumed.key_of(rows)
    assert_identical(accessors(straight, rows), accessors(resumed, rows))
    assert straight.snapshot() == resumed.snapshot()


def test_restore_of_rows_never_updated_matches_the_live_table() -> None:
    table = SeriesTable(3, horizon_ms=10)
    rows = table.rows_for(["a", "b"], np.array([1, 1]))
    table.update(rows[:1], [5], [1.0])
    restored = SeriesTable.restore(table.snapshot())
    assert_identical(accessors(restored, rows), accessors(table, rows))
    assert restored.variance(rows).tolist()[:1] == table.variance(rows).tolist()[:1] == [0.0]


def test_out_of_order_timestamps_spanning_the_int64_range() -> None:
    # Too wide for the packed-key sort: exercises the argsort fallback.
    table, row = one_series(3)
    table.update(np.repeat(row, 3), [2**62, -(2**62), 0], [3.0, 1.0, 2.0])
    assert table.window_of(row).values.tolist() == [[1.0, 2.0, 3.0]]
    assert table.window_of(row).ts.tolist() == [[-(2**62), 0, 2**62]]


def test_joined_message_dictionaries_map_to_the_same_rows() -> None:
    """A batch joined from messages (ids repeated across dictionaries) gets the rows a plain
    dictionary gets, and a dictionary seen before is recognised by identity."""
    first, second = ("a", "b", "c"), ("c", "d")
    joined = (*first, *second)
    index = np.array([0, 1, 2, 3, 4, 2], dtype=np.int64)  # "c" at positions 2 and 3
    channels = np.full(6, 3)
    table = SeriesTable(4)
    rows = table.rows_for(joined, channels, index, (first, second))
    assert rows.tolist() == [0, 1, 2, 2, 3, 2]
    assert table.key_of(rows) == [("a", 3), ("b", 3), ("c", 3), ("c", 3), ("d", 3), ("c", 3)]
    plain = SeriesTable(4)
    assert plain.rows_for(["a", "b", "c", "c", "d", "c"], channels).tolist() == rows.tolist()
    codes = table.meter_codes(first)
    assert table.meter_codes(first) is codes  # the same tuple: no lookup per meter
    assert table.meter_codes(("a", "b", "c")).tolist() == codes.tolist()
    with pytest.raises(ValueError, match="add up"):
        table.rows_for(joined, channels, index, (first,))


def test_new_series_get_rows_by_dictionary_position_then_channel() -> None:
    table = SeriesTable(4)
    rows = table.rows_for(("x", "y"), np.array([5, 3, 3, 5]), np.array([1, 1, 0, 0]))
    # position 0 ("x"): channels 3 then 5; position 1 ("y"): channels 3 then 5
    assert table.key_of(range(4)) == [("x", 3), ("x", 5), ("y", 3), ("y", 5)]
    assert rows.tolist() == [3, 2, 0, 1]
    restored = SeriesTable.restore(table.snapshot())
    assert restored.rows_for(("y", "x"), np.array([5, 3]), np.array([0, 1])).tolist() == [3, 0]


def test_series_order_keeps_arrival_order_when_no_row_repeats() -> None:
    rows = np.array([7, 2, 9, 0, 5], dtype=np.int64)
    ts = np.array([50, 10, 40, 30, 20], dtype=np.int64)
    assert series_order(rows, ts).tolist() == [0, 1, 2, 3, 4]


def test_series_order_sorts_by_row_then_time_when_a_row_repeats() -> None:
    rows = np.array([7, 2, 7, 0, 2, 7], dtype=np.int64)
    ts = np.array([50, 10, 40, 30, 10, 45], dtype=np.int64)
    # row 2's two readings tie on time: arrival order decides
    assert series_order(rows, ts).tolist() == [3, 1, 4, 2, 5, 0]


def test_series_order_of_rows_spread_wider_than_the_scratch_limit() -> None:
    far = 1 << 40  # too wide to count: sorting decides, repeated or not
    distinct = np.array([far, 3, far + 5], dtype=np.int64)
    assert series_order(distinct, np.zeros(3, dtype=np.int64)).tolist() == [1, 0, 2]
    repeated = np.array([far, 3, far, 3], dtype=np.int64)
    ts = np.array([9, 8, 1, 2], dtype=np.int64)
    assert series_order(repeated, ts).tolist() == [3, 1, 2, 0]


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5)), min_size=1, max_size=60))
def test_series_order_groups_each_series_oldest_first(pairs: list[tuple[int, int]]) -> None:
    rows = np.array([row for row, _ in pairs], dtype=np.int64)
    ts = np.array([t for _, t in pairs], dtype=np.int64)
    order = series_order(rows, ts).tolist()
    assert sorted(order) == list(range(len(pairs)))
    for row in set(rows.tolist()):
        mine = [i for i in order if rows[i] == row]
        # each series' readings in (time, arrival) order, whatever the batch's order
        assert mine == sorted(mine, key=lambda i: (ts[i], i))
    if len(set(rows.tolist())) < len(pairs):
        assert [rows[i] for i in order] == sorted(rows.tolist())


def test_update_of_distinct_rows_equals_the_general_path() -> None:
    general, promised = SeriesTable(3), SeriesTable(3)
    meters = ["a", "b", "c", "d"]
    for table in (general, promised):
        table.rows_for(meters, np.full(4, 1))
    rng = np.random.default_rng(5)
    for step in range(7):  # wraps the 3-slot rings twice
        rows = rng.permutation(4)[: 1 + step % 4]
        ts = np.full(rows.size, 1000 * (step + 1))
        values = rng.normal(size=rows.size)
        general.update(rows, ts, values)
        promised.update(rows, ts, values, distinct=True)
    assert promised.snapshot() == general.snapshot()
    assert promised.last(np.arange(4))[1].tolist() == general.last(np.arange(4))[1].tolist()


@pytest.mark.parametrize("window", [1, 2, 5])
def test_prior_ts_is_the_reading_before_the_newest(window: int) -> None:
    table = SeriesTable(window)
    rows = table.rows_for(["a", "b", "c"], np.full(3, 1))
    rng = np.random.default_rng(window)
    clock = 0
    for step in range(12):  # batches of distinct rows and batches with repeats, both paths
        picked = rng.choice(rows, size=4 if step % 2 else 2, replace=bool(step % 2))
        ts = clock + np.arange(1, picked.size + 1) * 10
        clock = int(ts.max())
        table.update(picked, ts, rng.normal(size=picked.size), distinct=not step % 2)
        assert table.prior_ts(rows).tolist() == table.last(rows, 1)[1].tolist()
    restored = SeriesTable.restore(table.snapshot())
    assert restored.prior_ts(rows).tolist() == table.prior_ts(rows).tolist()


def test_rows_of_a_mixed_batch_whatever_channel_comes_first() -> None:
    table = SeriesTable(4)
    meters = ["m0", "m1", "m2", "m3", "m4"]
    channels = np.array([7, 3, 3, 3, 9])  # the first reading's channel is not the common one
    rows = table.rows_for(meters, channels)
    one_by_one = [int(table.rows_for([m], [c])[0]) for m, c in zip(meters, channels, strict=True)]
    assert rows.tolist() == one_by_one
    assert table.key_of(rows) == list(zip(meters, channels.tolist(), strict=True))
    again = table.rows_for(meters[::-1], channels[::-1])
    assert again.tolist() == rows[::-1].tolist()
