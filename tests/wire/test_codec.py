import copy
import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from meterlink_wire import (
    BILLING_UNIT_BYTES,
    DEFAULT_MAX_BYTES,
    IOT_CORE_MAX_BYTES,
    Channel,
    GatewayStatus,
    Kind,
    ReadingBatch,
    Reason,
    Unit,
    WindowRow,
    WireError,
    billing_units,
    decode,
    decode_status,
    encode,
    encode_split,
    encode_status,
    is_compressed,
)

T0 = 1_764_201_600_000  # 2025-11-27T00:00:00Z


def sample(rows: int = 4, *, seq: int = 42, meters: int = 3) -> ReadingBatch:
    """Electricity rows cycling over a few meters and three channels."""
    kinds = [
        (Channel.ENERGY_IMPORT, Unit.KWH),
        (Channel.POWER, Unit.KW),
        (Channel.VOLTAGE, Unit.V),
    ]
    out = []
    for i in range(rows):
        channel, unit = kinds[i % 3]
        lo = 100.0 + i * 0.25
        out.append(
            WindowRow(
                f"elec-{i % meters:06d}",
                channel,
                unit,
                T0 + 60_000 * (i // 9),
                60,
                lo,
                lo + 3.5,
                lo + 1.7000000000000002,
                lo + 2.25,
            )
        )
    return ReadingBatch.from_rows("gw-0001", seq, T0 + 61_234, 60, out)


def noisy(rows: int, *, seq: int = 1000, meters: int = 250, seed: int = 7) -> ReadingBatch:
    """Random-valued rows (full-precision means), which compress about as badly as real data."""
    rng = np.random.default_rng(seed)
    lo = np.round(rng.uniform(0, 5000, rows), 3)
    hi = np.round(lo + rng.uniform(0, 50, rows), 3)
    return ReadingBatch(
        gateway_id="gw-0001",
        sequence=seq,
        sent_ms=T0 + 61_234,
        window_s=60,
        kind=Kind.TELEMETRY,
        meters=tuple(f"elec-{i:06d}" for i in range(meters)),
        meter=np.arange(rows) % meters,
        channel=rng.choice([Channel.ENERGY_IMPORT, Channel.POWER, Channel.VOLTAGE], rows),
        unit=rng.choice([Unit.KWH, Unit.KW, Unit.V], rows),
        start_ms=T0 + 60_000 * rng.integers(0, 30, rows),
        count=rng.integers(1, 61, rows),
        min=lo,
        max=hi,
        mean=lo + (hi - lo) * rng.random(rows),
        last=np.clip(np.round(lo + (hi - lo) * rng.random(rows), 3), lo, hi),
    )


def events_sample() -> ReadingBatch:
    rows = [
        WindowRow(
            "elec-000001", Channel.POWER, Unit.KW, T0 + 5, 1, 98.5, 98.5, 98.5, 98.5, "overload"
        ),
        WindowRow(
            "water-17",
            Channel.FLOW,
            Unit.M3_PER_H,
            T0 + 9,
            1,
            -0.4,
            -0.4,
            -0.4,
            -0.4,
            "reverse_flow",
        ),
        WindowRow(
            "elec-000001", Channel.TAMPER, Unit.FLAG, T0 + 11, 1, 1.0, 1.0, 1.0, 1.0, "tamper"
        ),
        WindowRow(
            "elec-000002", Channel.POWER, Unit.KW, T0 + 12, 1, 99.0, 99.0, 99.0, 99.0, "overload"
        ),
    ]
    return ReadingBatch.from_rows("gw-0001", 7, T0 + 20, 0, rows, kind=Kind.EVENTS)


def document() -> dict[str, Any]:
    """A valid telemetry payload written by hand, as in docs/wire-format.md."""
    return {
        "v": 1,
        "type": "telemetry",
        "gateway": "gw-0001",
        "seq": 42,
        "sent_ms": T0 + 60_123,
        "window_s": 60,
        "meters": ["elec-000001", "water-17"],
        "channels": ["energy_import", "power", "volume", "flow"],
        "units": ["kWh", "kW", "m3", "m3/h"],
        "rows": {
            "meter": [0, 0, 1, 1],
            "channel": [0, 1, 2, 3],
            "unit": [0, 1, 2, 3],
            "start_ms": [T0, T0, T0, T0],
            "count": [60, 60, 4, 4],
            "min": [1523.112, 0.4, 88.01, 0.0],
            "max": [1523.131, 2.9, 88.02, 1.2],
            "mean": [1523.1215, 1.35, 88.015, 0.6],
            "last": [1523.131, 0.9, 88.02, 0.6],
        },
    }


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def reason_of(data: bytes, **kwargs: Any) -> Reason:
    with pytest.raises(WireError) as info:
        decode(data, **kwargs)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"wire: {info.value.reason}: ")
    return info.value.reason


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(compress):
    batch = sample(30)
    data = encode(batch, compress=compress)
    assert is_compressed(data) is compress
    decoded = decode(data)
    assert decoded.equals(batch)
    assert decoded.rows() == batch.rows()
    assert decoded.meters == batch.meters
    assert (decoded.gateway_id, decoded.sequence, decoded.sent_ms) == ("gw-0001", 42, T0 + 61_234)
    assert decoded.kind is Kind.TELEMETRY


def test_decoded_columns_have_contract_dtypes_and_are_read_only():
    decoded = decode(encode(sample(10)))
    dtypes = {
        "meter": np.int32,
        "channel": np.uint8,
        "unit": np.uint8,
        "start_ms": np.int64,
        "count": np.int64,
        "min": np.float64,
        "max": np.float64,
        "mean": np.float64,
        "last": np.float64,
    }
    for name, dtype in dtypes.items():
        column = getattr(decoded, name)
        assert column.dtype == dtype, name
        assert column.shape == (10,)
        assert not column.flags.writeable, name
    assert decoded.reason is None


