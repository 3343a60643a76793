"""Certificate rotation against the real broker, while messages keep flowing.

The agent rotates the way operators do: new files are written over the old paths, then
`rotate(same paths)`. So besides "the new pair works", these tests check that a bad new pair
leaves the publisher on the old identity even though the old files are gone from disk.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.metrics import AgentMetrics
from edge_agent.publish import Publisher, RotationResult
from meterlink_stack import pki, stack
from meterlink_wire import TopicKind, decode_status, topic_for
from tests.edge.test_publish import (
    MemoryOutbox,
    Observer,
    kinesis_records,
    make_publisher,
    running,
    settings_for,
    telemetry,
    unique,
    wait_until,
)
from tests.integration.stackclient import GatewayClient, LocalStack, StreamReader

pytestmark = pytest.mark.integration

VARIANTS = [("paho", "mqtt5"), ("paho", "mqtt311"), ("awsiot", "mqtt5")]
IDS = ["paho-mqtt5", "paho-mqtt311", "awsiot-mqtt5"]


#: A PEM-shaped key that is not a key (spelled in parts so no scanner takes it for a real one).
FAKE_KEY_PEM = "-----BEGIN " + "PRIVATE KEY-----\nAAAA\n-----END " + "PRIVATE KEY-----\n"


class Feeder:
    """Adds one message to the outbox every `interval_s` (ids 1..count), waking the publisher."""

    def __init__(self, outbox: MemoryOutbox, gateway: str, count: int, interval_s: float) -> None:
        self.outbox, self.gateway, self.count, self.interval_s = outbox, gateway, count, interval_s
        self.messages = [telemetry(gateway, seq) for seq in range(1, count + 1)]
        self.added = 0
        self.publisher: Publisher | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        for i, message in enumerate(self.messages):
            delay = start + i * self.interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.outbox.add(message)
            self.added += 1
            if self.publisher is not None:
                self.publisher.wake()

    def join(self) -> None:
        self._thread.join(timeout=60)


def copy_identity(cert: Path, key: Path, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(cert, folder / cert.name)), Path(shutil.copy(key, folder / key.name))


def reissue_in_place(st: LocalStack, gateway: str) -> tuple[Path, Path]:
    """A new pair written over the gateway's files; the old one goes on the CRL (superseded)."""
    return pki.issue_client(st.paths.pki_dir, gateway, overwrite=True)


def reload_crl(st: LocalStack) -> None:
    assert stack.reload_broker_tls(st.paths)
    time.sleep(1.0)  # mosquitto re-reads on SIGHUP, asynchronously


@pytest.fixture
def reader(local_stack: LocalStack) -> Iterator[StreamReader]:
    yield StreamReader(local_stack.kinesis(), local_stack.info.stream)


@pytest.mark.parametrize(("transport", "protocol"), VARIANTS, ids=IDS)
def test_rotation_under_load_switches_and_loses_nothing(
    local_stack: LocalStack, reader: StreamReader, transport: str, protocol: str
) -> None:
    gateway = unique("gw-rotate")
    cert, key = local_stack.issue(gateway)
    outbox = MemoryOutbox()
    feeder = Feeder(outbox, gateway, count=160, interval_s=0.025)
    publisher = make_publisher(
        settings_for(local_stack, gateway, transport=transport, protocol=protocol),
        outbox,
        gateway,
    )
    with running(publisher):
        feeder.start(publisher)
        assert wait_until(lambda: len(outbox.acked) >= 40)
        reissue_in_place(local_stack, gateway)
        result = publisher.rotate(cert, key)
        assert result == RotationResult(True, "rotated", cert, key)
        # The broker published the old connection's will (offline) at the takeover; the new
        # connection's online status came after it, so that is what stays retained.
        late = Observer(local_stack, topic_for(gateway, TopicKind.STATUS))
        try:
            assert wait_until(lambda: len(late.received()) >= 1, timeout=10)
            assert late.received()[0].retain
            assert decode_status(late.received()[0].payload).state == "online"
        finally:
            late.close()
        feeder.join()
        assert wait_until(lambda: len(outbox.acked) == 160)
        assert publisher.connects == 2  # the proving connection became the main one
        assert publisher.reconnects == 1
        assert publisher.session_takeovers == 0  # our own takeover is not reported
    records = kinesis_records(reader, gateway, 160)
    # In-flight publishes drained before the switch: every message exactly once.
    assert sorted(records) == sorted(m.payload for m in feeder.messages)
    assert sorted(outbox.acked) == list(range(1, 161))


