"""Hourly analytics: per (meter, channel, unit, hour) statistics and the fleet's peak hours.

Everything is whole-array numpy (a sort-based group-by and ``ufunc.reduceat``); the only Python
loops run once per meter id or per day, never per reading. Aggregates are mergeable, so a file or
a stream is aggregated chunk by chunk and partial hours combined (count, min and max exactly,
sums up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from cloud_consumer.detect.state import run_ranks, run_starts
from cloud_consumer.replay_input import ReadingColumns
from meterlink_wire.vocab import Channel, Unit

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
"""One UTC clock hour in ms (epoch ms // HOUR_MS is the hour index)."""
DAY_MS = 86_400_000

POWER_TO_KW: dict[Unit, float] = {Unit.W: 1e-3, Unit.KW: 1.0, Unit.MW: 1e3}
"""Scale from a power unit to kW, for consumption; other units do not count as power."""

Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]
UInt8Array = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class HourlyAggregates:
    """Statistics per (meter, channel, unit, hour start), as numpy columns of equal length.

    Canonical form: ``meter_ids`` holds the meters that have rows, sorted; rows are sorted by
    (meter, channel, unit, hour), one per key, so two aggregates of the same readings have the
    same rows whatever the chunking.
    The unit is part of the key so a meter reporting in W and in kW is never averaged across
    units. Kept per row: ``count``, ``total`` (sum of values), ``m2`` (sum of squared deviations
    from the hour's mean), ``min`` and ``max`` -- enough to merge partial hours exactly. ``m2``
    stands in for a plain sum of squares, whose ``sumsq/n - mean**2`` cancels catastrophically
    for large values with small spread (an energy register at 1e6 kWh moving by 0.1).
    """

    meter_ids: tuple[str, ...]
    meter: Int32Array
    channel: UInt8Array
    unit: UInt8Array
    hour_ms: Int64Array
    count: Int64Array
    total: FloatArray
    m2: FloatArray
    min: FloatArray
    max: FloatArray

    def __len__(self) -> int:
        return len(self.meter)

    @property
    def avg(self) -> FloatArray:
        """Mean value of each hour."""
        return self.total / self.count

    @property
    def stddev(self) -> FloatArray:
        """Population standard deviation of each hour: divides by count, so one reading gives 0."""
        return np.sqrt(self.m2 / self.count)

    def meter_names(self) -> list[str]:
        """Each row's meter id (a Python object per row: for tests and tools)."""
        return [self.meter_ids[i] for i in self.meter.tolist()]

    @classmethod
    def empty(cls) -> HourlyAggregates:
        """Aggregates of no readings (the identity of :meth:`merge`)."""
        nothing = np.empty(0)
        return _combine(
            (),
            meter=np.empty(0, np.int32),
            channel=np.empty(0, np.uint8),
            unit=np.empty(0, np.uint8),
            hour_ms=np.empty(0, np.int64),
            count=np.empty(0, np.int64),
            total=nothing,
            m2=nothing,
            low=nothing,
            high=nothing,
        )

    def merge(self, other: HourlyAggregates) -> HourlyAggregates:
        """Combine with another chunk's aggregates; hours present in both are joined.

        Count, min and max combine exactly; total and m2 (Chan et al.'s parallel variance) up to
        float rounding, as any regrouping of a float sum does.
        """
        ids = tuple(sorted(set(self.meter_ids) | set(other.meter_ids)))
        position = {meter_id: i for i, meter_id in enumerate(ids)}
        parts = (self, other)
        meter = [
            np.array([position[m] for m in p.meter_ids], dtype=np.int32)[p.meter]
            if len(p)
            else np.empty(0, np.int32)
            for p in parts
        ]
        return _combine(
            ids,
            meter=np.concatenate(meter),
            channel=np.concatenate([p.channel for p in parts]),
            unit=np.concatenate([p.unit for p in parts]),
            hour_ms=np.concatenate([p.hour_ms for p in parts]),
            count=np.concatenate([p.count for p in parts]),
            total=np.concatenate([p.total for p in parts]),
            m2=np.concatenate([p.m2 for p in parts]),
            low=np.concatenate([p.min for p in parts]),
            high=np.concatenate([p.max for p in parts]),
        )


_HOUR_BITS = 21  # hours since 1970 up to 2200 (MAX_TIMESTAMP_MS) fit in 21 bits
_METER_BITS = 63 - 8 - 8 - _HOUR_BITS


