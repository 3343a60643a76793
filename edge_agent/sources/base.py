"""What every reading source shares: the two small interfaces, and validation at the door.

A source turns outside input (socket lines, stdin, local MQTT, Modbus registers) into `Reading`s
and hands them to the pipeline in batches through `Intake.submit`. It acknowledges its input only
when the pipeline calls `on_durable`. A bad reading is counted and logged by `Door` and never
holds up the good readings around it; `LineFramer` is the JSON-lines protocol that the socket
and stdin sources speak.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import orjson

from edge_agent.errors import RejectedReadingError, RejectReason
from edge_agent.metrics import AgentMetrics
from edge_agent.reading import MAX_LINE_BYTES, Reading, parse_reading

log = logging.getLogger("edge_agent.sources")

#: Log event names, shared by every source (the words tests and log searches use).
EVENT_REJECTED = "reading_rejected"
EVENT_REJECTS_SUPPRESSED = "readings_rejected_suppressed"
#: Rejections logged one by one per source and interval; the rest are summed in one line.
LOG_FIRST_REJECTS = 10
LOG_INTERVAL_S = 60.0
#: Longest detail (characters) a reject log line quotes; input is untrusted and may be huge.
_MAX_DETAIL_CHARS = 200


class Intake(Protocol):
    """The pipeline as a source sees it."""

    def submit(
        self,
        readings: Sequence[Reading],
        *,
        source: str,
        rejected: int = 0,
        on_durable: Callable[[], None] | None = None,
    ) -> bool:
        """Hand readings over; `on_durable` runs once they are journaled; False means refused."""
        ...


class Source(Protocol):
    """A reading source: runs its own thread(s) between `start` and `stop`."""

    name: str

    def start(self, intake: Intake) -> None:
        """Start the source's threads and return at once."""
        ...

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting input and join the source's threads."""
        ...


