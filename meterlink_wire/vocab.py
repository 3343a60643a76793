"""The words of the v1 contract: channels, units, id formats and event reason names.

Channel and unit codes are stable uint8 values: a decoded batch carries global codes, so consumers
can index numpy lookup tables with them. Code 0 is never assigned, so a zero-filled array is
recognisably unset. New members get new codes (an additive change); codes are never reused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from meterlink_wire.errors import Reason, WireError, show


class Channel(IntEnum):
    """What a row measures; the value is the stable wire code."""

    ENERGY_IMPORT = 1
    ENERGY_EXPORT = 2
    POWER = 3
    REACTIVE_POWER = 4
    VOLTAGE = 5
    CURRENT = 6
    FREQUENCY = 7
    POWER_FACTOR = 8
    VOLUME = 9
    FLOW = 10
    TEMPERATURE = 11
    PRESSURE = 12
    TAMPER = 13

    @property
    def wire_name(self) -> str:
        """Name used in a message's ``channels`` dictionary, e.g. ``energy_import``."""
        return self.name.lower()

    @classmethod
    def from_wire(cls, name: str) -> Channel:
        """Return the channel for a wire name; WireError(unknown_channel) if there is none."""
        if not isinstance(name, str):
            raise WireError(Reason.BAD_TYPE, f"channel name must be a string, got {show(name)}")
        try:
            return _CHANNEL_BY_NAME[name]
        except KeyError:
            raise WireError(Reason.UNKNOWN_CHANNEL, f"channel {show(name)}") from None


class Unit(IntEnum):
    """Unit of a row's values; the value is the stable wire code."""

    WH = 1
    KWH = 2
    MWH = 3
    W = 4
    KW = 5
    MW = 6
    VARH = 7
    KVARH = 8
    VAR = 9
    KVAR = 10
    V = 11
    A = 12
    HZ = 13
    RATIO = 14  # power factor and other dimensionless values
    M3 = 15
    L = 16
    M3_PER_H = 17
    L_PER_MIN = 18
    DEG_C = 19
    BAR = 20
    KPA = 21
    FLAG = 22  # tamper: 0 or 1

    @property
    def wire_name(self) -> str:
        """Name used in a message's ``units`` dictionary, e.g. ``kWh`` or ``m3/h``."""
        return _UNIT_NAMES[self]

    @classmethod
    def from_wire(cls, name: str) -> Unit:
        """Return the unit for a wire name; WireError(unknown_unit) if there is none."""
        if not isinstance(name, str):
            raise WireError(Reason.BAD_TYPE, f"unit name must be a string, got {show(name)}")
        try:
            return _UNIT_BY_NAME[name]
        except KeyError:
            raise WireError(Reason.UNKNOWN_UNIT, f"unit {show(name)}") from None


_UNIT_NAMES: dict[Unit, str] = {
    Unit.WH: "Wh",
    Unit.KWH: "kWh",
    Unit.MWH: "MWh",
    Unit.W: "W",
    Unit.KW: "kW",
    Unit.MW: "MW",
    Unit.VARH: "varh",
    Unit.KVARH: "kvarh",
    Unit.VAR: "var",
    Unit.KVAR: "kvar",
    Unit.V: "V",
    Unit.A: "A",
    Unit.HZ: "Hz",
    Unit.RATIO: "ratio",
    Unit.M3: "m3",
    Unit.L: "L",
    Unit.M3_PER_H: "m3/h",
    Unit.L_PER_MIN: "L/min",
    Unit.DEG_C: "degC",
    Unit.BAR: "bar",
    Unit.KPA: "kPa",
    Unit.FLAG: "flag",
}
_CHANNEL_BY_NAME: dict[str, Channel] = {c.wire_name: c for c in Channel}
_UNIT_BY_NAME: dict[str, Unit] = {name: u for u, name in _UNIT_NAMES.items()}


def _known(codes: list[int]) -> npt.NDArray[np.bool_]:
    table = np.zeros(256, dtype=np.bool_)
    table[codes] = True
    table.setflags(write=False)
    return table


def _names(names: dict[int, str]) -> npt.NDArray[np.object_]:
    table = np.full(256, "", dtype=object)
    for code, name in names.items():
        table[code] = name
    table.setflags(write=False)
    return table


# Lookup tables indexed by uint8 code (256 entries, so any uint8 array indexes them safely).
CHANNEL_KNOWN: npt.NDArray[np.bool_] = _known([c.value for c in Channel])
"""``CHANNEL_KNOWN[codes]`` is True where a code is an assigned channel."""
CHANNEL_NAMES: npt.NDArray[np.object_] = _names({c.value: c.wire_name for c in Channel})
"""``CHANNEL_NAMES[codes]`` maps codes to wire names ('' for unassigned codes)."""
UNIT_KNOWN: npt.NDArray[np.bool_] = _known([u.value for u in Unit])
"""``UNIT_KNOWN[codes]`` is True where a code is an assigned unit."""
UNIT_NAMES: npt.NDArray[np.object_] = _names({u.value: u.wire_name for u in Unit})
"""``UNIT_NAMES[codes]`` maps codes to wire names ('' for unassigned codes)."""


def channel_codes(names: Sequence[str]) -> npt.NDArray[np.uint8]:
    """Map a message's channel dictionary to global codes (a lookup table for its index column)."""
    return np.array([Channel.from_wire(n).value for n in names], dtype=np.uint8)


def unit_codes(names: Sequence[str]) -> npt.NDArray[np.uint8]:
    """Map a message's unit dictionary to global codes (a lookup table for its index column)."""
    return np.array([Unit.from_wire(n).value for n in names], dtype=np.uint8)


