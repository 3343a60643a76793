"""Validation: the first VEE step, run on every reading before any rule sees it.

Each reading gets a bitmask of :class:`Flag` values. *Warnings* keep the reading (it reaches the
rules and the archive, with a lower quality score); *rejections* keep it out of detection state
(it is still archived, in the quarantine tier, and counted): a reading the rules cannot place in
time, or that belongs to no known meter, would poison every window it entered.

Unit standardisation happens here, so every rule reads one unit per channel (:data:`CANONICAL`):
power in kW, energy in kWh, volume in m3, flow in L/min... A reading without a unit is inferred
the way utilities' VEE does for interval data: below 10 it is kW (kWh), above 1000 it is W (Wh),
and in between it stays kW with an ``UNIT_AMBIGUOUS`` warning.

Everything is whole-array numpy; the only Python loop runs once per meter id of a batch's
dictionary, and only when a meter registry is configured.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntFlag
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from cloud_consumer.detect.state import BoolArray, FloatArray, IntArray
from cloud_consumer.replay_input import ReadingColumns
from meterlink_wire.vocab import Channel, Unit

FlagArray = npt.NDArray[np.uint16]


class Flag(IntFlag):
    """What validation found in a reading (one bit each, stored as uint16)."""

    UNIT_CONVERTED = 1 << 0
    """Converted to the channel's canonical unit (W -> kW...)."""
    UNIT_INFERRED = 1 << 1
    """No unit given; inferred from the magnitude (or the canonical unit assumed)."""
    UNIT_AMBIGUOUS = 1 << 2
    """No unit given and the magnitude does not tell (10..1000 on power or energy): warning."""
    NEGATIVE = 1 << 3
    """Negative on a channel that cannot be (an import register, a voltage...): warning."""
    ABOVE_MAX = 1 << 4
    """Above the channel's physical maximum (20 kW residential service...): warning."""
    LATE = 1 << 5
    """More than ``late_ms`` behind server time (an edge buffer replaying an outage): warning."""
    FUTURE = 1 << 6
    """Later than server time plus the allowed clock skew: rejected."""
    BACKDATED = 1 << 7
    """At or before the series' newest accepted reading (a duplicate, or out of order): rejected."""
    UNKNOWN_METER = 1 << 8
    """Meter not in the configured registry: rejected."""
    BAD_TIME = 1 << 9
    """Before ``min_ts_ms`` (a gateway clock that never synced): rejected."""
    NOT_FINITE = 1 << 10
    """NaN or infinite value: rejected."""
    UNIT_MISMATCH = 1 << 11
    """A unit that does not measure the channel (volts on a power channel): rejected."""


UNIT_FLAGS = Flag.UNIT_CONVERTED | Flag.UNIT_INFERRED
"""Flags that cost the -5 of a unit conversion (once, whichever)."""
WARNINGS: tuple[Flag, ...] = (Flag.UNIT_AMBIGUOUS, Flag.NEGATIVE, Flag.ABOVE_MAX, Flag.LATE)
"""Flags that cost -15 each."""
REJECTIONS = (
    Flag.FUTURE
    | Flag.BACKDATED
    | Flag.UNKNOWN_METER
    | Flag.BAD_TIME
    | Flag.NOT_FINITE
    | Flag.UNIT_MISMATCH
)
"""Flags that keep a reading out of detection."""

CANONICAL: Mapping[Channel, Unit] = MappingProxyType(
    {
        Channel.ENERGY_IMPORT: Unit.KWH,
        Channel.ENERGY_EXPORT: Unit.KWH,
        Channel.POWER: Unit.KW,
        Channel.REACTIVE_POWER: Unit.KVAR,
        Channel.VOLTAGE: Unit.V,
        Channel.CURRENT: Unit.A,
        Channel.FREQUENCY: Unit.HZ,
        Channel.POWER_FACTOR: Unit.RATIO,
        Channel.VOLUME: Unit.M3,
        Channel.FLOW: Unit.L_PER_MIN,
        Channel.TEMPERATURE: Unit.DEG_C,
        Channel.PRESSURE: Unit.KPA,
        Channel.TAMPER: Unit.FLAG,
    }
)
"""The unit every rule reads for each channel."""

