"""Neighbourhood correlation: a meter whose daily load profile does not follow its neighbours'.

From the utilities' *peer-group* (neighbourhood) check in revenue protection and network data
quality: meters on the same feeder, transformer or area share weather, daylight and habits, so
their hourly load profiles over a day move together. A meter whose profile does not correlate with
its neighbours' points at a wrong meter-to-feeder mapping, a faulty meter (stuck, clock shifted)
or theft (a bypass that flattens or inverts the visible load).

This is a periodic check, run once per completed UTC day on :class:`HourlyAggregates`, not per
reading: :meth:`NeighbourhoodCheck.run_day` judges one day, :meth:`NeighbourhoodCheck.run_until`
every complete day not yet judged. The work is whole-array numpy over all meters of all groups
(group sums with ``np.bincount``, a leave-one-out reference per meter by subtraction, a masked
Pearson correlation per row); Python runs once per meter id and per alert.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

from cloud_consumer.analytics import DAY_MS, HOUR_MS, HourlyAggregates
from cloud_consumer.detect.episodes import SEVERITIES, Alert, Severity, evidence_from_json
from cloud_consumer.detect.state import BoolArray, FloatArray, IntArray, SnapshotError, untrusted
from meterlink_wire.vocab import Channel

HOURS_PER_DAY = 24
FLAT_TOLERANCE = 1e-9
"""A profile whose range (max - min over the hours used) is at most this fraction of its largest
absolute value is flat: its correlation is undefined. Exact constants are flat whatever the
tolerance; the tolerance also absorbs the rounding of a leave-one-out reference computed by
subtraction (group sum minus the meter's own value) when the other members are constant."""

NEIGHBOURHOOD_SNAPSHOT_MAGIC = b"MLNEIGHBOURS"
"""First bytes of a :meth:`NeighbourhoodCheck.snapshot`."""
NEIGHBOURHOOD_SNAPSHOT_VERSION = 1
"""Format version written by :meth:`NeighbourhoodCheck.snapshot`; restore accepts this one only."""
_PREFIX = struct.Struct("<12sHI")  # magic, version, CRC-32 of the orjson body that follows


def _freeze_groups(
    groups: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    """``(meter id, group)`` pairs sorted by meter id; a meter in two groups is a ValueError."""
    pairs = list(groups.items()) if isinstance(groups, Mapping) else list(groups)
    seen: dict[str, str] = {}
    for pair in pairs:
        if not (
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            raise ValueError(f"groups must map meter ids (str) to group names (str), got {pair!r}")
        meter_id, group = pair[0], pair[1]
        if seen.setdefault(meter_id, group) != group:
            raise ValueError(f"meter {meter_id!r} is in two groups: {seen[meter_id]!r}, {group!r}")
    return tuple(sorted(seen.items()))


@dataclass(frozen=True)
class NeighbourhoodConfig:
    """Parameters of :class:`NeighbourhoodCheck`.

    ``groups`` may be given as a mapping (or pairs); it is frozen into ``(meter id, group)`` pairs
    sorted by meter id, so the config stays immutable and hashable. :meth:`from_mapping` is the
    typed way to build one from a dict.
    """

    groups: tuple[tuple[str, str], ...] = ()
    """Meter id -> group name (feeder, transformer or area) as pairs; meters not listed are
    never checked. Each meter is in at most one group."""
    min_correlation: float = 0.3
    """A meter is flagged when the Pearson correlation of its day profile with its group's
    reference is below this (strictly): 0.3 is a weak positive relation at best."""
    channel: Channel = Channel.POWER
    """Channel whose hourly averages form the day profile (all units of it are averaged together:
    the engine has already standardised units)."""
    min_hours: int = 20
    """A meter's day is usable only with an hourly average in at least this many of the 24 hours;
    the correlation also needs at least this many hours present in both the meter's profile and
    the reference (missing hours are left out pairwise)."""
    min_members: int = 3
    """A group is checked on a day only when at least this many of its meters have a usable
    profile (each meter is then compared with at least ``min_members - 1`` others)."""
    severity: Severity = "warning"
    rule: str = "neighbourhood_correlation"
    """Rule name carried by the alerts (part of the episode id)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", _freeze_groups(self.groups))
        object.__setattr__(self, "channel", Channel(self.channel))
        if not -1.0 <= self.min_correlation <= 1.0:
            raise ValueError(f"min_correlation must be in [-1, 1], got {self.min_correlation}")
        if not 2 <= self.min_hours <= HOURS_PER_DAY:
            raise ValueError(f"min_hours must be in [2, 24], got {self.min_hours}")
        if self.min_members < 2:
            raise ValueError(f"min_members must be >= 2, got {self.min_members}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not self.rule:
            raise ValueError("rule name must not be empty")

    @classmethod
    def from_mapping(cls, groups: Mapping[str, str], **options: Any) -> NeighbourhoodConfig:
        """A config for ``groups`` (meter id -> group name) and the other fields as keywords."""
        return cls(groups=_freeze_groups(groups), **options)

    @property
    def group_of(self) -> Mapping[str, str]:
        """Meter id -> group name, read-only."""
        return MappingProxyType(dict(self.groups))


def _check_day(day_ms: int) -> int:
    day = int(day_ms)
    if day % DAY_MS:
        raise ValueError(
            f"day_ms must be the start of a UTC day (a multiple of {DAY_MS}), got {day}"
        )
    return day


def daily_profiles(
    aggregates: HourlyAggregates, day_ms: int, channel: int = Channel.POWER
) -> tuple[tuple[str, ...], FloatArray]:
    """Hourly averages of each meter over one UTC day: ``(meter ids, (meters, 24) array)``.

    ``day_ms`` is the day's start (a multiple of a day). Only rows of ``channel`` count; several
    rows of one meter-hour (different units) are averaged weighted by their counts. Meter ids are
    those with at least one such row that day, sorted; hours without data are NaN.
    """
    day = _check_day(day_ms)
    rows = np.flatnonzero(
        (aggregates.channel == int(channel))
        & (aggregates.hour_ms >= day)
        & (aggregates.hour_ms < day + DAY_MS)
    )
    if not rows.size:
        return (), np.empty((0, HOURS_PER_DAY), dtype=np.float64)
    present, local = np.unique(aggregates.meter[rows], return_inverse=True)
    hour = (aggregates.hour_ms[rows] - day) // HOUR_MS
    cell = local.reshape(-1) * HOURS_PER_DAY + hour
    size = present.size * HOURS_PER_DAY
    counts = np.bincount(cell, weights=aggregates.count[rows].astype(np.float64), minlength=size)
    totals = np.bincount(cell, weights=aggregates.total[rows], minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = np.where(counts > 0, totals / counts, np.nan).reshape(-1, HOURS_PER_DAY)
    ids = tuple(aggregates.meter_ids[i] for i in present.tolist())
    return ids, profile


def _flat(values: FloatArray, used: BoolArray) -> BoolArray:
    """Rows whose values over the ``used`` hours are flat (see :data:`FLAT_TOLERANCE`)."""
    high = np.where(used, values, -np.inf).max(axis=1)
    low = np.where(used, values, np.inf).min(axis=1)
    magnitude = np.where(used, np.abs(values), 0.0).max(axis=1)
    flat: BoolArray = (high - low) <= FLAT_TOLERANCE * magnitude
    return flat


def _pearson(x: FloatArray, y: FloatArray, used: BoolArray) -> FloatArray:
    """Row-wise Pearson correlation of ``x`` and ``y`` over the ``used`` hours; NaN if undefined.

    Undefined: fewer than two hours, or either side flat over those hours.
    """
    n = used.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x = np.where(used, x, 0.0).sum(axis=1) / n
        mean_y = np.where(used, y, 0.0).sum(axis=1) / n
        dx = np.where(used, x - mean_x[:, None], 0.0)
        dy = np.where(used, y - mean_y[:, None], 0.0)
        r = (dx * dy).sum(axis=1) / np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    undefined = (n < 2) | _flat(x, used) | _flat(y, used)
    result: FloatArray = np.where(undefined, np.nan, np.clip(r, -1.0, 1.0))
    return result


@dataclass(frozen=True, eq=False)
class DayVerdicts:
    """What one day's check found for the meters it could judge (parallel arrays).

    ``meter_ids`` are the meters with a defined correlation that day, sorted; ``flagged`` is
    ``correlation < min_correlation``; ``members`` the usable members of the meter's group
    (itself included); ``hours`` the hours shared by the meter's profile and its reference.
    """

    meter_ids: tuple[str, ...]
    correlation: FloatArray
    members: IntArray
    hours: IntArray
    flagged: BoolArray


class NeighbourhoodCheck:
    """Peer-group check: day profile of each grouped meter against the mean of its neighbours'.

    For each group with at least ``min_members`` usable meters (an hourly average in at least
    ``min_hours`` hours of the day), each usable member's 24-hour profile is correlated (Pearson)
    with the group's leave-one-out reference: the hour-wise mean of the *other* usable members'
    profiles, over the hours present in both (at least ``min_hours`` needed). The meter is flagged
    when the correlation is below ``min_correlation`` (strictly).

    Episodes span consecutive days per meter: one opens (``opened_ms`` = the day's start) on the
    first flagged day and stays open, without new alerts, while the meter keeps being flagged; it
    resolves (``resolved_ms`` = that day's start) on the first later day with a defined, unflagged
    correlation. A day without a verdict for the meter leaves its state unchanged: the meter
    unusable, its group too small, too few shared hours, or an undefined correlation (a flat
    profile, its own or the reference's -- a meter that goes flat is not cleared by it). A
    resolved alert carries its opening evidence: ``correlation``, ``threshold``, ``members``
    (usable group members, the meter included) and ``hours`` (hours correlated).
    Days are run in increasing order; state (open episodes, last day run) survives
    :meth:`snapshot` / :meth:`restore`.
    """

    def __init__(self, config: NeighbourhoodConfig | None = None) -> None:
        self.config = config or NeighbourhoodConfig()
        self.name = self.config.rule
        self.severity: Severity = self.config.severity
        names = sorted({group for _, group in self.config.groups})
        code = {name: i for i, name in enumerate(names)}
        self._group_names: tuple[str, ...] = tuple(names)
        self._group_code: dict[str, int] = {m: code[g] for m, g in self.config.groups}
        self._last_day: int | None = None
        self._open: dict[str, tuple[int, dict[str, float]]] = {}

    @property
    def last_day_ms(self) -> int | None:
        """Start of the last day run (None before the first)."""
        return self._last_day

    def open_alerts(self) -> list[Alert]:
        """Every open episode, by meter id."""
        return [
            self._alert(meter_id, opened, None, evidence)
            for meter_id, (opened, evidence) in sorted(self._open.items())
        ]

    def _alert(
        self, meter_id: str, opened_ms: int, resolved_ms: int | None, evidence: Mapping[str, float]
    ) -> Alert:
        return Alert(
            meter_id,
            int(self.config.channel),
            self.config.rule,
            self.severity,
            opened_ms,
            resolved_ms,
            dict(evidence),
        )

    def verdicts(self, aggregates: HourlyAggregates, day_ms: int) -> DayVerdicts:
        """Correlations of one day, without touching episode state (for reports and tests)."""
        config = self.config
        ids, profiles = daily_profiles(aggregates, day_ms, config.channel)
        # One dict lookup per meter id; -1: in no group.
        group = np.array([self._group_code.get(m, -1) for m in ids], dtype=np.int64)
        valid = np.isfinite(profiles)
        usable = (group >= 0) & (valid.sum(axis=1) >= config.min_hours)
        members_of = np.bincount(group[usable], minlength=len(self._group_names))
        checked = usable.copy()
        checked[usable] = members_of[group[usable]] >= config.min_members
        rows = np.flatnonzero(checked)
        own = profiles[rows]
        own_valid = valid[rows]
        own_group = group[rows]
        own_filled = np.where(own_valid, own, 0.0)
        # Hour-wise sums and counts per group, then subtract the meter's own hour: leave-one-out.
        cells = (own_group[:, None] * HOURS_PER_DAY + np.arange(HOURS_PER_DAY)).reshape(-1)
        size = len(self._group_names) * HOURS_PER_DAY
        sums = np.bincount(cells, weights=own_filled.reshape(-1), minlength=size)
        counts = np.bincount(cells, weights=own_valid.reshape(-1), minlength=size)
        sums = sums.reshape(-1, HOURS_PER_DAY)[own_group] - own_filled
        others = counts.reshape(-1, HOURS_PER_DAY)[own_group] - own_valid
        with np.errstate(invalid="ignore", divide="ignore"):
            reference = np.where(others > 0, sums / others, np.nan)
        both = own_valid & (others > 0)
        hours = both.sum(axis=1)
        correlation = _pearson(own, reference, both)
        defined = (hours >= config.min_hours) & np.isfinite(correlation)
        keep = np.flatnonzero(defined)
        return DayVerdicts(
            meter_ids=tuple(ids[i] for i in rows[keep].tolist()),
            correlation=correlation[keep],
            members=members_of[own_group[keep]].astype(np.int64),
            hours=hours[keep].astype(np.int64),
            flagged=correlation[keep] < config.min_correlation,
        )

    def run_day(self, aggregates: HourlyAggregates, day_ms: int) -> list[Alert]:
        """Check one UTC day (``day_ms`` its start); return the alerts it opened or resolved.

        Alerts are ordered by meter id. Raises ValueError for a day not after the last day run.
        """
        day = _check_day(day_ms)
        if self._last_day is not None and day <= self._last_day:
            raise ValueError(f"day {day} is not after the last day run ({self._last_day})")
        found = self.verdicts(aggregates, day)
        self._last_day = day
        threshold = float(self.config.min_correlation)
        alerts: list[Alert] = []
        # Python per transition only: flagged meters (open if not yet) and open episodes
        # (resolved if judged and not flagged), found by binary search in the sorted ids.
        for i in np.flatnonzero(found.flagged).tolist():
            meter_id = found.meter_ids[i]
            if meter_id not in self._open:
                evidence = {
                    "correlation": float(found.correlation[i]),
                    "threshold": threshold,
                    "members": float(found.members[i]),
                    "hours": float(found.hours[i]),
                }
                self._open[meter_id] = (day, evidence)
                alerts.append(self._alert(meter_id, day, None, evidence))
        if self._open and found.meter_ids:
            judged = np.array(found.meter_ids)
            waiting = sorted(self._open)
            at = np.minimum(np.searchsorted(judged, waiting), judged.size - 1)
            cleared = (judged[at] == np.array(waiting)) & ~found.flagged[at]
            for meter_id in np.array(waiting)[cleared].tolist():
                opened, evidence = self._open.pop(meter_id)
                alerts.append(self._alert(meter_id, opened, day, evidence))
        alerts.sort(key=lambda alert: alert.meter_id)
        return alerts

    def run_until(self, aggregates: HourlyAggregates, until_ms: int) -> list[Alert]:
        """Run every complete UTC day with rows of the configured channel, not yet run.

        A day counts when it ends at or before ``until_ms`` and starts after the last day run.
        Returns the alerts of all those days in day order.
        """
        rows = aggregates.channel == int(self.config.channel)
        days = np.unique(aggregates.hour_ms[rows] // DAY_MS) * DAY_MS
        days = days[days + DAY_MS <= int(until_ms)]
        if self._last_day is not None:
            days = days[days > self._last_day]
        alerts: list[Alert] = []
        for day in days.tolist():  # Python per day
            alerts += self.run_day(aggregates, day)
        return alerts

    # --- snapshot ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Open episodes and the last day run, as bytes (magic, version, CRC-32, orjson)."""
        body = orjson.dumps(
            {
                "rule": self.config.rule,
                "channel": int(self.config.channel),
                "last_day_ms": self._last_day,
                "open": [
                    [meter_id, opened, evidence]
                    for meter_id, (opened, evidence) in sorted(self._open.items())
                ],
            }
        )
        prefix = _PREFIX.pack(
            NEIGHBOURHOOD_SNAPSHOT_MAGIC, NEIGHBOURHOOD_SNAPSHOT_VERSION, zlib.crc32(body)
        )
        return prefix + body

    @classmethod
    def restore(cls, data: bytes, config: NeighbourhoodConfig | None = None) -> NeighbourhoodCheck:
        """A check with ``config`` and the state of :meth:`snapshot` bytes.

        Any damage (truncation, a flipped byte, another format or version, a snapshot of another
        rule or channel) raises :class:`SnapshotError`.
        """
        with untrusted("neighbourhood snapshot"):
            return cls._restore(data, config)

    @classmethod
    def _restore(cls, data: bytes, config: NeighbourhoodConfig | None) -> NeighbourhoodCheck:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SnapshotError(f"expected bytes, got {type(data).__name__}")
        raw = bytes(data)
        if len(raw) < _PREFIX.size:
            raise SnapshotError("truncated: shorter than the snapshot prefix")
        magic, version, crc = _PREFIX.unpack_from(raw)
        if magic != NEIGHBOURHOOD_SNAPSHOT_MAGIC:
            raise SnapshotError("not a neighbourhood snapshot (bad magic)")
        if version != NEIGHBOURHOOD_SNAPSHOT_VERSION:
            raise SnapshotError(f"unsupported neighbourhood snapshot version {version}")
        body_bytes = raw[_PREFIX.size :]
        if zlib.crc32(body_bytes) != crc:
            raise SnapshotError("checksum mismatch (corrupt or truncated snapshot)")
        check = cls(config)
        body: Any = orjson.loads(body_bytes)
        if not isinstance(body, dict):
            raise SnapshotError("neighbourhood snapshot is not an object")
        if body.get("rule") != check.config.rule:
            raise SnapshotError(f"snapshot of rule {body.get('rule')!r}, not {check.config.rule!r}")
        if body.get("channel") != int(check.config.channel):
            raise SnapshotError(f"snapshot of channel {body.get('channel')!r}")
        last_day, entries = body.get("last_day_ms"), body.get("open")
        if last_day is not None and (type(last_day) is not int or last_day % DAY_MS):
            raise SnapshotError(f"bad last_day_ms {last_day!r}")
        if not isinstance(entries, list):
            raise SnapshotError("bad open-episode list")
        for entry in entries:
            meter_id, opened, found = _open_entry(entry, last_day)
            if meter_id in check._open:
                raise SnapshotError(f"meter {meter_id!r} listed twice")
            check._open[meter_id] = (opened, found)
        check._last_day = last_day
        return check


def _open_entry(entry: Any, last_day: int | None) -> tuple[str, int, dict[str, float]]:
    """Validate one ``[meter id, opened_ms, evidence]`` snapshot entry; return its fields."""
    if not (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and type(entry[1]) is int
        and entry[1] % DAY_MS == 0
        and last_day is not None
        and entry[1] <= last_day
        and (evidence := evidence_from_json(entry[2])) is not None
    ):
        raise SnapshotError(f"bad open episode {entry!r}")
    return entry[0], entry[1], evidence
