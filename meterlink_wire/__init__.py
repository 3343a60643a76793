"""MeterLink wire contract v1: topics, vocabulary, the columnar batch and its codec.

Shared by the edge agent, simulator, rule bridge and cloud consumer. See docs/wire-format.md.
"""

from meterlink_wire.batch import (
    MAX_SEQUENCE,
    MAX_TIMESTAMP_MS,
    MAX_WINDOW_S,
    Kind,
    ReadingBatch,
    WindowRow,
)
from meterlink_wire.codec import (
    BILLING_UNIT_BYTES,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_INFLATED_BYTES,
    IOT_CORE_MAX_BYTES,
    WIRE_VERSION,
    billing_units,
    decode,
    encode,
    encode_split,
    is_compressed,
)
from meterlink_wire.errors import Reason, WireError
from meterlink_wire.status import GatewayState, GatewayStatus, decode_status, encode_status
from meterlink_wire.topics import (
    SUBSCRIPTION_ALL,
    SUBSCRIPTION_EVENTS,
    SUBSCRIPTION_STATUS,
    SUBSCRIPTION_TELEMETRY,
    TOPIC_ROOT,
    TopicKind,
    parse_topic,
    topic_for,
)
from meterlink_wire.vocab import (
    CHANNEL_KNOWN,
    CHANNEL_NAMES,
    UNIT_KNOWN,
    UNIT_NAMES,
    Channel,
    Unit,
    validate_event_reason,
    validate_gateway_id,
    validate_meter_id,
)

__all__ = [
    "BILLING_UNIT_BYTES",
    "CHANNEL_KNOWN",
    "CHANNEL_NAMES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_INFLATED_BYTES",
    "IOT_CORE_MAX_BYTES",
    "MAX_SEQUENCE",
    "MAX_TIMESTAMP_MS",
    "MAX_WINDOW_S",
    "SUBSCRIPTION_ALL",
    "SUBSCRIPTION_EVENTS",
    "SUBSCRIPTION_STATUS",
    "SUBSCRIPTION_TELEMETRY",
    "TOPIC_ROOT",
    "UNIT_KNOWN",
    "UNIT_NAMES",
    "WIRE_VERSION",
    "Channel",
    "GatewayState",
    "GatewayStatus",
    "Kind",
    "ReadingBatch",
    "Reason",
    "TopicKind",
    "Unit",
    "WindowRow",
    "WireError",
    "billing_units",
    "decode",
    "decode_status",
    "encode",
    "encode_split",
    "encode_status",
    "is_compressed",
    "parse_topic",
    "topic_for",
    "validate_event_reason",
    "validate_gateway_id",
    "validate_meter_id",
]
