"""Quality score: one number from 0 to 100 per reading, and the tier it puts the reading in.

The score starts at 100 and loses points for what validation and the rules found at the reading:
-5 for a unit conversion or inference, -15 per validation warning, -20 when a rate-of-change rule
fires at it (spike, drop, robust z), -30 when a fault rule holds at it (stuck, zero run, overload,
leak...). Estimates filled into short gaps lose 10 per interpolated hour instead
(:class:`~cloud_consumer.detect.rules.gaps.Interpolator`). A reading rejected by validation
scores 0. Tiers: premium >= 90, standard 70-89, quarantine < 70 -- billing and settlement take
premium and standard; quarantine waits for a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt

from cloud_consumer.detect.state import BoolArray
from cloud_consumer.detect.validate import REJECTIONS, UNIT_FLAGS, WARNINGS, FlagArray

QualityArray = npt.NDArray[np.uint8]
Tier = Literal["premium", "standard", "quarantine"]
TIERS: tuple[Tier, ...] = ("premium", "standard", "quarantine")

UNIT_PENALTY = 5
WARNING_PENALTY = 15
RATE_OF_CHANGE_PENALTY = 20
FAULT_PENALTY = 30
PREMIUM = 90
"""Lowest premium score."""
STANDARD = 70
"""Lowest standard score; below is quarantine."""


def _flag_penalties() -> npt.NDArray[np.int16]:
    """The validation penalty of every possible flag word (rejections: the whole 100)."""
    flags = np.arange(1 << 16, dtype=np.uint32)
    penalty = np.where((flags & UNIT_FLAGS) != 0, UNIT_PENALTY, 0)
    for warning in WARNINGS:
        penalty += np.where((flags & warning) != 0, WARNING_PENALTY, 0)
    penalty[(flags & REJECTIONS) != 0] = 100
    return penalty.astype(np.int16)


_FLAG_PENALTY = _flag_penalties()
"""Looked up by flag word: one gather per batch instead of a pass per flag."""


def score(flags: FlagArray, rate_of_change: BoolArray, fault: BoolArray) -> QualityArray:
    """Quality of each reading from its validation flags and the rule categories that fired."""
    penalty = _FLAG_PENALTY[flags]  # a fresh int16 array: worked on in place from here
    penalty += rate_of_change * np.int16(RATE_OF_CHANGE_PENALTY)
    penalty += fault * np.int16(FAULT_PENALTY)
    np.subtract(100, penalty, out=penalty)
    quality: QualityArray = np.clip(penalty, 0, 100, out=penalty).astype(np.uint8)  # rejected: 0
    return quality


def tier_of(quality: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """Tier name of each score."""
    q = np.asarray(quality)
    tiers: npt.NDArray[np.str_] = np.where(
        q >= PREMIUM, "premium", np.where(q >= STANDARD, "standard", "quarantine")
    )
    return tiers


def tier_counts(quality: npt.ArrayLike) -> Mapping[Tier, int]:
    """How many scores fall in each tier (every tier present, possibly 0)."""
    q = np.asarray(quality)
    premium = int(np.count_nonzero(q >= PREMIUM))
    quarantine = int(np.count_nonzero(q < STANDARD))
    return {
        "premium": premium,
        "standard": int(q.size) - premium - quarantine,
        "quarantine": quarantine,
    }
