"""DurableBuffer: persistence, ordering, accounting, full policies, corruption and disk full."""

from __future__ import annotations

import logging
import math
import os
import random
import sqlite3
import stat
import threading
from contextlib import closing
from pathlib import Path

import pytest

from edge_agent.buffer import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    BufferEvent,
    BufferStats,
    DurableBuffer,
    FullPolicy,
    OutboxMessage,
    PendingMessage,
)
from edge_agent.errors import DurableBufferError
from edge_agent.reading import Reading
from meterlink_wire import Channel, Kind, Unit

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STAMP = "20260101T000000Z"
METERS = ("elec-000001", "elec-000002", "water-17")


def fixed_clock() -> float:
    return T0


def readings(n: int, t0: int, *, meters: tuple[str, ...] = METERS) -> list[Reading]:
    """`n` readings at ts t0, t0+1, ..., cycling through `meters` and a few channels and units."""
    kinds = [
        (Channel.ENERGY_IMPORT, Unit.KWH),
        (Channel.POWER, Unit.KW),
        (Channel.FLOW, Unit.M3_PER_H),
    ]
    return [
        Reading(meters[i % len(meters)], *kinds[i % 3], t0 + i, 1523.112 + i * 0.25 - 7)
        for i in range(n)
    ]


def chunk_bytes(batch: list[Reading]) -> int:
    """Size of a journal chunk: 13-byte header, the meter dictionary, 22 bytes per reading."""
    names = "\n".join(dict.fromkeys(r.meter_id for r in batch))
    return 13 + len(names.encode()) + 22 * len(batch)


def telemetry(seq: int, size: int, n: int) -> OutboxMessage:
    return OutboxMessage(Kind.TELEMETRY, seq, bytes([seq % 251 + 1]) * size, n)


def event(seq: int, size: int) -> OutboxMessage:
    return OutboxMessage(Kind.EVENTS, seq, bytes([seq % 251 + 1]) * size, 0)


def close_window(buf: DurableBuffer, t0: int, sizes: list[int], per_message: int) -> None:
    """Journal `per_message` readings for each message, then commit them as closed windows."""
    n = per_message * len(sizes)
    assert buf.journal(readings(n, t0)) == n
    seq = buf.next_sequence
    messages = [telemetry(seq + i, size, per_message) for i, size in enumerate(sizes)]
    buf.commit(messages, closed_until_ms=t0 + n)


def scan(path: Path) -> tuple[int, int, int, int, int]:
    """What the tables really hold, by a full scan on a second connection."""
    with closing(sqlite3.connect(path)) as conn:
        messages, readings_, payload = conn.execute(
            "SELECT count(*), total(readings), total(length(payload)) FROM outbox"
        ).fetchone()
        live, chunks = conn.execute(
            "SELECT total(live), total(length(chunk)) FROM journal"
        ).fetchone()
    return messages, int(readings_), int(payload), int(live), int(chunks)


def assert_consistent(buf: DurableBuffer) -> BufferStats:
    """The meta counters equal a scan of the tables, and the accounting invariant holds."""
    s = buf.stats()
    assert (
        s.messages,
        s.outbox_readings,
        s.payload_bytes,
        s.journal_readings,
        s.journal_bytes,
    ) == scan(buf.path)
    assert s.journaled_readings == (
        s.journal_readings + s.outbox_readings + s.delivered_readings + s.dropped_readings
    )
    return s


