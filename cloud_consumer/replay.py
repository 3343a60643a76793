"""Replay: the live detection engine run over a file, for backtesting thresholds on history.

The file streams through in chunks (:mod:`cloud_consumer.replay_input`), each chunk goes through
the same :class:`~cloud_consumer.detect.engine.Engine` the consumer runs (validation, every
enabled rule, quality scores), and every alert event is written to a JSON-lines file as it
happens. Readings go to the engine in time order whatever the file's order (by time, by meter
then time, or none): :mod:`cloud_consumer.replay_order` sorts them in bounded memory, spilling
sorted runs to a temporary directory, and keeps the file's order among equal timestamps. With
``order="file"`` chunks go to the engine as they are read; a reading older than its series'
newest is then rejected as backdated and counted, like a duplicate.

Nothing read is lost without a count: ``rows read = accepted + rejected``, and malformed rows
are listed with their line numbers (:class:`ReplaySummary`). The neighbourhood check, when groups
are configured, runs at the end over the hourly aggregates of the accepted readings.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import numpy as np
import orjson

from cloud_consumer.analytics import HourlyAggregates, hourly
from cloud_consumer.detect.config import DetectSettings
from cloud_consumer.detect.episodes import Alert
from cloud_consumer.detect.neighbourhood import NeighbourhoodCheck
from cloud_consumer.detect.quality import TIERS, Tier, tier_counts
from cloud_consumer.detect.validate import REJECTIONS, Flag
from cloud_consumer.replay_input import (
    DEFAULT_CHUNK_ROWS,
    ReadingColumns,
    RowError,
    read_csv,
    read_jsonl,
    read_wire,
)
from cloud_consumer.replay_order import in_time_order
from meterlink_wire.vocab import Channel

Reader = Callable[..., Iterator[tuple[ReadingColumns, list[RowError]]]]
READERS: dict[str, Reader] = {"csv": read_csv, "jsonl": read_jsonl, "wire": read_wire}
"""Input format name -> streaming reader."""
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".wire": "wire", ".bin": "wire"}
"""File suffix -> format, when ``--format`` is not given."""
ORDERS = ("time", "file")
"""How readings reach the engine: sorted by time (the default), or in file order."""
MAX_ERRORS_KEPT = 1_000
"""Malformed rows kept for the summary (all are counted)."""


@dataclass
class ReplaySummary:
    """What a replay read, judged and found."""

    rows: int = 0
    """Rows read as readings (malformed rows excluded)."""
    malformed: int = 0
    errors: list[RowError] = field(default_factory=list)
    """The first :data:`MAX_ERRORS_KEPT` malformed rows."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Rejected readings by validation flag name (a reading counts under each flag it has)."""
    rejected_readings: int = 0
    tiers: Counter[str] = field(default_factory=Counter)
    estimates: int = 0
    events: int = 0
    """Alert events written (an open and its resolution are two)."""
    episodes: dict[str, Alert] = field(default_factory=dict)
    """Episode id -> its latest alert (resolved unless still open at the end)."""

    @property
    def accepted(self) -> int:
        """Readings that reached the rules."""
        return self.rows - self.rejected_readings

    def per_rule(self) -> Counter[str]:
        """Episodes per rule."""
        return Counter(alert.rule for alert in self.episodes.values())

    def ordered_episodes(self) -> list[Alert]:
        """Episodes by opening time, then meter, channel and rule."""
        return sorted(
            self.episodes.values(), key=lambda a: (a.opened_ms, a.meter_id, a.channel, a.rule)
        )


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO-8601 UTC (``...Z``), None stays None."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    text = moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def channel_name(code: int) -> str:
    """Wire name of a channel code (the code itself if unknown)."""
    try:
        return Channel(code).wire_name
    except ValueError:
        return str(code)


def alert_record(alert: Alert) -> dict[str, object]:
    """An alert as one JSON object of the output file (NaN evidence becomes null)."""
    return {
        "episode_id": alert.episode_id,
        "meter_id": alert.meter_id,
        "channel": channel_name(alert.channel),
        "rule": alert.rule,
        "severity": alert.severity,
        "opened": iso(alert.opened_ms),
        "resolved": iso(alert.resolved_ms),
        "opened_ms": alert.opened_ms,
        "resolved_ms": alert.resolved_ms,
        "evidence": {k: (None if math.isnan(v) else v) for k, v in alert.evidence.items()},
    }


def detect_format(path: Path, given: str | None) -> str:
    """The input format: given, or from the file's suffix; ValueError if neither says."""
    if given is not None:
        if given not in READERS:
            raise ValueError(f"unknown format {given!r}; formats: {', '.join(READERS)}")
        return given
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise ValueError(f"cannot tell the format of {path.name}; give --format csv|jsonl|wire")
    return found


