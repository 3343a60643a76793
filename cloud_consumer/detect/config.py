"""Detection settings from the ``[detect]`` tables of a consumer config file.

Every rule's parameters are the fields of its frozen config dataclass, set by name in
``[detect.rules.<rule>]``; nothing here lists them twice. Conventions, so a utility engineer
writes hours rather than milliseconds:

* a field ending in ``_ms`` may be given as ``<name>_ms``, ``_s``, ``_min``, ``_h`` or ``_days``;
* a set of channels is a list of channel names (``["power", "flow"]``);
* a set of meter ids is a list, or ``<name>_file``: a text file with one id per line (``#``
  comments), relative to the config file;
* a per-channel number is a table keyed by channel name (``max_value = { power = 20.0 }``).

Unknown keys, wrong types and values a config rejects are one :class:`ConfigError` each,
naming the file and the dotted key.
"""

from __future__ import annotations

import csv
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_consumer.analytics import DAY_MS, HOUR_MS, MINUTE_MS
from cloud_consumer.detect.base import Detector
from cloud_consumer.detect.engine import Engine
from cloud_consumer.detect.neighbourhood import NeighbourhoodConfig
from cloud_consumer.detect.rules import DETECTORS
from cloud_consumer.detect.rules.gaps import InterpolationConfig, Interpolator
from cloud_consumer.detect.validate import ValidationConfig, Validator
from meterlink_config import TomlReader
from meterlink_wire.errors import WireError
from meterlink_wire.vocab import Channel

_TIME_UNITS_MS = {"ms": 1, "s": 1_000, "min": MINUTE_MS, "h": HOUR_MS, "days": DAY_MS}


