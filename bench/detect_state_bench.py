"""Detection state benchmark: SeriesTable updates/s beside a naive deque-per-series baseline.

    .venv/bin/python bench/detect_state_bench.py [--readings 1000000] [--batch 100000]
        [--window 60] [--repeats 3] [--series 10000 1000000]

Figures (medians of --repeats, process pinned to one core; the machine is shared and noisy, so
read the ratios):
1. update: readings/s through ``SeriesTable.update`` (ring scatter + exact window statistics for
   every touched series) for a stream of --readings readings in batches of --batch, readings
   spread uniformly over --series tracked series, rows already resolved, after an untimed
   warm-up stream of the same size (steady state: pages mapped, rings partly filled; at 10,000
   series every window is full, at 1,000,000 series each holds ~2 readings);
2. rows_for + update: the same, mapping each batch's (meter dictionary, index, channel) columns to
   rows first (what the consumer does per decoded batch);
3. naive: a dict of ``deque(maxlen=window)`` per series with running sum and sum of squares,
   one Python iteration per reading, over the same readings (warmed up the same way);
4. memory: bytes per tracked meter-channel at --window (tracemalloc: numpy arrays, keys, dict),
   with and without the doubling slack, and snapshot bytes per series.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
from collections import deque
from collections.abc import Callable

import numpy as np

from cloud_consumer.detect.state import SeriesTable

T0 = 1_764_201_600_000
CHANNEL = 3  # power


def stream(
    series: int, readings: int, batch: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of (series index, ts_ms, value), time-ordered, series drawn uniformly.

    ``seed`` also offsets the timestamps, so a second stream continues after the first.
    """
    rng = np.random.default_rng(seed)
    out = []
    for begin in range(0, readings, batch):
        n = min(batch, readings - begin)
        index = rng.integers(0, series, n).astype(np.int64)
        ts = T0 + (seed * readings + begin + np.arange(n, dtype=np.int64)) * 10
        values = rng.gamma(2.0, 1.5, n)
        out.append((index, ts, values))
    return out


def median_rate(run: Callable[[], float], readings: int, repeats: int) -> float:
    return statistics.median(readings / run() for _ in range(repeats))


Batches = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def bench_table(
    meters: list[str], warm: Batches, batches: Batches, window: int, *, with_rows_for: bool
) -> float:
    """Seconds for ``batches`` through a table that has already taken ``warm`` (steady state)."""
    table = SeriesTable(window, capacity=len(meters))
    all_rows = table.rows_for(
        meters, np.full(len(meters), CHANNEL, dtype=np.uint8), np.arange(len(meters))
    )
    # A decoded batch's channel column (the same channel for every reading here).
    channels = np.full(max(index.size for index, _, _ in batches), CHANNEL, dtype=np.uint8)
    for index, ts, values in warm:
        table.update(all_rows[index], ts, values)
    start = time.perf_counter()
    for index, ts, values in batches:
        if with_rows_for:
            rows = table.rows_for(meters, channels[: index.size], index)
        else:
            rows = all_rows[index]
        table.update(rows, ts, values)
    return time.perf_counter() - start


def bench_naive(meters: list[str], warm: Batches, batches: Batches, window: int) -> float:
    """Per-reading Python: deque per series, running sums, mean and std after each reading."""
    state: dict[tuple[str, int], list[object]] = {}
    naive_pass(meters, warm, window, state)
    start = time.perf_counter()
    naive_pass(meters, batches, window, state)
    return time.perf_counter() - start


def naive_pass(
    meters: list[str], batches: Batches, window: int, state: dict[tuple[str, int], list[object]]
) -> None:
    plain = [(index.tolist(), ts.tolist(), values.tolist()) for index, ts, values in batches]
    for index, ts, values in plain:
        for i, t, v in zip(index, ts, values, strict=True):
            key = (meters[i], CHANNEL)
            entry = state.get(key)
            if entry is None:
                entry = state[key] = [deque(maxlen=window), 0.0, 0.0, 0]
            ring, total, squares, _ = entry
            assert isinstance(ring, deque)
            assert isinstance(total, float)
            assert isinstance(squares, float)
            if len(ring) == window:
                old = ring[0][1]
                total -= old
                squares -= old * old
            ring.append((t, v))
            total += v
            squares += v * v
            entry[1], entry[2], entry[3] = total, squares, t
            mean = total / len(ring)
            _ = max(squares / len(ring) - mean * mean, 0.0) ** 0.5


def memory_per_series(series: int, window: int) -> tuple[float, float, float]:
    """(tracemalloc bytes per series, numpy array bytes per series, snapshot bytes per series)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    meters = [f"elec-{i:08d}" for i in range(series)]
    table = SeriesTable(window, capacity=1)
    rows = table.rows_for(meters, np.full(series, CHANNEL, dtype=np.uint8), np.arange(series))
    del meters  # the table keeps its own references to the ids
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # Fill every window so the snapshot is at full size.
    for step in range(window):
        table.update(rows, np.full(series, T0 + step), np.full(series, float(step)))
    return used / series, table.nbytes / series, len(table.snapshot()) / series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--series", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(
        f"SeriesTable W={args.window}: {args.readings:,} readings per run in batches of "
        f"{args.batch:,}; medians of {args.repeats}; one core"
    )
    print(f"{'series':>10} {'update/s':>12} {'rows_for+update/s':>18} {'naive/s':>10} {'ratio':>7}")
    for series in args.series:
        meters = [f"elec-{i:08d}" for i in range(series)]
        warm = stream(series, args.readings, args.batch, seed=series)
        batches = stream(series, args.readings, args.batch, seed=series + 1)

        def table_only(
            meters: list[str] = meters, w: Batches = warm, b: Batches = batches
        ) -> float:
            return bench_table(meters, w, b, args.window, with_rows_for=False)

        def table_rows(
            meters: list[str] = meters, w: Batches = warm, b: Batches = batches
        ) -> float:
            return bench_table(meters, w, b, args.window, with_rows_for=True)

        def naive(meters: list[str] = meters, w: Batches = warm, b: Batches = batches) -> float:
            return bench_naive(meters, w, b, args.window)

        update = median_rate(table_only, args.readings, args.repeats)
        mapped = median_rate(table_rows, args.readings, args.repeats)
        baseline = median_rate(naive, args.readings, args.repeats)
        print(
            f"{series:>10,} {update:>12,.0f} {mapped:>18,.0f} {baseline:>10,.0f} "
            f"{update / baseline:>6.1f}x"
        )
    for series in (1 << 17, 100_000):
        total, arrays, snapshot = memory_per_series(series, args.window)
        slack = "no slack (capacity == series)" if series == 1 << 17 else "capacity 131,072"
        print(
            f"memory W={args.window}, {series:,} series, {slack}: {total:,.0f} B/series "
            f"(numpy arrays {arrays:,.0f} B; snapshot {snapshot:,.0f} B/series)"
        )


if __name__ == "__main__":
    main()