def test_hand_written_document_decodes_to_global_codes():
    batch = decode(dumps(document()))
    assert len(batch) == 4
    assert batch.meters == ("elec-000001", "water-17")
    assert batch.meter.tolist() == [0, 0, 1, 1]
    assert batch.channel.tolist() == [
        Channel.ENERGY_IMPORT,
        Channel.POWER,
        Channel.VOLUME,
        Channel.FLOW,
    ]
    assert batch.unit.tolist() == [Unit.KWH, Unit.KW, Unit.M3, Unit.M3_PER_H]
    assert batch.rows()[3] == WindowRow(
        "water-17", Channel.FLOW, Unit.M3_PER_H, T0, 4, 0.0, 1.2, 0.6, 0.6
    )


def test_message_local_indices_map_through_the_dictionary():
    doc = document()
    doc["channels"] = ["flow", "volume", "power", "energy_import"]
    doc["units"] = ["m3/h", "m3", "kW", "kWh"]
    doc["rows"]["channel"] = [3, 2, 1, 0]
    doc["rows"]["unit"] = [3, 2, 1, 0]
    assert decode(dumps(doc)).equals(decode(dumps(document())))


def test_unknown_keys_and_columns_are_ignored():
    doc = document()
    doc["future"] = {"nested": [1, True, None]}
    doc["rows"]["quality"] = ["good", "bad", None, 7]
    doc["reasons"] = ["ignored_on_telemetry"]
    assert decode(dumps(doc)).equals(decode(dumps(document())))


def test_integers_are_accepted_in_float_columns():
    doc = document()
    doc["rows"]["min"] = [1523, 0, 88, 0]
    doc["rows"]["max"] = [1524, 3, 89, 2]
    doc["rows"]["mean"] = [1523.5, 1, 88.5, 1]
    doc["rows"]["last"] = [1524, 1, 89, 1]
    batch = decode(dumps(doc))
    assert batch.min.dtype == np.float64
    assert batch.min.tolist() == [1523.0, 0.0, 88.0, 0.0]


def test_empty_batch_round_trips():
    batch = ReadingBatch.from_rows("gw-0001", 0, T0, 60, [])
    decoded = decode(encode(batch))
    assert len(decoded) == 0
    assert decoded.equals(batch)


def test_negative_zero_and_extreme_floats_survive_exactly():
    values = [-0.0, 5e-324, 1.7976931348623157e308, -1.7976931348623157e308, 0.1, 1 / 3]
    rows = [
        WindowRow(f"m{i}", Channel.TEMPERATURE, Unit.DEG_C, T0, 1, v, v, v, v)
        for i, v in enumerate(values)
    ]
    batch = ReadingBatch.from_rows("gw-0001", 1, T0, 0, rows)
    decoded = decode(encode(batch))
    assert decoded.equals(batch)
    assert math.copysign(1.0, decoded.min[0]) == -1.0


def test_mean_rounding_within_relative_tolerance_is_accepted():
    doc = document()
    doc["rows"]["min"][0] = doc["rows"]["max"][0] = doc["rows"]["last"][0] = 0.1
    doc["rows"]["mean"][0] = 0.30000000000000004 / 3  # sum of three 0.1 divided by three
    assert decode(dumps(doc)).mean[0] == 0.30000000000000004 / 3


def test_events_round_trip():
    batch = events_sample()
    for compress in (False, True):
        decoded = decode(encode(batch, compress=compress))
        assert decoded.equals(batch)
        assert decoded.kind is Kind.EVENTS
        assert decoded.reasons == ("overload", "reverse_flow", "tamper")
        assert [r.reason for r in decoded.rows()] == [
            "overload",
            "reverse_flow",
            "tamper",
            "overload",
        ]
    doc = orjson.loads(encode(batch))
    assert doc["type"] == "events"
    assert doc["window_s"] == 0
    assert doc["rows"]["reason"] == [0, 1, 2, 0]


def test_encoded_layout():
    doc = orjson.loads(encode(sample(4, meters=2)))
    assert list(doc) == [
        "v",
        "type",
        "gateway",
        "seq",
        "sent_ms",
        "window_s",
        "meters",
        "channels",
        "units",
        "rows",
    ]
    assert doc["meters"] == ["elec-000000", "elec-000001"]
    assert doc["channels"] == ["energy_import", "power", "voltage"]  # in code order
    assert doc["units"] == ["kWh", "kW", "V"]
    assert doc["rows"]["meter"] == [0, 1, 0, 1]
    assert doc["rows"]["channel"] == [0, 1, 2, 0]
    assert list(doc["rows"]) == [
        "meter",
        "channel",
        "unit",
        "start_ms",
        "count",
        "min",
        "max",
        "mean",
        "last",
    ]


# --- compression --------------------------------------------------------------------------------


def test_plain_json_starts_with_brace_and_zlib_with_0x78():
    batch = sample(50)
    plain = encode(batch)
    packed = encode(batch, compress=True)
    assert plain[:1] == b"{"
    assert packed[0] == 0x78
    assert (packed[0] * 256 + packed[1]) % 31 == 0
    assert zlib.decompress(packed) == plain
    assert len(packed) < len(plain)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_any_zlib_level_is_detected(level):
    plain = encode(sample(20))
    assert decode(zlib.compress(plain, level)).equals(sample(20))


def test_json_with_leading_whitespace_is_accepted():
    assert decode(b" \n" + dumps(document())).equals(decode(dumps(document())))


def test_memoryview_and_bytearray_are_accepted():
    data = encode(sample(5))
    assert decode(memoryview(data)).equals(sample(5))
    assert decode(bytearray(data)).equals(sample(5))


# --- every error reason, provoked and asserted ------------------------------------------------


