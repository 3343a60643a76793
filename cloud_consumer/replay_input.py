"""Streaming readers of reading files for ``cloud-consumer replay``: CSV, JSON lines, wire messages.

Each reader yields ``(ReadingColumns, [RowError, ...])`` one chunk at a time, so a file larger than
memory streams through. A bad row is a :class:`RowError` (1-based line or record number, reason,
text) and is skipped; only a file that cannot be read at all (missing, no or unknown header) raises
:class:`ReplayInputError`. Timestamps: ISO-8601 with ``Z`` or an offset (a naive one is taken as
UTC), or epoch seconds (ms when the number is above 1e12).

Files are read ``chunk_rows`` lines at a time. A CSV block without a bad row is parsed column
by column (C-level string splitting and ``map``, work per distinct timestamp, meter id and unit);
a block holding a bad row, and JSON lines, are parsed row by row (Python, with the same caches),
which finds every bad row exactly. Wire messages are decoded with the vectorised wire codec.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import orjson

from meterlink_wire import MAX_TIMESTAMP_MS, WireError, decode, validate_meter_id
from meterlink_wire.codec import IOT_CORE_MAX_BYTES
from meterlink_wire.vocab import Channel, Unit

DEFAULT_CHUNK_ROWS = 100_000
CSV_RETRY_LINES = 1_000
"""A CSV block with a bad row is retried column-wise in pieces of this many lines; only the
pieces that still fail are parsed row by row."""
TEXT_LIMIT = 200
"""RowError.text keeps at most this many characters of the offending line."""
EPOCH_MS_THRESHOLD = 1e12
"""An epoch number above this is milliseconds (1e12 s would be the year 33658), else seconds."""

CSV_REQUIRED = ("timestamp", "meter_id", "value")
CSV_OPTIONAL = ("unit", "channel")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

# Unit names match case-insensitively: the lowered wire names are all distinct ("MW" has no
# milliwatt twin in the vocabulary).
_UNITS: dict[str, Unit] = {u.wire_name.lower(): u for u in Unit}
_CHANNELS: dict[str, Channel] = {c.wire_name: c for c in Channel}

DEFAULT_CHANNEL: dict[int, Channel] = {
    Unit.W: Channel.POWER,
    Unit.KW: Channel.POWER,
    Unit.MW: Channel.POWER,
    Unit.WH: Channel.ENERGY_IMPORT,
    Unit.KWH: Channel.ENERGY_IMPORT,
    Unit.MWH: Channel.ENERGY_IMPORT,
    Unit.M3: Channel.VOLUME,
    Unit.L: Channel.VOLUME,
    Unit.M3_PER_H: Channel.FLOW,
    Unit.L_PER_MIN: Channel.FLOW,
    Unit.VAR: Channel.REACTIVE_POWER,
    Unit.KVAR: Channel.REACTIVE_POWER,
    Unit.V: Channel.VOLTAGE,
    Unit.A: Channel.CURRENT,
    Unit.HZ: Channel.FREQUENCY,
    Unit.RATIO: Channel.POWER_FACTOR,
    Unit.DEG_C: Channel.TEMPERATURE,
    Unit.BAR: Channel.PRESSURE,
    Unit.KPA: Channel.PRESSURE,
    Unit.FLAG: Channel.TAMPER,
}
"""Channel of a row that names no channel, by its unit code. Units with one obvious channel map
to it; a missing unit (code 0) and reactive energy (varh, kvarh: no channel of their own) fall
back to ``power``, the commonest interval-data channel."""

# Row problem codes: the first word of RowError.reason, stable for counting and tests.
COLUMN_COUNT = "column_count"
NOT_JSON = "not_json"
MISSING_FIELD = "missing_field"
BAD_VALUE = "bad_value"
NON_FINITE = "non_finite"
BAD_TIMESTAMP = "bad_timestamp"
BAD_METER_ID = "bad_meter_id"
UNKNOWN_UNIT = "unknown_unit"
UNKNOWN_CHANNEL = "unknown_channel"
BAD_MESSAGE = "bad_message"
TRUNCATED = "truncated"


class ReplayInputError(Exception):
    """A replay input that cannot be read at all (missing file, bad header); never retriable."""

    retriable = False

    def __init__(self, path: str | Path, reason: str) -> None:
        reason = " ".join(reason.split())  # one line, whatever the file held
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class RowError:
    """One skipped row: 1-based file line (record number for wire files), why, and its text."""

    line: int
    reason: str
    text: str

    def __post_init__(self) -> None:
        if len(self.text) > TEXT_LIMIT:
            object.__setattr__(self, "text", self.text[:TEXT_LIMIT])


@dataclass(frozen=True, eq=False)
class ReadingColumns:
    """A chunk of readings as numpy columns of equal length.

    ``meter`` indexes ``meter_ids`` (the chunk's own dictionary); ``channel`` and ``unit`` are
    :class:`Channel` / :class:`Unit` codes, unit 0 meaning "not given" (the engine infers it
    later). ``count`` is the number of raw readings behind each value (wire window rows); None
    when every value is one reading (CSV, JSON lines). ``dictionaries``, for a chunk joined from
    wire messages, are the messages' own meter dictionaries, whose concatenation is
    ``meter_ids`` (an id may then appear more than once); the detection table maps a dictionary
    it has seen before to its rows without a lookup per meter. Empty otherwise, and then
    ``meter_ids`` holds each id once, in order of first appearance.
    """

    meter_ids: tuple[str, ...]
    meter: npt.NDArray[np.int32]
    channel: npt.NDArray[np.uint8]
    unit: npt.NDArray[np.uint8]
    ts_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    count: npt.NDArray[np.int64] | None = None
    dictionaries: tuple[tuple[str, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.meter)

    def meter_names(self) -> list[str]:
        """Each row's meter id (a Python object per row: for tests and tools)."""
        return [self.meter_ids[i] for i in self.meter.tolist()]


_DEFAULT_CHANNEL_CODES: dict[int, int] = {
    code: DEFAULT_CHANNEL.get(code, Channel.POWER).value for code in range(256)
}


class _RowProblemError(Exception):
    """A row-level data problem (internal: becomes a RowError)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {' '.join(detail.split())}")


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_timestamp(raw: object) -> int:
    """Epoch ms from an ISO-8601 string or an epoch number (seconds, or ms above 1e12).

    Raises ValueError for anything else, or a time outside 1970..2200.
    """
    if isinstance(raw, str):
        text = raw.strip()
        try:
            number: float | None = float(text)
        except ValueError:
            number = None
        if number is None:
            moment = _iso(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)  # naive means UTC
            ms = (moment - _EPOCH) // _MS
        else:
            ms = _epoch_ms(number)
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        ms = _epoch_ms(float(raw))
    else:
        raise ValueError(f"not a timestamp: {_short(raw)}")
    if not 0 <= ms <= MAX_TIMESTAMP_MS:
        raise ValueError(f"timestamp {_short(raw)} outside 1970..2200")
    return ms


def _iso(text: str) -> datetime:
    """``datetime.fromisoformat``, with errors that name the text (Python's may not)."""
    if not text:
        raise ValueError("timestamp is empty")
    try:
        return datetime.fromisoformat(text)
    except ValueError as error:
        reason = str(error)
        if reason.startswith("Invalid isoformat"):
            reason = "neither ISO-8601 nor epoch seconds"
        raise ValueError(f"timestamp {_short(text)}: {reason}") from None


def _epoch_ms(number: float) -> int:
    if not math.isfinite(number):
        raise ValueError(f"timestamp {number}")
    return round(number if number > EPOCH_MS_THRESHOLD else number * 1000.0)


def _number(value: object) -> float:
    """A finite float from a numeric string or JSON number; _RowProblemError otherwise."""
    if isinstance(value, str):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise _RowProblemError(BAD_VALUE, f"value {_short(value)} is not a number") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise _RowProblemError(BAD_VALUE, f"value {_short(value)} is not a number")
    if not math.isfinite(number):
        raise _RowProblemError(NON_FINITE, f"value {_short(value)}")
    return number


_CACHEABLE = (str, int, float)  # exact types: True must not hit the cache entry of 1


class _ChunkBuilder:
    """Accumulates parsed rows of one chunk; caches survive chunks (ids, timestamps, units)."""

    def __init__(self) -> None:
        self._ts_cache: dict[object, int] = {}
        self._valid_ids: set[str] = set()
        self._units: dict[object, int] = {}
        self._channels: dict[object, int] = {}
        self.reset()

    def reset(self) -> None:
        self.ids: dict[str, int] = {}
        self.meter: list[int] = []
        self.channel: list[int] = []
        self.unit: list[int] = []
        self.ts: list[int] = []
        self.value: list[float] = []
        self.errors: list[RowError] = []
        self.parts: list[tuple[npt.NDArray[Any], ...]] = []

    def add(
        self, ts: object, meter_id: object, value: object, unit: object, channel: object
    ) -> None:
        """Parse one row and append it; _RowProblemError for bad data (nothing appended)."""
        ts_ms = self._ts_cache.get(ts) if type(ts) in _CACHEABLE else None
        if ts_ms is None:
            try:
                ts_ms = parse_timestamp(ts)
            except ValueError as exc:
                raise _RowProblemError(BAD_TIMESTAMP, str(exc)) from None
            if len(self._ts_cache) > 1_000_000:  # bound the cache on files of unique times
                self._ts_cache.clear()
            self._ts_cache[ts] = ts_ms
        number = _number(value)
        unit_code = self._units.get(unit) if isinstance(unit, str | None) else None
        if unit_code is None:
            unit_code = self._unit(unit)
        if channel is None or channel == "":
            channel_code = DEFAULT_CHANNEL.get(unit_code, Channel.POWER).value
        else:
            found = self._channels.get(channel) if isinstance(channel, str) else None
            channel_code = found if found is not None else self._channel(channel)
        if isinstance(meter_id, str) and meter_id in self._valid_ids:
            name = meter_id
        else:  # also the path for unhashable JSON values (lists, objects)
            try:
                name = validate_meter_id(meter_id)
            except WireError:
                raise _RowProblemError(BAD_METER_ID, f"meter id {_short(meter_id)}") from None
            self._valid_ids.add(name)
        index = self.ids.setdefault(name, len(self.ids))
        self.meter.append(index)
        self.channel.append(channel_code)
        self.unit.append(unit_code)
        self.ts.append(ts_ms)
        self.value.append(number)

    def add_columns(
        self,
        ts: Sequence[str],
        meter_ids: Sequence[str],
        values: Sequence[str],
        units: Sequence[str] | None,
        channels: Sequence[str] | None,
    ) -> bool:
        """Append whole columns of text fields, if every row is valid; else append nothing.

        The fast path: work per distinct timestamp, meter id, unit and channel, plus one
        C-level ``map(float)`` over the values. On False the caller parses row by row, which
        finds each bad row with its reason and gives the same columns for the good ones.
        """
        try:
            numbers = list(map(float, values))
        except ValueError:
            return False
        # fsum is finite unless some value is NaN/inf (or the sum overflows: then look closer)
        if not math.isfinite(math.fsum(numbers)) and not all(map(math.isfinite, numbers)):
            return False
        cache = self._ts_cache
        if len(cache) > 1_000_000:
            cache.clear()
        try:
            for raw in set(ts).difference(cache):
                cache[raw] = parse_timestamp(raw)
            for meter_id in set(meter_ids).difference(self._valid_ids):
                self._valid_ids.add(validate_meter_id(meter_id))
            unit_of = {u: self._unit(u) for u in set(units)} if units is not None else {}
            channel_of = (
                {c: 0 if c == "" else self._channel(c) for c in set(channels)}
                if channels is not None
                else {}
            )
        except (ValueError, _RowProblemError):  # WireError is a ValueError
            return False
        size = len(values)
        unit_codes = list(map(unit_of.__getitem__, units)) if units is not None else [0] * size
        default = _DEFAULT_CHANNEL_CODES
        if channels is None:
            channel_codes = list(map(default.__getitem__, unit_codes))
        else:
            channel_codes = list(map(channel_of.__getitem__, channels))
            if 0 in channel_of.values():
                channel_codes = [
                    c or default[u] for c, u in zip(channel_codes, unit_codes, strict=True)
                ]
        ids = self.ids
        # dict.fromkeys keeps first-appearance order, so ids number as in the row-wise path
        index = {m: ids.setdefault(m, len(ids)) for m in dict.fromkeys(meter_ids)}
        self._flush()
        self.parts.append(
            (
                np.fromiter(map(index.__getitem__, meter_ids), np.int32, size),
                np.fromiter(channel_codes, np.uint8, size),
                np.fromiter(unit_codes, np.uint8, size),
                np.fromiter(map(cache.__getitem__, ts), np.int64, size),
                np.fromiter(numbers, np.float64, size),
            )
        )
        return True

    def _unit(self, unit: object) -> int:
        if unit is None or unit == "":
            return 0
        if not isinstance(unit, str) or unit.strip().lower() not in _UNITS:
            raise _RowProblemError(UNKNOWN_UNIT, f"unit {_short(unit)}")
        code = _UNITS[unit.strip().lower()].value
        self._units[unit] = code
        return code

    def _channel(self, channel: object) -> int:
        if not isinstance(channel, str) or channel.strip().lower() not in _CHANNELS:
            raise _RowProblemError(UNKNOWN_CHANNEL, f"channel {_short(channel)}")
        code = _CHANNELS[channel.strip().lower()].value
        self._channels[channel] = code
        return code

    def _flush(self) -> None:
        """Move the rows parsed one by one into ``parts``, keeping the row order."""
        if self.meter:
            self.parts.append(
                (
                    np.array(self.meter, dtype=np.int32),
                    np.array(self.channel, dtype=np.uint8),
                    np.array(self.unit, dtype=np.uint8),
                    np.array(self.ts, dtype=np.int64),
                    np.array(self.value, dtype=np.float64),
                )
            )
            self.meter, self.channel, self.unit, self.ts, self.value = [], [], [], [], []

    def take(self) -> tuple[ReadingColumns, list[RowError]]:
        """Return the chunk's columns and errors, and start a new chunk."""
        self._flush()
        parts = self.parts or [
            (
                np.empty(0, np.int32),
                np.empty(0, np.uint8),
                np.empty(0, np.uint8),
                np.empty(0, np.int64),
                np.empty(0),
            )
        ]
        meter, channel, unit, ts_ms, value = (
            part[0] if len(parts) == 1 else np.concatenate(part)
            for part in zip(*parts, strict=True)
        )
        columns = ReadingColumns(
            meter_ids=tuple(self.ids),
            meter=meter,
            channel=channel,
            unit=unit,
            ts_ms=ts_ms,
            value=value,
        )
        errors = self.errors
        self.reset()
        return columns, errors


def _open_text(path: str | Path) -> IO[str]:
    try:
        # utf-8-sig drops a spreadsheet's byte-order mark; undecodable bytes become U+FFFD and
        # then fail the row's own checks instead of aborting the file.
        return open(path, encoding="utf-8-sig", errors="replace", newline="")
    except OSError as exc:
        raise ReplayInputError(path, f"cannot open: {exc.strerror or exc}") from exc


def _blocks(lines: IO[str], path: str | Path, size: int) -> Iterator[list[str]]:
    """Consecutive blocks of ``size`` lines; OSError while reading becomes ReplayInputError."""
    if size < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {size}")
    while True:
        try:
            block = list(itertools.islice(lines, size))
        except OSError as exc:
            raise ReplayInputError(path, f"read failed: {exc.strerror or exc}") from exc
        if not block:
            return
        yield block


@dataclass(frozen=True)
class _CsvLayout:
    """Field positions of a CSV file's columns (None: the column is absent)."""

    width: int
    timestamp: int
    meter_id: int
    value: int
    unit: int | None
    channel: int | None


def _csv_header(path: str | Path, line: str | None) -> _CsvLayout:
    if line is None or not line.strip():
        raise ReplayInputError(path, f"no CSV header (needs {','.join(CSV_REQUIRED)})")
    names = [name.strip().lower() for name in next(csv.reader([line]), [])]
    unknown = [n for n in names if n not in CSV_REQUIRED + CSV_OPTIONAL]
    if unknown:
        raise ReplayInputError(path, f"unknown CSV column {unknown[0]!r} in header")
    if len(set(names)) != len(names):
        raise ReplayInputError(path, "duplicate column in CSV header")
    missing = [n for n in CSV_REQUIRED if n not in names]
    if missing:
        raise ReplayInputError(
            path, f"CSV header lacks {', '.join(missing)} (needs {','.join(CSV_REQUIRED)})"
        )
    where = {name: i for i, name in enumerate(names)}
    return _CsvLayout(
        width=len(names),
        timestamp=where["timestamp"],
        meter_id=where["meter_id"],
        value=where["value"],
        unit=where.get("unit"),
        channel=where.get("channel"),
    )


def _csv_rows(block: list[str]) -> list[list[str]]:
    """One field list per line of ``block`` (``[]`` for a blank line).

    No valid field can hold a newline, so a line never continues a row: parsing line by line
    keeps line numbers exact even when a stray quote would make the csv module join lines.
    """
    rows = list(csv.reader(block))
    if len(rows) == len(block) and all(line.endswith("\n") for line in block[:-1]):
        return rows
    return [next(csv.reader([line]), []) for line in block]


def _csv_columns(block: list[str], width: int) -> list[Sequence[str]] | None:
    """The block's fields column by column if every line has ``width`` fields, else None.

    Lines without quotes (the usual case) are split with C-level string methods, much faster
    than the csv module; a block with a quote or a stray carriage return goes through csv.
    """
    text = "".join(block)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if '"' in text or "\r" in text:
        rows = list(csv.reader(block))
        if len(rows) != len(block) or any(len(fields) != width for fields in rows):
            return None
        return list(zip(*rows, strict=True))
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if len(lines) != len(block) or set(map(str.count, lines, itertools.repeat(","))) != {width - 1}:
        return None
    fields = ",".join(lines).split(",")
    return [fields[i::width] for i in range(width)]


def read_csv(
    path: str | Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[tuple[ReadingColumns, list[RowError]]]:
    """Stream a CSV file as chunks of columns and row errors, ``chunk_rows`` lines at a time.

    The header names ``timestamp``, ``meter_id`` and ``value``, plus optionally ``unit`` and
    ``channel``, in any order (case-insensitive). A row without a channel gets
    :data:`DEFAULT_CHANNEL` of its unit (power for W/kW/MW, energy_import for Wh/kWh/MWh, volume
    for m3/L, flow for m3/h and L/min, ...; power when the unit is missing); an empty unit is
    code 0. Blank lines are skipped silently. Raises ReplayInputError for an unreadable file or a
    missing/unknown header; bad rows come back as RowErrors with their 1-based line numbers.
    """
    with _open_text(path) as handle:
        try:
            header = next(handle, None)
        except OSError as exc:
            raise ReplayInputError(path, f"read failed: {exc.strerror or exc}") from exc
        layout = _csv_header(path, header)
        builder = _ChunkBuilder()
        line = 1
        for block in _blocks(handle, path, chunk_rows):
            if not _csv_fast(builder, block, layout):
                # Retry in small pieces so one bad row costs a piece, not the whole block.
                for at in range(0, len(block), CSV_RETRY_LINES):
                    piece = block[at : at + CSV_RETRY_LINES]
                    if not _csv_fast(builder, piece, layout):
                        _csv_slow(builder, piece, layout, line + at)
            line += len(block)
            yield builder.take()


def _csv_fast(builder: _ChunkBuilder, block: list[str], layout: _CsvLayout) -> bool:
    """Add the block column-wise if all of it is valid; else add nothing and return False."""
    by_column = _csv_columns(block, layout.width)
    return by_column is not None and builder.add_columns(
        by_column[layout.timestamp],
        by_column[layout.meter_id],
        by_column[layout.value],
        None if layout.unit is None else by_column[layout.unit],
        None if layout.channel is None else by_column[layout.channel],
    )


def _csv_slow(builder: _ChunkBuilder, block: list[str], layout: _CsvLayout, line: int) -> None:
    """Add the block row by row, recording each bad row; ``line`` is the line before it."""
    unit_at, channel_at = layout.unit, layout.channel
    for text, fields in zip(block, _csv_rows(block), strict=True):
        line += 1
        if len(fields) != layout.width:
            if fields:
                reason = f"{COLUMN_COUNT}: expected {layout.width} fields, got {len(fields)}"
                builder.errors.append(RowError(line, reason, text.rstrip("\r\n")))
            continue
        try:
            builder.add(
                fields[layout.timestamp],
                fields[layout.meter_id],
                fields[layout.value],
                None if unit_at is None else fields[unit_at],
                None if channel_at is None else fields[channel_at],
            )
        except _RowProblemError as problem:
            builder.errors.append(RowError(line, str(problem), text.rstrip("\r\n")))


_TS_KEYS = ("ts", "timestamp")
_METER_KEYS = ("meter", "meter_id")


def _pick(record: dict[str, Any], keys: tuple[str, ...]) -> object:
    for key in keys:
        if key in record:
            return record[key]
    raise _RowProblemError(MISSING_FIELD, f"needs one of {'|'.join(keys)}")


def read_jsonl(
    path: str | Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[tuple[ReadingColumns, list[RowError]]]:
    """Stream a JSON-lines file, one reading object per line, as chunks like read_csv.

    Keys: ``ts|timestamp``, ``meter|meter_id``, ``value`` and optional ``unit`` and ``channel``
    (null or "" meaning absent).

    Timestamps are ISO strings or epoch numbers (a numeric string also counts); the value must be
    a JSON number. Extra keys are ignored; blank lines are skipped. Same errors as read_csv.
    """
    with _open_text(path) as handle:
        builder = _ChunkBuilder()
        line = 0
        for block in _blocks(handle, path, chunk_rows):
            for text in block:
                line += 1
                if not text.strip():
                    continue
                try:
                    try:
                        record = orjson.loads(text)
                    except orjson.JSONDecodeError as exc:
                        raise _RowProblemError(NOT_JSON, str(exc)) from None
                    if not isinstance(record, dict):
                        raise _RowProblemError(NOT_JSON, f"line holds a {type(record).__name__}")
                    if "value" not in record:
                        raise _RowProblemError(MISSING_FIELD, "needs value")
                    if isinstance(record["value"], str):  # JSON has numbers: a string is a bug
                        raise _RowProblemError(
                            BAD_VALUE, f"value {_short(record['value'])} is a string"
                        )
                    builder.add(
                        _pick(record, _TS_KEYS),
                        _pick(record, _METER_KEYS),
                        record["value"],
                        record.get("unit"),
                        record.get("channel"),
                    )
                except _RowProblemError as problem:
                    builder.errors.append(RowError(line, str(problem), text.rstrip("\r\n")))
            yield builder.take()


class _WireChunk:
    """Decoded wire batches of one chunk, joined into ReadingColumns on ``take``.

    Joined by offsets: each message's dictionary is appended as it is and its meter indices
    shifted, so joining costs no lookup per meter (the dictionaries travel along in
    ``ReadingColumns.dictionaries``).
    """

    def __init__(self) -> None:
        self.dictionaries: list[tuple[str, ...]] = []
        self.offset = 0
        self.meter: list[npt.NDArray[np.int32]] = []
        self.channel: list[npt.NDArray[np.uint8]] = []
        self.unit: list[npt.NDArray[np.uint8]] = []
        self.ts: list[npt.NDArray[np.int64]] = []
        self.value: list[npt.NDArray[np.float64]] = []
        self.count: list[npt.NDArray[np.int64]] = []
        self.rows = 0
        self.errors: list[RowError] = []

    def add(self, data: bytes) -> None:
        batch = decode(data)
        if not len(batch):
            return
        self.dictionaries.append(batch.meters)
        self.meter.append(batch.meter + np.int32(self.offset))
        self.offset += len(batch.meters)
        self.channel.append(batch.channel)
        self.unit.append(batch.unit)
        self.ts.append(batch.start_ms)
        self.value.append(batch.last if batch.window_s == 0 else batch.mean)
        self.count.append(batch.count)
        self.rows += len(batch)

    def take(self) -> tuple[ReadingColumns, list[RowError]]:
        def join(parts: list[npt.NDArray[Any]], dtype: type[np.generic]) -> npt.NDArray[Any]:
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)

        columns = ReadingColumns(
            meter_ids=tuple(itertools.chain.from_iterable(self.dictionaries)),
            meter=join(self.meter, np.int32),
            channel=join(self.channel, np.uint8),
            unit=join(self.unit, np.uint8),
            ts_ms=join(self.ts, np.int64),
            value=join(self.value, np.float64),
            count=join(self.count, np.int64),
            dictionaries=tuple(self.dictionaries),
        )
        return columns, self.errors


_LENGTH_BYTES = 4


_LINE_LIMIT = IOT_CORE_MAX_BYTES + 3  # the largest message, CR LF, and one byte to tell


def _wire_lines(handle: io.BufferedReader) -> Iterator[tuple[bytes | None, str]]:
    """One record per line; a line longer than any message is skipped without holding it whole."""
    while raw := handle.readline(_LINE_LIMIT):
        if len(raw) == _LINE_LIMIT and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = handle.readline(_LINE_LIMIT)
            yield None, f"{BAD_MESSAGE}: line longer than {IOT_CORE_MAX_BYTES} bytes"
            continue
        yield raw.rstrip(b"\r\n"), ""


def _wire_records(handle: io.BufferedReader) -> Iterator[tuple[bytes | None, str]]:
    """Yield ``(payload, "")`` per record, or ``(None, reason)`` for a broken frame.

    Detected by the first byte: ``{`` or whitespace means one JSON envelope per line; anything
    else is 4-byte big-endian length + payload frames. A frame whose length is 0 or exceeds
    the IoT Core message limit, or that is cut short, ends the file: no later frame boundary
    can be trusted.
    """
    first = handle.peek(1)[:1]
    if not first:
        return
    if first in b"{ \t\r\n":
        yield from _wire_lines(handle)
        return
    while True:
        prefix = handle.read(_LENGTH_BYTES)
        if not prefix:
            return
        if len(prefix) < _LENGTH_BYTES:
            yield None, f"{TRUNCATED}: {len(prefix)}-byte length prefix at end of file"
            return
        size = int.from_bytes(prefix, "big")
        if not 0 < size <= IOT_CORE_MAX_BYTES:
            yield None, f"{BAD_MESSAGE}: frame length {size} outside 1..{IOT_CORE_MAX_BYTES}"
            return
        payload = handle.read(size)
        if len(payload) < size:
            yield None, f"{TRUNCATED}: frame of {size} bytes has only {len(payload)}"
            return
        yield payload, ""


def read_wire(
    path: str | Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[tuple[ReadingColumns, list[RowError]]]:
    """Stream a file of wire messages (JSON lines, or length-prefixed frames) as columns.

    Each message is decoded with :func:`meterlink_wire.decode`. Raw rows (``window_s`` 0) give
    their value; window rows give their ``mean``, with ``count`` (readings behind it) in the
    columns' ``count``. Event messages are readings too and are included. A message that does
    not decode is a RowError whose ``line`` is its 1-based record number (the line number, for
    the JSON-lines framing) and whose reason is ``bad_message: <wire reason>: <detail>``.
    A chunk closes once it holds ``chunk_rows`` rows or more (whole messages only).
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ReplayInputError(path, f"cannot open: {exc.strerror or exc}") from exc
    with handle:
        chunk = _WireChunk()
        record = 0
        try:
            for payload, broken in _wire_records(handle):
                record += 1
                if payload is None:
                    chunk.errors.append(RowError(record, broken, ""))
                    continue
                if not payload.strip():
                    continue  # a blank line between JSON envelopes
                try:
                    chunk.add(payload)
                except WireError as exc:
                    text = payload.decode("utf-8", errors="replace")
                    chunk.errors.append(
                        RowError(record, f"{BAD_MESSAGE}: {exc.reason}: {exc.detail}", text)
                    )
                if chunk.rows >= chunk_rows:
                    yield chunk.take()
                    chunk = _WireChunk()
        except OSError as exc:
            raise ReplayInputError(path, f"read failed: {exc.strerror or exc}") from exc
        if chunk.rows or chunk.errors:
            yield chunk.take()


def concat(chunks: Iterable[ReadingColumns]) -> ReadingColumns:
    """Join chunks into one ReadingColumns, each meter id listed once.

    The joined dictionary holds only the ids the rows use, chunk by chunk in each chunk's
    dictionary order: parts cut from large chunks (a replay merge) do not drag in their chunks'
    whole dictionaries, and an id repeated in a wire chunk's dictionary comes out once.
    """
    ids: dict[str, int] = {}
    parts = list(chunks)
    meters = []
    for part in parts:
        present, inverse = np.unique(part.meter, return_inverse=True)
        remap = np.fromiter(
            (ids.setdefault(part.meter_ids[k], len(ids)) for k in present.tolist()),
            dtype=np.int32,
            count=present.size,
        )
        meters.append(remap[inverse])
    counts = [p.count for p in parts]
    count = None
    if parts and any(c is not None for c in counts):
        count = np.concatenate(
            [
                np.ones(len(p), np.int64) if c is None else c
                for p, c in zip(parts, counts, strict=True)
            ]
        )
    return ReadingColumns(
        meter_ids=tuple(ids),
        meter=np.concatenate(meters) if meters else np.empty(0, np.int32),
        channel=np.concatenate([p.channel for p in parts]) if parts else np.empty(0, np.uint8),
        unit=np.concatenate([p.unit for p in parts]) if parts else np.empty(0, np.uint8),
        ts_ms=np.concatenate([p.ts_ms for p in parts]) if parts else np.empty(0, np.int64),
        value=np.concatenate([p.value for p in parts]) if parts else np.empty(0, np.float64),
        count=count,
    )
