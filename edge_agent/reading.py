"""Reading: one meter value as it enters the agent, validated at the door.

Every source turns its input into `Reading`s with `parse_reading` (a dict from a JSON line or a
mapped MQTT payload) or builds them directly (Modbus). A bad reading raises `RejectedReadingError`
with a reason from a fixed vocabulary; the source counts it and carries on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from edge_agent.errors import RejectedReadingError, RejectReason
from meterlink_wire import Channel, Unit, WireError, validate_meter_id
from meterlink_wire.batch import MAX_TIMESTAMP_MS

#: Longest accepted input line (bytes); a longer one is refused without being parsed.
MAX_LINE_BYTES = 4096
#: Epoch seconds below this are taken as seconds, above as milliseconds (2001 vs 1970+11 days).
_SECONDS_CUTOFF = 1_000_000_000_000
_CHANNELS = {c.wire_name: c for c in Channel}
_UNITS = {u.wire_name: u for u in Unit}


class Reading(NamedTuple):
    """One validated meter value: which meter and quantity, when (epoch ms), and the value."""

    meter_id: str
    channel: Channel
    unit: Unit
    ts_ms: int
    value: float


def parse_reading(doc: Any) -> Reading:
    """Validate a reading given as a mapping with keys meter, channel, value, unit, ts.

    `ts` is epoch seconds (int or float) or epoch milliseconds (int > 10^12); `unit` and
    `channel` use the wire names (`kWh`, `energy_import`). Raises RejectedReadingError.
    """
    if not isinstance(doc, Mapping):
        raise RejectedReadingError(
            RejectReason.NOT_OBJECT, f"expected an object, got {type(doc).__name__}"
        )
    try:
        meter, channel, value, unit, ts = (
            doc["meter"],
            doc["channel"],
            doc["value"],
            doc["unit"],
            doc["ts"],
        )
    except KeyError as exc:
        raise RejectedReadingError(RejectReason.MISSING_FIELD, f"missing {exc.args[0]!r}") from None
    return make_reading(meter, channel, value, unit, ts)


def make_reading(meter: Any, channel: Any, value: Any, unit: Any, ts: Any) -> Reading:
    """Validate the five parts of a reading; raises RejectedReadingError naming the bad one."""
    try:
        meter_id = validate_meter_id(meter)
    except WireError as exc:
        raise RejectedReadingError(RejectReason.BAD_METER_ID, exc.detail) from None
    found_channel = _CHANNELS.get(channel) if isinstance(channel, str) else None
    if found_channel is None:
        raise RejectedReadingError(RejectReason.UNKNOWN_CHANNEL, f"channel {channel!r}")
    found_unit = _UNITS.get(unit) if isinstance(unit, str) else None
    if found_unit is None:
        raise RejectedReadingError(RejectReason.UNKNOWN_UNIT, f"unit {unit!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RejectedReadingError(RejectReason.BAD_VALUE, f"value must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise RejectedReadingError(RejectReason.NON_FINITE, f"value {value!r}")
    return Reading(meter_id, found_channel, found_unit, epoch_ms(ts), number)


def epoch_ms(ts: Any) -> int:
    """Epoch seconds or milliseconds → integer milliseconds; RejectedReadingError if implausible."""
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise RejectedReadingError(RejectReason.BAD_TIMESTAMP, f"ts must be epoch time, got {ts!r}")
    ms = int(ts) if isinstance(ts, int) and ts >= _SECONDS_CUTOFF else round(ts * 1000)
    if not 0 < ms <= MAX_TIMESTAMP_MS:
        raise RejectedReadingError(RejectReason.BAD_TIMESTAMP, f"ts {ts!r} out of range")
    return ms