class Replay:
    """Runs one file through an engine built from ``settings``; see the module docstring."""

    def __init__(self, settings: DetectSettings, out: IO[bytes]) -> None:
        self.settings = settings
        self.engine = settings.build_engine()
        self.out = out
        self.summary = ReplaySummary()
        self.neighbourhood = (
            None if settings.neighbourhood is None else NeighbourhoodCheck(settings.neighbourhood)
        )
        self._hourly = HourlyAggregates.empty()
        self._newest = -1

    def run(
        self,
        path: Path,
        fmt: str,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        order: str = "time",
        spill_dir: Path | None = None,
    ) -> ReplaySummary:
        """Replay the whole file; return the summary (also kept in :attr:`summary`).

        ``order`` is ``time`` (sort the readings, spilling to ``spill_dir`` or the system's
        temporary directory) or ``file`` (as read).
        """
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; orders: {', '.join(ORDERS)}")
        chunks = READERS[fmt](path, chunk_rows=chunk_rows)
        if order == "time":
            chunks = in_time_order(chunks, chunk_rows, spill_dir)
        for columns, errors in chunks:
            self._errors(errors)
            if len(columns):
                self.chunk(columns)
        self.finish()
        return self.summary

    def _errors(self, errors: list[RowError]) -> None:
        summary = self.summary
        summary.malformed += len(errors)
        room = MAX_ERRORS_KEPT - len(summary.errors)
        if room > 0:
            summary.errors += errors[:room]

    def chunk(self, columns: ReadingColumns) -> None:
        """Run one chunk of readings through the engine and write its alerts."""
        summary = self.summary
        found = self.engine.process(columns)
        summary.rows += len(columns)
        rejected = (found.flags & REJECTIONS) != 0
        summary.rejected_readings += int(np.count_nonzero(rejected))
        for flag in _REJECT_FLAGS:
            count = int(np.count_nonzero(found.flags & np.uint16(flag)))
            if count:
                summary.rejected[str(flag.name).lower()] += count
        summary.tiers.update({tier: n for tier, n in tier_counts(found.quality).items()})
        summary.estimates += len(found.estimates)
        self._write(found.alerts)
        if self.neighbourhood is not None and not rejected.all():
            keep = np.flatnonzero(~rejected)
            accepted = ReadingColumns(
                columns.meter_ids,
                columns.meter[keep],
                columns.channel[keep],
                found.unit[keep],
                columns.ts_ms[keep],
                found.value[keep],
            )
            self._hourly = self._hourly.merge(hourly(accepted))
            self._newest = max(self._newest, int(accepted.ts_ms.max()))

    def finish(self) -> None:
        """End of input: run the neighbourhood check over every complete day."""
        if self.neighbourhood is not None and self._newest >= 0:
            self._write(self.neighbourhood.run_until(self._hourly, self._newest + 1))

    def _write(self, alerts: list[Alert]) -> None:
        summary = self.summary
        for alert in alerts:
            self.out.write(orjson.dumps(alert_record(alert)) + b"\n")
            summary.events += 1
            summary.episodes[alert.episode_id] = alert


_REJECT_FLAGS = tuple(flag for flag in Flag if flag & REJECTIONS)


def render(summary: ReplaySummary, source: str, output: str, *, show: int = 50) -> str:
    """The human summary printed at the end of a replay."""
    lines = [
        f"replayed {source}: {summary.rows:,} readings"
        + (f", {summary.malformed:,} malformed rows skipped" if summary.malformed else ""),
        f"  accepted {summary.accepted:,}, rejected {summary.rejected_readings:,}"
        + (
            " (" + ", ".join(f"{k} {v:,}" for k, v in sorted(summary.rejected.items())) + ")"
            if summary.rejected
            else ""
        ),
    ]
    total = sum(summary.tiers.values()) or 1
    tiers: list[Tier] = list(TIERS)
    lines.append(
        "  quality: "
        + ", ".join(
            f"{tier} {summary.tiers[tier]:,} ({100 * summary.tiers[tier] / total:.1f}%)"
            for tier in tiers
        )
    )
    if summary.estimates:
        lines.append(f"  estimates interpolated into short gaps: {summary.estimates:,}")
    episodes = summary.ordered_episodes()
    still_open = sum(1 for a in episodes if a.resolved_ms is None)
    lines.append(
        f"alerts: {len(episodes):,} episodes ({still_open:,} still open), "
        f"{summary.events:,} events written to {output}"
    )
    for rule, count in sorted(summary.per_rule().items()):
        lines.append(f"  {rule:<26} {count:>8,}")
    if episodes:
        lines.append("episodes:" if len(episodes) <= show else f"first {show} episodes:")
        for alert in episodes[:show]:
            end = iso(alert.resolved_ms) or "open"
            lines.append(
                f"  {alert.rule:<26} {alert.severity:<8} {alert.meter_id} "
                f"{channel_name(alert.channel)}  {iso(alert.opened_ms)} .. {end}"
            )
    if summary.malformed:
        lines.append(f"malformed rows ({summary.malformed:,}):")
        for error in summary.errors[:show]:
            lines.append(f"  line {error.line}: {error.reason}")
        if summary.malformed > show:
            lines.append(f"  ... and {summary.malformed - show:,} more")
    return "\n".join(lines)
