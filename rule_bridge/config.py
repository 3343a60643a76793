"""Typed configuration for the rule bridge, read once from TOML at start-up."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from meterlink_wire import SUBSCRIPTION_EVENTS, SUBSCRIPTION_TELEMETRY
from rule_bridge.errors import ConfigError

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


_T = TypeVar("_T")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def load_config(path: Path) -> BridgeConfig:
    """Read and validate `path`; every mistake is a ConfigError naming the file and the key."""
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(where, "", f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, "", f"not valid TOML: {exc}") from exc
    reader = _Reader(where, path.parent)
    mqtt = reader.table(doc, "mqtt")
    kinesis = reader.table(doc, "kinesis")
    bridge = reader.table(doc, "bridge", required=False)
    topics = reader.value(mqtt, "mqtt.topics", list, [SUBSCRIPTION_TELEMETRY, SUBSCRIPTION_EVENTS])
    if not topics or not all(isinstance(t, str) and t for t in topics):
        raise ConfigError(where, "mqtt.topics", "expected a non-empty list of topic filters")
    max_records = reader.value(kinesis, "kinesis.max_records", int, PUT_RECORDS_MAX_RECORDS)
    max_bytes = reader.value(kinesis, "kinesis.max_bytes", int, PUT_RECORDS_MAX_BYTES)
    if not 1 <= max_records <= PUT_RECORDS_MAX_RECORDS:
        raise ConfigError(
            where, "kinesis.max_records", f"must be 1..{PUT_RECORDS_MAX_RECORDS} (PutRecords limit)"
        )
    if not 1024 <= max_bytes <= PUT_RECORDS_MAX_BYTES:
        raise ConfigError(
            where, "kinesis.max_bytes", f"must be 1024..{PUT_RECORDS_MAX_BYTES} (PutRecords limit)"
        )
    log_level = reader.value(bridge, "bridge.log_level", str, "info").lower()
    if log_level not in _LOG_LEVELS:
        raise ConfigError(where, "bridge.log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    status_file = reader.value(bridge, "bridge.status_file", str, "")
    return BridgeConfig(
        mqtt=MqttConfig(
            host=reader.value(mqtt, "mqtt.host", str),
            port=reader.port(mqtt, "mqtt.port"),
            ca_file=reader.file(mqtt, "mqtt.ca_file"),
            cert_file=reader.file(mqtt, "mqtt.cert_file"),
            key_file=reader.file(mqtt, "mqtt.key_file"),
            client_id=reader.value(mqtt, "mqtt.client_id", str, "meterlink-bridge"),
            topics=tuple(topics),
            keepalive_s=reader.value(mqtt, "mqtt.keepalive_s", int, 30),
            session_expiry_s=reader.value(mqtt, "mqtt.session_expiry_s", int, 7 * 24 * 3600),
            receive_maximum=reader.value(mqtt, "mqtt.receive_maximum", int, 1000),
        ),
        kinesis=KinesisConfig(
            stream=reader.value(kinesis, "kinesis.stream", str),
            region=reader.value(kinesis, "kinesis.region", str),
            endpoint_url=reader.value(kinesis, "kinesis.endpoint_url", str, "") or None,
            max_records=max_records,
            max_bytes=max_bytes,
            linger_ms=reader.value(kinesis, "kinesis.linger_ms", int, 50),
            max_backoff_s=float(reader.value(kinesis, "kinesis.max_backoff_s", (int, float), 5.0)),
        ),
        status_file=reader.resolve(status_file) if status_file else None,
        log_level=log_level,
    )


class _Reader:
    """Pulls typed values out of parsed TOML, naming the file and key in every error."""

    _MISSING: Any = object()

    def __init__(self, where: str, base: Path) -> None:
        self.where = where
        self.base = base

    def table(self, doc: dict[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
        value = doc.get(key)
        if value is None:
            if required:
                raise ConfigError(self.where, f"[{key}]", "missing table")
            return {}
        if not isinstance(value, dict):
            raise ConfigError(self.where, f"[{key}]", "expected a table")
        return value

    def value(self, table: dict[str, Any], key: str, kind: Any, default: Any = _MISSING) -> Any:
        name = key.rsplit(".", 1)[-1]
        if name not in table:
            if default is self._MISSING:
                raise ConfigError(self.where, key, "missing")
            return default
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else "a number"
            raise ConfigError(self.where, key, f"expected {expected}, got {value!r}")
        return value

    def port(self, table: dict[str, Any], key: str) -> int:
        port: int = self.value(table, key, int)
        if not 1 <= port <= 65535:
            raise ConfigError(self.where, key, f"not a TCP port: {port}")
        return port

    def file(self, table: dict[str, Any], key: str) -> Path:
        path = self.resolve(self.value(table, key, str))
        if not path.is_file():
            raise ConfigError(self.where, key, f"no such file: {path}")
        return path

    def resolve(self, text: str) -> Path:
        """Relative paths are relative to the config file, so a config folder can be moved."""
        path = Path(text).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()
