"""Write a small CSV of meter readings with planted faults, and the episodes they must raise.

``python examples/planted_faults.py [DIR]`` writes ``planted-faults.csv`` (15-minute interval
data of a few meters over four days from 2026-01-05, uniform noise of +-5 % around a level per
meter, so nothing fires by chance) and ``planted-faults.expected.jsonl`` (one episode per line:
rule, meter, opened, resolved). ``cloud-consumer replay --input planted-faults.csv`` must print
exactly these episodes (tests/consumer/test_replay_cli.py checks it).

The expected episodes are the ground truth of each plant, worked out from the rules'
definitions, not from running the engine: a fault raises its own rule and, where a sudden jump
is part of the fault, the rate-of-change rules as well (a utility sees both).
"""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

FloatArray = npt.NDArray[np.float64]
START = datetime(2026, 1, 5, tzinfo=UTC)
STEP = timedelta(minutes=15)
POINTS = 4 * 96  # four days
Row = tuple[int, str, float, str, str]  # index, meter, value, unit, channel
Episode = tuple[str, str, int, int | None]  # rule, meter, opened index, resolved index


def iso_step(index: int) -> str:
    """The ISO-8601 time of a 15-minute step from START."""
    return (START + index * STEP).isoformat().replace("+00:00", "Z")


def _series(rng: np.random.Generator, level: float, size: int = POINTS) -> FloatArray:
    values: FloatArray = np.round(level * rng.uniform(0.95, 1.05, size), 4)
    return values


def plant(seed: int = 2026) -> tuple[list[Row], list[Episode]]:
    """Every reading and every expected episode (indices are 15-minute steps from START)."""
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    expected: list[Episode] = []

    def power(meter: str, values: FloatArray, skip: frozenset[int] = frozenset()) -> None:
        rows.extend(
            (i, meter, float(v), "kW", "power") for i, v in enumerate(values) if i not in skip
        )

    def flow(meter: str, values: FloatArray, first: int) -> None:
        rows.extend((first + i, meter, float(v), "L/min", "flow") for i, v in enumerate(values))

    # A healthy meter: nothing at all.
    power("clean-01", _series(rng, 1.5))

    # One reading 8x the level: a 700 % rise (spike) that is also a robust-z outlier; both clear
    # at the next reading (a fall to 1/8 is not a > 90 % drop).
    values = _series(rng, 2.0)
    values[100] *= 8
    power("spike-01", values)
    expected += [("spike", "spike-01", 100, 101), ("spike_robust_z", "spike-01", 100, 101)]

    # One reading at 5 % of the level: a > 90 % drop, and the rise back is > 500 %, so the spike
    # episode spans two readings; robust z fires at the low reading only.
    values = _series(rng, 2.0)
    values[150] *= 0.05
    power("drop-01", values)
    expected += [("spike", "drop-01", 150, 152), ("spike_robust_z", "drop-01", 150, 151)]

    # 8 readings at 22 kW on an 18 kW service: overload from the 6th (index 205) until the level
    # returns (208); +22 % is no spike, but each 22 kW reading is a robust-z outlier.
    values = _series(rng, 18.0)
    values[200:208] = 22.0
    power("overload-01", values)
    expected += [("overload", "overload-01", 205, 208), ("spike_robust_z", "overload-01", 200, 208)]

    # The register freezes at its last value from index 250 to the end: the run starts at index
    # 249 (equal value), so stuck_value opens 24 h (96 steps) later and is still open at the end.
    values = _series(rng, 1.2)
    values[250:] = values[249]
    power("stuck-01", values)
    expected += [("stuck_value", "stuck-01", 249 + 96, None)]

    # Zeros from index 150 to the end: zero_run opens after 48 h (192 steps), still open. The
    # fall to zero is a > 90 % drop (one reading); robust z fires on every zero until its
    # baseline (recomputed every 6 readings from the 30th: at 30, 36, ... 180) has 30 zeros in
    # the 60-point window, at the 180th reading: the median becomes (0 + lowest level) / 2.
    values = _series(rng, 0.8)
    values[150:] = 0.0
    power("zero-01", values)
    expected += [
        ("spike", "zero-01", 150, 151),
        ("spike_robust_z", "zero-01", 150, 180),
        ("zero_run", "zero-01", 150 + 192, None),
    ]

    # Silent from index 100 to 119 (a 5.25 h gap: missing_short, from the last reading before it
    # to the first after), and 200-203 (1.25 h: interpolated, no alert).
    power("gap-01", _series(rng, 1.0), skip=frozenset(range(100, 120)) | frozenset(range(200, 204)))
    expected += [("missing_short", "gap-01", 99, 120)]

    # Water: flow that never stops for 30 h is a leak once 24 complete clock hours had flow.
    flow("leak-01", _series(rng, 1.0, 120), first=0)
    expected += [("continuous_flow", "leak-01", 96, None)]

    # A burst: 40 L/min for 45 minutes in 2 L/min flow (20 h of data, too short to be a leak).
    # Burst holds from 30 min into the run; the jump up and the fall back are spikes; robust z
    # fires on all three high readings.
    values = _series(rng, 2.0, 80)
    values[40:43] = 40.0
    flow("burst-01", values, first=200)
    expected += [
        ("burst", "burst-01", 242, 243),
        ("spike", "burst-01", 240, 241),
        ("spike", "burst-01", 243, 244),
        ("spike_robust_z", "burst-01", 240, 243),
    ]

    # Backflow: one reading of -0.5 L/min. It is also a > 90 % drop and a robust-z outlier.
    values = _series(rng, 1.0, 80)
    values[30] = -0.5
    flow("backflow-01", values, first=300)
    expected += [
        ("reverse_flow", "backflow-01", 330, 331),
        ("spike", "backflow-01", 330, 331),
        ("spike_robust_z", "backflow-01", 330, 331),
    ]
    rows.sort(key=lambda row: (row[0], row[1]))
    return rows, expected


def expected_records(expected: list[Episode]) -> list[dict[str, object]]:
    """The expected episodes as JSON objects, in (opened, meter, rule) order."""
    return [
        {"rule": rule, "meter_id": meter, "opened": iso_step(opened),
         "resolved": None if resolved is None else iso_step(resolved)}
        for rule, meter, opened, resolved in sorted(expected, key=lambda e: (e[2], e[1], e[0]))
    ]  # fmt: skip


def write(folder: Path) -> tuple[Path, Path]:
    """Write the CSV and the expected episodes into ``folder``; return both paths."""
    rows, expected = plant()
    folder.mkdir(parents=True, exist_ok=True)
    data, truth = folder / "planted-faults.csv", folder / "planted-faults.expected.jsonl"
    with data.open("w", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(["timestamp", "meter_id", "value", "unit", "channel"])
        for index, meter, value, unit, channel in rows:
            out.writerow([iso_step(index), meter, repr(value), unit, channel])
    truth.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in expected_records(expected)))
    return data, truth


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)):
        print(path)
