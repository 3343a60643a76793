"""The edge agent's durable store-and-forward buffer: one SQLite file in WAL mode.

Two tables do the work. The **journal** holds every accepted raw reading until the window it belongs
to is closed (one compact row per `journal()` call, so a group commit costs one fsync). The
**outbox** holds encoded wire messages, each with its per-gateway sequence number, until the broker
acknowledges them. A one-row **meta** table keeps the sequence counter, the aggregation watermark
and the reading counters; every write updates it in the same transaction, so the accounting is
exact across crashes and restarts. The **registers** table keeps, per counter series, the last
register reading already emitted, so a window's register advance (`delta`) still starts from it
after a restart. See docs/edge-buffer.md for the schema, the accounting invariant, the full
policies and the corruption handling.

One connection, guarded by a lock, serves two threads: the pipeline thread writes (`journal`,
`commit`), the publisher thread reads and acknowledges (`pending`, `ack`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sqlite3
import struct
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from itertools import compress
from pathlib import Path
from types import TracebackType
from typing import Literal, cast

from edge_agent.errors import DurableBufferError
from edge_agent.reading import Reading
from meterlink_wire import Channel, Kind, Unit

FullPolicy = Literal["drop_oldest", "refuse_newest"]
Synchronous = Literal["full", "normal"]
RegisterKey = tuple[str, Channel, Unit]
"""A counter series: (meter id, channel, unit)."""
Registers = Mapping[RegisterKey, tuple[int, float]]
"""Per counter series, the last register reading emitted: (ts_ms, value)."""

#: `PRAGMA application_id` of a MeterLink buffer file ("MLBF"); anything else is a foreign file.
APPLICATION_ID = 0x4D4C4246
#: `PRAGMA user_version`: the schema version this code reads and writes.
SCHEMA_VERSION = 2
#: How many moved-aside corrupt files (each with its -wal/-shm) are kept; older ones are deleted.
KEEP_CORRUPT = 3
#: How long a statement waits for a lock held by another connection (a diagnostic reader).
BUSY_TIMEOUT_MS = 5000
#: The WAL is truncated back to this size after a checkpoint, so it cannot keep a large high-water.
WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)


class BufferEvent(StrEnum):
    """Log event keys of the buffer; each log line starts with one, and carries it as `event`."""

    CORRUPT_FILE = "buffer_corrupt_file"
    CORRUPT_PRUNED = "buffer_corrupt_pruned"
    CORRUPT_CHUNK = "buffer_corrupt_chunk"
    FULL = "buffer_full"
    NOT_FULL = "buffer_not_full"


@dataclass(frozen=True)
class OutboxMessage:
    """One encoded wire message to store: kind, sequence number, bytes and readings folded in."""

    kind: Kind
    sequence: int
    payload: bytes
    readings: int


@dataclass(frozen=True)
class PendingMessage:
    """One stored message waiting for a PUBACK; `id` is what `ack` takes (ids are never reused)."""

    id: int
    kind: Kind
    sequence: int
    payload: bytes
    readings: int
    created_ms: int


@dataclass(frozen=True)
class BufferStats:
    """Counters and sizes of the buffer, all read from the persisted meta row (no scan).

    `payload_bytes` is the outbox payloads; `journal_bytes` the journal chunks; their sum is what
    `max_bytes` bounds. `file_bytes` is the database file with its -wal and -shm on disk.
    Invariant: journaled_readings == journal_readings + outbox_readings + delivered_readings +
    dropped_readings, provided every message's `readings` counts the journaled readings folded
    into it (see docs/edge-buffer.md).
    """

    messages: int
    payload_bytes: int
    journal_readings: int
    outbox_readings: int
    delivered_readings: int
    dropped_readings: int
    refused_readings: int
    file_bytes: int
    journal_bytes: int
    journaled_readings: int


@dataclass(frozen=True)
class _Totals:
    """The meta row: every counter the buffer keeps, persisted in each write transaction."""

    next_sequence: int = 0
    closed_until_ms: int = 0
    journaled_readings: int = 0
    journal_readings: int = 0
    journal_bytes: int = 0
    outbox_messages: int = 0
    outbox_readings: int = 0
    outbox_bytes: int = 0
    delivered_readings: int = 0
    dropped_readings: int = 0
    refused_readings: int = 0

    @property
    def used_bytes(self) -> int:
        return self.journal_bytes + self.outbox_bytes


_META_COLUMNS = tuple(f.name for f in fields(_Totals))
# Column names come from _Totals, never from input.
_META_UPDATE = f"UPDATE meta SET {', '.join(f'{c} = ?' for c in _META_COLUMNS)}"  # noqa: S608
_META_SELECT = f"SELECT {', '.join(_META_COLUMNS)} FROM meta"  # noqa: S608
_META_INSERT = (
    f"INSERT INTO meta (singleton, {', '.join(_META_COLUMNS)}) "  # noqa: S608
    f"VALUES (1, {', '.join('?' * len(_META_COLUMNS))})"
)

# Added in schema version 2 (version 1 files gain it on open).
_REGISTERS_TABLE = """CREATE TABLE registers (
    meter_id TEXT NOT NULL,
    channel INTEGER NOT NULL,
    unit INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (meter_id, channel, unit)
) WITHOUT ROWID"""

_SCHEMA = f"""
CREATE TABLE meta (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    {", ".join(f"{c} INTEGER NOT NULL" for c in _META_COLUMNS)}
);
CREATE TABLE journal (
    id INTEGER PRIMARY KEY,
    readings INTEGER NOT NULL,
    live INTEGER NOT NULL,
    min_ts_ms INTEGER NOT NULL,
    max_ts_ms INTEGER NOT NULL,
    chunk BLOB NOT NULL
);
CREATE INDEX journal_by_ts ON journal (max_ts_ms, min_ts_ms);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    sequence INTEGER NOT NULL UNIQUE,
    readings INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX outbox_by_kind ON outbox (kind, id);
{_REGISTERS_TABLE};
"""

# The upgrade of a version N file to N + 1, run in one transaction that also sets user_version.
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: (_REGISTERS_TABLE,)}
_REGISTER_UPSERT = (
    "INSERT INTO registers (meter_id, channel, unit, ts_ms, value) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (meter_id, channel, unit) DO UPDATE SET ts_ms = excluded.ts_ms, "
    "value = excluded.value"
)

# Events sort before telemetry: `pending` sends them first, `_drop_oldest` drops them last.
_KIND_CODE = {Kind.EVENTS: 0, Kind.TELEMETRY: 1}
_KIND_BY_CODE = {code: kind for kind, code in _KIND_CODE.items()}
_DROP_ORDER = (Kind.TELEMETRY, Kind.EVENTS)

# SQLite result codes (primary, low byte) after which the same call can succeed later.
_RETRIABLE_CODES = {
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_IOERR: "io_error",
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "busy",
}
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_RETRIABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN}


class _UnusableFileError(Exception):
    """The file at the buffer's path is not a healthy buffer of ours; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.moved_to: Path | None = None


