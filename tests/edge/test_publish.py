"""The publisher: pacing logic on its own, then delivery and policies against the real broker.

Integration tests run a `Publisher` against the session's local stack (mosquitto with mTLS,
ACL and CRL; the rule bridge; moto Kinesis) and check what the broker and Kinesis saw. The
outbox is an in-memory stand-in with the `Outbox` methods; the broker is always real.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.metrics import AgentMetrics, value
from edge_agent.publish import (
    Backoff,
    ConnectionLost,
    ConnectionSpec,
    Publisher,
    PublishOutcome,
    PublishSettings,
    TokenBucket,
    Transport,
)
from edge_agent.publish.paho import PahoTransport
from meterlink_stack import broker
from meterlink_wire import GatewayStatus, Kind, TopicKind, decode_status, topic_for
from tests.integration.stackclient import (
    GatewayClient,
    LocalStack,
    StreamReader,
    sample_payload,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# Helpers (imported by the other publisher test modules)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """An outbox row, as `edge_agent.buffer` hands it to the publisher."""

    id: int
    kind: Kind
    sequence: int
    payload: bytes
    readings: int
    created_ms: int = 0


class MemoryOutbox:
    """The two `Outbox` verbs over a dict, thread-safe, remembering every ack."""

    def __init__(self, messages: Collection[Msg] = ()) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, Msg] = {m.id: m for m in messages}
        self.acked: list[int] = []

    def add(self, message: Msg) -> None:
        with self._lock:
            self._rows[message.id] = message

    def pending(self, limit: int, *, exclude: Collection[int] = ()) -> list[Msg]:
        skip = set(exclude)
        with self._lock:
            rows = [m for m in self._rows.values() if m.id not in skip]
        rows.sort(key=lambda m: (m.kind != Kind.EVENTS, m.id))
        return rows[:limit]

    def ack(self, ids: Collection[int]) -> int:
        readings = 0
        with self._lock:
            for i in ids:
                row = self._rows.pop(i, None)
                if row is not None:
                    readings += row.readings
                    self.acked.append(i)
        return readings

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._rows)


def telemetry(gateway: str, seq: int, kind: Kind = Kind.TELEMETRY) -> Msg:
    """A real encoded batch as outbox row `seq` (id == sequence)."""
    return Msg(seq, kind, seq, sample_payload(gateway, seq), readings=3)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def settings_for(st: LocalStack, gateway: str, **overrides: Any) -> PublishSettings:
    cert, key = st.issue(gateway)
    base: dict[str, Any] = {
        "host": st.info.mqtt_host,
        "port": st.info.mqtt_port,
        "ca_file": Path(st.info.ca_file),
        "cert_file": cert,
        "key_file": key,
        "max_publish_per_s": 100.0,
        "connect_timeout_s": 5.0,
    }
    base.update(overrides)
    base.setdefault("replay_rate_per_s", base["max_publish_per_s"])
    return PublishSettings(**base)


def status_source(gateway: str, **figures: int) -> Callable[[], GatewayStatus]:
    def status() -> GatewayStatus:
        return GatewayStatus(gateway, "online", int(time.time() * 1000), "0.1.0-test", **figures)

    return status


def make_publisher(
    settings: PublishSettings,
    outbox: MemoryOutbox,
    gateway: str,
    *,
    metrics: AgentMetrics | None = None,
    factory: Any = None,
    status: Callable[[], GatewayStatus] | None = None,
) -> Publisher:
    return Publisher(
        settings,
        outbox,
        metrics or AgentMetrics(),
        gateway_id=gateway,
        status=status or status_source(gateway),
        transport_factory=factory,
    )


@contextlib.contextmanager
def running(*publishers: Publisher) -> Iterator[threading.Event]:
    """Run publishers on their own threads; stop them cleanly on exit."""
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in publishers]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
            assert not thread.is_alive(), "publisher did not stop"


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def kinesis_records(
    reader: StreamReader, gateway: str, expected: int, timeout: float = 30.0
) -> list[bytes]:
    """Payloads Kinesis holds for `gateway`, once at least `expected` are there (or timeout)."""

    def ours(seen: list[tuple[str, dict[str, Any]]]) -> list[bytes]:
        return [bytes(r["Data"]) for _, r in seen if r["PartitionKey"] == gateway]

    seen = reader.wait_for(lambda s: len(ours(s)) >= expected, timeout=timeout)
    return ours(seen)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float


class Observer:
    """A subscriber with the bridge's identity (the ACL lets it read every gateway's topics)."""

    def __init__(self, st: LocalStack, *topics: str) -> None:
        layout = st.layout
        context = ssl.create_default_context(cafile=st.info.ca_file)
        context.load_cert_chain(
            str(layout.client_cert(broker.BRIDGE_IDENTITY)),
            str(layout.client_key(broker.BRIDGE_IDENTITY)),
        )
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=unique("test-observer"),
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.tls_set_context(context)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.connect(st.info.mqtt_host, st.info.mqtt_port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "observer could not subscribe"

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(
                Received(message.topic, bytes(message.payload), message.retain, time.monotonic())
            )

    def received(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Instrumented:
    """A real transport whose PUBACKs reach the publisher `delay_s` late (or never, for chosen
    payloads on the first connection); counts publishes not yet completed to the publisher."""

    def __init__(
        self,
        inner: Transport,
        probe: InflightProbe,
        delay_s: float,
        swallow: Callable[[bytes], bool],
    ) -> None:
        self.inner = inner
        self.probe = probe
        self.delay_s = delay_s
        self.swallow = swallow

    @property
    def is_connected(self) -> bool:
        return self.inner.is_connected

    def connect(self) -> None:
        self.inner.connect()

    def disconnect(self) -> None:
        self.inner.disconnect()

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> Future[PublishOutcome]:
        outer: Future[PublishOutcome] = Future()
        self.probe.started()
        inner = self.inner.publish(topic, payload, qos, retain)
        if self.swallow(payload):
            return outer  # the broker got it; the publisher never hears back

        def forward(done: Future[PublishOutcome]) -> None:
            def complete() -> None:
                self.probe.finished()
                exc = done.exception()
                if exc is not None:
                    outer.set_exception(exc)
                else:
                    outer.set_result(done.result())

            if self.delay_s:
                threading.Timer(self.delay_s, complete).start()
            else:
                complete()

        inner.add_done_callback(forward)
        return outer


@dataclass
class InflightProbe:
    """How many publishes the publisher had handed out and not yet seen completed, at most."""

    current: int = 0
    peak: int = 0
    total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self) -> None:
        with self.lock:
            self.current += 1
            self.total += 1
            self.peak = max(self.peak, self.current)

    def finished(self) -> None:
        with self.lock:
            self.current -= 1

    def factory(
        self, delay_s: float = 0.0, swallow: Callable[[bytes], bool] = lambda _p: False
    ) -> Callable[[ConnectionSpec, Callable[[ConnectionLost], None]], Instrumented]:
        def build(spec: ConnectionSpec, on_lost: Callable[[ConnectionLost], None]) -> Instrumented:
            return Instrumented(PahoTransport(spec, on_lost), self, delay_s, swallow)

        return build


def broker_connects(st: LocalStack, client_id: str, offset: int) -> int:
    """CONNECTs mosquitto accepted for `client_id` since byte `offset` of its log."""
    with st.paths.broker.log.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return sum(1 for line in text.splitlines() if f" as {client_id} (" in line)


def broker_log_size(st: LocalStack) -> int:
    return st.paths.broker.log.stat().st_size


# ------------------------------------------------------------------------------------------------
# Unit tests: pacing (injected clock and random)
# ------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_full_jitter_spans_min_to_a_doubling_cap() -> None:
    clock = FakeClock()
    low = Backoff(1.0, 120.0, clock=clock, rand=lambda: 0.0)
    high = Backoff(1.0, 120.0, clock=clock, rand=lambda: 1.0)
    assert [round(low.next_delay(), 6) for _ in range(8)] == [1.0] * 8
    assert [high.next_delay() for _ in range(8)] == [2, 4, 8, 16, 32, 64, 120, 120]
    mid = Backoff(2.0, 10.0, clock=clock, rand=lambda: 0.5)
    assert [mid.next_delay() for _ in range(4)] == [3.0, 5.0, 6.0, 6.0]


def test_backoff_takeover_draws_from_the_upper_half_and_reset_starts_over() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, 120.0, clock=clock, rand=lambda: 0.0)
    assert [backoff.next_delay(takeover=True) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff.failures == 4
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay(takeover=True) == 1.0


def test_backoff_never_allows_two_connects_within_the_interval() -> None:
    clock = FakeClock()
    backoff = Backoff(0.01, 0.02, min_interval_s=1.0, clock=clock, rand=lambda: 0.0)
    assert backoff.slot_wait() == 0.0
    backoff.connecting()
    clock.now += 0.25
    assert backoff.slot_wait() == pytest.approx(0.75)
    assert backoff.next_delay() == pytest.approx(0.75)  # not the 0.01 s the jitter drew
    clock.now += 0.75
    assert backoff.slot_wait() == 0.0


def test_backoff_stays_finite_after_many_failures() -> None:
    backoff = Backoff(1.0, 120.0, clock=FakeClock(), rand=lambda: 1.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 120.0


def test_backoff_spreads_a_fleet_over_the_range() -> None:
    """A hundred clients that lost the broker together do not retry together."""
    import random  # noqa: PLC0415

    rng = random.Random(7)
    delays = [Backoff(1.0, 120.0, rand=rng.random).next_delay() for _ in range(100)]
    assert min(delays) >= 1.0 and max(delays) <= 2.0
    per_100ms = [sum(1 for d in delays if 1 + i / 10 <= d < 1 + (i + 1) / 10) for i in range(10)]
    assert max(per_100ms) <= 20  # ~10 per 100 ms slice, not 100 at once


def test_token_bucket_paces_evenly_and_honours_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(50.0, clock=clock)
    sent: list[float] = []
    end = clock.now + 3.0
    while clock.now < end:
        wait = bucket.wait_time()
        if wait > 0:
            clock.now += wait
            continue
        bucket.take()
        sent.append(clock.now)
    for start in sent:
        assert sum(1 for t in sent if start <= t < start + 1.0) <= 51
    assert 149 <= len(sent) <= 151
    bucket.take()
    bucket.take()  # overdraw: the next token is two intervals away
    assert bucket.wait_time() == pytest.approx(2 / 50)
    bucket.set_rate(10.0)
    assert bucket.wait_time() == pytest.approx(2 / 10)


def test_settings_refuse_values_beyond_iot_core_limits(tmp_path: Path) -> None:
    files = {"ca_file": tmp_path, "cert_file": tmp_path, "key_file": tmp_path}
    for bad, name in (
        ({"max_inflight": 101}, "max_inflight"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"max_publish_per_s": 101.0}, "max_publish_per_s"),
        ({"replay_rate_per_s": 60.0, "max_publish_per_s": 50.0}, "replay_rate_per_s"),
        ({"transport": "awsiot", "protocol": "mqtt311"}, "protocol"),
        ({"backoff_max_s": 0.5}, "backoff_max_s"),
        ({"replay_threshold": 5000}, "replay_threshold"),
    ):
        with pytest.raises(ValueError, match=f"^{name}: "):
            PublishSettings(host="localhost", port=8883, **files, **bad)


# ------------------------------------------------------------------------------------------------
# Integration: delivery, limits and policies against the real broker
# ------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_every_message_is_delivered_once_acked_and_deleted(local_stack: LocalStack) -> None:
    gateway = unique("gw-pub")
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    messages = [telemetry(gateway, seq) for seq in range(1, 41)]
    messages.append(telemetry(gateway, 41, Kind.EVENTS))
    outbox = MemoryOutbox(messages)
    metrics = AgentMetrics()
    publisher = make_publisher(settings_for(local_stack, gateway), outbox, gateway, metrics=metrics)
    with running(publisher):
        assert wait_until(lambda: not outbox.ids())
    records = kinesis_records(reader, gateway, len(messages))
    assert sorted(records) == sorted(m.payload for m in messages)
    assert outbox.acked[0] == 41  # the event jumped the telemetry queue
    assert sorted(outbox.acked) == list(range(1, 42))
    assert publisher.acked == 41 and publisher.readings_delivered == 41 * 3
    assert value(metrics.messages_acked, kind="telemetry") == 40
    assert value(metrics.messages_acked, kind="events") == 1
    assert value(metrics.readings_delivered) == 123
    assert value(metrics.publish_errors) == 0
    assert value(metrics.connected) == 0  # after the clean stop


@pytest.mark.integration
def test_inflight_never_exceeds_max_inflight(local_stack: LocalStack) -> None:
    """PUBACKs are handed over 0.3 s late: unbounded, ~30 would be in flight at 100/s."""
    gateway = unique("gw-inflight")
    outbox = MemoryOutbox([telemetry(gateway, seq) for seq in range(1, 61)])
    probe = InflightProbe()
    publisher = make_publisher(
        settings_for(local_stack, gateway, max_inflight=5),
        outbox,
        gateway,
        factory=probe.factory(delay_s=0.3),
    )
    with running(publisher):
        assert wait_until(lambda: not outbox.ids(), timeout=30)
        assert probe.total == 61  # 60 messages and one online status, nothing resent
    assert probe.peak == 5
    assert publisher.max_inflight_seen == 5


@pytest.mark.integration
def test_publish_rate_stays_within_max_publish_per_s(local_stack: LocalStack) -> None:
    gateway = unique("gw-rate")
    topic = topic_for(gateway, TopicKind.TELEMETRY)
    observer = Observer(local_stack, topic)
    outbox = MemoryOutbox([telemetry(gateway, seq) for seq in range(1, 301)])
    publisher = make_publisher(
        settings_for(local_stack, gateway, max_publish_per_s=50.0),
        outbox,
        gateway,
    )
    try:
        with running(publisher):
            assert wait_until(lambda: len(observer.received(topic)) >= 300, timeout=30)
    finally:
        observer.close()
    times = [m.at for m in observer.received(topic)]
    # Any one-second window seen at the broker: 50 plus one for pacing, plus a little
    # delivery jitter.
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 53
    elapsed = times[-1] - times[0]
    assert 299 / elapsed == pytest.approx(50, rel=0.1)  # at the limit, not far below it


@pytest.mark.integration
def test_backlog_after_connect_is_replayed_at_the_replay_rate(local_stack: LocalStack) -> None:
    gateway = unique("gw-replay")
    topic = topic_for(gateway, TopicKind.TELEMETRY)
    observer = Observer(local_stack, topic)
    outbox = MemoryOutbox([telemetry(gateway, seq) for seq in range(1, 121)])
    publisher = make_publisher(
        settings_for(
            local_stack,
            gateway,
            max_publish_per_s=100.0,
            replay_rate_per_s=20.0,
            replay_threshold=40,
        ),
        outbox,
        gateway,
    )
    try:
        with running(publisher):
            assert wait_until(lambda: publisher.replaying, timeout=10)
            assert wait_until(lambda: len(observer.received(topic)) >= 120, timeout=30)
            assert not publisher.replaying
    finally:
        observer.close()
    times = [m.at for m in observer.received(topic)]
    replay_rate = 59 / (times[59] - times[0])
    assert replay_rate == pytest.approx(20, rel=0.15)
    tail_rate = 29 / (times[-1] - times[-30])
    assert tail_rate > 60  # caught up: back to the normal limit


@pytest.mark.integration
def test_refused_publish_is_counted_kept_and_backed_off(
    local_stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    """The certificate is gateway B's, so the ACL refuses A's topics: MQTT 5 PUBACK 0x87."""
    gateway, other = unique("gw-acl-a"), unique("gw-acl-b")
    cert, key = local_stack.issue(other)
    outbox = MemoryOutbox([telemetry(gateway, seq) for seq in (1, 2, 3)])
    metrics = AgentMetrics()
    publisher = make_publisher(
        settings_for(local_stack, gateway, cert_file=cert, key_file=key),
        outbox,
        gateway,
        metrics=metrics,
    )
    caplog.set_level(logging.ERROR, logger="edge_agent.publish")
    with running(publisher):
        assert wait_until(lambda: value(metrics.publish_errors, reason="not_authorized") >= 2)
        time.sleep(3.0)
    assert outbox.ids() == [1, 2, 3]  # kept
    assert outbox.acked == [] and publisher.acked == 0
    assert value(metrics.messages_acked, kind="telemetry") == 0
    sent = value(metrics.messages_published, kind="telemetry")
    # Each refusal pauses sending for >= 1 s (1-2 s, then 1-4 s, ...): in ~3 s at most four
    # rounds of the 3 messages, and at least one retry. A hot loop would send thousands.
    assert 2 <= sent <= 12
    assert value(metrics.publish_errors, reason="not_authorized") >= sent
    telemetry_topic = topic_for(gateway, TopicKind.TELEMETRY)
    refusals = [r for r in caplog.records if "publish_refused" in r.getMessage()]
    assert [r.getMessage().count(telemetry_topic) for r in refusals].count(1) == 1
    assert all("reason=not_authorized code=0x87" in r.getMessage() for r in refusals)


@pytest.mark.integration
def test_oversize_message_is_never_sent_and_leaves_the_outbox(local_stack: LocalStack) -> None:
    gateway = unique("gw-big")
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    huge = Msg(2, Kind.TELEMETRY, 2, b"{" + b"x" * 131_072, readings=7)
    outbox = MemoryOutbox([telemetry(gateway, 1), huge, telemetry(gateway, 3)])
    metrics = AgentMetrics()
    publisher = make_publisher(settings_for(local_stack, gateway), outbox, gateway, metrics=metrics)
    with running(publisher):
        assert wait_until(lambda: not outbox.ids())
    records = kinesis_records(reader, gateway, 2)
    assert sorted(records) == sorted([outbox_payload(gateway, 1), outbox_payload(gateway, 3)])
    assert publisher.dropped == 1 and publisher.acked == 2
    assert value(metrics.messages_published, kind="telemetry") == 2
    assert value(metrics.publish_errors, reason="oversize") == 1
    assert value(metrics.readings_dropped, policy="oversize") == 7
    assert value(metrics.readings_delivered) == 6


def outbox_payload(gateway: str, seq: int) -> bytes:
    return telemetry(gateway, seq).payload


@pytest.mark.integration
def test_online_status_is_retained_with_health_and_offline_on_clean_stop(
    local_stack: LocalStack,
) -> None:
    gateway = unique("gw-status")
    status_topic = topic_for(gateway, TopicKind.STATUS)
    outbox = MemoryOutbox()
    publisher = make_publisher(
        settings_for(local_stack, gateway, status_interval_s=1.0),
        outbox,
        gateway,
        status=status_source(gateway, buffer_rows=12, buffer_bytes=3400, dropped_readings=5),
    )
    with running(publisher):
        assert wait_until(lambda: publisher.published >= 1 and publisher.inflight == 0)
        # Subscribing after the fact: only a retained message can arrive now.
        late = Observer(local_stack, status_topic)
        try:
            assert wait_until(lambda: len(late.received()) >= 1, timeout=10)
            first = late.received()[0]
            assert first.retain
            status = decode_status(first.payload)
            assert (status.gateway_id, status.state, status.version) == (
                gateway,
                "online",
                "0.1.0-test",
            )
            assert (status.buffer_rows, status.buffer_bytes, status.dropped_readings) == (
                12,
                3400,
                5,
            )
            # ... and it is refreshed every status_interval_s.
            assert wait_until(lambda: len(late.received()) >= 3, timeout=5)
        finally:
            late.close()
    after = Observer(local_stack, status_topic)
    try:
        assert wait_until(lambda: len(after.received()) >= 1, timeout=10)
        last = after.received()[0]
        assert last.retain and decode_status(last.payload).state == "offline"
    finally:
        after.close()


_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from edge_agent.metrics import AgentMetrics
    from edge_agent.publish import Publisher, PublishSettings
    from meterlink_wire import GatewayStatus

    host, port, ca, cert, key, gateway, transport = sys.argv[1:8]

    class Empty:
        def pending(self, limit, *, exclude=()):
            return []

        def ack(self, ids):
            return 0

    settings = PublishSettings(
        host=host,
        port=int(port),
        ca_file=Path(ca),
        cert_file=Path(cert),
        key_file=Path(key),
        transport=transport,
    )
    status = lambda: GatewayStatus(gateway, "online", int(time.time() * 1000), "9.9.9")
    Publisher(settings, Empty(), AgentMetrics(), gateway_id=gateway, status=status).run(
        threading.Event()
    )
    """
)


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["paho", "awsiot"])
def test_last_will_is_a_retained_offline_status_when_the_process_dies(
    local_stack: LocalStack, transport: str
) -> None:
    gateway = unique("gw-will")
    cert, key = local_stack.issue(gateway)
    status_topic = topic_for(gateway, TopicKind.STATUS)
    observer = Observer(local_stack, status_topic)
    info = local_stack.info
    args = [info.mqtt_host, str(info.mqtt_port), info.ca_file, str(cert), str(key), gateway]
    args.append(transport)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, *args], cwd=REPO_ROOT)
    try:
        assert wait_until(lambda: len(observer.received()) >= 1, timeout=20)
        assert decode_status(observer.received()[0].payload).state == "online"
        child.send_signal(signal.SIGKILL)  # no DISCONNECT, no offline status of its own
        child.wait(timeout=10)
        assert wait_until(lambda: len(observer.received()) >= 2, timeout=10)
        will = decode_status(observer.received()[1].payload)
        assert (will.gateway_id, will.state, will.version) == (gateway, "offline", "9.9.9")
    finally:
        if child.poll() is None:
            child.kill()
        observer.close()
    later = Observer(local_stack, status_topic)
    try:
        assert wait_until(lambda: len(later.received()) >= 1, timeout=10)
        assert later.received()[0].retain
        assert decode_status(later.received()[0].payload).state == "offline"
    finally:
        later.close()


