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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from cloud_consumer.detect.episodes import Severity
from cloud_consumer.detect.state import BoolArray, FloatArray, IntArray, SeriesTable, SnapshotError


@dataclass(frozen=True, eq=False)
class Frame:
    """Readings of one evaluation step as numpy columns, mapped to table rows.

    ``rows`` are :class:`SeriesTable` rows (one series per row); ``meter`` indexes ``meter_ids``
    (the batch's meter dictionary) to name each reading's meter; ``channel`` and ``unit`` are
    :mod:`meterlink_wire.vocab` codes (unit 0: not given).
    """

    rows: IntArray
    ts_ms: IntArray
    value: FloatArray
    channel: npt.NDArray[np.uint8]
    unit: npt.NDArray[np.uint8]
    meter: npt.NDArray[np.int32]
    meter_ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.rows.size)

    def take(self, index: IntArray) -> Frame:
        """The readings at ``index`` (same meter dictionary)."""
        return Frame(
            self.rows[index],
            self.ts_ms[index],
            self.value[index],
            self.channel[index],
            self.unit[index],
            self.meter[index],
            self.meter_ids,
        )


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


@runtime_checkable
class Detector(Protocol):
    """A named rule with two verbs: score readings, then learn from them.

    ``name`` is the rule name carried by alerts and episode ids; ``severity`` the severity of its
    alerts. Parameters live in a frozen config dataclass given to the constructor.
    """

    name: str
    severity: Severity

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


class RowCounts:
    """An int64 counter per table row (zero for rows never set), growing with the table.

    The per-series state of run-length rules (consecutive readings over a limit, ...), kept as one
    numpy array indexed by table row so a frame reads and writes it with fancy indexing.
    """

    def __init__(self) -> None:
        self._data = np.zeros(0, dtype=np.int64)

    def _grow(self, needed: int) -> None:
        if needed > self._data.size:
            data = np.zeros(max(needed, 2 * self._data.size, 1024), dtype=np.int64)
            data[: self._data.size] = self._data
            self._data = data

    def get(self, rows: IntArray) -> IntArray:
        """Counter of each row."""
        self._grow(int(rows.max(initial=-1)) + 1)
        return self._data[rows]

    def set(self, rows: IntArray, counts: IntArray) -> None:
        """Set the counter of each row (rows distinct)."""
        self._grow(int(rows.max(initial=-1)) + 1)
        self._data[rows] = counts

    def snapshot(self) -> bytes:
        """Counters up to the last non-zero one, little-endian int64."""
        used = np.flatnonzero(self._data)
        size = int(used[-1]) + 1 if used.size else 0
        return self._data[:size].astype("<i8").tobytes()

    def restore(self, data: bytes) -> None:
        """Load :meth:`snapshot` bytes (SnapshotError if the length or a counter is bad)."""
        if len(data) % 8:
            raise SnapshotError(f"row counters: length {len(data)} is not a multiple of 8")
        counts = np.frombuffer(data, dtype="<i8").astype(np.int64)
        if counts.size and counts.min() < 0:
            raise SnapshotError("row counters: negative counter")
        self._data = np.zeros(0, dtype=np.int64)
        self._grow(counts.size)
        self._data[: counts.size] = counts


def constant(value: float, size: int) -> FloatArray:
    """A threshold as a per-reading evidence column."""
    return np.full(size, value, dtype=np.float64)