def _groups(
    meter: Int32Array, channel: UInt8Array, unit: UInt8Array, hour_ms: Int64Array
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """Sort order by (meter, channel, unit, hour) and, in that order, where each group starts.

    The four keys are packed into one int64 when they fit (one stable argsort and one
    comparison; hourly() ran about 20 % faster than with a four-key lexsort); else lexsort.
    """
    hour = hour_ms // HOUR_MS
    if (
        meter.min() >= 0
        and int(meter.max()) < 1 << _METER_BITS
        and hour.min() >= 0
        and int(hour.max()) < 1 << _HOUR_BITS
    ):
        key = (
            (meter.astype(np.int64) << (16 + _HOUR_BITS))
            | (channel.astype(np.int64) << (8 + _HOUR_BITS))
            | (unit.astype(np.int64) << _HOUR_BITS)
            | hour
        )
        order = np.argsort(key, kind="stable")
        key = key[order]
        return run_starts(key), order
    order = np.lexsort((hour, unit, channel, meter))
    meter, channel, unit, hour = meter[order], channel[order], unit[order], hour[order]
    change = np.empty(len(meter), dtype=np.bool_)
    change[0] = True
    change[1:] = (
        (meter[1:] != meter[:-1])
        | (channel[1:] != channel[:-1])
        | (unit[1:] != unit[:-1])
        | (hour[1:] != hour[:-1])
    )
    return change, order


def _combine(
    meter_ids: tuple[str, ...],
    *,
    meter: Int32Array,
    channel: UInt8Array,
    unit: UInt8Array,
    hour_ms: Int64Array,
    count: Int64Array,
    total: FloatArray,
    m2: FloatArray,
    low: FloatArray,
    high: FloatArray,
) -> HourlyAggregates:
    """Group partial rows by key and combine them (``meter_ids`` must already be sorted).

    A single reading is the partial (count 1, total x, m2 0, min = max = x), so this one
    function both aggregates raw readings and merges aggregates. Per group:
    ``m2 = sum(m2_i) + sum(n_i * (mean_i - mean)**2)``, which for single readings is the
    two-pass ``sum((x - mean)**2)``.
    """
    if not len(meter):
        return HourlyAggregates(
            meter_ids=meter_ids,
            meter=meter.astype(np.int32),
            channel=channel.astype(np.uint8),
            unit=unit.astype(np.uint8),
            hour_ms=hour_ms.astype(np.int64),
            count=count.astype(np.int64),
            total=total.astype(np.float64),
            m2=m2.astype(np.float64),
            min=low.astype(np.float64),
            max=high.astype(np.float64),
        )
    change, order = _groups(meter, channel, unit, hour_ms)
    meter, channel, unit, hour_ms = meter[order], channel[order], unit[order], hour_ms[order]
    count, total, m2, low, high = count[order], total[order], m2[order], low[order], high[order]
    starts = np.flatnonzero(change)
    group = np.cumsum(change) - 1
    n = np.add.reduceat(count, starts)
    sums = np.add.reduceat(total, starts)
    deviation = total / count - (sums / n)[group]
    return HourlyAggregates(
        meter_ids=meter_ids,
        meter=meter[starts],
        channel=channel[starts],
        unit=unit[starts],
        hour_ms=hour_ms[starts],
        count=n,
        total=sums,
        m2=np.add.reduceat(m2 + count * deviation * deviation, starts),
        min=np.minimum.reduceat(low, starts),
        max=np.maximum.reduceat(high, starts),
    )


def hourly(columns: ReadingColumns) -> HourlyAggregates:
    """Aggregate readings per (meter, channel, unit, UTC hour start).

    Gives count, avg, min, max and population stddev (see :class:`HourlyAggregates`). Every
    row counts as one reading, including wire window rows (whose ``count`` is ignored: their
    value is already a mean and their spread is unknown). Merge the results of several chunks
    with :meth:`HourlyAggregates.merge`.
    """
    ids = columns.meter_ids
    used = np.zeros(len(ids), dtype=np.bool_)
    used[columns.meter] = True
    # Canonical dictionary: only meters with readings, sorted (a loop per meter, not reading);
    # a dictionary joined from messages may hold an id at several positions.
    positions = np.flatnonzero(used).tolist()
    names = sorted({ids[i] for i in positions})
    code = {name: k for k, name in enumerate(names)}
    rank = np.zeros(len(ids), dtype=np.int32)
    rank[positions] = [code[ids[i]] for i in positions]
    size = len(columns)
    value = columns.value.astype(np.float64, copy=False)
    ts_ms = columns.ts_ms.astype(np.int64, copy=False)
    return _combine(
        tuple(names),
        meter=rank[columns.meter] if size else np.empty(0, np.int32),
        channel=columns.channel,
        unit=columns.unit,
        hour_ms=ts_ms - ts_ms % HOUR_MS,
        count=np.ones(size, dtype=np.int64),
        total=value,
        m2=np.zeros(size),
        low=value,
        high=value,
    )


def fleet_peak_hours(
    aggregates: HourlyAggregates, *, top: int = 3
) -> dict[str, list[tuple[int, float]]]:
    """The ``top`` hours of highest fleet consumption on each UTC day.

    Consumption of a meter in an hour is its average power in kW times one hour (kWh), summed
    over meters: rows of channel ``power`` in W, kW or MW only. Energy registers are left out
    (a register's within-hour max - min misses the advance between hours), and so are rows of
    unknown unit (the engine standardises units before aggregating). Averaging readings assumes
    they are evenly spaced within the hour. Returns ``{"YYYY-MM-DD": [(hour_start_ms, kwh),
    ...]}`` with days ascending and each day's hours by consumption descending (earlier hour
    first on a tie); days without power readings are absent.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    scale = np.zeros(256)
    for unit, factor in POWER_TO_KW.items():
        scale[unit] = factor
    power = (aggregates.channel == Channel.POWER) & (scale[aggregates.unit] > 0)
    if not power.any():
        return {}
    kwh = aggregates.avg[power] * scale[aggregates.unit[power]]
    hours, which = np.unique(aggregates.hour_ms[power], return_inverse=True)
    totals = np.bincount(which, weights=kwh, minlength=len(hours))
    days = hours // DAY_MS
    order = np.lexsort((hours, -totals, days))
    hours, totals, days = hours[order], totals[order], days[order]
    keep = run_ranks(run_starts(days)) < top
    result: dict[str, list[tuple[int, float]]] = {}
    for day, hour, total in zip(
        days[keep].tolist(), hours[keep].tolist(), totals[keep].tolist(), strict=True
    ):
        date = datetime.fromtimestamp(day * DAY_MS / 1000, UTC).date().isoformat()
        result.setdefault(date, []).append((hour, total))
    return result
