"""ReadingBatch: one message's rows as numpy columns, the value every component passes around.

Producers build a batch with :meth:`ReadingBatch.from_rows` (or from numpy columns); it is
validated on construction, so an invalid batch never reaches the encoder. The decoder validates the
same rules vectorised and builds batches without re-checking them.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from meterlink_wire.errors import Reason, WireError, show
from meterlink_wire.vocab import (
    CHANNEL_KNOWN,
    UNIT_KNOWN,
    Channel,
    Unit,
    validate_dictionary,
    validate_gateway_id,
)

MAX_SEQUENCE = 2**63 - 1
"""Largest sequence number: signed 64-bit (Java long, Parquet INT64, DynamoDB number)."""
MAX_TIMESTAMP_MS = 7_258_118_400_000
"""2200-01-01T00:00:00Z in epoch milliseconds: later timestamps are rejected as garbage."""
MAX_WINDOW_S = 86_400
"""Longest aggregation window (one day, the coarsest interval utilities read meters at)."""
MEAN_RTOL = 1e-9
"""Relative slack allowed for ``mean`` outside ``[min, max]``: float rounding of sum / count."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class Kind(StrEnum):
    """Message type: regular window batches, or priority events (raw rows with a reason)."""

    TELEMETRY = "telemetry"
    EVENTS = "events"


class WindowRow(NamedTuple):
    """One row in convenient Python form, for producers and tests (not the decode hot path).

    For a raw reading (``window_s == 0``) count is 1 and min, max, mean and last are the value.
    ``reason`` is set on event rows only. ``delta`` is the register advance within the window for
    counter channels (``energy_import``, ``energy_export``, ``volume``), None where it does not
    apply; it is finite and ``>= 0``.
    """

    meter_id: str
    channel: Channel
    unit: Unit
    start_ms: int
    count: int  # type: ignore[assignment]  # the contract's name; shadows tuple.count
    min: float
    max: float
    mean: float
    last: float
    reason: str | None = None
    delta: float | None = None


def check_int(value: object, field: str, high: int, reason: Reason) -> int:
    """Return ``value`` if it is an int (bool is not) in ``[0, high]``; else raise WireError."""
    if type(value) is not int:
        raise WireError(Reason.BAD_TYPE, f"{field} must be an integer, got {show(value)}")
    if not 0 <= value <= high:
        raise WireError(reason, f"{field} {value} outside [0, {high}]")
    return value


def check_header(
    gateway_id: object, sequence: object, sent_ms: object, window_s: object, kind: object
) -> Kind:
    """Validate the scalar envelope fields of a batch and return its kind."""
    validate_gateway_id(gateway_id)
    check_int(sequence, "seq", MAX_SEQUENCE, Reason.BAD_SEQUENCE)
    check_int(sent_ms, "sent_ms", MAX_TIMESTAMP_MS, Reason.BAD_TIMESTAMP)
    check_int(window_s, "window_s", MAX_WINDOW_S, Reason.BAD_VALUE)
    if not isinstance(kind, str):
        raise WireError(Reason.BAD_TYPE, f"type must be a string, got {show(kind)}")
    try:
        checked = Kind(kind)
    except ValueError:
        raise WireError(Reason.UNKNOWN_TYPE, f"type {show(kind)}") from None
    if checked is Kind.EVENTS and window_s != 0:
        raise WireError(Reason.BAD_VALUE, f"events need window_s 0, got {window_s}")
    return checked


def as_unsigned(values: IntArray) -> npt.NDArray[np.uint64]:
    """Integers as unsigned 64-bit, the same bytes: one ``max`` then checks ``[0, high]``.

    A negative value becomes huge, so it fails the upper bound.
    """
    unsigned: npt.NDArray[np.uint64] = values.astype(np.int64, copy=False).view(np.uint64)
    return unsigned


def _first(bad: npt.NDArray[np.bool_]) -> int:
    return int(np.flatnonzero(bad)[0])