def at(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutator setting doc[path] (dotted, with [i] list indices) to value; DELETE removes it."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for key in parents:
            target = target[key]
        if "[" in last:
            key, index = last.rstrip("]").split("[")
            target[key][int(index)] = value
        elif value is DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


DELETE = object()

DOCUMENT_CASES: list[tuple[str, Callable[[dict[str, Any]], None], Reason]] = [
    ("v missing", at("v", DELETE), Reason.MISSING_FIELD),
    ("v 2", at("v", 2), Reason.UNKNOWN_VERSION),
    ("v 0", at("v", 0), Reason.UNKNOWN_VERSION),
    ("v string", at("v", "1"), Reason.BAD_TYPE),
    ("v float", at("v", 1.0), Reason.BAD_TYPE),
    ("v bool", at("v", True), Reason.BAD_TYPE),
    ("type status", at("type", "status"), Reason.UNKNOWN_TYPE),
    ("type unknown", at("type", "commands"), Reason.UNKNOWN_TYPE),
    ("type null", at("type", None), Reason.BAD_TYPE),
    ("type missing", at("type", DELETE), Reason.MISSING_FIELD),
    ("gateway missing", at("gateway", DELETE), Reason.MISSING_FIELD),
    ("gateway slash", at("gateway", "gw/1"), Reason.BAD_ID),
    ("gateway wildcard", at("gateway", "gw+"), Reason.BAD_ID),
    ("gateway newline", at("gateway", "gw1\n"), Reason.BAD_ID),
    ("gateway empty", at("gateway", ""), Reason.BAD_ID),
    ("gateway number", at("gateway", 7), Reason.BAD_TYPE),
    ("seq missing", at("seq", DELETE), Reason.MISSING_FIELD),
    ("seq negative", at("seq", -1), Reason.BAD_SEQUENCE),
    ("seq 2**63", at("seq", 2**63), Reason.BAD_SEQUENCE),
    ("seq string", at("seq", "42"), Reason.BAD_TYPE),
    ("seq bool", at("seq", True), Reason.BAD_TYPE),
    ("seq float", at("seq", 42.0), Reason.BAD_TYPE),
    ("sent_ms negative", at("sent_ms", -1), Reason.BAD_TIMESTAMP),
    ("sent_ms year 2200", at("sent_ms", 7_258_118_400_001), Reason.BAD_TIMESTAMP),
    ("sent_ms float", at("sent_ms", 1.5), Reason.BAD_TYPE),
    ("sent_ms missing", at("sent_ms", DELETE), Reason.MISSING_FIELD),
    ("window_s negative", at("window_s", -60), Reason.BAD_VALUE),
    ("window_s over a day", at("window_s", 86_401), Reason.BAD_VALUE),
    ("window_s null", at("window_s", None), Reason.BAD_TYPE),
    ("meters missing", at("meters", DELETE), Reason.MISSING_FIELD),
    ("meters not list", at("meters", "elec-000001"), Reason.BAD_TYPE),
    ("meters holds number", at("meters[1]", 17), Reason.BAD_TYPE),
    ("meter id bad", at("meters[1]", "water 17"), Reason.BAD_ID),
    ("meter id too long", at("meters[1]", "w" * 65), Reason.BAD_ID),
    ("meters duplicate", at("meters[1]", "elec-000001"), Reason.BAD_VALUE),
    ("channels missing", at("channels", DELETE), Reason.MISSING_FIELD),
    ("channel unknown", at("channels[2]", "vibes"), Reason.UNKNOWN_CHANNEL),
    ("channel case", at("channels[0]", "Energy_Import"), Reason.UNKNOWN_CHANNEL),
    ("channel number", at("channels[0]", 1), Reason.BAD_TYPE),
    ("channels duplicate", at("channels[1]", "energy_import"), Reason.BAD_VALUE),
    ("units not list", at("units", {"0": "kWh"}), Reason.BAD_TYPE),
    ("unit unknown", at("units[0]", "furlong"), Reason.UNKNOWN_UNIT),
    ("unit case", at("units[0]", "KWH"), Reason.UNKNOWN_UNIT),
    ("units duplicate", at("units[3]", "kWh"), Reason.BAD_VALUE),
    ("units longer than the code space", at("units", ["kWh"] * 300), Reason.BAD_VALUE),
    ("rows missing", at("rows", DELETE), Reason.MISSING_FIELD),
    ("rows list", at("rows", [[0, 0, 0]]), Reason.BAD_TYPE),
    ("rows.max missing", at("rows.max", DELETE), Reason.MISSING_FIELD),
    ("rows.meter missing", at("rows.meter", DELETE), Reason.MISSING_FIELD),
    ("rows.count not list", at("rows.count", 60), Reason.BAD_TYPE),
    ("rows.min short", at("rows.min", [1.0, 2.0, 3.0]), Reason.COLUMN_LENGTH),
    ("rows.start_ms long", at("rows.start_ms", [T0] * 5), Reason.COLUMN_LENGTH),
    ("min string", at("rows.min[0]", "1523.112"), Reason.BAD_TYPE),
    ("min null", at("rows.min[2]", None), Reason.BAD_TYPE),
    ("min bool", at("rows.min[3]", False), Reason.BAD_TYPE),
    ("last bool", at("rows.last[1]", True), Reason.BAD_TYPE),
    ("min nested", at("rows.min[0]", [1523.112]), Reason.BAD_TYPE),
    ("mean object", at("rows.mean[0]", {"v": 1}), Reason.BAD_TYPE),
    ("count float", at("rows.count[0]", 60.0), Reason.BAD_TYPE),
    ("count bool", at("rows.count[2]", True), Reason.BAD_TYPE),
    ("count string", at("rows.count[0]", "60"), Reason.BAD_TYPE),
    ("meter index float", at("rows.meter[1]", 0.0), Reason.BAD_TYPE),
    ("meter index bool", at("rows.meter[0]", False), Reason.BAD_TYPE),
    ("channel index nested", at("rows.channel", [[0, 1], [2, 3]]), Reason.COLUMN_LENGTH),
    ("channel index rows", at("rows.channel[0]", [0]), Reason.BAD_TYPE),
    ("start_ms bool", at("rows.start_ms[0]", True), Reason.BAD_TYPE),
    ("start_ms negative", at("rows.start_ms[1]", -1), Reason.BAD_TIMESTAMP),
    ("start_ms year 2200", at("rows.start_ms[1]", 7_258_118_400_001), Reason.BAD_TIMESTAMP),
    ("start_ms beyond int64", at("rows.start_ms[1]", 2**63), Reason.BAD_TIMESTAMP),
    ("meter index out", at("rows.meter[3]", 2), Reason.BAD_INDEX),
    ("meter index negative", at("rows.meter[0]", -1), Reason.BAD_INDEX),
    ("meter index beyond int64", at("rows.meter[0]", 2**63), Reason.BAD_INDEX),
    ("channel index out", at("rows.channel[3]", 4), Reason.BAD_INDEX),
    ("unit index out", at("rows.unit[3]", 255), Reason.BAD_INDEX),
    ("count zero", at("rows.count[0]", 0), Reason.BAD_VALUE),
    ("count negative", at("rows.count[0]", -5), Reason.BAD_VALUE),
    ("last above max", at("rows.last[0]", 1523.2), Reason.BAD_VALUE),
    ("last below min", at("rows.last[1]", 0.3), Reason.BAD_VALUE),
    ("min above max", at("rows.min[1]", 3.0), Reason.BAD_VALUE),
    ("mean above max", at("rows.mean[0]", 1523.14), Reason.BAD_VALUE),
    ("mean below min", at("rows.mean[1]", 0.39), Reason.BAD_VALUE),
    ("raw row with count 60", at("window_s", 0), Reason.BAD_VALUE),
    ("events with window", at("type", "events"), Reason.BAD_VALUE),
    ("events without reasons", lambda d: d.update(type="events", window_s=0), Reason.MISSING_FIELD),
    ("delta not list", at("rows.delta", 0.5), Reason.BAD_TYPE),
    ("delta short", at("rows.delta", [0.0, 0.0, 0.0]), Reason.COLUMN_LENGTH),
    ("delta negative", at("rows.delta", [0.019, 0.0, -0.01, 0.0]), Reason.BAD_VALUE),
    ("delta string", at("rows.delta", [0.019, "0", 0.01, 0.0]), Reason.BAD_TYPE),
    ("delta null", at("rows.delta", [0.019, 0.0, None, 0.0]), Reason.BAD_TYPE),
    ("delta bool", at("rows.delta", [0.019, 0.0, 0.01, False]), Reason.BAD_TYPE),
    ("delta nested", at("rows.delta", [[0.019], 0.0, 0.01, 0.0]), Reason.BAD_TYPE),
]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [pytest.param(m, r, id=name) for name, m, r in DOCUMENT_CASES],
)
def test_invalid_document(mutate, reason):
    doc = copy.deepcopy(document())
    mutate(doc)
    assert reason_of(dumps(doc)) is reason


