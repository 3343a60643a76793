"""Flatline rules: a stuck (frozen) value, a run of zero consumption, abnormally low variance.

All three come from VEE (validation, estimation and editing) of interval meter data. The
*stuck/frozen-read check* flags a register or sensor reporting exactly the same value for a day or
more (a frozen register, a dead sensor, a meter repeating its last good read); the
*zero-consumption check* flags a consumption channel reading zero for two days or more (a
bypassed or stopped meter, a broken CT clamp) unless the property is known to be vacant; the
*low-variance check* flags a series whose coefficient of variation over a week is implausibly
small (real demand fluctuates; a near-flat week points at a clamped, averaged or synthesised
signal even when jitter defeats the exact stuck check).

Per-series memory (default configs, one table row): stuck value 8 B (run start), zero run 9 B
(run start, vacancy cache), low variance ``16 + 28 * days`` B (212 B at 7 days): **229 B** in
all. The value a run repeats is not stored: it is the table's last value of the series
(:meth:`~cloud_consumer.detect.state.SeriesTable.last`, NaN before a series' first reading),
since a run of equal values continues exactly when a reading equals the reading before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_consumer.analytics import DAY_MS, HOUR_MS
from cloud_consumer.detect.base import (
    Frame,
    PerFrame,
    RowValues,
    RuleKind,
    Scores,
    constant,
    pack_sections,
    unpack_sections,
)
from cloud_consumer.detect.episodes import Severity
from cloud_consumer.detect.state import (
    BoolArray,
    FloatArray,
    IntArray,
    SeriesTable,
    SnapshotError,
    grown_size,
)
from meterlink_wire.vocab import Channel

_UNKNOWN, _VACANT, _OCCUPIED = 0, 1, 2


def _channel_mask(channels: Iterable[int]) -> BoolArray:
    """Lookup table indexed by channel code: True for the codes a rule applies to."""
    codes = [int(code) for code in channels]
    if any(not 0 <= code <= 255 for code in codes):
        raise ValueError(f"channel codes must be in [0, 255], got {sorted(codes)}")
    mask = np.zeros(256, dtype=np.bool_)
    mask[codes] = True
    return mask


def _check_duration(min_duration_ms: int) -> None:
    if min_duration_ms <= 0:
        raise ValueError(f"min_duration_ms must be positive, got {min_duration_ms}")


def _spread(values: npt.NDArray[Any], index: IntArray, size: int) -> npt.NDArray[Any]:
    """``values`` of the readings at ``index`` as a column of a frame of ``size`` readings.

    The other readings get NaN (False in a boolean column). When ``index`` covers the frame (it
    is then ``0..size-1``, the usual case) ``values`` is that column: nothing to allocate.
    """
    if index.size == size:
        return values
    column = np.full(size, False if values.dtype == np.bool_ else np.nan, dtype=values.dtype)
    column[index] = values
    return column


def _load_row_values(dtype: type[np.generic], data: bytes) -> RowValues:
    """A fresh :class:`RowValues` (fill 0) loaded from snapshot bytes (SnapshotError if bad)."""
    values = RowValues(dtype, 0)
    values.restore(data)
    return values


class _RowMatrix:
    """``width`` numbers per table row (zero for rows never set), growing with the table.

    :class:`~cloud_consumer.detect.base.RowValues` with a second axis: a rule's per-row ring of
    buckets, read whole (``get``) and written one cell per row (``put``).
    """

    def __init__(self, dtype: type[np.generic], width: int) -> None:
        self.dtype = np.dtype(dtype)
        self.width = width
        self._data: npt.NDArray[Any] = np.zeros((0, width), dtype=self.dtype)

    def _grow(self, needed: int) -> None:
        size = self._data.shape[0]
        if needed > size:
            data = np.zeros((max(needed, grown_size(size), 1024), self.width), dtype=self.dtype)
            data[:size] = self._data
            self._data = data

    def get(self, rows: IntArray) -> npt.NDArray[Any]:
        """The ``(len(rows), width)`` values of each row (a copy)."""
        try:  # as RowValues: grow only when a row is past the end
            return self._data[rows]
        except IndexError:
            self._grow(int(rows.max(initial=-1)) + 1)
            return self._data[rows]

    def cell(self, rows: IntArray, columns: IntArray) -> IntArray:
        """Where cell ``(row, column)`` of each row lies in the row-major data.

        The same for every matrix of this width: one index serves several reads and writes,
        each a flat gather (about 3x faster than indexing rows and columns).
        """
        cell: IntArray = rows * self.width + columns
        return cell

    def at(self, cell: IntArray) -> npt.NDArray[Any]:
        """The value in each cell (see :meth:`cell`)."""
        try:  # as RowValues: grow only when a row is past the end
            return self._data.reshape(-1).take(cell)
        except IndexError:
            self._grow(int(cell.max(initial=-1)) // self.width + 1)
            return self._data.reshape(-1).take(cell)

    def put(self, cell: IntArray, values: npt.ArrayLike) -> None:
        """Set each cell (cells distinct: the engine's frames hold one reading per series)."""
        try:
            self._data.reshape(-1)[cell] = values
        except IndexError:
            self._grow(int(cell.max(initial=-1)) // self.width + 1)
            self._data.reshape(-1)[cell] = values

    def snapshot(self) -> bytes:
        """Rows up to the last one not all zero, row-major, little-endian."""
        used = np.flatnonzero(self._data.any(axis=1))
        size = int(used[-1]) + 1 if used.size else 0
        return self._data[:size].astype(self.dtype.newbyteorder("<")).tobytes()

    def restore(self, data: bytes) -> None:
        """Load :meth:`snapshot` bytes (SnapshotError if the length is not whole rows)."""
        row_bytes = self.width * self.dtype.itemsize
        if len(data) % row_bytes:
            raise SnapshotError(f"row matrix: length {len(data)} is not a multiple of {row_bytes}")
        values = np.frombuffer(data, dtype=self.dtype.newbyteorder("<")).astype(self.dtype)
        self._data = np.zeros((0, self.width), dtype=self.dtype)
        self._grow(values.size // self.width)
        self._data[: values.size // self.width] = values.reshape(-1, self.width)

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return int(self._data.nbytes)


# --- stuck value ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StuckValueConfig:
    """Parameters of :class:`StuckValueDetector`."""

    min_duration_ms: int = 24 * HOUR_MS
    """A run of identical values spanning at least this long holds (24 h: the VEE default)."""
    channels: frozenset[int] = frozenset(c.value for c in Channel if c is not Channel.TAMPER)
    """Channel codes the rule applies to (every channel but tamper, a 0/1 flag that rests)."""
    severity: Severity = "warning"


class StuckValueDetector:
    """VEE stuck/frozen-read check: the same non-zero value for ``min_duration_ms`` or longer.

    A *run* is a stretch of consecutive readings of a series with exactly equal values (``==``);
    a reading whose value differs from the series' previous reading (or a series' first reading)
    starts a new run at its timestamp. The condition holds at a reading that continues a run when
    ``ts - run_start >= min_duration_ms`` (so exactly 24 h holds) and the value is not zero (a run
    of zeros is the zero-run rule's business: it never holds here); the first differing reading
    resolves the episode. Per row the rule keeps only the run's start (int64, 8 B); the run's
    value is the table's last value.
    Score: the run's duration in hours (NaN for zeros and other channels). Evidence: ``value``,
    ``run_start_ms``, ``duration_h``, ``threshold_h``.
    """

    name = "stuck_value"
    kind: RuleKind = "fault"

    def __init__(self, config: StuckValueConfig | None = None) -> None:
        self.config = config or StuckValueConfig()
        _check_duration(self.config.min_duration_ms)
        self.severity: Severity = self.config.severity
        self._applies = _channel_mask(self.config.channels)
        self._start = RowValues(np.int64, 0)
        self._steps: PerFrame[tuple[BoolArray, IntArray]] = PerFrame()

    def _runs(self, frame: Frame, table: SeriesTable) -> tuple[BoolArray, IntArray]:
        """Whether the rule applies to each reading, and the start of the run it belongs to.

        Worked out once per frame: ``score`` leaves it for ``learn`` (:class:`PerFrame`).
        """
        applies = self._applies[frame.channel]
        previous, _ = frame.last(table)  # NaN before a series' first reading
        continues = applies & (frame.value == previous)
        start: IntArray = np.where(continues, self._start.get(frame.rows), frame.ts_ms)
        return applies, start

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        applies, start = self._steps.get(frame, lambda: self._runs(frame, table))
        judged = applies & (frame.value != 0)
        duration = frame.ts_ms - start
        hours = np.where(judged, duration / HOUR_MS, np.nan)
        return Scores(
            judged & (duration >= self.config.min_duration_ms),
            hours,
            {
                "value": frame.value,
                "run_start_ms": np.where(judged, start.astype(np.float64), np.nan),
                "duration_h": hours,
                "threshold_h": constant(self.config.min_duration_ms / HOUR_MS, len(frame)),
            },
        )

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        """Keep or restart each series' run (frames hold one reading per series)."""
        applies, start = self._steps.take(frame, lambda: self._runs(frame, table))
        self._start.set(frame.rows[applies], start[applies])

    def snapshot(self) -> bytes:
        """The run starts (little-endian int64 per row)."""
        return self._start.snapshot()

    def restore(self, data: bytes) -> None:
        """Load run starts saved by :meth:`snapshot`."""
        self._start = _load_row_values(np.int64, data)  # validated before replacing
        self._steps.clear()


# --- zero run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZeroRunConfig:
    """Parameters of :class:`ZeroRunDetector`."""

    min_duration_ms: int = 48 * HOUR_MS
    """A run of zero readings spanning at least this long holds (48 h)."""
    channels: frozenset[int] = frozenset({Channel.POWER.value, Channel.FLOW.value})
    """Channel codes the rule applies to: rates of consumption. Energy and volume registers are
    cumulative, so a stopped register repeats a non-zero total: the stuck-value rule's case."""
    vacant_meters: frozenset[str] = frozenset()
    """Meter ids of properties known to be vacant: zero consumption is expected, never holds."""
    severity: Severity = "warning"


class ZeroRunDetector:
    """VEE zero-consumption check: value exactly 0 for ``min_duration_ms`` or longer.

    A *zero run* is a stretch of consecutive zero readings of a series; it starts at its first
    zero reading (a zero after a non-zero reading, or a series' first reading). The condition
    holds at a zero reading with ``ts - run_start >= min_duration_ms`` (exactly 48 h holds) unless
    the meter is in ``vacant_meters``; the first non-zero reading resolves the episode. Per row the
    rule keeps the run's start (int64, 8 B) and a vacancy cache (int8: unknown, vacant, occupied)
    resolved from the whitelist the first time a row's run reaches the threshold, so the Python
    set lookup happens once per series, not per reading (skipped when the whitelist is empty).
    The cache is derived from the config, not learnt: it is filled while scoring and not part
    of the snapshot.
    Score: the zero run's duration in hours (0 for a non-zero reading, NaN for other channels).
    Evidence: ``run_start_ms``, ``duration_h``, ``threshold_h``.
    """

    name = "zero_run"
    kind: RuleKind = "fault"

    def __init__(self, config: ZeroRunConfig | None = None) -> None:
        self.config = config or ZeroRunConfig()
        _check_duration(self.config.min_duration_ms)
        self.severity: Severity = self.config.severity
        self._applies = _channel_mask(self.config.channels)
        self._start = RowValues(np.int64, 0)
        self._vacancy = RowValues(np.int8, _UNKNOWN)
        self._steps: PerFrame[tuple[BoolArray, BoolArray, IntArray]] = PerFrame()

    def _runs(self, frame: Frame, table: SeriesTable) -> tuple[BoolArray, BoolArray, IntArray]:
        """Whether the rule applies, whether the value is zero, the start of the zero run.

        Worked out once per frame: ``score`` leaves it for ``learn`` (:class:`PerFrame`).
        """
        applies = self._applies[frame.channel]
        zero = applies & (frame.value == 0)
        previous, _ = frame.last(table)  # NaN before a series' first reading
        start: IntArray = np.where(zero & (previous == 0), self._start.get(frame.rows), frame.ts_ms)
        return applies, zero, start

    def _vacant(self, frame: Frame, asked: BoolArray) -> BoolArray:
        """Whether the meter of each ``asked`` reading is whitelisted as vacant (cached per row)."""
        vacant = np.zeros(len(frame), dtype=np.bool_)
        if not self.config.vacant_meters:
            return vacant
        index = np.flatnonzero(asked)
        known = self._vacancy.get(frame.rows[index])
        new = np.flatnonzero(known == _UNKNOWN)
        if new.size:
            ids, whitelist = frame.meter_ids, self.config.vacant_meters
            found = [ids[m] in whitelist for m in frame.meter[index[new]].tolist()]
            known[new] = np.where(found, _VACANT, _OCCUPIED)
            self._vacancy.set(frame.rows[index[new]], known[new])
        vacant[index] = known == _VACANT
        return vacant

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        applies, zero, start = self._steps.get(frame, lambda: self._runs(frame, table))
        duration = frame.ts_ms - start
        holds = zero & (duration >= self.config.min_duration_ms)
        if holds.any():
            holds &= ~self._vacant(frame, holds)
        hours = np.where(applies, duration / HOUR_MS, np.nan)
        return Scores(
            holds,
            hours,
            {
                "run_start_ms": np.where(zero, start.astype(np.float64), np.nan),
                "duration_h": hours,
                "threshold_h": constant(self.config.min_duration_ms / HOUR_MS, len(frame)),
            },
        )

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        """Keep or restart each series' zero run (frames hold one reading per series)."""
        _, zero, start = self._steps.take(frame, lambda: self._runs(frame, table))
        self._start.set(frame.rows[zero], start[zero])

    def snapshot(self) -> bytes:
        """The zero-run starts (little-endian int64 per row)."""
        return self._start.snapshot()

    def restore(self, data: bytes) -> None:
        """Load zero-run starts saved by :meth:`snapshot` (the vacancy cache starts afresh)."""
        self._start = _load_row_values(np.int64, data)  # validated before replacing
        self._vacancy = RowValues(np.int8, _UNKNOWN)
        self._steps.clear()


# --- low variance -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LowVarianceConfig:
    """Parameters of :class:`LowVarianceDetector`."""

    days: int = 7
    """UTC calendar days in the window, the current one included; also the observation needed
    before a series is judged (a week: one cycle of the weekly load pattern)."""
    max_cv: float = 0.01
    """A coefficient of variation below this (strictly) holds (1 %)."""
    channels: frozenset[int] = frozenset({Channel.POWER.value, Channel.FLOW.value})
    """Channel codes the rule applies to: demand and flow, which real consumption makes vary."""
    severity: Severity = "info"


class LowVarianceDetector:
    """VEE low-variance check: coefficient of variation over the last ``days`` below ``max_cv``.

    ``cv = std / |mean|`` (population standard deviation) over every reading of the series dated
    in the last ``days`` UTC calendar days, the current reading's day included, and the current
    reading included. Holds when ``cv < max_cv`` (strict), the series has been observed for at
    least ``days`` full days (``ts - first_ts >= days * 86_400_000``) and the mean is not zero (a
    run of zeros is the zero-run rule's business); resolves at the first reading where the
    week's variation is back (or the mean is zero). Calendar days, not a sliding span: just after
    UTC midnight the window is ``days - 1`` whole days plus the new day's first readings (with
    ``days=1``, a single reading, whose cv is 0).

    Per row: the first reading's timestamp and value (the *shift*, 8 + 8 B) and a ring of ``days``
    daily buckets (slot ``day % days``), each with its day number (int64), count (int32), sum and
    sum of squares of ``value - shift`` (float64): ``16 + 28 * days`` B, 212 B at 7 days. Shifting
    by a value of the series keeps ``sumsq / n - (sum / n) ** 2`` free of catastrophic
    cancellation for a series that stays near its level. A reading on a new day resets the slot
    it lands in; buckets dated outside the window (gaps) are ignored, and a bucket with count 0 is
    empty. Sums are accumulated per reading and combined in slot order, so results do not depend
    on batching. Score: cv (NaN until judged). Evidence: ``cv``, ``mean``, ``std``, ``days``,
    ``threshold``.
    """

    name = "low_variance"
    kind: RuleKind = "fault"

    def __init__(self, config: LowVarianceConfig | None = None) -> None:
        self.config = config or LowVarianceConfig()
        if self.config.days < 1:
            raise ValueError(f"days must be >= 1, got {self.config.days}")
        if not self.config.max_cv >= 0:
            raise ValueError(f"max_cv must be >= 0, got {self.config.max_cv}")
        self.severity: Severity = self.config.severity
        self._applies = _channel_mask(self.config.channels)
        self._first = RowValues(np.int64, 0)
        self._shift = RowValues(np.float64, 0)
        days = self.config.days
        self._day = _RowMatrix(np.int64, days)
        self._count = _RowMatrix(np.int32, days)
        self._sum = _RowMatrix(np.float64, days)
        self._squares = _RowMatrix(np.float64, days)
        # Cache, not state (never saved: a pure function of the buckets): per row, the day for
        # which it holds and the count, sum and squares of the window's other days. Those days
        # are complete once a series has a reading of the next day (series arrive in time
        # order), so the window costs O(days) once per row per day, O(1) per reading otherwise.
        self._rest_day = RowValues(np.int64, -1)
        self._rest = (RowValues(np.float64), RowValues(np.float64), RowValues(np.float64))
        self._steps: PerFrame[_Step] = PerFrame()

    def _state(self) -> tuple[RowValues, RowValues, _RowMatrix, _RowMatrix, _RowMatrix, _RowMatrix]:
        return self._first, self._shift, self._day, self._count, self._sum, self._squares

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        config = self.config
        size = len(frame)
        index = np.flatnonzero(self._applies[frame.channel])
        nothing = np.zeros(0)
        judged_cv, level, deviation, below = nothing, nothing, nothing, nothing.astype(np.bool_)
        if index.size:
            step = self._steps.get(frame, lambda: _Step(self, frame, table, index))
            n, total, squares = step.window()
            centre = total / n
            deviation = squares / n
            deviation -= centre * centre
            np.sqrt(np.maximum(deviation, 0.0, out=deviation), out=deviation)
            level = step.shift + centre
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = deviation / np.abs(level)
            judged = (step.ts - step.first >= config.days * DAY_MS) & (level != 0)
            judged_cv = np.where(judged, ratio, np.nan)
            below = judged & (ratio < config.max_cv)
        holds, cv, mean, std = (
            _spread(values, index, size) for values in (below, judged_cv, level, deviation)
        )
        return Scores(
            holds,
            cv,
            {
                "cv": cv,
                "mean": mean,
                "std": std,
                "days": constant(config.days, size),
                "threshold": constant(config.max_cv, size),
            },
        )

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        """Add each reading to its day's bucket (frames hold one reading per series)."""
        step = self._steps.pop(frame)  # the one score worked out, if it did
        if step is None:
            index = np.flatnonzero(self._applies[frame.channel])
            if not index.size:
                return
            step = _Step(self, frame, table, index)
        rows = step.rows
        new = step.new
        if step.stale.size:  # the caches score recomputed (the others hold already)
            stale = rows[step.stale]
            self._rest_day.set(stale, step.day[step.stale])
            for cache, values in zip(self._rest, step.fresh, strict=True):
                cache.set(stale, values)
        self._first.set(rows[new], step.ts[new])
        self._shift.set(rows[new], step.shift[new])
        cell = step.cell
        self._day.put(cell, step.day)
        self._count.put(cell, step.bucket_count)
        self._sum.put(cell, step.bucket_sum)
        self._squares.put(cell, step.bucket_squares)

    def snapshot(self) -> bytes:
        """First timestamps, shifts and the bucket rings, as :func:`pack_sections`."""
        return pack_sections(*(part.snapshot() for part in self._state()))

    def restore(self, data: bytes) -> None:
        """Load state saved by :meth:`snapshot` (validated whole before replacing any)."""
        first, shift, day, count, total, squares = unpack_sections(data, 6)
        days = self.config.days
        matrices = [_RowMatrix(dtype, days) for dtype in (np.int64, np.int32, np.float64)]
        matrices.append(_RowMatrix(np.float64, days))
        for matrix, part in zip(matrices, (day, count, total, squares), strict=True):
            matrix.restore(part)
        if matrices[1]._data.min(initial=0) < 0:
            raise SnapshotError("low variance: negative bucket count")
        self._first = _load_row_values(np.int64, first)
        self._shift = _load_row_values(np.float64, shift)
        self._day, self._count, self._sum, self._squares = matrices
        self._rest_day = RowValues(np.int64, -1)
        self._steps.clear()


class _Step:
    """One frame's readings of the applicable channels against a :class:`LowVarianceDetector`.

    ``bucket_*`` are the reading's day bucket after adding the reading (what ``learn`` stores);
    :meth:`window` aggregates the whole window, the reading included (what ``score`` judges).
    """

    def __init__(
        self, rule: LowVarianceDetector, frame: Frame, table: SeriesTable, index: IntArray
    ) -> None:
        self.rule = rule
        whole = index.size == len(frame)  # every reading applies: the columns as they are
        rows = self.rows = frame.rows if whole else frame.rows[index]
        ts = self.ts = frame.ts_ms if whole else frame.ts_ms[index]
        value = frame.value if whole else frame.value[index]
        new = self.new = table.seen(rows) == 0
        # Gathers are copies: a series' first reading (rare once warm) is written into them,
        # sparing a whole-batch np.where and its temporary per step.
        self.first: IntArray = rule._first.get(rows)
        self.shift: FloatArray = rule._shift.get(rows)
        if new.any():
            self.first[new] = ts[new]
            self.shift[new] = value[new] + 0.0  # no -0.0
        deviation = value - self.shift
        day = self.day = ts // DAY_MS
        slot = self.slot = day % rule.config.days
        cell = self.cell = rule._day.cell(rows, slot)
        count = rule._count.at(cell)
        same = (rule._day.at(cell) == day) & (count > 0)
        self.bucket_count = np.where(same, count, 0) + 1
        # "+ 0.0" turns a -0.0 sum into 0.0, so snapshots are canonical.
        self.bucket_sum = np.where(same, rule._sum.at(cell), 0.0) + deviation + 0.0
        self.bucket_squares = np.where(same, rule._squares.at(cell), 0.0) + deviation * deviation
        # Where :meth:`_rest` found the cache stale, and the sums it worked out there instead.
        self.stale: IntArray = np.zeros(0, dtype=np.int64)
        self.fresh: tuple[FloatArray, ...] = ()

    def window(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Count, sum and sum of squares (of ``value - shift``) over the window with the reading.

        The reading's bucket (``bucket_*``) plus the window's other days (:meth:`_rest`).
        """
        n, s, q = self._rest()  # fresh arrays: added to in place (addition is commutative)
        n += self.bucket_count
        s += self.bucket_sum
        q += self.bucket_squares
        return n, s, q

    def _rest(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Count, sum and squares of the window's other days, from the cache where it is valid.

        The other buckets hold days ``(day - days, day)``; they are added in slot order, a fixed
        summation order, so the result does not depend on batching or on the cache.
        """
        rule, rows, day = self.rule, self.rows, self.day
        n, s, q = (cache.get(rows) for cache in rule._rest)  # copies: stale rows replaced below
        found: tuple[FloatArray, FloatArray, FloatArray] = (n, s, q)
        stale = np.flatnonzero(rule._rest_day.get(rows) != day)
        if stale.size:
            fresh = self._sum_buckets(rows[stale], day[stale], self.slot[stale])
            for target, values in zip(found, fresh, strict=True):
                target[stale] = values
            self.stale, self.fresh = stale, fresh
        return found

    def _sum_buckets(
        self, rows: IntArray, day: IntArray, slot: IntArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        rule = self.rule
        days = rule.config.days
        bucket_day = rule._day.get(rows)
        bucket_count = rule._count.get(rows)
        inside = (bucket_count > 0) & (bucket_day > (day - days)[:, None])
        inside &= bucket_day < day[:, None]
        inside[np.arange(rows.size), slot] = False
        count = np.where(inside, bucket_count, 0).astype(np.float64)
        total = np.where(inside, rule._sum.get(rows), 0.0)
        squares = np.where(inside, rule._squares.get(rows), 0.0)
        n = np.zeros(rows.size)
        s = np.zeros(rows.size)
        q = np.zeros(rows.size)
        for column in range(days):
            n = n + count[:, column]
            s = s + total[:, column]
            q = q + squares[:, column]
        return n, s, q