@pytest.mark.integration
def test_unacked_messages_are_resent_after_the_connection_is_lost(local_stack: LocalStack) -> None:
    """A second client with the same id makes the broker drop the publisher's connection while
    PUBACKs are still on their way; every message arrives, the resent ones byte-identical."""
    gateway = unique("gw-resend")
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    messages = [telemetry(gateway, seq) for seq in range(1, 151)]
    outbox = MemoryOutbox(messages)
    probe = InflightProbe()
    publisher = make_publisher(
        settings_for(local_stack, gateway, max_inflight=10, max_publish_per_s=50.0),
        outbox,
        gateway,
        factory=probe.factory(delay_s=0.3),
    )
    with running(publisher):
        assert wait_until(lambda: len(outbox.acked) >= 40)
        intruder = GatewayClient(local_stack, gateway)
        assert intruder.connect()
        intruder.close()
        assert wait_until(lambda: not outbox.ids(), timeout=40)
    assert publisher.reconnects == 1
    records = kinesis_records(reader, gateway, len(messages) + 1)
    assert set(records) == {m.payload for m in messages}  # none missing, nothing foreign
    assert len(records) > len(messages)  # the unacked ones went twice
    assert sorted(outbox.acked) == list(range(1, 151))


@pytest.mark.integration
def test_a_publish_not_acked_in_time_is_resent_on_a_new_connection(
    local_stack: LocalStack,
) -> None:
    gateway = unique("gw-acktimeout")
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    messages = [telemetry(gateway, seq) for seq in (1, 2, 3)]
    lost_once = messages[1].payload
    swallowed: list[bytes] = []

    def swallow(payload: bytes) -> bool:
        if payload == lost_once and not swallowed:
            swallowed.append(payload)
            return True
        return False

    outbox = MemoryOutbox(messages)
    metrics = AgentMetrics()
    publisher = make_publisher(
        settings_for(local_stack, gateway, ack_timeout_s=1.0),
        outbox,
        gateway,
        metrics=metrics,
        factory=InflightProbe().factory(swallow=swallow),
    )
    with running(publisher):
        assert wait_until(lambda: not outbox.ids(), timeout=20)
    assert value(metrics.publish_errors, reason="ack_timeout") == 1
    assert publisher.reconnects == 1
    records = kinesis_records(reader, gateway, 4)
    assert sorted(records) == sorted([*(m.payload for m in messages), lost_once])