_CONVERSIONS: dict[Channel, dict[Unit, float]] = {
    Channel.ENERGY_IMPORT: {Unit.WH: 1e-3, Unit.KWH: 1.0, Unit.MWH: 1e3},
    Channel.ENERGY_EXPORT: {Unit.WH: 1e-3, Unit.KWH: 1.0, Unit.MWH: 1e3},
    Channel.POWER: {Unit.W: 1e-3, Unit.KW: 1.0, Unit.MW: 1e3},
    Channel.REACTIVE_POWER: {Unit.VAR: 1e-3, Unit.KVAR: 1.0},
    Channel.VOLUME: {Unit.M3: 1.0, Unit.L: 1e-3},
    Channel.FLOW: {Unit.L_PER_MIN: 1.0, Unit.M3_PER_H: 1000.0 / 60.0},
    Channel.PRESSURE: {Unit.KPA: 1.0, Unit.BAR: 100.0},
}

# scale[channel, unit]: factor to the canonical unit; NaN where the unit does not fit the channel.
# Unit 0 (not given) is handled apart.
_SCALE = np.full((256, 256), np.nan)
for _channel, _unit in CANONICAL.items():
    _SCALE[_channel, _unit] = 1.0
    for _other, _factor in _CONVERSIONS.get(_channel, {}).items():
        _SCALE[_channel, _other] = _factor
CANONICAL_UNIT = np.zeros(256, dtype=np.uint8)
"""Canonical unit code of each channel code (0 for unknown channels)."""
for _channel, _unit in CANONICAL.items():
    CANONICAL_UNIT[_channel] = _unit
# Channels whose missing unit is inferred from the magnitude (kilo- below 10, base unit above 1000).
_INFERRED = np.zeros(256, dtype=np.bool_)
_INFERRED[[Channel.POWER, Channel.ENERGY_IMPORT, Channel.ENERGY_EXPORT]] = True

DEFAULT_NON_NEGATIVE = frozenset(
    {
        Channel.ENERGY_IMPORT,
        Channel.ENERGY_EXPORT,
        Channel.VOLUME,
        Channel.VOLTAGE,
        Channel.CURRENT,
        Channel.FREQUENCY,
    }
)
"""Channels that cannot go negative (power and flow can: export, and backflow is its own rule)."""

MIN_TS_MS = 946_684_800_000
"""2000-01-01T00:00:00Z: readings dated before it come from an unsynchronised clock."""


@dataclass(frozen=True)
class ValidationConfig:
    """Parameters of :class:`Validator`; defaults from residential VEE practice."""

    registry: frozenset[str] | None = None
    """Known meter ids; None accepts every meter (no registry configured)."""
    max_future_ms: int = 300_000
    """Allowed gateway clock skew ahead of server time before a reading is rejected (5 min)."""
    late_ms: int = 3_600_000
    """Readings further behind server time than this get the LATE warning (1 h)."""
    min_ts_ms: int = MIN_TS_MS
    """Readings dated before this are rejected (BAD_TIME)."""
    non_negative: frozenset[int] = frozenset(int(c) for c in DEFAULT_NON_NEGATIVE)
    """Channel codes on which a negative value is a warning."""
    max_value: Mapping[int, float] = field(
        default_factory=lambda: MappingProxyType({int(Channel.POWER): 20.0})
    )
    """Physical maximum per channel code, in the canonical unit (20 kW: residential service)."""

    def __post_init__(self) -> None:
        if self.max_future_ms < 0 or self.late_ms <= 0:
            raise ValueError("max_future_ms must be >= 0 and late_ms > 0")
        object.__setattr__(self, "max_value", MappingProxyType(dict(self.max_value)))


@dataclass(frozen=True, eq=False)
class Standardised:
    """A batch after validation: flags, canonical values and units, in input order."""

    flags: FlagArray
    value: FloatArray
    unit: npt.NDArray[np.uint8]

    def rejected(self) -> BoolArray:
        """Readings kept out of detection."""
        rejected: BoolArray = (self.flags & REJECTIONS) != 0
        return rejected


def _mark(flags: FlagArray, where: BoolArray, flag: Flag) -> None:
    """Set ``flag`` where ``where`` is True, in place, in one pass over the batch.

    A boolean-index ``flags[where] |= flag`` would gather, or and scatter: three passes.
    """
    np.bitwise_or(flags, np.uint16(flag), out=flags, where=where)


