"""The Unix-socket and stdin sources: the JSON-lines protocol, its replies, and bad input."""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.errors import RejectedReadingError, RejectReason
from edge_agent.metrics import AgentMetrics, value
from edge_agent.reading import Reading
from edge_agent.sources.base import EVENT_REJECTED, EVENT_REJECTS_SUPPRESSED, Door, LineFramer
from edge_agent.sources.socket import MAX_PENDING_REPLY_BYTES, UnixSocketSource
from edge_agent.sources.stdin import StdinSource
from meterlink_wire import Channel, Unit
from tests.edge.sources_helpers import RecordingIntake, line, wait_until

TS_MS = 1_764_201_600_500


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short path: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    folder = Path(tempfile.mkdtemp(prefix="ml-sock-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def intake() -> Iterator[RecordingIntake]:
    recording = RecordingIntake()
    yield recording
    recording.close()


@pytest.fixture
def metrics() -> AgentMetrics:
    return AgentMetrics()


@pytest.fixture
def source(sock_dir: Path, metrics: AgentMetrics) -> Iterator[UnixSocketSource]:
    src = UnixSocketSource(sock_dir / "agent.sock", metrics)
    yield src
    src.stop()


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    client.connect(str(path))
    return client


class Replies:
    """Reply lines from the source, read as they come."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.buffer = b""

    def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.client.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed; partial reply {self.buffer!r}")
            self.buffer += chunk
        reply, self.buffer = self.buffer.split(b"\n", 1)
        return reply.decode()


def read_all(client: socket.socket) -> list[str]:
    """Read replies until the server closes the connection."""
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data.decode().splitlines()


def rejected(metrics: AgentMetrics, reason: str, source: str = "socket") -> float:
    return value(metrics.readings_rejected, source=source, reason=reason)


# -- the socket source -----------------------------------------------------------------------


def test_many_clients_all_readings_arrive_and_each_gets_its_ok(
    source: UnixSocketSource, intake: RecordingIntake, metrics: AgentMetrics
) -> None:
    source.start(intake)
    clients, lines_each = 20, 500
    replies: dict[int, list[str]] = {}

    def client_main(n: int) -> None:
        with connect(source.path) as client:
            payload = b"".join(
                line(f"elec-{n:06d}", float(i), ts=1764201600 + i) for i in range(lines_each)
            )
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            replies[n] = read_all(client)

    threads = [threading.Thread(target=client_main, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    for n in range(clients):
        assert replies[n][-1] == f"ok {lines_each}", replies[n]
        assert all(r.startswith("ok ") for r in replies[n])
    got = sorted((r.meter_id, r.value, r.ts_ms) for r in intake.readings)
    assert got == sorted(
        (f"elec-{n:06d}", float(i), (1764201600 + i) * 1000)
        for n in range(clients)
        for i in range(lines_each)
    )
    assert value(metrics.readings_in, source="socket") == clients * lines_each
    assert value(metrics.readings_rejected, source="socket") == 0
    assert {s.source for s in intake.submissions} == {"socket"}
    wait_until(lambda: source.clients == 0, what="connections closed after EOF")


def test_garbage_is_counted_by_reason_and_good_lines_around_it_pass(
    source: UnixSocketSource, intake: RecordingIntake, metrics: AgentMetrics
) -> None:
    source.start(intake)
    stream = [
        line("elec-000001", 1.0),  # 1 ok
        b"this is not json\n",  # 2 not_json
        b'{"meter":"elec-000001","value":\xff\xfe}\n',  # 3 invalid UTF-8 -> not_json
        b"[1,2,3]\n",  # 4 not_object
        b'{"meter":"elec-000001","channel":"power","value":1,"unit":"kW"}\n',  # 5 missing ts
        line("not a meter!"),  # 6 bad_meter_id
        line(channel="colour"),  # 7 unknown_channel
        line(unit="furlong"),  # 8 unknown_unit
        line(value="12"),  # 9 bad_value (string)
        line(value=True),  # 10 bad_value (bool)
        line(ts=-5),  # 11 bad_timestamp
        b"\n",  # 12 blank: numbered, not a reading
        b"   \n",  # 13 blank
        line("elec-000002", 2.0),  # 14 ok
        b"{truncated\n",  # 15 not_json
        line("wat-000003", 3.0, channel="volume", unit="m3"),  # 16 ok
    ]
    with connect(source.path) as client:
        client.sendall(b"".join(stream))
        client.shutdown(socket.SHUT_WR)
        replies = read_all(client)

    assert [r for r in replies if r.startswith("err")] == [
        "err 2 not_json",
        "err 3 not_json",
        "err 4 not_object",
        "err 5 missing_field",
        "err 6 bad_meter_id",
        "err 7 unknown_channel",
        "err 8 unknown_unit",
        "err 9 bad_value",
        "err 10 bad_value",
        "err 11 bad_timestamp",
        "err 15 not_json",
    ]
    assert replies[-1] == "ok 16"
    assert intake.readings == [
        Reading("elec-000001", Channel.POWER, Unit.KW, TS_MS, 1.0),
        Reading("elec-000002", Channel.POWER, Unit.KW, TS_MS, 2.0),
        Reading("wat-000003", Channel.VOLUME, Unit.M3, TS_MS, 3.0),
    ]
    assert intake.rejected == 11
    expected = {
        "not_json": 3,
        "not_object": 1,
        "missing_field": 1,
        "bad_meter_id": 1,
        "unknown_channel": 1,
        "unknown_unit": 1,
        "bad_value": 2,
        "bad_timestamp": 1,
        "too_long": 0,
        "non_finite": 0,
    }
    assert {reason: rejected(metrics, reason) for reason in expected} == expected
    # Blank lines are neither readings nor rejects.
    assert value(metrics.readings_in, source="socket") == 14


def test_lines_split_across_sends_are_joined(
    source: UnixSocketSource, intake: RecordingIntake
) -> None:
    source.start(intake)
    lines = [line(f"elec-{n:06d}", float(n)) for n in range(1, 6)]
    with connect(source.path) as client:
        # Each send ends in the middle of a line; waiting for the line before it proves the
        # source consumed the send (one small send is one recv) and kept the partial line.
        client.sendall(lines[0][:20])
        for n in range(1, 5):
            client.sendall(lines[n - 1][20:] + lines[n][:20])
            wait_until(lambda: len(intake.readings) == n, what=f"line {n}")  # noqa: B023
        client.sendall(lines[4][20:25])
        client.sendall(lines[4][25:])
        client.shutdown(socket.SHUT_WR)
        replies = read_all(client)
    assert [r.meter_id for r in intake.readings] == [f"elec-{n:06d}" for n in range(1, 6)]
    assert [r.value for r in intake.readings] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert replies[-1] == "ok 5"
    assert all(r.startswith("ok ") for r in replies)


def test_framer_joins_partial_lines(metrics: AgentMetrics) -> None:
    framer = LineFramer(Door("t", metrics))
    data = line("elec-000001", 1.0) + line("elec-000002", 2.0)
    batches = [framer.feed(data[i : i + 7]) for i in range(0, len(data), 7)]
    assert [r.meter_id for b in batches for r in b.readings] == ["elec-000001", "elec-000002"]
    assert [(b.first_line, b.last_line) for b in batches if b.lines] == [(1, 1), (2, 2)]
    assert framer.pending_bytes == 0


def test_last_line_without_newline_counts_at_eof(
    source: UnixSocketSource, intake: RecordingIntake
) -> None:
    source.start(intake)
    with connect(source.path) as client:
        client.sendall(line("elec-000001", 1.0) + line("elec-000002", 2.0).rstrip(b"\n"))
        client.shutdown(socket.SHUT_WR)
        replies = read_all(client)
    assert replies[-1] == "ok 2"
    assert all(r.startswith("ok ") for r in replies)
    assert [r.value for r in intake.readings] == [1.0, 2.0]


def test_overlong_line_is_rejected_and_skipped_to_the_next_newline(
    sock_dir: Path, intake: RecordingIntake, metrics: AgentMetrics
) -> None:
    src = UnixSocketSource(sock_dir / "a.sock", metrics, max_line_bytes=200)
    src.start(intake)
    try:
        huge = b'{"meter":"elec-000001","junk":"' + b"x" * 2_000_000 + b'"}\n'
        with connect(src.path) as client:
            client.sendall(line("elec-000001", 1.0) + huge + line("elec-000002", 2.0))
            client.sendall(b"z" * 201 + b"\n" + line("elec-000003", 3.0))
            client.shutdown(socket.SHUT_WR)
            replies = read_all(client)
        assert [r for r in replies if r.startswith("err")] == ["err 2 too_long", "err 4 too_long"]
        assert replies[-1] == "ok 5"
        assert [r.meter_id for r in intake.readings] == [
            "elec-000001",
            "elec-000002",
            "elec-000003",
        ]
        assert rejected(metrics, "too_long") == 2
        assert value(metrics.readings_in, source="socket") == 5
    finally:
        src.stop()


def test_framer_never_holds_more_than_one_line_of_an_overlong_line(
    metrics: AgentMetrics,
) -> None:
    framer = LineFramer(Door("t", metrics), max_line_bytes=100)
    assert framer.feed(b'{"a":').rejects == []
    biggest = 0
    for _ in range(1000):
        batch = framer.feed(b"x" * 64)
        biggest = max(biggest, framer.pending_bytes)
    assert biggest <= 100
    assert framer.pending_bytes == 0
    batch = framer.feed(b"tail of the long line\n" + line("elec-000009", 9.0))
    assert [r.meter_id for r in batch.readings] == ["elec-000009"]
    assert framer.lines == 2
    assert value(metrics.readings_rejected, source="t", reason="too_long") == 1


def test_a_line_of_exactly_max_bytes_is_accepted(metrics: AgentMetrics) -> None:
    body = line("elec-000001", 1.0).rstrip(b"\n")
    framer = LineFramer(Door("t", metrics), max_line_bytes=len(body))
    assert len(framer.feed(body + b"\n").readings) == 1
    framer = LineFramer(Door("t2", metrics), max_line_bytes=len(body) - 1)
    assert framer.feed(body + b"\n").rejects == [(1, RejectReason.TOO_LONG)]


def test_a_client_that_never_reads_does_not_stall_the_others(
    source: UnixSocketSource, intake: RecordingIntake, metrics: AgentMetrics
) -> None:
    source.start(intake)
    garbage_lines = 200_000  # ~4 MB of `err N not_json` replies, far beyond any socket buffer
    silent = connect(source.path)
    try:
        silent.sendall(b"".join([b"x\n"] * garbage_lines) + line("elec-000777", 7.0))
        # The source's replies to the silent client are backed up as far as they can go...
        wait_until(lambda: source.replies_dropped > 0, what="replies to the silent client dropped")
        # ...and another client is still served at once.
        with connect(source.path) as other:
            other.sendall(line("elec-000001", 1.0) + line("elec-000002", 2.0))
            other.shutdown(socket.SHUT_WR)
            assert read_all(other) == ["ok 2"]
        wait_until(
            lambda: rejected(metrics, "not_json") == garbage_lines,
            what="all garbage consumed",
        )
        wait_until(
            lambda: "elec-000777" in {r.meter_id for r in intake.readings},
            what="the silent client's good line",
        )
        assert source.replies_dropped > 0
        # What was kept for the silent client is bounded and made of whole reply lines.
        silent.settimeout(2)
        kept = b""
        while True:
            try:
                chunk = silent.recv(1 << 20)
            except TimeoutError:
                break
            if not chunk:
                break
            kept += chunk
        assert kept.endswith(b"\n")
        assert all(r.startswith((b"err ", b"ok ")) for r in kept.splitlines())
        assert len(kept) < 2 * 1024 * 1024 + MAX_PENDING_REPLY_BYTES  # not 4 MB: most dropped
    finally:
        silent.close()


def test_ok_is_sent_only_after_the_intake_made_the_lines_durable(
    source: UnixSocketSource,
) -> None:
    intake = RecordingIntake(hold=True)
    source.start(intake)
    try:
        with connect(source.path) as client:
            client.sendall(line("elec-000001", 1.0) + line("elec-000002", 2.0))
            wait_until(lambda: intake.held == 1, what="the submit")
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recv(100)
            client.setblocking(True)
            assert intake.release() == 1
            assert client.recv(100) == b"ok 2\n"
    finally:
        intake.close()


def test_busy_when_refused_then_reading_resumes_when_the_intake_accepts(
    source: UnixSocketSource,
) -> None:
    intake = RecordingIntake(refuse=True)
    source.start(intake)
    try:
        with connect(source.path) as client:
            client.sendall(line("elec-000001", 1.0) + b"bad\n" + line("elec-000002", 2.0))
            replies = Replies(client)
            assert replies.next() == "err 2 not_json"
            assert replies.next() == "busy 1"
            # While refused, the source does not read on: these lines stay in the socket.
            client.sendall(line("elec-000003", 3.0))
            wait_until(lambda: intake.refused >= 3, what="a few retries")
            assert all(len(s.readings) == 2 for s in intake.submissions)
            assert intake.readings == []
            intake.refuse = False
            client.shutdown(socket.SHUT_WR)
            rest = read_all(client)
        assert replies.buffer == b""
        assert rest[-1] == "ok 4"
        assert all(r.startswith("ok ") for r in rest)
        assert [r.meter_id for r in intake.readings] == [
            "elec-000001",
            "elec-000002",
            "elec-000003",
        ]
        # The rejected line was reported to the intake once, not once per retry.
        assert intake.rejected == 1
    finally:
        intake.close()


def test_stale_socket_file_is_replaced_and_mode_is_0660(
    sock_dir: Path, intake: RecordingIntake, metrics: AgentMetrics
) -> None:
    path = sock_dir / "agent.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays: a crashed agent's leftover
    assert path.exists()
    src = UnixSocketSource(path, metrics)
    src.start(intake)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with connect(path) as client:
            client.sendall(line())
            client.shutdown(socket.SHUT_WR)
            assert read_all(client) == ["ok 1"]
        # A second agent on the same path must not steal the live socket.
        with pytest.raises(OSError) as info:
            UnixSocketSource(path, AgentMetrics()).start(intake)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        src.stop()
    assert not path.exists()


def test_a_regular_file_at_the_socket_path_is_left_alone(
    sock_dir: Path, intake: RecordingIntake, metrics: AgentMetrics
) -> None:
    path = sock_dir / "agent.sock"
    path.write_text("precious")
    with pytest.raises(FileExistsError):
        UnixSocketSource(path, metrics).start(intake)
    assert path.read_text() == "precious"


def test_rejects_are_logged_sparingly(
    source: UnixSocketSource,
    intake: RecordingIntake,
    metrics: AgentMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.sources")
    source.start(intake)
    with connect(source.path) as client:
        client.sendall(b"garbage\n" * 5000 + line())
        client.shutdown(socket.SHUT_WR)
        read_all(client)
    assert rejected(metrics, "not_json") == 5000
    logged = [r for r in caplog.records if r.getMessage().startswith(EVENT_REJECTED)]
    assert len(logged) == 10
    assert "reason=not_json where=line 1 " in logged[0].getMessage()


def test_door_summarises_suppressed_rejects_once_per_interval(
    metrics: AgentMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.sources")
    now = [0.0]
    door = Door("t", metrics, log_first=2, interval_s=60, clock=lambda: now[0])
    for _ in range(5):
        door.reject(RejectedReadingError(RejectReason.NOT_JSON, "x"), "line 1")
    door.reject(RejectedReadingError(RejectReason.BAD_VALUE, "x"), "line 2")
    door.tick()
    now[0] = 61.0
    door.tick()
    door.tick()
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith(EVENT_REJECTED) for m in messages) == 2
    summaries = [m for m in messages if m.startswith(EVENT_REJECTS_SUPPRESSED)]
    assert summaries == [
        f"{EVENT_REJECTS_SUPPRESSED} source=t count=4 interval_s=61 reasons=bad_value:1,not_json:3"
    ]
    assert value(metrics.readings_rejected, source="t") == 6


# -- the stdin source ------------------------------------------------------------------------


def test_stdin_reads_to_eof_and_sets_done_once_durable(metrics: AgentMetrics) -> None:
    intake = RecordingIntake(hold=True)
    stream = io.BytesIO(line("elec-000001", 1.0) + b"nope\n" + line("elec-000002", 2.0))
    src = StdinSource(stream, metrics)
    src.start(intake)
    try:
        wait_until(lambda: intake.held == 1, what="the submit")
        assert not src.done.is_set()
        intake.release()
        assert src.done.wait(5)
        assert [r.value for r in intake.readings] == [1.0, 2.0]
        assert rejected(metrics, "not_json", source="stdin") == 1
        assert src.lines == 3
    finally:
        src.stop()
        intake.close()


def test_stdin_from_a_pipe_in_pieces_with_refusals(metrics: AgentMetrics) -> None:
    intake = RecordingIntake(refuse=True)
    read_fd, write_fd = os.pipe()
    src = StdinSource(os.fdopen(read_fd, "rb"), metrics)
    src.start(intake)
    try:
        payload = line("elec-000001", 1.0) + line("elec-000002", 2.0)
        os.write(write_fd, payload[:30])
        os.write(write_fd, payload[30:])
        wait_until(lambda: intake.refused >= 2, what="refusals")
        assert not src.done.is_set()
        intake.refuse = False
        os.write(write_fd, line("elec-000003", 3.0)[:-1])
        os.close(write_fd)
        assert src.done.wait(10)
        assert [r.meter_id for r in intake.readings] == [
            "elec-000001",
            "elec-000002",
            "elec-000003",
        ]
    finally:
        src.stop()
        intake.close()


def test_stdin_stop_while_the_producer_is_quiet(metrics: AgentMetrics) -> None:
    intake = RecordingIntake()
    read_fd, write_fd = os.pipe()
    src = StdinSource(os.fdopen(read_fd, "rb"), metrics)
    src.start(intake)
    try:
        src.stop(timeout_s=2)
        assert src.done.is_set()
        assert src._thread is not None and not src._thread.is_alive()
    finally:
        os.close(write_fd)
        intake.close()
