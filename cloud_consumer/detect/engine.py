"""The detection engine: one rolling-window table, many detectors, one episode tracker each.

:meth:`Engine.process` takes a batch of readings (:class:`ReadingColumns`) and returns the alerts
it opened and resolved. Results are **identical whatever the batch size**: each reading is scored
against its series' window as of the reading before it in that series, exactly as if readings
arrived one by one. The batch is put in series order once (:func:`series_order`: kept as it
arrived when no series repeats, else sorted by ``(row, ts)``, ties in arrival order) and
evaluated in *rank rounds*: round 0 holds the first reading of every series in
the batch, round 1 the second, and so on. Each round is one vectorised step (every detector
scores it, learns it, then the table is updated with it), so the number of Python-level steps is
the largest number of readings any one series has in the batch (1 when the transport delivers a
series' readings in separate batches, the usual case on the live path; a replay chunk that holds
many readings of few meters takes many small rounds). Episodes are decided once per batch per
detector from the collected ``holds``; the episode tracker is batch-size independent itself.

Readings of a series are taken in timestamp order within a batch and in arrival order across
batches (ordering is the transport's job: Kinesis keeps a meter on one shard, in order), so
batch-size independence holds for streams whose series arrive in time order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from cloud_consumer.analytics import HOUR_MS
from cloud_consumer.detect import quality
from cloud_consumer.detect.base import (
    Detector,
    Frame,
    Scores,
    StatefulDetector,
    constant,
    pack_sections,
    unpack_sections,
)
from cloud_consumer.detect.episodes import Alert, EpisodeTracker, evidence_records
from cloud_consumer.detect.quality import QualityArray
from cloud_consumer.detect.rules.gaps import Estimates, Interpolator, MissingDataDetector
from cloud_consumer.detect.state import (
    BoolArray,
    FloatArray,
    IntArray,
    SeriesTable,
    SnapshotError,
    run_ranks,
    run_starts,
    seal,
    series_order,
    unseal,
    untrusted,
)
from cloud_consumer.detect.validate import (
    CANONICAL_UNIT,
    REJECTIONS,
    Flag,
    FlagArray,
    Validator,
)
from cloud_consumer.replay_input import ReadingColumns

ENGINE_SNAPSHOT_MAGIC = b"MLENGINE"
"""First bytes of an :meth:`Engine.snapshot`."""
ENGINE_SNAPSHOT_VERSION = 1
"""Format version written by :meth:`Engine.snapshot`; restore accepts this one only."""


class _Collected:
    """One detector's per-reading verdicts over a whole batch, filled round by round."""

    def __init__(self, size: int) -> None:
        self.size = size
        # Sized by the first of several rounds: the usual batch's only round hands its arrays
        # over whole, so allocating them here would be wasted.
        self.holds: BoolArray = np.zeros(0, dtype=np.bool_)
        self.score: FloatArray = np.zeros(0)
        self.evidence: dict[str, FloatArray] = {}
        self.since: IntArray | None = None

    def put(self, index: IntArray, scores: Scores) -> None:
        if index.size == self.size:  # the only round (index is 0..size-1): keep, don't copy
            self.holds, self.score, self.since = scores.holds, scores.score, scores.since_ms
            self.evidence = dict(scores.evidence)
            return
        if self.holds.size != self.size:
            self.holds = np.zeros(self.size, dtype=np.bool_)
            self.score = np.full(self.size, np.nan)
        self.holds[index] = scores.holds
        self.score[index] = scores.score
        for name, values in scores.evidence.items():
            column = self.evidence.get(name)
            if column is None:
                column = self.evidence[name] = np.full(self.size, np.nan)
            column[index] = values
        if scores.since_ms is not None:
            if self.since is None:
                self.since = np.full(self.size, -1, dtype=np.int64)
            self.since[index] = scores.since_ms


class Detection(NamedTuple):
    """What :meth:`Engine.process` found in one batch; per-reading arrays are in input order.

    ``alerts``: episodes opened and resolved, in event order. ``quality``: the 0-100 score of
    each reading (:mod:`cloud_consumer.detect.quality`). ``flags``: validation
    :class:`~cloud_consumer.detect.validate.Flag` bits. ``value`` and ``unit``: the readings in
    canonical units (as given where no validator is configured). ``estimates``: readings
    interpolated into short gaps (rows are table rows: :meth:`Engine.describe` names them).
    """

    alerts: list[Alert]
    quality: QualityArray
    flags: FlagArray
    value: FloatArray
    unit: npt.NDArray[np.uint8]
    estimates: Estimates

    @property
    def rejected(self) -> int:
        """Readings kept out of detection by validation."""
        return int(np.count_nonzero(self.flags & REJECTIONS))


