import copy
import json
import zlib
from importlib.resources import files
from typing import Any

import jsonschema
import orjson
import pytest

from meterlink_wire import (
    Channel,
    GatewayStatus,
    Kind,
    ReadingBatch,
    Reason,
    Unit,
    WindowRow,
    WireError,
    decode,
    encode,
    encode_status,
)
from meterlink_wire.vocab import EVENT_REASON_PATTERN, GATEWAY_ID_PATTERN, METER_ID_PATTERN

T0 = 1_764_201_600_000
SCHEMA = json.loads(
    files("meterlink_wire").joinpath("schema/wire-v1.schema.json").read_text(encoding="utf-8")
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def telemetry(rows: int = 6, window_s: int = 60) -> ReadingBatch:
    out = []
    for i in range(rows):
        value = 10.0 + i
        if window_s:
            out.append(
                WindowRow(
                    f"elec-{i % 2}",
                    Channel.POWER,
                    Unit.KW,
                    T0,
                    60,
                    value,
                    value + 2,
                    value + 1,
                    value + 0.5,
                )
            )
        else:
            out.append(
                WindowRow(
                    f"water-{i % 3}",
                    Channel.FLOW,
                    Unit.L_PER_MIN,
                    T0 + i,
                    1,
                    value,
                    value,
                    value,
                    value,
                )
            )
    return ReadingBatch.from_rows("gw-0001", 11, T0 + 60_500, window_s, out)


def counters() -> ReadingBatch:
    rows = [
        WindowRow("elec-1", Channel.ENERGY_IMPORT, Unit.KWH, T0, 60, 5.0, 5.5, 5.2, 5.5, None, 0.5),
        WindowRow("elec-1", Channel.POWER, Unit.KW, T0, 60, 1.0, 2.0, 1.5, 2.0),
    ]
    return ReadingBatch.from_rows("gw-0001", 13, T0 + 60_500, 60, rows)


def events() -> ReadingBatch:
    rows = [
        WindowRow("elec-1", Channel.POWER, Unit.KW, T0, 1, 99.0, 99.0, 99.0, 99.0, "overload"),
        WindowRow("elec-1", Channel.TAMPER, Unit.FLAG, T0, 1, 1.0, 1.0, 1.0, 1.0, "tamper"),
    ]
    return ReadingBatch.from_rows("gw-0001", 12, T0 + 10, 0, rows, kind=Kind.EVENTS)


def valid_documents() -> list[dict[str, Any]]:
    payloads = [
        encode(telemetry()),
        encode(telemetry(window_s=0)),
        encode(telemetry(rows=0)),
        encode(events()),
        encode(counters()),
        encode_status(GatewayStatus("gw-0001", "online", T0, "0.1.0", 10, 800, 0)),
        encode_status(GatewayStatus("gw-0001", "offline", T0, "0.1.0")),
    ]
    compressed = zlib.decompress(encode(telemetry(40), compress=True))
    return [orjson.loads(p) for p in [*payloads, compressed]]


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert "cannot express" in SCHEMA["description"]


def test_schema_vocabulary_matches_the_code():
    defs = SCHEMA["$defs"]
    assert defs["channel"]["enum"] == [c.wire_name for c in Channel]
    assert defs["unit"]["enum"] == [u.wire_name for u in Unit]
    assert defs["gatewayId"]["pattern"] == f"^{GATEWAY_ID_PATTERN}$"
    assert defs["meterId"]["pattern"] == f"^{METER_ID_PATTERN}$"
    assert defs["eventReason"]["pattern"] == f"^{EVENT_REASON_PATTERN}$"


@pytest.mark.parametrize("document", valid_documents(), ids=lambda d: d["type"])
def test_encoded_payloads_validate(document):
    VALIDATOR.validate(document)


def test_extra_keys_are_allowed():
    document = orjson.loads(encode(telemetry()))
    document["firmware"] = "2.1"
    document["rows"]["quality"] = [0] * 6
    VALIDATOR.validate(document)


def mutated(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return document


TELEMETRY = orjson.loads(encode(telemetry()))
EVENTS = orjson.loads(encode(events()))
STATUS = orjson.loads(encode_status(GatewayStatus("gw-0001", "online", T0, "0.1.0")))
COUNTERS = orjson.loads(encode(counters()))


@pytest.mark.parametrize(
    "document",
    [
        mutated(TELEMETRY, "v", 2),
        mutated(TELEMETRY, "type", "commands"),
        mutated(TELEMETRY, "seq", None),
        mutated(TELEMETRY, "seq", -1),
        mutated(TELEMETRY, "seq", "11"),
        mutated(TELEMETRY, "gateway", "gw/1"),
        mutated(TELEMETRY, "sent_ms", 7_258_118_400_001),
        mutated(TELEMETRY, "window_s", 86_401),
        mutated(TELEMETRY, "meters", ["elec-0", "elec-0"]),
        mutated(TELEMETRY, "meters", ["bad id"]),
        mutated(TELEMETRY, "channels", ["vibes"]),
        mutated(TELEMETRY, "units", ["furlong"]),
        mutated(TELEMETRY, "rows.max", None),
        mutated(TELEMETRY, "rows.count", [0, 60, 60, 60, 60, 60]),
        mutated(TELEMETRY, "rows.count", [True] * 6),
        mutated(TELEMETRY, "rows.min", ["1"] * 6),
        mutated(TELEMETRY, "rows.meter", [-1] * 6),
        mutated(EVENTS, "window_s", 60),
        mutated(EVENTS, "reasons", None),
        mutated(EVENTS, "rows.reason", None),
        mutated(EVENTS, "reasons", ["Overload"]),
        mutated(STATUS, "state", "sleeping"),
        mutated(STATUS, "version", ""),
        mutated(STATUS, "buffer_rows", -1),
        mutated(COUNTERS, "rows.delta", [0.5, -0.1]),
        mutated(COUNTERS, "rows.delta", ["0.5", 0]),
        mutated(COUNTERS, "rows.delta", 0.5),
        [TELEMETRY],
    ],
)
def test_invalid_documents_fail_the_schema(document):
    assert not VALIDATOR.is_valid(document)


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("rows.min", [1.0], Reason.COLUMN_LENGTH),
        ("rows.meter", [0, 0, 0, 0, 0, 9], Reason.BAD_INDEX),
        ("rows.last", [99.0] * 6, Reason.BAD_VALUE),
        ("rows.count", [60.0] * 6, Reason.BAD_TYPE),
        ("rows.delta", [0.0] * 5, Reason.COLUMN_LENGTH),
    ],
)
def test_rules_beyond_the_schema_are_enforced_by_decode(path, value, reason):
    document = mutated(TELEMETRY, path, value)
    assert VALIDATOR.is_valid(document)  # the documented limits of the schema
    with pytest.raises(WireError) as info:
        decode(orjson.dumps(document))
    assert info.value.reason is reason