# fullmatch, never match with '$': '$' also matches before a trailing newline.
GATEWAY_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_:-]{0,63}"
"""Gateway id: an AWS IoT thing name without '.', so it is safe as an MQTT topic level; at most
64 characters because it is also the certificate CN (RFC 5280 caps a CN at 64)."""
METER_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
"""Meter id, unique within its gateway."""
EVENT_REASON_PATTERN = r"[a-z][a-z0-9_]{0,31}"
"""Event reason name, e.g. ``overload``, ``reverse_flow``, ``tamper``."""

_GATEWAY_ID = re.compile(GATEWAY_ID_PATTERN)
_METER_ID = re.compile(METER_ID_PATTERN)
_EVENT_REASON = re.compile(EVENT_REASON_PATTERN)
# One regex pass over a NUL-joined dictionary beats one call per entry on the decode hot path.
_METER_IDS = re.compile(f"(?:{METER_ID_PATTERN}\0)*")
_EVENT_REASONS = re.compile(f"(?:{EVENT_REASON_PATTERN}\0)*")


def _checked(value: object, pattern: re.Pattern[str], what: str, bad: Reason) -> str:
    """``value`` if it is a string matching ``pattern``; else WireError (bad_type, or ``bad``)."""
    if not isinstance(value, str):
        raise WireError(Reason.BAD_TYPE, f"{what} must be a string, got {show(value)}")
    if pattern.fullmatch(value) is None:
        raise WireError(bad, f"{what} {show(value)}")
    return value


def validate_gateway_id(value: object) -> str:
    """Return ``value`` if it is a valid gateway id; else raise WireError (bad_type or bad_id)."""
    return _checked(value, _GATEWAY_ID, "gateway id", Reason.BAD_ID)


def validate_meter_id(value: object) -> str:
    """Return ``value`` if it is a valid meter id; else raise WireError (bad_type or bad_id)."""
    return _checked(value, _METER_ID, "meter id", Reason.BAD_ID)


def validate_event_reason(value: object) -> str:
    """Return ``value`` if it is a valid event reason name; else raise WireError(bad_value)."""
    return _checked(value, _EVENT_REASON, "event reason", Reason.BAD_VALUE)


class _Key(Protocol):
    """A cache key: hashable, and sized (its length is what the cache's bound counts)."""

    def __hash__(self) -> int: ...
    def __len__(self) -> int: ...


_K = TypeVar("_K", bound=_Key)
_V = TypeVar("_V")


class DictionaryCache(Generic[_K, _V]):
    """What checking a message dictionary gave, for dictionaries seen before.

    A gateway resends the same dictionaries every window, so checking them again is wasted
    work. The key is the dictionary as a tuple of names (a lookup costs one hash per name) or
    as its JSON text (one hash of the bytes). Bounded by the total length of the keys held
    (names, or bytes): past ``max_size`` the cache starts over.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._known: dict[_K, _V] = {}
        self._size = 0

    def get(self, key: _K) -> _V | None:
        """What checking ``key`` gave, if it was checked before."""
        return self._known.get(key)

    def put(self, key: _K, result: _V) -> _V:
        """Remember what checking ``key`` gave; return it."""
        if self._size + len(key) > self.max_size:
            self._known.clear()
            self._size = 0
        self._known[key] = result
        self._size += len(key)
        return result


class KnownDictionaries(DictionaryCache[tuple[str, ...], tuple[str, ...]]):
    """Meter dictionaries already validated, each kept as one canonical tuple.

    Validating a meter dictionary is a regex over every id and a set for duplicates. Returning
    the *same* tuple object each time also lets consumers cache per dictionary by identity (the
    detection table maps a known dictionary to its rows with no lookup per meter).
    """

    def __init__(self, max_ids: int = 2_000_000) -> None:
        super().__init__(max_ids)

    def add(self, values: tuple[str, ...]) -> tuple[str, ...]:
        """Remember a validated dictionary; return its canonical tuple."""
        return self.put(values, values)


METER_DICTIONARIES = KnownDictionaries()
"""Meter dictionaries validated so far (see :class:`KnownDictionaries`)."""


def validate_dictionary(values: object, field: str, item: Reason) -> tuple[str, ...]:
    """Check a per-message dictionary: a list of unique strings, each valid for its field.

    ``item`` picks the pattern: BAD_ID for meter ids, BAD_VALUE for event reasons. Meter
    dictionaries seen before are recognised in :data:`METER_DICTIONARIES` and returned as the
    same tuple object.
    """
    if not isinstance(values, list | tuple):
        raise WireError(Reason.BAD_TYPE, f"{field} must be a list, got {show(values)}")
    if item is Reason.BAD_ID:
        try:
            key = tuple(values)
            known = METER_DICTIONARIES.get(key)
        except TypeError:  # unhashable entries: not strings, the checks below say so
            known = key = None
        if known is not None:
            return known
        checked = _check_dictionary(values, field, item)
        return checked if key is None else METER_DICTIONARIES.add(key)
    return _check_dictionary(values, field, item)


def _check_dictionary(
    values: list[Any] | tuple[Any, ...], field: str, item: Reason
) -> tuple[str, ...]:
    try:
        joined = "\0".join(values) + "\0" if values else ""
    except TypeError:
        raise WireError(Reason.BAD_TYPE, f"{field} must hold only strings") from None
    pattern = _METER_IDS if item is Reason.BAD_ID else _EVENT_REASONS
    if pattern.fullmatch(joined) is None:
        check = validate_meter_id if item is Reason.BAD_ID else validate_event_reason
        for value in values:
            check(value)  # raises, naming the offending entry
    if len(set(values)) != len(values):
        raise WireError(Reason.BAD_VALUE, f"{field} has duplicate entries")
    return tuple(values)
