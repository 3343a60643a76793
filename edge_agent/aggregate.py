"""Windowed pre-aggregation: fold readings into per-series tumbling windows before buffering.

A series is ``(meter_id, channel, unit)``. Windows are aligned to the epoch
(``start = ts_ms - ts_ms % window_ms``), start inclusive, end exclusive. Each reading costs one or
two dict lookups and a few float operations; no window keeps a list of its readings, so memory is
O(open windows) plus one register value per counter series.

A window closes once ``start + window + allowed_lateness <= now``. Closing moves the watermark
``closed_until_ms`` to an aligned boundary; a reading older than the watermark belongs to a window
that was already emitted, so it is *late*: counted and not added.

**Register advance (delta)** for counter channels (energy_import, energy_export, volume). The
register's readings in time order form a chain that starts at the reference (the latest register
value already emitted for the series, if any) and then runs through the window's readings. The
delta is the sum of the chain's rises; a step down counts as 0. On a register that only goes up
this is exactly ``max(0, last - reference)``. A register that goes *down* (meter replaced, register
rollover, reset) therefore never yields a negative delta, and never a huge one either (no modulus
is guessed): the advance across the drop is taken as unknown (0), and counting resumes from the
lower value, so ``100, 101, 2, 3`` gives ``1 + 0 + 1 = 2``. Readings that arrive out of order
*inside* the span already seen (neither before the first nor after the last reading by time) do not
change the delta; on in-order data the rule is exact. A window whose first reading is older than the
reference (a late partial window after :meth:`WindowAggregator.close_all`) gets no reference step,
so no advance is counted twice. A delta that overflows to infinity (absurd register values) is 0.
Rows of other channels have ``delta`` None. Each close reports the references it moved
(``ClosedWindows.registers``); the pipeline stores them with the closed windows' messages, and a
restarted agent hands them back (``registers=``), so the advance across a restart or a power cut is
counted in the first window after it, not lost. Summed over windows, the deltas of a register that
only goes up then equal its last reading minus its first, restarts or not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from edge_agent.reading import Reading
from meterlink_wire import MAX_WINDOW_S, Channel, Unit, WindowRow

COUNTER_CHANNELS: frozenset[Channel] = frozenset(
    {Channel.ENERGY_IMPORT, Channel.ENERGY_EXPORT, Channel.VOLUME}
)
"""Channels whose value is a cumulative register, so a window reports its advance (``delta``)."""

_Series = tuple[str, Channel, Unit]
MIN_CLOCK_TOLERANCE_MS = 15 * 60 * 1000
"""The least disagreement between the clock and the data that the aggregator acts on."""


def raw_rows(readings: Iterable[Reading]) -> list[WindowRow]:
    """Readings as raw rows (``count`` 1, every statistic the value), in time order."""
    return [
        WindowRow(meter_id, channel, unit, ts, 1, value, value, value, value)
        for meter_id, channel, unit, ts, value in sorted(
            readings, key=lambda r: (r.ts_ms, r.meter_id, r.channel, r.unit)
        )
    ]


@dataclass(frozen=True)
class ClosedWindows:
    """Window rows closed by one call, sorted by (start_ms, meter_id, channel, unit).

    ``readings`` is how many readings were folded into those rows (the sum of their counts).
    ``registers`` are the counter series' references these rows moved, (ts_ms, value) of each
    series' newest register reading, for the pipeline to persist with the rows; bookkeeping
    derived from the rows, so it takes no part in comparing two results.
    """

    rows: list[WindowRow]
    readings: int
    registers: dict[_Series, tuple[int, float]] = field(default_factory=dict, compare=False)


class _Window:
    """Running aggregate of one series in one window: constant size, whatever the count."""

    __slots__ = ("count", "first", "first_ts", "high", "last", "last_ts", "low", "rise", "total")

    def __init__(self, ts_ms: int, value: float) -> None:
        self.count = 1
        self.low = self.high = self.total = value
        self.first = self.last = value
        self.first_ts = self.last_ts = ts_ms
        self.rise = 0.0  # sum of the rises along the chain first..last (counters only)


class WindowAggregator:
    """Per-series tumbling windows with allowed lateness; ``window_s == 0`` passes readings through.

    ``closed_until_ms`` (the watermark) can be restored after a restart: readings older than it
    are late. It is normally a multiple of the window; if it is not (the window length changed
    across the restart), the window straddling it takes the readings at or after it and closes
    when it is due, so nothing is counted twice or dropped early. In pass-through mode nothing is
    ever late and ``close_due`` returns every reading held.

    Windows close by the gateway's clock, which can disagree with the data beyond what
    ``clock_tolerance_ms`` allows (default: two windows, at least 15 minutes; NTP's small steps
    and meters' drift stay below it):

    - a clock that ran ahead and was then put right (a bad RTC, a wrong NTP server) leaves the
      watermark in the future, every reading late until the clock caught up:
      :meth:`clock_went_back` tells, and :meth:`rewind` brings the watermark back to the clock;
    - a reading stamped further ahead of the clock than that (a meter's clock, or the gateway's
      own clock behind after a power cut without an RTC) would hold its window, and the journal
      chunk it came in, open until the clock got there: :meth:`ahead_limit` is where that
      starts, and the pipeline sends such readings at once as raw rows instead of windowing them.
    """

    def __init__(
        self,
        window_s: int,
        allowed_lateness_s: float,
        *,
        counter_channels: Iterable[Channel] = COUNTER_CHANNELS,
        closed_until_ms: int = 0,
        registers: Mapping[_Series, tuple[int, float]] | None = None,
        clock_tolerance_ms: int | None = None,
    ) -> None:
        if type(window_s) is not int or not 0 <= window_s <= MAX_WINDOW_S:
            raise ValueError(f"window_s must be an int in 0..{MAX_WINDOW_S}, got {window_s!r}")
        if (
            isinstance(allowed_lateness_s, bool)
            or not isinstance(allowed_lateness_s, int | float)
            or not 0 <= allowed_lateness_s < math.inf
        ):
            raise ValueError(
                f"allowed_lateness_s must be a finite number >= 0, got {allowed_lateness_s!r}"
            )
        self._window_ms = window_s * 1000
        if type(closed_until_ms) is not int or closed_until_ms < 0:
            raise ValueError(f"closed_until_ms must be an int >= 0, got {closed_until_ms!r}")
        self._lateness_ms = round(allowed_lateness_s * 1000)
        if clock_tolerance_ms is None:
            clock_tolerance_ms = max(2 * self._window_ms, MIN_CLOCK_TOLERANCE_MS)
        if type(clock_tolerance_ms) is not int or clock_tolerance_ms < 0:
            raise ValueError(f"clock_tolerance_ms must be an int >= 0, got {clock_tolerance_ms!r}")
        self._clock_tolerance_ms = clock_tolerance_ms
        self._counters = frozenset(counter_channels)
        self._closed_until_ms = closed_until_ms
        # Open windows grouped by start, so closing pops whole groups and never scans the rest.
        self._open: dict[int, dict[_Series, _Window]] = {}
        self._open_readings = 0
        # Per counter series, the latest register reading emitted (ts_ms, value): the reference
        # for the series' next window. One entry per counter series the gateway has.
        self._registers: dict[_Series, tuple[int, float]] = dict(registers or {})
        self._raw: list[Reading] = []  # pass-through mode only

    @property
    def window_s(self) -> int:
        return self._window_ms // 1000

    @property
    def closed_until_ms(self) -> int:
        return self._closed_until_ms

    @property
    def open_readings(self) -> int:
        return len(self._raw) if not self._window_ms else self._open_readings

    def add(self, readings: Sequence[Reading]) -> int:
        """Fold readings into their windows; return how many were late (and so not added)."""
        window_ms = self._window_ms
        if not window_ms:
            self._raw.extend(readings)
            return 0
        closed_until = self._closed_until_ms
        groups = self._open
        late = 0
        current_start = -1
        current: dict[_Series, _Window] = {}
        # The hot loop: locals only, one dict lookup per reading (plus one per change of window).
        for meter_id, channel, unit, ts, value in readings:
            if ts < closed_until:
                late += 1
                continue
            start = ts - ts % window_ms
            if start != current_start:
                current_start = start
                group = groups.get(start)
                if group is None:
                    group = groups[start] = {}
                current = group
            key = (meter_id, channel, unit)
            window = current.get(key)
            if window is None:
                current[key] = _Window(ts, value)
                continue
            window.count += 1
            window.total += value
            if value < window.low:
                window.low = value
            elif value > window.high:
                window.high = value
            if ts >= window.last_ts:  # ties: the later arrival is the last reading
                step = value - window.last
                if step > 0.0:
                    window.rise += step
                window.last = value
                window.last_ts = ts
            elif ts < window.first_ts:
                step = window.first - value
                if step > 0.0:
                    window.rise += step
                window.first = value
                window.first_ts = ts
        self._open_readings += len(readings) - late
        return late

    def close_due(self, now_ms: int) -> ClosedWindows:
        """Close every window with ``start + window + lateness <= now_ms`` and move the watermark.

        The watermark becomes ``floor((now_ms - lateness) / window) * window`` and never moves
        back. In pass-through mode, every reading held is returned.
        """
        if not self._window_ms:
            return self._flush_raw()
        boundary = self._boundary(now_ms)
        self._closed_until_ms = max(self._closed_until_ms, boundary)
        # start < boundary is start + window + lateness <= now_ms: boundaries are aligned.
        return self._close(sorted(start for start in self._open if start < boundary))

    def close_all(self) -> ClosedWindows:
        """Emit every open window now, partial ones included (shutdown), keeping the watermark.

        The watermark stays where :meth:`close_due` put it, so readings for a window emitted
        partially here are still accepted afterwards (by this aggregator or the next process);
        they form another partial row for the same window, which the consumer merges by count.
        """
        if not self._window_ms:
            return self._flush_raw()
        return self._close(sorted(self._open))

    def clock_went_back(self, now_ms: int) -> bool:
        """Whether the watermark is more than ``clock_tolerance_ms`` ahead of the clock's boundary.

        Then the clock was set back (or was ahead before): readings for the time between are
        all late, though no window of theirs was ever emitted. Never in pass-through mode.
        """
        if not self._window_ms:
            return False
        return self._closed_until_ms - self._boundary(now_ms) > self._clock_tolerance_ms

    def ahead_limit(self, now_ms: int) -> int | None:
        """The timestamp from which a reading is too far ahead of the clock to be windowed.

        ``now_ms + clock_tolerance_ms``; None in pass-through mode, where nothing waits.
        """
        return now_ms + self._clock_tolerance_ms if self._window_ms else None

    def rewind(self, now_ms: int) -> ClosedWindows:
        """Emit every open window (as :meth:`close_all`), then move the watermark back to the clock.

        Nothing already emitted is counted again: the windows go out first, so whatever arrives
        afterwards for the same window makes another partial row, which the consumer merges by
        count. Register references stamped after the new watermark keep their value with the
        time set just before it, so the next windows still measure their advance from them.
        """
        closed = self.close_all()
        if not self._window_ms:
            return closed
        boundary = self._boundary(now_ms)
        self._closed_until_ms = min(self._closed_until_ms, boundary)
        for key, (ts_ms, value) in self._registers.items():
            if ts_ms >= boundary:
                self._registers[key] = closed.registers[key] = (boundary - 1, value)
        return closed

    def _boundary(self, now_ms: int) -> int:
        """The watermark the clock gives: the start of the newest window whose time is up."""
        return (now_ms - self._lateness_ms) // self._window_ms * self._window_ms

    def _flush_raw(self) -> ClosedWindows:
        rows = raw_rows(self._raw)
        self._raw = []
        return ClosedWindows(rows, len(rows))

    def _close(self, starts: list[int]) -> ClosedWindows:
        rows: list[WindowRow] = []
        readings = 0
        moved: dict[_Series, tuple[int, float]] = {}
        # Ascending start, so each window's reference is the register emitted just before it.
        for start in starts:
            group = self._open.pop(start)
            for key in sorted(group):
                window = group[key]
                readings += window.count
                rows.append(self._row(key, start, window, moved))
        self._open_readings -= readings
        return ClosedWindows(rows, readings, moved)

    def _row(
        self, key: _Series, start: int, window: _Window, moved: dict[_Series, tuple[int, float]]
    ) -> WindowRow:
        meter_id, channel, unit = key
        low, high, count = window.low, window.high, window.count
        mean = window.total / count
        if not low <= mean <= high:
            # Rounding of sum / count, or a sum that overflowed (absurd values): stay in range.
            mean = min(max(mean, low), high) if not math.isnan(mean) else low / 2 + high / 2
        delta: float | None = None
        if channel in self._counters:
            delta = self._delta(key, window, moved)
        return WindowRow(
            meter_id, channel, unit, start, count, low, high, mean, window.last, None, delta
        )

    def _delta(
        self, key: _Series, window: _Window, moved: dict[_Series, tuple[int, float]]
    ) -> float:
        """Register advance of a closed window; also moves the series' reference forward."""
        delta = window.rise
        reference = self._registers.get(key)
        if reference is not None:
            reference_ts, reference_value = reference
            if window.first_ts >= reference_ts and window.first > reference_value:
                delta += window.first - reference_value
        if reference is None or window.last_ts >= reference[0]:
            self._registers[key] = moved[key] = (window.last_ts, window.last)
        return delta if delta < math.inf else 0.0
