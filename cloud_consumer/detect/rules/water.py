"""Water rules: continuous flow (leak), burst and reverse flow (backflow) alarms.

The three standard alarms of smart water metering (AMI water meters and their head-end systems):

* the **continuous-flow / leak alarm**: in a household, taps and appliances stop, so the flow
  through the meter drops to zero for at least one whole hour every day; flow that never does for
  24 hours points at a leak downstream of the meter (a running toilet, a dripping pipe);
* the **burst alarm**: a flow at or above a high threshold (a burst pipe, an open hydrant) held
  for a sustained time (30 minutes here), not a bath filling for a few minutes;
* the **backflow (reverse-flow) alarm**: water running back from the premises into the network
  (a missing or failed check valve, a pressure drop in the main), seen as a negative flow or as a
  cumulative volume register that runs backwards.

Values arrive in canonical units (flow in L/min, volume in m3): the engine's validation stage
converts them before any detector sees them, so these rules compare raw values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_consumer.analytics import HOUR_MS, MINUTE_MS
from cloud_consumer.detect.base import (
    Frame,
    PerFrame,
    RowCounts,
    RowValues,
    RuleKind,
    Scores,
    constant,
    pack_sections,
    unpack_sections,
)
from cloud_consumer.detect.episodes import Severity
from cloud_consumer.detect.state import BoolArray, FloatArray, IntArray, SeriesTable, SnapshotError
from meterlink_wire.vocab import Channel

_FLOW = int(Channel.FLOW)
_VOLUME = int(Channel.VOLUME)
ROLLOVER_STEP = 0.01
"""Largest advance across a register rollover, as a share of the register's span: far more than
any meter moves between two readings, far less than a drop back from near the top."""


def _spread(values: npt.ArrayLike, index: IntArray, size: int) -> FloatArray:
    """Per-reading floats: ``values`` at ``index``, NaN elsewhere (rules that judge one channel)."""
    spread = np.full(size, np.nan)
    spread[index] = values
    return spread


@dataclass(frozen=True)
class _HourStep:
    """Continuous flow's step: flow positions in the frame, their rows, and the state after."""

    flow: IntArray
    rows: IntArray
    hours: IntArray
    minimums: FloatArray
    runs: IntArray


