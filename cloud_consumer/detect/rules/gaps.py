"""Gap rules: how long a series went without readings, found when the next reading arrives.

VEE's *gap check* and *estimation* step for interval data: a short gap (under 4 h) is filled by
linear interpolation between the readings around it, and the estimates are flagged (their quality
score loses 10 per interpolated hour); a longer gap is not estimated but reported, as a
``missing_short`` warning (4-24 h) or a ``missing_extended`` critical alert (24 h or more).

Gap episodes are retrospective: the gap is known only once it has ended, so each is reported as
one alert that opened at the last reading before the gap and resolved at the first one after
(``Scores.since_ms``). The ids are therefore the same whichever reading or batch revealed the gap.
A meter that falls silent and stays silent never sends that reading: the live consumer, which
knows the wall clock, sweeps for such series (:meth:`MissingDataDetector.silent`, driven by
:meth:`~cloud_consumer.detect.engine.Engine.sweep`) and opens their episodes under the same ids.
A replay finds every gap that ends within the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_consumer.analytics import HOUR_MS
from cloud_consumer.detect.base import Frame, RuleKind, Scores, constant
from cloud_consumer.detect.episodes import Severity
from cloud_consumer.detect.state import BoolArray, FloatArray, IntArray, SeriesTable


@dataclass(frozen=True)
class MissingDataConfig:
    """Parameters of :class:`MissingDataDetector`."""

    min_gap_ms: int
    """Gaps at least this long fire (strictly shorter ones do not)."""
    max_gap_ms: int | None
    """Gaps at least this long are the next rule's (None: no upper bound)."""
    severity: Severity


SHORT = MissingDataConfig(4 * HOUR_MS, 24 * HOUR_MS, "warning")
"""``missing_short``: 4 h <= gap < 24 h."""
EXTENDED = MissingDataConfig(24 * HOUR_MS, None, "critical")
"""``missing_extended``: gap >= 24 h."""


class MissingDataDetector:
    """VEE gap check: the time between a reading and the previous one of its series.

    Holds at the first reading after a gap of ``min_gap_ms`` or more (and under ``max_gap_ms``),
    as a retrospective episode from the previous reading to this one. A series' first reading
    never holds. Score: gap hours. Stateless: the previous timestamp is the table's.
    """

    name = "missing_data"
    kind: RuleKind = "data"
    default = SHORT

    def __init__(self, config: MissingDataConfig | None = None) -> None:
        config = config or self.default
        if config.min_gap_ms <= 0:
            raise ValueError(f"{self.name}: min_gap_ms must be positive, got {config.min_gap_ms}")
        if config.max_gap_ms is not None and config.max_gap_ms <= config.min_gap_ms:
            raise ValueError(f"{self.name}: max_gap_ms must exceed min_gap_ms")
        self.config = config
        self.severity: Severity = config.severity

    def score(self, frame: Frame, table: SeriesTable) -> Scores:
        config = self.config
        _, previous = frame.last(table)
        known = previous >= 0
        gap = frame.ts_ms - previous
        holds = gap >= config.min_gap_ms
        if config.max_gap_ms is not None:
            holds &= gap < config.max_gap_ms
        # A series' first reading (no previous) is rare once the table is warm: mask only when
        # there is one, rather than pay for whole-batch np.where passes on every step.
        every = bool(known.all())
        if not every:
            gap[~known] = 0
            holds &= known
        hours = gap / HOUR_MS
        return Scores(
            holds,
            hours if every else np.where(known, hours, np.nan),
            {
                "gap_h": hours,
                "threshold_h": constant(config.min_gap_ms / HOUR_MS, len(frame)),
            },
            since_ms=previous,
        )

    def learn(self, frame: Frame, table: SeriesTable) -> None:
        """Nothing to learn: the previous reading lives in the table."""

    def silent(self, newest_ts: IntArray, now_ms: int) -> BoolArray:
        """Where a series last heard of at ``newest_ts`` is, at ``now_ms``, in this rule's range.

        The live sweep's test: the gap so far is at least ``min_gap_ms`` and, with an upper
        bound, still under ``max_gap_ms``. A series with no reading (-1) is not silent.
        """
        config = self.config
        silence = now_ms - newest_ts
        holds = (newest_ts >= 0) & (silence >= config.min_gap_ms)
        if config.max_gap_ms is not None:
            holds &= silence < config.max_gap_ms
        return holds

    def ended_ms(self, since_ms: IntArray, at_ms: IntArray) -> IntArray:
        """When a live episode opened at ``since_ms`` ends if the series is heard at ``at_ms``.

        Where it is not this rule's gap: a silence that outgrew the range ended the episode the
        moment it did (``since + max_gap_ms``; the next rule's episode took over); one that
        turned out shorter (a backlog delivered late, the series complete) ends at ``at_ms``.
        """
        limit = self.config.max_gap_ms
        if limit is None:
            return at_ms
        ended: IntArray = np.minimum(at_ms, since_ms + limit)
        return ended


