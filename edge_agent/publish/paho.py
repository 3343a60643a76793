"""The paho-mqtt 2.x transport: MQTT 5 or 3.1.1 over mutual TLS, one paho client per connection.

paho's own reconnect is switched off (`reconnect_on_failure=False`): when the connection ends the
network thread exits and the publisher decides when to connect again. Sessions are clean; the
publisher resends unacknowledged messages from its outbox, so no broker-side session is needed.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import PublishError
from edge_agent.publish.transport import (
    ConnectionLost,
    ConnectionSpec,
    PublishOutcome,
    check_qos,
    reason_name,
    tls_context,
    tls_reason,
)

log = logging.getLogger("edge_agent.publish.paho")

# paho queues beyond its own in-flight window; the publisher keeps its window (<= 100, IoT Core's
# limit) itself, so paho's must never be the smaller one.
_PAHO_MAX_INFLIGHT = 100


class PahoTransport:
    """One MQTT connection through paho-mqtt; see `edge_agent.publish.transport.Transport`."""

    def __init__(self, spec: ConnectionSpec, on_lost: Callable[[ConnectionLost], None]) -> None:
        self._spec = spec
        self._on_lost = on_lost
        self._mqtt5 = spec.protocol == "mqtt5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=spec.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._mqtt5 else True,
            reconnect_on_failure=False,
        )
        self._client.connect_timeout = spec.connect_timeout_s
        self._client.max_inflight_messages_set(_PAHO_MAX_INFLIGHT)
        if spec.will is not None:
            self._client.will_set(spec.will.topic, spec.will.payload, qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._lock = threading.Lock()
        self._connack = threading.Event()
        self._refused: PublishError | None = None
        self._connected = False
        self._closing = False
        # mid -> future, and PUBACKs that arrived before publish() registered their mid.
        self._pending: dict[int, Future[PublishOutcome]] = {}
        self._early: dict[int, PublishOutcome] = {}

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._client.tls_set_context(tls_context(self._spec.credentials))
        try:
            # TCP connect and (on our side) the TLS handshake happen here, synchronously.
            if self._mqtt5:
                self._client.connect(
                    self._spec.host,
                    self._spec.port,
                    keepalive=self._spec.keepalive_s,
                    clean_start=True,
                    properties=Properties(PacketTypes.CONNECT),  # type: ignore[no-untyped-call]
                )
            else:
                self._client.connect(
                    self._spec.host, self._spec.port, keepalive=self._spec.keepalive_s
                )
        except ssl.SSLError as exc:
            raise PublishError(tls_reason(exc)) from exc
        except OSError as exc:
            raise PublishError("unreachable") from exc
        self._client.loop_start()
        # With TLS 1.3 a refused client certificate shows up only now, as a closed connection.
        if not self._connack.wait(self._spec.connect_timeout_s):
            self.disconnect()
            raise PublishError("connect_timeout")
        if self._refused is not None:
            self.disconnect()
            raise self._refused

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> Future[PublishOutcome]:
        check_qos(qos)
        future: Future[PublishOutcome] = Future()
        if not self._connected:
            future.set_exception(PublishError("not_connected"))
            return future
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            future.set_exception(PublishError(paho.error_string(info.rc)))
            return future
        # The PUBACK may already have been handled on the network thread; never hold our lock
        # while calling paho (paho calls on_publish holding its own message lock).
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = future
        if early is not None:
            future.set_result(early)
        return future

    def disconnect(self) -> None:
        self._closing = True
        # paho closes the socket once DISCONNECT is written, then its network thread ends;
        # on a connection that is already gone this is a no-op.
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = False
        self._fail_pending("closed")

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._refused = PublishError(
                f"connect_refused_{reason_name(reason.value)}", code=reason.value
            )
        else:
            self._connected = True
        self._connack.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected
        self._connected = False
        self._fail_pending("connection_lost")
        if not self._connack.is_set():
            self._refused = PublishError("closed_before_connack")
            self._connack.set()
            return
        if self._closing or not was_connected:
            return
        # Without a DISCONNECT packet paho reports "Unspecified error": the socket just closed.
        code = reason.value if flags.is_disconnect_packet_from_server else None
        lost = ConnectionLost(
            reason=reason_name(code) if code is not None else "connection_closed", code=code
        )
        self._on_lost(lost)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # MQTT 3.1.1 has no PUBACK reason: paho reports success (0).
        outcome = PublishOutcome(reason.value if self._mqtt5 else 0)
        with self._lock:
            future = self._pending.pop(mid, None)
            if future is None:
                self._early[mid] = outcome
        if future is not None:
            future.set_result(outcome)

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
            self._early.clear()
        for future in pending:
            if not future.done():
                future.set_exception(PublishError(reason))
