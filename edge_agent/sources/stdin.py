"""Stdin source: the socket's JSON-lines protocol from a pipe (``producer | edge-agent --stdin``).

There is nobody to reply to, so a refused batch is simply retried until the agent takes it: the
source stops reading, the pipe fills and the producer blocks, which is the backpressure a shell
pipeline expects. At EOF the source stops and sets `done` once everything it read is durable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import BinaryIO

from edge_agent.metrics import AgentMetrics
from edge_agent.reading import MAX_LINE_BYTES
from edge_agent.sources.base import Door, Intake, LineBatch, LineFramer

log = logging.getLogger("edge_agent.sources.stdin")

#: Bytes read at once; one read becomes one submit.
READ_BYTES = 256 * 1024
#: Retry of a refused batch: first delay and cap (doubling in between).
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
#: How often a blocked read looks at the stop flag.
_POLL_S = 0.2


class StdinSource:
    """Reads JSON-line readings from a binary stream until EOF or `stop()`."""

    def __init__(
        self,
        stream: BinaryIO,
        metrics: AgentMetrics,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        name: str = "stdin",
    ) -> None:
        self.name = name
        self._stream = stream
        self._door = Door(name, metrics)
        self._framer = LineFramer(self._door, max_line_bytes=max_line_bytes)
        self._intake: Intake | None = None
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._outstanding = 0
        self._eof = False
        self._thread: threading.Thread | None = None

    @property
    def done(self) -> threading.Event:
        """Set when the source has finished: at EOF once all it read is durable, or on stop()."""
        return self._done

    @property
    def lines(self) -> int:
        """Lines read so far (blank and rejected lines included)."""
        return self._framer.lines

    def start(self, intake: Intake) -> None:
        """Start the reader thread."""
        if self._thread is not None:
            raise RuntimeError(f"source {self.name} already started")
        self._intake = intake
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop reading and join the reader thread (a read blocked on a non-pipe may outlive it)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("source_stop_timeout source=%s timeout_s=%s", self.name, timeout_s)
        self._done.set()

    def _run(self) -> None:
        read = self._reader()
        try:
            while not self._stopping.is_set():
                chunk = read()
                if chunk is None:
                    self._door.tick()
                    continue
                batch = self._framer.feed(chunk) if chunk else self._framer.finish()
                if batch.lines:
                    self._submit(batch)
                if not chunk:
                    break
        except OSError as exc:
            # A broken stdin ends the input just like EOF; what was read stays submitted.
            log.error("stdin_read_failed source=%s error=%s", self.name, exc)
        with self._lock:
            self._eof = True
            finished = self._outstanding == 0
        log.info("source_input_ended source=%s lines=%d", self.name, self._framer.lines)
        if finished:
            self._done.set()

    def _reader(self) -> Callable[[], bytes | None]:
        """A read function: bytes, b"" at EOF, or None when nothing came within the poll time."""
        stream = self._stream
        fd: int | None = None
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            fd = stream.fileno()
        if fd is not None:
            # A real descriptor (a pipe): poll it so stop() is honoured while the producer is
            # quiet. The stream's own buffer is bypassed; nothing has read from it before us.
            def read_fd() -> bytes | None:
                ready, _, _ = select.select([fd], [], [], _POLL_S)
                return os.read(fd, READ_BYTES) if ready else None

            return read_fd
        if isinstance(stream, io.BufferedIOBase):
            buffered = stream

            def read_buffered() -> bytes | None:
                return buffered.read1(READ_BYTES)

            return read_buffered

        def read_plain() -> bytes | None:
            return stream.read(READ_BYTES)

        return read_plain

    def _submit(self, batch: LineBatch) -> None:
        assert self._intake is not None
        rejected = len(batch.rejects)
        delay = RETRY_FIRST_S
        with self._lock:
            self._outstanding += 1
        while not self._stopping.is_set():
            if self._intake.submit(
                batch.readings, source=self.name, rejected=rejected, on_durable=self._on_durable
            ):
                return
            # `rejected` is reported with the first attempt only; the retry carries the rest.
            rejected = 0
            self._stopping.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        with self._lock:
            self._outstanding -= 1

    def _on_durable(self) -> None:
        with self._lock:
            self._outstanding -= 1
            finished = self._eof and self._outstanding == 0
        if finished:
            self._done.set()