def _alert_order(alert: Alert) -> tuple[int, str, int, str, bool]:
    """Alerts of a batch in event order: when it changed, then series and rule, open first."""
    at = alert.opened_ms if alert.resolved_ms is None else alert.resolved_ms
    return (at, alert.meter_id, alert.channel, alert.rule, alert.resolved_ms is not None)


def _rounds(rows: IntArray) -> list[IntArray]:
    """Positions of ``(row, ts)``-sorted readings grouped by rank within their series."""
    first = run_starts(rows)
    if first.all():
        return [np.arange(rows.size, dtype=np.int64)]
    rank = run_ranks(first)
    by_rank = np.argsort(rank, kind="stable").astype(np.int64)
    bounds = np.cumsum(np.bincount(rank))[:-1]
    return list(np.split(by_rank, bounds))


class Engine:
    """Runs detectors over batches of readings; see the module docstring.

    ``window`` (and optional ``horizon_ms``) size the shared :class:`SeriesTable`; detector names
    must be distinct (they name the rule in alerts and episode ids).
    """

    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        window: int = 60,
        horizon_ms: int | None = None,
        validator: Validator | None = None,
        interpolator: Interpolator | None = None,
    ) -> None:
        names = [detector.name for detector in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"detector names must be distinct, got {names}")
        self.detectors: tuple[Detector, ...] = tuple(detectors)
        self.validator = validator
        self.interpolator = interpolator
        self.table = SeriesTable(window, horizon_ms=horizon_ms)
        self.trackers = [EpisodeTracker(d.name, d.severity) for d in self.detectors]

    def process(self, columns: ReadingColumns, now_ms: int | None = None) -> Detection:
        """Validate and score a batch, update state, say what was found (see :class:`Detection`).

        ``now_ms`` is server time for the validator's timestamp checks (None when replaying a
        file). Readings rejected by validation -- and always those with a non-finite value or at
        or before their series' newest reading -- never reach the rules or the windows. An
        episode that opens and resolves within the batch appears twice (open, then resolved,
        same episode id); a retrospective one (a gap) appears once, resolved.
        """
        meter = np.asarray(columns.meter, dtype=np.int32)
        channel = np.asarray(columns.channel, dtype=np.uint8)
        ts = np.asarray(columns.ts_ms, dtype=np.int64)
        flags, value, unit = self._validate(columns, now_ms)
        keep = np.flatnonzero((flags & REJECTIONS) == 0)
        if not keep.size:
            scores = self._quality(flags, keep, [])
            return Detection([], scores, flags, value, unit, Estimates.empty())
        # The usual batch keeps every reading in arrival order: then the columns serve as they
        # are, with no gathers.
        whole = keep.size == flags.size
        rows = self.table.rows_for(
            columns.meter_ids,
            channel if whole else channel[keep],
            meter if whole else meter[keep],
            columns.dictionaries,
        )
        order = series_order(rows, ts if whole else ts[keep])
        as_given = whole and bool((order == np.arange(order.size)).all())
        position = keep if as_given else keep[order]
        rows = rows if as_given else rows[order]
        previous, previous_ts = self.table.last(rows)
        back = Validator.backdated(rows, ts if as_given else ts[position], previous_ts)
        if back.any():
            flags[position[back]] |= np.uint16(Flag.BACKDATED)
            as_given, ahead = False, ~back
            position, rows = position[ahead], rows[ahead]
            previous, previous_ts = previous[ahead], previous_ts[ahead]

        def at(column: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return column if as_given else column[position]

        frame = Frame(
            rows, at(ts), at(value), at(channel), at(unit), at(meter), columns.meter_ids,
        )  # fmt: skip
        size = len(frame)
        collected = [_Collected(size) for _ in self.detectors]
        estimates: list[Estimates] = []
        rounds = _rounds(frame.rows) if size else []
        for index in rounds:
            if index.size == size:  # the only round: its previous readings are read already
                step = dataclasses.replace(frame, previous=previous, previous_ts=previous_ts)
            else:
                step = frame.take(index).with_previous(self.table)
            for detector, found in zip(self.detectors, collected, strict=True):
                found.put(index, detector.score(step, self.table))
            if self.interpolator is not None:
                estimates.append(self.interpolator.fill(step, self.table))
            for detector in self.detectors:
                detector.learn(step, self.table)
            self.table.update(step.rows, step.ts_ms, step.value, distinct=True)
        alerts: list[Alert] = []
        for detector, tracker, found in zip(self.detectors, self.trackers, collected, strict=True):
            if found.since is not None:
                alerts += self._retrospective(detector, frame, found)
                alerts += self._heard_again(detector, tracker, frame, found)
                continue
            changes = tracker.update(
                frame.rows,
                found.holds,
                frame.ts_ms,
                self.table,
                found.evidence,
                ordered=True,
                distinct=len(rounds) == 1,
            )
            alerts += changes.opened
            alerts += changes.resolved
        alerts.sort(key=_alert_order)
        scores = self._quality(flags, position, collected)
        return Detection(alerts, scores, flags, value, unit, Estimates.join(estimates))

    def _quality(
        self, flags: FlagArray, position: IntArray, collected: Sequence[_Collected]
    ) -> QualityArray:
        """Each reading's score: its flags, and the kinds of rule that held at it.

        The rules' verdicts are combined in frame order, then placed at the readings' positions
        in the batch in one scatter per kind.
        """
        fired = {}
        for kind in ("rate_of_change", "fault"):
            held = np.zeros(position.size, dtype=np.bool_)
            for detector, found in zip(self.detectors, collected, strict=False):
                if detector.kind == kind:
                    held |= found.holds
            fired[kind] = np.zeros(flags.size, dtype=np.bool_)
            fired[kind][position] = held
        return quality.score(flags, fired["rate_of_change"], fired["fault"])

    def _validate(
        self, columns: ReadingColumns, now_ms: int | None
    ) -> tuple[FlagArray, FloatArray, npt.NDArray[np.uint8]]:
        """Flags, values and units after validation (only NaN checks without a validator)."""
        if self.validator is not None:
            checked = self.validator.check(columns, now_ms)
            return checked.flags, checked.value, checked.unit
        value = np.asarray(columns.value, dtype=np.float64)
        flags = np.where(np.isfinite(value), 0, Flag.NOT_FINITE).astype(np.uint16)
        return flags, value, np.asarray(columns.unit, dtype=np.uint8)

    def _retrospective(self, detector: Detector, frame: Frame, found: _Collected) -> list[Alert]:
        """One resolved alert per reading where a retrospective rule holds (a closed gap)."""
        where = np.flatnonzero(found.holds)
        if not where.size or found.since is None:
            return []
        keys = self.table.key_of(frame.rows[where])
        return [
            Alert(meter_id, channel, detector.name, detector.severity, since, until, proof)
            for (meter_id, channel), since, until, proof in zip(
                keys,
                found.since[where].tolist(),
                frame.ts_ms[where].tolist(),
                evidence_records(found.evidence, where),
                strict=True,
            )
        ]

    def _heard_again(
        self, detector: Detector, tracker: EpisodeTracker, frame: Frame, found: _Collected
    ) -> list[Alert]:
        """End the live gap episodes (opened by :meth:`sweep`) of series heard from again.

        A series' first reading in the frame ends its silence. Where the rule holds there, the
        retrospective alert has the live episode's id and is its resolution; elsewhere the
        rule's :meth:`~cloud_consumer.detect.rules.gaps.MissingDataDetector.ended_ms` says when
        it ended, and the tracker reports it.
        """
        if found.since is None or not isinstance(detector, MissingDataDetector):
            return []
        where = np.flatnonzero(tracker.is_open(frame.rows))
        if not where.size:
            return []
        _, first = np.unique(frame.rows[where], return_index=True)
        where = where[first]
        held = found.holds[where]
        tracker.discard(frame.rows[where[held]])
        where = where[~held]
        if not where.size:
            return []
        ended = detector.ended_ms(found.since[where], frame.ts_ms[where])
        closed = np.zeros(where.size, dtype=np.bool_)
        return tracker.update(frame.rows[where], closed, ended, self.table, distinct=True).resolved

    def sweep(self, now_ms: int) -> list[Alert]:
        """Open the gap episodes of series silent at ``now_ms``, before their next reading.

        Gap rules are retrospective (known when the next reading arrives), and a meter that
        died never sends one. The live consumer calls this now and then with server time: a
        series whose newest reading is old enough for a gap rule, and not too old for it, opens
        that rule's episode, opened at that reading -- the id the retrospective alert will have
        -- with the gap so far as evidence. A silence that outgrows a rule's range (past 24 h
        for ``missing_short``) resolves that episode at the moment it did, as the next rule's
        opens. When the series is heard again, :meth:`process` ends the episode. Returns the
        alerts opened and resolved; sweeping again changes nothing until time moves on.

        ``now_ms`` must be a time up to which the stream has been read: a consumer that is
        behind would take the readings still waiting for it as silence (sweep with server time
        less the shard's lag, e.g. Kinesis' ``MillisBehindLatest``). One pass over the table:
        about 15 ms at 1,000,000 series when nothing changes.
        """
        rows = np.arange(len(self.table), dtype=np.int64)
        _, newest = self.table.last(rows)
        alerts: list[Alert] = []
        for detector, tracker in zip(self.detectors, self.trackers, strict=True):
            if not isinstance(detector, MissingDataDetector):
                continue
            silent = detector.silent(newest, now_ms)
            active = tracker.is_open(rows)
            # An open episode out of range has outgrown it: the series was last heard of at its
            # opening (hearing from it would have ended the episode). One still short of the
            # range (a sweep with an earlier clock) stays open.
            outgrown = active & ~silent & (now_ms - newest >= detector.config.min_gap_ms)
            change = np.flatnonzero((silent & ~active) | outgrown)
            if not change.size:
                continue
            since = newest[change]
            when = np.where(
                silent[change], since, detector.ended_ms(since, np.full_like(since, now_ms))
            )
            gap_h = (now_ms - since) / HOUR_MS
            evidence = {
                "gap_h": gap_h,
                "threshold_h": constant(detector.config.min_gap_ms / HOUR_MS, change.size),
            }
            found = tracker.update(
                rows[change], silent[change], when, self.table, evidence, distinct=True
            )
            alerts += found.opened
            alerts += found.resolved
        alerts.sort(key=_alert_order)
        return alerts

    def describe(self, estimates: Estimates) -> ReadingColumns:
        """Estimates as ReadingColumns (meter ids and channels from the table; canonical units)."""
        keys = self.table.key_of(estimates.rows)
        ids = tuple(dict.fromkeys(meter_id for meter_id, _ in keys))
        index = {meter_id: i for i, meter_id in enumerate(ids)}
        channel = np.array([c for _, c in keys], dtype=np.uint8)
        return ReadingColumns(
            meter_ids=ids,
            meter=np.array([index[m] for m, _ in keys], dtype=np.int32),
            channel=channel,
            unit=CANONICAL_UNIT[channel],
            ts_ms=estimates.ts_ms,
            value=estimates.value,
        )

    def open_alerts(self) -> list[Alert]:
        """Every currently open episode of every detector."""
        return [alert for tracker in self.trackers for alert in tracker.open_alerts(self.table)]

    # --- snapshot ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Table, episode trackers and detector state as bytes; see :meth:`restore`.

        A :func:`~cloud_consumer.detect.state.seal` frame: an orjson header naming the detectors,
        then :func:`~cloud_consumer.detect.base.pack_sections` of the table, then per detector
        its tracker and its own state (empty for stateless detectors).
        """
        sections = [self.table.snapshot()]
        for detector, tracker in zip(self.detectors, self.trackers, strict=True):
            sections.append(tracker.snapshot())
            sections.append(detector.snapshot() if isinstance(detector, StatefulDetector) else b"")
        header = orjson.dumps({"detectors": [d.name for d in self.detectors]})
        return seal(
            ENGINE_SNAPSHOT_MAGIC, ENGINE_SNAPSHOT_VERSION, header, pack_sections(*sections)
        )

    @classmethod
    def restore(cls, data: bytes, detectors: Sequence[Detector]) -> Engine:
        """Rebuild an engine from :meth:`snapshot` bytes around fresh ``detectors``.

        The detectors carry the configuration (not saved); their names must match the snapshot's,
        in order. Any damage or mismatch raises :class:`SnapshotError`.
        """
        with untrusted("engine snapshot"):
            return cls._restore(data, detectors)

    @classmethod
    def _restore(cls, data: bytes, detectors: Sequence[Detector]) -> Engine:
        raw, payload = unseal(
            data, ENGINE_SNAPSHOT_MAGIC, ENGINE_SNAPSHOT_VERSION, "engine snapshot"
        )
        header: Any = orjson.loads(raw)
        names = [d.name for d in detectors]
        if not isinstance(header, dict) or header.get("detectors") != names:
            raise SnapshotError(f"snapshot detectors do not match {names}")
        sections = unpack_sections(bytes(payload), 1 + 2 * len(detectors))
        table = SeriesTable.restore(sections[0])
        engine = cls(detectors, window=table.window, horizon_ms=table.horizon_ms)
        engine.table = table
        for i, detector in enumerate(engine.detectors):
            tracker = EpisodeTracker.restore(sections[1 + 2 * i])
            if tracker.rule != detector.name:
                raise SnapshotError(f"tracker of {tracker.rule!r} where {detector.name!r} was due")
            tracker.severity = detector.severity
            engine.trackers[i] = tracker
            state = sections[2 + 2 * i]
            if isinstance(detector, StatefulDetector):
                detector.restore(state)
            elif state:
                raise SnapshotError(f"state saved for stateless detector {detector.name!r}")
        return engine
