"""The decoder's fast path: simdjson reads row columns straight into numpy buffers.

orjson builds a Python object per number, and packing its lists costs as much again; simdjson's
``as_buffer`` writes a column's numbers into one buffer.

It only ever accepts what the exact (orjson) path accepts, with the same values, because it
declines (returns None) whatever the two parsers could read differently:

- a backslash anywhere (string escapes, lone surrogates);
- a ``[`` that is not the start of an array the decoder reads: ``as_buffer`` flattens nested
  arrays, which the exact path rejects;
- a repeated key at the top level or in ``rows`` (simdjson keeps the first, orjson the last);
- any value ``as_buffer`` cannot read exactly as its column's type: bools, nulls, strings,
  floats in an integer column, integers beyond 64 bits, numbers beyond float range.

The exact path then decides, and names what is wrong. A property test holds the two paths equal.
A meter dictionary that passed validation before is found again by its JSON text
(``_SPANS``), so a gateway's 1,000 ids are not rebuilt as strings every window.
pysimdjson comes with the ``cloud`` extra; without it (a gateway) every message takes the exact
path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from meterlink_wire.vocab import DictionaryCache

try:
    import simdjson
except ImportError:  # pragma: no cover - the cloud extra installs it
    simdjson = None  # type: ignore[assignment]

INT_COLUMNS = frozenset({"meter", "channel", "unit", "start_ms", "count", "reason"})
FLOAT_COLUMNS = frozenset({"min", "max", "mean", "last", "delta"})
ENVELOPE = frozenset(
    {"v", "type", "gateway", "seq", "sent_ms", "window_s", "meters", "channels", "units", "reasons"}
)
"""Top-level keys the decoder reads besides ``rows``: only these become Python values."""
_OPEN_BRACKET = ord("[")
_METERS_KEY = b'"meters":['
SPAN_CACHE_BYTES = 64 * 1024 * 1024
"""Bound on the meter dictionaries remembered by their JSON text (about 4 M meter ids)."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """A message as the fast path read it."""

    document: dict[str, Any]
    """The envelope fields the decoder reads, as orjson would give them; ``meters`` is the
    dictionary remembered for ``meters_span`` when it was seen before (a tuple), else a list."""
    columns: dict[str, npt.NDArray[Any]]
    """Each known row column present: int64 or float64."""
    meters_span: bytes | None = None
    """The meter dictionary's JSON text between its brackets, when it can only be that."""


_SPANS = DictionaryCache[bytes, tuple[str, ...]](max_size=SPAN_CACHE_BYTES)
"""Validated meter dictionaries by their exact JSON text.

A gateway sends the same dictionary every window. Building its 1,000 strings and hashing them
to find it among the dictionaries already checked costs about a fifth of a decode; finding its
text and one bytes hash costs a few microseconds. Only dictionaries that passed validation are
remembered (:func:`remember_meters`): their ids hold no ``]``, so their text runs exactly to the
array's closing bracket, and equal text means an equal dictionary."""


def remember_meters(span: bytes | None, meters: tuple[str, ...]) -> None:
    """Remember a meter dictionary that passed validation, by its text (see :class:`Parsed`)."""
    if span is not None and _SPANS.get(span) is None:
        _SPANS.put(span, meters)


def _meters_span(text: bytes) -> bytes | None:
    """The text of the top-level meter dictionary between its brackets.

    Only called once the text is known to hold no backslash (so no string holds a quote) and no
    ``[`` but those opening the arrays counted (so ``"meters":[`` can only be a key and its
    array), and when ``rows`` has no ``meters`` key: then the first match is the top level's.
    With whitespace around the colon it is not found, and the dictionary is built as usual.
    """
    start = text.find(_METERS_KEY)
    if start < 0:
        return None
    start += len(_METERS_KEY)
    end = text.find(b"]", start)
    return text[start:end] if end >= 0 else None


_local = threading.local()


def parse(text: bytes) -> Parsed | None:
    """Parse JSON text into envelope and columns, or None if the exact path must judge it."""
    if simdjson is None or b"\\" in text:
        return None
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        return _parse(parser, text)
    except Exception:  # whatever simdjson raises, the exact path decides
        # A parser may not be reused while proxies into its last document live; one that failed
        # mid-way is replaced rather than trusted to have let go of them.
        _local.parser = None
        return None


def _parse(parser: Any, text: bytes) -> Parsed | None:
    document = parser.parse(text)
    if not isinstance(document, simdjson.Object):
        return None
    envelope = _envelope(document)
    rows = document.get("rows")
    columns = _columns(rows) if isinstance(rows, simdjson.Object) else None
    if envelope is None or columns is None:
        return None
    # Every '[' must open one of the arrays counted: otherwise one is nested or in a string.
    brackets = int(np.count_nonzero(np.frombuffer(text, dtype=np.uint8) == _OPEN_BRACKET))
    if brackets != envelope[1] + columns[1]:
        return None
    fields = envelope[0]
    span = None
    meters = fields.get("meters")
    if isinstance(meters, simdjson.Array):
        span = None if "meters" in columns[2] else _meters_span(text)
        known = None if span is None else _SPANS.get(span)
        fields["meters"] = meters.as_list() if known is None else known
    return Parsed(fields, columns[0], span)


def _unique_keys(value: Any) -> list[str] | None:
    keys = list(value.keys())
    return keys if len(set(keys)) == len(keys) else None


def _envelope(document: Any) -> tuple[dict[str, Any], int] | None:
    """The envelope fields and the number of top-level arrays, or None.

    Fields become Python values, but for the meter dictionary: :func:`_parse` looks it up by
    its text first, and builds it only when it was not seen before.
    """
    keys = _unique_keys(document)
    if keys is None:
        return None
    envelope: dict[str, Any] = {}
    arrays = 0
    for key in keys:
        value: Any = document[key]
        if isinstance(value, simdjson.Array):
            arrays += 1
            if key != "meters":
                value = value.as_list()
        elif isinstance(value, simdjson.Object) and key != "rows":
            return None  # left to the exact path rather than counting the arrays inside
        if key in ENVELOPE:
            envelope[key] = value
    return envelope, arrays


def _columns(rows: Any) -> tuple[dict[str, npt.NDArray[Any]], int, list[str]] | None:
    """The known row columns as arrays, the number of arrays in ``rows`` and its keys; or None."""
    names = _unique_keys(rows)
    if names is None:
        return None
    columns: dict[str, npt.NDArray[Any]] = {}
    arrays = 0
    for name in names:
        column = rows[name]
        known = name in INT_COLUMNS or name in FLOAT_COLUMNS
        if not isinstance(column, simdjson.Array):
            if known:
                return None
            continue
        arrays += 1
        if name in INT_COLUMNS:
            columns[name] = np.frombuffer(column.as_buffer(of_type="i"), dtype=np.int64)
        elif known:
            columns[name] = np.frombuffer(column.as_buffer(of_type="d"), dtype=np.float64)
    return columns, arrays, names