class Validator:
    """Flags and standardises readings; see the module docstring.

    :meth:`check` does everything that needs only the batch (and server time);
    :meth:`backdated` adds the one check that needs each series' newest accepted reading.
    """

    def __init__(self, config: ValidationConfig | None = None) -> None:
        self.config = config or ValidationConfig()
        self._non_negative = np.zeros(256, dtype=np.bool_)
        self._non_negative[list(self.config.non_negative)] = True
        self._max = np.full(256, np.inf)
        for channel, limit in self.config.max_value.items():
            self._max[channel] = limit

    def check(self, columns: ReadingColumns, now_ms: int | None = None) -> Standardised:
        """Flag and standardise a batch (input order). ``now_ms``: server time (None: replay).

        Without server time (replaying a file) nothing is LATE, and FUTURE is judged against
        the wall clock: a reading dated after the present is wrong whenever it is replayed.
        """
        meter_ids, meter = columns.meter_ids, np.asarray(columns.meter, dtype=np.int32)
        channel = np.asarray(columns.channel, dtype=np.uint8)
        unit = np.asarray(columns.unit, dtype=np.uint8)
        ts_ms = np.asarray(columns.ts_ms, dtype=np.int64)
        value = np.asarray(columns.value, dtype=np.float64)
        config = self.config
        n = value.size
        flags = np.zeros(n, dtype=np.uint16)
        finite = np.isfinite(value)
        _mark(flags, ~finite, Flag.NOT_FINITE)
        _mark(flags, ts_ms < config.min_ts_ms, Flag.BAD_TIME)
        clock = int(time.time() * 1000) if now_ms is None else now_ms
        _mark(flags, ts_ms > clock + config.max_future_ms, Flag.FUTURE)
        if now_ms is not None:
            _mark(flags, ts_ms < now_ms - config.late_ms, Flag.LATE)
        if config.registry is not None:
            known = np.fromiter(
                (m in config.registry for m in meter_ids), dtype=np.bool_, count=len(meter_ids)
            )
            _mark(flags, ~known[meter], Flag.UNKNOWN_METER)
        # Units: a factor per (channel, unit); unit 0 is inferred.
        # One flat index (channel * 256 + unit) gathers ~2x faster than indexing two axes.
        scale = _SCALE.reshape(-1)[(channel.astype(np.uint16) << 8) | unit]
        given = unit != 0
        mismatch = given & np.isnan(scale)  # the only NaN factors once unit 0 is inferred
        _mark(flags, mismatch, Flag.UNIT_MISMATCH)
        _mark(flags, given & (scale != 1.0) & ~mismatch, Flag.UNIT_CONVERTED)
        missing = ~given
        if missing.any():
            magnitude = np.abs(value)
            inferred = missing & _INFERRED[channel]
            base_unit = inferred & (magnitude > 1000.0)
            scale = np.where(missing, 1.0, scale)
            scale[base_unit] = 1e-3
            _mark(flags, missing, Flag.UNIT_INFERRED)
            ambiguous = inferred & (magnitude >= 10.0) & (magnitude <= 1000.0)
            _mark(flags, ambiguous, Flag.UNIT_AMBIGUOUS)
        standard = value * np.where(mismatch, 1.0, scale)
        # Limits judge only finite values in a unit of their channel (230 V on a power channel
        # is a unit mismatch, not 230 kW above the maximum).
        judged = finite & ~mismatch
        _mark(flags, judged & (standard < 0) & self._non_negative[channel], Flag.NEGATIVE)
        _mark(flags, judged & (standard > self._max[channel]), Flag.ABOVE_MAX)
        return Standardised(flags, standard, CANONICAL_UNIT[channel])

    @staticmethod
    def backdated(rows: IntArray, ts_ms: IntArray, newest_ms: IntArray) -> BoolArray:
        """Readings at or before their series' newest accepted reading.

        ``rows`` and ``ts_ms`` are in series order (``series_order``: each series' readings
        together, oldest first); ``newest_ms`` is each reading's series' newest timestamp
        already in the table (-1 for a new series). A reading is compared with the newest of
        the table and the earlier readings of its series in the batch, so a duplicate inside a
        batch is caught exactly as across batches.
        """
        n = rows.size
        if not n:
            return np.zeros(0, dtype=np.bool_)
        reference = newest_ms.copy()
        same = np.zeros(n, dtype=np.bool_)
        np.equal(rows[1:], rows[:-1], out=same[1:])
        # Sorted by time within a series, so the newest earlier reading is the previous one
        # (whether it was itself accepted changes nothing: a backdated one is older still).
        reference[same] = np.maximum(reference[same], ts_ms[:-1][same[1:]])
        result: BoolArray = ts_ms <= reference
        return result
