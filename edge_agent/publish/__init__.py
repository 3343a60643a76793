"""The MQTT publisher: drains the durable outbox to AWS IoT Core (or the local mosquitto).

`Publisher` owns the policy (limits, acks, backoff, status, rotation); a `Transport` is one MQTT
connection through paho-mqtt (`paho`) or the AWS IoT Device SDK (`awsiot`).
"""

from edge_agent.publish.backoff import Backoff, TokenBucket
from edge_agent.publish.publisher import (
    Outbox,
    PendingMessage,
    Publisher,
    PublishSettings,
    RotationResult,
)
from edge_agent.publish.transport import (
    ConnectionLost,
    ConnectionSpec,
    Credentials,
    PublishOutcome,
    Transport,
    TransportFactory,
    Will,
)

__all__ = [
    "Backoff",
    "ConnectionLost",
    "ConnectionSpec",
    "Credentials",
    "Outbox",
    "PendingMessage",
    "PublishOutcome",
    "PublishSettings",
    "Publisher",
    "RotationResult",
    "TokenBucket",
    "Transport",
    "TransportFactory",
    "Will",
]
