"""Encode and decode v1 telemetry/events messages: orjson, columnar, optionally zlib-compressed.

Decoding goes from bytes to numpy columns without a per-row Python loop: orjson builds one list
per column, ``struct.pack`` turns each list into a packed buffer (about 2x faster than
``np.asarray`` on a list, and it rejects strings, nulls and nested lists for free), and every rule
is checked with whole-array numpy operations.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from meterlink_wire import simd
from meterlink_wire.batch import (
    MAX_SEQUENCE,
    MAX_TIMESTAMP_MS,
    MAX_WINDOW_S,
    Kind,
    ReadingBatch,
    as_unsigned,
    check_int,
    check_values,
)
from meterlink_wire.errors import Reason, WireError, show
from meterlink_wire.vocab import (
    CHANNEL_NAMES,
    UNIT_NAMES,
    DictionaryCache,
    channel_codes,
    unit_codes,
    validate_dictionary,
    validate_gateway_id,
)

WIRE_VERSION = 1
IOT_CORE_MAX_BYTES = 131_072
"""AWS IoT Core's payload limit: nothing larger is ever encoded or accepted."""
BILLING_UNIT_BYTES = 5_120
"""IoT Core meters messages in 5 KB units."""
DEFAULT_MAX_BYTES = 128_000
"""Default split cap: 25 billing units, just under IoT Core's limit."""
DEFAULT_MAX_INFLATED_BYTES = 8 * 1024 * 1024
"""Default limit on decompressed size, so a zip bomb costs at most this much memory."""
ZLIB_LEVEL = 6

_ROW_COLUMNS = ("meter", "channel", "unit", "start_ms", "count", "min", "max", "mean", "last")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def billing_units(nbytes: int) -> int:
    """IoT Core billing units (5 KB each, rounded up, at least one) for a message of nbytes."""
    return max(1, math.ceil(nbytes / BILLING_UNIT_BYTES))


def check_cap(max_bytes: int, name: str = "max_bytes") -> int:
    """Return a configured size cap; ValueError unless it is an int in 1..IOT_CORE_MAX_BYTES."""
    if type(max_bytes) is not int or not 1 <= max_bytes <= IOT_CORE_MAX_BYTES:
        raise ValueError(f"{name} must be an int in 1..{IOT_CORE_MAX_BYTES}, got {max_bytes!r}")
    return max_bytes


# --- encoding ---------------------------------------------------------------------------------


def _local_dictionary(
    codes: npt.NDArray[np.uint8], names: npt.NDArray[np.object_]
) -> tuple[list[str], npt.NDArray[np.intp]]:
    """Per-message dictionary of the codes present (in code order) and each row's index into it."""
    present = np.zeros(256, dtype=np.bool_)
    present[codes] = True
    used = np.flatnonzero(present)
    remap = np.zeros(256, dtype=np.intp)
    remap[used] = np.arange(used.size)
    return names[used].tolist(), remap[codes]


def _check(batch: ReadingBatch) -> None:
    # Batches are validated on construction and their arrays are read-only; this re-check at the
    # trust boundary is cheap and catches columns made writable and edited since.
    check_values(
        batch.window_s,
        start_ms=batch.start_ms,
        count=batch.count,
        min_=batch.min,
        max_=batch.max,
        mean=batch.mean,
        last=batch.last,
        delta=batch.delta,
    )


