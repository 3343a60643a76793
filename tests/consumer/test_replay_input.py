"""Replay input readers: CSV, JSON lines and wire files, streamed in chunks, bad rows skipped."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from cloud_consumer.analytics import hourly
from cloud_consumer.replay_input import (
    DEFAULT_CHANNEL,
    ReadingColumns,
    ReplayInputError,
    RowError,
    concat,
    parse_timestamp,
    read_csv,
    read_jsonl,
    read_wire,
)
from meterlink_wire import Channel, ReadingBatch, Unit, WindowRow, encode

T0 = 1_764_201_600_000  # 2025-11-27T00:00:00Z
P, E, V, F = Channel.POWER, Channel.ENERGY_IMPORT, Channel.VOLUME, Channel.FLOW


def write(tmp_path: Path, text: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


Reader = Callable[..., Iterator[tuple[ReadingColumns, list[RowError]]]]


def read_all(
    reader: Reader, path: Path, **kwargs: int
) -> tuple[ReadingColumns, list[RowError], int]:
    """Read a whole file; return the joined columns, all row errors and the chunk count."""
    chunks = list(reader(path, **kwargs))
    errors = [e for _, chunk_errors in chunks for e in chunk_errors]
    return concat(c for c, _ in chunks), errors, len(chunks)


def rows(columns: ReadingColumns) -> list[tuple[str, int, int, int, float]]:
    return list(
        zip(
            columns.meter_names(),
            columns.channel.tolist(),
            columns.unit.tolist(),
            columns.ts_ms.tolist(),
            columns.value.tolist(),
            strict=True,
        )
    )


def same(a: ReadingColumns, b: ReadingColumns) -> bool:
    return a.meter_ids == b.meter_ids and rows(a) == rows(b)


# --- CSV -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "lines", "expected"),
    [
        (
            "timestamp,meter_id,value",
            ["1764201600,m1,1.5"],
            [("m1", P, 0, T0, 1.5)],
        ),
        (
            "timestamp,meter_id,value,unit",
            [
                "1764201600,m1,1.5,kWh",
                "1764201600,m2,2,W",
                "1764201600,m3,3,m3/h",
                "1764201600,m4,4,",
            ],
            [
                ("m1", E, Unit.KWH, T0, 1.5),
                ("m2", P, Unit.W, T0, 2.0),
                ("m3", F, Unit.M3_PER_H, T0, 3.0),
                ("m4", P, 0, T0, 4.0),
            ],
        ),
        (
            "timestamp,meter_id,value,channel",
            ["1764201600,m1,1.5,voltage", "1764201600,m1,2,"],
            [("m1", Channel.VOLTAGE, 0, T0, 1.5), ("m1", P, 0, T0, 2.0)],
        ),
        (
            "channel,unit,value,meter_id,timestamp",
            ["volume,L,7,w-1,1764201600", ",m3,8,w-1,1764201600", "flow,,9,w-1,1764201600"],
            [
                ("w-1", V, Unit.L, T0, 7.0),
                ("w-1", V, Unit.M3, T0, 8.0),
                ("w-1", F, 0, T0, 9.0),
            ],
        ),
        (
            " Timestamp , METER_ID,Value,Unit,Channel",
            ["1764201600,m1,-1,KW,POWER"],
            [("m1", P, Unit.KW, T0, -1.0)],
        ),
    ],
    ids=["required-only", "unit", "channel", "both-reordered", "case-and-space"],
)
def test_csv_optional_columns(
    tmp_path: Path, header: str, lines: list[str], expected: list[tuple[object, ...]]
) -> None:
    columns, errors, _ = read_all(read_csv, write(tmp_path, "\n".join([header, *lines]) + "\n"))
    assert errors == []
    assert rows(columns) == expected
    assert columns.meter.dtype == np.int32
    assert columns.channel.dtype == np.uint8 and columns.unit.dtype == np.uint8
    assert columns.ts_ms.dtype == np.int64 and columns.value.dtype == np.float64
    assert columns.count is None


def test_default_channel_per_unit() -> None:
    assert {u: DEFAULT_CHANNEL[u] for u in (Unit.W, Unit.KW, Unit.MW)} == dict.fromkeys(
        (Unit.W, Unit.KW, Unit.MW), P
    )
    assert {DEFAULT_CHANNEL[u] for u in (Unit.WH, Unit.KWH, Unit.MWH)} == {E}
    assert {DEFAULT_CHANNEL[u] for u in (Unit.M3, Unit.L)} == {V}
    assert {DEFAULT_CHANNEL[u] for u in (Unit.M3_PER_H, Unit.L_PER_MIN)} == {F}
    assert DEFAULT_CHANNEL.get(0, P) == P and Unit.VARH not in DEFAULT_CHANNEL


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        ("2025-11-27T00:00:00Z", T0),
        ("2025-11-27T00:00:00.250Z", T0 + 250),
        ("2025-11-27T01:30:00+01:30", T0),
        ("2025-11-26T19:00:00-05:00", T0),
        ("2025-11-27T00:00:00", T0),  # naive is UTC
        ("2025-11-27 00:00:01", T0 + 1000),
        ("1764201600", T0),
        ("1764201600.5", T0 + 500),
        ("1764201600000", T0),  # > 1e12: milliseconds
        ("1764201600123", T0 + 123),
        (1764201600, T0),
        (1764201600.25, T0 + 250),
        ("0", 0),
    ],
)
def test_timestamps(raw: object, ms: int) -> None:
    assert parse_timestamp(raw) == ms


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("yesterday", "timestamp 'yesterday': neither ISO-8601 nor epoch seconds"),
        ("", "timestamp is empty"),
        ("  ", "timestamp is empty"),
        ("2026-13-01T00:00:00Z", "timestamp '2026-13-01T00:00:00Z': month must be in 1..12"),
        ("nan", "timestamp nan"),
        ("inf", "timestamp inf"),
        ("-1", "timestamp '-1' outside 1970..2200"),
        ("2300-01-01T00:00:00Z", "timestamp '2300-01-01T00:00:00Z' outside 1970..2200"),
        (True, "not a timestamp: True"),
    ],
)
def test_bad_timestamps(raw: object, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_timestamp(raw)
    assert str(caught.value) == reason


def test_csv_iso_and_epoch_mixed(tmp_path: Path) -> None:
    text = (
        "timestamp,meter_id,value\n"
        "2025-11-27T00:00:00Z,m1,1\n"
        "2025-11-27T00:15:00+00:00,m1,2\n"
        "1764202800,m1,3\n"
        "1764203700000,m1,4\n"
    )
    columns, errors, _ = read_all(read_csv, write(tmp_path, text))
    assert errors == []
    assert columns.ts_ms.tolist() == [T0, T0 + 900_000, T0 + 1_200_000, T0 + 2_100_000]


MALFORMED = (
    "timestamp,meter_id,value,unit\n"  # line 1
    "1764201600,m1,1.0,kW\n"  # 2 good
    "1764201600,m1,2.0\n"  # 3 too few fields
    "1764201600,m2,abc,kW\n"  # 4 bad number
    "1764201600,m2,nan,kW\n"  # 5 NaN
    "\n"  # 6 blank: skipped silently
    "1764201600,m2,inf,kW\n"  # 7 inf
    "soon,m2,1,kW\n"  # 8 bad timestamp
    "1764201600,bad id,1,kW\n"  # 9 bad meter id
    "1764201600,m2,1,furlongs\n"  # 10 unknown unit
    "1764201600,m2,3.5,kW,extra\n"  # 11 too many fields
    "1764205200,m2,4.5,kW\n"  # 12 good
)


def test_csv_malformed_rows_are_reported_and_skipped(tmp_path: Path) -> None:
    columns, errors, _ = read_all(read_csv, write(tmp_path, MALFORMED))
    assert rows(columns) == [("m1", P, Unit.KW, T0, 1.0), ("m2", P, Unit.KW, T0 + 3_600_000, 4.5)]
    assert [(e.line, e.reason) for e in errors] == [
        (3, "column_count: expected 4 fields, got 3"),
        (4, "bad_value: value 'abc' is not a number"),
        (5, "non_finite: value 'nan'"),
        (7, "non_finite: value 'inf'"),
        (8, "bad_timestamp: timestamp 'soon': neither ISO-8601 nor epoch seconds"),
        (9, "bad_meter_id: meter id 'bad id'"),
        (10, "unknown_unit: unit 'furlongs'"),
        (11, "column_count: expected 4 fields, got 5"),
    ]
    assert errors[1].text == "1764201600,m2,abc,kW"


def test_csv_unknown_channel_and_long_text(tmp_path: Path) -> None:
    long_id = "x" * 300
    text = f"timestamp,meter_id,value,channel\n1764201600,m1,1,gas\n1764201600,{long_id},1,power\n"
    columns, errors, _ = read_all(read_csv, write(tmp_path, text))
    assert len(columns) == 0 and columns.meter_ids == ()
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [
        (2, "unknown_channel"),
        (3, "bad_meter_id"),
    ]
    assert len(errors[1].text) == 200


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 100_000])
def test_csv_chunking_gives_the_same_columns(tmp_path: Path, chunk_rows: int) -> None:
    path = write(tmp_path, MALFORMED)
    whole, whole_errors, one = read_all(read_csv, path)
    chunked, chunked_errors, many = read_all(read_csv, path, chunk_rows=chunk_rows)
    assert one == 1
    assert many == -(-11 // chunk_rows)  # 11 lines after the header
    assert same(whole, chunked)
    assert whole_errors == chunked_errors


def test_csv_chunks_of_three(tmp_path: Path) -> None:
    lines = [f"{1764201600 + 60 * i},m{i % 4},{i}.5" for i in range(10)]
    path = write(tmp_path, "timestamp,meter_id,value\n" + "\n".join(lines))  # no final newline
    chunks = list(read_csv(path, chunk_rows=3))
    assert [len(c) for c, _ in chunks] == [3, 3, 3, 1]
    assert chunks[0][0].meter_ids == ("m0", "m1", "m2")
    assert chunks[1][0].meter_ids == ("m3", "m0", "m1")
    whole, _, _ = read_all(read_csv, path)
    assert same(concat(c for c, _ in chunks), whole)
    assert whole.value.tolist() == [i + 0.5 for i in range(10)]


def test_csv_stray_quote_keeps_line_numbers(tmp_path: Path) -> None:
    text = 'timestamp,meter_id,value\n1764201600,"m1,1\n1764201600,m2,2\n'
    columns, errors, _ = read_all(read_csv, write(tmp_path, text))
    assert columns.meter_names() == ["m2"]
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [(2, "column_count")]


def test_csv_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftimestamp,meter_id,value\r\n1764201600,m1,1\r\n")
    columns, errors, _ = read_all(read_csv, path)
    assert errors == [] and rows(columns) == [("m1", P, 0, T0, 1.0)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no CSV header"),
        ("\n1764201600,m1,1\n", "no CSV header"),
        ("1764201600,m1,1\n", "unknown CSV column '1764201600'"),
        ("timestamp,meter,value\n", "unknown CSV column 'meter'"),
        ("timestamp,value\n", "CSV header lacks meter_id"),
        ("timestamp,meter_id,value,value\n", "duplicate column"),
    ],
)
def test_csv_bad_header_is_one_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ReplayInputError) as caught:
        list(read_csv(path))
    assert caught.value.path == str(path)
    assert message in caught.value.reason
    assert "\n" not in str(caught.value)
    assert caught.value.retriable is False


def test_header_only_yields_no_chunks(tmp_path: Path) -> None:
    assert list(read_csv(write(tmp_path, "timestamp,meter_id,value\n"))) == []
    assert list(read_jsonl(write(tmp_path, "", "in.jsonl"))) == []


def test_missing_file_is_one_error(tmp_path: Path) -> None:
    for reader in (read_csv, read_jsonl, read_wire):
        with pytest.raises(ReplayInputError, match="cannot open"):
            list(reader(tmp_path / "absent"))


def test_invalid_utf8_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"timestamp,meter_id,value\n1764201600,m\xe91,1\n1764201600,m2,2\n")
    columns, errors, _ = read_all(read_csv, path)
    assert columns.meter_names() == ["m2"]
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [(2, "bad_meter_id")]


# --- JSON lines ------------------------------------------------------------------------------

JSONL = "\n".join(
    [
        '{"ts": 1764201600, "meter": "m1", "value": 1.5, "unit": "kWh"}',  # 1
        '{"timestamp": "2025-11-27T00:00:00Z", "meter_id": "m2", "value": 2, "channel": "flow"}',
        '{"ts": 1764201600000, "meter": "m1", "value": 3, "unit": null, "extra": [1]}',  # 3
        "",  # 4 blank
        "not json",  # 5
        "[1, 2]",  # 6
        '{"ts": 1764201600, "meter": "m1"}',  # 7
        '{"meter": "m1", "value": 1}',  # 8
        '{"ts": 1764201600, "value": 1}',  # 9
        '{"ts": 1764201600, "meter": "m1", "value": "1"}',  # 10 string value
        '{"ts": 1764201600, "meter": "m1", "value": true}',  # 11
        '{"ts": true, "meter": "m1", "value": 1}',  # 12
        '{"ts": 1764201600, "meter": 7, "value": 1}',  # 13
        '{"ts": 1764201600, "meter": "m1", "value": 1, "unit": 5}',  # 14
        '{"ts": 1764201600, "meter": "m1", "value": 1, "channel": "gas"}',  # 15
        '{"ts": "1764205200", "meter": "m3", "value": -4, "unit": "L/min"}',  # 16
        '{"ts": [1], "meter": ["m1"], "value": {"a": 1}}',  # 17 unhashable everywhere
        '{"ts": 1764201600, "meter": ["m1"], "value": 1, "unit": ["kW"], "channel": {}}',  # 18
        '{"ts": 1764201600, "meter": "m1", "value": 1, "unit": ["kW"]}',  # 19
        '{"ts": 1764201600, "meter": "m1", "value": 1, "channel": ["power"]}',  # 20
        '{"ts": {}, "meter": "m1", "value": 1}',  # 21
    ]
)


def test_jsonl_rows_and_errors(tmp_path: Path) -> None:
    columns, errors, _ = read_all(read_jsonl, write(tmp_path, JSONL, "in.jsonl"))
    assert rows(columns) == [
        ("m1", E, Unit.KWH, T0, 1.5),
        ("m2", F, 0, T0, 2.0),
        ("m1", P, 0, T0, 3.0),
        ("m3", F, Unit.L_PER_MIN, T0 + 3_600_000, -4.0),
    ]
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [
        (5, "not_json"),
        (6, "not_json"),
        (7, "missing_field"),
        (8, "missing_field"),
        (9, "missing_field"),
        (10, "bad_value"),
        (11, "bad_value"),
        (12, "bad_timestamp"),
        (13, "bad_meter_id"),
        (14, "unknown_unit"),
        (15, "unknown_channel"),
        (17, "bad_timestamp"),
        (18, "unknown_unit"),
        (19, "unknown_unit"),
        (20, "unknown_channel"),
        (21, "bad_timestamp"),
    ]
    assert errors[1].reason == "not_json: line holds a list"
    assert errors[2].reason == "missing_field: needs value"
    assert errors[3].reason == "missing_field: needs one of ts|timestamp"
    assert errors[4].reason == "missing_field: needs one of meter|meter_id"
    assert errors[0].text == "not json"


def test_jsonl_nan_and_huge_numbers_are_row_errors(tmp_path: Path) -> None:
    text = '{"ts": 1764201600, "meter": "m1", "value": NaN}\n'
    text += '{"ts": 1764201600, "meter": "m1", "value": 1e999}\n'
    columns, errors, _ = read_all(read_jsonl, write(tmp_path, text, "in.jsonl"))
    assert len(columns) == 0
    assert [e.line for e in errors] == [1, 2]
    assert all(e.reason.startswith("not_json") for e in errors)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7])
def test_jsonl_chunking_gives_the_same_columns(tmp_path: Path, chunk_rows: int) -> None:
    path = write(tmp_path, JSONL, "in.jsonl")
    whole, whole_errors, _ = read_all(read_jsonl, path)
    chunked, chunked_errors, many = read_all(read_jsonl, path, chunk_rows=chunk_rows)
    assert many == -(-21 // chunk_rows)
    assert same(whole, chunked) and whole_errors == chunked_errors


# --- wire ------------------------------------------------------------------------------------


def raw_batch(seq: int) -> ReadingBatch:
    return ReadingBatch.from_rows(
        "gw-1",
        seq,
        T0,
        0,
        [
            WindowRow(f"m{seq}", P, Unit.KW, T0 + seq, 1, 2.0, 2.0, 2.0, 2.0),
            WindowRow("shared", E, Unit.KWH, T0 + seq, 1, 5.0, 5.0, 5.0, 5.0),
        ],
    )


def window_batch() -> ReadingBatch:
    return ReadingBatch.from_rows(
        "gw-1", 9, T0, 900, [WindowRow("shared", P, Unit.W, T0, 3, 1.0, 4.0, 2.5, 3.0)]
    )


def wire_messages() -> list[bytes]:
    corrupt = b'{"v": 1, "type": "telemetry", "gateway": "gw-1", "seq": 5}'
    return [encode(raw_batch(1)), corrupt, encode(window_batch()), encode(raw_batch(2))]


EXPECTED_WIRE = [
    ("m1", P, Unit.KW, T0 + 1, 2.0),
    ("shared", E, Unit.KWH, T0 + 1, 5.0),
    ("shared", P, Unit.W, T0, 2.5),  # window row: the mean
    ("m2", P, Unit.KW, T0 + 2, 2.0),
    ("shared", E, Unit.KWH, T0 + 2, 5.0),
]


def test_wire_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "wire.jsonl"
    path.write_bytes(b"\n".join(wire_messages()) + b"\n")
    columns, errors, _ = read_all(read_wire, path)
    assert rows(columns) == EXPECTED_WIRE
    assert columns.count is not None and columns.count.tolist() == [1, 1, 3, 1, 1]
    assert [(e.line, e.reason) for e in errors] == [
        (2, "bad_message: missing_field: sent_ms is missing")
    ]
    assert errors[0].text.startswith('{"v": 1')


def framed(messages: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(m)) + m for m in messages)


def test_wire_length_prefixed(tmp_path: Path) -> None:
    messages = wire_messages()
    messages[2] = encode(window_batch(), compress=True)  # framing allows zlib payloads
    path = tmp_path / "wire.bin"
    path.write_bytes(framed(messages))
    columns, errors, _ = read_all(read_wire, path)
    assert rows(columns) == EXPECTED_WIRE
    assert [(e.line, e.reason.split(":")[:2]) for e in errors] == [
        (2, ["bad_message", " missing_field"])
    ]


def test_wire_truncated_frame_ends_the_file(tmp_path: Path) -> None:
    data = framed([encode(raw_batch(1)), encode(raw_batch(2))])
    path = tmp_path / "wire.bin"
    path.write_bytes(data[:-5])
    columns, errors, _ = read_all(read_wire, path)
    assert columns.meter_names() == ["m1", "shared"]
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [(2, "truncated")]


def test_wire_bad_length_ends_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wire.bin"
    path.write_bytes(framed([encode(raw_batch(1))]) + b"\xff\xff\xff\xffjunk")
    columns, errors, _ = read_all(read_wire, path)
    assert len(columns) == 2
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [(2, "bad_message")]


def test_wire_chunks_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "wire.jsonl"
    path.write_bytes(b"\n".join(wire_messages()))
    chunks = list(read_wire(path, chunk_rows=2))
    assert [len(c) for c, _ in chunks] == [2, 3]  # whole messages: a chunk closes at >= 2 rows
    assert rows(concat(c for c, _ in chunks)) == EXPECTED_WIRE
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert list(read_wire(empty)) == []


def test_wire_line_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "wire.jsonl"
    path.write_bytes(encode(raw_batch(1)) + b"\n\n{oops\n" + orjson.dumps([1]) + b"\n")
    columns, errors, _ = read_all(read_wire, path)
    assert len(columns) == 2
    assert [(e.line, e.reason.split(":")[1].strip()) for e in errors] == [
        (3, "not_json"),
        (4, "not_object"),
    ]


def test_csv_fast_and_row_by_row_paths_agree(tmp_path: Path) -> None:
    """A block without errors is parsed column-wise; one bad line sends it row by row."""
    lines = [
        "channel,unit,value,meter_id,timestamp",
        ",kW,1.5,m1,2025-11-27T00:00:00Z",
        "voltage,V,230,m2,1764201600",
        ",,7,m1,1764201600000",
        "flow,,-2e-3,m3,2025-11-27T01:00:00+01:00",
        ",Wh,1_000,m2, 1764201601.5",
        "volume,m3,0,m1,2025-11-27",
    ]
    good = write(tmp_path, "\n".join(lines) + "\n", "good.csv")
    bad = write(tmp_path, "\n".join([*lines, ",kW,oops,m1,1764201600"]) + "\n", "bad.csv")
    fast, fast_errors, _ = read_all(read_csv, good)
    slow, slow_errors, _ = read_all(read_csv, bad)
    assert fast_errors == [] and [e.line for e in slow_errors] == [8]
    assert same(fast, slow)
    assert fast.meter_ids == ("m1", "m2", "m3")
    assert rows(fast) == [
        ("m1", P, Unit.KW, T0, 1.5),
        ("m2", Channel.VOLTAGE, Unit.V, T0, 230.0),
        ("m1", P, 0, T0, 7.0),
        ("m3", F, 0, T0, -0.002),
        ("m2", E, Unit.WH, T0 + 1500, 1000.0),
        ("m1", V, Unit.M3, T0, 0.0),
    ]


def test_wire_overlong_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "wire.jsonl"
    path.write_bytes(b"{" + b"x" * 200_000 + b"\n" + encode(raw_batch(1)) + b"\n")
    columns, errors, _ = read_all(read_wire, path)
    assert columns.meter_names() == ["m1", "shared"]
    assert [(e.line, e.reason) for e in errors] == [
        (1, "bad_message: line longer than 131072 bytes")
    ]


def test_csv_bad_rows_are_isolated_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces of a failing block that hold no bad row still parse column-wise, same result."""
    lines = ["timestamp,meter_id,value,unit"]
    bad_lines = {5, 6, 13, 30}
    for number in range(2, 32):  # file lines 2..31
        if number in bad_lines:
            lines.append(f"1764201600,m{number},x{number},kW")
        else:
            lines.append(
                f"{1764201600 + number},m{number % 5},{number},{'W' if number % 2 else ''}"
            )
    path = write(tmp_path, "\n".join(lines) + "\n")
    reference, reference_errors, _ = read_all(read_csv, path, chunk_rows=1)
    monkeypatch.setattr("cloud_consumer.replay_input.CSV_RETRY_LINES", 3)
    for chunk_rows in (7, 30, 100):
        columns, errors, _ = read_all(read_csv, path, chunk_rows=chunk_rows)
        assert same(columns, reference)
        assert errors == reference_errors
    assert [e.line for e in reference_errors] == sorted(bad_lines)
    assert all(e.reason.startswith("bad_value") for e in reference_errors)
    assert reference.value.tolist() == [float(n) for n in range(2, 32) if n not in bad_lines]
    assert reference.unit.tolist() == [
        int(Unit.W) if n % 2 else 0 for n in range(2, 32) if n not in bad_lines
    ]


def test_wire_chunks_keep_each_message_dictionary(tmp_path: Path) -> None:
    """Messages are joined by offsets: the chunk's dictionary is theirs concatenated (an id may
    repeat), and the same meters come back as the same canonical tuple."""
    path = tmp_path / "wire.jsonl"
    path.write_bytes(b"\n".join([encode(raw_batch(1)), encode(raw_batch(1))]) + b"\n")
    [(columns, errors)] = list(read_wire(path))
    assert errors == []
    first, second = columns.dictionaries
    assert first is second  # one validated dictionary, shared
    assert columns.meter_ids == (*first, *second)
    assert columns.meter_names() == ["m1", "shared", "m1", "shared"]
    aggregates = hourly(columns)  # the repeated ids fold into one meter each
    assert aggregates.meter_ids == ("m1", "shared")
