"""The simdjson fast path accepts exactly what the exact (orjson) path accepts, with equal values.

Where the two parsers could differ (nested arrays, repeated keys, escapes, wrong number types)
the fast path must decline, so the exact path decides and names the problem.
"""

import zlib

import numpy as np
import pytest
from hypothesis import given

from meterlink_wire import (
    Channel,
    Kind,
    ReadingBatch,
    Unit,
    WindowRow,
    WireError,
    decode,
    encode,
    simd,
)
from meterlink_wire.codec import decode_exact, load_text
from tests.wire.test_properties import SETTINGS, batches

T0 = 1_764_201_600_000


def message(**rows_override: str) -> bytes:
    """A valid two-row telemetry message as text, with row columns replaced by raw JSON."""
    rows = {
        "meter": "[0,1]",
        "channel": "[0,0]",
        "unit": "[0,0]",
        "start_ms": f"[{T0},{T0}]",
        "count": "[60,60]",
        "min": "[1.0,2]",
        "max": "[3.5,4.25]",
        "mean": "[2.0,3.0]",
        "last": "[3.0,4.0]",
    } | rows_override
    body = ",".join(f'"{name}":{text}' for name, text in rows.items())
    return (
        f'{{"v":1,"type":"telemetry","gateway":"gw-1","seq":7,"sent_ms":{T0},"window_s":60,'
        f'"meters":["m-1","m-2"],"channels":["power"],"units":["kW"],"rows":{{{body}}}}}'
    ).encode()


def outcome(decoder, data: bytes):
    try:
        batch = decoder(data)
    except WireError as exc:
        return ("error", exc.reason, exc.detail, exc.gateway_id, exc.sequence)
    return ("batch", batch)


def assert_same(data: bytes) -> None:
    fast, exact = outcome(decode, data), outcome(lambda d: decode_exact(load_text(d)), data)
    assert fast[0] == exact[0], (fast, exact)
    if fast[0] == "batch":
        assert fast[1].equals(exact[1])
    else:
        assert fast == exact


def test_a_valid_message_takes_the_fast_path_with_equal_values():
    data = message()
    parsed = simd.parse(data)
    assert parsed is not None
    assert parsed.columns["start_ms"].dtype == np.int64
    assert parsed.columns["min"].tolist() == [1.0, 2.0]  # an int in a float column is a float
    assert parsed.document["meters"] == ["m-1", "m-2"]
    assert "rows" not in parsed.document
    batch = decode(data)
    assert batch.equals(decode_exact(data))
    assert batch.meters == ("m-1", "m-2")
    assert not batch.min.flags.writeable


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("nested one-element array", message(count="[[60],60]")),
        ("nested array in a float column", message(min="[[1.0],2]")),
        ("bool in an int column", message(meter="[0,true]")),
        ("bool in a float column", message(max="[3.5,false]")),
        ("null", message(mean="[2.0,null]")),
        ("string", message(last='[3.0,"4"]')),
        ("float in an int column", message(start_ms=f"[{T0}.0,{T0}]")),
        ("exponent in an int column", message(count="[6e1,60]")),
        ("int beyond int64", message(start_ms=f"[9223372036854775808,{T0}]")),
        ("int beyond uint64", message(count="[18446744073709551616,60]")),
        ("number beyond float range", message(max="[1e400,4.25]")),
        ("column not a list", message(unit="0")),
        ("column an object", message(unit='{"a":[0]}')),
    ],
)
def test_the_fast_path_declines_what_the_parsers_could_read_differently(case, data):
    assert simd.parse(data) is None, case
    assert_same(data)


def test_repeated_keys_decline_so_the_last_one_wins_as_in_orjson():
    top = message().replace(b'"seq":7', b'"seq":7,"seq":8')
    inner = message().replace(b'"count":[60,60]', b'"count":[60,60],"count":[1,2]')
    for data in (top, inner):
        assert simd.parse(data) is None
    assert decode(top).sequence == 8
    assert decode(inner).count.tolist() == [1, 2]


def test_escapes_and_brackets_in_strings_take_the_exact_path():
    escaped = message().replace(b'"m-1"', b'"m\\u002d1"')
    bracket = message().replace(b'"gateway":"gw-1"', b'"gateway":"gw-1","note":"a[b"')
    assert simd.parse(escaped) is None and simd.parse(bracket) is None
    assert decode(escaped).meters == ("m-1", "m-2")
    assert decode(bracket).gateway_id == "gw-1"