def counters(buf: DurableBuffer) -> tuple[int, ...]:
    """Every counter of stats() except the file size."""
    s = buf.stats()
    return (
        s.messages,
        s.payload_bytes,
        s.journal_readings,
        s.outbox_readings,
        s.delivered_readings,
        s.dropped_readings,
        s.refused_readings,
        s.journal_bytes,
        s.journaled_readings,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buffer.db"


def open_buffer(
    path: Path, *, max_bytes: int = 10_000_000, when_full: FullPolicy = "drop_oldest"
) -> DurableBuffer:
    return DurableBuffer(path, max_bytes=max_bytes, when_full=when_full, clock=fixed_clock)


# -- persistence and sequences ---------------------------------------------------------------------


def test_a_new_buffer_is_empty(path: Path) -> None:
    with open_buffer(path) as buf:
        assert buf.next_sequence == 0
        assert buf.closed_until_ms == 0
        assert buf.recovered_from is None
        assert counters(buf) == (0,) * 9
        assert buf.pending(10) == []
        assert buf.journaled() == []


def test_sequence_watermark_messages_and_journal_survive_reopen(path: Path) -> None:
    early, late = readings(6, 1000), readings(4, 2000)
    with open_buffer(path) as buf:
        assert buf.journal(early) == 6
        assert buf.journal(late) == 4
        buf.commit([telemetry(0, 100, 4), telemetry(1, 50, 2), event(2, 30)], closed_until_ms=1500)
        before = buf.pending(10)
    with open_buffer(path) as buf:
        assert buf.next_sequence == 3
        assert buf.closed_until_ms == 1500
        assert buf.pending(10) == before
        assert [(m.sequence, m.kind, m.readings, len(m.payload)) for m in before] == [
            (2, Kind.EVENTS, 0, 30),
            (0, Kind.TELEMETRY, 4, 100),
            (1, Kind.TELEMETRY, 2, 50),
        ]
        assert {m.created_ms for m in before} == {int(T0 * 1000)}
        assert buf.journaled() == late
        s = assert_consistent(buf)
        assert (s.messages, s.payload_bytes, s.journal_readings, s.outbox_readings) == (
            3,
            180,
            4,
            6,
        )
        assert s.journaled_readings == 10
        assert s.journal_bytes == chunk_bytes(late)


ENERGY = ("elec-000001", Channel.ENERGY_IMPORT, Unit.KWH)
VOLUME = ("water-17", Channel.VOLUME, Unit.M3)


def test_registers_are_stored_with_the_commit_and_survive_reopen(path: Path) -> None:
    with open_buffer(path) as buf:
        assert buf.registers() == {}
        buf.commit(
            [telemetry(0, 10, 0)],
            closed_until_ms=60_000,
            registers={ENERGY: (59_000, 1523.25), VOLUME: (58_000, 17.5)},
        )
        buf.commit(
            [],
            closed_until_ms=120_000,
            registers={
                ENERGY: (119_000, 1524.0),
                ("m-x", Channel.ENERGY_EXPORT, Unit.WH): (1, 2.0),
            },
        )
    with open_buffer(path) as buf:
        assert buf.registers() == {
            ENERGY: (119_000, 1524.0),
            VOLUME: (58_000, 17.5),
            ("m-x", Channel.ENERGY_EXPORT, Unit.WH): (1, 2.0),
        }
        assert (buf.next_sequence, buf.closed_until_ms) == (1, 120_000)
        # References alone (no message, watermark unchanged) are still written; a non-finite
        # value is never a reference and is left out.
        buf.commit([], registers={VOLUME: (61_000, 18.0), ("m-y", *ENERGY[1:]): (1, math.nan)})
        assert buf.registers()[VOLUME] == (61_000, 18.0)
        assert ("m-y", *ENERGY[1:]) not in buf.registers()
        assert_consistent(buf)


def test_registers_are_not_written_by_a_refused_commit(path: Path) -> None:
    with open_buffer(path) as buf:
        buf.commit([telemetry(0, 10, 0)], registers={ENERGY: (1_000, 5.0)})
        with pytest.raises(ValueError, match="sequence"):
            buf.commit([telemetry(5, 10, 0)], registers={ENERGY: (2_000, 6.0)})
        assert buf.registers() == {ENERGY: (1_000, 5.0)}


def test_a_version_1_buffer_is_upgraded_in_place_and_keeps_everything(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with open_buffer(path) as buf:
        close_window(buf, 1000, [40, 50], 3)
        assert buf.journal(readings(4, 2000)) == 4
        before = (buf.pending(10), buf.journaled(), counters(buf), buf.next_sequence)
    with closing(sqlite3.connect(path)) as conn:  # what the previous agent version wrote
        conn.execute("DROP TABLE registers")
        conn.execute("PRAGMA user_version = 1")
    caplog.set_level(logging.INFO, logger="edge_agent.buffer")
    with open_buffer(path) as buf:
        assert buf.recovered_from is None
        assert corrupt_records(caplog) == []
        assert (buf.pending(10), buf.journaled(), counters(buf), buf.next_sequence) == before
        assert buf.registers() == {}
        buf.commit([], registers={ENERGY: (2_000, 7.0)})
    assert "buffer schema upgraded from version 1 to 2" in caplog.messages
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    with open_buffer(path) as buf:
        assert buf.registers() == {ENERGY: (2_000, 7.0)}


def test_commit_rejects_a_sequence_gap_or_reuse(path: Path) -> None:
    with open_buffer(path) as buf:
        with pytest.raises(ValueError, match=r"message 0 has sequence 1, expected 0"):
            buf.commit([telemetry(1, 10, 0)])
        with pytest.raises(ValueError, match=r"message 1 has sequence 0, expected 1"):
            buf.commit([telemetry(0, 10, 0), telemetry(0, 10, 0)])
        with pytest.raises(ValueError, match=r"message 1 has sequence 3, expected 1"):
            buf.commit([telemetry(0, 10, 0), telemetry(3, 10, 0)])
        assert buf.next_sequence == 0
        assert buf.pending(10) == []
        buf.commit([telemetry(0, 10, 0), telemetry(1, 10, 0)])
        with pytest.raises(ValueError, match=r"message 0 has sequence 0, expected 2"):
            buf.commit([telemetry(0, 10, 0)])
        assert buf.next_sequence == 2
        assert [m.sequence for m in buf.pending(10)] == [0, 1]


def test_commit_rejects_a_watermark_going_back_and_bad_messages(path: Path) -> None:
    with open_buffer(path) as buf:
        buf.commit([], closed_until_ms=5000)
        with pytest.raises(ValueError, match=r"closed_until_ms 4999 is before the watermark 5000"):
            buf.commit([], closed_until_ms=4999)
        with pytest.raises(ValueError, match=r"message 0: payload must be non-empty bytes"):
            buf.commit([OutboxMessage(Kind.TELEMETRY, 0, b"", 1)])
        with pytest.raises(ValueError, match=r"message 0: readings must be >= 0, got -1"):
            buf.commit([OutboxMessage(Kind.TELEMETRY, 0, b"x", -1)])
        assert (buf.closed_until_ms, buf.next_sequence) == (5000, 0)


def test_a_rewind_moves_the_watermark_back_only_with_the_journal_emptied(path: Path) -> None:
    with open_buffer(path) as buf:
        close_window(buf, 1000, [40], 3)
        assert buf.journal(readings(4, 9000)) == 4
        with pytest.raises(ValueError, match="is before the watermark 1003"):
            buf.commit([], closed_until_ms=500, rewind=True)  # the journal would stay
        with pytest.raises(ValueError, match="is before the watermark 1003"):
            buf.commit([], closed_until_ms=500, clear_journal=True)  # not asked to rewind
        buf.commit([telemetry(1, 30, 4)], closed_until_ms=500, clear_journal=True, rewind=True)
        assert (buf.closed_until_ms, buf.journaled()) == (500, [])
        assert buf.journal(readings(2, 600)) == 2  # the time between is open again
        s = assert_consistent(buf)
        assert (s.outbox_readings, s.journal_readings, s.journaled_readings) == (7, 2, 9)
    with open_buffer(path) as buf:
        assert buf.closed_until_ms == 500


def test_unjournaled_readings_are_counted_in_with_their_message(path: Path) -> None:
    with open_buffer(path) as buf:
        with pytest.raises(ValueError, match=r"unjournaled must be in 0\.\.3"):
            buf.commit([telemetry(0, 10, 3)], unjournaled=4)
        buf.commit([telemetry(0, 10, 3)], unjournaled=3)
        s = assert_consistent(buf)
        assert (s.journaled_readings, s.outbox_readings, s.journal_readings) == (3, 3, 0)
    with open_buffer(path, max_bytes=15, when_full="refuse_newest") as buf:
        buf.commit([telemetry(1, 10, 2)], unjournaled=2)  # no room: dropped, and counted
        s = assert_consistent(buf)
        assert (s.journaled_readings, s.outbox_readings, s.dropped_readings) == (5, 3, 2)


def test_journal_rejects_readings_before_the_watermark(path: Path) -> None:
    with open_buffer(path) as buf:
        buf.commit([], closed_until_ms=1000)
        with pytest.raises(ValueError, match=r"reading at ts_ms 999 is before the watermark 1000"):
            buf.journal([*readings(3, 1000), *readings(1, 999)])
        assert buf.journaled() == []
        assert buf.journal(readings(2, 1000)) == 2


def test_journal_round_trips_every_column_in_order(path: Path) -> None:
    first = [
        Reading("elec-000001", Channel.ENERGY_IMPORT, Unit.KWH, 1_764_201_600_000, 1523.112),
        Reading("water-17", Channel.FLOW, Unit.M3_PER_H, 1_764_201_600_001, -0.0),
        Reading("elec-000001", Channel.TAMPER, Unit.FLAG, 1_764_201_600_000, 1.0),
        Reading("x" * 64, Channel.PRESSURE, Unit.KPA, 7_258_118_400_000, -1e300),
    ]
    second = readings(1000, 1_764_201_700_000)
    with open_buffer(path) as buf:
        assert buf.journal(first) == 4
        assert buf.journal(second) == 1000
        assert buf.journal([]) == 0
        assert buf.journaled() == first + second
        assert buf.stats().journal_bytes == chunk_bytes(first) + chunk_bytes(second)
    with open_buffer(path) as buf:
        got = buf.journaled()
        assert got == first + second
        assert [type(r.channel) for r in got[:4]] == [Channel] * 4
        assert [type(r.unit) for r in got[:4]] == [Unit] * 4


# -- publisher side --------------------------------------------------------------------------------


def test_pending_sends_events_first_each_oldest_first_and_skips_excluded(path: Path) -> None:
    with open_buffer(path) as buf:
        buf.commit([telemetry(0, 10, 0), telemetry(1, 10, 0)])
        buf.commit([event(2, 10)])
        buf.commit([telemetry(3, 10, 0), event(4, 10)])
        every = buf.pending(10)
        assert [m.sequence for m in every] == [2, 4, 0, 1, 3]
        assert all(isinstance(m, PendingMessage) for m in every)
        by_seq = {m.sequence: m.id for m in every}
        assert [m.sequence for m in buf.pending(2)] == [2, 4]
        assert [m.sequence for m in buf.pending(3, exclude={by_seq[2], by_seq[0]})] == [4, 1, 3]
        assert [m.sequence for m in buf.pending(10, exclude=list(by_seq.values()))] == []
        assert buf.pending(0) == []
        assert [m.payload for m in buf.pending(1, exclude={by_seq[2]})] == [bytes([5]) * 10]


def test_ack_counts_delivered_once_and_ignores_unknown_ids(path: Path) -> None:
    with open_buffer(path) as buf:
        close_window(buf, 1000, [100, 200, 300], per_message=5)
        first, second, third = buf.pending(10)
        assert buf.ack([first.id, second.id]) == 10
        assert buf.ack([first.id, second.id]) == 0
        assert buf.ack([third.id + 1000, -1]) == 0
        assert buf.ack([]) == 0
        assert buf.ack({first.id, third.id, third.id + 1}) == 5
        s = assert_consistent(buf)
        assert (s.messages, s.payload_bytes, s.outbox_readings, s.delivered_readings) == (
            0,
            0,
            0,
            15,
        )
    with open_buffer(path) as buf:
        assert buf.stats().delivered_readings == 15
        close_window(buf, 2000, [10], per_message=1)
        (fourth,) = buf.pending(10)
        assert fourth.id == third.id + 1  # ids are never reused, even after every row was acked


# -- journal trimming by watermark -----------------------------------------------------------------


def test_watermark_deletes_chunks_before_it_and_recounts_straddling_ones(path: Path) -> None:
    a, b, c = readings(10, 100), readings(20, 110), readings(10, 130)
    shuffled = [readings(1, 120)[0], readings(1, 101)[0], readings(1, 140)[0]]
    with open_buffer(path) as buf:
        for batch in (a, b, c, shuffled):
            buf.journal(batch)
        # Windows up to 115 hold a (10), b[:5] and shuffled[1]: 16 readings.
        buf.commit([telemetry(0, 40, 16)], closed_until_ms=115)
        expected = b[5:] + c + [shuffled[0], shuffled[2]]
        assert buf.journaled() == expected
        s = assert_consistent(buf)
        assert s.journal_readings == 27
        assert s.journal_bytes == chunk_bytes(b) + chunk_bytes(c) + chunk_bytes(shuffled)
    with open_buffer(path) as buf:
        assert buf.journaled() == expected
        buf.commit([telemetry(1, 40, 26)], closed_until_ms=140)
        assert buf.journaled() == [shuffled[2]]
        s = assert_consistent(buf)
        assert (s.journal_readings, s.journal_bytes) == (1, chunk_bytes(shuffled))
        buf.commit([telemetry(2, 40, 1)], closed_until_ms=141)
        s = assert_consistent(buf)
        assert (s.journal_readings, s.journal_bytes, s.outbox_readings) == (0, 0, 43)


def test_clear_journal_folds_every_chunk(path: Path) -> None:
    with open_buffer(path) as buf:
        buf.journal(readings(10, 100))
        buf.journal(readings(10, 5000))
        buf.commit([telemetry(0, 10, 20)], clear_journal=True)
        assert buf.journaled() == []
        assert buf.closed_until_ms == 0
        s = assert_consistent(buf)
        assert (s.journal_readings, s.journal_bytes, s.outbox_readings) == (0, 0, 20)
        buf.commit([], clear_journal=True)
        assert buf.next_sequence == 1


# -- full policies ---------------------------------------------------------------------------------


def test_drop_oldest_makes_room_for_the_journal_telemetry_before_events(path: Path) -> None:
    with open_buffer(path, max_bytes=10_000) as buf:
        close_window(buf, 1000, [2000, 2000, 2000], per_message=3)  # seq 0-2, 9 readings
        buf.commit([event(3, 1000)])
        assert buf.stats().payload_bytes == 7000
        hundred = readings(100, 2000)
        assert chunk_bytes(hundred) == 2245
        assert buf.journal(hundred) == 100  # 9245: fits
        assert buf.journal(readings(100, 2100)) == 100  # 11490: drops seq 0
        assert [m.sequence for m in buf.pending(10)] == [3, 1, 2]
        assert buf.stats().dropped_readings == 3
        assert buf.journal(readings(200, 2200)) == 200  # 13935: drops seq 1 and 2
        assert [m.sequence for m in buf.pending(10)] == [3]
        assert buf.stats().dropped_readings == 9
        assert buf.journal(readings(10, 2400)) == 10  # 10200: drops the event at last
        assert buf.pending(10) == []
        s = assert_consistent(buf)
        assert (s.dropped_readings, s.refused_readings, s.journal_bytes) == (9, 0, 9200)
        # The journal itself is never evicted: a chunk that cannot fit is refused.
        assert buf.journal(readings(40, 2410)) == 0
        s = assert_consistent(buf)
        assert (s.journaled_readings, s.journal_readings, s.refused_readings) == (419, 410, 40)


def test_drop_oldest_on_commit_keeps_the_newest_messages(path: Path) -> None:
    with open_buffer(path, max_bytes=5000) as buf:
        buf.commit([event(0, 500)])
        close_window(buf, 1000, [3000, 3000], per_message=5)
        assert [m.sequence for m in buf.pending(10)] == [0, 2]
        s = assert_consistent(buf)
        assert (s.payload_bytes, s.dropped_readings, s.outbox_readings) == (3500, 5, 5)
        buf.commit([event(3, 1400), event(4, 1000)])  # 5900: telemetry seq 2 goes first
        assert [m.sequence for m in buf.pending(10)] == [0, 3, 4]
        s = assert_consistent(buf)
        assert (s.payload_bytes, s.dropped_readings, s.messages) == (2900, 10, 3)
        buf.commit([event(5, 2500)])  # 5400 and no telemetry left: the oldest event goes
        assert [m.sequence for m in buf.pending(10)] == [3, 4, 5]
        s = assert_consistent(buf)
        assert (s.payload_bytes, s.dropped_readings, s.messages) == (4900, 10, 3)


def test_refuse_newest_refuses_readings_and_counts_them(path: Path) -> None:
    with open_buffer(path, max_bytes=5000, when_full="refuse_newest") as buf:
        close_window(buf, 1000, [2000, 2000], per_message=5)
        hundred, ten = readings(100, 2000), readings(10, 2000)
        assert buf.journal(hundred) == 0  # 4000 + 2245 > 5000
        assert buf.journal(ten) == 10  # 4000 + 265 fits
        s = assert_consistent(buf)
        assert (s.refused_readings, s.dropped_readings, s.journaled_readings) == (100, 0, 20)
        assert [m.sequence for m in buf.pending(10)] == [0, 1]
        first = buf.pending(1)[0]
        assert buf.ack([first.id]) == 5
        assert buf.journal(readings(100, 2010)) == 100
        s = assert_consistent(buf)
        assert (s.refused_readings, s.journaled_readings, s.journal_readings) == (100, 120, 110)
    with open_buffer(path, max_bytes=5000, when_full="refuse_newest") as buf:
        assert buf.stats().refused_readings == 100


def test_refuse_newest_on_commit_stores_what_fits_and_counts_the_rest_dropped(
    path: Path,
) -> None:
    with open_buffer(path, max_bytes=5000, when_full="refuse_newest") as buf:
        assert buf.journal(readings(30, 1000)) == 30
        # The journal chunk is folded first, so its bytes are free for the messages.
        buf.commit(
            [telemetry(0, 2000, 10), telemetry(1, 4000, 10), telemetry(2, 1000, 10)],
            closed_until_ms=1030,
        )
        assert buf.next_sequence == 3
        assert [m.sequence for m in buf.pending(10)] == [0, 2]
        s = assert_consistent(buf)
        assert (s.payload_bytes, s.dropped_readings, s.refused_readings) == (3000, 10, 0)
        assert (s.journaled_readings, s.outbox_readings, s.journal_readings) == (30, 20, 0)


def test_make_room_drops_oldest_telemetry_then_events(path: Path) -> None:
    with open_buffer(path) as buf:
        buf.commit([event(0, 100)])
        close_window(buf, 1000, [300, 300, 300], per_message=2)
        assert buf.make_room(0) == 0
        assert buf.make_room(301) == 4
        assert [m.sequence for m in buf.pending(10)] == [0, 3]
        assert buf.make_room(10_000) == 2
        assert buf.pending(10) == []
        assert buf.make_room(10_000) == 0
        s = assert_consistent(buf)
        assert (s.dropped_readings, s.messages, s.payload_bytes) == (6, 0, 0)


def test_full_and_no_longer_full_are_logged_once_each(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.buffer")
    with open_buffer(path, max_bytes=3000, when_full="refuse_newest") as buf:
        buf.commit([telemetry(0, 2900, 0)])
        for _ in range(3):
            assert buf.journal(readings(10, 1000)) == 0
        buf.ack([m.id for m in buf.pending(1)])
        assert buf.journal(readings(10, 1000)) == 10
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "buffer_full: refused 10 readings "
            "(policy refuse_newest, max_bytes 3000, dropped 0, refused 10 so far)",
        ),
        ("INFO", "buffer_not_full: dropped 0, refused 30 readings so far"),
    ]


# -- corruption ------------------------------------------------------------------------------------


def moved_aside(path: Path, suffix: str = "") -> Path:
    return path.with_name(f"{path.name}.corrupt-{STAMP}{suffix}")


def assert_fresh_and_working(path: Path, buf: DurableBuffer) -> None:
    assert counters(buf) == (0,) * 9
    assert (buf.next_sequence, buf.closed_until_ms) == (0, 0)
    assert buf.journal(readings(5, 1000)) == 5
    buf.commit([telemetry(0, 10, 5)], closed_until_ms=1005)
    buf.close()
    with open_buffer(path) as again:
        assert again.recovered_from is None
        assert (again.next_sequence, again.closed_until_ms) == (1, 1005)
        assert_consistent(again)


def corrupt_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [
        (r.levelname, r.getMessage(), getattr(r, "reason", ""))
        for r in caplog.records
        if getattr(r, "event", None) == BufferEvent.CORRUPT_FILE
    ]


def corrupt_message(path: Path, reason: str, suffix: str = "") -> str:
    return (
        f"buffer_corrupt_file: {path} is unusable ({reason}); moved it aside to "
        f"{moved_aside(path, suffix)} and started a fresh buffer"
    )


def test_random_bytes_with_wal_and_shm_are_moved_aside(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = random.Random(7).randbytes(8192)
    path.write_bytes(garbage)
    Path(f"{path}-wal").write_bytes(b"wal garbage")
    Path(f"{path}-shm").write_bytes(b"shm garbage")
    buf = open_buffer(path)
    assert buf.recovered_from == moved_aside(path)
    assert moved_aside(path).read_bytes() == garbage
    assert moved_aside(path, "-wal").read_bytes() == b"wal garbage"
    assert moved_aside(path, "-shm").exists()  # SQLite rewrites the -shm index on open
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "buffer.db",
        "buffer.db-shm",
        "buffer.db-wal",
        f"buffer.db.corrupt-{STAMP}",
        f"buffer.db.corrupt-{STAMP}-shm",
        f"buffer.db.corrupt-{STAMP}-wal",
    ]
    reason = "not_sqlite: file is not a database"
    assert corrupt_records(caplog) == [("ERROR", corrupt_message(path, reason), reason)]
    assert_fresh_and_working(path, buf)


def test_a_truncated_buffer_is_moved_aside(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with open_buffer(path) as buf:
        buf.commit([telemetry(i, 5000, 1) for i in range(20)])
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    buf = open_buffer(path)
    assert buf.recovered_from == moved_aside(path)
    assert moved_aside(path).read_bytes() == whole[: len(whole) // 2]
    reason = "malformed: database disk image is malformed"
    assert corrupt_records(caplog) == [("ERROR", corrupt_message(path, reason), reason)]
    assert_fresh_and_working(path, buf)


def test_a_damaged_page_fails_quick_check_and_is_moved_aside(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with open_buffer(path) as buf:
        buf.commit([telemetry(i, 300, 1) for i in range(200)])
    with path.open("r+b") as f:  # page 4 is an interior page of the outbox b-tree
        f.seek(3 * 4096)
        f.write(b"\xa5" * 4096)
    buf = open_buffer(path)
    assert buf.recovered_from == moved_aside(path)
    reason = (
        "quick_check_failed: *** in database main ***; "
        "Page 4: btreeInitPage() returns error code 11"
    )
    assert corrupt_records(caplog) == [("ERROR", corrupt_message(path, reason), reason)]
    assert_fresh_and_working(path, buf)


def test_another_apps_sqlite_database_is_moved_aside(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE readings (meter TEXT, value REAL)")
        conn.execute("INSERT INTO readings VALUES ('m', 1.0)")
        conn.commit()
    buf = open_buffer(path)
    assert buf.recovered_from == moved_aside(path)
    with closing(sqlite3.connect(moved_aside(path))) as conn:
        assert conn.execute("SELECT * FROM readings").fetchall() == [("m", 1.0)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # left untouched
    reason = f"foreign_file: application_id 0x0, expected {APPLICATION_ID:#x}"
    assert corrupt_records(caplog) == [("ERROR", corrupt_message(path, reason), reason)]
    assert_fresh_and_working(path, buf)


def test_an_unknown_schema_version_is_moved_aside(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with open_buffer(path) as buf:
        buf.commit([telemetry(0, 10, 0)])
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    buf = open_buffer(path)
    assert buf.recovered_from == moved_aside(path)
    reason = f"unknown_schema_version: user_version {SCHEMA_VERSION + 1}, expected 2"
    assert corrupt_records(caplog) == [("ERROR", corrupt_message(path, reason), reason)]
    assert_fresh_and_working(path, buf)


def test_an_empty_file_is_initialised_in_place(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path.touch()  # what a crash between creating the file and the first commit leaves
    buf = open_buffer(path)
    assert buf.recovered_from is None
    assert corrupt_records(caplog) == []
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "buffer.db",
        "buffer.db-shm",
        "buffer.db-wal",
    ]
    assert_fresh_and_working(path, buf)


def test_repeated_corruption_keeps_the_newest_three_copies(path: Path) -> None:
    for i in range(5):
        path.write_bytes(b"garbage %d" % i * 100)
        open_buffer(path).close()
    names = sorted(p.name for p in path.parent.iterdir() if ".corrupt-" in p.name)
    base = f"buffer.db.corrupt-{STAMP}"
    assert names == [f"{base}.3", f"{base}.4", f"{base}.5"]
    assert Path(path.parent / f"{base}.5").read_bytes() == b"garbage 4" * 100


def test_a_damaged_journal_chunk_is_dropped_and_counted(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second, third = readings(10, 100), readings(20, 200), readings(5, 300)
    with open_buffer(path) as buf:
        for batch in (first, second, third):
            buf.journal(batch)
        buf.commit([telemetry(0, 10, 15)], closed_until_ms=205)  # chunk 2 keeps 15 live
    with closing(sqlite3.connect(path)) as conn:
        (chunk,) = conn.execute("SELECT chunk FROM journal WHERE id = 2").fetchone()
        damaged = chunk[:40] + bytes([chunk[40] ^ 0xFF]) + chunk[41:]
        conn.execute("UPDATE journal SET chunk = ? WHERE id = 2", (damaged,))
        conn.commit()
    with open_buffer(path) as buf:
        assert buf.journaled() == third
        s = assert_consistent(buf)
        assert (s.dropped_readings, s.journal_readings, s.journal_bytes) == (
            15,
            5,
            chunk_bytes(third),
        )
        assert buf.journaled() == third
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"buffer_corrupt_chunk: {path}: journal chunk 2 is damaged (checksum mismatch); "
        "its 15 readings are counted as dropped"
    ]


# -- disk full -------------------------------------------------------------------------------------


def test_disk_full_rolls_back_raises_retriable_and_recovers(path: Path) -> None:
    with open_buffer(path) as buf:
        close_window(buf, 1000, [200_000], per_message=10)
        assert buf.journal(readings(100, 2000)) == 100
        before = counters(buf)
        conn = buf._conn  # the buffer's own connection: max_page_count is per connection
        assert conn is not None
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages}")

        big = readings(5000, 3000)
        with pytest.raises(DurableBufferError) as caught:
            buf.journal(big)
        assert caught.value.retriable is True
        assert caught.value.reason == "disk_full: journal: database or disk is full"
        with pytest.raises(DurableBufferError) as caught:
            buf.commit([telemetry(1, 150_000, 100)], closed_until_ms=2100)
        assert caught.value.reason == "disk_full: commit: database or disk is full"
        # Nothing half-written: counters, watermark, sequence and journal as before.
        assert counters(buf) == before
        assert (buf.next_sequence, buf.closed_until_ms) == (1, 1010)
        assert buf.journaled() == readings(100, 2000)
        assert_consistent(buf)

        # The agent's answer: drop the oldest messages; their pages are reused.
        assert buf.make_room(len(big) * 22) == 10
        assert buf.journal(big) == 5000
        s = assert_consistent(buf)
        assert (s.dropped_readings, s.journal_readings, s.messages) == (10, 5100, 0)

        conn.execute("PRAGMA max_page_count = 1073741823")  # space returns
        buf.commit([telemetry(1, 150_000, 100)], closed_until_ms=2100)
        assert buf.next_sequence == 2
        assert_consistent(buf)
    with open_buffer(path) as buf:
        assert buf.journaled() == big
        assert [m.sequence for m in buf.pending(10)] == [1]


# -- files, threads, misuse ------------------------------------------------------------------------


def test_files_are_private(path: Path) -> None:
    with open_buffer(path) as buf:
        buf.journal(readings(3, 1000))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        assert modes == {"buffer.db": 0o600, "buffer.db-wal": 0o600, "buffer.db-shm": 0o600}
    path.chmod(0o644)
    with open_buffer(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_missing_directory_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(DurableBufferError) as caught:
        open_buffer(tmp_path / "nope" / "buffer.db")
    assert caught.value.retriable is False
    assert caught.value.reason == (
        f"no_directory: {tmp_path / 'nope'} does not exist (systemd StateDirectory= creates it)"
    )
    assert not (tmp_path / "nope").exists()


def test_a_closed_buffer_refuses_calls(path: Path) -> None:
    buf = open_buffer(path)
    buf.close()
    buf.close()
    with pytest.raises(DurableBufferError) as caught:
        buf.journal(readings(1, 1000))
    assert (caught.value.reason, caught.value.retriable) == (f"closed: {path}", False)
    with pytest.raises(DurableBufferError):
        buf.pending(1)


def test_bad_arguments_are_refused(path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes must be positive, got 0"):
        DurableBuffer(path, max_bytes=0)
    with pytest.raises(ValueError, match="when_full must be drop_oldest or refuse_newest"):
        DurableBuffer(path, max_bytes=1, when_full="drop_newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="synchronous must be full or normal"):
        DurableBuffer(path, max_bytes=1, synchronous="off")  # type: ignore[arg-type]


def test_pipeline_and_publisher_threads_share_the_buffer(path: Path) -> None:
    """One thread journals and commits 300 windows, another sends and acks until all are done."""
    windows, per_window = 300, 7
    acked: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    with open_buffer(path) as buf:

        def pipeline() -> None:
            try:
                for w in range(windows):
                    t0 = 1000 + w * per_window
                    buf.journal(readings(per_window, t0))
                    kind_msg = telemetry(buf.next_sequence, 50 + w % 13, per_window)
                    buf.commit([kind_msg], closed_until_ms=t0 + per_window)
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        def publisher() -> None:
            in_flight: dict[int, int] = {}
            try:
                while True:
                    batch = buf.pending(5, exclude=in_flight.keys())
                    in_flight.update({m.id: m.sequence for m in batch})
                    if in_flight:  # "PUBACK" for the oldest half
                        ids = sorted(in_flight)[: max(1, len(in_flight) // 2)]
                        buf.ack(ids)
                        acked.extend(in_flight.pop(i) for i in ids)
                    elif done.is_set() and not buf.pending(1):
                        return
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=pipeline), threading.Thread(target=publisher)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert sorted(acked) == list(range(windows))
        s = assert_consistent(buf)
        assert (s.delivered_readings, s.messages, s.journal_readings) == (
            windows * per_window,
            0,
            0,
        )


def test_file_bytes_counts_the_database_and_its_wal(path: Path) -> None:
    with open_buffer(path) as buf:
        buf.journal(readings(1000, 1000))
        on_disk = sum(os.stat(p).st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")))
        assert buf.stats().file_bytes == on_disk
