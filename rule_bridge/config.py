"""Typed configuration for the rule bridge, read once from TOML at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meterlink_config import TomlReader
from meterlink_wire import SUBSCRIPTION_EVENTS, SUBSCRIPTION_TELEMETRY

#: Kinesis PutRecords limits: 500 records and 5 MiB per call.
PUT_RECORDS_MAX_RECORDS = 500
PUT_RECORDS_MAX_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class MqttConfig:
    """How the bridge reaches the broker: mutual TLS, persistent session, QoS 1."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_id: str = "meterlink-bridge"
    topics: tuple[str, ...] = (SUBSCRIPTION_TELEMETRY, SUBSCRIPTION_EVENTS)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 1000


@dataclass(frozen=True)
class KinesisConfig:
    """Where records go and how they are batched into PutRecords calls."""

    stream: str
    region: str
    endpoint_url: str | None = None
    max_records: int = PUT_RECORDS_MAX_RECORDS
    max_bytes: int = PUT_RECORDS_MAX_BYTES
    linger_ms: int = 50
    max_backoff_s: float = 5.0


@dataclass(frozen=True)
class BridgeConfig:
    """The whole bridge configuration."""

    mqtt: MqttConfig
    kinesis: KinesisConfig
    status_file: Path | None = None
    log_level: str = "info"


_LOG_LEVELS = ("debug", "info", "warning", "error")


def load_config(path: Path) -> BridgeConfig:
    """Read and validate `path`; every mistake is a ConfigError naming the file and the key."""
    toml = TomlReader(path)
    toml.table("mqtt", required=True)
    toml.table("kinesis", required=True)
    topics = toml.get("mqtt.topics", list, [SUBSCRIPTION_TELEMETRY, SUBSCRIPTION_EVENTS])
    if not topics or not all(isinstance(t, str) and t for t in topics):
        raise toml.error("mqtt.topics", "expected a non-empty list of topic filters")
    max_records = toml.get("kinesis.max_records", int, PUT_RECORDS_MAX_RECORDS)
    if not 1 <= max_records <= PUT_RECORDS_MAX_RECORDS:
        raise toml.error(
            "kinesis.max_records", f"must be 1..{PUT_RECORDS_MAX_RECORDS} (PutRecords limit)"
        )
    max_bytes = toml.get("kinesis.max_bytes", int, PUT_RECORDS_MAX_BYTES)
    if not 1024 <= max_bytes <= PUT_RECORDS_MAX_BYTES:
        raise toml.error(
            "kinesis.max_bytes", f"must be 1024..{PUT_RECORDS_MAX_BYTES} (PutRecords limit)"
        )
    port = toml.get("mqtt.port", int)
    if not 1 <= port <= 65535:
        raise toml.error("mqtt.port", f"not a TCP port: {port}")
    status_file = toml.get("bridge.status_file", str, "")
    return BridgeConfig(
        mqtt=MqttConfig(
            host=toml.get("mqtt.host", str),
            port=port,
            ca_file=toml.file("mqtt.ca_file"),
            cert_file=toml.file("mqtt.cert_file"),
            key_file=toml.file("mqtt.key_file"),
            client_id=toml.get("mqtt.client_id", str, "meterlink-bridge"),
            topics=tuple(topics),
            keepalive_s=toml.integer("mqtt.keepalive_s", 30, low=5),
            session_expiry_s=toml.integer("mqtt.session_expiry_s", 7 * 24 * 3600, low=0),
            receive_maximum=toml.integer("mqtt.receive_maximum", 1000, low=1, high=65535),
        ),
        kinesis=KinesisConfig(
            stream=toml.get("kinesis.stream", str),
            region=toml.get("kinesis.region", str),
            endpoint_url=toml.get("kinesis.endpoint_url", str, "") or None,
            max_records=max_records,
            max_bytes=max_bytes,
            linger_ms=toml.integer("kinesis.linger_ms", 50, low=0),
            max_backoff_s=toml.number("kinesis.max_backoff_s", 5.0, low=0.01),
        ),
        status_file=toml.resolve(status_file) if status_file else None,
        log_level=toml.choice("bridge.log_level", _LOG_LEVELS, "info"),
    )
