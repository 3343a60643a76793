"""Chaos: SIGKILL a process that journals, commits and acks; nothing it reported durable is lost.

The child (`child_main`, run with `python -c`) is a miniature agent: it recovers its open windows
from `journaled()`, journals batches of readings, closes windows into telemetry (and sometimes
events) messages, and acks a few messages as a publisher would. Before each call it writes what it
is about to do, after each durable return what happened, one line each, to a file the parent reads
after the kill. The parent keeps a model of everything reported done and, after each kill, reopens
the buffer and checks it exactly: the one call in progress when the kill landed is either wholly
there or wholly absent, and everything else is as reported.

SIGKILL proves process-crash durability (which WAL gives even with synchronous=NORMAL); the child
uses the default, synchronous=FULL, which adds power-loss durability that no test here can show.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.buffer import DurableBuffer, FullPolicy, OutboxMessage
from edge_agent.reading import Reading
from meterlink_wire import Channel, Kind, Unit
from tests.edge.test_buffer import assert_consistent

REPO_ROOT = Path(__file__).resolve().parents[2]
STEP_MS = 3  # the child's readings are STEP_MS apart, strictly increasing
WINDOW_MS = 500
MAX_BYTES = 20_000
KILLS = 20
SEED = 20260101


def reading_at(ts: int) -> Reading:
    """The child's reading at `ts`: every field follows from the timestamp, so it can be checked."""
    return Reading(f"m{ts % 5}", Channel.POWER, Unit.KW, ts, ts / 7)


def payload_for(sequence: int, readings: int) -> bytes:
    return f"{sequence}:{readings}|".encode() * (1 + readings)


# -- the child -------------------------------------------------------------------------------------