def test_unknown_fields_are_ignored_by_both_paths():
    data = message(extra="[[1,2],[3]]").replace(b'"seq":7', b'"seq":7,"tags":["a"],"n":null')
    assert simd.parse(data) is None  # nested array: declined, and the exact path ignores it
    assert_same(data)
    flat = message(extra="[1,2]").replace(b'"seq":7', b'"seq":7,"tags":["a"]')
    assert simd.parse(flat) is not None
    assert decode(flat).equals(decode_exact(flat))


def test_bad_values_found_after_parsing_are_named_by_the_exact_path():
    for data in (
        message(meter="[0,5]"),  # index beyond the dictionary
        message(count="[60]"),  # column length
        message(min="[5.0,2]"),  # min above last
        message().replace(b'"v":1', b'"v":2'),
    ):
        assert simd.parse(data) is not None
        with pytest.raises(WireError):
            decode(data)
        assert_same(data)


def test_a_parser_is_reused_after_a_declined_message():
    assert simd.parse(message(count="[[60],60]")) is None
    assert simd.parse(b"{") is None
    assert simd.parse(message()) is not None
    assert simd.parse(message()) is not None


def test_without_simdjson_every_message_takes_the_exact_path(monkeypatch):
    monkeypatch.setattr(simd, "simdjson", None)
    assert simd.parse(message()) is None
    assert decode(message()).equals(decode_exact(message()))


def test_events_and_delta_columns_take_the_fast_path():
    events = ReadingBatch.from_rows(
        "gw-0002",
        9,
        T0,
        0,
        [WindowRow("e1", Channel.POWER, Unit.KW, T0, 1, 9.5, 9.5, 9.5, 9.5, "overload")],
        kind=Kind.EVENTS,
    )
    counters = ReadingBatch.from_rows(
        "gw-0004",
        3,
        T0,
        60,
        [WindowRow("c1", Channel.ENERGY_IMPORT, Unit.KWH, T0, 60, 5.0, 5.5, 5.2, 5.5, None, 0.5)],
    )
    for batch in (events, counters):
        data = encode(batch)
        assert simd.parse(data) is not None
        assert decode(data).equals(batch)
        assert decode(zlib.compress(data)).equals(batch)


@SETTINGS
@given(batch=batches())
def test_every_message_the_encoder_writes_takes_the_fast_path(batch: ReadingBatch):
    data = encode(batch)
    assert simd.parse(data) is not None
    decoded = decode(data)
    assert decoded.equals(batch)
    assert decoded.equals(decode_exact(data))


def test_a_dictionary_seen_before_is_found_by_its_text():
    data = message().replace(b'"m-1","m-2"', b'"span-1","span-2"')
    first = simd.parse(data)
    assert first is not None and first.meters_span == b'"span-1","span-2"'
    assert isinstance(first.document["meters"], list)  # not seen yet: built from the parse
    batch = decode(data)
    again = simd.parse(data)
    assert again is not None and again.document["meters"] is batch.meters  # no strings built
    assert decode(data).meters is batch.meters


def test_only_dictionaries_that_passed_validation_are_remembered():
    bad = message().replace(b'"m-1","m-2"', b'"m]1","m-2"')
    with pytest.raises(WireError):
        decode(bad)
    parsed = simd.parse(bad)
    assert parsed is not None and parsed.meters_span == b'"m'  # cut at the ']' in the id
    assert isinstance(parsed.document["meters"], list)
    # A valid dictionary whose text starts like the bad one's span is not confused with it.
    good = message().replace(b'"m-1","m-2"', b'"m","m-2"')
    assert decode(good).meters == ("m", "m-2")
    assert decode(good).equals(decode_exact(good))


def test_a_meters_key_in_rows_does_not_stand_for_the_dictionary():
    rows_first = (
        b'{"rows":{"meters":[9],"meter":[0],"channel":[0],"unit":[0],"start_ms":[%d],'
        b'"count":[1],"min":[1.0],"max":[1.0],"mean":[1.0],"last":[1.0]},'
        b'"v":1,"type":"telemetry","gateway":"gw-1","seq":1,"sent_ms":%d,"window_s":60,'
        b'"meters":["rows-first"],"channels":["power"],"units":["kW"]}' % (T0, T0)
    )
    parsed = simd.parse(rows_first)
    assert parsed is not None and parsed.meters_span is None
    for _ in range(2):
        assert decode(rows_first).meters == ("rows-first",)
    spaced = message().replace(b'"meters":[', b'"meters": [')
    parsed = simd.parse(spaced)
    assert parsed is not None and parsed.meters_span is None
    assert decode(spaced).equals(decode_exact(spaced))