def _serialize(batch: ReadingBatch, compress: bool) -> bytes:
    channels, channel = _local_dictionary(batch.channel, CHANNEL_NAMES)
    units, unit = _local_dictionary(batch.unit, UNIT_NAMES)
    rows: dict[str, npt.NDArray[Any]] = {
        "meter": batch.meter,
        "channel": channel,
        "unit": unit,
        "start_ms": batch.start_ms,
        "count": batch.count,
        "min": batch.min,
        "max": batch.max,
        "mean": batch.mean,
        "last": batch.last,
    }
    document: dict[str, object] = {
        "v": WIRE_VERSION,
        "type": batch.kind.value,
        "gateway": batch.gateway_id,
        "seq": batch.sequence,
        "sent_ms": batch.sent_ms,
        "window_s": batch.window_s,
        "meters": list(batch.meters),
        "channels": channels,
        "units": units,
    }
    if batch.reason is not None:
        document["reasons"] = list(batch.reasons)
        rows["reason"] = batch.reason
    if batch.delta is not None:  # optional column: old decoders ignore it
        rows["delta"] = batch.delta
    # orjson writes numpy arrays itself (no Python object per value) if they are C-contiguous.
    document["rows"] = {k: np.ascontiguousarray(v) for k, v in rows.items()}
    data = orjson.dumps(document, option=_NUMPY)
    return zlib.compress(data, ZLIB_LEVEL) if compress else data


def encode(batch: ReadingBatch, *, compress: bool = False) -> bytes:
    """Encode a batch as one message (JSON, or zlib of it with ``compress``).

    Raises WireError: non_finite/bad_value if a column was edited after validation, oversize if
    the message exceeds IOT_CORE_MAX_BYTES (use :func:`encode_split` for large batches).
    """
    _check(batch)
    data = _serialize(batch, compress)
    if len(data) > IOT_CORE_MAX_BYTES:
        raise WireError(
            Reason.OVERSIZE,
            f"{len(batch)} rows encode to {len(data)} bytes > {IOT_CORE_MAX_BYTES}; "
            "use encode_split",
        )
    return data


# Every row adds at least one digit and a comma to each of its nine required columns.
_MIN_ROW_BYTES = 18


