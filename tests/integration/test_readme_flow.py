"""README's promise: stock mosquitto_pub with an issued cert, then boto3 reads the stream."""

from __future__ import annotations

import subprocess

import pytest

from meterlink_wire import TopicKind, topic_for
from tests.integration.stackclient import LocalStack, StreamReader, sample_payload

pytestmark = pytest.mark.integration


def test_stock_mosquitto_pub_reaches_kinesis(local_stack: LocalStack, tmp_path) -> None:
    gateway = "gw-readme"
    cert, key = local_stack.issue(gateway)
    payload_file = tmp_path / "batch.json"
    payload_file.write_bytes(sample_payload(gateway, 1))
    reader = StreamReader(local_stack.kinesis(), local_stack.info.stream)
    result = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "localhost",
            "-p",
            str(local_stack.info.mqtt_port),
            "--cafile",
            local_stack.info.ca_file,
            "--cert",
            str(cert),
            "--key",
            str(key),
            "-i",
            gateway,
            "-q",
            "1",
            "-t",
            topic_for(gateway, TopicKind.TELEMETRY),
            "-f",
            str(payload_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = reader.wait_for(lambda seen: any(r["PartitionKey"] == gateway for _, r in seen))
    assert [r["Data"] for _, r in records if r["PartitionKey"] == gateway] == [
        payload_file.read_bytes()
    ]
