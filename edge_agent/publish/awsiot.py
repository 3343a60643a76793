"""The AWS IoT Device SDK transport: awscrt's MQTT 5 client, built by `mtls_from_bytes`.

awscrt reconnects on its own. We stop the client on its first connection failure or
disconnection, so every CONNECT is one the publisher chose (IoT Core allows one per second per
client id). Its IoT Core flow-control defaults stay on as a second guard on rate and size.
MQTT 3.1.1 is not offered here: the paho transport covers it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from edge_agent.errors import PublishError
from edge_agent.publish.transport import (
    ConnectionLost,
    ConnectionSpec,
    PublishOutcome,
    check_qos,
    reason_name,
    tls_context,
)

log = logging.getLogger("edge_agent.publish.awsiot")

_STOP_TIMEOUT_S = 5.0
# awscrt must never reconnect by itself; we stop it first, and this is the belt to those braces.
_NEVER_MS = 3_600_000


def _crt_reason(exc: BaseException | None) -> str:
    """Short reason from an AwsCrtError name, e.g. AWS_IO_TLS_ERROR_READ_FAILURE -> tls_rejected."""
    name = str(getattr(exc, "name", "") or type(exc).__name__)
    if name == "AWS_IO_SOCKET_CONNECTION_REFUSED":
        return "unreachable"
    if name.startswith("AWS_IO_TLS"):
        # awscrt reports a refused client certificate as a failed TLS read.
        return "tls_rejected"
    return name.removeprefix("AWS_ERROR_").removeprefix("AWS_").lower() or "unknown"


class AwsIotTransport:
    """One MQTT 5 connection through awscrt; see `edge_agent.publish.transport.Transport`."""

    def __init__(self, spec: ConnectionSpec, on_lost: Callable[[ConnectionLost], None]) -> None:
        if spec.protocol != "mqtt5":
            raise ValueError("the awsiot transport speaks MQTT 5 only; use transport 'paho'")
        self._spec = spec
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._settled = threading.Event()
        self._stopped = threading.Event()
        self._refused: PublishError | None = None
        self._connected = False
        self._closing = False
        self._stop_requested = False
        self._pending: set[Future[PublishOutcome]] = set()
        self._client: Any = None

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        spec = self._spec
        # awscrt's own error for a bad key is an opaque AWS_IO_TLS_CTX_ERROR; ssl names it.
        tls_context(spec.credentials)
        will = None
        if spec.will is not None:
            will = mqtt5.PublishPacket(
                topic=spec.will.topic,
                payload=spec.will.payload,
                qos=mqtt5.QoS.AT_LEAST_ONCE,
                retain=True,
            )
        try:
            # From the bytes in memory (see Credentials), not from the files.
            self._client = mqtt5_client_builder.mtls_from_bytes(
                endpoint=spec.host,
                port=spec.port,
                cert_bytes=spec.credentials.cert_pem,
                pri_key_bytes=spec.credentials.key_pem,
                ca_bytes=spec.credentials.ca_pem,
                client_id=spec.client_id,
                keep_alive_interval_sec=spec.keepalive_s,
                # awscrt insists that the keepalive exceeds the ping timeout by a second.
                ping_timeout_ms=max(1000, min(30_000, (spec.keepalive_s - 1) * 500)),
                connack_timeout_ms=int(spec.connect_timeout_s * 1000),
                session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
                offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
                min_reconnect_delay_ms=_NEVER_MS,
                max_reconnect_delay_ms=_NEVER_MS,
                will=will,
                enable_metrics_collection=False,
                on_lifecycle_connection_success=self._on_success,
                on_lifecycle_connection_failure=self._on_failure,
                on_lifecycle_disconnection=self._on_disconnection,
                on_lifecycle_stopped=self._on_stopped,
            )
        except (RuntimeError, OSError) as exc:
            raise PublishError("bad_cert_or_key", retriable=False) from exc
        self._client.start()
        if not self._settled.wait(spec.connect_timeout_s):
            self.disconnect()
            raise PublishError("connect_timeout")
        if self._refused is not None:
            self._stopped.wait(_STOP_TIMEOUT_S)
            raise self._refused

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> Future[PublishOutcome]:
        check_qos(qos)
        future: Future[PublishOutcome] = Future()
        if not self._connected:
            future.set_exception(PublishError("not_connected"))
            return future
        with self._lock:
            self._pending.add(future)
        packet = mqtt5.PublishPacket(
            topic=topic, payload=payload, qos=mqtt5.QoS(qos), retain=retain
        )
        self._client.publish(packet).add_done_callback(lambda done: self._complete(future, done))
        return future

    def disconnect(self) -> None:
        self._closing = True
        if self._client is not None:
            self._stop(mqtt5.DisconnectPacket())
            self._stopped.wait(_STOP_TIMEOUT_S)
        self._connected = False
        self._fail_pending("closed")

    def _stop(self, packet: mqtt5.DisconnectPacket | None = None) -> None:
        """Stop the client once; it is safe to call from awscrt's own callbacks."""
        with self._lock:
            if self._stop_requested:
                return
            self._stop_requested = True
        self._client.stop(packet)

    def _complete(self, future: Future[PublishOutcome], done: Future[Any]) -> None:
        with self._lock:
            if future not in self._pending:
                return  # already failed by a disconnect
            self._pending.discard(future)
        exc = done.exception()
        if exc is not None:
            future.set_exception(PublishError(_crt_reason(exc)))
            return
        puback = done.result().puback
        code = 0 if puback is None or puback.reason_code is None else int(puback.reason_code)
        future.set_result(PublishOutcome(code))

    def _on_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        self._connected = True
        self._settled.set()

    def _on_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        self._stop()
        connack = data.connack_packet
        code = int(connack.reason_code or 0) if connack is not None else 0
        if code:
            self._refused = PublishError(f"connect_refused_{reason_name(code)}", code=code)
        else:
            self._refused = PublishError(_crt_reason(data.exception))
        self._settled.set()

    def _on_disconnection(self, data: mqtt5.LifecycleDisconnectData) -> None:
        was_connected = self._connected
        self._connected = False
        self._stop()
        self._fail_pending("connection_lost")
        if self._closing or not was_connected:
            return
        packet = data.disconnect_packet
        if packet is not None and packet.reason_code is not None:
            code = int(packet.reason_code)
            self._on_lost(ConnectionLost(reason=reason_name(code), code=code))
        else:
            self._on_lost(ConnectionLost(reason=_crt_reason(data.exception)))

    def _on_stopped(self, data: mqtt5.LifecycleStoppedData) -> None:
        self._stopped.set()

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        for future in pending:
            future.set_exception(PublishError(reason))
