"""The local broker enforces what IoT Core enforces: mTLS with our CA, CRL, per-gateway topics."""

from __future__ import annotations

import time

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from meterlink_stack import pki
from meterlink_stack.cli import main as meterlink
from meterlink_wire import TopicKind, decode, topic_for
from tests.integration.stackclient import (
    GatewayClient,
    LocalStack,
    StreamReader,
    sample_payload,
)

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
NO_MATCHING_SUBSCRIBERS = 0x10


def test_gateway_cert_from_dev_ca_connects_and_publishes(local_stack: LocalStack) -> None:
    gw = GatewayClient(local_stack, "gw-connect-1")
    try:
        assert gw.connect()
        assert gw.state.connack is not None and gw.state.connack.value == 0
        reason = gw.publish(
            topic_for("gw-connect-1", TopicKind.TELEMETRY), sample_payload("gw-connect-1", 1)
        )
        assert reason.value in (0, NO_MATCHING_SUBSCRIBERS)
    finally:
        gw.close()


def test_cert_from_another_ca_is_refused(local_stack: LocalStack, tmp_path) -> None:
    other = tmp_path / "other-ca"
    pki.init_pki(other)
    cert, key = pki.issue_client(other, "gw-foreign")
    gw = GatewayClient(local_stack, "gw-foreign", cert=cert, key=key)
    try:
        # With TLS 1.3 the refusal can arrive after connect() returned: wait for CONNACK.
        assert gw.connect(timeout=5) is False
        assert not gw.state.connected.is_set()
        assert gw.state.connack is None
    finally:
        gw.close()


def test_revoked_cert_is_refused(
    local_stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    before = GatewayClient(local_stack, "gw-revoked")
    assert before.connect()
    before.close()

    rc = meterlink(
        [
            "--state-dir",
            str(local_stack.paths.state_dir),
            "--pki-dir",
            str(local_stack.paths.pki_dir),
            "certs",
            "revoke",
            "gw-revoked",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "revoked gw-revoked" in out and "reloaded its CRL" in out

    after = GatewayClient(local_stack, "gw-revoked")
    try:
        assert after.connect(timeout=5) is False
        assert after.state.connack is None
    finally:
        after.close()
    # A gateway that was not revoked still connects after the reload.
    other = GatewayClient(local_stack, "gw-not-revoked")
    try:
        assert other.connect()
    finally:
        other.close()


def test_gateway_cannot_publish_under_another_gateways_topic(local_stack: LocalStack) -> None:
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    reader.poll()  # skip what earlier tests left in the stream
    intruder = GatewayClient(local_stack, "gw-acl-a")
    try:
        assert intruder.connect()
        denied = intruder.publish(
            topic_for("gw-acl-b", TopicKind.TELEMETRY), sample_payload("gw-acl-b", 7)
        )
        assert denied.value == NOT_AUTHORIZED
        # A fence on A's own topic: once it is in Kinesis, anything published before it would be.
        fence = intruder.publish(
            topic_for("gw-acl-a", TopicKind.TELEMETRY), sample_payload("gw-acl-a", 8)
        )
        assert fence.value in (0, NO_MATCHING_SUBSCRIBERS)
    finally:
        intruder.close()
    records = reader.wait_for(
        lambda seen: any(r["PartitionKey"] == "gw-acl-a" for _, r in seen), timeout=30
    )
    keys = [r["PartitionKey"] for _, r in records]
    assert keys.count("gw-acl-a") == 1
    assert "gw-acl-b" not in keys
    assert all(decode(r["Data"]).gateway_id != "gw-acl-b" for _, r in records)


def test_status_topic_accepts_own_retained_status(local_stack: LocalStack) -> None:
    gw = GatewayClient(local_stack, "gw-status-1")
    try:
        assert gw.connect()
        reason = gw.publish(topic_for("gw-status-1", TopicKind.STATUS), b'{"v":1}')
        assert reason.value in (0, NO_MATCHING_SUBSCRIBERS)
    finally:
        gw.close()


def test_oversize_message_is_refused_by_broker(local_stack: LocalStack) -> None:
    gw = GatewayClient(local_stack, "gw-oversize")
    try:
        assert gw.connect()
        gw.client.publish(topic_for("gw-oversize", TopicKind.TELEMETRY), b"x" * 200_000, qos=1)
        deadline = time.monotonic() + 5
        while gw.state.disconnect is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert isinstance(gw.state.disconnect, ReasonCode)
    finally:
        gw.close()
