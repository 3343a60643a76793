"""The agent's configuration: read once from TOML at start-up, validated, passed in typed.

`edge-agent --check-config` runs exactly this and nothing else. Every error names the file and
the key (`/etc/meterlink/edge-agent.toml: publish.port: expected int, got '8883'`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.priority import DEFAULT_THRESHOLDS, Threshold
from edge_agent.publish.publisher import PublishSettings
from edge_agent.sources.modbus import ModbusSettings, RegisterSpec
from edge_agent.sources.mqtt import FieldMapping, LocalMqttSettings
from meterlink_config import ConfigError, TomlReader
from meterlink_wire import (
    DEFAULT_MAX_BYTES,
    IOT_CORE_MAX_BYTES,
    Channel,
    Unit,
    WireError,
    validate_event_reason,
    validate_gateway_id,
)

__all__ = ["AgentConfig", "ConfigError", "load_config"]

#: IoT Core limits the publisher must stay within.
MAX_INFLIGHT = 100
MAX_PUBLISH_PER_S = 100
_FULL_POLICIES = ("drop_oldest", "refuse_newest")
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class WindowSettings:
    """Tumbling windows per meter and channel; 0 passes raw readings through."""

    size_s: int = 60
    allowed_lateness_s: float = 10.0


@dataclass(frozen=True)
class BufferSettings:
    """Where the durable buffer lives, how big it may grow, and what happens when it is full."""

    path: Path
    max_bytes: int = 256 * 1024 * 1024
    when_full: str = "drop_oldest"
    synchronous: str = "full"


@dataclass(frozen=True)
class SocketSettings:
    """The Unix-domain socket that accepts JSON lines."""

    path: Path
    mode: int = 0o660


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs, validated."""

    source_file: Path
    gateway_id: str
    windows: WindowSettings
    buffer: BufferSettings
    publish: PublishSettings
    max_message_bytes: int = DEFAULT_MAX_BYTES
    compress: bool = False
    socket: SocketSettings | None = None
    local_mqtt: LocalMqttSettings | None = None
    modbus: ModbusSettings | None = None
    thresholds: tuple[Threshold, ...] = field(default=DEFAULT_THRESHOLDS)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_level: str = "info"
    drain_timeout_s: float = 10.0
    cert_check_interval_s: float = 30.0


def load_config(path: Path) -> AgentConfig:
    """Read and validate the agent's TOML config; raises ConfigError naming file and key."""
    toml = TomlReader(path)
    try:
        gateway_id = validate_gateway_id(toml.get("gateway.id", str))
    except WireError as exc:
        raise toml.error("gateway.id", exc.detail) from None

    max_message_bytes = toml.integer(
        "publish.max_message_bytes", DEFAULT_MAX_BYTES, low=1024, high=IOT_CORE_MAX_BYTES
    )
    return AgentConfig(
        source_file=path,
        gateway_id=gateway_id,
        windows=WindowSettings(
            size_s=toml.integer("windows.size_s", 60, low=0, high=86_400),
            allowed_lateness_s=toml.number("windows.allowed_lateness_s", 10.0, low=0, high=3600),
        ),
        buffer=BufferSettings(
            path=toml.resolve(toml.get("buffer.path", str, "/var/lib/meterlink/buffer.db")),
            max_bytes=toml.integer("buffer.max_bytes", 256 * 1024 * 1024, low=1024 * 1024),
            when_full=toml.choice("buffer.when_full", _FULL_POLICIES, "drop_oldest"),
            synchronous=toml.choice("buffer.synchronous", ("full", "normal"), "full"),
        ),
        publish=_publish(toml),
        max_message_bytes=max_message_bytes,
        compress=toml.get("publish.compress", bool, False),
        socket=_socket(toml),
        local_mqtt=_local_mqtt(toml),
        modbus=_modbus(toml),
        thresholds=_thresholds(toml),
        metrics_port=toml.integer("metrics.port", 0, low=0, high=65535) or None,
        metrics_host=toml.get("metrics.host", str, "127.0.0.1"),
        log_level=toml.choice("log.level", _LOG_LEVELS, "info"),
        drain_timeout_s=toml.number("publish.drain_timeout_s", 10.0, low=0, high=600),
        cert_check_interval_s=toml.number("publish.cert_check_interval_s", 30.0, low=1),
    )


def _publish(toml: TomlReader) -> PublishSettings:
    return PublishSettings(
        host=toml.get("publish.endpoint", str),
        port=toml.integer("publish.port", 8883, low=1, high=65535),
        ca_file=toml.file("publish.ca_file"),
        cert_file=toml.file("publish.cert_file"),
        key_file=toml.file("publish.key_file"),
        transport=toml.choice("publish.transport", ("paho", "awsiot"), "paho"),  # type: ignore[arg-type]
        protocol=toml.choice("publish.protocol", ("mqtt5", "mqtt311"), "mqtt5"),  # type: ignore[arg-type]
        keepalive_s=toml.integer("publish.keepalive_s", 60, low=5, high=1200),
        max_inflight=toml.integer("publish.max_inflight", MAX_INFLIGHT, low=1, high=MAX_INFLIGHT),
        max_publish_per_s=toml.number(
            "publish.max_publish_per_s", MAX_PUBLISH_PER_S, low=0.1, high=MAX_PUBLISH_PER_S
        ),
        replay_rate_per_s=toml.number(
            "publish.replay_rate_per_s", 20.0, low=0.1, high=MAX_PUBLISH_PER_S
        ),
        backoff_min_s=toml.number("publish.backoff_min_s", 1.0, low=1.0),
        backoff_max_s=toml.number("publish.backoff_max_s", 120.0, low=1.0),
        status_interval_s=toml.number("publish.status_interval_s", 300.0, low=1.0),
    )


