"""Unix-domain socket source: many local clients write JSON lines, one selector thread reads them.

Protocol, one JSON object per line::

    {"meter":"elec-000001","channel":"power","value":1.42,"unit":"kW","ts":1764201600.5}

Replies on the same connection, best-effort (a client that never reads loses them, nothing else):

- ``err <line_no> <reason>`` for a rejected line, as soon as it is parsed;
- ``ok <n>`` once every line up to line ``n`` of this connection is durable (or was rejected);
- ``busy <line_no>`` when the agent refused the lines from ``line_no`` on (buffer full, shutting
  down): the source keeps them, stops reading from that client, and retries until the agent takes
  them, so the client's writes block instead of losing data. An ``ok`` follows when they are in.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections import deque
from functools import partial
from pathlib import Path

from edge_agent.metrics import AgentMetrics
from edge_agent.reading import MAX_LINE_BYTES
from edge_agent.sources.base import Door, Intake, LineBatch, LineFramer

log = logging.getLogger("edge_agent.sources.socket")

#: Bytes asked of one recv(); one chunk becomes one submit (one group commit).
RECV_BYTES = 256 * 1024
#: Reply bytes kept for a client that is not reading; further replies to it are dropped.
MAX_PENDING_REPLY_BYTES = 64 * 1024
#: How long a finished (EOF) client may take to read its last replies before it is closed.
LINGER_S = 5.0
#: Retry of a refused batch: first delay and cap (doubling in between).
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
#: Longest the loop sleeps, so stop() and the reject-log summary are never late by more.
_TICK_S = 0.5
#: Pause of accept() after it failed for lack of resources (EMFILE), so the loop does not spin.
_ACCEPT_PAUSE_S = 0.5


class _Client:
    """One connection: its framer, replies waiting to be written, and what it waits for."""

    __slots__ = (
        "acked",
        "delay_s",
        "eof",
        "events",
        "framer",
        "held",
        "linger_until",
        "out",
        "outstanding",
        "retry_at",
        "sock",
        "write_dead",
    )

    def __init__(self, sock: socket.socket, framer: LineFramer) -> None:
        self.sock = sock
        self.framer = framer
        self.out = bytearray()
        self.events = 0
        self.outstanding = 0  # accepted submits whose on_durable has not run yet
        self.acked = 0  # highest line number replied `ok`
        self.held: LineBatch | None = None  # a batch the intake refused, retried later
        self.retry_at = 0.0
        self.delay_s = RETRY_FIRST_S
        self.eof = False
        self.write_dead = False
        self.linger_until = 0.0


class UnixSocketSource:
    """Accepts JSON-line readings on a Unix-domain stream socket (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        metrics: AgentMetrics,
        *,
        mode: int = 0o660,
        max_line_bytes: int = MAX_LINE_BYTES,
        name: str = "socket",
    ) -> None:
        self.name = name
        self.path = Path(path)
        self._mode = mode
        self._max_line_bytes = max_line_bytes
        self._door = Door(name, metrics)
        self._intake: Intake | None = None
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._wake_pending = False
        self._durable: deque[tuple[_Client, int]] = deque()
        self._clients: set[_Client] = set()
        # Clients with a refused batch to retry or at EOF: the only ones housekeeping visits.
        self._waiting: set[_Client] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._accept_paused_until = 0.0
        self._inode: tuple[int, int] | None = None
        #: Replies dropped because their client was not reading (observability for tests/status).
        self.replies_dropped = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, intake: Intake) -> None:
        """Bind the socket (replacing a stale one) and start the reader thread.

        Raises OSError if the path holds something that is not a socket, or a live agent.
        """
        if self._thread is not None:
            raise RuntimeError(f"source {self.name} already started")
        self._intake = intake
        _remove_stale(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under a temporary name and renamed once listening, so the path appears only
        # when clients can connect (and with the right mode from the first client on).
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        bound = False
        try:
            listener.bind(str(staging))
            bound = True
            os.chmod(staging, self._mode)
            listener.listen(socket.SOMAXCONN)
            listener.setblocking(False)
            os.rename(staging, self.path)
            st = os.stat(self.path)
        except BaseException:
            listener.close()
            if bound:
                staging.unlink(missing_ok=True)
            raise
        self._inode = (st.st_dev, st.st_ino)
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()
        log.info("source_started source=%s path=%s", self.name, self.path)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every connection and remove the socket file."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._wake()
        thread.join(timeout_s)
        if thread.is_alive():
            log.error("source_stop_timeout source=%s timeout_s=%s", self.name, timeout_s)

    @property
    def clients(self) -> int:
        """Connections open right now."""
        return len(self._clients)

    # -- called from the pipeline thread -------------------------------------------------------

    def _on_durable(self, client: _Client, line_no: int) -> None:
        self._durable.append((client, line_no))
        self._wake()

    def _wake(self) -> None:
        if self._wake_pending or self._wake_w is None:
            return
        self._wake_pending = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- the selector thread -----------------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while not self._stopping.is_set():
                events = self._selector.select(self._timeout())
                for key, mask in events:
                    if key.data is None:
                        self._accept()
                    elif key.data is self._wake_r:
                        self._drain_wake()
                    else:
                        client: _Client = key.data
                        if mask & selectors.EVENT_WRITE and client in self._clients:
                            self._flush(client)
                        if mask & selectors.EVENT_READ and client in self._clients:
                            self._read(client)
                self._deliver_durable()
                self._housekeeping()
        finally:
            self._shutdown()

    def _timeout(self) -> float:
        now = time.monotonic()
        wake_at = now + _TICK_S
        for client in self._waiting:
            if client.held is not None:
                wake_at = min(wake_at, client.retry_at)
            elif client.eof:
                wake_at = min(wake_at, client.linger_until)
        if self._accept_paused_until:
            wake_at = min(wake_at, self._accept_paused_until)
        return max(0.0, wake_at - now)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors: leave the backlog alone for a moment instead of spinning.
                log.error("socket_accept_failed source=%s error=%s", self.name, exc)
                self._pause_accept()
                return
            sock.setblocking(False)
            client = _Client(sock, LineFramer(self._door, max_line_bytes=self._max_line_bytes))
            self._clients.add(client)
            self._set_interest(client)

    def _pause_accept(self) -> None:
        assert self._selector is not None and self._listener is not None
        self._selector.unregister(self._listener)
        self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE_S

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        self._wake_pending = False
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _read(self, client: _Client) -> None:
        try:
            chunk = client.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("socket_client_error source=%s error=%s", self.name, exc)
            self._close(client)
            return
        if chunk:
            batch = client.framer.feed(chunk)
        else:
            client.eof = True
            client.linger_until = time.monotonic() + LINGER_S
            self._waiting.add(client)
            batch = client.framer.finish()
        if batch.lines:
            for line_no, reason in batch.rejects:
                self._reply(client, b"err %d %s\n" % (line_no, reason.value.encode()))
            self._submit(client, batch, rejected=len(batch.rejects))
        self._set_interest(client)

    def _submit(self, client: _Client, batch: LineBatch, *, rejected: int) -> None:
        assert self._intake is not None
        accepted = self._intake.submit(
            batch.readings,
            source=self.name,
            rejected=rejected,
            on_durable=partial(self._on_durable, client, batch.last_line),
        )
        if accepted:
            client.outstanding += 1
            client.held = None
            client.delay_s = RETRY_FIRST_S
            if not client.eof:
                self._waiting.discard(client)
            return
        if client.held is None:
            self._reply(client, b"busy %d\n" % batch.first_line)
            client.held = batch
            self._waiting.add(client)
        client.retry_at = time.monotonic() + client.delay_s
        client.delay_s = min(client.delay_s * 2, RETRY_MAX_S)

    def _reply(self, client: _Client, data: bytes) -> None:
        if client.write_dead:
            return
        if len(client.out) + len(data) > MAX_PENDING_REPLY_BYTES:
            self.replies_dropped += 1
            return
        client.out += data
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        if not client.out or client.write_dead:
            return
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # The client closed its reading side; keep reading what it sent, reply no more.
            client.write_dead = True
            client.out.clear()
            sent = 0
        del client.out[:sent]
        self._set_interest(client)

    def _deliver_durable(self) -> None:
        newest: dict[_Client, int] = {}
        while self._durable:
            client, line_no = self._durable.popleft()
            client.outstanding -= 1
            newest[client] = max(newest.get(client, 0), line_no)
        for client, line_no in newest.items():
            if client in self._clients and line_no > client.acked:
                client.acked = line_no
                self._reply(client, b"ok %d\n" % line_no)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for client in list(self._waiting):
            if client.held is not None and now >= client.retry_at:
                self._submit(client, client.held, rejected=0)
                self._set_interest(client)
            if client.eof and client.held is None and client.outstanding == 0:
                if not client.out or client.write_dead or now >= client.linger_until:
                    self._close(client)
            elif client.eof and now >= client.linger_until + LINGER_S * 12:
                # The intake never confirmed (agent wedged or stopping); do not hold the fd forever.
                self._close(client)
        if self._accept_paused_until and now >= self._accept_paused_until:
            assert self._selector is not None and self._listener is not None
            self._accept_paused_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._door.tick()

    def _set_interest(self, client: _Client) -> None:
        if client not in self._clients:
            return
        assert self._selector is not None
        events = 0
        if not client.eof and client.held is None:
            events |= selectors.EVENT_READ
        if client.out and not client.write_dead:
            events |= selectors.EVENT_WRITE
        if events == client.events:
            return
        if client.events == 0:
            self._selector.register(client.sock, events, client)
        elif events == 0:
            self._selector.unregister(client.sock)
        else:
            self._selector.modify(client.sock, events, client)
        client.events = events

    def _close(self, client: _Client) -> None:
        if client not in self._clients:
            return
        if client.events:
            assert self._selector is not None
            self._selector.unregister(client.sock)
            client.events = 0
        self._clients.discard(client)
        self._waiting.discard(client)
        client.sock.close()

    def _shutdown(self) -> None:
        for client in list(self._clients):
            self._close(client)
        if self._selector is not None:
            self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_w = None
        self._remove_own_socket()
        log.info("source_stopped source=%s", self.name)

    def _remove_own_socket(self) -> None:
        # Only our own file: another agent may have replaced it after a botched restart.
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()


def _remove_stale(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        log.info("socket_stale_removed path=%s", path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another process is listening on the socket", str(path))
