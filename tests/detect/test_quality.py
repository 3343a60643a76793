"""Quality score: exact penalties, clipping, rejections, tiers; and the scores the engine gives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from cloud_consumer.detect.engine import Engine
from cloud_consumer.detect.quality import TIERS, score, tier_counts, tier_of
from cloud_consumer.detect.rules.overload import OverloadDetector
from cloud_consumer.detect.rules.spike import SpikeDetector
from cloud_consumer.detect.validate import Flag, Validator
from meterlink_wire.vocab import Channel, Unit
from tests.detect.readings import Reading, columns

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
MINUTE = 60_000
POWER = int(Channel.POWER)
ALL_WARNINGS = Flag.UNIT_AMBIGUOUS | Flag.NEGATIVE | Flag.ABOVE_MAX | Flag.LATE


def series(meter: str, values: Sequence[float], unit: int = int(Unit.KW)) -> list[Reading]:
    return [(meter, T0 + i * 15 * MINUTE, v, POWER, unit) for i, v in enumerate(values)]


def one(flags: Flag | int = 0, rate: bool = False, fault: bool = False) -> int:
    """Score of a single reading."""
    quality = score(
        np.array([int(flags)], dtype=np.uint16),
        np.array([rate], dtype=np.bool_),
        np.array([fault], dtype=np.bool_),
    )
    assert quality.dtype == np.uint8
    return int(quality[0])


@pytest.mark.parametrize(
    ("flags", "rate", "fault", "expected"),
    [
        (0, False, False, 100),
        (Flag.UNIT_CONVERTED, False, False, 95),
        (Flag.UNIT_INFERRED, False, False, 95),
        (Flag.UNIT_CONVERTED | Flag.UNIT_INFERRED, False, False, 95),  # -5 once, whichever
        (Flag.UNIT_AMBIGUOUS, False, False, 85),
        (Flag.NEGATIVE, False, False, 85),
        (Flag.ABOVE_MAX, False, False, 85),
        (Flag.LATE, False, False, 85),
        (0, True, False, 80),
        (0, False, True, 70),
        (0, True, True, 50),
        (Flag.UNIT_INFERRED | Flag.UNIT_AMBIGUOUS, False, False, 80),
        (Flag.UNIT_CONVERTED | Flag.LATE, True, False, 60),  # 100 - 5 - 15 - 20
        (Flag.UNIT_CONVERTED | Flag.ABOVE_MAX, False, True, 50),
        (Flag.NEGATIVE | Flag.ABOVE_MAX | Flag.LATE, False, False, 55),
        (Flag.UNIT_INFERRED | Flag.NEGATIVE | Flag.ABOVE_MAX | Flag.LATE, True, False, 30),
        (ALL_WARNINGS, False, False, 40),
        (ALL_WARNINGS, True, False, 20),
        (ALL_WARNINGS, False, True, 10),
        (ALL_WARNINGS | Flag.UNIT_INFERRED, False, True, 5),
        (ALL_WARNINGS, True, True, 0),  # 60 + 20 + 30 = 110 points: clipped at 0
        (ALL_WARNINGS | Flag.UNIT_INFERRED, True, True, 0),  # 115 points
    ],
)
def test_penalties(flags: Flag | int, rate: bool, fault: bool, expected: int) -> None:
    assert one(flags, rate, fault) == expected


@pytest.mark.parametrize(
    "rejection",
    [
        Flag.FUTURE,
        Flag.BACKDATED,
        Flag.UNKNOWN_METER,
        Flag.BAD_TIME,
        Flag.NOT_FINITE,
        Flag.UNIT_MISMATCH,
    ],
)
def test_rejected_scores_zero(rejection: Flag) -> None:
    assert one(rejection) == 0
    assert one(rejection | Flag.UNIT_CONVERTED) == 0
    assert one(rejection | Flag.LATE, rate=True, fault=True) == 0


def test_score_is_elementwise() -> None:
    flags = np.array([0, int(Flag.UNIT_CONVERTED), int(Flag.NOT_FINITE), int(Flag.LATE)], np.uint16)
    rate = np.array([False, True, True, False])
    fault = np.array([True, False, False, False])
    assert score(flags, rate, fault).tolist() == [70, 75, 0, 85]
    empty = score(np.zeros(0, np.uint16), np.zeros(0, np.bool_), np.zeros(0, np.bool_))
    assert empty.tolist() == []


@pytest.mark.parametrize(
    ("quality", "tier"),
    [
        (100, "premium"),
        (90, "premium"),
        (89, "standard"),
        (70, "standard"),
        (69, "quarantine"),
        (0, "quarantine"),
    ],
)
def test_tier_boundaries(quality: int, tier: str) -> None:
    assert tier_of([quality]).tolist() == [tier]
    assert tier_of(np.array([quality], dtype=np.uint8)).tolist() == [tier]


def test_tier_counts() -> None:
    quality = np.array([100, 90, 89, 70, 69, 0, 95, 0], dtype=np.uint8)
    assert tier_of(quality).tolist() == [
        "premium",
        "premium",
        "standard",
        "standard",
        "quarantine",
        "quarantine",
        "premium",
        "quarantine",
    ]
    assert dict(tier_counts(quality)) == {"premium": 3, "standard": 2, "quarantine": 3}
    assert dict(tier_counts([])) == {"premium": 0, "standard": 0, "quarantine": 0}
    assert list(tier_counts([75])) == list(TIERS)


# --- engine -------------------------------------------------------------------------------------


@pytest.mark.parametrize("validated", [False, True])
def test_engine_spike_reading_scores_80(validated: bool) -> None:
    engine = Engine([SpikeDetector()], validator=Validator() if validated else None)
    found = engine.process(columns(series("m", [1.0, 1.1, 9.0, 1.0])))
    # 9.0 after 1.1 is a rise of 718 %; back to 1.0 is a drop to 11 % (not below 10 %).
    assert found.quality.tolist() == [100, 100, 80, 100]
    assert [a.opened_ms for a in found.alerts] == [T0 + 30 * MINUTE, T0 + 30 * MINUTE]


def test_engine_overload_run_scores_70_without_validator() -> None:
    engine = Engine([OverloadDetector()])
    found = engine.process(columns(series("m", [25.0] * 7 + [3.0])))
    # The condition holds from the 6th reading of the run.
    assert found.quality.tolist() == [100] * 5 + [70, 70, 100]


def test_engine_overload_run_scores_55_with_validator() -> None:
    engine = Engine([OverloadDetector()], validator=Validator())
    found = engine.process(columns(series("m", [25.0] * 7 + [3.0])))
    # Every 25 kW reading is ABOVE_MAX (-15); those in the held run are also a fault (-30).
    assert found.quality.tolist() == [85] * 5 + [55, 55, 100]
    watts = engine.process(columns(series("w", [25_000.0] * 6, unit=int(Unit.W))))
    assert watts.quality.tolist() == [80] * 5 + [50]  # and -5 for the conversion


def test_engine_rate_of_change_and_fault_are_each_counted_once() -> None:
    engine = Engine([SpikeDetector(), OverloadDetector()], validator=Validator())
    found = engine.process(columns(series("m", [1.0, 1.0, 30.0, 1.0, 2.0])))
    # 30 after 1 is a spike and above the maximum; 1 after 30 is a drop.
    assert found.quality.tolist() == [100, 100, 65, 80, 100]


def test_engine_clean_readings_score_100() -> None:
    engine = Engine([SpikeDetector(), OverloadDetector()], validator=Validator())
    found = engine.process(columns(series("m", [1.0, 1.2, 0.9, 1.1, 1.0])))
    assert found.quality.tolist() == [100] * 5
    assert dict(tier_counts(found.quality)) == {"premium": 5, "standard": 0, "quarantine": 0}
