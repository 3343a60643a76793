"""Readings as tuples for rule tests, and the batch of columns the engine takes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cloud_consumer.replay_input import ReadingColumns

Reading = tuple[str, int, float, int, int]
"""meter, ts_ms, value, channel code, unit code"""


def columns(readings: Sequence[Reading]) -> ReadingColumns:
    """One batch with its own meter dictionary (first-appearance order), as the readers build."""
    ids = tuple(dict.fromkeys(r[0] for r in readings))
    position = {meter: i for i, meter in enumerate(ids)}
    return ReadingColumns(
        meter_ids=ids,
        meter=np.array([position[r[0]] for r in readings], dtype=np.int32),
        channel=np.array([r[3] for r in readings], dtype=np.uint8),
        unit=np.array([r[4] for r in readings], dtype=np.uint8),
        ts_ms=np.array([r[1] for r in readings], dtype=np.int64),
        value=np.array([r[2] for r in readings], dtype=np.float64),
    )