def _socket(toml: TomlReader) -> SocketSettings | None:
    if not toml.has("sources.socket") or not toml.get("sources.socket.enabled", bool, True):
        return None
    return SocketSettings(path=toml.resolve(toml.get("sources.socket.path", str)))


def _local_mqtt(toml: TomlReader) -> LocalMqttSettings | None:
    if not toml.has("sources.mqtt") or not toml.get("sources.mqtt.enabled", bool, True):
        return None
    specs = {
        name: toml.get(f"sources.mqtt.mapping.{name}", str, f"json:{name}")
        for name in ("meter", "channel", "unit", "value", "ts")
    }
    try:
        mapping = FieldMapping(**specs)
    except ValueError as exc:
        raise toml.error("sources.mqtt.mapping", str(exc)) from None
    cert = toml.get("sources.mqtt.cert_file", str, "")
    key = toml.get("sources.mqtt.key_file", str, "")
    ca = toml.get("sources.mqtt.ca_file", str, "")
    try:
        return LocalMqttSettings(
            host=toml.get("sources.mqtt.host", str, "127.0.0.1"),
            port=toml.integer("sources.mqtt.port", 1883, low=1, high=65535),
            topic=toml.get("sources.mqtt.topic", str),
            client_id=toml.get("sources.mqtt.client_id", str, "meterlink-edge-agent"),
            mapping=mapping,
            qos=toml.integer("sources.mqtt.qos", 1, low=0, high=1),
            username=toml.get("sources.mqtt.username", str, "") or None,
            password=toml.get("sources.mqtt.password", str, "") or None,
            ca_file=toml.file("sources.mqtt.ca_file") if ca else None,
            cert_file=toml.file("sources.mqtt.cert_file") if cert else None,
            key_file=toml.file("sources.mqtt.key_file") if key else None,
            protocol=toml.choice("sources.mqtt.protocol", ("3.1.1", "5"), "5"),
        )
    except ValueError as exc:
        raise toml.error("sources.mqtt", str(exc)) from None


def _modbus(toml: TomlReader) -> ModbusSettings | None:
    if not toml.has("sources.modbus") or not toml.get("sources.modbus.enabled", bool, True):
        return None
    registers = []
    for i, spec in enumerate(toml.tables("sources.modbus.registers")):
        key = f"sources.modbus.registers[{i}]"
        try:
            registers.append(
                RegisterSpec(
                    meter=str(spec["meter"]),
                    channel=Channel.from_wire(spec["channel"]),
                    unit=Unit.from_wire(spec["unit"]),
                    address=int(spec["address"]),
                    dtype=str(spec.get("dtype", "uint16")),
                    kind=str(spec.get("kind", "holding")),
                    word_order=str(spec.get("word_order", "big")),
                    scale=float(spec.get("scale", 1.0)),
                    device_id=int(spec.get("device_id", 1)),
                )
            )
        except KeyError as exc:
            raise toml.error(f"{key}.{exc.args[0]}", "missing") from None
        except (WireError, ValueError, TypeError) as exc:
            raise toml.error(key, str(exc)) from None
    if not registers:
        raise toml.error("sources.modbus.registers", "at least one register is needed")
    return ModbusSettings(
        host=toml.get("sources.modbus.host", str),
        port=toml.integer("sources.modbus.port", 502, low=1, high=65535),
        poll_s=toml.number("sources.modbus.poll_s", 15.0, low=0.1),
        registers=tuple(registers),
    )


def _thresholds(toml: TomlReader) -> tuple[Threshold, ...]:
    if not toml.has("priority"):
        return DEFAULT_THRESHOLDS
    if not toml.get("priority.enabled", bool, True):
        return ()
    out = []
    for i, spec in enumerate(toml.tables("priority.thresholds")):
        key = f"priority.thresholds[{i}]"
        try:
            above = spec.get("above")
            below = spec.get("below")
            if above is None and below is None:
                raise ValueError("needs 'above' or 'below'")
            out.append(
                Threshold(
                    reason=validate_event_reason(spec["reason"]),
                    channel=Channel.from_wire(spec["channel"]),
                    above=None if above is None else float(above),
                    below=None if below is None else float(below),
                )
            )
        except KeyError as exc:
            raise toml.error(f"{key}.{exc.args[0]}", "missing") from None
        except (WireError, ValueError, TypeError) as exc:
            raise toml.error(key, str(exc)) from None
    return tuple(out) or DEFAULT_THRESHOLDS