def _load(data: bytes, values: RowValues, low: float) -> None:
    """Restore ``values`` from ``data``; SnapshotError if a value is below ``low`` or not finite."""
    values.restore(data)
    loaded = values.get(np.arange(len(data) // values.dtype.itemsize, dtype=np.int64))
    if loaded.size and not (np.isfinite(loaded).all() and loaded.min() >= low):
        raise SnapshotError(f"row values out of range (below {low} or not finite)")


# --- continuous flow (leak) ------------------------------------------------------------------


@dataclass(frozen=True)
class ContinuousFlowConfig:
    """Parameters of :class:`ContinuousFlowDetector`."""

    min_hours: int = 24
    """Consecutive clock hours with flow throughout before the condition holds (one day)."""
    severity: Severity = "warning"


class ContinuousFlowDetector:
    """Continuous-flow (leak) alarm: flow never dropped to zero for a whole hour in a day.

    Applies to FLOW readings (L/min); other channels never hold. Readings fall into UTC clock
    hours (``ts_ms // 3_600_000``). Per series the rule keeps the current hour, that hour's
    minimum flow so far and ``run_hours``: the number of consecutive complete (closed) hours,
    each the hour right after the previous one, whose readings all showed flow (hour minimum
    ``> 0``; zero, ``-0.0`` and negative flow are no flow). A reading in a later hour closes the
    current one: ``run_hours`` becomes ``run_hours + 1`` if the closed hour's minimum is ``> 0``,
    else 0; if the new hour does not directly follow the closed one (hours without readings in
    between) the run is broken and ``run_hours`` is 0 (a missing hour is no evidence of flow).
    An hour counts however few readings it holds (a series' first hour too: the rule cannot see
    between readings). A reading with an earlier hour than the current one (out of order across
    batches, outside the engine's contract) is counted in the current hour.

    The condition holds at a reading when ``run_hours`` (complete hours before the reading's own
    hour) is at least ``min_hours`` and the minimum of the reading's hour so far, this reading
    included, is ``> 0``: with the default, it opens at the first flowing reading of the 25th
    hour and resolves at the first reading without flow, which also ends the run. Score:
    ``run_hours`` (NaN for other channels). Evidence: ``run_hours``, ``hour_min_flow``,
    ``threshold_hours``.

    State: 24 bytes per FLOW series (hour index int64, hour minimum float64, run int64).
    """

    name = "continuous_flow"
    kind: RuleKind = "fault"

    def __init__(self, config: ContinuousFlowConfig | None = None) -> None:
        self.config = config or ContinuousFlowConfig()
        if self.config.min_hours < 1:
            raise ValueError(f"min_hours must be >= 1, got {self.config.min_hours}")
        self.severity: Severity = self.config.severity
        self._hour = RowValues(np.int64, -1)
        self._minimum = RowValues(np.float64, 0.0)
        self._run = RowCounts()
        self._steps: PerFrame[_HourStep] = PerFrame()

    def _step(self, frame: Frame) -> _HourStep:
        """The frame's flow readings, and their series' hour, hour minimum and run after them.

        Computed once per frame for ``score`` and ``learn``, on the flow readings only.
        """
        flow = np.flatnonzero(frame.channel == _FLOW)
        rows = frame.rows[flow]
        value = frame.value[flow]
        current = self._hour.get(rows)
        minimum = self._minimum.get(rows)
        run = self._run.get(rows)
        hour = frame.ts_ms[flow] // HOUR_MS
        later = hour > current  # a series' first reading too (current hour -1)
        closed = np.where((minimum > 0) & (hour == current + 1), run + 1, 0)
        # + 0.0 turns -0.0 into 0.0, so snapshots do not depend on which zero was seen.
        return _HourStep(
            flow,
            rows,
            np.maximum(hour, current),
            np.where(later, value, np.minimum(minimum, value)) + 0.0,
            np.where(later, closed, run),
        )

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        step = self._steps.get(frame, lambda: self._step(frame))
        size = len(frame)
        holds = np.zeros(size, dtype=np.bool_)
        holds[step.flow] = (step.runs >= self.config.min_hours) & (step.minimums > 0)
        runs = _spread(step.runs, step.flow, size)
        return Scores(
            holds,
            runs,
            {
                "run_hours": runs,
                "hour_min_flow": _spread(step.minimums, step.flow, size),
                "threshold_hours": constant(self.config.min_hours, size),
            },
        )

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        """Advance each flow series' hour, minimum and run (one reading per series per frame)."""
        step = self._steps.take(frame, lambda: self._step(frame))
        self._hour.set(step.rows, step.hours)
        self._minimum.set(step.rows, step.minimums)
        self._run.set(step.rows, step.runs)

    def snapshot(self) -> bytes:
        """Hour indices, hour minimums and runs: three sections of little-endian row values."""
        return pack_sections(self._hour.snapshot(), self._minimum.snapshot(), self._run.snapshot())

    def restore(self, data: bytes) -> None:
        """Load :meth:`snapshot` bytes; damage raises SnapshotError and leaves state untouched."""
        hour_bytes, minimum_bytes, run_bytes = unpack_sections(data, 3)
        hour = RowValues(np.int64, -1)
        minimum = RowValues(np.float64, 0.0)
        run = RowCounts()
        _load(hour_bytes, hour, -1)
        _load(minimum_bytes, minimum, -math.inf)
        run.restore(run_bytes)
        self._hour, self._minimum, self._run = hour, minimum, run
        self._steps.clear()


# --- burst -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BurstConfig:
    """Parameters of :class:`BurstDetector`."""

    min_flow: float = 30.0
    """Flow at or above this (L/min) counts towards a run (30 L/min: far above household use)."""
    min_duration_ms: int = 30 * MINUTE_MS
    """Time from a run's first reading before the condition holds (30 minutes)."""
    severity: Severity = "critical"


class BurstDetector:
    """Burst alarm: flow at or above ``min_flow`` continuously for ``min_duration_ms`` or longer.

    Applies to FLOW readings (L/min); other channels never hold. Per series the rule keeps the
    start time of the current run (-1 when not in a run): a reading with flow ``>= min_flow``
    starts a run at its own timestamp or continues the current one; a reading below ends it.
    Readings are all the rule sees, so a run spans the time between readings (a gap between two
    high readings does not break it). The condition holds at a reading in a run whose duration
    ``ts - run_start`` is at least ``min_duration_ms`` (exactly 30 minutes holds) and resolves at
    the first reading below ``min_flow``. Score: flow over ``min_flow`` (NaN for other channels).
    Evidence: ``value``, ``run_start_ms``, ``duration_min`` (NaN outside a run),
    ``threshold_flow``, ``threshold_min``.

    State: 8 bytes per FLOW series (run start int64).
    """

    name = "burst"
    kind: RuleKind = "fault"

    def __init__(self, config: BurstConfig | None = None) -> None:
        self.config = config or BurstConfig()
        if not (math.isfinite(self.config.min_flow) and self.config.min_flow > 0):
            raise ValueError(f"min_flow must be finite and > 0, got {self.config.min_flow}")
        if self.config.min_duration_ms < 0:
            raise ValueError(f"min_duration_ms must be >= 0, got {self.config.min_duration_ms}")
        self.severity: Severity = self.config.severity
        self._start = RowValues(np.int64, -1)
        self._steps: PerFrame[tuple[IntArray, BoolArray, IntArray]] = PerFrame()

    def _step(self, frame: Frame) -> tuple[IntArray, BoolArray, IntArray]:
        """The frame's flow readings, which are in a run, and their series' run start after them.

        Worked out once per frame: ``score`` leaves it for ``learn`` (:class:`PerFrame`).
        """
        flow = np.flatnonzero(frame.channel == _FLOW)
        start = self._start.get(frame.rows[flow])
        high: BoolArray = frame.value[flow] >= self.config.min_flow
        starts: IntArray = np.where(high, np.where(start >= 0, start, frame.ts_ms[flow]), -1)
        return flow, high, starts

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        config = self.config
        flow, high, starts = self._steps.get(frame, lambda: self._step(frame))
        duration = frame.ts_ms[flow] - starts
        size = len(frame)
        holds = np.zeros(size, dtype=np.bool_)
        holds[flow] = high & (duration >= config.min_duration_ms)
        return Scores(
            holds,
            _spread(frame.value[flow] / config.min_flow, flow, size),
            {
                "value": frame.value,
                "run_start_ms": _spread(np.where(high, starts, np.nan), flow, size),
                "duration_min": _spread(np.where(high, duration / MINUTE_MS, np.nan), flow, size),
                "threshold_flow": constant(config.min_flow, size),
                "threshold_min": constant(config.min_duration_ms / MINUTE_MS, size),
            },
        )

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        """Start, continue or end each flow series' run (one reading per series per frame)."""
        flow, _, starts = self._steps.take(frame, lambda: self._step(frame))
        self._start.set(frame.rows[flow], starts)

    def snapshot(self) -> bytes:
        """The run starts (little-endian int64 per row, -1: not in a run)."""
        return self._start.snapshot()

    def restore(self, data: bytes) -> None:
        """Load :meth:`snapshot` bytes; damage raises SnapshotError and leaves state untouched."""
        start = RowValues(np.int64, -1)
        _load(data, start, -1)
        self._start = start
        self._steps.clear()


# --- reverse flow (backflow) -----------------------------------------------------------------


@dataclass(frozen=True)
class ReverseFlowConfig:
    """Parameters of :class:`ReverseFlowDetector`."""

    flow_tolerance: float = 0.0
    """A flow below ``-flow_tolerance`` (L/min) is backflow (0: any strictly negative flow)."""
    volume_tolerance: float = 0.001
    """A volume register below the previous one by more than this (m3, one litre) runs backwards
    (the slack absorbs the register's last-digit jitter)."""
    register_rollover: float | None = None
    """Where the fleet's volume registers roll over to zero (m3: 100000.0 for five whole digits),
    if known. A drop that is a short step forward across the rollover (``value + rollover -
    previous`` at most :data:`ROLLOVER_STEP` of the span) is then the register wrapping, not
    backflow. None: every drop is backflow."""
    severity: Severity = "warning"


class ReverseFlowDetector:
    """Backflow alarm: negative flow, or a cumulative volume register running backwards.

    On FLOW readings (L/min) the condition holds where ``value < -flow_tolerance`` (strict: with
    the default 0, ``-0.0`` and ``0.0`` do not hold). On VOLUME readings (the cumulative register,
    m3) it holds where ``value < previous - volume_tolerance``, ``previous`` being the series'
    previous reading (the table's; a series' first reading is never judged). Other channels never
    hold. A register that wraps around (rolls over at its maximum) reads as running backwards
    unless ``register_rollover`` says where it wraps: then a short step forward across the
    rollover is not judged. Score: how far it ran backwards (``-value`` for flow,
    ``previous - value`` for volume; NaN where not judged). Evidence: ``value``, ``previous``
    (NaN for flow), ``tolerance``. Stateless: the previous value lives in the table.
    """

    name = "reverse_flow"
    kind: RuleKind = "fault"

    def __init__(self, config: ReverseFlowConfig | None = None) -> None:
        self.config = config or ReverseFlowConfig()
        for field in ("flow_tolerance", "volume_tolerance"):
            tolerance = getattr(self.config, field)
            if not (math.isfinite(tolerance) and tolerance >= 0):
                raise ValueError(f"{field} must be finite and >= 0, got {tolerance}")
        rollover = self.config.register_rollover
        if rollover is not None and not (math.isfinite(rollover) and rollover > 0):
            raise ValueError(f"register_rollover must be finite and > 0, got {rollover}")
        self.severity: Severity = self.config.severity

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        config = self.config
        size, value = len(frame), frame.value
        # Only flow and volume readings are judged (a few percent of a fleet): work on their
        # positions, leaving NaN (False) elsewhere, rather than in whole-batch passes.
        flow = np.flatnonzero(frame.channel == _FLOW)
        volume = np.flatnonzero(frame.channel == _VOLUME)
        last, _ = frame.last(table)  # NaN for a series' first reading
        previous = _spread(last[volume], volume, size)
        if config.register_rollover is not None:  # a wrapped register did not run backwards
            span = config.register_rollover
            advance = value[volume] + span - previous[volume]  # if it wrapped
            previous[volume[advance <= ROLLOVER_STEP * span]] = np.nan
        flow_value, volume_value, volume_previous = value[flow], value[volume], previous[volume]
        holds = np.zeros(size, dtype=np.bool_)
        holds[flow] = flow_value < -config.flow_tolerance
        holds[volume] = volume_value < volume_previous - config.volume_tolerance
        backwards = _spread(-flow_value, flow, size)
        backwards[volume] = volume_previous - volume_value
        tolerance = _spread(config.flow_tolerance, flow, size)
        tolerance[volume] = config.volume_tolerance
        return Scores(
            holds,
            backwards,
            {"value": frame.value, "previous": previous, "tolerance": tolerance},
        )

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        """Nothing to learn: the previous value lives in the table."""
