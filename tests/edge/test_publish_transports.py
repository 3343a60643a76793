"""Both transports (paho MQTT 5 / 3.1.1, awsiot MQTT 5) against the real local broker.

First through the whole publisher (outbox to Kinesis, byte-identical), then one transport at a
time: PUBACK reason codes, refused connections and lost connections, each with its exact reason.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.errors import PublishError
from edge_agent.metrics import AgentMetrics, value
from edge_agent.publish import ConnectionLost, ConnectionSpec, Credentials, Transport
from edge_agent.publish.awsiot import AwsIotTransport
from edge_agent.publish.paho import PahoTransport
from meterlink_stack import pki
from meterlink_wire import Kind, TopicKind, decode, topic_for
from tests.edge.test_publish import (
    MemoryOutbox,
    Msg,
    kinesis_records,
    make_publisher,
    running,
    settings_for,
    telemetry,
    unique,
    wait_until,
)
from tests.integration.stackclient import GatewayClient, LocalStack, StreamReader, sample_payload

pytestmark = pytest.mark.integration

VARIANTS = [("paho", "mqtt5"), ("paho", "mqtt311"), ("awsiot", "mqtt5")]
IDS = ["paho-mqtt5", "paho-mqtt311", "awsiot-mqtt5"]
TRANSPORTS: dict[str, Callable[[ConnectionSpec, Callable[[ConnectionLost], None]], Transport]] = {
    "paho": PahoTransport,
    "awsiot": AwsIotTransport,
}


@pytest.mark.parametrize(("transport", "protocol"), VARIANTS, ids=IDS)
def test_outbox_reaches_kinesis_byte_identical(
    local_stack: LocalStack, transport: str, protocol: str
) -> None:
    gateway = unique(f"gw-{transport}-{protocol}")
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    messages = [telemetry(gateway, seq) for seq in range(1, 26)]
    messages += [
        Msg(26, Kind.TELEMETRY, 26, sample_payload(gateway, 26, rows=400, compress=True), 400),
        Msg(27, Kind.EVENTS, 27, sample_payload(gateway, 27), 3),
    ]
    outbox = MemoryOutbox(messages)
    metrics = AgentMetrics()
    publisher = make_publisher(
        settings_for(local_stack, gateway, transport=transport, protocol=protocol),
        outbox,
        gateway,
        metrics=metrics,
    )
    with running(publisher):
        assert wait_until(lambda: not outbox.ids())
    records = kinesis_records(reader, gateway, len(messages))
    assert sorted(records) == sorted(m.payload for m in messages)
    assert sorted(decode(r).sequence for r in records) == list(range(1, 28))
    assert publisher.acked == 27 and publisher.readings_delivered == 26 * 3 + 400
    assert value(metrics.messages_acked, kind="telemetry") == 26
    assert value(metrics.publish_errors) == 0


# ------------------------------------------------------------------------------------------------
# One transport at a time
# ------------------------------------------------------------------------------------------------


class Losses:
    def __init__(self) -> None:
        self.seen: list[ConnectionLost] = []
        self.event = threading.Event()

    def __call__(self, lost: ConnectionLost) -> None:
        self.seen.append(lost)
        self.event.set()


def spec_for(
    st: LocalStack,
    gateway: str,
    protocol: str,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    port: int | None = None,
) -> ConnectionSpec:
    if cert is None or key is None:
        cert, key = st.issue(gateway)
    return ConnectionSpec(
        host=st.info.mqtt_host,
        port=port or st.info.mqtt_port,
        client_id=gateway,
        credentials=Credentials.load(Path(st.info.ca_file), cert, key),
        protocol=protocol,  # type: ignore[arg-type]
        keepalive_s=30,
        connect_timeout_s=5.0,
    )


@pytest.mark.parametrize(("transport", "protocol"), VARIANTS, ids=IDS)
def test_puback_reason_codes(local_stack: LocalStack, transport: str, protocol: str) -> None:
    gateway = unique("gw-puback")
    conn = TRANSPORTS[transport](spec_for(local_stack, gateway, protocol), Losses())
    conn.connect()
    try:
        assert conn.is_connected
        own = conn.publish(topic_for(gateway, TopicKind.TELEMETRY), b"{}").result(5)
        nobody = conn.publish(f"dt/meterlink/{gateway}/diag", b"{}").result(5)
        foreign = conn.publish(topic_for("gw-someone-else", TopicKind.TELEMETRY), b"{}").result(5)
        with pytest.raises(ValueError, match="QoS 2"):
            conn.publish(topic_for(gateway, TopicKind.TELEMETRY), b"{}", qos=2)
    finally:
        conn.disconnect()
    assert (own.code, own.ok) == (0x00, True)  # the bridge subscribes to telemetry
    if protocol == "mqtt5":
        assert (nobody.code, nobody.ok, nobody.reason) == (0x10, True, "no_matching_subscribers")
        assert (foreign.code, foreign.ok, foreign.reason) == (0x87, False, "not_authorized")
    else:
        # MQTT 3.1.1 has no PUBACK reason: mosquitto acks the denied publish and drops it.
        assert (nobody.code, foreign.code) == (0, 0)
    assert not conn.is_connected


@pytest.mark.parametrize(("transport", "protocol"), VARIANTS, ids=IDS)
def test_connection_taken_over_is_reported_once_and_fails_pending(
    local_stack: LocalStack, transport: str, protocol: str
) -> None:
    gateway = unique("gw-kicked")
    losses = Losses()
    conn = TRANSPORTS[transport](spec_for(local_stack, gateway, protocol), losses)
    conn.connect()
    intruder = GatewayClient(local_stack, gateway)
    try:
        assert intruder.connect()
        assert losses.event.wait(5)
        late = conn.publish(topic_for(gateway, TopicKind.TELEMETRY), b"{}")
        with pytest.raises(PublishError, match="not_connected"):
            late.result(5)
    finally:
        intruder.close()
        conn.disconnect()
    # mosquitto 2.0 closes the old connection without DISCONNECT 0x8E.
    expected = "connection_closed" if transport == "paho" else "mqtt_unexpected_hangup"
    assert losses.seen == [ConnectionLost(reason=expected, code=None)]
    assert not losses.seen[0].taken_over
    assert not conn.is_connected


@pytest.mark.parametrize(("transport", "protocol"), VARIANTS, ids=IDS)
def test_own_disconnect_is_not_reported_as_lost(
    local_stack: LocalStack, transport: str, protocol: str
) -> None:
    gateway = unique("gw-bye")
    losses = Losses()
    conn = TRANSPORTS[transport](spec_for(local_stack, gateway, protocol), losses)
    conn.connect()
    conn.disconnect()
    assert not losses.event.wait(1.0)
    with pytest.raises(PublishError, match="not_connected"):
        conn.publish(topic_for(gateway, TopicKind.TELEMETRY), b"{}").result(1)


def _foreign_identity(tmp_path: Path, gateway: str) -> tuple[Path, Path]:
    other = tmp_path / "other-ca"
    pki.init_pki(other)
    return pki.issue_client(other, gateway)


@pytest.mark.parametrize(("transport", "protocol"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("refusal", ["foreign_ca", "unreachable", "key_mismatch"])
def test_refused_connect_raises_publish_error_with_reason(
    local_stack: LocalStack, tmp_path: Path, transport: str, protocol: str, refusal: str
) -> None:
    gateway = unique("gw-refused")
    if refusal == "foreign_ca":
        cert, key = _foreign_identity(tmp_path, gateway)
        spec = spec_for(local_stack, gateway, protocol, cert=cert, key=key)
        # TLS 1.3: paho's handshake "succeeds" and the broker's alert closes the socket before
        # CONNACK; awscrt reports a failed TLS read.
        expected = "closed_before_connack" if transport == "paho" else "tls_rejected"
    elif refusal == "unreachable":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            free = sock.getsockname()[1]
        spec = spec_for(local_stack, gateway, protocol, port=free)
        expected = "unreachable"
    else:
        cert, _ = local_stack.issue(gateway)
        _, key = local_stack.issue(unique("gw-other-key"))
        spec = spec_for(local_stack, gateway, protocol, cert=cert, key=key)
        expected = "key_mismatch"
    losses = Losses()
    conn = TRANSPORTS[transport](spec, losses)
    with pytest.raises(PublishError) as raised:
        conn.connect()
    assert raised.value.reason == expected
    assert not conn.is_connected
    assert losses.seen == []