class MissingShortDetector(MissingDataDetector):
    """VEE gap check, ``missing_short``: a gap of 4 h or more but under 24 h (warning)."""

    name = "missing_short"
    default = SHORT


class MissingExtendedDetector(MissingDataDetector):
    """VEE gap check, ``missing_extended``: a gap of 24 h or more (critical)."""

    name = "missing_extended"
    default = EXTENDED


@dataclass(frozen=True)
class InterpolationConfig:
    """Parameters of :class:`Interpolator`."""

    max_gap_ms: int = 4 * HOUR_MS
    """Gaps strictly shorter than this are filled (longer ones are reported instead)."""
    tolerance: float = 1.5
    """A gap is an interval longer than this many times the series' previous interval."""
    max_points: int = 240
    """At most this many estimates per gap (a finer cadence is coarsened to fit)."""
    penalty_per_hour: int = 10
    """Quality points an estimate loses per hour of gap it fills (rounded up)."""

    def __post_init__(self) -> None:
        if self.max_gap_ms <= 0 or self.tolerance <= 1.0 or self.max_points < 1:
            raise ValueError("interpolation: max_gap_ms > 0, tolerance > 1, max_points >= 1")


@dataclass(frozen=True, eq=False)
class Estimates:
    """Readings estimated into short gaps, as parallel columns (rows are table rows)."""

    rows: IntArray
    ts_ms: IntArray
    value: FloatArray
    quality: IntArray

    def __len__(self) -> int:
        return int(self.rows.size)

    @classmethod
    def empty(cls) -> Estimates:
        """No estimates."""
        nothing = np.zeros(0, dtype=np.int64)
        return cls(nothing, nothing, np.zeros(0), nothing)

    @classmethod
    def join(cls, parts: list[Estimates]) -> Estimates:
        """Concatenate (in the given order)."""
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.ts_ms for p in parts]),
            np.concatenate([p.value for p in parts]),
            np.concatenate([p.quality for p in parts]),
        )


class Interpolator:
    """VEE estimation of short gaps: linear between the readings that bound the gap.

    The series' cadence is its previous interval (the two newest points of its window); an
    interval longer than ``tolerance`` times that and shorter than ``max_gap_ms`` is a gap,
    filled with ``round(gap / cadence) - 1`` estimates (at most ``max_points``) spread evenly
    inside it. Estimates are not fed to the rules (they are not measurements); each carries
    the quality score ``100 - penalty_per_hour * ceil(gap hours)``.
    """

    def __init__(self, config: InterpolationConfig | None = None) -> None:
        self.config = config or InterpolationConfig()

    def fill(self, frame: Frame, table: SeriesTable) -> Estimates:
        """Estimates for the gaps each reading of ``frame`` closes (before the table learns it)."""
        config = self.config
        (previous, last_ts), before_ts = frame.last(table), table.prior_ts(frame.rows)
        gap = frame.ts_ms - last_ts
        cadence = last_ts - before_ts
        # A gap to fill exceeds tolerance * cadence > cadence (tolerance > 1): one integer test
        # over the batch finds the few candidates, and only those are judged in full.
        where = np.flatnonzero(gap > cadence)
        gap, cadence = gap[where], cadence[where]
        fills = (
            (before_ts[where] >= 0)
            & (cadence > 0)
            & (gap < config.max_gap_ms)
            & (gap > config.tolerance * cadence)
        )
        where, gap, cadence = where[fills], gap[fills], cadence[fills]
        if not where.size:
            return Estimates.empty()
        points = np.minimum(np.rint(gap / cadence).astype(np.int64) - 1, config.max_points)
        points = np.maximum(points, 1)
        owner = np.repeat(np.arange(where.size), points)
        step = np.arange(owner.size) - np.repeat(np.cumsum(points) - points, points) + 1
        fraction = step / (points[owner] + 1)
        start, end = previous[where][owner], frame.value[where][owner]
        # Integer arithmetic: a float fraction truncated can land 1 ms before the cadence slot.
        ts = last_ts[where][owner] + gap[owner] * step // (points[owner] + 1)
        hours = -(-gap // HOUR_MS)  # ceil
        quality = np.maximum(100 - config.penalty_per_hour * hours, 0)[owner]
        value: FloatArray = start + (end - start) * fraction
        rows: npt.NDArray[np.int64] = frame.rows[where][owner]
        return Estimates(rows, ts, value, quality)
