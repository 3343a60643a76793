"""Planted water faults: a day-long leak, a burst, backflow on a flow and on a volume series."""

from __future__ import annotations

import numpy as np

from meterlink_wire.vocab import Channel, Unit
from tests.detect.plants import Reading, series

HOUR = 3_600_000
MINUTE = 60_000
START = 472_223 * HOUR  # an hour boundary (2023-11-14T23:00Z)

FLOW = (int(Channel.FLOW), int(Unit.L_PER_MIN))
VOLUME = (int(Channel.VOLUME), int(Unit.M3))


def leak(rng: np.random.Generator) -> list[list[Reading]]:
    """10-minute flow readings over 30 hours, flowing throughout hours 0-25: opens in hour 24.

    A zero reading in hour 26 resolves it; flow then resumes (the run starts again from zero).
    Some readings repeat their timestamp (a retransmitted reading).
    """
    offset = int(rng.integers(0, 10)) * MINUTE
    ts = START + offset + 10 * MINUTE * np.arange(180)
    values = rng.uniform(0.2, 3.0, 180)
    values[26 * 6 + int(rng.integers(0, 6))] = 0.0
    readings = series("leak-0", FLOW, ts, values)
    for i in sorted(rng.choice(180, 5, replace=False).tolist(), reverse=True):
        readings.insert(i + 1, readings[i])
    return [readings]


def burst(rng: np.random.Generator) -> list[list[Reading]]:
    """1-minute flow readings: household use, then two bursts of 40-55 minutes at >= 30 L/min."""
    values = rng.uniform(0.0, 12.0, 200)
    for start in (20, 110):
        length = int(rng.integers(40, 56))
        values[start : start + length] = rng.uniform(30.0, 80.0, length)
    ts = START + MINUTE * np.arange(200)
    return [series("burst-0", FLOW, ts, values)]


def backflow(rng: np.random.Generator) -> list[list[Reading]]:
    """A flow series with negative stretches and a volume register that steps back twice."""
    flow = rng.uniform(0.0, 5.0, 120)
    for start in rng.choice(110, 3, replace=False).tolist():
        flow[start : start + int(rng.integers(1, 6))] = -rng.uniform(0.1, 2.0)
    steps = rng.uniform(0.0, 0.01, 120)
    steps[[30, 31, 80]] = -0.05  # the register runs backwards
    register = 1234.5 + np.cumsum(steps)
    ts = START + 5 * MINUTE * np.arange(120)
    return [
        series("backflow-0", FLOW, ts, flow),
        series("backflow-1", VOLUME, ts, register),
    ]


PLANTS = {"continuous_flow": leak, "burst": burst, "reverse_flow": backflow}