def test_every_reason_except_bad_topic_is_provoked_here():
    provoked = {r for _, _, r in DOCUMENT_CASES} | {r for _, r in BYTES_CASES}
    assert provoked == set(Reason) - {Reason.BAD_TOPIC}  # bad_topic: test_topics.py


def _oversized() -> bytes:
    return b" " * (IOT_CORE_MAX_BYTES - 1) + b"{}"


def _bomb() -> bytes:
    # 16 MiB of whitespace around a valid document deflates to ~16 KB.
    return zlib.compress(b" " * (16 * 1024 * 1024) + dumps(document()), 9)


BYTES_CASES: list[tuple[bytes, Reason]] = [
    (b"", Reason.EMPTY),
    (zlib.compress(b""), Reason.EMPTY),
    (dumps(document())[:-1], Reason.TRUNCATED),
    (dumps(document())[:40], Reason.TRUNCATED),
    (b'{"v":1,"type":"telemetry","seq":12', Reason.TRUNCATED),
    (zlib.compress(dumps(document()))[:-6], Reason.TRUNCATED),
    (zlib.compress(dumps(document()))[:2], Reason.TRUNCATED),
    (b"\x00\x01\x02", Reason.NOT_JSON),
    (b"hello", Reason.NOT_JSON),
    (b"x", Reason.NOT_JSON),
    (b"\xef\xbb\xbf{}", Reason.NOT_JSON),
    (b'{"v":1}}', Reason.NOT_JSON),
    (b'{"gateway":"\xff"}', Reason.NOT_JSON),
    (b"[" * 2000 + b"]" * 2000, Reason.NOT_JSON),
    (zlib.compress(b"not json"), Reason.NOT_JSON),
    (zlib.compress(zlib.compress(dumps(document()))), Reason.NOT_JSON),
    (b"\x78\x9c\xff\xff\xff\xff", Reason.BAD_COMPRESSION),
    (zlib.compress(dumps(document())) + b"trailing", Reason.BAD_COMPRESSION),
    (_oversized(), Reason.OVERSIZE),
    (_bomb(), Reason.OVERSIZE),
    (b"[1, 2]", Reason.NOT_OBJECT),
    (b'"telemetry"', Reason.NOT_OBJECT),
    (b"null", Reason.NOT_OBJECT),
    (dumps(document()).replace(b"1523.112", b"1e400"), Reason.NON_FINITE),
    (dumps(document()).replace(b"1523.112", b"-" + b"9" * 400), Reason.NON_FINITE),
    (dumps(document()).replace(b'"rows":{', b'"rows":{"delta":[1e400,0,0,0],'), Reason.NON_FINITE),
]


@pytest.mark.parametrize(("data", "reason"), BYTES_CASES, ids=lambda v: None)
def test_invalid_bytes(data, reason):
    assert reason_of(data) is reason


def test_bad_checksum_is_bad_compression():
    packed = bytearray(zlib.compress(dumps(document())))
    packed[-1] ^= 0xFF  # adler-32 of the inflated bytes
    assert reason_of(bytes(packed)) is Reason.BAD_COMPRESSION


def test_inflated_limit_is_configurable():
    packed = zlib.compress(dumps(document()))
    assert reason_of(packed, max_inflated_bytes=100) is Reason.OVERSIZE
    assert len(decode(packed, max_inflated_bytes=len(dumps(document())))) == 4


def test_max_bytes_is_configurable_but_capped():
    data = dumps(document())
    assert reason_of(data, max_bytes=len(data) - 1) is Reason.OVERSIZE
    assert len(decode(data, max_bytes=len(data))) == 4
    with pytest.raises(ValueError, match="max_bytes"):
        decode(data, max_bytes=IOT_CORE_MAX_BYTES + 1)


def test_non_bytes_payload_is_bad_type():
    with pytest.raises(WireError) as info:
        decode(dumps(document()).decode())  # type: ignore[arg-type]
    assert info.value.reason is Reason.BAD_TYPE


