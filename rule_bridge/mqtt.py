"""The MQTT source: a persistent-session subscriber that acknowledges only when told to.

Messages are received with manual acknowledgement, so the broker keeps every message until the
bridge has handed it to Kinesis. After a reconnect the broker redelivers whatever was not
acknowledged; packet ids from the old connection are never acknowledged on the new one.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from rule_bridge.config import MqttConfig

log = logging.getLogger("rule_bridge.mqtt")


@dataclass(frozen=True)
class InboundMessage:
    """A received PUBLISH that is not acknowledged yet."""

    topic: str
    payload: bytes
    mid: int
    connection: int


class MqttSource:
    """Receives QoS 1 messages into a queue that the bridge drains in batches."""

    def __init__(self, config: MqttConfig) -> None:
        self._config = config
        self._queue: queue.Queue[InboundMessage] = queue.Queue()
        self._connection = 0
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.reconnects = 0
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        self._client.tls_set_context(_tls_context(config))
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background; paho's loop thread reconnects with backoff."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._config.session_expiry_s
        props.ReceiveMaximum = self._config.receive_maximum
        self._client.connect_async(
            self._config.host,
            self._config.port,
            keepalive=self._config.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def take(self, max_records: int, max_bytes: int, linger_s: float) -> list[InboundMessage]:
        """Up to `max_records`/`max_bytes` of messages, waiting at most `linger_s` for each.

        It waits `linger_s` for the first, then takes what arrives within `linger_s` of it,
        so a quiet stream is not delayed and a busy one fills whole PutRecords calls.
        """
        try:
            first = self._queue.get(timeout=linger_s)
        except queue.Empty:
            return []
        batch, size = [first], len(first.payload)
        deadline = time.monotonic() + linger_s
        while len(batch) < max_records:
            remaining = deadline - time.monotonic()
            try:
                message = (
                    self._queue.get(timeout=max(remaining, 0))
                    if remaining > 0
                    else (self._queue.get_nowait())
                )
            except queue.Empty:
                break
            if size + len(message.payload) > max_bytes:
                self._requeue_front(message)
                break
            batch.append(message)
            size += len(message.payload)
        return [m for m in batch if m.connection == self._connection]

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        """PUBACK `messages` in the order received; returns how many were acknowledged.

        Messages from an earlier connection are skipped: their packet ids mean nothing now,
        and the broker redelivers them (at-least-once; the consumer dedupes by sequence).
        """
        acked = 0
        with self._lock:
            current = self._connection
            for message in messages:
                if message.connection == current:
                    self._client.ack(message.mid, 1)
                    acked += 1
        return acked

    def close(self) -> None:
        """Disconnect cleanly; unacknowledged messages stay in the broker's session."""
        self._client.disconnect()
        self._client.loop_stop()

    def _requeue_front(self, message: InboundMessage) -> None:
        # queue.Queue has no push-front; its deque does, under the queue's own mutex.
        with self._queue.mutex:
            self._queue.queue.appendleft(message)
            self._queue.not_empty.notify()

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("connect_refused reason=%s", reason)
            return
        with self._lock:
            self._connection += 1
        log.info("connected session_present=%s", flags.session_present)
        # Re-subscribing is harmless with a present session and required without one.
        client.subscribe([(topic, 1) for topic in self._config.topics])
        self.connected.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        with self._lock:
            self._connection += 1
        self.reconnects += 1
        self._drop_stale()
        log.warning("disconnected reason=%s", reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._queue.put(
            InboundMessage(
                topic=message.topic,
                payload=bytes(message.payload),
                mid=message.mid,
                connection=self._connection,
            )
        )

    def _drop_stale(self) -> None:
        """Forget queued messages of a dead connection; the broker will send them again."""
        with self._queue.mutex:
            kept = [m for m in self._queue.queue if m.connection == self._connection]
            self._queue.queue.clear()
            self._queue.queue.extend(kept)


def _tls_context(config: MqttConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.cert_file), str(config.key_file))
    return context
