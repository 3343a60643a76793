"""Put a replay file's readings in time order, however it is sorted, in bounded memory.

The engine steps once per reading of the busiest series in a batch, so a chunk holding a few
meters' whole histories (a file sorted by meter, as meter data management systems export them)
costs one engine pass per reading. Sorted by time, a chunk holds one or a few readings of many
meters and is one pass. This is an external merge sort: each chunk the reader yields is sorted
by time and spilled to a temporary directory as a run of ``.npy`` columns; the runs are then
memory-mapped and merged into chunks of about ``chunk_rows`` readings.

Order is exact and stable: readings with equal timestamps keep their order in the file, so the
reading that wins a duplicate is the same one it would be in file order. A file that fits in
one chunk is passed through unchanged (the engine orders a batch itself); runs that do not
overlap in time (a file already sorted by time) are read back one after the other.
The spill costs disk (22 bytes per reading, 30 with counts) and a write and a read of it, far
less than parsing the text.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cloud_consumer.replay_input import ReadingColumns, RowError, concat

Chunks = Iterable[tuple[ReadingColumns, list[RowError]]]

_COLUMNS = ("meter", "channel", "unit", "ts_ms", "value", "count")
MIN_BLOCK_ROWS = 1_024
"""Rows read from each run per merge step, at least: bounds the steps when there are many runs."""


@dataclass(frozen=True)
class _Run:
    """One spilled chunk, sorted by time: memory-mapped columns and its meter dictionary."""

    meter_ids: tuple[str, ...]
    columns: dict[str, npt.NDArray[Any]]

    @property
    def ts(self) -> npt.NDArray[np.int64]:
        return self.columns["ts_ms"]

    def part(self, start: int, stop: int, counted: bool) -> ReadingColumns:
        """Rows ``start:stop`` as ReadingColumns (views of the mapped columns)."""
        rows = slice(start, stop)
        columns = self.columns
        return ReadingColumns(
            self.meter_ids,
            columns["meter"][rows],
            columns["channel"][rows],
            columns["unit"][rows],
            columns["ts_ms"][rows],
            columns["value"][rows],
            columns["count"][rows] if counted else None,
        )

    def __len__(self) -> int:
        return len(self.ts)


def in_time_order(
    chunks: Chunks,
    chunk_rows: int,
    spill_dir: Path | None = None,
    *,
    min_block_rows: int = MIN_BLOCK_ROWS,
) -> Iterator[tuple[ReadingColumns, list[RowError]]]:
    """Yield the readings of ``chunks`` in time order, about ``chunk_rows`` at a time.

    Row errors are passed on as they are read, with empty columns, before any merged chunk.
    ``spill_dir`` is where the temporary run directory goes (default: the system's).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    source = iter(chunks)
    head: list[tuple[ReadingColumns, list[RowError]]] = []
    filled = 0
    for columns, errors in source:
        head.append((columns, errors))
        filled += len(columns) > 0
        if filled == 2:
            break
    if filled < 2:  # one chunk of readings at most: the engine orders a batch itself
        yield from head
        return
    with tempfile.TemporaryDirectory(prefix="meterlink-replay-", dir=spill_dir) as tmp:
        runs: list[_Run] = []
        for columns, errors in itertools.chain(head, source):
            if errors:
                yield concat([]), errors
            if len(columns):
                runs.append(_spill(columns, Path(tmp) / f"run{len(runs):06d}"))
        yield from ((chunk, []) for chunk in _merge(runs, chunk_rows, min_block_rows))


def _spill(columns: ReadingColumns, stem: Path) -> _Run:
    """Sort a chunk by time (stable) and write it as a run; return the run memory-mapped."""
    order = np.argsort(columns.ts_ms, kind="stable")
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name in _COLUMNS:
        column = getattr(columns, name)
        if column is None:
            continue
        path = stem.with_name(f"{stem.name}.{name}.npy")
        np.save(path, np.asarray(column)[order])
        arrays[name] = np.load(path, mmap_mode="r")
    return _Run(columns.meter_ids, arrays)


def _merge(runs: list[_Run], chunk_rows: int, min_block_rows: int) -> Iterator[ReadingColumns]:
    """Merge time-sorted runs into chunks of at least ``chunk_rows`` (the last may be short)."""
    counted = all("count" in run.columns for run in runs)
    if all(a.ts[-1] <= b.ts[0] for a, b in itertools.pairwise(runs)):
        for index, run in enumerate(runs):  # already in time order: each run is a chunk
            yield _gather(runs, {index: (0, len(run))}, counted)
        return
    merge = _Merge(runs, block=max(chunk_rows // len(runs), min_block_rows))
    while merge.step():
        if merge.pending_rows() >= chunk_rows:
            yield _gather(runs, merge.pending, counted)
            merge.pending = {}
    if merge.pending:
        yield _gather(runs, merge.pending, counted)


class _Merge:
    """A K-way merge by time that takes a block of rows from every run per step."""

    def __init__(self, runs: list[_Run], block: int) -> None:
        self.runs = runs
        self.block = block
        self.cursor = [0] * len(runs)
        self.pending: dict[int, tuple[int, int]] = {}
        """Each run's rows taken since the last chunk: one contiguous range per run."""

    def pending_rows(self) -> int:
        return sum(stop - start for start, stop in self.pending.values())

    def step(self) -> bool:
        """Take the next rows in time order into ``pending``; False once every run is done.

        Every run's rows before ``bound`` lie within its next block, so they are all taken, from
        every run. Rows at ``bound`` itself may continue past a block: they are taken only when
        nothing earlier is left, and then all of them at once.
        """
        runs, cursor = self.runs, self.cursor
        live = [i for i, run in enumerate(runs) if cursor[i] < len(run)]
        if not live:
            return False
        ends = {i: min(cursor[i] + self.block, len(runs[i])) for i in live}
        bound = min(int(runs[i].ts[ends[i] - 1]) for i in live)
        if not self._take(ends, bound, "left"):
            self._take({i: len(runs[i]) for i in live}, bound, "right")
        return True

    def _take(self, ends: dict[int, int], bound: int, side: Literal["left", "right"]) -> bool:
        """Take rows below (left) or up to (right) ``bound`` before ``ends``; whether any were."""
        took = False
        for i, stop in ends.items():
            start = self.cursor[i]
            end = start + int(np.searchsorted(self.runs[i].ts[start:stop], bound, side=side))
            if end > start:
                self.pending[i] = (self.pending.get(i, (start, start))[0], end)
                self.cursor[i] = end
                took = True
        return took


def _gather(runs: list[_Run], taken: dict[int, tuple[int, int]], counted: bool) -> ReadingColumns:
    """One chunk from runs' row ranges, rows sorted by time (see :func:`concat` for the ids).

    Ranges are joined in run (file) order and sorted stably, so equal timestamps keep their
    order in the file.
    """
    joined = concat(runs[i].part(*taken[i], counted) for i in sorted(taken))
    order = np.argsort(joined.ts_ms, kind="stable")
    return ReadingColumns(
        meter_ids=joined.meter_ids,
        meter=joined.meter[order],
        channel=joined.channel[order],
        unit=joined.unit[order],
        ts_ms=joined.ts_ms[order],
        value=joined.value[order],
        count=None if joined.count is None else joined.count[order],
    )
