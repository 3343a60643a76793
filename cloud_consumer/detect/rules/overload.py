"""Overload rule: a power reading above the service limit for several consecutive readings.

From the utilities' *high-usage check* in meter data validation: residential service is sized for
a maximum demand (20 kW here); demand above it for a sustained stretch (not one inrush reading)
points at a fault, a wrong meter multiplier or an unauthorised load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud_consumer.detect.base import Frame, PerFrame, RowCounts, RuleKind, Scores, constant
from cloud_consumer.detect.episodes import Severity
from cloud_consumer.detect.state import FloatArray, IntArray, SeriesTable
from meterlink_wire.vocab import Channel, Unit

_KW_SCALE = np.ones(256, dtype=np.float64)
_KW_SCALE[Unit.W] = 1e-3
_KW_SCALE[Unit.MW] = 1e3


@dataclass(frozen=True)
class OverloadConfig:
    """Parameters of :class:`OverloadDetector`."""

    limit_kw: float = 20.0
    """Demand above this (strictly) counts towards a run (20 kW: residential service)."""
    min_run: int = 6
    """Consecutive readings above the limit before the condition holds."""
    channels: frozenset[int] = frozenset({Channel.POWER.value})
    """Channel codes the rule applies to (values read as kW; W and MW units are converted)."""
    severity: Severity = "critical"


class OverloadDetector:
    """High-usage check: value above ``limit_kw`` for ``min_run`` or more consecutive readings.

    Per series it keeps the length of the current run of readings above the limit (a counter per
    table row). The condition holds from the ``min_run``-th reading of a run and clears at the
    first reading not above the limit (exactly at the limit clears it), which resolves the
    episode. Score: demand over the limit (kW / limit). Readings of other channels never hold.
    """

    name = "overload"
    kind: RuleKind = "fault"

    def __init__(self, config: OverloadConfig | None = None) -> None:
        self.config = config or OverloadConfig()
        if self.config.min_run < 1:
            raise ValueError(f"min_run must be >= 1, got {self.config.min_run}")
        self.severity: Severity = self.config.severity
        self._applies = np.zeros(256, dtype=np.bool_)
        self._applies[list(self.config.channels)] = True
        self._runs = RowCounts()
        self._steps: PerFrame[tuple[FloatArray, IntArray]] = PerFrame()

    def _demand(self, frame: Frame) -> tuple[FloatArray, IntArray]:
        """Demand in kW and the run length including each reading.

        Worked out once per frame: ``score`` leaves it for ``learn`` (:class:`PerFrame`).
        """
        demand = frame.value * _KW_SCALE[frame.unit]
        above = (demand > self.config.limit_kw) & self._applies[frame.channel]
        runs: IntArray = np.where(above, self._runs.get(frame.rows) + 1, 0)
        return demand, runs

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        demand, runs = self._steps.get(frame, lambda: self._demand(frame))
        limit = self.config.limit_kw
        return Scores(
            runs >= self.config.min_run,
            demand / limit,
            {
                "value": demand,
                "limit": constant(limit, len(frame)),
                "run": runs.astype(np.float64),
            },
        )

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        """Extend or reset each series' run (frames hold one reading per series)."""
        _, runs = self._steps.take(frame, lambda: self._demand(frame))
        self._runs.set(frame.rows, runs)

    def snapshot(self) -> bytes:
        """The run counters (little-endian int64 per row)."""
        return self._runs.snapshot()

    def restore(self, data: bytes) -> None:
        """Load run counters saved by :meth:`snapshot`."""
        runs = RowCounts()
        runs.restore(data)  # validates before replacing: a bad snapshot leaves state untouched
        self._runs = runs
        self._steps.clear()
