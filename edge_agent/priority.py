"""The priority lane: edge thresholds that publish an event at once, bypassing the windows.

Each threshold watches one channel. A series (meter, channel, unit) *enters an episode* on the
first reading that meets the condition, and that reading becomes one event row. Further readings
that meet it raise nothing; the episode ends on the first reading that does not, and only then can
the series fire again. A stuck meter therefore costs one event, not one per reading. Episodes
follow arrival order, and the lane keeps one set entry per series in an episode.

**Units.** Rows go out with the value and unit the meter gave; standardising units (kW versus W)
is the consumer's job. To compare, the lane scales the value to the channel's reference unit,
because a threshold means a physical quantity: ``above``/``below`` are in kW for power, kvar for
reactive_power and m3/h for flow, so a meter reporting 21,000 W trips a 20 kW threshold and one
reporting 21 W does not. W and var are divided by 1000, MW is multiplied by 1000 and L/min by
0.06; every other unit is compared as given, so set tamper and other thresholds in the unit those
meters send.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.reading import Reading
from meterlink_wire import Channel, Unit, WindowRow, validate_event_reason

_TO_REFERENCE: dict[Unit, float] = {
    Unit.W: 0.001,
    Unit.MW: 1000.0,
    Unit.VAR: 0.001,
    Unit.L_PER_MIN: 0.06,  # 1 L/min = 0.06 m3/h
}
"""Factor from a unit to its channel's reference unit (kW, kvar, m3/h); 1.0 if absent."""


@dataclass(frozen=True)
class Threshold:
    """Raise event ``reason`` when a reading of ``channel`` is strictly above/below a limit.

    The limits are in the channel's reference unit (see the module docstring). At least one is
    set; with both, either side trips it. ``reason`` is an event reason name,
    ``^[a-z][a-z0-9_]{0,31}$``. Raises ValueError (WireError for the reason) when invalid.
    """

    reason: str
    channel: Channel
    above: float | None = None
    below: float | None = None

    def __post_init__(self) -> None:
        validate_event_reason(self.reason)
        if not isinstance(self.channel, Channel):
            raise ValueError(f"threshold {self.reason}: channel must be a Channel")
        if self.above is None and self.below is None:
            raise ValueError(f"threshold {self.reason}: set above, below or both")
        for name, limit in (("above", self.above), ("below", self.below)):
            if limit is not None and (
                isinstance(limit, bool)
                or not isinstance(limit, int | float)
                or not math.isfinite(limit)
            ):
                raise ValueError(f"threshold {self.reason}: {name} must be a finite number")

    def tripped(self, value: float) -> bool:
        """Whether a value, in the reference unit, meets the condition (strict comparison)."""
        return (self.above is not None and value > self.above) or (
            self.below is not None and value < self.below
        )


DEFAULT_THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("overload", Channel.POWER, above=20.0),  # kW: a residential supply
    Threshold("reverse_flow", Channel.FLOW, below=0.0),
    Threshold("tamper", Channel.TAMPER, above=0.5),  # flag 0/1
)
"""Residential defaults: overload above 20 kW, any reverse water flow, a set tamper flag."""

# What an episode is keyed on: which threshold, and the series.
_Episode = tuple[int, str, Unit]


class PriorityLane:
    """Checks readings against thresholds and returns one event row per new episode."""

    def __init__(self, thresholds: Sequence[Threshold]) -> None:
        by_channel: dict[Channel, list[tuple[int, Threshold]]] = {}
        for index, threshold in enumerate(thresholds):
            by_channel.setdefault(threshold.channel, []).append((index, threshold))
        self._by_channel = {c: tuple(ts) for c, ts in by_channel.items()}
        self._active: set[_Episode] = set()

    @property
    def active(self) -> int:
        return len(self._active)

    def check(self, readings: Sequence[Reading]) -> list[WindowRow]:
        """Return the event rows (raw-reading form, with the reason) for episodes that begin.

        A reading of a channel no threshold watches costs one dict lookup.
        """
        events: list[WindowRow] = []
        by_channel = self._by_channel
        active = self._active
        for reading in readings:
            watching = by_channel.get(reading.channel)
            if watching is None:
                continue
            meter_id, channel, unit, ts, value = reading
            scaled = value * _TO_REFERENCE.get(unit, 1.0)
            for index, threshold in watching:
                episode = (index, meter_id, unit)
                if threshold.tripped(scaled):
                    if episode not in active:
                        active.add(episode)
                        events.append(
                            WindowRow(
                                meter_id,
                                channel,
                                unit,
                                ts,
                                1,
                                value,
                                value,
                                value,
                                value,
                                threshold.reason,
                            )
                        )
                else:
                    active.discard(episode)
        return events
