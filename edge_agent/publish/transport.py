"""What the publisher needs from an MQTT client, whichever library implements it.

A transport is one connection: `connect()` once, publish on it, and when it is lost it says so
through `on_lost` and is thrown away. Reconnecting, backoff and resending belong to the publisher,
so neither library's own reconnect logic ever runs (each would fight our CONNECT rate limit).

The TLS helpers here are shared by both transports and by certificate rotation: they turn
`ssl` failures into the short reasons used in metrics, logs and `RotationResult`.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from edge_agent.errors import PublishError

MqttProtocol = Literal["mqtt5", "mqtt311"]

#: MQTT 5 DISCONNECT reason "session taken over": another client connected with our client id.
SESSION_TAKEN_OVER = 0x8E

# PUBACK and CONNACK reason codes (MQTT 5 section 2.4), named once for metrics and logs.
# Below 0x80 is success: 0x10 "no matching subscribers" still means the broker took the message.
_REASON_NAMES = {
    0x00: "success",
    0x10: "no_matching_subscribers",
    0x80: "unspecified_error",
    0x81: "malformed_packet",
    0x82: "protocol_error",
    0x83: "implementation_specific_error",
    0x84: "unsupported_protocol_version",
    0x85: "client_identifier_not_valid",
    0x86: "bad_username_or_password",
    0x87: "not_authorized",
    0x88: "server_unavailable",
    0x89: "server_busy",
    0x8A: "banned",
    0x8C: "bad_authentication_method",
    0x8E: "session_taken_over",
    0x90: "topic_name_invalid",
    0x91: "packet_identifier_in_use",
    0x95: "packet_too_large",
    0x97: "quota_exceeded",
    0x99: "payload_format_invalid",
    0x9F: "connection_rate_exceeded",
}

# OpenSSL reasons for a refused handshake, as the short words operators and metrics see.
_TLS_REASONS = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "revoked",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "certificate_required",
    "CERTIFICATE_VERIFY_FAILED": "server_untrusted",
    "KEY_VALUES_MISMATCH": "key_mismatch",
}


def reason_name(code: int) -> str:
    """Name of an MQTT 5 reason code, e.g. ``not_authorized`` for 0x87."""
    return _REASON_NAMES.get(code, f"reason_0x{code:02x}")


@dataclass(frozen=True)
class Credentials:
    """A client identity read into memory: the CA that signs the broker, our cert and key (PEM).

    Connections use these bytes, never the files again, so replacing the files on disk (which is
    how a new certificate arrives) cannot change the identity of a reconnect until `rotate`
    has proven the new pair. The paths are kept for logs.
    """

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def load(cls, ca_file: Path, cert_file: Path, key_file: Path) -> Credentials:
        """Read the three files; PublishError(unreadable) if one cannot be read."""
        try:
            return cls(
                ca_pem=Path(ca_file).read_bytes(),
                cert_pem=Path(cert_file).read_bytes(),
                key_pem=Path(key_file).read_bytes(),
                ca_file=Path(ca_file),
                cert_file=Path(cert_file),
                key_file=Path(key_file),
            )
        except OSError as exc:
            raise PublishError("unreadable", retriable=False) from exc

    def with_identity(self, cert_file: Path, key_file: Path) -> Credentials:
        """The same CA with a new certificate and key read from these files."""
        try:
            cert_pem, key_pem = Path(cert_file).read_bytes(), Path(key_file).read_bytes()
        except OSError as exc:
            raise PublishError("unreadable", retriable=False) from exc
        return replace(
            self,
            cert_pem=cert_pem,
            key_pem=key_pem,
            cert_file=Path(cert_file),
            key_file=Path(key_file),
        )


@dataclass(frozen=True)
class Will:
    """The last will: retained at QoS 1, published by the broker if we vanish without DISCONNECT."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class ConnectionSpec:
    """Everything a transport needs for one connection."""

    host: str
    port: int
    client_id: str
    credentials: Credentials
    protocol: MqttProtocol
    keepalive_s: int
    connect_timeout_s: float
    will: Will | None = None