def test_column_length_message_is_exact():
    doc = document()
    doc["rows"]["min"] = [1.0, 2.0, 3.0]
    with pytest.raises(WireError) as info:
        decode(dumps(doc))
    assert str(info.value) == "wire: column_length: rows.min has 3 values, expected 4"
    assert info.value.detail == "rows.min has 3 values, expected 4"
    assert isinstance(info.value, ValueError)


def test_error_names_gateway_and_sequence_once_known():
    doc = document()
    doc["rows"]["count"][0] = 0
    with pytest.raises(WireError) as info:
        decode(dumps(doc))
    assert (info.value.gateway_id, info.value.sequence) == ("gw-0001", 42)
    assert info.value.retriable is False
    with pytest.raises(WireError) as info:
        decode(b"{}")
    assert (info.value.gateway_id, info.value.sequence) == (None, None)


def test_translated_errors_are_chained():
    with pytest.raises(WireError) as info:
        decode(b"{nope")
    assert isinstance(info.value.__cause__, orjson.JSONDecodeError)
    with pytest.raises(WireError) as info:
        decode(b"\x78\x9c\xff\xff")
    assert isinstance(info.value.__cause__, zlib.error)


def test_error_detail_is_one_line_even_for_hostile_strings():
    doc = document()
    doc["gateway"] = "gw\n\rinjected: line"
    with pytest.raises(WireError) as info:
        decode(dumps(doc))
    assert info.value.reason is Reason.BAD_ID
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


def test_events_errors():
    doc = orjson.loads(encode(events_sample()))
    del doc["rows"]["reason"]
    assert reason_of(dumps(doc)) is Reason.MISSING_FIELD
    doc = orjson.loads(encode(events_sample()))
    del doc["reasons"]
    assert reason_of(dumps(doc)) is Reason.MISSING_FIELD
    doc = orjson.loads(encode(events_sample()))
    doc["reasons"][0] = "Overload!"
    assert reason_of(dumps(doc)) is Reason.BAD_VALUE
    doc = orjson.loads(encode(events_sample()))
    doc["rows"]["reason"][1] = 3
    assert reason_of(dumps(doc)) is Reason.BAD_INDEX
    doc = orjson.loads(encode(events_sample()))
    doc["window_s"] = 60
    assert reason_of(dumps(doc)) is Reason.BAD_VALUE
    doc = orjson.loads(encode(events_sample()))
    doc["rows"]["reason"] = [0, 1]
    assert reason_of(dumps(doc)) is Reason.COLUMN_LENGTH


# --- construction is validated early ------------------------------------------------------------


def row(**changes: Any) -> WindowRow:
    base = WindowRow("elec-1", Channel.POWER, Unit.KW, T0, 60, 1.0, 3.0, 2.0, 2.5)
    return base._replace(**changes)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"min": float("nan")}, Reason.NON_FINITE),
        ({"max": float("inf")}, Reason.NON_FINITE),
        ({"mean": float("nan")}, Reason.NON_FINITE),
        ({"last": float("-inf")}, Reason.NON_FINITE),
        ({"meter_id": "elec 1"}, Reason.BAD_ID),
        ({"count": 0}, Reason.BAD_VALUE),
        ({"last": 3.5}, Reason.BAD_VALUE),
        ({"start_ms": -1}, Reason.BAD_TIMESTAMP),
        ({"channel": 0}, Reason.UNKNOWN_CHANNEL),
        ({"channel": 300}, Reason.UNKNOWN_CHANNEL),
        ({"unit": 99}, Reason.UNKNOWN_UNIT),
        ({"reason": "overload"}, Reason.BAD_VALUE),
        ({"min": "1.0"}, Reason.BAD_TYPE),
    ],
)
def test_from_rows_rejects(changes, reason):
    with pytest.raises(WireError) as info:
        ReadingBatch.from_rows("gw-0001", 1, T0, 60, [row(), row(**changes)])
    assert info.value.reason is reason


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (("gw/1", 1, T0, 60), Reason.BAD_ID),
        (("gw-1", -1, T0, 60), Reason.BAD_SEQUENCE),
        (("gw-1", True, T0, 60), Reason.BAD_TYPE),
        (("gw-1", 1, -5, 60), Reason.BAD_TIMESTAMP),
        (("gw-1", 1, T0, -1), Reason.BAD_VALUE),
    ],
)
def test_from_rows_rejects_header(header, reason):
    with pytest.raises(WireError) as info:
        ReadingBatch.from_rows(*header, [row()])
    assert info.value.reason is reason


def test_events_need_reasons_and_raw_rows():
    with pytest.raises(WireError) as info:
        ReadingBatch.from_rows(
            "gw-1", 1, T0, 0, [row(count=1, min=2.0, max=2.0, mean=2.0, last=2.0)], kind=Kind.EVENTS
        )
    assert info.value.reason is Reason.MISSING_FIELD
    with pytest.raises(WireError) as info:
        ReadingBatch.from_rows("gw-1", 1, T0, 60, [row(reason="overload")], kind=Kind.EVENTS)
    assert info.value.reason is Reason.BAD_VALUE
    with pytest.raises(WireError) as info:
        ReadingBatch.from_rows("gw-1", 1, T0, 0, [row(reason="overload")], kind=Kind.EVENTS)
    assert info.value.reason is Reason.BAD_VALUE  # raw rows need count 1, min=max=mean=last


def _columns(n: int = 3) -> dict[str, Any]:
    return {
        "gateway_id": "gw-1",
        "sequence": 5,
        "sent_ms": T0,
        "window_s": 60,
        "kind": Kind.TELEMETRY,
        "meters": ("m1", "m2"),
        "meter": np.array([0, 1, 0][:n]),
        "channel": np.full(n, Channel.POWER),
        "unit": np.full(n, Unit.KW),
        "start_ms": np.full(n, T0),
        "count": np.full(n, 60),
        "min": np.zeros(n),
        "max": np.ones(n),
        "mean": np.full(n, 0.5),
        "last": np.full(n, 0.25),
    }