class Door:
    """Validation bookkeeping for one source: counts readings and rejects, logs rejects sparingly.

    The first `log_first` rejects of each `interval_s` are logged one per line with their reason;
    the rest are only counted, and one summary line per interval says how many by reason, so a
    flood of garbage cannot fill the journal. Thread-safe.
    """

    def __init__(
        self,
        source: str,
        metrics: AgentMetrics,
        *,
        log_first: int = LOG_FIRST_REJECTS,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._in = metrics.readings_in.labels(source=source)
        self._rejected = {
            reason: metrics.readings_rejected.labels(source=source, reason=reason.value)
            for reason in RejectReason
        }
        self._log_first = log_first
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._logged = 0
        self._suppressed: dict[str, int] = {}

    def received(self, count: int) -> None:
        """Count `count` readings that arrived, valid or not."""
        if count:
            self._in.inc(count)

    def reject(self, err: RejectedReadingError, where: str) -> None:
        """Count one rejected reading and log it unless this interval's log budget is spent."""
        self._rejected[err.reason].inc()
        with self._lock:
            self._roll_window()
            if self._logged < self._log_first:
                self._logged += 1
                log.warning(
                    "%s source=%s reason=%s where=%s detail=%s",
                    EVENT_REJECTED,
                    self.source,
                    err.reason.value,
                    where,
                    err.detail[:_MAX_DETAIL_CHARS],
                )
            else:
                reason = err.reason.value
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1

    def tick(self) -> None:
        """Write the summary line if the interval is over; sources call this from their loops."""
        with self._lock:
            self._roll_window()

    def _roll_window(self) -> None:
        now = self._clock()
        if now - self._window_start < self._interval_s:
            return
        if self._suppressed:
            log.warning(
                "%s source=%s count=%d interval_s=%.0f reasons=%s",
                EVENT_REJECTS_SUPPRESSED,
                self.source,
                sum(self._suppressed.values()),
                now - self._window_start,
                ",".join(f"{k}:{v}" for k, v in sorted(self._suppressed.items())),
            )
        self._window_start = now
        self._logged = 0
        self._suppressed = {}


class LineBatch(NamedTuple):
    """The lines completed by one chunk of input: valid readings and (line number, reason) rejects.

    Lines are numbered from 1 per stream; `first_line`..`last_line` are the lines this batch
    completed (blank lines included, so the numbers match what the sender counts).
    """

    readings: list[Reading]
    rejects: list[tuple[int, RejectReason]]
    first_line: int
    last_line: int

    @property
    def lines(self) -> int:
        """How many lines this batch completed."""
        return self.last_line - self.first_line + 1


class LineFramer:
    """Splits a byte stream into JSON lines and validates each one, across chunk boundaries.

    A line longer than `max_line_bytes` (newline excluded) is rejected as `too_long` as soon as
    that is certain and the rest of it is skipped up to the next newline, so at most
    `max_line_bytes` plus one chunk is ever held. Blank lines are numbered but are not readings.
    """

    def __init__(self, door: Door, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
        self._door = door
        self._max = max_line_bytes
        self._partial = b""
        self._skipping = False
        #: Lines completed so far on this stream.
        self.lines = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished line held until its newline arrives."""
        return len(self._partial)

    def feed(self, chunk: bytes) -> LineBatch:
        """Take the next chunk of the stream; return the lines it completed."""
        first = self.lines + 1
        readings: list[Reading] = []
        rejects: list[tuple[int, RejectReason]] = []
        if self._skipping:
            cut = chunk.find(b"\n")
            if cut < 0:
                return LineBatch(readings, rejects, first, self.lines)
            # The over-long line was numbered and rejected when it was detected.
            self._skipping = False
            chunk = chunk[cut + 1 :]
        data = self._partial + chunk if self._partial else chunk
        parts = data.split(b"\n")
        tail = parts.pop()
        self._parse(parts, readings, rejects)
        if len(tail) > self._max:
            self.lines += 1
            self._too_long(self.lines, len(tail), rejects)
            self._door.received(1)
            self._skipping = True
            self._partial = b""
        else:
            self._partial = tail
        return LineBatch(readings, rejects, first, self.lines)

    def finish(self) -> LineBatch:
        """The stream ended: a last line without a newline still counts."""
        first = self.lines + 1
        readings: list[Reading] = []
        rejects: list[tuple[int, RejectReason]] = []
        if self._partial and not self._skipping:
            self._parse([self._partial], readings, rejects)
        self._partial = b""
        self._skipping = False
        return LineBatch(readings, rejects, first, self.lines)

    def _parse(
        self,
        lines: list[bytes],
        readings: list[Reading],
        rejects: list[tuple[int, RejectReason]],
    ) -> None:
        # The hot loop of the socket and stdin sources: keep lookups local.
        max_bytes = self._max
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        append = readings.append
        line_no = self.lines
        seen = 0
        for line in lines:
            line_no += 1
            if not line or line.isspace():
                continue
            seen += 1
            if len(line) > max_bytes:
                self._too_long(line_no, len(line), rejects)
                continue
            try:
                append(parse_reading(loads(line)))
            except decode_error as exc:
                self._reject(
                    RejectedReadingError(RejectReason.NOT_JSON, str(exc)), line_no, rejects
                )
            except RejectedReadingError as err:
                self._reject(err, line_no, rejects)
        self.lines = line_no
        self._door.received(seen)

    def _too_long(self, line_no: int, size: int, rejects: list[tuple[int, RejectReason]]) -> None:
        detail = f"line longer than {self._max} bytes (at least {size})"
        self._reject(RejectedReadingError(RejectReason.TOO_LONG, detail), line_no, rejects)

    def _reject(
        self, err: RejectedReadingError, line_no: int, rejects: list[tuple[int, RejectReason]]
    ) -> None:
        rejects.append((line_no, err.reason))
        self._door.reject(err, f"line {line_no}")