@pytest.mark.integration
def test_drain_delivers_what_the_outbox_holds(local_stack: LocalStack) -> None:
    """SIGTERM: the agent flushes its open windows into the outbox, then drains."""
    gateway = unique("gw-drain")
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    outbox = MemoryOutbox()
    publisher = make_publisher(settings_for(local_stack, gateway), outbox, gateway)
    with running(publisher):
        assert wait_until(lambda: publisher.connected and publisher.inflight == 0)
        messages = [telemetry(gateway, seq) for seq in range(1, 31)]
        for message in messages:
            outbox.add(message)
        assert publisher.drain(10.0) is True
        assert outbox.ids() == [] and publisher.inflight == 0
    records = kinesis_records(reader, gateway, 30)
    assert sorted(records) == sorted(m.payload for m in messages)


@pytest.mark.integration
def test_drain_stops_sending_before_its_deadline_to_collect_the_acks(
    local_stack: LocalStack,
) -> None:
    gateway = unique("gw-drain-short")
    outbox = MemoryOutbox([telemetry(gateway, seq) for seq in range(1, 201)])
    probe = InflightProbe()
    publisher = make_publisher(
        settings_for(local_stack, gateway, max_inflight=10, max_publish_per_s=20.0),
        outbox,
        gateway,
        factory=probe.factory(delay_s=0.3),
    )
    with running(publisher):
        assert wait_until(lambda: publisher.inflight >= 5)
        started = time.monotonic()
        assert publisher.drain(2.0) is False  # 200 messages at 20/s do not fit in 2 s
        assert time.monotonic() - started == pytest.approx(2.0, abs=0.3)
        assert publisher.inflight == 0  # sending stopped 0.5 s early; the acks came in
        sent = probe.total
        time.sleep(1.0)
        assert probe.total == sent  # and nothing new is sent after the drain
    assert probe.total == sent + 1  # the offline status on stop
    # Everything sent was acknowledged and deleted; the rest waits for the next start.
    assert len(outbox.acked) == sent - 1
    assert outbox.ids() == list(range(sent, 201))


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["mqtt5", "mqtt311"])
def test_duplicate_client_id_backs_off_instead_of_fighting(
    local_stack: LocalStack, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two publishers share one gateway's certificate and client id for 10 s.

    mosquitto closes the older connection on every CONNECT (without DISCONNECT 0x8E, so this is
    the quick-drop detection). With 1 s fixed reconnects they would CONNECT ~20 times; the
    takeover backoff (>= 1, 2, 4, 8 s after successive kicks) allows at most 4 each in 10 s.
    """
    gateway = unique("gw-twin")
    settings = settings_for(local_stack, gateway, protocol=protocol)
    first = make_publisher(settings, MemoryOutbox(), gateway)
    second = make_publisher(settings, MemoryOutbox(), gateway)
    caplog.set_level(logging.ERROR, logger="edge_agent.publish")
    offset = broker_log_size(local_stack)
    with running(first, second):
        time.sleep(10.0)
    connects = broker_connects(local_stack, gateway, offset)
    assert first.connects <= 4 and second.connects <= 4
    assert 3 <= connects <= first.connects + second.connects
    assert first.session_takeovers + second.session_takeovers >= 1
    takeover_logs = [
        r.getMessage() for r in caplog.records if "session_taken_over" in r.getMessage()
    ]
    assert takeover_logs and all(f"client_id={gateway}" in m for m in takeover_logs)
    # A takeover is declared at the second quick drop in a row, so the backoff has grown: the
    # next CONNECT is drawn from the upper half of [1, 4] s or more, never the first 1-2 s.
    delays = [float(re.search(r"next CONNECT in ([0-9.]+)s", m).group(1)) for m in takeover_logs]
    assert min(delays) >= 2.0
