"""`cloud-consumer replay`: planted faults come back as exactly the planted episodes.

The CSV is ``examples/planted-faults.csv``, written by ``examples/planted_faults.py`` together
with the episodes each plant must raise (worked out from the rules' definitions). The committed
files must be what the generator writes, and the replay must print exactly those episodes,
whatever the chunk size and whichever input format carries the readings.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from cloud_consumer.__main__ import main
from cloud_consumer.detect.config import DetectSettings, load_detect
from cloud_consumer.replay_input import read_csv
from examples import planted_faults
from meterlink_config import TomlReader
from meterlink_wire import ReadingBatch, encode
from meterlink_wire.batch import WindowRow
from meterlink_wire.vocab import Channel, Unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EPISODE_LINE = re.compile(
    r"^  (?P<rule>\S+)\s+(?P<severity>\S+)\s+(?P<meter>\S+) (?P<channel>\S+)\s+"
    r"(?P<opened>\S+) \.\. (?P<resolved>\S+)$"
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, object]]]:
    data, truth = planted_faults.write(tmp_path_factory.mktemp("planted"))
    expected = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    return data, expected


def printed_episodes(out: str) -> list[dict[str, object]]:
    """The episode lines of a replay summary, as expected-file records."""
    found = []
    for line in out.split("episodes:", 1)[1].splitlines():
        match = EPISODE_LINE.match(line)
        if match:
            resolved = match["resolved"]
            found.append(
                {
                    "rule": match["rule"],
                    "meter_id": match["meter"],
                    "opened": match["opened"],
                    "resolved": None if resolved == "open" else resolved,
                }
            )
    return found


def by_opening(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(records, key=lambda r: (str(r["opened"]), str(r["meter_id"]), str(r["rule"])))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_committed_example_is_what_the_generator_writes(
    planted: tuple[Path, list[dict[str, object]]],
) -> None:
    data, _ = planted
    assert (EXAMPLES / "planted-faults.csv").read_bytes() == data.read_bytes()
    truth = data.with_name("planted-faults.expected.jsonl")
    assert (EXAMPLES / "planted-faults.expected.jsonl").read_bytes() == truth.read_bytes()


def test_replay_prints_exactly_the_planted_episodes(
    planted: tuple[Path, list[dict[str, object]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, expected = planted
    output = tmp_path / "alerts.jsonl"
    code, out, err = run(capsys, "--input", str(data), "--output", str(output))
    assert (code, err) == (0, "")
    assert by_opening(printed_episodes(out)) == by_opening(expected)
    rows = sum(len(columns) for columns, _ in read_csv(data))
    assert f"{rows:,} readings" in out
    assert f"accepted {rows:,}, rejected 0" in out
    assert "estimates interpolated into short gaps: 4" in out  # gap-01's 1.25 h silence
    # The output file holds every event: each episode's open, and its resolution if any; a gap
    # is known only once it has ended, so its episode is one (resolved) event.
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    resolved = sum(1 for e in expected if e["resolved"] is not None)
    gaps = sum(1 for e in expected if str(e["rule"]).startswith("missing_"))
    assert len(records) == len(expected) + resolved - gaps
    final = {r["episode_id"]: r for r in records}
    assert by_opening(
        [{k: r[k] for k in ("rule", "meter_id", "opened", "resolved")} for r in final.values()]
    ) == by_opening(expected)


def test_replay_is_deterministic_and_chunk_size_independent(
    planted: tuple[Path, list[dict[str, object]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, _ = planted
    outputs: list[list[bytes]] = []
    for chunk in ("100000", "97", "100000"):
        output = tmp_path / f"alerts-{len(outputs)}.jsonl"
        code, _, _ = run(
            capsys, "--input", str(data), "--output", str(output), "--chunk-rows", chunk
        )
        assert code == 0
        outputs.append(sorted(output.read_bytes().splitlines()))
    assert outputs[0] == outputs[1] == outputs[2]  # same episode ids, evidence and all


def test_jsonl_and_wire_inputs_give_the_same_episodes(
    planted: tuple[Path, list[dict[str, object]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, expected = planted
    columns = next(read_csv(data))[0]
    names = columns.meter_names()
    jsonl = tmp_path / "readings.jsonl"
    jsonl.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "ts": int(ts),
                    "meter_id": meter,
                    "value": float(value),
                    "unit": "kW" if channel == 3 else "L/min",
                    "channel": "power" if channel == 3 else "flow",
                }
            )
            + b"\n"
            for ts, meter, value, channel in zip(
                columns.ts_ms.tolist(), names, columns.value, columns.channel.tolist(), strict=True
            )
        )
    )
    wire = tmp_path / "readings.wire"
    rows = [
        WindowRow(meter, Channel(c), Unit.KW if c == Channel.POWER else Unit.L_PER_MIN,
                  ts, 1, v, v, v, v)
        for meter, c, ts, v in zip(
            names, columns.channel.tolist(), columns.ts_ms.tolist(), columns.value.tolist(),
            strict=True,
        )
    ]  # fmt: skip
    with wire.open("wb") as handle:
        for sequence, start in enumerate(range(0, len(rows), 500)):
            batch = ReadingBatch.from_rows("gw-1", sequence, 0, 0, rows[start : start + 500])
            handle.write(encode(batch) + b"\n")
    for path in (jsonl, wire):
        code, out, err = run(capsys, "--input", str(path), "--output", str(tmp_path / "a.jsonl"))
        assert (code, err) == (0, ""), path
        assert by_opening(printed_episodes(out)) == by_opening(expected), path


def test_malformed_rows_are_reported_by_line_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bad.csv"
    data.write_text(
        "timestamp,meter_id,value,unit\n"
        "2026-01-05T00:00:00Z,m1,1.0,kW\n"
        "2026-01-05T00:15:00Z,m1,not-a-number,kW\n"
        "2026-01-05T00:30:00Z,m1,1.1,kW\n"
        "yesterday,m1,1.2,kW\n"
        "2026-01-05T00:45:00Z,m1,1.0,furlongs\n"
        "2026-01-05T00:30:00Z,m1,1.0,kW\n"  # a duplicate: read, then rejected
    )
    code, out, err = run(capsys, "--input", str(data), "--output", str(tmp_path / "a.jsonl"))
    assert (code, err) == (0, "")
    assert "replayed" in out and "3 readings, 3 malformed rows skipped" in out
    assert "accepted 2, rejected 1 (backdated 1)" in out
    lines = [line.strip() for line in out.split("malformed rows (3):", 1)[1].splitlines()]
    assert [line.split(":", 1)[0] for line in lines if line] == ["line 3", "line 5", "line 6"]
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "missing.csv", "--output", "a.jsonl"], "missing.csv: no such file"),
        (["--input", "readings.txt", "--output", "a.jsonl"], "cannot tell the format"),
        (["--input", "r.csv", "--output", "a.jsonl", "--chunk-rows", "0"], "--chunk-rows"),
        (
            ["--input", "r.csv", "--output", "a.jsonl", "--config", "bad.toml"],
            "bad.toml: detect.rules.overload: min_run must be >= 1",
        ),
        (["--input", "r.csv", "--output", "no/such/dir/a.jsonl"], "No such file or directory"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.csv").write_text("timestamp,meter_id,value\n2026-01-05T00:00:00Z,m1,1.0\n")
    (tmp_path / "readings.txt").write_text("")
    (tmp_path / "bad.toml").write_text("[detect.rules.overload]\nmin_run = 0\n")
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and message in err, err


def test_config_narrows_rules_and_changes_thresholds(
    planted: tuple[Path, list[dict[str, object]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, expected = planted
    config = tmp_path / "consumer.toml"
    config.write_text(
        '[detect]\nenabled = ["overload", "stuck_value"]\n'
        "[detect.rules.stuck_value]\nmin_duration_h = 12\n"
    )
    code, out, _ = run(
        capsys, "--input", str(data), "--output", str(tmp_path / "a.jsonl"), "--config", str(config)
    )
    assert code == 0
    found = printed_episodes(out)
    assert [(e["rule"], e["meter_id"]) for e in by_opening(found)] == [
        ("overload", "overload-01"),
        ("stuck_value", "stuck-01"),
    ]
    stuck = next(e for e in found if e["rule"] == "stuck_value")
    assert stuck["opened"] == planted_faults.iso_step(249 + 48)  # 12 h after the run began
    assert {e["rule"] for e in expected} > {"overload", "stuck_value"}


def test_example_config_states_the_defaults() -> None:
    """config/cloud-consumer.toml spells out the defaults: loading it changes nothing."""
    settings = load_detect(TomlReader(EXAMPLES.parent / "config" / "cloud-consumer.toml"))
    assert settings == DetectSettings()


def test_a_file_sorted_by_meter_gives_the_planted_episodes(
    planted: tuple[Path, list[dict[str, object]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, expected = planted
    header, *lines = data.read_text().splitlines()
    by_meter = tmp_path / "by-meter.csv"
    # meter, then time (ISO timestamps sort as text); the sort is stable
    by_meter.write_text("\n".join([header, *sorted(lines, key=lambda x: x.split(",")[1])]) + "\n")
    outputs = []
    for path, order in ((data, "time"), (by_meter, "time"), (by_meter, "file")):
        output = tmp_path / f"alerts-{len(outputs)}.jsonl"
        code, out, err = run(
            capsys, "--input", str(path), "--output", str(output),
            "--chunk-rows", "97", "--order", order, "--spill-dir", str(tmp_path),
        )  # fmt: skip
        assert (code, err) == (0, ""), order
        assert by_opening(printed_episodes(out)) == by_opening(expected), (path, order)
        outputs.append(sorted(output.read_bytes().splitlines()))
    assert outputs[0] == outputs[1] == outputs[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "alerts-0.jsonl",
        "alerts-1.jsonl",
        "alerts-2.jsonl",
        "by-meter.csv",
    ]  # no spill left behind


def test_time_order_accepts_readings_that_file_order_rejects_as_backdated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "late.csv"
    data.write_text(
        "timestamp,meter_id,value,unit\n"
        "2026-01-05T00:30:00Z,m1,1.0,kW\n"
        "2026-01-05T00:45:00Z,m1,1.1,kW\n"
        "2026-01-05T00:00:00Z,m1,0.9,kW\n"  # a late file: the first readings come last
        "2026-01-05T00:15:00Z,m1,0.8,kW\n"
    )
    found = {}
    for order in ("time", "file"):
        code, out, err = run(
            capsys, "--input", str(data), "--output", str(tmp_path / "a.jsonl"),
            "--chunk-rows", "2", "--order", order,
        )  # fmt: skip
        assert (code, err) == (0, "")
        found[order] = out.splitlines()[1].strip()
    assert found == {
        "time": "accepted 4, rejected 0",
        "file": "accepted 2, rejected 2 (backdated 2)",
    }