def test_after_rotation_reconnects_use_the_new_identity(
    local_stack: LocalStack, reader: StreamReader
) -> None:
    """Once the old certificate is revoked, only the new one can get the publisher back in."""
    gateway = unique("gw-rotate-revoke")
    cert, key = local_stack.issue(gateway)
    outbox = MemoryOutbox([telemetry(gateway, 1)])
    publisher = make_publisher(settings_for(local_stack, gateway), outbox, gateway)
    with running(publisher):
        assert wait_until(lambda: len(outbox.acked) == 1)
        reissue_in_place(local_stack, gateway)
        assert publisher.rotate(cert, key).ok
        reload_crl(local_stack)  # the old serial is now refused by the broker
        intruder = GatewayClient(local_stack, gateway)  # kicks the publisher off
        assert intruder.connect()
        intruder.close()
        assert wait_until(lambda: publisher.reconnects == 2 and publisher.connected, timeout=10)
        outbox.add(telemetry(gateway, 2))
        publisher.wake()
        assert wait_until(lambda: len(outbox.acked) == 2)
    assert sorted(kinesis_records(reader, gateway, 2)) == sorted(
        telemetry(gateway, s).payload for s in (1, 2)
    )


REFUSALS = [
    "unreadable",
    "bad_cert_or_key",
    "key_mismatch",
    "unknown_ca",
    "revoked",
    "not_authorized",
]


def _bad_identity(st: LocalStack, gateway: str, refusal: str, tmp: Path) -> tuple[Path, Path]:
    """A new pair that must be refused, for the publisher running as `gateway`."""
    if refusal == "unreadable":
        return tmp / "missing.crt", tmp / "missing.key"
    if refusal == "bad_cert_or_key":
        cert, _ = st.issue(gateway)
        garbage = tmp / "garbage.key"
        garbage.write_text(FAKE_KEY_PEM)
        return cert, garbage
    if refusal == "key_mismatch":
        cert, _ = st.issue(gateway)
        _, other_key = st.issue(unique("gw-other"))
        return cert, other_key
    if refusal == "unknown_ca":
        pki.init_pki(tmp / "foreign-ca")
        return pki.issue_client(tmp / "foreign-ca", gateway)
    if refusal == "revoked":
        # Keep a copy of the current pair, replace it (the copy is superseded), reload the CRL.
        old = copy_identity(*st.issue(gateway), tmp / "revoked")
        reissue_in_place(st, gateway)
        reload_crl(st)
        return old
    # A valid certificate of another thing: CONNECT works, its topics are not ours.
    return st.issue(unique("gw-stranger"))


@pytest.mark.parametrize("refusal", REFUSALS)
def test_failed_rotation_keeps_the_old_identity_and_every_message(
    local_stack: LocalStack, reader: StreamReader, tmp_path: Path, refusal: str
) -> None:
    gateway = unique("gw-rotate-bad")
    bad_cert, bad_key = _bad_identity(local_stack, gateway, refusal, tmp_path)
    cert, key = local_stack.issue(gateway)
    outbox = MemoryOutbox()
    feeder = Feeder(outbox, gateway, count=120, interval_s=0.025)
    publisher = make_publisher(settings_for(local_stack, gateway), outbox, gateway)
    with running(publisher):
        feeder.start(publisher)
        assert wait_until(lambda: len(outbox.acked) >= 20)
        result = publisher.rotate(bad_cert, bad_key)
        assert result == RotationResult(False, refusal, cert, key)
        assert (publisher.cert_file, publisher.key_file) == (cert, key)
        feeder.join()
        assert wait_until(lambda: len(outbox.acked) == 120, timeout=30)
        if refusal == "not_authorized":
            # Proof connection, then back to the old identity (>= 1 s later: CONNECT limit).
            assert publisher.connects == 3
        else:
            assert publisher.connects == 1  # refused before any CONNECT: the session untouched
    records = kinesis_records(reader, gateway, 120)
    assert set(records) == {m.payload for m in feeder.messages}
    assert sorted(outbox.acked) == list(range(1, 121))


def test_failed_rotation_in_place_still_reconnects_with_the_old_identity(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    """The new key written over the old one is broken: the old pair exists only in memory."""
    gateway = unique("gw-rotate-inplace")
    cert, key = local_stack.issue(gateway)
    old_cert, old_key = copy_identity(cert, key, tmp_path / "old")
    outbox = MemoryOutbox([telemetry(gateway, 1)])
    metrics = AgentMetrics()
    publisher = make_publisher(settings_for(local_stack, gateway), outbox, gateway, metrics=metrics)
    with running(publisher):
        assert wait_until(lambda: len(outbox.acked) == 1)
        key.write_text(FAKE_KEY_PEM)
        assert publisher.rotate(cert, key) == RotationResult(False, "bad_cert_or_key", cert, key)
        intruder = GatewayClient(local_stack, gateway, cert=old_cert, key=old_key)
        assert intruder.connect()
        intruder.close()
        assert wait_until(lambda: publisher.reconnects == 1 and publisher.connected, timeout=10)
        outbox.add(telemetry(gateway, 2))
        publisher.wake()
        assert wait_until(lambda: len(outbox.acked) == 2)