def child_main(path: str, seed: int, policy: FullPolicy) -> None:
    """Run the mini agent on `path` until killed, reporting to stdout line by line."""
    rng = random.Random(seed)

    def say(line: str) -> None:
        print(line, flush=True)  # one write(2) per line: a kill cannot split it

    buf = DurableBuffer(Path(path), max_bytes=MAX_BYTES, when_full=policy)
    open_readings = buf.journaled()
    last = max((r.ts_ms for r in open_readings), default=-STEP_MS)
    next_ts = max(buf.closed_until_ms, last + STEP_MS)
    say(f"READY {buf.next_sequence} {buf.closed_until_ms} {len(open_readings)}")
    while True:
        op = rng.random()
        if op < 0.62:
            n = rng.randint(1, 120)
            batch = [reading_at(next_ts + STEP_MS * i) for i in range(n)]
            say(f"j {next_ts} {n}")
            accepted = buf.journal(batch)
            say(f"J {accepted}")
            if accepted:
                open_readings.extend(batch)
            next_ts += STEP_MS * n
        elif op < 0.93:
            watermark = next_ts // WINDOW_MS * WINDOW_MS
            if watermark <= buf.closed_until_ms:
                continue
            per_window = Counter(r.ts_ms // WINDOW_MS for r in open_readings if r.ts_ms < watermark)
            open_readings = [r for r in open_readings if r.ts_ms >= watermark]
            seq = buf.next_sequence
            messages = [
                OutboxMessage(Kind.TELEMETRY, seq + i, payload_for(seq + i, count), count)
                for i, (_, count) in enumerate(sorted(per_window.items()))
            ]
            if rng.random() < 0.3:
                s = seq + len(messages)
                messages.append(OutboxMessage(Kind.EVENTS, s, payload_for(s, 0), 0))
            kinds = {Kind.TELEMETRY: "t", Kind.EVENTS: "e"}
            listed = " ".join(f"{m.sequence}:{kinds[m.kind]}:{m.readings}" for m in messages)
            say(f"c {watermark} {listed}".rstrip())
            buf.commit(messages, closed_until_ms=watermark)
            say("C")
        else:
            batch_ = buf.pending(rng.randint(1, 3))
            if not batch_:
                continue
            say("a " + " ".join(str(m.sequence) for m in batch_))
            delivered = buf.ack([m.id for m in batch_])
            say(f"A {delivered}")


# -- the parent's model ----------------------------------------------------------------------------


@dataclass
class Model:
    """Everything the children reported durable, across all runs."""

    chunks: list[tuple[int, int]] = field(default_factory=list)  # accepted (first ts, count)
    journaled: int = 0
    refused: int = 0
    watermark: int = 0
    committed: dict[int, tuple[Kind, int]] = field(default_factory=dict)  # seq → kind, readings
    acked: set[int] = field(default_factory=set)
    delivered: int = 0
    ops: int = 0

    def journal(self, ts0: int, n: int, accepted: int) -> None:
        assert accepted in (0, n)
        if accepted:
            self.chunks.append((ts0, n))
            self.journaled += n
        else:
            self.refused += n

    def commit(self, watermark: int, listed: list[str]) -> None:
        self.watermark = watermark
        for item in listed:
            seq, kind, readings = item.split(":")
            assert int(seq) == len(self.committed)  # contiguous from 0
            self.committed[int(seq)] = (
                Kind.TELEMETRY if kind == "t" else Kind.EVENTS,
                int(readings),
            )

    def ack(self, seqs: list[int]) -> int:
        self.acked.update(seqs)
        readings = sum(self.committed[s][1] for s in seqs)
        self.delivered += readings
        return readings

    def expected_open_stamps(self) -> list[int]:
        return [
            ts
            for ts0, n in self.chunks
            for ts in range(ts0, ts0 + STEP_MS * n, STEP_MS)
            if ts >= self.watermark
        ]


def replay(model: Model, lines: list[str], buf: DurableBuffer) -> None:
    """Apply a run's reported operations; settle the one a kill interrupted from the buffer."""
    it = iter(lines)
    for intent in it:
        verb, *args = intent.split()
        if verb == "READY":
            assert [int(a) for a in args[:2]] == [len(model.committed), model.watermark]
            assert int(args[2]) == len(model.expected_open_stamps())
            continue
        done = next(it, None)
        model.ops += done is not None
        if verb == "j":
            ts0, n = int(args[0]), int(args[1])
            if done is None:  # in progress at the kill: all or nothing
                s = buf.stats()
                if s.journaled_readings == model.journaled + n:
                    model.journal(ts0, n, n)
                elif s.refused_readings == model.refused + n:
                    model.journal(ts0, n, 0)
            else:
                model.journal(ts0, n, int(done.split()[1]))
        elif verb == "c":
            # Each commit moves the watermark forward, so it tells whether this one happened.
            if done is not None or buf.closed_until_ms == int(args[0]):
                model.commit(int(args[0]), args[1:])
        elif verb == "a":
            seqs = [int(a) for a in args]
            if done is None:
                present = {m.sequence for m in buf.pending(1_000_000)}
                gone = [s for s in seqs if s not in present]
                assert gone in ([], seqs)  # one transaction: all acked or none
                if gone:
                    model.ack(seqs)
            else:
                assert int(done.split()[1]) == model.ack(seqs)
        else:
            raise AssertionError(f"unexpected line {intent!r}")


def check(model: Model, buf: DurableBuffer) -> None:
    """The reopened buffer holds exactly what the model says."""
    s = assert_consistent(buf)  # meta equals a table scan; the accounting invariant holds
    assert buf.recovered_from is None  # a kill never corrupts the file
    assert (s.journaled_readings, s.refused_readings) == (model.journaled, model.refused)
    assert (buf.next_sequence, buf.closed_until_ms) == (len(model.committed), model.watermark)
    assert s.delivered_readings == model.delivered
    pending = buf.pending(1_000_000)
    present = {m.sequence for m in pending}
    assert present <= set(model.committed) - model.acked
    for m in pending:
        assert (m.kind, m.readings) == model.committed[m.sequence]
        assert m.payload == payload_for(m.sequence, m.readings)
    events = [m.sequence for m in pending if m.kind is Kind.EVENTS]
    telemetry = [m.sequence for m in pending if m.kind is Kind.TELEMETRY]
    assert [m.sequence for m in pending] == sorted(events) + sorted(telemetry)
    # Whatever left the outbox without an ack was dropped by the full policy, and counted.
    vanished = set(model.committed) - model.acked - present
    assert s.dropped_readings == sum(model.committed[q][1] for q in vanished)
    recovered = buf.journaled()
    assert [r.ts_ms for r in recovered] == model.expected_open_stamps()
    assert recovered == [reading_at(r.ts_ms) for r in recovered]


# -- the test --------------------------------------------------------------------------------------


def test_sigkill_at_random_moments_loses_nothing_reported_durable(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rng = random.Random(SEED)
    model = Model()
    early = {0, 7, 13}  # these kills may land before or during open()
    for run in range(KILLS):
        policy: FullPolicy = "refuse_newest" if run % 4 == 3 else "drop_oldest"
        out = tmp_path / f"run{run}.out"
        err = tmp_path / f"run{run}.err"
        code = (
            "import sys; from tests.edge.test_buffer_chaos import child_main; "
            "child_main(sys.argv[1], int(sys.argv[2]), sys.argv[3])"
        )
        with out.open("wb") as stdout, err.open("wb") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-c", code, str(path), str(rng.randrange(2**32)), policy],
                cwd=REPO_ROOT,
                stdout=stdout,
                stderr=stderr,
            )
        try:
            if run in early:
                time.sleep(rng.uniform(0.05, 0.6))
            else:
                deadline = time.monotonic() + 20
                while b"READY" not in out.read_bytes() and child.poll() is None:
                    assert time.monotonic() < deadline, "child never became ready"
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.02, 0.3))
        finally:
            child.kill()
            child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL, err.read_text()
        text = out.read_text()
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
        with DurableBuffer(path, max_bytes=MAX_BYTES, when_full=policy) as buf:
            replay(model, lines, buf)
            check(model, buf)
    # The runs did real work, and every path was taken.
    assert model.ops > 200
    assert model.delivered > 0
    with DurableBuffer(path, max_bytes=MAX_BYTES) as buf:
        s = buf.stats()
        assert s.dropped_readings > 0
        assert s.refused_readings > 0