@dataclass(frozen=True)
class _Freed:
    """What a drop or delete removed from a table."""

    messages: int = 0
    readings: int = 0
    bytes: int = 0


class DurableBuffer:
    """Journal of accepted readings plus outbox of encoded messages, durable on every return.

    `max_bytes` bounds the outbox payloads plus the journal chunks. `when_full` picks what gives
    way: `drop_oldest` drops the oldest outbox messages (telemetry before events) to make room;
    `refuse_newest` refuses new readings (and new messages that do not fit). `synchronous="full"`
    fsyncs the WAL at every commit (durable through power loss); `"normal"` only survives process
    crashes. A corrupt or foreign file at `path` is moved aside and a fresh buffer started
    (`recovered_from` names where it went). `clock` returns epoch seconds; tests inject it.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        when_full: FullPolicy = "drop_oldest",
        synchronous: Synchronous = "full",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if when_full not in ("drop_oldest", "refuse_newest"):
            raise ValueError(f"when_full must be drop_oldest or refuse_newest, got {when_full!r}")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be full or normal, got {synchronous!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.when_full: FullPolicy = when_full
        self.synchronous: Synchronous = synchronous
        self.recovered_from: Path | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._full = False
        if not self.path.parent.is_dir():
            raise DurableBufferError(
                f"no_directory: {self.path.parent} does not exist "
                "(systemd StateDirectory= creates it)",
                retriable=False,
            )
        self._conn: sqlite3.Connection | None
        try:
            self._conn, self._totals = self._open()
        except OSError as exc:  # creating, renaming or tightening a file
            raise DurableBufferError(
                f"os_error: open: {exc}", retriable=exc.errno in _RETRIABLE_ERRNOS
            ) from exc

    # -- opening, checking, moving aside -------------------------------------------------------

    def _open(self) -> tuple[sqlite3.Connection, _Totals]:
        try:
            return self._connect()
        except _UnusableFileError as bad:
            log.error(
                "%s: %s is unusable (%s); moved it aside to %s and started a fresh buffer",
                BufferEvent.CORRUPT_FILE,
                self.path,
                bad.reason,
                bad.moved_to,
                extra={"event": BufferEvent.CORRUPT_FILE, "reason": bad.reason},
            )
            self.recovered_from = bad.moved_to
            self._prune_corrupt()
        try:
            return self._connect()
        except _UnusableFileError as bad:  # a fresh file that fails its own checks: not ours to fix
            raise DurableBufferError(
                f"unusable: fresh {self.path}: {bad.reason}", retriable=False
            ) from None

    def _connect(self) -> tuple[sqlite3.Connection, _Totals]:
        """Open the file, recognise it as ours (or initialise an empty one) and configure it.

        Raises _UnusableFileError after moving a corrupt or foreign file aside.
        """
        _make_private(self.path)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # two threads share it, serialised by self._lock
            )
        except sqlite3.Error as exc:
            raise _translate("open", exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Check before configuring: setting WAL mode would modify a foreign file.
            checked = self._check(conn)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DurableBufferError(
                    f"no_wal: {self.path}: journal_mode is {mode}", retriable=False
                )
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
            conn.execute("PRAGMA cell_size_check = ON")
            if checked is None:
                totals = self._create_schema(conn)
            else:
                totals, version = checked
                self._upgrade(conn, version)
        except _UnusableFileError as exc:
            unusable = exc
        except sqlite3.Error as exc:
            code = _primary_code(exc)
            if code not in _CORRUPT_CODES:
                conn.close()
                raise _translate("open", exc) from exc
            key = "not_sqlite" if code == sqlite3.SQLITE_NOTADB else "malformed"
            unusable = _UnusableFileError(f"{key}: {exc}")
        except BaseException:
            conn.close()
            raise
        else:
            try:
                _make_private(self.path)  # the -wal and -shm now exist
            except BaseException:
                conn.close()
                raise
            return conn, totals
        # Rename while the connection is still open: closing it first would let SQLite
        # checkpoint or delete the -wal of the file we want to keep as it was.
        unusable.moved_to = self._move_aside()
        conn.close()
        raise unusable

    def _check(self, conn: sqlite3.Connection) -> tuple[_Totals, int] | None:
        """The persisted totals and schema version of our own healthy file; None if it is empty.

        The version is SCHEMA_VERSION or one that ``_MIGRATIONS`` upgrades.
        """
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            return None  # a new file, or one whose creation a crash interrupted
        if app_id != APPLICATION_ID:
            raise _UnusableFileError(
                f"foreign_file: application_id {app_id:#x}, expected {APPLICATION_ID:#x}"
            )
        if version != SCHEMA_VERSION and version not in _MIGRATIONS:
            raise _UnusableFileError(
                f"unknown_schema_version: user_version {version}, expected {SCHEMA_VERSION}"
            )
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            lines = (line for problem in problems for line in problem.splitlines())
            raise _UnusableFileError(f"quick_check_failed: {'; '.join(lines)}")
        try:
            rows = conn.execute(_META_SELECT).fetchall()
        except sqlite3.OperationalError as exc:  # a table or column is missing
            raise _UnusableFileError(f"bad_schema: {exc}") from None
        if len(rows) != 1 or not all(isinstance(v, int) and v >= 0 for v in rows[0]):
            raise _UnusableFileError(f"bad_meta: {rows[:2]!r}")
        return _Totals(*rows[0]), version

    def _upgrade(self, conn: sqlite3.Connection, version: int) -> None:
        """Bring an older file of ours to SCHEMA_VERSION in place, one version per transaction.

        An agent upgrade keeps the buffer it finds: its readings and messages are still owed.
        """
        while version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
                conn.execute("COMMIT")
            except BaseException:  # disk full, I/O: the caller reports it; the file is unchanged
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            log.info("buffer schema upgraded from version %d to %d", version, version + 1)
            version += 1

    def _create_schema(self, conn: sqlite3.Connection) -> _Totals:
        totals = _Totals()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(_META_INSERT, _astuple(totals))
            # Both header fields are part of the transaction: a crash leaves an empty file.
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return totals

    def _move_aside(self) -> Path:
        """Rename the file and its -wal/-shm to `<name>.corrupt-<UTC timestamp>[.n]`."""
        stamp = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        base = f"{self.path.name}.corrupt-{stamp}"
        # Number repeats within one second after the highest one still there (pruning makes gaps).
        taken = [_corrupt_number(p.name, base) for p in self.path.parent.glob(f"{base}*")]
        n = max(taken, default=0) + 1
        target = self.path.with_name(base if n == 1 else f"{base}.{n}")
        for suffix in ("", "-wal", "-shm"):
            source = _with_suffix(self.path, suffix)
            if source.exists():
                source.replace(_with_suffix(target, suffix))
        _fsync_dir(self.path.parent)
        return target

    def _prune_corrupt(self) -> None:
        """Keep the newest KEEP_CORRUPT moved-aside files, so repeated corruption cannot fill up."""
        prefix = f"{self.path.name}.corrupt-"
        groups: dict[str, list[Path]] = {}
        for p in self.path.parent.glob(f"{prefix}*"):
            key = p.name.removesuffix("-wal").removesuffix("-shm")
            groups.setdefault(key, []).append(p)

        def age(name: str) -> tuple[str, int]:
            stamp, _, n = name.removeprefix(prefix).partition(".")
            return stamp, int(n) if n.isdigit() else 1

        for key in sorted(groups, key=age)[:-KEEP_CORRUPT]:
            try:
                for p in groups[key]:
                    p.unlink(missing_ok=True)
            except OSError as exc:  # pruning is housekeeping: never a reason not to start
                log.warning(
                    "%s: could not delete %s: %s",
                    BufferEvent.CORRUPT_PRUNED,
                    self.path.with_name(key),
                    exc,
                    extra={"event": BufferEvent.CORRUPT_PRUNED},
                )
                continue
            log.warning(
                "%s: deleted %s, keeping the newest %d corrupt files",
                BufferEvent.CORRUPT_PRUNED,
                self.path.with_name(key),
                KEEP_CORRUPT,
                extra={"event": BufferEvent.CORRUPT_PRUNED},
            )

    # -- properties ------------------------------------------------------------------------------

    @property
    def next_sequence(self) -> int:
        """The next per-gateway sequence number `commit` expects (persisted)."""
        return self._totals.next_sequence

    @property
    def closed_until_ms(self) -> int:
        """Aggregation watermark: every window ending at or before it is closed (persisted)."""
        return self._totals.closed_until_ms

    @property
    def dropped_readings(self) -> int:
        """Readings dropped by the full policy so far (persisted; read from memory, no I/O)."""
        return self._totals.dropped_readings

    @property
    def used_bytes(self) -> int:
        """Outbox payload plus journal bytes: what `max_bytes` bounds (from memory, no I/O)."""
        return self._totals.used_bytes

    # -- the pipeline thread's side --------------------------------------------------------------

    def journal(self, readings: Sequence[Reading]) -> int:
        """Store accepted readings as one journal row in one transaction; durable on return.

        Returns how many were accepted: all of them, or 0 when the buffer is full and the policy
        is `refuse_newest` (or when even an empty outbox would leave no room: the journal is never
        evicted). Every reading must have `ts_ms >= closed_until_ms`: an older one belongs to a
        closed window, so the agent counts it as late instead of journaling it (ValueError).
        """
        if not readings:
            return 0
        chunk, min_ts, max_ts = _encode_chunk(readings)
        n, size = len(readings), len(chunk)
        with self._lock:
            totals = self._open_totals()
            if min_ts < totals.closed_until_ms:
                raise ValueError(
                    f"reading at ts_ms {min_ts} is before the watermark {totals.closed_until_ms}: "
                    "late readings are counted by the agent, not journaled"
                )
            over = totals.used_bytes + size - self.max_bytes
            if totals.journal_bytes + size > self.max_bytes or (
                over > 0 and self.when_full == "refuse_newest"
            ):
                new = replace(totals, refused_readings=totals.refused_readings + n)
                with self._write("journal") as cur:
                    self._store(cur, new)
                self._totals = new
                self._note_full("refused", n, new)
                return 0
            with self._write("journal") as cur:
                freed = self._drop_oldest(cur, over) if over > 0 else _Freed()
                cur.execute(
                    "INSERT INTO journal (readings, live, min_ts_ms, max_ts_ms, chunk) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (n, n, min_ts, max_ts, chunk),
                )
                new = replace(
                    _without_outbox(totals, freed, dropped=True),
                    journaled_readings=totals.journaled_readings + n,
                    journal_readings=totals.journal_readings + n,
                    journal_bytes=totals.journal_bytes + size,
                )
                self._store(cur, new)
            self._totals = new
            self._note_full("dropped", freed.readings, new)
            return n

    def journaled(self) -> list[Reading]:
        """Every journaled reading not yet in a closed window (ts_ms >= watermark), in order.

        This is what the agent feeds back into its windows after a restart. A chunk that fails its
        checksum is deleted and its readings counted as dropped (logged as an ERROR), so a damaged
        chunk can never stop recovery.
        """
        with self._lock:
            totals = self._open_totals()
            watermark = totals.closed_until_ms
            out: list[Reading] = []
            bad: list[tuple[int, int, int, str]] = []
            with self._read("journaled") as conn:
                rows = conn.execute(
                    "SELECT id, live, min_ts_ms, chunk FROM journal ORDER BY id"
                ).fetchall()
            for chunk_id, live, min_ts, chunk in rows:
                try:
                    readings = _decode_chunk(chunk)
                except _BadChunkError as exc:
                    bad.append((chunk_id, live, len(chunk), str(exc)))
                    continue
                if min_ts < watermark:
                    readings = list(compress(readings, (r.ts_ms >= watermark for r in readings)))
                out.extend(readings)
            if bad:
                with self._write("journaled") as cur:
                    new = self._drop_bad_chunks(cur, totals, bad)
                    self._store(cur, new)
                self._totals = new
            return out

    def commit(
        self,
        messages: Sequence[OutboxMessage],
        *,
        closed_until_ms: int | None = None,
        clear_journal: bool = False,
        registers: Registers | None = None,
        rewind: bool = False,
        unjournaled: int = 0,
    ) -> None:
        """Store closed windows' messages, advance the watermark and trim the journal: one commit.

        Sequences must run `next_sequence, next_sequence + 1, ...` (ValueError otherwise); the
        counter moves past them even if the full policy refuses some. Journal chunks whose readings
        all lie before the new watermark are deleted (all chunks with `clear_journal`), and chunks
        straddling it keep counting only their readings at or after it. `registers` are the
        counter series' references those windows moved (see `registers()`), stored in the same
        transaction: a restart resumes from exactly the windows committed.

        The watermark never moves back (ValueError), except with `rewind` and `clear_journal`
        together: the aggregator emitted every open window and the clock was set back, and with
        the journal emptied in the same transaction no reading can be returned twice.

        `unjournaled` readings of the messages came straight in, not through the journal (the
        agent sends readings stamped far ahead of its clock at once): they are counted as
        journaled in the same transaction, so the accounting invariant still holds.
        """
        with self._lock:
            totals = self._open_totals()
            _check_messages(messages, totals.next_sequence)
            carried = sum(m.readings for m in messages)
            if not 0 <= unjournaled <= carried:
                raise ValueError(f"unjournaled must be in 0..{carried} (the messages' readings)")
            watermark = totals.closed_until_ms
            if closed_until_ms is not None:
                if closed_until_ms < watermark and not (rewind and clear_journal):
                    raise ValueError(
                        f"closed_until_ms {closed_until_ms} is before the watermark {watermark}"
                    )
                watermark = closed_until_ms
            stored = _register_rows(registers or {})
            if (
                not messages
                and watermark == totals.closed_until_ms
                and not clear_journal
                and not stored
            ):
                return
            with self._write("commit") as cur:
                cur.executemany(_REGISTER_UPSERT, stored)
                new = self._fold_journal(cur, totals, watermark, clear=clear_journal)
                new, lost = self._insert_messages(cur, new, messages)
                new = replace(
                    new,
                    closed_until_ms=watermark,
                    next_sequence=totals.next_sequence + len(messages),
                    journaled_readings=new.journaled_readings + unjournaled,
                )
                self._store(cur, new)
            self._totals = new
            self._note_full("dropped", lost, new)

    def make_room(self, bytes_needed: int) -> int:
        """Drop the oldest outbox messages (telemetry before events) until `bytes_needed` are freed.

        For the agent after a retriable DurableBufferError (disk full). Returns the readings
        dropped (counted in dropped_readings); 0 when nothing was asked or nothing is left.
        """
        with self._lock:
            totals = self._open_totals()
            if bytes_needed <= 0 or totals.outbox_messages == 0:
                return 0
            with self._write("make_room") as cur:
                freed = self._drop_oldest(cur, bytes_needed)
                new = _without_outbox(totals, freed, dropped=True)
                self._store(cur, new)
            self._totals = new
            self._note_full("dropped", freed.readings, new)
            return freed.readings

    def registers(self) -> dict[RegisterKey, tuple[int, float]]:
        """Per counter series, the last register reading of the windows committed: (ts_ms, value).

        What the aggregator measures the next window's advance from after a restart. A row whose
        channel or unit code this version does not know is skipped.
        """
        with self._lock:
            self._open_totals()
            with self._read("registers") as conn:
                rows = conn.execute(
                    "SELECT meter_id, channel, unit, ts_ms, value FROM registers"
                ).fetchall()
        found: dict[RegisterKey, tuple[int, float]] = {}
        for meter_id, channel, unit, ts_ms, value in rows:
            if channel in _CHANNEL_CODES and unit in _UNIT_CODES:
                found[meter_id, Channel(channel), Unit(unit)] = (ts_ms, float(value))
        return found

    # -- the publisher thread's side -------------------------------------------------------------

    def pending(self, limit: int, *, exclude: Collection[int] = ()) -> list[PendingMessage]:
        """Up to `limit` stored messages, events first, then telemetry, each oldest first.

        Ids in `exclude` (the publisher's in-flight messages) are skipped without reading their
        payloads.
        """
        if limit <= 0:
            return []
        skip = set(exclude)
        with self._lock:
            self._open_totals()
            with self._read("pending") as conn:
                ids = [
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM outbox ORDER BY kind, id LIMIT ?", (limit + len(skip),)
                    )
                    if row[0] not in skip
                ][:limit]
                rows = [
                    row
                    for i in ids
                    for row in conn.execute(
                        "SELECT id, kind, sequence, payload, readings, created_ms "
                        "FROM outbox WHERE id = ?",
                        (i,),
                    )
                ]
        return [
            PendingMessage(
                id=i, kind=_KIND_BY_CODE[k], sequence=s, payload=p, readings=n, created_ms=c
            )
            for i, k, s, p, n, c in rows
        ]

    def ack(self, ids: Collection[int]) -> int:
        """Delete delivered messages and count their readings as delivered; returns that count.

        Unknown ids (already acked, or dropped while in flight) are ignored, so a repeated PUBACK
        changes nothing.
        """
        wanted = sorted(set(ids))
        if not wanted:
            return 0
        with self._lock:
            totals = self._open_totals()
            with self._read("ack") as conn:
                found = [
                    (i, *row)
                    for i in wanted
                    for row in conn.execute(
                        "SELECT readings, length(payload) FROM outbox WHERE id = ?", (i,)
                    )
                ]
            if not found:
                return 0
            freed = _Freed(len(found), sum(r[1] for r in found), sum(r[2] for r in found))
            with self._write("ack") as cur:
                cur.executemany("DELETE FROM outbox WHERE id = ?", [(r[0],) for r in found])
                new = _without_outbox(totals, freed, dropped=False)
                self._store(cur, new)
            self._totals = new
            return freed.readings

    # -- both --------------------------------------------------------------------------------------

    def stats(self) -> BufferStats:
        """The counters (from memory, equal to the persisted meta row) and the size on disk."""
        with self._lock:
            t = self._open_totals()
        file_bytes = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):  # no -wal/-shm between connections
                file_bytes += _with_suffix(self.path, suffix).stat().st_size
        return BufferStats(
            messages=t.outbox_messages,
            payload_bytes=t.outbox_bytes,
            journal_readings=t.journal_readings,
            outbox_readings=t.outbox_readings,
            delivered_readings=t.delivered_readings,
            dropped_readings=t.dropped_readings,
            refused_readings=t.refused_readings,
            file_bytes=file_bytes,
            journal_bytes=t.journal_bytes,
            journaled_readings=t.journaled_readings,
        )

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL); later calls raise. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> DurableBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- inside a transaction ----------------------------------------------------------------------

    def _fold_journal(
        self, cur: sqlite3.Cursor, totals: _Totals, watermark: int, *, clear: bool
    ) -> _Totals:
        """Delete chunks wholly before the watermark (or all); recount chunks straddling it."""
        if clear:
            live, size = cur.execute(
                "SELECT total(live), total(length(chunk)) FROM journal"
            ).fetchone()
            cur.execute("DELETE FROM journal")
            return replace(
                totals,
                journal_readings=totals.journal_readings - int(live),
                journal_bytes=totals.journal_bytes - int(size),
            )
        if watermark == totals.closed_until_ms:
            return totals
        live, size = cur.execute(
            "SELECT total(live), total(length(chunk)) FROM journal WHERE max_ts_ms < ?",
            (watermark,),
        ).fetchone()
        cur.execute("DELETE FROM journal WHERE max_ts_ms < ?", (watermark,))
        new = replace(
            totals,
            journal_readings=totals.journal_readings - int(live),
            journal_bytes=totals.journal_bytes - int(size),
        )
        straddling = cur.execute(
            "SELECT id, live, chunk FROM journal WHERE max_ts_ms >= ? AND min_ts_ms < ?",
            (watermark, watermark),
        ).fetchall()
        bad: list[tuple[int, int, int, str]] = []
        folded = 0
        for chunk_id, old_live, chunk in straddling:
            try:
                stamps = _chunk_timestamps(chunk)
            except _BadChunkError as exc:
                bad.append((chunk_id, old_live, len(chunk), str(exc)))
                continue
            still_live = sum(1 for ts in stamps if ts >= watermark)
            if still_live != old_live:
                cur.execute("UPDATE journal SET live = ? WHERE id = ?", (still_live, chunk_id))
                folded += old_live - still_live
        new = replace(new, journal_readings=new.journal_readings - folded)
        return self._drop_bad_chunks(cur, new, bad) if bad else new

    def _insert_messages(
        self, cur: sqlite3.Cursor, totals: _Totals, messages: Sequence[OutboxMessage]
    ) -> tuple[_Totals, int]:
        """Insert messages under the full policy; returns the new totals and readings lost."""
        now_ms = int(self._clock() * 1000)
        if self.when_full == "refuse_newest":
            keep: list[OutboxMessage] = []
            used = totals.used_bytes
            refused = 0
            for m in messages:
                if used + len(m.payload) <= self.max_bytes:
                    keep.append(m)
                    used += len(m.payload)
                else:
                    refused += m.readings
        else:
            keep, refused = list(messages), 0
        cur.executemany(
            "INSERT INTO outbox (kind, sequence, readings, created_ms, payload) "
            "VALUES (?, ?, ?, ?, ?)",
            [(_KIND_CODE[m.kind], m.sequence, m.readings, now_ms, m.payload) for m in keep],
        )
        new = replace(
            totals,
            outbox_messages=totals.outbox_messages + len(keep),
            outbox_readings=totals.outbox_readings + sum(m.readings for m in keep),
            outbox_bytes=totals.outbox_bytes + sum(len(m.payload) for m in keep),
            dropped_readings=totals.dropped_readings + refused,
        )
        over = new.used_bytes - self.max_bytes
        if over > 0 and self.when_full == "drop_oldest":
            freed = self._drop_oldest(cur, over)
            return _without_outbox(new, freed, dropped=True), refused + freed.readings
        return new, refused

    def _drop_oldest(self, cur: sqlite3.Cursor, bytes_needed: int) -> _Freed:
        """Delete the oldest messages, telemetry before events, until `bytes_needed` are freed."""
        messages = readings = freed = 0
        for kind in _DROP_ORDER:
            if freed >= bytes_needed:
                break
            last_id = None
            scan = cur.connection.execute(
                "SELECT id, readings, length(payload) FROM outbox WHERE kind = ? ORDER BY id",
                (_KIND_CODE[kind],),
            )
            try:
                for message_id, n, size in scan:
                    last_id = message_id
                    messages += 1
                    readings += n
                    freed += size
                    if freed >= bytes_needed:
                        break
            finally:
                scan.close()
            if last_id is not None:
                cur.execute(
                    "DELETE FROM outbox WHERE kind = ? AND id <= ?", (_KIND_CODE[kind], last_id)
                )
        return _Freed(messages, readings, freed)

    def _drop_bad_chunks(
        self, cur: sqlite3.Cursor, totals: _Totals, bad: list[tuple[int, int, int, str]]
    ) -> _Totals:
        """Delete damaged journal chunks, counting their live readings as dropped."""
        for chunk_id, live, _size, why in bad:
            cur.execute("DELETE FROM journal WHERE id = ?", (chunk_id,))
            log.error(
                "%s: %s: journal chunk %d is damaged (%s); its %d readings are counted as dropped",
                BufferEvent.CORRUPT_CHUNK,
                self.path,
                chunk_id,
                why,
                live,
                extra={"event": BufferEvent.CORRUPT_CHUNK, "reason": why},
            )
        live = sum(b[1] for b in bad)
        return replace(
            totals,
            journal_readings=totals.journal_readings - live,
            journal_bytes=totals.journal_bytes - sum(b[2] for b in bad),
            dropped_readings=totals.dropped_readings + live,
        )

    @staticmethod
    def _store(cur: sqlite3.Cursor, totals: _Totals) -> None:
        cur.execute(_META_UPDATE, _astuple(totals))

    # -- plumbing ----------------------------------------------------------------------------------

    def _open_totals(self) -> _Totals:
        self._live_conn()
        return self._totals

    def _live_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DurableBufferError(f"closed: {self.path}", retriable=False)
        return self._conn

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Cursor]:
        """One write transaction: commit on success, roll back on any error (nothing half-done)."""
        conn = self._live_conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn.cursor()
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                # SQLite may have rolled back already (SQLITE_FULL can); a second one is harmless.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _translate(what, exc) from exc
            raise

    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        conn = self._live_conn()
        try:
            yield conn
        except sqlite3.Error as exc:
            raise _translate(what, exc) from exc

    def _note_full(self, how: str, readings: int, totals: _Totals) -> None:
        """Log when the buffer starts and stops losing readings, not at every call in between."""
        if readings and not self._full:
            self._full = True
            log.warning(
                "%s: %s %d readings (policy %s, max_bytes %d, dropped %d, refused %d so far)",
                BufferEvent.FULL,
                how,
                readings,
                self.when_full,
                self.max_bytes,
                totals.dropped_readings,
                totals.refused_readings,
                extra={"event": BufferEvent.FULL},
            )
        elif not readings and self._full and totals.used_bytes < self.max_bytes:
            self._full = False
            log.info(
                "%s: dropped %d, refused %d readings so far",
                BufferEvent.NOT_FULL,
                totals.dropped_readings,
                totals.refused_readings,
                extra={"event": BufferEvent.NOT_FULL},
            )


# -- journal chunks: the readings of one journal() call as little-endian columns ------------------
#
# header (format, count, dictionary bytes, crc32 of the body), then the body: the distinct meter
# ids joined by "\n" (ids cannot contain it), ts_ms int64[count], value float64[count], meter index
# uint32[count], channel uint8[count], unit uint8[count]. 22 bytes per reading plus the dictionary.

_CHUNK_FORMAT = 1
_HEADER = struct.Struct("<BIII")
_U32 = "I" if array("I").itemsize == 4 else "L"
_SWAP = sys.byteorder != "little"
_PER_READING = 8 + 8 + 4 + 1 + 1
_CHANNEL_BY_CODE: tuple[Channel | None, ...] = tuple(
    Channel(c) if c in Channel._value2member_map_ else None for c in range(256)
)
_UNIT_BY_CODE: tuple[Unit | None, ...] = tuple(
    Unit(c) if c in Unit._value2member_map_ else None for c in range(256)
)


class _BadChunkError(Exception):
    """A journal chunk that does not decode (checksum, length or code mismatch)."""


def _encode_chunk(readings: Sequence[Reading]) -> tuple[bytes, int, int]:
    """Readings → (chunk bytes, min ts_ms, max ts_ms), column by column with no per-reading code."""
    meters, channels, units, stamps, values = zip(*readings, strict=True)
    names = dict.fromkeys(meters)
    index = {name: i for i, name in enumerate(names)}
    dictionary = "\n".join(names).encode()
    columns = (array("q", stamps), array("d", values), array(_U32, map(index.__getitem__, meters)))
    if _SWAP:
        for column in columns:
            column.byteswap()
    body = b"".join((dictionary, *(c.tobytes() for c in columns), bytes(channels), bytes(units)))
    header = _HEADER.pack(_CHUNK_FORMAT, len(readings), len(dictionary), zlib.crc32(body))
    return header + body, min(stamps), max(stamps)


def _open_chunk(chunk: bytes) -> tuple[int, int, memoryview]:
    """Check a chunk's header, size and checksum; returns (count, dictionary bytes, body)."""
    if len(chunk) < _HEADER.size:
        raise _BadChunkError(f"{len(chunk)} bytes is shorter than the header")
    fmt, count, dict_len, crc = _HEADER.unpack_from(chunk)
    body = memoryview(chunk)[_HEADER.size :]
    if fmt != _CHUNK_FORMAT:
        raise _BadChunkError(f"format {fmt}, expected {_CHUNK_FORMAT}")
    if len(body) != dict_len + count * _PER_READING:
        raise _BadChunkError(f"body of {len(body)} bytes does not hold {count} readings")
    if zlib.crc32(body) != crc:
        raise _BadChunkError("checksum mismatch")
    return count, dict_len, body


def _ints(typecode: str, data: memoryview) -> array[int]:
    column = array(typecode)
    column.frombytes(data)
    if _SWAP:
        column.byteswap()
    return column


def _floats(data: memoryview) -> array[float]:
    column = array("d")
    column.frombytes(data)
    if _SWAP:
        column.byteswap()
    return column


def _chunk_timestamps(chunk: bytes) -> array[int]:
    count, dict_len, body = _open_chunk(chunk)
    return _ints("q", body[dict_len : dict_len + 8 * count])


def _decode_chunk(chunk: bytes) -> list[Reading]:
    count, dict_len, body = _open_chunk(chunk)
    names = bytes(body[:dict_len]).decode().split("\n")
    at = dict_len
    stamps = _ints("q", body[at : at + 8 * count])
    at += 8 * count
    values = _floats(body[at : at + 8 * count])
    at += 8 * count
    meter_index = _ints(_U32, body[at : at + 4 * count])
    at += 4 * count
    channels = list(map(_CHANNEL_BY_CODE.__getitem__, body[at : at + count]))
    units = list(map(_UNIT_BY_CODE.__getitem__, body[at + count : at + 2 * count]))
    if count and (max(meter_index) >= len(names) or None in channels or None in units):
        raise _BadChunkError("a meter index, channel or unit code is out of range")
    meters = map(names.__getitem__, meter_index)
    # Checked above: neither list holds None.
    known_channels, known_units = cast("tuple[list[Channel], list[Unit]]", (channels, units))
    return list(map(Reading, meters, known_channels, known_units, stamps, values))


# -- small helpers ---------------------------------------------------------------------------------


def _check_messages(messages: Sequence[OutboxMessage], next_sequence: int) -> None:
    for i, m in enumerate(messages):
        if m.sequence != next_sequence + i:
            raise ValueError(
                f"message {i} has sequence {m.sequence}, expected {next_sequence + i} "
                "(sequences must continue next_sequence without gaps)"
            )
        if m.kind not in _KIND_CODE:
            raise ValueError(f"message {i}: kind must be a Kind, got {m.kind!r}")
        if m.readings < 0:
            raise ValueError(f"message {i}: readings must be >= 0, got {m.readings}")
        if not isinstance(m.payload, bytes) or not m.payload:
            raise ValueError(f"message {i}: payload must be non-empty bytes")


def _without_outbox(totals: _Totals, freed: _Freed, *, dropped: bool) -> _Totals:
    """Totals after messages left the outbox, dropped or delivered."""
    return replace(
        totals,
        outbox_messages=totals.outbox_messages - freed.messages,
        outbox_readings=totals.outbox_readings - freed.readings,
        outbox_bytes=totals.outbox_bytes - freed.bytes,
        dropped_readings=totals.dropped_readings + (freed.readings if dropped else 0),
        delivered_readings=totals.delivered_readings + (0 if dropped else freed.readings),
    )


def _astuple(totals: _Totals) -> tuple[int, ...]:
    return tuple(getattr(totals, c) for c in _META_COLUMNS)


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


_CHANNEL_CODES = frozenset(int(c) for c in Channel)
_UNIT_CODES = frozenset(int(u) for u in Unit)


def _register_rows(registers: Registers) -> list[tuple[str, int, int, int, float]]:
    """Rows for the registers table; a non-finite value (never a real reference) is left out."""
    return [
        (meter_id, int(channel), int(unit), ts_ms, value)
        for (meter_id, channel, unit), (ts_ms, value) in registers.items()
        if math.isfinite(value)
    ]


def _translate(what: str, exc: sqlite3.Error) -> DurableBufferError:
    """A sqlite3 error → DurableBufferError("<key>: <what>: <sqlite message>", retriable=...)."""
    code = _primary_code(exc)
    key = _RETRIABLE_CODES.get(code) if code is not None else None
    if key is not None:
        return DurableBufferError(f"{key}: {what}: {exc}", retriable=True)
    key = "corrupt" if code in _CORRUPT_CODES else "sqlite_error"
    return DurableBufferError(f"{key}: {what}: {exc}", retriable=False)


def _corrupt_number(name: str, base: str) -> int:
    """`<base>` → 1, `<base>.7` → 7 (ignoring -wal/-shm); anything else → 0."""
    rest = name.removesuffix("-wal").removesuffix("-shm").removeprefix(base)
    if not rest:
        return 1
    return int(rest[1:]) if rest[0] == "." and rest[1:].isdigit() else 0


def _with_suffix(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _make_private(path: Path) -> None:
    """Create the database file 0600 if missing, and tighten any existing one and its -wal/-shm.

    SQLite creates the -wal and -shm with the mode of the database file.
    """
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        _fsync_dir(path.parent)
    for suffix in ("", "-wal", "-shm"):
        p = _with_suffix(path, suffix)
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mode & 0o777 != 0o600:
                p.chmod(0o600)


def _fsync_dir(folder: Path) -> None:
    """Make a created or renamed directory entry durable through power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