def test_columns_constructor_copies_and_freezes():
    columns = _columns()
    batch = ReadingBatch(**columns)
    columns["min"][0] = -99.0
    assert batch.min[0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        batch.max[0] = 7.0
    assert batch.kind is Kind.TELEMETRY
    assert ReadingBatch(**{**columns, "kind": "telemetry"}).kind is Kind.TELEMETRY


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("min", np.zeros(2), Reason.COLUMN_LENGTH),
        ("count", np.full(3, 60.0), Reason.BAD_TYPE),
        ("count", np.full(3, True), Reason.BAD_TYPE),
        ("meter", np.array([0, 1, 2]), Reason.BAD_INDEX),
        ("meter", np.array([[0, 1, 0]]), Reason.BAD_TYPE),
        ("channel", np.array([3, 3, 256]), Reason.UNKNOWN_CHANNEL),
        ("unit", np.array([5, 5, 0]), Reason.UNKNOWN_UNIT),
        ("meters", ("m1", "m1"), Reason.BAD_VALUE),
        ("kind", "status", Reason.UNKNOWN_TYPE),
        ("reason", np.array([0, 0, 0]), Reason.BAD_VALUE),
        ("mean", np.full(3, 2.0), Reason.BAD_VALUE),
    ],
)
def test_columns_constructor_rejects(name, value, reason):
    with pytest.raises(WireError) as info:
        ReadingBatch(**{**_columns(), name: value})
    assert info.value.reason is reason


def test_encode_refuses_columns_edited_after_validation():
    batch = ReadingBatch(**_columns())
    batch.mean.setflags(write=True)  # deliberately defeating the read-only guard
    batch.mean[1] = float("nan")
    with pytest.raises(WireError) as info:
        encode(batch)
    assert info.value.reason is Reason.NON_FINITE


# --- batch helpers ------------------------------------------------------------------------------


def test_slice_redictionaries_meters():
    batch = sample(12, meters=6)
    part = batch.slice(7, 10)
    assert part.meters == ("elec-000001", "elec-000002", "elec-000003")
    assert [r.meter_id for r in part.rows()] == ["elec-000001", "elec-000002", "elec-000003"]
    assert part.rows() == batch.rows()[7:10]
    assert len(batch.slice(10, 99)) == 2
    assert len(batch.slice(5, 5)) == 0


def test_concat_reassembles_and_checks_parts():
    batch = sample(20, meters=7)
    parts = [batch.slice(0, 6), batch.slice(6, 13), batch.slice(13, 20)]
    assert ReadingBatch.concat(parts).equals(batch)
    events = events_sample()
    assert ReadingBatch.concat([events.slice(0, 1), events.slice(1, 4)]).equals(events)
    with pytest.raises(ValueError):
        ReadingBatch.concat([])
    with pytest.raises(ValueError):
        ReadingBatch.concat([batch, events])


def test_equals_is_exact():
    batch = sample(5)
    assert batch.equals(sample(5))
    assert not batch.equals(sample(5, seq=43))
    assert not batch.equals(sample(6))
    assert not batch.equals("batch")
    columns = _columns()
    zero = ReadingBatch(**columns)
    negative_zero = ReadingBatch(**{**columns, "min": np.array([-0.0, 0.0, 0.0])})
    assert not zero.equals(negative_zero)


def test_repr_is_short():
    assert repr(sample(500)) == (
        "ReadingBatch(gateway_id='gw-0001', sequence=42, kind=telemetry, window_s=60, "
        "rows=500, meters=3)"
    )


# --- size caps and splitting --------------------------------------------------------------------


def test_size_constants_and_billing_units():
    assert IOT_CORE_MAX_BYTES == 131_072
    assert BILLING_UNIT_BYTES == 5_120
    assert DEFAULT_MAX_BYTES == 128_000 == 25 * BILLING_UNIT_BYTES
    assert [billing_units(n) for n in (0, 1, 5120, 5121, 10240, 128_000, 131_072)] == [
        1,
        1,
        1,
        2,
        2,
        25,
        26,
    ]


def test_encode_refuses_more_than_iot_core_accepts():
    with pytest.raises(WireError) as info:
        encode(sample(5000))
    assert info.value.reason is Reason.OVERSIZE


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("cap", [1024, 5120, 128_000])
def test_encode_split_respects_cap_and_numbers_parts(cap, compress):
    batch = noisy(6000)
    parts = encode_split(batch, max_bytes=cap, compress=compress)
    assert len(parts) > 1
    assert [p.sequence for p, _ in parts] == list(range(1000, 1000 + len(parts)))
    for part, data in parts:
        assert len(data) <= cap
        assert is_compressed(data) is compress
        assert decode(data).equals(part)
    assert ReadingBatch.concat([p for p, _ in parts]).with_sequence(1000).equals(batch)
    if not compress:
        # Greedy and full: one more row would not have fitted.
        end = 0
        for part, _ in parts[:-1]:
            end += len(part)
            grown = batch.slice(end - len(part), end + 1).with_sequence(part.sequence)
            assert len(encode(grown)) > cap


def test_encode_split_single_part_when_it_fits():
    batch = sample(40)
    [(part, data)] = encode_split(batch)
    assert part.equals(batch)
    assert data == encode(batch)


def test_encode_split_of_empty_batch():
    batch = ReadingBatch.from_rows("gw-0001", 3, T0, 60, [])
    [(part, data)] = encode_split(batch, max_bytes=1024)
    assert len(part) == 0
    assert decode(data).equals(batch)


def test_encode_split_row_that_cannot_fit():
    with pytest.raises(WireError) as info:
        encode_split(sample(3), max_bytes=200)
    assert info.value.reason is Reason.OVERSIZE


@pytest.mark.parametrize("cap", [0, -1, IOT_CORE_MAX_BYTES + 1, 10**6, 1024.0, True])
def test_encode_split_rejects_bad_caps(cap):
    with pytest.raises(ValueError, match="max_bytes"):
        encode_split(sample(3), max_bytes=cap)


def test_encode_split_accepts_the_hard_limit():
    parts = encode_split(sample(4000), max_bytes=IOT_CORE_MAX_BYTES)
    assert all(len(d) <= IOT_CORE_MAX_BYTES for _, d in parts)