def check_values(
    window_s: int,
    *,
    start_ms: IntArray,
    count: IntArray,
    min_: FloatArray,
    max_: FloatArray,
    mean: FloatArray,
    last: FloatArray,
    delta: FloatArray | None = None,
) -> None:
    """Check the numeric row columns with whole-array numpy operations (no per-row loop).

    A strict test of every rule runs first; only if it fails does a slower pass find the first
    offending row and the reason (and forgive a mean a rounding error outside [min, max]).
    ``delta`` is the optional register-advance column: finite and ``>= 0``.
    """
    if not start_ms.size:
        return
    # Finite min and max plus min <= last <= max and min <= mean <= max imply finite last and
    # mean; NaN fails every comparison.
    valid = (
        as_unsigned(start_ms).max() <= MAX_TIMESTAMP_MS
        and count.min() >= 1
        and np.isfinite(min_).all()
        and np.isfinite(max_).all()
        and ((min_ <= last) & (last <= max_) & (min_ <= mean) & (mean <= max_)).all()
    )
    if valid and window_s == 0:
        valid = ((count == 1) & (min_ == max_) & (mean == min_) & (last == min_)).all()
    if valid and delta is not None:
        # NaN fails both comparisons, so this one pass also proves the column finite.
        valid = ((delta >= 0.0) & (delta < np.inf)).all()
    if not valid:
        _diagnose(
            window_s,
            start_ms=start_ms,
            count=count,
            min_=min_,
            max_=max_,
            mean=mean,
            last=last,
            delta=delta,
        )


def _diagnose(
    window_s: int,
    *,
    start_ms: IntArray,
    count: IntArray,
    min_: FloatArray,
    max_: FloatArray,
    mean: FloatArray,
    last: FloatArray,
    delta: FloatArray | None,
) -> None:
    """Raise the WireError for the first broken rule, if any (the slow path of check_values)."""
    bad = (start_ms < 0) | (start_ms > MAX_TIMESTAMP_MS)
    if bad.any():
        row = _first(bad)
        raise WireError(Reason.BAD_TIMESTAMP, f"rows.start_ms[{row}] = {start_ms[row]}")
    if (count < 1).any():
        row = _first(count < 1)
        raise WireError(Reason.BAD_VALUE, f"rows.count[{row}] = {count[row]}, must be >= 1")
    for name, column in (("min", min_), ("max", max_), ("mean", mean), ("last", last)):
        finite = np.isfinite(column)
        if not finite.all():
            row = _first(~finite)
            raise WireError(Reason.NON_FINITE, f"rows.{name}[{row}] = {column[row]}")
    ordered = (min_ <= last) & (last <= max_)
    if not ordered.all():
        row = _first(~ordered)
        raise WireError(
            Reason.BAD_VALUE,
            f"row {row}: need min <= last <= max, got {min_[row]}, {last[row]}, {max_[row]}",
        )
    slack = MEAN_RTOL * np.maximum(np.abs(min_), np.abs(max_))
    inside = (mean >= min_ - slack) & (mean <= max_ + slack)
    if not inside.all():
        row = _first(~inside)
        raise WireError(
            Reason.BAD_VALUE,
            f"row {row}: mean {mean[row]} outside [min, max] = [{min_[row]}, {max_[row]}]",
        )
    if window_s == 0:
        raw = (count == 1) & (min_ == max_) & (mean == min_) & (last == min_)
        if not raw.all():
            row = _first(~raw)
            raise WireError(
                Reason.BAD_VALUE,
                f"row {row}: window_s 0 (raw readings) needs count 1 and min=max=mean=last",
            )
    if delta is not None:
        finite = np.isfinite(delta)
        if not finite.all():
            row = _first(~finite)
            raise WireError(Reason.NON_FINITE, f"rows.delta[{row}] = {delta[row]}")
        if (delta < 0.0).any():
            row = _first(delta < 0.0)
            raise WireError(Reason.BAD_VALUE, f"rows.delta[{row}] = {delta[row]}, must be >= 0")