def encode_split(
    batch: ReadingBatch, *, max_bytes: int = DEFAULT_MAX_BYTES, compress: bool = False
) -> list[tuple[ReadingBatch, bytes]]:
    """Encode a batch as consecutive parts, each message at most ``max_bytes``.

    Part ``i`` carries sequence ``batch.sequence + i``: the caller advances its sequence counter
    by ``len(parts)``. Parts are filled greedily, each as full as possible (searching the row
    count with real encoded sizes), because IoT Core bills per 5 KB and full messages mean fewer
    billed units. Parts keep ``sent_ms``; :meth:`ReadingBatch.concat` reassembles them.

    Raises ValueError for a cap outside 1..IOT_CORE_MAX_BYTES; WireError(oversize) if a single
    row cannot fit, WireError(bad_sequence) if the sequence numbers would overflow.
    """
    check_cap(max_bytes)
    _check(batch)
    total = len(batch)
    if total == 0:
        data = _serialize(batch, compress)
        if len(data) > max_bytes:
            raise WireError(Reason.OVERSIZE, f"an empty message is {len(data)} > {max_bytes} bytes")
        return [(batch, data)]
    parts: list[tuple[ReadingBatch, bytes]] = []
    start = 0
    # First guess: everything, bounded by the most rows that could fit; later parts start from
    # the size of the part before.
    guess = total if compress else min(total, max_bytes // _MIN_ROW_BYTES + 1)
    while start < total:
        sequence = batch.sequence + len(parts)
        if sequence > MAX_SEQUENCE:
            raise WireError(Reason.BAD_SEQUENCE, f"split needs seq {sequence} > {MAX_SEQUENCE}")
        part, data = _fill(
            batch,
            start=start,
            sequence=sequence,
            max_bytes=max_bytes,
            compress=compress,
            guess=guess,
        )
        parts.append((part, data))
        start += len(part)
        guess = len(part)
    return parts


def _fill(
    batch: ReadingBatch, *, start: int, sequence: int, max_bytes: int, compress: bool, guess: int
) -> tuple[ReadingBatch, bytes]:
    """Return the largest part starting at row ``start`` that encodes to at most ``max_bytes``.

    Size grows with the row count (every row adds values; dictionaries only grow), so a search
    on the row count works. Compressed size can very rarely dip; then a part may end a row short
    of the maximum, but never over the cap: only sizes actually measured are accepted.
    """
    remaining = len(batch) - start
    best: tuple[ReadingBatch, bytes] | None = None
    # Invariant: `fits` rows are known to fit (0: none yet) and `too_big` rows known not to
    # (remaining + 1: none yet); every probe lies strictly between, so the bracket shrinks.
    fits, too_big = 0, remaining + 1
    rows = min(max(guess, 1), remaining)
    bisect = False
    while too_big - fits > 1:
        part = batch.slice(start, start + rows).with_sequence(sequence)
        data = _serialize(part, compress)
        if len(data) <= max_bytes:
            fits, best = rows, (part, data)
        else:
            too_big = rows
        # Size is close to proportional to rows, so interpolation usually lands within a row
        # or two; alternating with bisection bounds the worst case to O(log n) probes.
        if bisect and fits and too_big <= remaining:
            rows = (fits + too_big) // 2
        else:
            rows = min(max(rows * max_bytes // len(data), fits + 1), too_big - 1)
        bisect = not bisect
    if best is None:
        raise WireError(Reason.OVERSIZE, f"row {start} alone does not fit in {max_bytes} bytes")
    return best


# --- decoding ---------------------------------------------------------------------------------


def _inflate(data: bytes, max_inflated_bytes: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, max_inflated_bytes + 1)
    except zlib.error as exc:
        raise WireError(Reason.BAD_COMPRESSION, str(exc)) from exc
    if len(text) > max_inflated_bytes:
        raise WireError(Reason.OVERSIZE, f"inflates to more than {max_inflated_bytes} bytes")
    if not inflater.eof:
        raise WireError(Reason.TRUNCATED, "zlib stream ends early")
    if inflater.unused_data:
        raise WireError(
            Reason.BAD_COMPRESSION, f"{len(inflater.unused_data)} bytes after the zlib stream"
        )
    return text


def is_compressed(data: bytes) -> bool:
    """Return True if ``data`` starts with a zlib header: 0x78 and a valid check byte.

    Plain JSON starts with '{' (or whitespace), so the two never collide.
    """
    return len(data) >= 2 and data[0] == 0x78 and (data[0] * 256 + data[1]) % 31 == 0


def load_text(
    data: bytes,
    *,
    max_bytes: int = IOT_CORE_MAX_BYTES,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> bytes:
    """Check untrusted bytes' type and size and inflate zlib if present: the JSON text.

    Raises only WireError (ValueError for a bad cap).
    """
    check_cap(max_bytes)
    if type(max_inflated_bytes) is not int or max_inflated_bytes < 1:
        raise ValueError(f"max_inflated_bytes must be a positive int, got {max_inflated_bytes!r}")
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise WireError(Reason.BAD_TYPE, f"payload must be bytes, got {type(data).__name__}")
    if not data:
        raise WireError(Reason.EMPTY, "no bytes")
    if len(data) > max_bytes:
        raise WireError(Reason.OVERSIZE, f"{len(data)} bytes > {max_bytes}")
    text = _inflate(data, max_inflated_bytes) if is_compressed(data) else data
    if not text:
        raise WireError(Reason.EMPTY, "zlib stream holds no bytes")
    return text


def parse_document(text: bytes) -> dict[str, Any]:
    """Parse JSON text with orjson into its top-level object; raises only WireError."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if "infinity" in message:  # orjson's wording for a number beyond float range
            raise WireError(Reason.NON_FINITE, message) from exc
        if exc.pos >= len(text) or "unexpected end of data" in message:
            raise WireError(Reason.TRUNCATED, message) from exc
        raise WireError(Reason.NOT_JSON, message) from exc
    if not isinstance(document, dict):
        raise WireError(Reason.NOT_OBJECT, f"top level is {type(document).__name__}")
    return document


def load_document(
    data: bytes,
    *,
    max_bytes: int = IOT_CORE_MAX_BYTES,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> tuple[bytes, dict[str, Any]]:
    """Turn untrusted bytes into ``(json_text, object)``, inflating zlib if present.

    Shared by :func:`decode` and status decoding; raises only WireError.
    """
    text = load_text(data, max_bytes=max_bytes, max_inflated_bytes=max_inflated_bytes)
    return text, parse_document(text)


def field(document: dict[str, Any], key: str, where: str = "") -> object:
    """``document[key]``, or WireError(missing_field)."""
    try:
        return document[key]
    except KeyError:
        raise WireError(Reason.MISSING_FIELD, f"{where}{key} is missing") from None


def check_envelope(document: dict[str, Any], types: tuple[str, ...]) -> str:
    """Check ``v`` and ``type``; return the type."""
    version = field(document, "v")
    if type(version) is not int:
        raise WireError(Reason.BAD_TYPE, f"v must be an integer, got {show(version)}")
    if version != WIRE_VERSION:
        raise WireError(Reason.UNKNOWN_VERSION, f"v {version}, this decoder reads {WIRE_VERSION}")
    kind = field(document, "type")
    if not isinstance(kind, str):
        raise WireError(Reason.BAD_TYPE, f"type must be a string, got {show(kind)}")
    if kind not in types:
        raise WireError(Reason.UNKNOWN_TYPE, f"type {show(kind)}, expected one of {types}")
    return kind


def _may_hold_bools(text: bytes) -> bool:
    """Whether the JSON text might contain a ``true``/``false`` literal (cheap, vectorised).

    In JSON only those literals put an 'e' right before a delimiter (',' ']' '}' or whitespace):
    in a number 'e' is followed by a digit or sign, in a string by more of the string. A string
    can fake a hit; that only costs the exact check.
    """
    buffer = np.frombuffer(text, dtype=np.uint8)
    after = buffer[np.flatnonzero(buffer[:-1] == 0x65) + 1]
    return bool(((after <= 0x20) | (after == 0x2C) | (after == 0x5D) | (after == 0x7D)).any())


def _why_not_packed(values: list[Any], name: str, numbers: tuple[type, ...]) -> WireError:
    """Explain a failed pack (slow path, errors only): a wrong type, or an int out of range."""
    for row, value in enumerate(values):
        if type(value) not in numbers:
            return WireError(Reason.BAD_TYPE, f"rows.{name}[{row}] = {show(value)}")
    return WireError(Reason.BAD_VALUE, f"rows.{name} holds an integer beyond 64 bits")


def _ints(
    values: list[Any], name: str, check_bools: bool, out_of_range: Reason
) -> npt.NDArray[np.int64]:
    try:
        packed = struct.pack(f"<{len(values)}q", *values)
    except struct.error:
        error = _why_not_packed(values, name, (int,))
        if error.reason is Reason.BAD_VALUE:
            error = WireError(out_of_range, error.detail)
        raise error from None
    if check_bools and bool in set(map(type, values)):
        raise _why_not_packed(values, name, (int,))
    return np.frombuffer(packed, dtype="<i8")


def _floats(values: list[Any], name: str, check_bools: bool) -> npt.NDArray[np.float64]:
    try:
        packed = struct.pack(f"<{len(values)}d", *values)
    except (struct.error, OverflowError):
        raise _why_not_packed(values, name, (int, float)) from None
    if check_bools and bool in set(map(type, values)):
        raise _why_not_packed(values, name, (int, float))
    return np.frombuffer(packed, dtype="<f8")


def _indices(values: npt.NDArray[np.int64], name: str, size: int) -> None:
    if values.size and as_unsigned(values).max() >= size:
        bad = (values < 0) | (values >= size)
        row = int(np.flatnonzero(bad)[0])
        raise WireError(
            Reason.BAD_INDEX, f"rows.{name}[{row}] = {values[row]}, dictionary has {size}"
        )


def _names(document: dict[str, Any], key: str) -> list[str]:
    names = field(document, key)
    if not isinstance(names, list):
        raise WireError(Reason.BAD_TYPE, f"{key} must be a list, got {show(names)}")
    return names


_KNOWN_CODES = {
    key: DictionaryCache[tuple[str, ...], npt.NDArray[np.uint8]](max_size=4_096)
    for key in ("channels", "units")
}
"""Channel and unit dictionaries already checked, with their (read-only) code tables."""


def _codes(
    names: list[str], key: str, lookup: Callable[[Sequence[str]], npt.NDArray[np.uint8]]
) -> npt.NDArray[np.uint8]:
    if len(names) > 255:  # uint8 codes: a longer list must repeat or invent names; skip the loop
        raise WireError(Reason.BAD_VALUE, f"{key} has {len(names)} entries")
    cache = _KNOWN_CODES[key]
    values = tuple(names)
    try:
        known, hashable = cache.get(values), True
    except TypeError:  # unhashable entries: the lookup below names them
        known, hashable = None, False
    if known is not None:
        return known
    codes: npt.NDArray[np.uint8] = lookup(names)
    if len(set(codes.tolist())) != len(codes):
        raise WireError(Reason.BAD_VALUE, f"{key} has duplicate entries")
    if hashable:
        codes.setflags(write=False)
        cache.put(values, codes)
    return codes


def decode(
    data: bytes,
    *,
    max_bytes: int = IOT_CORE_MAX_BYTES,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> ReadingBatch:
    """Decode a telemetry or events message from untrusted bytes.

    Raises only WireError (its ``reason`` says why); once the header is read, the error also
    carries ``gateway_id`` and ``sequence``. Unknown top-level keys and row columns are ignored;
    the optional ``rows.delta`` column is read (and checked) when present.
    Caps above IOT_CORE_MAX_BYTES are a ValueError (no valid message is larger).

    simdjson reads a well-formed message's columns straight into arrays (:mod:`.simd`). What it
    declines, and every message that fails a check, goes through the exact orjson path, which
    alone decides what is wrong: both paths accept the same bytes and give the same batch.
    """
    text = load_text(data, max_bytes=max_bytes, max_inflated_bytes=max_inflated_bytes)
    parsed = simd.parse(text)
    if parsed is not None:
        try:
            batch = _decode_document(parsed.document, _Buffers(parsed.columns))
        except WireError:
            pass  # the exact path names the problem
        else:
            simd.remember_meters(parsed.meters_span, batch.meters)
            return batch
    return decode_exact(text)


def decode_exact(text: bytes) -> ReadingBatch:
    """Decode JSON text with orjson alone (the reference the fast path is held to)."""
    return _decode_document(parse_document(text), _Lists(text))


class _Lists:
    """Row columns as orjson lists, packed only as the decoder reads them.

    Reading them in the decoder's order keeps which error a message with several gets.
    """

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.lists: dict[str, list[Any]] = {}
        self.bools = False

    def select(self, document: dict[str, Any], columns: tuple[str, ...]) -> dict[str, list[Any]]:
        rows = field(document, "rows")
        if not isinstance(rows, dict):
            raise WireError(Reason.BAD_TYPE, f"rows must be an object, got {show(rows)}")
        names = (*columns, "delta") if "delta" in rows else columns  # delta: optional in v1
        for name in names:
            values = field(rows, name, "rows.")
            if not isinstance(values, list):
                raise WireError(Reason.BAD_TYPE, f"rows.{name} must be a list, got {show(values)}")
            self.lists[name] = values
        self.bools = _may_hold_bools(self.text)
        return self.lists

    def ints(self, name: str, out_of_range: Reason) -> npt.NDArray[np.int64]:
        return _ints(self.lists[name], name, self.bools, out_of_range)

    def floats(self, name: str) -> npt.NDArray[np.float64]:
        return _floats(self.lists[name], name, self.bools)


class _Buffers:
    """Row columns simdjson already read into int64/float64 arrays."""

    def __init__(self, columns: dict[str, npt.NDArray[Any]]) -> None:
        self.columns = columns

    def select(
        self, document: dict[str, Any], columns: tuple[str, ...]
    ) -> dict[str, npt.NDArray[Any]]:
        names = (*columns, "delta") if "delta" in self.columns else columns
        try:
            return {name: self.columns[name] for name in names}
        except KeyError as exc:
            raise WireError(Reason.MISSING_FIELD, f"rows.{exc.args[0]} is missing") from None

    def ints(self, name: str, out_of_range: Reason) -> npt.NDArray[np.int64]:
        return self.columns[name]

    def floats(self, name: str) -> npt.NDArray[np.float64]:
        return self.columns[name]


def _decode_document(document: dict[str, Any], rows: _Lists | _Buffers) -> ReadingBatch:
    kind = Kind(check_envelope(document, (Kind.TELEMETRY.value, Kind.EVENTS.value)))
    gateway_id = validate_gateway_id(field(document, "gateway"))
    sequence = check_int(field(document, "seq"), "seq", MAX_SEQUENCE, Reason.BAD_SEQUENCE)
    try:
        return _decode_body(document, rows, kind, gateway_id, sequence)
    except WireError as exc:
        exc.gateway_id, exc.sequence = gateway_id, sequence
        raise


def _decode_body(
    document: dict[str, Any],
    rows: _Lists | _Buffers,
    kind: Kind,
    gateway_id: str,
    sequence: int,
) -> ReadingBatch:
    sent_ms = check_int(
        field(document, "sent_ms"), "sent_ms", MAX_TIMESTAMP_MS, Reason.BAD_TIMESTAMP
    )
    window_s = check_int(field(document, "window_s"), "window_s", MAX_WINDOW_S, Reason.BAD_VALUE)
    if kind is Kind.EVENTS and window_s != 0:
        raise WireError(Reason.BAD_VALUE, f"events need window_s 0, got {window_s}")
    meters = validate_dictionary(field(document, "meters"), "meters", Reason.BAD_ID)
    channel_lookup = _codes(_names(document, "channels"), "channels", channel_codes)
    unit_lookup = _codes(_names(document, "units"), "units", unit_codes)
    reasons: tuple[str, ...] = ()
    columns: tuple[str, ...] = _ROW_COLUMNS
    if kind is Kind.EVENTS:
        reasons = validate_dictionary(field(document, "reasons"), "reasons", Reason.BAD_VALUE)
        columns = (*_ROW_COLUMNS, "reason")

    selected = rows.select(document, columns)
    expected = len(selected["meter"])
    for name, values in selected.items():
        if len(values) != expected:
            raise WireError(
                Reason.COLUMN_LENGTH, f"rows.{name} has {len(values)} values, expected {expected}"
            )

    meter = rows.ints("meter", Reason.BAD_INDEX)
    channel = rows.ints("channel", Reason.BAD_INDEX)
    unit = rows.ints("unit", Reason.BAD_INDEX)
    _indices(meter, "meter", len(meters))
    _indices(channel, "channel", len(channel_lookup))
    _indices(unit, "unit", len(unit_lookup))
    reason = None
    if kind is Kind.EVENTS:
        reason = rows.ints("reason", Reason.BAD_INDEX)
        _indices(reason, "reason", len(reasons))
    start_ms = rows.ints("start_ms", Reason.BAD_TIMESTAMP)
    count = rows.ints("count", Reason.BAD_VALUE)
    min_ = rows.floats("min")
    max_ = rows.floats("max")
    mean = rows.floats("mean")
    last = rows.floats("last")
    delta = rows.floats("delta") if "delta" in selected else None
    check_values(
        window_s,
        start_ms=start_ms,
        count=count,
        min_=min_,
        max_=max_,
        mean=mean,
        last=last,
        delta=delta,
    )
    return ReadingBatch._unchecked(
        gateway_id=gateway_id,
        sequence=sequence,
        sent_ms=sent_ms,
        window_s=window_s,
        kind=kind,
        meters=meters,
        meter=meter.astype(np.int32),
        channel=channel_lookup[channel],
        unit=unit_lookup[unit],
        start_ms=start_ms,
        count=count,
        min=min_,
        max=max_,
        mean=mean,
        last=last,
        reasons=reasons,
        reason=None if reason is None else reason.astype(np.int32),
        delta=delta,
    )
