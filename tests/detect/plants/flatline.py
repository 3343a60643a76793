"""Planted flatlines: a frozen register and power read, a two-day zero run, a too-flat week."""

from __future__ import annotations

import numpy as np

from meterlink_wire.vocab import Channel, Unit
from tests.detect.plants import Reading, series

HOUR = 3_600_000
DAY = 24 * HOUR
START = 19_676 * DAY  # a UTC midnight (2023-11-15T00:00Z)

POWER = (int(Channel.POWER), int(Unit.KW))
ENERGY = (int(Channel.ENERGY_IMPORT), int(Unit.KWH))


def stuck(rng: np.random.Generator) -> list[list[Reading]]:
    """Hourly series frozen for 26-31 hours, then moving again: opens at 24 h, resolves after.

    An energy register stops counting (the run starts at its last rising reading); a power read
    repeats one value (some readings retransmitted at the same timestamp: the engine drops them).
    """
    frozen = int(rng.integers(26, 32))
    steps = rng.uniform(0.1, 1.0, 10 + frozen + 10)
    steps[10 : 10 + frozen] = 0.0
    register = 5_000.0 + np.cumsum(steps)
    ts = START + HOUR * np.arange(register.size)
    power = rng.uniform(0.5, 6.0, 10 + frozen + 10)
    power[10 : 10 + frozen] = power[10]
    repeated = series("stuck-1", POWER, ts, power)
    for i in sorted(rng.choice(len(repeated), 3, replace=False).tolist(), reverse=True):
        repeated.insert(i + 1, repeated[i])
    return [series("stuck-0", ENERGY, ts, register), repeated]


def zeros(rng: np.random.Generator) -> list[list[Reading]]:
    """Hourly power: 10 h of load, 49-55 h of zeros (opens at 48 h), then load again."""
    length = int(rng.integers(49, 56))
    values = rng.uniform(0.5, 3.0, 10 + length + 10)
    values[10 : 10 + length] = 0.0
    ts = START + HOUR * np.arange(values.size)
    return [series("zero-0", POWER, ts, values)]


def flat(rng: np.random.Generator) -> list[list[Reading]]:
    """Hourly power jittered by 0.2 % for 8 days (opens once 7 days observed), then noisy."""
    values = 2.0 * (1.0 + 0.002 * rng.standard_normal(8 * 24 + 24))
    values[8 * 24 :] = rng.uniform(0.5, 4.0, 24)
    values[8 * 24] = 4.0  # far from the level: the week's variation is back at once
    ts = START + HOUR * np.arange(values.size)
    return [series("flat-0", POWER, ts, values)]


PLANTS = {"stuck_value": stuck, "zero_run": zeros, "low_variance": flat}