def _column(value: object, field: str, dtype: type[np.generic], kinds: str) -> npt.NDArray[Any]:
    """Copy a producer's column to ``dtype``; reject shapes and dtypes that would cast silently."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested sequences
        raise WireError(Reason.BAD_TYPE, f"rows.{field}: {exc}") from exc
    if array.ndim != 1:
        raise WireError(Reason.BAD_TYPE, f"rows.{field} must be one-dimensional")
    if array.size and array.dtype.kind not in kinds:
        raise WireError(Reason.BAD_TYPE, f"rows.{field} has dtype {array.dtype}")
    return array.astype(dtype)  # a copy: the caller cannot change a validated batch later


def _index(
    value: object, field: str, size: int, dtype: type[np.generic], reason: Reason
) -> npt.NDArray[Any]:
    """Copy an index or code column, checking ``0 <= v < size`` before narrowing the dtype."""
    array = _column(value, field, np.int64, "iu")
    if array.size and (array.min() < 0 or array.max() >= size):
        row = _first((array < 0) | (array >= size))
        raise WireError(reason, f"rows.{field}[{row}] = {array[row]}, expected 0..{size - 1}")
    return array.astype(dtype)


def _frozen(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array.setflags(write=False)
    return array


def _redictionary(
    index: npt.NDArray[np.int32], entries: tuple[str, ...]
) -> tuple[npt.NDArray[np.int32], tuple[str, ...]]:
    """Drop dictionary entries no row uses, keeping the order of the rest, and renumber."""
    used = np.zeros(len(entries), dtype=np.bool_)
    used[index] = True
    if used.all():
        return index, entries
    keep = np.flatnonzero(used)
    remap = np.zeros(len(entries), dtype=np.int32)
    remap[keep] = np.arange(keep.size, dtype=np.int32)
    return remap[index], tuple(entries[i] for i in keep.tolist())


def _same_floats(a: FloatArray, b: FloatArray) -> bool:
    # Compare bit patterns: exact, and tells -0.0 from 0.0.
    return a.shape == b.shape and bool(np.array_equal(a.view(np.int64), b.view(np.int64)))


@dataclass(frozen=True, eq=False, repr=False)
class ReadingBatch:
    """The rows of one wire message, as numpy columns (all read-only, all the same length).

    ``meter`` indexes ``meters``; ``channel`` and ``unit`` hold global :class:`Channel` and
    :class:`Unit` codes; ``reason`` (events only) indexes ``reasons``. ``delta`` is the optional
    register-advance column (None when the message has none). Construction validates everything
    ``decode`` would (ids, lengths, indices, ranges, finiteness, min <= last <= max, delta >= 0)
    and raises WireError, so whatever can be built can be encoded and decoded again.
    """

    gateway_id: str
    sequence: int
    sent_ms: int
    window_s: int
    kind: Kind
    meters: tuple[str, ...]
    meter: npt.NDArray[np.int32]
    channel: npt.NDArray[np.uint8]
    unit: npt.NDArray[np.uint8]
    start_ms: npt.NDArray[np.int64]
    count: npt.NDArray[np.int64]
    min: npt.NDArray[np.float64]
    max: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    reasons: tuple[str, ...] = ()
    reason: npt.NDArray[np.int32] | None = None
    delta: npt.NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        kind = check_header(self.gateway_id, self.sequence, self.sent_ms, self.window_s, self.kind)
        meters = validate_dictionary(self.meters, "meters", Reason.BAD_ID)
        columns: dict[str, npt.NDArray[Any]] = {
            "meter": _index(self.meter, "meter", len(meters), np.int32, Reason.BAD_INDEX),
            "channel": _index(self.channel, "channel", 256, np.uint8, Reason.UNKNOWN_CHANNEL),
            "unit": _index(self.unit, "unit", 256, np.uint8, Reason.UNKNOWN_UNIT),
            "start_ms": _column(self.start_ms, "start_ms", np.int64, "iu"),
            "count": _column(self.count, "count", np.int64, "iu"),
            "min": _column(self.min, "min", np.float64, "iuf"),
            "max": _column(self.max, "max", np.float64, "iuf"),
            "mean": _column(self.mean, "mean", np.float64, "iuf"),
            "last": _column(self.last, "last", np.float64, "iuf"),
        }
        reasons: tuple[str, ...] = ()
        if kind is Kind.EVENTS:
            reasons = validate_dictionary(self.reasons, "reasons", Reason.BAD_VALUE)
            if self.reason is None:
                raise WireError(Reason.MISSING_FIELD, "events need a rows.reason column")
            columns["reason"] = _index(
                self.reason, "reason", len(reasons), np.int32, Reason.BAD_INDEX
            )
        elif self.reasons or self.reason is not None:
            raise WireError(Reason.BAD_VALUE, "only events carry reasons")
        if self.delta is not None:
            columns["delta"] = _column(self.delta, "delta", np.float64, "iuf")
        rows = len(columns["meter"])
        for name, column in columns.items():
            if len(column) != rows:
                raise WireError(
                    Reason.COLUMN_LENGTH,
                    f"rows.{name} has {len(column)} values, expected {rows}",
                )
        for name, known, reason in (
            ("channel", CHANNEL_KNOWN, Reason.UNKNOWN_CHANNEL),
            ("unit", UNIT_KNOWN, Reason.UNKNOWN_UNIT),
        ):
            valid = known[columns[name]]
            if not valid.all():
                row = _first(~valid)
                raise WireError(reason, f"rows.{name}[{row}] = code {columns[name][row]}")
        check_values(
            self.window_s,
            start_ms=columns["start_ms"],
            count=columns["count"],
            min_=columns["min"],
            max_=columns["max"],
            mean=columns["mean"],
            last=columns["last"],
            delta=columns.get("delta"),
        )
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "meters", meters)
        object.__setattr__(self, "reasons", reasons)
        for name, column in columns.items():
            object.__setattr__(self, name, _frozen(column))

    @classmethod
    def _unchecked(
        cls,
        *,
        gateway_id: str,
        sequence: int,
        sent_ms: int,
        window_s: int,
        kind: Kind,
        meters: tuple[str, ...],
        meter: npt.NDArray[np.int32],
        channel: npt.NDArray[np.uint8],
        unit: npt.NDArray[np.uint8],
        start_ms: npt.NDArray[np.int64],
        count: npt.NDArray[np.int64],
        min: npt.NDArray[np.float64],
        max: npt.NDArray[np.float64],
        mean: npt.NDArray[np.float64],
        last: npt.NDArray[np.float64],
        reasons: tuple[str, ...] = (),
        reason: npt.NDArray[np.int32] | None = None,
        delta: npt.NDArray[np.float64] | None = None,
    ) -> ReadingBatch:
        """Build a batch from columns that were just validated: no checks, no copies.

        For this package only (the decoder, slicing, concat); arrays are frozen here.
        """
        self = object.__new__(cls)
        fields: dict[str, object] = {
            "gateway_id": gateway_id,
            "sequence": sequence,
            "sent_ms": sent_ms,
            "window_s": window_s,
            "kind": kind,
            "meters": meters,
            "meter": _frozen(meter),
            "channel": _frozen(channel),
            "unit": _frozen(unit),
            "start_ms": _frozen(start_ms),
            "count": _frozen(count),
            "min": _frozen(min),
            "max": _frozen(max),
            "mean": _frozen(mean),
            "last": _frozen(last),
            "reasons": reasons,
            "reason": None if reason is None else _frozen(reason),
            "delta": None if delta is None else _frozen(delta),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        return self

    @classmethod
    def from_rows(
        cls,
        gateway_id: str,
        sequence: int,
        sent_ms: int,
        window_s: int,
        rows: Iterable[WindowRow],
        *,
        kind: Kind = Kind.TELEMETRY,
    ) -> ReadingBatch:
        """Build a batch from row tuples; meters and reasons are numbered by first appearance.

        The batch has a ``delta`` column if any row's ``delta`` is not None; rows without one
        then get 0.0 (no register advance).
        """
        meters: dict[str, int] = {}
        reasons: dict[str, int] = {}
        meter: list[int] = []
        channel: list[int] = []
        unit: list[int] = []
        start_ms: list[int] = []
        count: list[int] = []
        min_: list[float] = []
        max_: list[float] = []
        mean: list[float] = []
        last: list[float] = []
        reason: list[int] = []
        delta: list[float] = []
        has_delta = False
        for row in rows:
            meter.append(meters.setdefault(row.meter_id, len(meters)))
            channel.append(int(row.channel))
            unit.append(int(row.unit))
            start_ms.append(row.start_ms)
            count.append(row.count)
            min_.append(row.min)
            max_.append(row.max)
            mean.append(row.mean)
            last.append(row.last)
            if row.reason is not None:
                reason.append(reasons.setdefault(row.reason, len(reasons)))
            if row.delta is None:
                delta.append(0.0)
            else:
                delta.append(row.delta)
                has_delta = True
        is_events = kind == Kind.EVENTS
        if is_events and len(reason) != len(meter):
            raise WireError(Reason.MISSING_FIELD, "every event row needs a reason")
        if not is_events and reason:
            raise WireError(Reason.BAD_VALUE, "only event rows carry a reason")
        return cls(
            gateway_id=gateway_id,
            sequence=sequence,
            sent_ms=sent_ms,
            window_s=window_s,
            kind=kind,
            meters=tuple(meters),
            meter=np.asarray(meter, dtype=np.int64),
            channel=np.asarray(channel, dtype=np.int64),
            unit=np.asarray(unit, dtype=np.int64),
            start_ms=np.asarray(start_ms),
            count=np.asarray(count),
            min=np.asarray(min_),
            max=np.asarray(max_),
            mean=np.asarray(mean),
            last=np.asarray(last),
            reasons=tuple(reasons),
            reason=np.asarray(reason, dtype=np.int64) if is_events else None,
            delta=np.asarray(delta) if has_delta else None,
        )

    def __len__(self) -> int:
        return len(self.meter)

    def __repr__(self) -> str:
        return (
            f"ReadingBatch(gateway_id={self.gateway_id!r}, sequence={self.sequence}, "
            f"kind={self.kind.value}, window_s={self.window_s}, rows={len(self)}, "
            f"meters={len(self.meters)})"
        )

    def rows(self) -> list[WindowRow]:
        """Return the rows as tuples (for tests and tools; allocates a Python object per value).

        ``delta`` is a float on every row if the batch has the column, else None.
        """
        reasons: list[str | None] = (
            [self.reasons[i] for i in self.reason.tolist()]
            if self.reason is not None
            else [None] * len(self)
        )
        deltas: list[float | None] = (
            self.delta.tolist() if self.delta is not None else [None] * len(self)
        )
        return [
            WindowRow(self.meters[m], Channel(c), Unit(u), s, n, lo, hi, avg, end, why, rise)
            for m, c, u, s, n, lo, hi, avg, end, why, rise in zip(
                self.meter.tolist(),
                self.channel.tolist(),
                self.unit.tolist(),
                self.start_ms.tolist(),
                self.count.tolist(),
                self.min.tolist(),
                self.max.tolist(),
                self.mean.tolist(),
                self.last.tolist(),
                reasons,
                deltas,
                strict=True,
            )
        ]

    def slice(self, start: int, stop: int) -> ReadingBatch:
        """Return rows ``start:stop`` (Python slice rules) as a batch with the same header.

        Its dictionaries hold only the meters and reasons those rows use.
        """
        window = builtins.slice(start, stop)
        meter, meters = _redictionary(self.meter[window], self.meters)
        reason: npt.NDArray[np.int32] | None = None
        reasons: tuple[str, ...] = ()
        if self.reason is not None:
            reason, reasons = _redictionary(self.reason[window], self.reasons)
        return ReadingBatch._unchecked(
            gateway_id=self.gateway_id,
            sequence=self.sequence,
            sent_ms=self.sent_ms,
            window_s=self.window_s,
            kind=self.kind,
            meters=meters,
            meter=meter,
            channel=self.channel[window],
            unit=self.unit[window],
            start_ms=self.start_ms[window],
            count=self.count[window],
            min=self.min[window],
            max=self.max[window],
            mean=self.mean[window],
            last=self.last[window],
            reasons=reasons,
            reason=reason,
            delta=None if self.delta is None else self.delta[window],
        )

    def with_sequence(self, sequence: int) -> ReadingBatch:
        """Return the same rows under another sequence number (sharing the column arrays)."""
        check_int(sequence, "seq", MAX_SEQUENCE, Reason.BAD_SEQUENCE)
        return ReadingBatch._unchecked(
            gateway_id=self.gateway_id,
            sequence=sequence,
            sent_ms=self.sent_ms,
            window_s=self.window_s,
            kind=self.kind,
            meters=self.meters,
            meter=self.meter,
            channel=self.channel,
            unit=self.unit,
            start_ms=self.start_ms,
            count=self.count,
            min=self.min,
            max=self.max,
            mean=self.mean,
            last=self.last,
            reasons=self.reasons,
            reason=self.reason,
            delta=self.delta,
        )

    @classmethod
    def concat(cls, parts: Sequence[ReadingBatch]) -> ReadingBatch:
        """Join batches of one gateway, kind and window back into one (e.g. split parts).

        The result takes the first part's sequence and sent_ms; dictionaries are merged in order
        of first appearance. It has a ``delta`` column if any part has one (0.0 for rows from
        parts without). Raises ValueError for no parts or parts that do not belong together.
        """
        if not parts:
            raise ValueError("concat needs at least one part")
        first = parts[0]
        for part in parts[1:]:
            if (part.gateway_id, part.kind, part.window_s) != (
                first.gateway_id,
                first.kind,
                first.window_s,
            ):
                raise ValueError(f"cannot concat {part!r} onto {first!r}")
        meters: dict[str, int] = {}
        reasons: dict[str, int] = {}
        meter: list[npt.NDArray[np.int32]] = []
        reason: list[npt.NDArray[np.int32]] = []
        for part in parts:
            remap = np.array([meters.setdefault(m, len(meters)) for m in part.meters], np.int32)
            meter.append(remap[part.meter])
            if part.reason is not None:
                remap = np.array(
                    [reasons.setdefault(r, len(reasons)) for r in part.reasons], np.int32
                )
                reason.append(remap[part.reason])
        return cls._unchecked(
            gateway_id=first.gateway_id,
            sequence=first.sequence,
            sent_ms=first.sent_ms,
            window_s=first.window_s,
            kind=first.kind,
            meters=tuple(meters),
            meter=np.concatenate(meter),
            channel=np.concatenate([p.channel for p in parts]),
            unit=np.concatenate([p.unit for p in parts]),
            start_ms=np.concatenate([p.start_ms for p in parts]),
            count=np.concatenate([p.count for p in parts]),
            min=np.concatenate([p.min for p in parts]),
            max=np.concatenate([p.max for p in parts]),
            mean=np.concatenate([p.mean for p in parts]),
            last=np.concatenate([p.last for p in parts]),
            reasons=tuple(reasons),
            reason=np.concatenate(reason) if first.kind is Kind.EVENTS else None,
            delta=_concat_delta(parts),
        )

    def equals(self, other: object) -> bool:
        """Return True if ``other`` has the same header and exactly the same rows.

        Rows compare by value: meter ids and reasons are resolved through the dictionaries (so
        dictionary order does not matter) and floats compare bit for bit. A batch with a
        ``delta`` column never equals one without, even if every delta is 0.0.
        """
        if not isinstance(other, ReadingBatch):
            return False
        header = (self.gateway_id, self.sequence, self.sent_ms, self.window_s, self.kind)
        same = (
            header == (other.gateway_id, other.sequence, other.sent_ms, other.window_s, other.kind)
            and len(self) == len(other)
            and _resolve(self.meters, self.meter) == _resolve(other.meters, other.meter)
            and _resolve(self.reasons, self.reason) == _resolve(other.reasons, other.reason)
        )
        integers = ("channel", "unit", "start_ms", "count")
        floats = ("min", "max", "mean", "last")
        return (
            same
            and all(np.array_equal(getattr(self, n), getattr(other, n)) for n in integers)
            and all(_same_floats(getattr(self, n), getattr(other, n)) for n in floats)
            and (
                _same_floats(self.delta, other.delta)
                if self.delta is not None and other.delta is not None
                else self.delta is None and other.delta is None
            )
        )


def _resolve(entries: tuple[str, ...], index: npt.NDArray[np.int32] | None) -> list[str] | None:
    return None if index is None else [entries[i] for i in index.tolist()]


def _concat_delta(parts: Sequence[ReadingBatch]) -> npt.NDArray[np.float64] | None:
    """The joined delta column: None if no part has one, else 0.0 for the parts without."""
    if all(p.delta is None for p in parts):
        return None
    return np.concatenate([np.zeros(len(p)) if p.delta is None else p.delta for p in parts])
