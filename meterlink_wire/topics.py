"""MQTT topics, after the AWS IoT topic design: ``dt/meterlink/<gateway_id>/<kind>``.

``dt`` marks data telemetry; the gateway id is the third level so an IoT policy (or a mosquitto
``pattern write dt/meterlink/%u/#`` ACL) can confine each gateway to its own topics, and an IoT rule
can use ``topic(3)`` as the Kinesis partition key.
"""

from __future__ import annotations

from enum import StrEnum

from meterlink_wire.errors import Reason, WireError, show
from meterlink_wire.vocab import validate_gateway_id

TOPIC_ROOT = "dt/meterlink"


class TopicKind(StrEnum):
    """Last topic level: what the messages on the topic carry."""

    TELEMETRY = "telemetry"  # window batches
    EVENTS = "events"  # priority events, published ahead of telemetry
    STATUS = "status"  # online/offline and health, retained (also the MQTT will)


SUBSCRIPTION_TELEMETRY = f"{TOPIC_ROOT}/+/{TopicKind.TELEMETRY}"
SUBSCRIPTION_EVENTS = f"{TOPIC_ROOT}/+/{TopicKind.EVENTS}"
SUBSCRIPTION_STATUS = f"{TOPIC_ROOT}/+/{TopicKind.STATUS}"
SUBSCRIPTION_ALL = f"{TOPIC_ROOT}/+/+"


def topic_for(gateway_id: str, kind: TopicKind | str) -> str:
    """Return the topic a gateway publishes ``kind`` messages to.

    ``kind`` may be a :class:`TopicKind` or its value (a batch's ``Kind`` works as is).
    Raises WireError: bad_id for the gateway id, bad_topic for an unknown kind.
    """
    validate_gateway_id(gateway_id)
    try:
        topic_kind = TopicKind(kind)
    except ValueError:
        raise WireError(Reason.BAD_TOPIC, f"unknown topic kind {show(kind)}") from None
    return f"{TOPIC_ROOT}/{gateway_id}/{topic_kind}"


def parse_topic(topic: str) -> tuple[str, TopicKind]:
    """Split a topic into ``(gateway_id, kind)``; WireError(bad_topic) if it is not one of ours."""
    if not isinstance(topic, str):
        raise WireError(Reason.BAD_TOPIC, f"topic must be a string, got {show(topic)}")
    prefix = TOPIC_ROOT + "/"
    parts = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
    if len(parts) != 2:
        raise WireError(Reason.BAD_TOPIC, f"not {TOPIC_ROOT}/<gateway_id>/<kind>: {show(topic)}")
    gateway_id, kind = parts
    try:
        validate_gateway_id(gateway_id)
        return gateway_id, TopicKind(kind)
    except WireError as exc:
        raise WireError(Reason.BAD_TOPIC, f"{exc.detail} in topic {show(topic)}") from exc
    except ValueError:
        raise WireError(Reason.BAD_TOPIC, f"unknown kind {show(kind)} in {show(topic)}") from None
