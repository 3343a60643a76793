"""The pipeline: readings from every source → journal → windows → outbox, on one thread.

Sources hand over batches through `submit` (the `Intake` they know). The pipeline thread makes
each batch durable in one journal transaction (a group commit) before it calls the sources'
`on_durable` callbacks, so nothing is acknowledged to a source before it is on disk. Closed
windows are encoded into wire messages and committed to the outbox together with the new
watermark and the counter registers they advanced, so the journal rows they came from go in the
same transaction. Priority events skip the windows and go to the outbox at once.

Readings stamped too far ahead of the clock skip the windows and go to the outbox at once, as
raw rows (see `WindowAggregator.ahead_limit`).

Accounting, exact at every moment (tests assert it):
    readings in = rejected + late + refused/dropped by the full policy
                  + open in windows + in the outbox + delivered
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_agent.aggregate import ClosedWindows, WindowAggregator, raw_rows
from edge_agent.buffer import DurableBuffer, OutboxMessage, Registers
from edge_agent.errors import DurableBufferError
from edge_agent.metrics import AgentMetrics
from edge_agent.priority import PriorityLane
from edge_agent.reading import Reading
from meterlink_wire import Kind, ReadingBatch, WindowRow, encode_split

log = logging.getLogger("edge_agent.pipeline")

#: How long the pipeline waits for input before it checks windows and the watchdog again.
_TICK_S = 0.2
#: Readings per group commit at most; larger intakes are split.
_MAX_GROUP = 20_000


@dataclass(frozen=True)
class _Intake:
    readings: Sequence[Reading]
    on_durable: Callable[[], None] | None


class Pipeline:
    """Implements the sources' `Intake`; `step()` runs one turn of the pipeline thread."""

    def __init__(
        self,
        *,
        gateway_id: str,
        buffer: DurableBuffer,
        aggregator: WindowAggregator,
        lane: PriorityLane,
        metrics: AgentMetrics,
        max_message_bytes: int,
        buffer_max_bytes: int,
        compress: bool = False,
        clock: Callable[[], float] = time.time,
        max_queued: int = 256,
    ) -> None:
        self._gateway_id = gateway_id
        self._buffer = buffer
        self._aggregator = aggregator
        self._lane = lane
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._buffer_max_bytes = buffer_max_bytes
        self._buffer_dropped = buffer.dropped_readings
        self._compress = compress
        self._clock = clock
        self._queue: queue.Queue[_Intake] = queue.Queue(maxsize=max_queued)
        self._accepting = threading.Event()
        self._accepting.set()
        self._refusing = False
        self.late = 0

    # -- Intake (called from source threads) ------------------------------------------------

    def submit(
        self,
        readings: Sequence[Reading],
        *,
        source: str,
        rejected: int = 0,
        on_durable: Callable[[], None] | None = None,
    ) -> bool:
        """Queue readings for the next group commit; blocks while the queue is full."""
        if rejected:
            self._metrics.readings_dropped.labels(policy="rejected").inc(rejected)
        if not self._accepting.is_set():
            return False
        if self._refusing:
            # refuse_newest with a full buffer: say no, so the source keeps its input.
            return False
        if readings or on_durable is not None:
            try:
                self._queue.put_nowait(_Intake(readings, on_durable))
            except queue.Full:
                # Backpressure without blocking the source's thread: it keeps the batch
                # (MQTT unacked, socket `busy`) and offers it again.
                return False
        return True

    # -- pipeline thread ----------------------------------------------------------------------

    def recover(self) -> int:
        """Rebuild open windows from the journal after a crash; returns readings restored.

        The aggregator must start at the buffer's watermark: journaled readings older than it
        were already folded into committed windows and are skipped, not counted again.
        """
        self._aggregator.add(self._buffer.journaled())
        restored = self._aggregator.open_readings
        if restored:
            log.info(
                "recovered readings=%d watermark_ms=%d", restored, self._buffer.closed_until_ms
            )
        return restored

    def step(self, timeout_s: float = _TICK_S) -> int:
        """Ingest what has arrived (waiting up to `timeout_s`), then close due windows.

        A clock set back past the watermark is noticed first (see `_rewind`), so the readings of
        the time between are not counted late.
        """
        if self._refusing:
            self._refusing = self._buffer.used_bytes >= self._buffer_max_bytes
        items = self._drain(timeout_s)
        now_ms = self._now_ms()
        if self._aggregator.clock_went_back(now_ms):
            self._rewind(now_ms)
        ingested = self._ingest(items, now_ms) if items else 0
        self._close(self._aggregator.close_due(self._now_ms()))
        return ingested

    def stop_accepting(self) -> None:
        """New submits are refused from now on (SIGTERM)."""
        self._accepting.clear()

    def drain(self) -> None:
        """Ingest everything queued, so sources get their last acknowledgements (SIGTERM)."""
        while True:
            items = self._drain(0)
            if not items:
                break
            self._ingest(items, self._now_ms())

    def flush(self) -> None:
        """Ingest what is left, then close every open window now (partial windows)."""
        self.drain()
        closed = self._aggregator.close_all()
        self._commit_rows(
            closed.rows,
            Kind.TELEMETRY,
            closed.readings,
            clear_journal=True,
            registers=closed.registers,
        )

    def _rewind(self, now_ms: int) -> None:
        """The clock was set back: emit the open windows and move the watermark back with it.

        Otherwise every reading until the clock caught up with the old watermark would be late
        and dropped (a clock that ran a year ahead: a year of readings). One transaction empties
        the journal with it, so nothing is counted twice.
        """
        was = self._aggregator.closed_until_ms
        closed = self._aggregator.rewind(now_ms)
        log.error(
            "clock_went_back watermark_ms=%d now_ms=%d rewound_to_ms=%d windows_emitted=%d",
            was,
            now_ms,
            self._aggregator.closed_until_ms,
            len(closed.rows),
        )
        self._metrics.clock_rewinds.inc()
        self._commit_rows(
            closed.rows,
            Kind.TELEMETRY,
            closed.readings,
            watermark=self._aggregator.closed_until_ms,
            clear_journal=True,
            registers=closed.registers,
            rewind=True,
        )

    @property
    def open_readings(self) -> int:
        """Readings held in open windows (for accounting)."""
        return self._aggregator.open_readings

    def _drain(self, timeout_s: float) -> list[_Intake]:
        try:
            first = (
                self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
            )
        except queue.Empty:
            return []
        items, size = [first], len(first.readings)
        while size < _MAX_GROUP:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            items.append(item)
            size += len(item.readings)
        return items

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _ingest(self, items: list[_Intake], now_ms: int) -> int:
        readings: list[Reading] = []
        for item in items:
            readings.extend(item.readings)
        watermark = self._aggregator.closed_until_ms
        limit = self._aggregator.ahead_limit(now_ms)
        ahead: list[Reading] = []
        if limit is None:  # pass-through: nothing waits for the clock
            fresh = [r for r in readings if r.ts_ms >= watermark] if watermark else readings
        else:
            # One pass in the usual case; readings late or ahead are sorted out only if any.
            fresh = [r for r in readings if watermark <= r.ts_ms < limit]
            if len(fresh) < len(readings):
                ahead = [r for r in readings if r.ts_ms >= limit]
        late = len(readings) - len(fresh) - len(ahead)
        if late:
            self.late += late
            self._metrics.readings_late.inc(late)
            self._metrics.readings_dropped.labels(policy="late").inc(late)
        if ahead:
            self._send_ahead(ahead)
        if fresh:
            accepted = self._journal(fresh)
            if accepted:
                self._raise_events(fresh)
                self._aggregator.add(fresh)
        for item in items:
            if item.on_durable is not None:
                item.on_durable()
        return len(fresh) + len(ahead)

    def _send_ahead(self, readings: list[Reading]) -> None:
        """Readings stamped far ahead of the clock go out at once, as raw rows (window 0).

        In a window they would wait, with the journal chunk they came in, until the clock got
        there: one meter a year ahead kept every chunk, and the journal grew until the buffer was
        full. Sent raw they cost one message per group commit; the cloud's validation judges
        their timestamps, and a gateway whose own clock is behind (no RTC, no NTP yet) loses none.
        """
        messages = self._encode(raw_rows(readings), Kind.TELEMETRY, window_s=0)
        try:
            self._buffer.commit(messages, unjournaled=len(readings))
        except DurableBufferError as exc:
            # As for the journal: counted, and the pipeline goes on.
            log.error("send_ahead_failed readings=%d reason=%s", len(readings), exc)
            self._metrics.readings_dropped.labels(policy="buffer_error").inc(len(readings))
            return
        self._metrics.readings_ahead.inc(len(readings))
        self._export_buffer_drops()
        self._raise_events(readings)

    def _journal(self, readings: list[Reading]) -> int:
        """Make `readings` durable; under a full buffer the configured policy decides."""
        for attempt in range(2):
            try:
                accepted = self._buffer.journal(readings)
            except DurableBufferError as exc:
                # Disk full or an I/O error: make room by policy once, then give up on this
                # group (counted), never on the pipeline.
                dropped = self._buffer.make_room(64 * 1024) if attempt == 0 else 0
                if dropped:
                    log.warning("buffer_full dropped_oldest=%d reason=%s", dropped, exc)
                    continue
                log.error("journal_failed readings=%d reason=%s", len(readings), exc)
                break
            else:
                refused = len(readings) - accepted
                self._refusing = refused > 0
                if refused:
                    self._metrics.readings_dropped.labels(policy="buffer_full_newest").inc(refused)
                self._export_buffer_drops()
                return accepted
        self._metrics.readings_dropped.labels(policy="buffer_error").inc(len(readings))
        return 0

    def _raise_events(self, readings: list[Reading]) -> None:
        rows = self._lane.check(readings)
        if rows:
            for row in rows:
                self._metrics.events.labels(reason=row.reason or "").inc()
            self._commit_rows(rows, Kind.EVENTS, 0)

    def _close(self, closed: ClosedWindows) -> None:
        watermark = self._aggregator.closed_until_ms
        if closed.rows or watermark != self._buffer.closed_until_ms:
            # Nothing left open (always so when raw readings pass through): every journaled
            # reading is now in the outbox, so the whole journal goes in the same transaction.
            self._commit_rows(
                closed.rows,
                Kind.TELEMETRY,
                closed.readings,
                watermark=watermark,
                clear_journal=self._aggregator.open_readings == 0,
                registers=closed.registers,
            )

    def _commit_rows(
        self,
        rows: list[WindowRow],
        kind: Kind,
        readings: int,
        *,
        watermark: int | None = None,
        clear_journal: bool = False,
        registers: Registers | None = None,
        rewind: bool = False,
    ) -> None:
        messages = self._encode(rows, kind) if rows else []
        if kind is Kind.TELEMETRY and messages:
            # Spread the readings count over the parts by rows' counts (exact per part).
            total = sum(m.readings for m in messages)
            if total != readings:
                log.error("accounting_mismatch rows_count=%d readings=%d", total, readings)
        self._buffer.commit(
            messages,
            closed_until_ms=watermark,
            clear_journal=clear_journal,
            registers=registers,
            rewind=rewind,
        )
        if kind is Kind.TELEMETRY and rows:
            self._metrics.windows_closed.inc(len(rows))
        self._export_buffer_drops()

    def _export_buffer_drops(self) -> None:
        """Mirror the buffer's persisted drop counter into the metric (it drops by policy)."""
        dropped = self._buffer.dropped_readings
        if dropped > self._buffer_dropped:
            self._metrics.readings_dropped.labels(policy="buffer_full").inc(
                dropped - self._buffer_dropped
            )
        self._buffer_dropped = dropped

    def _encode(
        self, rows: list[WindowRow], kind: Kind, window_s: int | None = None
    ) -> list[OutboxMessage]:
        if window_s is None:
            window_s = 0 if kind is Kind.EVENTS else self._aggregator.window_s
        batch = ReadingBatch.from_rows(
            gateway_id=self._gateway_id,
            sequence=self._buffer.next_sequence,
            sent_ms=self._now_ms(),
            window_s=window_s,
            rows=rows,
            kind=kind,
        )
        parts = encode_split(batch, max_bytes=self._max_message_bytes, compress=self._compress)
        return [
            OutboxMessage(
                kind=kind,
                sequence=part.sequence,
                payload=payload,
                # Events are copies of readings that also go through the windows.
                readings=int(part.count.sum()) if kind is Kind.TELEMETRY else 0,
            )
            for part, payload in parts
        ]
