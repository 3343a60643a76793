"""Alert episodes: one alert per stretch of time a rule's condition holds for a series.

A rule scores readings and says, per reading, whether its condition holds; an
:class:`EpisodeTracker` turns those booleans into episodes: one opens on the first reading where
the condition holds, stays open while it keeps holding (no new alerts), and resolves on the first
reading where it clears. Transitions are found with whole-array comparisons against the previous
reading of the same series (or the tracker's state from the previous batch), so the work in Python
is per *transition*, not per reading, and the outcome does not depend on how readings are batched.

The episode id is deterministic (:func:`episode_id`), so a replay of the same readings yields the
same ids and the alert sink can write idempotently (a replayed alert overwrites itself). Known
limit: with duplicate timestamps, an episode that re-opens at the very millisecond its predecessor
resolved gets the predecessor's id (the sink keeps one record for both).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal, NamedTuple, Protocol, get_args

import numpy as np
import numpy.typing as npt
import orjson

from cloud_consumer.detect.state import (
    BoolArray,
    IntArray,
    SeriesKey,
    SnapshotError,
    grown_size,
    run_starts,
    series_order,
    untrusted,
)

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = get_args(Severity)

EPISODE_SNAPSHOT_MAGIC = b"MLEPISODES"
"""First bytes of an :meth:`EpisodeTracker.snapshot`."""
EPISODE_SNAPSHOT_VERSION = 1
"""Format version written by :meth:`EpisodeTracker.snapshot`."""


def episode_id(meter_id: str, channel: int, rule: str, start_ms: int) -> str:
    """Deterministic id of an episode: first 32 hex digits (128 bits) of a SHA-256.

    The hash input is the JSON array ``[meter_id, channel, rule, start_ms]`` (orjson, UTF-8), which
    is unambiguous whatever characters the ids hold; 128 bits make collisions negligible at any
    fleet size while keeping DynamoDB keys short.
    """
    payload = orjson.dumps([meter_id, int(channel), rule, int(start_ms)])
    return hashlib.sha256(payload).hexdigest()[:32]


@dataclass(frozen=True)
class Episode:
    """Identity of an episode: which series, which rule, when it opened."""

    meter_id: str
    channel: int
    rule: str
    opened_ms: int

    @property
    def id(self) -> str:
        """The deterministic :func:`episode_id`."""
        return episode_id(self.meter_id, self.channel, self.rule, self.opened_ms)


@dataclass(frozen=True)
class Alert:
    """An episode as the alert sink stores it; ``resolved_ms`` is None while it is open.

    ``evidence`` holds the values that made the rule fire at the opening reading (value, window
    statistics, threshold...), as plain floats.
    """

    meter_id: str
    channel: int
    rule: str
    severity: Severity
    opened_ms: int
    resolved_ms: int | None = None
    evidence: Mapping[str, float] = field(default_factory=dict)

    @property
    def episode(self) -> Episode:
        return Episode(self.meter_id, self.channel, self.rule, self.opened_ms)

    @property
    def episode_id(self) -> str:
        """The deterministic :func:`episode_id` (the alert's idempotency key)."""
        return episode_id(self.meter_id, self.channel, self.rule, self.opened_ms)


def evidence_records(
    evidence: Mapping[str, npt.ArrayLike] | None, index: IntArray
) -> Iterator[dict[str, float]]:
    """One evidence dict of plain floats per position in ``index``, lazily, in order.

    Each column is gathered and turned into Python floats once; a dict per alert is then one
    ``zip`` (alerts can run to many thousands a batch).
    """
    names = list(evidence or {})
    columns = [
        np.asarray(values, dtype=np.float64)[index].tolist() for values in (evidence or {}).values()
    ]
    rows = zip(*columns, strict=True) if columns else repeat((), index.size)
    return (dict(zip(names, values, strict=True)) for values in rows)


def evidence_from_json(value: object) -> dict[str, float] | None:
    """Saved evidence read back (orjson writes NaN as null); None if it is not names -> numbers."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str)
        and (v is None or (isinstance(v, float | int) and not isinstance(v, bool)))
        for k, v in value.items()
    ):
        return None
    return {k: math.nan if v is None else float(v) for k, v in value.items()}


class EpisodeChanges(NamedTuple):
    """What one batch changed: episodes opened and episodes resolved, in time order.

    An episode that opens and resolves within the same batch appears in both lists (the sink
    writes the open alert, then overwrites it with the resolved one under the same id).
    """

    opened: list[Alert]
    resolved: list[Alert]


class SeriesKeys(Protocol):
    """Maps table rows to series identities (a ``SeriesTable`` is one)."""

    def key_of(self, rows: Sequence[int] | IntArray) -> list[SeriesKey]: ...


class EpisodeTracker:
    """Open/resolve bookkeeping of one rule over every row of a series table.

    State per row: whether an episode is open and when it opened (dense numpy arrays that grow
    with the table), plus the opening evidence of open episodes.
    """

    def __init__(self, rule: str, severity: Severity, *, capacity: int = 1024) -> None:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        self.rule = rule
        self.severity: Severity = severity
        self._active = np.zeros(max(1, capacity), dtype=np.bool_)
        self._opened = np.zeros(max(1, capacity), dtype=np.int64)
        self._evidence: dict[int, dict[str, float]] = {}

    def _grow(self, needed: int) -> None:
        capacity = self._active.size
        if needed <= capacity:
            return
        while capacity < needed:
            capacity = grown_size(capacity)
        active = np.zeros(capacity, dtype=np.bool_)
        opened = np.zeros(capacity, dtype=np.int64)
        active[: self._active.size] = self._active
        opened[: self._opened.size] = self._opened
        self._active, self._opened = active, opened

    def is_open(self, rows: npt.ArrayLike) -> BoolArray:
        """Whether each row has an open episode."""
        index = np.asarray(rows, dtype=np.int64)
        self._grow(int(index.max(initial=-1)) + 1)
        return self._active[index]

    def discard(self, rows: npt.ArrayLike) -> None:
        """Close the open episodes of ``rows`` without an alert: the caller reported their end."""
        index = np.asarray(rows, dtype=np.int64)
        self._grow(int(index.max(initial=-1)) + 1)
        self._active[index] = False
        self._opened[index] = 0
        for row in index.tolist():
            self._evidence.pop(row, None)

    def open_alerts(self, keys: SeriesKeys) -> list[Alert]:
        """Every currently open episode, ordered by row."""
        rows = np.flatnonzero(self._active)
        return [
            self._alert(key, int(self._opened[row]), None, self._evidence.get(row, {}))
            for row, key in zip(rows.tolist(), keys.key_of(rows), strict=True)
        ]

    def update(
        self,
        rows: npt.ArrayLike,
        holds: npt.ArrayLike,
        at_ms: npt.ArrayLike,
        keys: SeriesKeys,
        evidence: Mapping[str, npt.ArrayLike] | None = None,
        *,
        ordered: bool = False,
        distinct: bool = False,
    ) -> EpisodeChanges:
        """Apply one batch of per-reading verdicts; return the episodes it opened and resolved.

        ``rows``, ``holds`` (condition holds at this reading) and ``at_ms`` (reading time) are
        parallel; a row may appear several times and readings are taken in ``(row, at_ms)``
        order (ties in arrival order), as :meth:`SeriesTable.update` orders them. ``evidence``
        maps names to per-reading arrays; the values at an opening reading become the alert's
        evidence. ``ordered=True`` promises the readings are in that order already (the engine
        sorts once for all its trackers); ``distinct=True`` that no row repeats (one reading per
        series, the engine's usual batch), which makes any order a series order.
        """
        row = np.asarray(rows).astype(np.int64, copy=False)
        hold = np.asarray(holds).astype(np.bool_, copy=False)
        at = np.asarray(at_ms).astype(np.int64, copy=False)
        n = row.size
        if not row.ndim == hold.ndim == at.ndim == 1 or not n == hold.size == at.size:
            raise ValueError("rows, holds and at_ms must be 1-D and of equal length")
        if not n:
            return EpisodeChanges([], [])
        if row.min() < 0:
            raise ValueError("negative row index")
        self._grow(int(row.max()) + 1)
        if distinct:
            return self._update_distinct(row, hold, at, keys, evidence)
        order = self._involved(row, hold, at, ordered)
        if not order.size:
            return EpisodeChanges([], [])
        row, hold, at = row[order], hold[order], at[order]
        n = row.size
        first = run_starts(row)
        previous = np.empty(n, dtype=np.bool_)
        previous[1:] = hold[:-1]
        previous[first] = self._active[row[first]]
        opens = hold & ~previous
        resolves = ~hold & previous
        # The episode a reading belongs to opened at the latest opening reading of its series at
        # or before it, or (none in this batch) at the tracker's stored opening time.
        position = np.arange(n)
        latest_open = np.maximum.accumulate(np.where(opens, position, -1))
        group_start = np.maximum.accumulate(np.where(first, position, 0))
        from_batch = latest_open >= group_start
        opened_at = np.where(from_batch, at[np.maximum(latest_open, 0)], self._opened[row])
        last = np.append(np.flatnonzero(first)[1:], n) - 1
        self._active[row[last]] = hold[last]
        self._opened[row[last]] = np.where(hold[last], opened_at[last], 0)
        changed = np.flatnonzero(opens | resolves)
        if not changed.size:
            return EpisodeChanges([], [])
        return self._changes(
            keys,
            row[changed],
            opens[changed],
            opened_at=opened_at[changed],
            at=at[changed],
            proofs=evidence_records(evidence, order[changed]),
        )

    def _update_distinct(
        self,
        row: IntArray,
        hold: BoolArray,
        at: IntArray,
        keys: SeriesKeys,
        evidence: Mapping[str, npt.ArrayLike] | None,
    ) -> EpisodeChanges:
        """:meth:`update` when no row repeats: each reading is its series' only one in the batch.

        Then a reading changes its series exactly where ``holds`` differs from the stored state
        (an opening or a resolution), and only those rows are written: three passes over the
        batch instead of the general path's grouping (the engine's usual batch).
        """
        changed = np.flatnonzero(self._active[row] != hold)
        if not changed.size:
            return EpisodeChanges([], [])
        rows, opens, when = row[changed], hold[changed], at[changed]
        opened_at = np.where(opens, when, self._opened[rows])
        self._active[rows] = opens
        self._opened[rows] = np.where(opens, when, 0)
        proofs = evidence_records(evidence, changed)
        return self._changes(keys, rows, opens, opened_at=opened_at, at=when, proofs=proofs)

    def _changes(
        self,
        keys: SeriesKeys,
        rows: IntArray,
        opens: BoolArray,
        *,
        opened_at: IntArray,
        at: IntArray,
        proofs: Iterator[dict[str, float]],
    ) -> EpisodeChanges:
        """Alerts of the transitions at the readings given (parallel arrays, in event order).

        A reading either opens an episode (``opens``; its ``proofs`` entry becomes the evidence)
        or resolves the series' open one at ``at``. Python per transition, on plain values.
        """
        series = keys.key_of(rows)
        rule, severity = self.rule, self.severity  # Alert built inline: no call per alert
        opened: list[Alert] = []
        resolved: list[Alert] = []
        for row_id, is_open, start, end, (meter_id, channel), proof in zip(
            rows.tolist(),
            opens.tolist(),
            opened_at.tolist(),
            at.tolist(),
            series,
            proofs,
            strict=True,
        ):
            if is_open:
                found = proof
                self._evidence[row_id] = found
                opened.append(Alert(meter_id, channel, rule, severity, start, None, found))
            else:
                found = self._evidence.pop(row_id, {})
                resolved.append(Alert(meter_id, channel, rule, severity, start, end, found))
        return EpisodeChanges(opened, resolved)

    def _involved(self, row: IntArray, hold: BoolArray, at: IntArray, ordered: bool) -> IntArray:
        """Positions of the readings that can change an episode, in ``(row, at)`` order.

        Only series with an open episode or a holding reading can change: the rest (usually
        nearly all) are dropped before the work, keeping whole series so their order is intact.
        """
        involved = self._active[row]
        involved |= hold
        if not involved.any():
            return np.zeros(0, dtype=np.int64)
        mark = np.zeros(self._active.size, dtype=np.bool_)
        mark[row[involved]] = True
        subset = np.flatnonzero(mark[row])
        return subset if ordered else subset[series_order(row[subset], at[subset])]

    def _alert(
        self,
        key: SeriesKey,
        opened_ms: int,
        resolved_ms: int | None,
        evidence: Mapping[str, float],
    ) -> Alert:
        return Alert(key[0], key[1], self.rule, self.severity, opened_ms, resolved_ms, evidence)

    # --- snapshot ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Open episodes as bytes (magic, version, orjson); restore with :meth:`restore`."""
        rows = np.flatnonzero(self._active).tolist()
        body = {
            "version": EPISODE_SNAPSHOT_VERSION,
            "rule": self.rule,
            "severity": self.severity,
            "capacity": int(self._active.size),
            "open": [[row, int(self._opened[row]), self._evidence.get(row, {})] for row in rows],
        }
        return EPISODE_SNAPSHOT_MAGIC + orjson.dumps(body)

    @classmethod
    def restore(cls, data: bytes) -> EpisodeTracker:
        """Rebuild a tracker from :meth:`snapshot` bytes; damage raises :class:`SnapshotError`."""
        with untrusted("episode snapshot"):
            return cls._restore(data)

    @classmethod
    def _restore(cls, data: bytes) -> EpisodeTracker:
        raw = bytes(data)
        if not raw.startswith(EPISODE_SNAPSHOT_MAGIC):
            raise SnapshotError("not an episode snapshot (bad magic)")
        body: Any = orjson.loads(raw[len(EPISODE_SNAPSHOT_MAGIC) :])
        if not isinstance(body, dict):
            raise SnapshotError("episode snapshot is not an object")
        if body.get("version") != EPISODE_SNAPSHOT_VERSION:
            raise SnapshotError(f"unsupported episode snapshot version {body.get('version')!r}")
        rule, severity, capacity, entries = (
            body.get("rule"),
            body.get("severity"),
            body.get("capacity"),
            body.get("open"),
        )
        if not isinstance(rule, str) or severity not in SEVERITIES:
            raise SnapshotError("bad rule or severity")
        if type(capacity) is not int or not 1 <= capacity <= 1 << 40:
            raise SnapshotError(f"bad capacity {capacity!r}")
        if not isinstance(entries, list):
            raise SnapshotError("bad open-episode list")
        tracker = cls(rule, severity, capacity=capacity)
        for entry in entries:
            if not (
                isinstance(entry, list)
                and len(entry) == 3
                and type(entry[0]) is int
                and 0 <= entry[0] < capacity
                and type(entry[1]) is int
                and (found := evidence_from_json(entry[2])) is not None
            ):
                raise SnapshotError(f"bad open episode {entry!r}")
            row, opened_ms, _ = entry
            if tracker._active[row]:
                raise SnapshotError(f"row {row} listed twice")
            tracker._active[row] = True
            tracker._opened[row] = opened_ms
            tracker._evidence[row] = found
        return tracker