@dataclass(frozen=True)
class PublishOutcome:
    """How the broker answered one publish: the PUBACK reason code (always 0 for MQTT 3.1.1)."""

    code: int

    @property
    def ok(self) -> bool:
        """True for 0x00 and 0x10 (no matching subscribers): the broker accepted the message."""
        return self.code < 0x80

    @property
    def reason(self) -> str:
        return reason_name(self.code)


@dataclass(frozen=True)
class ConnectionLost:
    """Why an established connection ended (never reported for our own `disconnect()`).

    ``code`` is the reason of a DISCONNECT the server sent, or None when the socket just closed
    (which is also what mosquitto 2.0 does to the old connection on a session takeover).
    """

    reason: str
    code: int | None = None

    @property
    def taken_over(self) -> bool:
        """The server said another client connected with our client id (MQTT 5, 0x8E)."""
        return self.code == SESSION_TAKEN_OVER


class Transport(Protocol):
    """One MQTT connection, QoS 0/1 only (IoT Core rejects QoS 2)."""

    def connect(self) -> None:
        """Open TLS and MQTT and wait for CONNACK; PublishError(reason) if that fails."""
        ...

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> Future[PublishOutcome]:
        """Send a PUBLISH; the future completes with the PUBACK outcome.

        It fails with PublishError when the connection ends before the PUBACK arrives.
        """
        ...

    def disconnect(self) -> None:
        """Send DISCONNECT and close; pending publishes fail; `on_lost` is not called."""
        ...

    @property
    def is_connected(self) -> bool: ...


#: Builds a transport for one connection; `on_lost` is called (from any thread) when it ends.
TransportFactory = Callable[[ConnectionSpec, Callable[[ConnectionLost], None]], Transport]


def check_qos(qos: int) -> None:
    """Refuse QoS 2: AWS IoT Core does not support it and closes the connection."""
    if qos not in (0, 1):
        raise ValueError(f"qos must be 0 or 1 (IoT Core refuses QoS 2), got {qos!r}")


def tls_context(credentials: Credentials) -> ssl.SSLContext:
    """A client TLS context: TLS 1.2 or newer, the broker checked against our CA, our cert loaded.

    Raises PublishError(bad_ca | key_mismatch | bad_cert_or_key), not retriable: the material
    itself is wrong.
    """
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cadata=credentials.ca_pem.decode("ascii")
        )
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise PublishError("bad_ca", retriable=False) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The ssl module loads a certificate and key only from files: hand it a private copy of
    # the bytes (0600, in a 0700 folder) for the moment it takes to read them.
    with tempfile.TemporaryDirectory(prefix="meterlink-tls-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        for path, data in ((cert, credentials.cert_pem), (key, credentials.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            reason = "key_mismatch" if exc.reason == "KEY_VALUES_MISMATCH" else "bad_cert_or_key"
            raise PublishError(reason, retriable=False) from exc
    return context


def tls_reason(exc: ssl.SSLError) -> str:
    """Short reason for a refused TLS handshake, e.g. ``revoked`` or ``unknown_ca``."""
    return _TLS_REASONS.get(str(exc.reason), "tls_rejected")


def probe_tls(host: str, port: int, credentials: Credentials, timeout_s: float) -> None:
    """Prove that the broker accepts these credentials at the TLS layer, without MQTT CONNECT.

    With TLS 1.3 the server checks our certificate after the handshake has completed on our
    side, so a refusal (unknown CA, revoked) arrives as an alert on the first read: we read for
    a moment, and silence means accepted (the broker is waiting for CONNECT). No CONNECT is
    sent, so this neither counts against IoT Core's CONNECT limit nor disturbs our session.
    Raises PublishError with a short reason.
    """
    context = tls_context(credentials)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.settimeout(min(1.0, timeout_s))
            try:
                data = tls.recv(1)
            except TimeoutError:
                return
            if not data:
                raise PublishError("tls_rejected", retriable=False)
    except ssl.SSLError as exc:
        raise PublishError(tls_reason(exc), retriable=False) from exc
    except OSError as exc:
        raise PublishError("unreachable") from exc