@dataclass(frozen=True)
class DetectSettings:
    """Everything the detection engine is built from; defaults are the documented practice."""

    window: int = 60
    """Points in each series' rolling window (the robust z-score's baseline)."""
    horizon_ms: int | None = None
    """Optional time limit on the window (points older than this before the newest drop out)."""
    rules: Mapping[str, Any] = field(
        default_factory=lambda: {name: default_config(name) for name in DETECTORS}
    )
    """Enabled rule name -> its config (every rule, default-configured, unless narrowed)."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    interpolation: InterpolationConfig | None = field(default_factory=InterpolationConfig)
    """None: short gaps are not filled."""
    neighbourhood: NeighbourhoodConfig | None = None
    """The daily neighbourhood-correlation check; None when no meter groups are configured."""

    def detectors(self) -> list[Detector]:
        """Fresh detectors of the enabled rules, in :data:`DETECTORS` order."""
        return [
            DETECTORS[name](config)
            for name in DETECTORS
            if name in self.rules
            for config in [self.rules[name]]
        ]

    def build_engine(self) -> Engine:
        """An engine with the enabled rules, the validator and the interpolator."""
        return Engine(
            self.detectors(),
            window=self.window,
            horizon_ms=self.horizon_ms,
            validator=Validator(self.validation),
            interpolator=None if self.interpolation is None else Interpolator(self.interpolation),
        )


def default_config(rule: str) -> Any:
    """The default config dataclass of a rule."""
    return DETECTORS[rule]().config  # type: ignore[attr-defined]


def load_detect(reader: TomlReader, prefix: str = "detect") -> DetectSettings:
    """Read ``[<prefix>]`` and its sub-tables (all optional) from a parsed config file."""
    top = reader.table(prefix)
    _no_unknown(
        reader,
        prefix,
        top,
        {"window", "rules", "enabled", "validation", "interpolation", "neighbourhood"},
        time_fields={"horizon_ms"},
    )
    window = reader.integer(f"{prefix}.window", 60, low=1, high=1 << 16)
    horizon = _time(reader, prefix, top, "horizon_ms")
    if horizon == 0:
        raise reader.error(f"{prefix}.horizon_*", "must be positive")
    enabled = reader.get(f"{prefix}.enabled", list, list(DETECTORS))
    unknown = [name for name in enabled if not isinstance(name, str) or name not in DETECTORS]
    if unknown:
        raise reader.error(
            f"{prefix}.enabled", f"unknown rule {unknown[:1]}; rules: {', '.join(DETECTORS)}"
        )
    tables = reader.table(f"{prefix}.rules")
    for name in tables:
        if name not in DETECTORS:
            raise reader.error(
                f"{prefix}.rules.{name}", f"no such rule; rules: {', '.join(DETECTORS)}"
            )
    # Tables of disabled rules are checked too: a typo must not wait for the rule to be enabled.
    rules = {
        name: _dataclass(reader, f"{prefix}.rules.{name}", default_config(name))
        for name in DETECTORS
        if name in enabled or name in tables
    }
    for name, config in rules.items():
        try:
            DETECTORS[name](config)
        except ValueError as exc:
            raise reader.error(f"{prefix}.rules.{name}", str(exc)) from exc
    validation = _dataclass(reader, f"{prefix}.validation", ValidationConfig())
    interpolation: InterpolationConfig | None = _dataclass(
        reader, f"{prefix}.interpolation", InterpolationConfig(), skip={"enabled"}
    )
    if not reader.get(f"{prefix}.interpolation.enabled", bool, True):
        interpolation = None
    return DetectSettings(
        window=window,
        horizon_ms=horizon,
        rules={name: config for name, config in rules.items() if name in enabled},
        validation=validation,
        interpolation=interpolation,
        neighbourhood=_neighbourhood(reader, f"{prefix}.neighbourhood"),
    )


def _neighbourhood(reader: TomlReader, key: str) -> NeighbourhoodConfig | None:
    """Meter groups from ``groups_file`` (CSV ``meter_id,group``) or a ``groups`` table."""
    table = reader.table(key)
    if not table:
        return None
    options = {k: v for k, v in table.items() if k not in {"groups", "groups_file"}}
    if "groups_file" in table:
        groups = _groups_file(reader, reader.file(f"{key}.groups_file"), f"{key}.groups_file")
    else:
        raw = reader.table(f"{key}.groups", required=True)
        groups = {}
        for group, members in raw.items():
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise reader.error(f"{key}.groups.{group}", "expected a list of meter ids")
            for meter_id in members:
                if meter_id in groups:
                    raise reader.error(f"{key}.groups.{group}", f"meter {meter_id!r} in two groups")
                groups[meter_id] = group
    base = NeighbourhoodConfig.from_mapping(groups)
    values = _fields(reader, key, options, base)
    if "channel" in values:
        values["channel"] = _channel(reader, f"{key}.channel", options["channel"])
    try:
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as exc:
        raise reader.error(key, str(exc)) from exc


def _groups_file(reader: TomlReader, path: Path, key: str) -> dict[str, str]:
    groups: dict[str, str] = {}
    try:
        with path.open(newline="") as handle:
            for line, row in enumerate(csv.reader(handle), 1):
                if not row or row[0].startswith("#") or (line == 1 and row[0] == "meter_id"):
                    continue
                if len(row) != 2 or not row[0] or not row[1]:
                    raise reader.error(key, f"{path}:{line}: expected meter_id,group")
                if row[0] in groups:
                    raise reader.error(key, f"{path}:{line}: meter {row[0]!r} in two groups")
                groups[row[0]] = row[1]
    except OSError as exc:
        raise reader.error(key, f"cannot read {path}: {exc.strerror}") from exc
    return groups


def _ids_file(reader: TomlReader, key: str) -> frozenset[str]:
    path = reader.file(key)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise reader.error(key, f"cannot read {path}: {exc}") from exc
    return frozenset(s for s in (line.split("#", 1)[0].strip() for line in lines) if s)


def _no_unknown(
    reader: TomlReader,
    key: str,
    table: Mapping[str, Any],
    known: set[str],
    *,
    time_fields: Collection[str] = (),
    id_fields: Collection[str] = (),
) -> None:
    allowed = set(known)
    for name in time_fields:
        base = name.removesuffix("_ms")
        allowed |= {f"{base}_{suffix}" for suffix in _TIME_UNITS_MS}
    allowed |= {f"{name}_file" for name in id_fields}
    for name in table:
        if name not in allowed:
            raise reader.error(
                f"{key}.{name}", f"unknown key; expected one of {', '.join(sorted(allowed))}"
            )


def _time(reader: TomlReader, key: str, table: Mapping[str, Any], name: str) -> int | None:
    """A ``*_ms`` field given in any time unit; None when absent."""
    base = name.removesuffix("_ms")
    given = [suffix for suffix in _TIME_UNITS_MS if f"{base}_{suffix}" in table]
    if len(given) > 1:
        raise reader.error(f"{key}.{base}_*", "given in more than one unit")
    if not given:
        return None
    full = f"{key}.{base}_{given[0]}"
    number = reader.number(full, low=0)
    return round(number * _TIME_UNITS_MS[given[0]])


def _channel(reader: TomlReader, key: str, name: object) -> int:
    try:
        return int(Channel.from_wire(name))  # type: ignore[arg-type]
    except WireError:
        names = ", ".join(c.wire_name for c in Channel)
        raise reader.error(key, f"unknown channel {name!r}; channels: {names}") from None


def _fields(
    reader: TomlReader,
    key: str,
    table: Mapping[str, Any],
    base: Any,
    skip: Collection[str] = (),
) -> dict[str, Any]:
    """Values for the fields of dataclass ``base`` given in ``table``, converted by type."""
    hints = typing.get_type_hints(type(base))
    names = {f.name for f in dataclasses.fields(base)}
    times = {n for n in names if n.endswith("_ms")}
    ids = {n for n in names if _is_set_of(hints[n], str)}
    _no_unknown(reader, key, {k: v for k, v in table.items() if k not in skip}, names - times,
                time_fields=times, id_fields=ids)  # fmt: skip
    values: dict[str, Any] = {}
    for name in sorted(names):
        where = f"{key}.{name}"
        if name in times:
            found = _time(reader, key, table, name)
            if found is not None:
                values[name] = found
        elif name in ids and f"{name}_file" in table:
            values[name] = _ids_file(reader, f"{where}_file")
        elif name in table:
            values[name] = _value(reader, where, hints[name])
    return values


def _dataclass(reader: TomlReader, key: str, base: Any, skip: Collection[str] = ()) -> Any:
    values = _fields(reader, key, reader.table(key), base, skip)
    try:
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as exc:
        raise reader.error(key, str(exc)) from exc


def _is_set_of(hint: Any, item: type) -> bool:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    return any(typing.get_origin(o) is frozenset and typing.get_args(o) == (item,) for o in options)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


_SCALARS: dict[Any, Any] = {
    bool: lambda reader, key: reader.get(key, bool),
    int: lambda reader, key: reader.integer(key),
    float: lambda reader, key: reader.number(key),
    str: lambda reader, key: reader.get(key, str),
}


def _value(reader: TomlReader, key: str, hint: Any) -> Any:
    """Convert one TOML value to a config field's type."""
    if _is_union(hint):  # X | None: the value is given, so it is the X
        hint = next(o for o in typing.get_args(hint) if o is not type(None))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return _SCALARS[hint](reader, key)
    if origin is typing.Literal:
        return reader.choice(key, [str(a) for a in args])
    if origin is frozenset and args == (int,):
        return frozenset(_channel(reader, key, name) for name in reader.get(key, list))
    if origin is frozenset and args == (str,):
        items = reader.get(key, list)
        if not all(isinstance(item, str) for item in items):
            raise reader.error(key, "expected a list of strings")
        return frozenset(items)
    if hint is Channel:
        return Channel(_channel(reader, key, reader.get(key, str)))
    if origin in (Mapping, dict):
        return {
            _channel(reader, f"{key}.{name}", name): reader.number(f"{key}.{name}")
            for name in reader.get(key, dict)
        }
    raise reader.error(key, f"cannot be set from a config file ({hint})")