def test_encode_split_refuses_sequence_overflow():
    batch = sample(400, seq=2**63 - 2)
    with pytest.raises(WireError) as info:
        encode_split(batch, max_bytes=5120)
    assert info.value.reason is Reason.BAD_SEQUENCE


def test_encode_split_of_events_keeps_reasons():
    batch = events_sample()
    parts = encode_split(batch, max_bytes=480)
    assert len(parts) > 1
    assert all(len(d) <= 480 for _, d in parts)
    decoded = [decode(d) for _, d in parts]
    assert ReadingBatch.concat(decoded).with_sequence(batch.sequence).equals(batch)


# --- status ------------------------------------------------------------------------------------


def test_status_round_trip():
    status = GatewayStatus("gw-0001", "online", T0, "0.1.0+g3f2a", 1200, 96_000, 3)
    data = encode_status(status)
    assert orjson.loads(data) == {
        "v": 1,
        "type": "status",
        "gateway": "gw-0001",
        "state": "online",
        "sent_ms": T0,
        "version": "0.1.0+g3f2a",
        "buffer_rows": 1200,
        "buffer_bytes": 96_000,
        "dropped_readings": 3,
    }
    assert decode_status(data) == status
    assert decode_status(zlib.compress(data)) == status
    offline = GatewayStatus("gw-0001", "offline", T0, "0.1.0")
    assert decode_status(encode_status(offline)) == offline


def status_doc(**changes: Any) -> bytes:
    doc = orjson.loads(encode_status(GatewayStatus("gw-0001", "online", T0, "1.2.3")))
    for key, value in changes.items():
        if value is DELETE:
            del doc[key]
        else:
            doc[key] = value
    return dumps(doc)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (status_doc(state="sleeping"), Reason.BAD_VALUE),
        (status_doc(state=1), Reason.BAD_TYPE),
        (status_doc(state=DELETE), Reason.MISSING_FIELD),
        (status_doc(version=""), Reason.BAD_VALUE),
        (status_doc(version="1 2"), Reason.BAD_VALUE),
        (status_doc(version=3), Reason.BAD_TYPE),
        (status_doc(buffer_rows=-1), Reason.BAD_VALUE),
        (status_doc(dropped_readings=True), Reason.BAD_TYPE),
        (status_doc(buffer_bytes=1.5), Reason.BAD_TYPE),
        (status_doc(gateway="gw/1"), Reason.BAD_ID),
        (status_doc(sent_ms=-1), Reason.BAD_TIMESTAMP),
        (status_doc(type="telemetry"), Reason.UNKNOWN_TYPE),
        (status_doc(v=2), Reason.UNKNOWN_VERSION),
        (b"", Reason.EMPTY),
        (b"[]", Reason.NOT_OBJECT),
    ],
)
def test_status_errors(data, reason):
    with pytest.raises(WireError) as info:
        decode_status(data)
    assert info.value.reason is reason


def test_status_counters_default_to_zero_and_extras_are_ignored():
    status = decode_status(status_doc(buffer_rows=DELETE, uptime_s=12))
    assert status.buffer_rows == 0


def test_status_and_telemetry_decoders_refuse_each_other():
    assert reason_of(encode_status(GatewayStatus("gw-1", "online", T0, "1"))) is (
        Reason.UNKNOWN_TYPE
    )
    with pytest.raises(WireError) as info:
        decode_status(encode(sample(2)))
    assert info.value.reason is Reason.UNKNOWN_TYPE


def test_bools_are_caught_whatever_the_whitespace():
    # The decoder skips its exact bool scan when the text cannot hold a true/false literal;
    # pretty-printed JSON puts newlines and spaces after literals, which must still count.
    doc = document()
    assert len(decode(orjson.dumps(doc, option=orjson.OPT_INDENT_2))) == 4
    doc["rows"]["count"][1] = True
    doc["rows"]["unit"][3] = False
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    assert b"true,\n" in text and b"false\n" in text
    assert reason_of(text) is Reason.BAD_TYPE
    spaced = orjson.dumps(document()).replace(b'"count":[60,', b'"count":[true ,\t')
    assert reason_of(spaced) is Reason.BAD_TYPE
    # A string that merely looks like a literal only costs the exact scan.
    doc = document()
    doc["note"] = "true, false]"
    assert len(decode(orjson.dumps(doc))) == 4


# --- the optional delta column ------------------------------------------------------------------


def counter_rows() -> list[WindowRow]:
    """Two counter rows with a delta and one non-counter row without (given 0.0 by from_rows)."""
    return [
        WindowRow(
            "elec-1",
            Channel.ENERGY_IMPORT,
            Unit.KWH,
            T0,
            60,
            1523.1,
            1523.2,
            1523.15,
            1523.2,
            delta=0.125,
        ),
        WindowRow("elec-1", Channel.POWER, Unit.KW, T0, 60, 0.5, 2.5, 1.5, 2.0),
        WindowRow("water-17", Channel.VOLUME, Unit.M3, T0, 4, 88.0, 88.5, 88.25, 88.5, delta=0.5),
    ]


def delta_batch(seq: int = 9) -> ReadingBatch:
    return ReadingBatch.from_rows("gw-0001", seq, T0 + 61_000, 60, counter_rows())


def test_from_rows_adds_delta_only_when_some_row_has_one():
    batch = delta_batch()
    assert batch.delta is not None
    assert batch.delta.dtype == np.float64
    assert batch.delta.tolist() == [0.125, 0.0, 0.5]
    assert not batch.delta.flags.writeable
    assert [r.delta for r in batch.rows()] == [0.125, 0.0, 0.5]
    plain = ReadingBatch.from_rows(
        "gw-0001", 9, T0, 60, [r._replace(delta=None) for r in counter_rows()]
    )
    assert plain.delta is None
    assert [r.delta for r in plain.rows()] == [None, None, None]


@pytest.mark.parametrize("compress", [False, True])
def test_delta_round_trips(compress):
    batch = delta_batch()
    decoded = decode(encode(batch, compress=compress))
    assert decoded.equals(batch)
    assert decoded.rows() == batch.rows()
    assert decoded.delta is not None
    assert decoded.delta.tolist() == [0.125, 0.0, 0.5]
    assert not decoded.delta.flags.writeable


