"""Planted gaps: series with silences of 4-24 h and of more than a day."""

from __future__ import annotations

import numpy as np

from meterlink_wire.vocab import Channel, Unit
from tests.detect.plants import Plant, Reading

HOUR = 3_600_000


def _with_gaps(meter: str, gaps_h: list[float], rng: np.random.Generator) -> list[Reading]:
    """15-minute readings, 8 between gaps, each gap as long as given."""
    out: list[Reading] = []
    ts = 0
    for gap in [*gaps_h, 0.0]:
        for _ in range(8):
            out.append((meter, int(Channel.POWER), int(Unit.KW), ts, float(rng.uniform(1, 3))))
            ts += HOUR // 4
        ts += int(gap * HOUR)
    return out


def _short(rng: np.random.Generator) -> list[list[Reading]]:
    return [_with_gaps("gap-short", [4.0, 2.0, 23.9, 30.0], rng)]


def _extended(rng: np.random.Generator) -> list[list[Reading]]:
    return [_with_gaps("gap-long", [24.0, 3.0, 50.0, 5.0], rng)]


PLANTS: dict[str, Plant] = {"missing_short": _short, "missing_extended": _extended}
