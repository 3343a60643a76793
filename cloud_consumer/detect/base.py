"""The detector interface: a frame of readings in, per-reading scores out (the river model).

A detector has two verbs. :meth:`Detector.score` says, for each reading of a :class:`Frame`, how
anomalous it is and whether the rule's condition holds, judged against the series' rolling window
*before* the window learns the reading; :meth:`Detector.learn` lets a detector update state of its
own afterwards. Deciding is not the detector's business: the engine feeds ``holds`` to an
:class:`~cloud_consumer.detect.episodes.EpisodeTracker`, which opens and resolves episodes. The
rolling window itself (:class:`~cloud_consumer.detect.state.SeriesTable`) is written once and
updated once per step by the engine, never by a detector.

The engine hands a detector frames that hold **at most one reading per series**, in rounds (see
:mod:`cloud_consumer.detect.engine`), so a detector may index its per-row state by ``frame.rows``
without worrying about repeated rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from cloud_consumer.detect.episodes import Severity
from cloud_consumer.detect.state import (
    BoolArray,
    FloatArray,
    IntArray,
    SeriesTable,
    SnapshotError,
    grown_size,
)


@dataclass(frozen=True, eq=False)
class Frame:
    """Readings of one evaluation step as numpy columns, mapped to table rows.

    ``rows`` are :class:`SeriesTable` rows (one series per row); ``meter`` indexes ``meter_ids``
    (the batch's meter dictionary) to name each reading's meter; ``channel`` and ``unit`` are
    :mod:`meterlink_wire.vocab` codes. ``previous`` and ``previous_ts`` are each series' newest
    value and timestamp before the step (NaN and -1 for a series' first reading): most rules
    need them, so the engine reads them from the table once per step (:meth:`with_previous`).
    """

    rows: IntArray
    ts_ms: IntArray
    value: FloatArray
    channel: npt.NDArray[np.uint8]
    unit: npt.NDArray[np.uint8]
    meter: npt.NDArray[np.int32]
    meter_ids: tuple[str, ...]
    previous: FloatArray | None = None
    previous_ts: IntArray | None = None

    def __len__(self) -> int:
        return int(self.rows.size)

    def take(self, index: IntArray) -> Frame:
        """The readings at ``index`` (same meter dictionary; ``previous`` is not carried)."""
        return Frame(
            self.rows[index],
            self.ts_ms[index],
            self.value[index],
            self.channel[index],
            self.unit[index],
            self.meter[index],
            self.meter_ids,
        )

    def with_previous(self, table: SeriesTable) -> Frame:
        """The frame with ``previous``/``previous_ts`` read from ``table`` (before the step)."""
        previous, previous_ts = table.last(self.rows)
        return dataclasses.replace(self, previous=previous, previous_ts=previous_ts)

    def last(self, table: SeriesTable) -> tuple[FloatArray, IntArray]:
        """``(previous, previous_ts)``, read from ``table`` if the engine did not fill them."""
        if self.previous is None or self.previous_ts is None:
            return table.last(self.rows)
        return self.previous, self.previous_ts


_T = TypeVar("_T")


class PerFrame(Generic[_T]):
    """What a rule works out about a frame, computed once for its ``score`` and ``learn``.

    The engine scores a frame, then lets the rule learn the same frame object; the memo
    recognises it by identity (it holds the frame, so the id cannot be reused meanwhile).
    ``learn`` takes the value out: the rule's state changes right after. A rule either computes
    the value where first needed (:meth:`get`, :meth:`take`) or has ``score`` leave it for
    ``learn`` (:meth:`put`, :meth:`pop`).
    """

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._value: _T | None = None

    def get(self, frame: Frame, compute: Callable[[], _T]) -> _T:
        """The value for ``frame``, computed by ``compute`` unless it is held already."""
        if self._frame is not frame or self._value is None:
            self._frame, self._value = frame, compute()
        return self._value

    def take(self, frame: Frame, compute: Callable[[], _T]) -> _T:
        """As :meth:`get`, and forget it."""
        value = self.get(frame, compute)
        self.clear()
        return value

    def put(self, frame: Frame, value: _T) -> None:
        """Hold ``value`` for ``frame`` (replacing what was held)."""
        self._frame, self._value = frame, value

    def pop(self, frame: Frame) -> _T | None:
        """The value held for ``frame`` (None if none, or held for another frame); forget it."""
        value = self._value if self._frame is frame else None
        self.clear()
        return value

    def clear(self) -> None:
        """Forget the held value (state restored from a snapshot invalidates it)."""
        self._frame = None
        self._value = None


@dataclass(frozen=True, eq=False)
class Scores:
    """A detector's verdict on each reading of a frame (parallel arrays).

    ``holds`` says whether the rule's condition holds at the reading; ``score`` is how far it is
    (rule-specific, NaN where it cannot be judged, e.g. a meter's first reading); ``evidence`` maps
    names to per-reading floats (the value, window statistics, the threshold) that become an
    alert's evidence when an episode opens at that reading.
    """

    holds: BoolArray
    score: FloatArray
    evidence: Mapping[str, FloatArray]
    since_ms: IntArray | None = None
    """For retrospective rules (gaps): where ``holds``, the episode spans ``[since_ms, ts]`` and is
    complete at the reading (the engine emits it opened and resolved at once)."""


RuleKind = Literal["rate_of_change", "fault", "data"]
"""What a rule's firing says about the reading, for the quality score: a rate-of-change flag
(-20), a fault (-30), or something about the data stream itself, such as a gap (no penalty on
the reading; interpolated readings carry their own)."""


@runtime_checkable
class Detector(Protocol):
    """A named rule with two verbs: score readings, then learn from them.

    ``name`` is the rule name carried by alerts and episode ids; ``severity`` the severity of its
    alerts; ``kind`` what a firing costs the reading's quality score. Parameters live in a frozen
    config dataclass given to the constructor.
    """

    name: str
    severity: Severity
    kind: RuleKind

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        """Judge each reading against the table as it was before the frame (no state change)."""
        ...

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        """Update the detector's own state with the frame (the engine updates the table after)."""
        ...


@runtime_checkable
class StatefulDetector(Detector, Protocol):
    """A detector with per-series state beyond the table; the engine saves it with its snapshot."""

    def snapshot(self) -> bytes:
        """The detector's state as bytes."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the detector's state by :meth:`snapshot` bytes; damage raises SnapshotError."""
        ...


class RowValues:
    """One value per table row (``fill`` for rows never set), growing with the table.

    The per-series state of a rule (a run's start time, its value, a counter...), kept as one
    numpy array indexed by table row so a frame reads and writes it with fancy indexing. Rows
    past the last one set are implicitly ``fill``, so tables of any size cost nothing until used.
    """

    def __init__(self, dtype: type[np.generic] | str, fill: float | int = 0) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "fiub" or self.dtype.itemsize > 8:
            raise ValueError(f"RowValues holds numbers, not {self.dtype}")
        self.fill = fill
        self._data: npt.NDArray[Any] = np.full(0, fill, dtype=self.dtype)

    def _grow(self, needed: int) -> None:
        if needed > self._data.size:
            data = np.full(
                max(needed, grown_size(self._data.size), 1024), self.fill, dtype=self.dtype
            )
            data[: self._data.size] = self._data
            self._data = data

    def get(self, rows: IntArray) -> npt.NDArray[Any]:
        """Value of each row."""
        try:  # rows inside the array, the usual case: no pass over rows to find the largest
            return self._data[rows]
        except IndexError:
            self._grow(int(rows.max(initial=-1)) + 1)
            return self._data[rows]

    def set(self, rows: IntArray, values: npt.ArrayLike) -> None:
        """Set the value of each row (rows distinct: the engine's frames guarantee it)."""
        try:  # numpy checks every index before it writes any
            self._data[rows] = values
        except IndexError:
            self._grow(int(rows.max(initial=-1)) + 1)
            self._data[rows] = values

    def snapshot(self) -> bytes:
        """Values up to the last row not equal to ``fill``, little-endian."""
        used = np.flatnonzero(self._data != self.dtype.type(self.fill))
        size = int(used[-1]) + 1 if used.size else 0
        return self._data[:size].astype(self.dtype.newbyteorder("<")).tobytes()

    def restore(self, data: bytes) -> None:
        """Load :meth:`snapshot` bytes (SnapshotError if the length is not whole values)."""
        if len(data) % self.dtype.itemsize:
            raise SnapshotError(
                f"row values: length {len(data)} is not a multiple of {self.dtype.itemsize}"
            )
        values = np.frombuffer(data, dtype=self.dtype.newbyteorder("<")).astype(self.dtype)
        self._data = np.full(0, self.fill, dtype=self.dtype)
        self._grow(values.size)
        self._data[: values.size] = values

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return int(self._data.nbytes)


class RowCounts(RowValues):
    """A non-negative int64 counter per table row (zero for rows never set)."""

    def __init__(self) -> None:
        super().__init__(np.int64, 0)

    def restore(self, data: bytes) -> None:
        """Load :meth:`snapshot` bytes (SnapshotError if the length or a counter is bad)."""
        counts = RowValues(np.int64, 0)
        counts.restore(data)
        if counts._data.size and counts._data.min() < 0:
            raise SnapshotError("row counters: negative counter")
        self._data = counts._data


def pack_sections(*sections: bytes) -> bytes:
    """Several byte strings as one: each prefixed with its u64 little-endian length."""
    return b"".join(len(s).to_bytes(8, "little") + s for s in sections)


def unpack_sections(data: bytes, count: int) -> list[bytes]:
    """Split :func:`pack_sections` bytes back into exactly ``count`` sections (SnapshotError)."""
    raw = bytes(data)
    sections: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 8 > len(raw):
            raise SnapshotError("truncated section length")
        size = int.from_bytes(raw[offset : offset + 8], "little")
        offset += 8
        if offset + size > len(raw):
            raise SnapshotError("truncated section")
        sections.append(raw[offset : offset + size])
        offset += size
    if len(sections) != count:
        raise SnapshotError(f"{len(sections)} state sections where {count} were due")
    return sections


def constant(value: float, size: int) -> FloatArray:
    """A threshold as a per-reading evidence column: a read-only view, nothing allocated.

    The views are cached: rules ask for the same few thresholds at the same batch sizes on every
    step, and numpy takes microseconds to build a view where a cache hit takes a dict lookup.
    """
    # The sign is part of the key: -0.0 == 0.0, so they would share an entry otherwise.
    return _constant(float(value), math.copysign(1.0, value), size)


@functools.lru_cache(maxsize=256)
def _constant(value: float, sign: float, size: int) -> FloatArray:
    column: FloatArray = np.broadcast_to(np.float64(value), (size,))
    return column