def test_delta_is_the_last_column_and_only_written_when_present():
    doc = orjson.loads(encode(delta_batch()))
    assert list(doc["rows"])[-1] == "delta"
    assert doc["rows"]["delta"] == [0.125, 0.0, 0.5]
    assert "delta" not in orjson.loads(encode(sample(3)))["rows"]
    assert decode(encode(sample(3))).delta is None


def test_delta_is_invisible_to_a_decoder_that_ignores_it():
    # An old decoder ignores rows.delta: what it sees is exactly the batch without the column.
    doc = orjson.loads(encode(delta_batch()))
    del doc["rows"]["delta"]
    old_view = decode(dumps(doc))
    assert old_view.delta is None
    assert [r._replace(delta=None) for r in delta_batch().rows()] == old_view.rows()


def test_delta_in_a_hand_written_document():
    doc = document()
    doc["rows"]["delta"] = [0.019, 0, 0.01, 0]  # integers accepted, as in every value column
    batch = decode(dumps(doc))
    assert batch.delta is not None
    assert batch.delta.tolist() == [0.019, 0.0, 0.01, 0.0]
    assert batch.rows()[0] == WindowRow(
        "elec-000001",
        Channel.ENERGY_IMPORT,
        Unit.KWH,
        T0,
        60,
        1523.112,
        1523.131,
        1523.1215,
        1523.131,
        None,
        0.019,
    )


def test_delta_on_events_round_trips():
    rows = [
        WindowRow("m1", Channel.TAMPER, Unit.FLAG, T0, 1, 1.0, 1.0, 1.0, 1.0, "tamper", 0.0),
    ]
    batch = ReadingBatch.from_rows("gw-0001", 3, T0, 0, rows, kind=Kind.EVENTS)
    decoded = decode(encode(batch))
    assert decoded.equals(batch)
    assert decoded.rows() == rows


@pytest.mark.parametrize(
    ("delta", "reason"),
    [
        (-0.5, Reason.BAD_VALUE),
        (float("nan"), Reason.NON_FINITE),
        (float("inf"), Reason.NON_FINITE),
        ("0.5", Reason.BAD_TYPE),
    ],
)
def test_from_rows_rejects_bad_delta(delta, reason):
    rows = [counter_rows()[0], counter_rows()[1]._replace(delta=delta)]
    with pytest.raises(WireError) as info:
        ReadingBatch.from_rows("gw-0001", 1, T0, 60, rows)
    assert info.value.reason is reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (np.array([0.0, 1.0]), Reason.COLUMN_LENGTH),
        (np.array([0.0, -1e-300, 0.0]), Reason.BAD_VALUE),
        (np.array([0.0, np.nan, 0.0]), Reason.NON_FINITE),
        (np.array(["a", "b", "c"]), Reason.BAD_TYPE),
    ],
)
def test_columns_constructor_rejects_bad_delta(value, reason):
    with pytest.raises(WireError) as info:
        ReadingBatch(**{**_columns(), "delta": value})
    assert info.value.reason is reason


def test_delta_error_names_the_row():
    doc = document()
    doc["rows"]["delta"] = [0.0, 0.0, -0.25, 0.0]
    with pytest.raises(WireError) as info:
        decode(dumps(doc))
    assert info.value.detail == "rows.delta[2] = -0.25, must be >= 0"


def test_encode_refuses_delta_edited_after_validation():
    batch = ReadingBatch(**{**_columns(), "delta": np.zeros(3)})
    assert batch.delta is not None
    batch.delta.setflags(write=True)  # deliberately defeating the read-only guard
    batch.delta[2] = -1.0
    with pytest.raises(WireError) as info:
        encode(batch)
    assert info.value.reason is Reason.BAD_VALUE


def test_slice_with_sequence_and_concat_keep_delta():
    batch = delta_batch()
    part = batch.slice(1, 2)  # the one row whose delta is 0.0 still carries the column
    assert part.delta is not None
    assert part.delta.tolist() == [0.0]
    assert batch.with_sequence(10).delta is batch.delta
    assert ReadingBatch.concat([batch.slice(0, 1), part, batch.slice(2, 3)]).equals(batch)


def test_concat_fills_delta_for_parts_without_it():
    plain = ReadingBatch.from_rows("gw-0001", 9, T0 + 61_000, 60, [counter_rows()[1]])
    joined = ReadingBatch.concat([plain, delta_batch()])
    assert joined.delta is not None
    assert joined.delta.tolist() == [0.0, 0.125, 0.0, 0.5]
    assert ReadingBatch.concat([plain, plain]).delta is None


def test_equals_compares_delta_presence_and_bits():
    batch = delta_batch()
    without = ReadingBatch(**{**_columns()})
    with_zeros = ReadingBatch(**{**_columns(), "delta": np.zeros(3)})
    assert not without.equals(with_zeros)
    assert not with_zeros.equals(without)
    assert not with_zeros.equals(
        ReadingBatch(**{**_columns(), "delta": np.array([0.0, -0.0, 0.0])})
    )
    assert with_zeros.equals(ReadingBatch(**{**_columns(), "delta": np.zeros(3)}))
    other = [r._replace(delta=0.25) if r.delta == 0.125 else r for r in counter_rows()]
    assert not batch.equals(ReadingBatch.from_rows("gw-0001", 9, T0 + 61_000, 60, other))


@pytest.mark.parametrize("compress", [False, True])
def test_encode_split_keeps_delta_in_every_part(compress):
    rows = [
        r._replace(start_ms=T0 + 60_000 * i, meter_id=f"elec-{i:04d}")
        for i in range(400)
        for r in counter_rows()
    ]
    batch = ReadingBatch.from_rows("gw-0001", 50, T0, 60, rows)
    parts = encode_split(batch, max_bytes=1024, compress=compress)
    assert len(parts) > 1
    for part, data in parts:
        assert len(data) <= 1024
        decoded = decode(data)
        assert decoded.delta is not None
        assert decoded.equals(part)
    assert ReadingBatch.concat([decode(d) for _, d in parts]).with_sequence(50).equals(batch)
