"""Client-side helpers for the integration tests: a device, a stream reader, sample batches."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from meterlink_stack import pki, stack
from meterlink_wire import Channel, ReadingBatch, Unit, WindowRow, encode

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "deploy" / "cloudformation" / "meterlink.yaml"


@dataclass
class LocalStack:
    """A running stack plus the client-side conveniences the tests need."""

    paths: stack.StackPaths
    info: stack.StackInfo

    @property
    def layout(self) -> pki.PkiLayout:
        return pki.PkiLayout(self.paths.pki_dir)

    def issue(self, gateway_id: str) -> tuple[Path, Path]:
        layout = self.layout
        if layout.client_cert(gateway_id).exists():
            return layout.client_cert(gateway_id), layout.client_key(gateway_id)
        return pki.issue_client(self.paths.pki_dir, gateway_id)

    def kinesis(self) -> Any:
        return boto3.client(
            "kinesis",
            endpoint_url=self.info.aws_endpoint_url,
            region_name=self.info.aws_region,
            aws_access_key_id=self.info.aws_access_key_id,
            aws_secret_access_key=self.info.aws_secret_access_key,
        )


@contextlib.contextmanager
def searchable_tmpdir() -> Iterator[Path]:
    """A temporary folder the broker's user may enter (pytest's own tmp root is 0700).

    As root, mosquitto drops to the `mosquitto` user, which must reach its config and keys.
    """
    root = Path(tempfile.mkdtemp(prefix="meterlink-test-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stack_paths(root: Path) -> stack.StackPaths:
    return stack.StackPaths(state_dir=root / "state", pki_dir=root / "pki", template=TEMPLATE)


@dataclass
class Connection:
    """What a test MQTT client saw: CONNACK, disconnects and PUBACK reason codes by mid."""

    connected: threading.Event = field(default_factory=threading.Event)
    failed: threading.Event = field(default_factory=threading.Event)
    connack: ReasonCode | None = None
    disconnect: ReasonCode | None = None
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    acked: threading.Condition = field(default_factory=threading.Condition)


class GatewayClient:
    """A plain paho MQTT 5 client with a gateway certificate: what a device looks like."""

    def __init__(
        self, st: LocalStack, gateway_id: str, *, cert: Path | None = None, key: Path | None = None
    ) -> None:
        if cert is None or key is None:
            cert, key = st.issue(gateway_id)
        self.gateway_id = gateway_id
        self.state = Connection()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=gateway_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        context = ssl.create_default_context(cafile=st.info.ca_file)
        context.load_cert_chain(str(cert), str(key))
        self.client.tls_set_context(context)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_connect_fail = lambda *_: self.state.failed.set()
        self._host, self._port = st.info.mqtt_host, st.info.mqtt_port

    def connect(self, timeout: float = 10.0) -> bool:
        """Connect and wait for CONNACK; False if the broker refused (TLS or CONNACK)."""
        try:
            self.client.connect(self._host, self._port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state.connected.is_set():
                return True
            if self.state.failed.is_set():
                return False
            time.sleep(0.02)
        return False

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self.state.acked:
            ok = self.state.acked.wait_for(lambda: info.mid in self.state.pubacks, timeout)
        assert ok, f"no PUBACK for mid {info.mid} within {timeout}s"
        return self.state.pubacks[info.mid]

    def publish_nowait(self, topic: str, payload: bytes) -> int:
        return int(self.client.publish(topic, payload, qos=1).mid)

    def wait_all_acked(self, count: int, timeout: float = 60.0) -> None:
        with self.state.acked:
            ok = self.state.acked.wait_for(lambda: len(self.state.pubacks) >= count, timeout)
        assert ok, f"{len(self.state.pubacks)} of {count} PUBACKs within {timeout}s"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.state.connack = reason
        (self.state.failed if reason.is_failure else self.state.connected).set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.state.disconnect = reason
        if not self.state.connected.is_set():
            self.state.failed.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self.state.acked:
            self.state.pubacks[mid] = reason
            self.state.acked.notify_all()


def sample_batch(gateway_id: str, sequence: int, rows: int = 3) -> ReadingBatch:
    """A small, valid window batch; values depend on `sequence` so payloads differ."""
    start = 1_764_201_600_000
    return ReadingBatch.from_rows(
        gateway_id=gateway_id,
        sequence=sequence,
        sent_ms=start + 60_000,
        window_s=60,
        rows=[
            WindowRow(
                f"elec-{i:04d}",
                Channel.POWER,
                Unit.KW,
                start,
                60,
                0.5 + i,
                2.0 + i + sequence % 7,
                1.0 + i,
                1.5 + i,
            )
            for i in range(rows)
        ],
    )


def sample_payload(
    gateway_id: str, sequence: int, rows: int = 3, *, compress: bool = False
) -> bytes:
    return encode(sample_batch(gateway_id, sequence, rows), compress=compress)


def shard_for(client: Any, stream: str, partition_key: str) -> str:
    """The shard Kinesis maps a partition key to: MD5 as a 128-bit int within a hash key range."""
    key = int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        low = int(shard["HashKeyRange"]["StartingHashKey"])
        high = int(shard["HashKeyRange"]["EndingHashKey"])
        if low <= key <= high and "EndingSequenceNumber" not in shard["SequenceNumberRange"]:
            return str(shard["ShardId"])
    raise AssertionError(f"no open shard covers {partition_key}")


class StreamReader:
    """Reads every shard of a stream from the start, remembering where each shard got to."""

    def __init__(self, client: Any, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.iterators: dict[str, str] = {}
        for shard in client.list_shards(StreamName=stream)["Shards"]:
            self.iterators[shard["ShardId"]] = client.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]

    def poll(self) -> list[tuple[str, dict[str, Any]]]:
        """One pass over all shards, draining each; returns (shard id, record) pairs."""
        out = []
        for shard_id in list(self.iterators):
            while True:
                response = self.client.get_records(
                    ShardIterator=self.iterators[shard_id], Limit=10_000
                )
                self.iterators[shard_id] = response["NextShardIterator"]
                out.extend((shard_id, r) for r in response["Records"])
                if not response["Records"]:
                    break
        return out

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[tuple[str, dict[str, Any]]]:
        """Poll until `predicate(all records so far)` holds; returns everything read."""
        seen: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while True:
            seen.extend(self.poll())
            if predicate(seen) or time.monotonic() > deadline:
                return seen
            time.sleep(0.2)
