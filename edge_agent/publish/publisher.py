"""The publisher: drains the durable outbox to the broker, deleting a message only after PUBACK.

One thread runs `Publisher.run`; transport callbacks only post events to its queue, so all state
lives on that thread and needs no locks. The decisions, in one place:

- **Delivery.** Messages go out at QoS 1 in outbox order (events first). A message is deleted
  from the outbox (`Outbox.ack`) only after a successful PUBACK (0x00, or 0x10 "no matching
  subscribers"). When a connection ends, whatever it left unacknowledged is still in the outbox
  and is fetched again and resent on the next connection: same bytes, same sequence number.
  An unacked publish older than ``ack_timeout_s`` drops the connection, so it is resent too.
- **Limits.** At most ``max_inflight`` unacknowledged publishes (IoT Core allows 100) and at
  most ``max_publish_per_s`` publishes per second, evenly spaced (IoT Core allows 100). After
  every (re)connect, while the outbox holds more than ``replay_threshold`` messages, the rate is
  ``replay_rate_per_s`` instead, so a fleet coming back from an outage does not storm the broker.
- **Refused publishes** (PUBACK 0x80 and above, e.g. 0x87 not authorized): counted in
  ``publish_errors{reason}``, logged at ERROR once per reason and topic, kept in the outbox, and
  sending pauses with the same jittered exponential backoff as reconnects, so a broker that
  keeps refusing sees a retry every ``backoff_max_s`` at most, never a hot loop.
- **Oversize messages** (payload above IoT Core's 131,072 bytes) are never sent: IoT Core
  would refuse them forever. Each is deleted from the outbox, logged at ERROR with its id and
  sequence, and counted in ``publish_errors{reason="oversize"}`` and
  ``readings_dropped{policy="oversize"}``. The gap in sequence numbers is harmless downstream.
- **Reconnects** wait per `Backoff`: full jitter between ``backoff_min_s`` and a cap doubling up
  to ``backoff_max_s``, never two CONNECTs within a second. The backoff resets only after a
  connection stayed up ``stable_after_s``.
- **Session takeover.** Another client with our client id makes the broker close our connection
  (MQTT 5 DISCONNECT 0x8E where the broker sends one; mosquitto 2.0 just closes the socket). A
  0x8E, or a second connection in a row lost within ``stable_after_s`` of its CONNACK, is
  reported as a takeover: ERROR log naming the client id,
  ``publish_errors{reason="session_taken_over"}``, and the next delay is drawn from the upper
  half of the backoff range, so the two clients settle into rare reconnects instead of a fight.
- **Status.** The will is a retained QoS 1 ``offline`` status; a retained ``online`` status goes
  out on every connect and every ``status_interval_s``; a clean stop publishes ``offline``
  itself (the broker drops the will on a normal DISCONNECT).
- **Drain** (SIGTERM, `drain`): keep sending until the outbox is empty or shortly before the
  deadline, then only collect PUBACKs. Unacknowledged messages stay in the outbox.
- **Certificate rotation** (`rotate`): the new pair is read into memory, proven (TLS, then a
  CONNECT that becomes the main connection), and only then used; see its docstring.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

from edge_agent.errors import AgentError, DurableBufferError, PublishError
from edge_agent.metrics import AgentMetrics
from edge_agent.publish.backoff import Backoff, TokenBucket
from edge_agent.publish.transport import (
    ConnectionLost,
    ConnectionSpec,
    Credentials,
    MqttProtocol,
    PublishOutcome,
    Transport,
    TransportFactory,
    Will,
    probe_tls,
)
from meterlink_wire import (
    IOT_CORE_MAX_BYTES,
    GatewayState,
    GatewayStatus,
    Kind,
    TopicKind,
    WireError,
    encode_status,
    topic_for,
    validate_gateway_id,
)

log = logging.getLogger("edge_agent.publish")

TransportName = Literal["paho", "awsiot"]

#: IoT Core's limits per connection: unacknowledged QoS 1 publishes, and publishes per second.
IOT_CORE_MAX_INFLIGHT = 100
IOT_CORE_MAX_PUBLISH_PER_S = 100.0
#: The largest page read from the outbox at once (it is held in memory, up to 128 KB a message).
MAX_REPLAY_THRESHOLD = 1000

_TICK_S = 0.1  # longest sleep of the loop: how soon it notices `stop`
_EVENT_PROBE_S = 1.0  # how often a held page is checked for newer priority events
_QUIESCE_S = 5.0  # how long a rotation waits for in-flight acks before switching
_STOP_STATUS_WAIT_S = 2.0  # how long a clean stop waits for the offline status PUBACK
_DRAIN_ACK_S = 2.0  # the end of a drain kept for PUBACKs: nothing new is sent then


class PendingMessage(Protocol):
    """One encoded message waiting in the outbox (the buffer's row, read-only)."""

    @property
    def id(self) -> int:
        """Outbox row id, >= 0; what `Outbox.ack` takes."""
        ...

    @property
    def kind(self) -> Kind: ...

    @property
    def sequence(self) -> int: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def readings(self) -> int: ...

    @property
    def created_ms(self) -> int: ...


class Outbox(Protocol):
    """The durable buffer as the publisher sees it (implemented by `edge_agent.buffer`)."""

    def pending(self, limit: int, *, exclude: Collection[int] = ()) -> Sequence[PendingMessage]:
        """Up to `limit` messages not in `exclude`: events first, then telemetry, in id order."""
        ...

    def ack(self, ids: Collection[int]) -> int:
        """Delete delivered messages; return how many readings they held."""
        ...


@dataclass(frozen=True)
class PublishSettings:
    """How the publisher connects and paces itself; built once by the config module.

    Files are the broker's CA and this gateway's certificate and key; the MQTT client id is
    the gateway id (IoT Core requires client id == thing name).
    """

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    transport: TransportName = "paho"
    protocol: MqttProtocol = "mqtt5"
    keepalive_s: int = 60
    max_inflight: int = 20
    max_publish_per_s: float = 50.0
    replay_rate_per_s: float = 10.0
    replay_threshold: int = 100
    backoff_min_s: float = 1.0
    backoff_max_s: float = 120.0
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 30.0
    status_interval_s: float = 60.0
    stable_after_s: float = 10.0
    poll_interval_s: float = 0.5

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("transport", self.transport in ("paho", "awsiot"), "must be 'paho' or 'awsiot'"),
            ("protocol", self.protocol in ("mqtt5", "mqtt311"), "must be 'mqtt5' or 'mqtt311'"),
            (
                "protocol",
                not (self.transport == "awsiot" and self.protocol != "mqtt5"),
                "the awsiot transport speaks mqtt5 only",
            ),
            ("port", 0 < self.port < 65536, "must be 1..65535"),
            ("keepalive_s", 5 <= self.keepalive_s <= 1200, "must be 5..1200 (IoT Core)"),
            ("max_inflight", 1 <= self.max_inflight <= IOT_CORE_MAX_INFLIGHT, "must be 1..100"),
            (
                "max_publish_per_s",
                0 < self.max_publish_per_s <= IOT_CORE_MAX_PUBLISH_PER_S,
                "must be > 0 and <= 100 (IoT Core's per-connection limit)",
            ),
            (
                "replay_rate_per_s",
                0 < self.replay_rate_per_s <= self.max_publish_per_s,
                "must be > 0 and <= max_publish_per_s",
            ),
            (
                "replay_threshold",
                1 <= self.replay_threshold <= MAX_REPLAY_THRESHOLD,
                f"must be 1..{MAX_REPLAY_THRESHOLD}",
            ),
            ("backoff_min_s", self.backoff_min_s > 0, "must be > 0"),
            ("backoff_max_s", self.backoff_max_s >= self.backoff_min_s, "must be >= backoff_min_s"),
            ("connect_timeout_s", self.connect_timeout_s > 0, "must be > 0"),
            ("ack_timeout_s", self.ack_timeout_s > 0, "must be > 0"),
            ("status_interval_s", self.status_interval_s > 0, "must be > 0"),
            ("stable_after_s", self.stable_after_s > 0, "must be > 0"),
            ("poll_interval_s", self.poll_interval_s > 0, "must be > 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name}: {rule}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RotationResult:
    """What `Publisher.rotate` did; ``cert_file``/``key_file`` name the identity in use afterwards.

    ``reason`` is ``rotated`` on success, else a short word such as ``key_mismatch``,
    ``unknown_ca``, ``revoked``, ``not_authorized`` or ``timeout``.
    """

    ok: bool
    reason: str
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class _Flight:
    """One publish waiting for its PUBACK; ``message`` is None for a status publish."""

    token: int
    message: PendingMessage | None
    topic: str
    kind: str
    sent_at: float
    connection: int


@dataclass(frozen=True)
class _Done:
    token: int
    connection: int
    future: Future[PublishOutcome]


@dataclass(frozen=True)
class _Lost:
    connection: int
    lost: ConnectionLost


@dataclass(frozen=True)
class _Rotate:
    credentials: Credentials
    result: Future[RotationResult]


@dataclass(frozen=True)
class _Drain:
    sends_until: float


class _Wake:
    """Something new is in the outbox: look now instead of at the next poll."""


_Event = _Done | _Lost | _Rotate | _Drain | _Wake


def _default_factory(name: TransportName) -> TransportFactory:
    # Imported on demand: a paho-only gateway never loads awscrt.
    if name == "awsiot":
        from edge_agent.publish.awsiot import AwsIotTransport  # noqa: PLC0415

        return AwsIotTransport
    from edge_agent.publish.paho import PahoTransport  # noqa: PLC0415

    return PahoTransport


class Publisher:
    """Publishes the outbox over one MQTT connection at a time; see the module docstring.

    `status` returns the gateway's current health (buffer depth, dropped readings, version); it
    is called on every connect (for the will) and every status publish, and the publisher sets
    ``state`` and ``sent_ms`` itself. The MQTT client id is `gateway_id`. `transport_factory`
    replaces the transport chosen by ``settings.transport`` (tests instrument it).
    """

    def __init__(
        self,
        settings: PublishSettings,
        outbox: Outbox,
        metrics: AgentMetrics,
        *,
        gateway_id: str,
        status: Callable[[], GatewayStatus],
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._metrics = metrics
        self._gateway_id = validate_gateway_id(gateway_id)
        self._status = status
        self._factory = transport_factory or _default_factory(settings.transport)
        # Read once: later edits of the files take effect only through `rotate`.
        self._credentials = Credentials.load(
            settings.ca_file, settings.cert_file, settings.key_file
        )
        self._status_topic = topic_for(gateway_id, TopicKind.STATUS)
        self._events: queue.Queue[_Event] = queue.Queue()
        self._backoff = Backoff(settings.backoff_min_s, settings.backoff_max_s)
        self._refusal_backoff = Backoff(
            settings.backoff_min_s, settings.backoff_max_s, min_interval_s=0.0
        )
        self._bucket = TokenBucket(settings.max_publish_per_s)
        self._numbers = itertools.count(1)
        self._status_tokens = itertools.count(-1, -1)

        self._transport: Transport | None = None
        self._connection = 0
        self._connected_at = 0.0
        self._connect_at = 0.0
        self._quick_drops = 0
        self._flights: dict[int, _Flight] = {}
        self._to_ack: list[_Flight] = []
        self._ready: deque[PendingMessage] = deque()
        self._ready_at = 0.0
        self._poll_at = 0.0
        self._after_outage = True
        self._replaying = False
        self._paused_until = 0.0
        self._status_at = 0.0
        self._logged: set[tuple[str, str]] = set()
        self._rotation: _Rotate | None = None
        self._quiesce_until = 0.0
        self._stopping = False
        self._ever_connected = False

        self._running = threading.Event()
        self._drain_sends_until: float | None = None
        self._outbox_empty = False
        self._delivered_all = False
        self._idle = threading.Event()
        self._rotate_lock = threading.Lock()

        self._published = 0
        self._acked = 0
        self._readings_delivered = 0
        self._refused = 0
        self._dropped = 0
        self._connects = 0
        self._reconnects = 0
        self._takeovers = 0
        self._max_inflight_seen = 0

    # ---------------------------------------------------------------------------------------
    # Read-only counts (written by the run thread, read from anywhere)
    # ---------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None

    @property
    def published(self) -> int:
        """PUBLISH packets sent, status and resends included."""
        return self._published

    @property
    def acked(self) -> int:
        """Outbox messages deleted after a successful PUBACK."""
        return self._acked

    @property
    def readings_delivered(self) -> int:
        return self._readings_delivered

    @property
    def refused(self) -> int:
        """Publishes the broker refused (PUBACK >= 0x80) or the client could not send."""
        return self._refused

    @property
    def dropped(self) -> int:
        """Messages deleted unsent by policy (oversize)."""
        return self._dropped

    @property
    def connects(self) -> int:
        """CONNECT attempts, successful or not (rotation proofs included)."""
        return self._connects

    @property
    def reconnects(self) -> int:
        return self._reconnects

    @property
    def session_takeovers(self) -> int:
        return self._takeovers

    @property
    def inflight(self) -> int:
        return len(self._flights)

    @property
    def max_inflight_seen(self) -> int:
        """The most publishes ever waiting for a PUBACK at once."""
        return self._max_inflight_seen

    @property
    def replaying(self) -> bool:
        """True while a backlog is sent at ``replay_rate_per_s``."""
        return self._replaying

    @property
    def cert_file(self) -> Path:
        return self._credentials.cert_file

    @property
    def key_file(self) -> Path:
        return self._credentials.key_file

    # ---------------------------------------------------------------------------------------
    # Public verbs
    # ---------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Connect, publish and reconnect until `stop` is set; then go offline cleanly."""
        if self._running.is_set():
            raise RuntimeError("Publisher.run is already running")
        self._running.set()
        try:
            while not stop.is_set():
                self._step()
        finally:
            self._shutdown()
            self._running.clear()

    def wake(self) -> None:
        """Tell the publisher the outbox has something new (otherwise it polls)."""
        self._events.put(_Wake())

    def drain(self, timeout_s: float) -> bool:
        """Deliver what the outbox holds within `timeout_s`, then stop sending (for SIGTERM).

        Sending goes on until the outbox is empty or until shortly before the deadline: the
        last ``min(2 s, timeout_s / 4)`` are kept for the PUBACKs of what is in flight, and
        nothing new is sent after that; set the `stop` event next. True when the outbox was
        found empty and every publish had its PUBACK. Whatever is not acknowledged stays in
        the outbox for the next start.
        """
        deadline = time.monotonic() + timeout_s
        if not self._running.is_set():
            try:
                return not self._flights and not self._outbox.pending(1)
            except DurableBufferError:
                return False
        self._events.put(_Drain(deadline - min(_DRAIN_ACK_S, timeout_s / 4)))
        finished = self._idle.wait(max(0.0, deadline - time.monotonic()))
        return finished and self._delivered_all

    def rotate(self, cert_file: Path, key_file: Path) -> RotationResult:
        """Switch to a new certificate and key, proving them first; keep the old ones on failure.

        The files are read once, here; what is proven is exactly what later reconnects use, and
        the old identity stays in memory, so a failed rotation is safe even when the new files
        were written over the old ones.

        1. Read and load the pair (unreadable, bad_cert_or_key, key_mismatch).
        2. TLS handshake with the broker, no MQTT (unknown_ca, revoked, expired, ...): this
           cannot disturb our session and does not count as a CONNECT.
        3. Stop sending, give in-flight publishes up to 5 s to be acknowledged, then CONNECT
           with the new pair and the same client id. IoT Core only accepts client id == thing
           name, so a second "test" connection would kick the main one anyway: the proving
           connection *becomes* the main connection. The broker closes the old one (we ignore
           that loss); anything it left unacknowledged is resent on the new one from the outbox.
        4. The retained ``online`` status is published on the new connection and must be
           acknowledged (MQTT 5 reports 0x87 if the new certificate belongs to another thing).
           If not, the publisher reconnects with the old pair.

        If step 3 fails (refused CONNECT, timeout) the old connection was never replaced.
        Before `run` starts only steps 1 and 2 are done. Blocks until done.
        """
        with self._rotate_lock:
            try:
                credentials = self._credentials.with_identity(Path(cert_file), Path(key_file))
                probe_tls(
                    self._settings.host,
                    self._settings.port,
                    credentials,
                    self._settings.connect_timeout_s,
                )
            except PublishError as exc:
                return self._rotation_failed(Path(cert_file), exc.reason)
            if not self._running.is_set():
                self._credentials = credentials
                log.info("certificate_rotated cert=%s before start", credentials.cert_file)
                return self._rotation_result(ok=True, reason="rotated")
            request = _Rotate(credentials, Future())
            self._events.put(request)
            limit = _QUIESCE_S + 2 * self._settings.connect_timeout_s + 5.0
            try:
                return request.result.result(timeout=limit)
            except FutureTimeoutError:
                if request.result.cancel():
                    return self._rotation_failed(credentials.cert_file, "timeout")
                return request.result.result()  # already under way: it ends within timeouts

    # ---------------------------------------------------------------------------------------
    # The loop
    # ---------------------------------------------------------------------------------------

    def _step(self) -> None:
        now = time.monotonic()
        if self._transport is None:
            if self._rotation is not None:
                self._rotate_now()
            elif now >= self._connect_at:
                self._connect()
        else:
            self._check_ack_timeout(now)
            if self._rotation is not None:
                if not self._flights or now >= self._quiesce_until:
                    self._rotate_now()
            elif self._transport is not None:
                self._maybe_send_status(now)
                self._send(now)
        self._process_events(self._wait_s(time.monotonic()))
        self._check_drained(time.monotonic())

    def _check_drained(self, now: float) -> None:
        if self._drain_sends_until is None or self._idle.is_set():
            return
        if self._flights or self._to_ack:
            return
        caught_up = self._outbox_empty and not self._ready
        if caught_up or now >= self._drain_sends_until:
            self._delivered_all = caught_up
            self._idle.set()

    def _wait_s(self, now: float) -> float:
        if self._transport is None:
            return min(_TICK_S, max(0.0, self._connect_at - now))
        if not self._may_send(now):
            return _TICK_S
        if self._ready:
            return min(_TICK_S, self._bucket.wait_time())
        return min(_TICK_S, max(0.0, self._poll_at - now))

    def _may_send(self, now: float) -> bool:
        return (
            self._rotation is None
            and (self._drain_sends_until is None or now < self._drain_sends_until)
            and now >= self._paused_until
            and len(self._flights) < self._settings.max_inflight
        )

    def _process_events(self, timeout: float) -> None:
        try:
            event: _Event | None = (
                self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait()
            )
        except queue.Empty:
            event = None
        while event is not None:
            self._handle(event)
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                event = None
        self._flush_acks()

    def _handle(self, event: _Event) -> None:
        if isinstance(event, _Done):
            self._on_done(event)
        elif isinstance(event, _Lost):
            # Only the current connection matters; a replaced one was left on purpose.
            if event.connection == self._connection and self._transport is not None:
                self._lose(event.lost.reason, event.lost, time.monotonic())
        elif isinstance(event, _Rotate):
            if self._stopping:
                self._answer(event, self._rotation_result(ok=False, reason="stopped"))
            else:
                self._rotation = event
                self._quiesce_until = time.monotonic() + min(
                    _QUIESCE_S, self._settings.ack_timeout_s
                )
        elif isinstance(event, _Drain):
            self._drain_sends_until = event.sends_until
            self._outbox_empty = False
            self._poll_at = 0.0
        else:
            self._outbox_empty = False
            self._poll_at = 0.0

    # ---------------------------------------------------------------------------------------
    # Connections
    # ---------------------------------------------------------------------------------------

    def _open(self, credentials: Credentials) -> tuple[Transport, int]:
        """CONNECT with `credentials` (waiting for the one-per-second slot); raises PublishError."""
        time.sleep(self._backoff.slot_wait())
        number = next(self._numbers)
        s = self._settings
        spec = ConnectionSpec(
            host=s.host,
            port=s.port,
            client_id=self._gateway_id,
            credentials=credentials,
            protocol=s.protocol,
            keepalive_s=s.keepalive_s,
            connect_timeout_s=s.connect_timeout_s,
            will=Will(self._status_topic, self._status_payload("offline")),
        )
        events = self._events
        transport = self._factory(spec, lambda lost: events.put(_Lost(number, lost)))
        self._backoff.connecting()
        self._connects += 1
        transport.connect()
        return transport, number

    def _connect(self) -> None:
        try:
            transport, number = self._open(self._credentials)
        except PublishError as exc:
            delay = self._backoff.next_delay()
            self._connect_at = time.monotonic() + delay
            log.warning(
                "connect_failed reason=%s client_id=%s host=%s port=%d retry_in=%.1fs",
                exc.reason,
                self._gateway_id,
                self._settings.host,
                self._settings.port,
                delay,
            )
            return
        self._adopt(transport, number)

    def _adopt(self, transport: Transport, number: int) -> Future[PublishOutcome]:
        """Make `transport` the current connection; announce ``online``; return that publish."""
        now = time.monotonic()
        self._transport = transport
        self._connection = number
        self._connected_at = now
        # Publishes of an earlier connection are not waited for: unacked, they are still in
        # the outbox and the next fetch sends them again.
        self._flights.clear()
        self._ready.clear()
        self._poll_at = now
        self._after_outage = True
        self._metrics.connected.set(1)
        if self._ever_connected:
            self._reconnects += 1
            self._metrics.reconnects.inc()
        self._ever_connected = True
        log.info(
            "connected client_id=%s host=%s port=%d transport=%s protocol=%s",
            self._gateway_id,
            self._settings.host,
            self._settings.port,
            self._settings.transport,
            self._settings.protocol,
        )
        return self._send_status("online", now)

    def _lose(self, reason: str, lost: ConnectionLost | None, now: float) -> None:
        """The current connection is gone (or we drop it, when `lost` is None)."""
        transport, self._transport = self._transport, None
        if lost is None and transport is not None:
            transport.disconnect()
        self._metrics.connected.set(0)
        unacked = sum(1 for f in self._flights.values() if f.message is not None)
        self._flights.clear()
        self._ready.clear()
        lived = now - self._connected_at
        quick = lost is not None and lived < self._settings.stable_after_s
        self._quick_drops = self._quick_drops + 1 if quick else 0
        explicit = lost is not None and lost.taken_over
        takeover = explicit or self._quick_drops >= 2
        if not takeover and lived >= self._settings.stable_after_s:
            self._backoff.reset()
        delay = self._backoff.next_delay(takeover=takeover)
        self._connect_at = now + delay
        if takeover:
            self._takeovers += 1
            self._metrics.publish_errors.labels(reason="session_taken_over").inc()
            log.error(
                "session_taken_over client_id=%s evidence=%s: another client is connected "
                "with this client id (duplicate gateway or copied certificate?); "
                "next CONNECT in %.1fs",
                self._gateway_id,
                "disconnect_0x8e" if explicit else f"{self._quick_drops}_quick_drops",
                delay,
            )
        log.warning(
            "connection_lost reason=%s client_id=%s connected_for=%.1fs unacked=%d "
            "reconnect_in=%.1fs",
            reason,
            self._gateway_id,
            lived,
            unacked,
            delay,
        )

    def _check_ack_timeout(self, now: float) -> None:
        if not self._flights:
            return
        oldest = next(iter(self._flights.values()))  # dicts keep send order
        if now - oldest.sent_at > self._settings.ack_timeout_s:
            self._metrics.publish_errors.labels(reason="ack_timeout").inc()
            log.warning(
                "ack_timeout topic=%s waited=%.1fs: reconnecting to resend",
                oldest.topic,
                now - oldest.sent_at,
            )
            self._lose("ack_timeout", None, now)

    # ---------------------------------------------------------------------------------------
    # Sending
    # ---------------------------------------------------------------------------------------

    def _send(self, now: float) -> None:
        while self._transport is not None and self._may_send(now):
            if self._bucket.wait_time() > 0:
                return
            message = self._next_message(now)
            if message is None:
                return
            if len(message.payload) > IOT_CORE_MAX_BYTES:
                self._drop(message, "oversize")
                continue
            try:
                topic = topic_for(self._gateway_id, message.kind)
            except WireError:
                self._drop(message, "bad_topic")
                continue
            self._bucket.take()
            self._publish(
                message.id,
                message,
                topic=topic,
                kind=str(message.kind),
                payload=message.payload,
                now=now,
            )

    def _publish(
        self,
        token: int,
        message: PendingMessage | None,
        *,
        topic: str,
        kind: str,
        payload: bytes,
        now: float,
    ) -> Future[PublishOutcome]:
        assert self._transport is not None
        future = self._transport.publish(topic, payload, qos=1, retain=message is None)
        number = self._connection
        self._flights[token] = _Flight(token, message, topic, kind, now, number)
        self._max_inflight_seen = max(self._max_inflight_seen, len(self._flights))
        self._published += 1
        self._metrics.messages_published.labels(kind=kind).inc()
        events = self._events
        future.add_done_callback(lambda done: events.put(_Done(token, number, done)))
        return future

    def _next_message(self, now: float) -> PendingMessage | None:
        if self._ready and now - self._ready_at >= _EVENT_PROBE_S:
            self._probe_events(now)
        if not self._ready and now >= self._poll_at:
            self._refill(now)
        return self._ready.popleft() if self._ready else None

    def _refill(self, now: float) -> None:
        """Fetch the next page; a full page right after a connect means replaying a backlog."""
        threshold = self._settings.replay_threshold
        try:
            page = self._outbox.pending(threshold + 1, exclude=self._message_ids())
        except DurableBufferError as exc:
            log.error("outbox_read_failed reason=%s", exc.reason)
            self._poll_at = now + self._settings.poll_interval_s
            return
        self._ready.extend(page)
        self._ready_at = now
        self._outbox_empty = not page
        if not page:
            self._poll_at = now + self._settings.poll_interval_s
        backlog = len(page) > threshold
        if backlog and self._after_outage and not self._replaying:
            self._replaying = True
            self._bucket.set_rate(self._settings.replay_rate_per_s)
            log.info(
                "replay_started backlog_over=%d rate_per_s=%g",
                threshold,
                self._settings.replay_rate_per_s,
            )
        elif not backlog:
            self._after_outage = False
            if self._replaying:
                self._replaying = False
                self._bucket.set_rate(self._settings.max_publish_per_s)
                log.info("replay_done rate_per_s=%g", self._settings.max_publish_per_s)

    def _probe_events(self, now: float) -> None:
        """While a page is held, look for newer events; they must go ahead of telemetry."""
        self._ready_at = now
        exclude = [*self._message_ids(), *(m.id for m in self._ready)]
        try:
            head = self._outbox.pending(1, exclude=exclude)
        except DurableBufferError:
            return
        if head and head[0].kind == Kind.EVENTS:
            self._ready.clear()
            self._poll_at = now

    def _message_ids(self) -> list[int]:
        return [f.token for f in self._flights.values() if f.message is not None]

    def _drop(self, message: PendingMessage, reason: str) -> None:
        """Delete a message that can never be delivered (see the module docstring)."""
        try:
            readings = self._outbox.ack([message.id])
        except DurableBufferError as exc:
            log.error("outbox_delete_failed id=%d reason=%s", message.id, exc.reason)
            self._ready.clear()
            self._poll_at = time.monotonic() + self._settings.poll_interval_s
            return
        self._dropped += 1
        self._metrics.publish_errors.labels(reason=reason).inc()
        self._metrics.readings_dropped.labels(policy=reason).inc(readings)
        log.error(
            "message_dropped reason=%s id=%d sequence=%d bytes=%d limit=%d readings=%d",
            reason,
            message.id,
            message.sequence,
            len(message.payload),
            IOT_CORE_MAX_BYTES,
            readings,
        )

    def _on_done(self, event: _Done) -> None:
        flight = self._flights.get(event.token)
        if flight is None or flight.connection != event.connection:
            return  # from a connection we left; the message is (or will be) sent again
        now = time.monotonic()
        exc = event.future.exception()
        if exc is not None:
            del self._flights[event.token]
            # No PUBACK. If the connection ended, the _Lost event follows and the message is
            # resent after reconnecting; if it is still up, the client refused to send it.
            if self._transport is not None and self._transport.is_connected:
                reason = exc.reason if isinstance(exc, PublishError) else type(exc).__name__
                self._on_refused(flight, reason, None, now)
            return
        outcome = event.future.result()
        if not outcome.ok:
            del self._flights[event.token]
            self._on_refused(flight, outcome.reason, outcome.code, now)
            return
        if flight.message is not None:
            self._to_ack.append(flight)
        del self._flights[event.token]
        self._metrics.messages_acked.labels(kind=flight.kind).inc()
        self._metrics.publish_latency.observe(now - flight.sent_at)
        self._refusal_backoff.reset()

    def _on_refused(self, flight: _Flight, reason: str, code: int | None, now: float) -> None:
        self._refused += 1
        self._metrics.publish_errors.labels(reason=reason).inc()
        if (reason, flight.topic) not in self._logged:
            self._logged.add((reason, flight.topic))
            log.error(
                "publish_refused reason=%s code=%s topic=%s client_id=%s: kept in the outbox "
                "and retried after a backoff (logged once per reason and topic)",
                reason,
                "none" if code is None else f"0x{code:02x}",
                flight.topic,
                self._gateway_id,
            )
        if flight.message is None:
            return  # a status message; the next one goes out on schedule
        if now >= self._paused_until:
            self._paused_until = now + self._refusal_backoff.next_delay()
        self._ready.clear()  # the refused message is fetched again after the pause

    def _flush_acks(self) -> None:
        if not self._to_ack:
            return
        flights = list(self._to_ack)
        try:
            readings = self._outbox.ack([f.token for f in flights])
        except DurableBufferError as exc:
            log.error(
                "outbox_ack_failed reason=%s count=%d: they will be sent again",
                exc.reason,
                len(flights),
            )
            readings = None
            self._ready.clear()
        del self._to_ack[: len(flights)]
        if readings is not None:
            self._acked += len(flights)
            self._readings_delivered += readings
            self._metrics.readings_delivered.inc(readings)

    # ---------------------------------------------------------------------------------------
    # Status
    # ---------------------------------------------------------------------------------------

    def _maybe_send_status(self, now: float) -> None:
        if (
            now >= self._status_at
            and self._drain_sends_until is None
            and len(self._flights) < self._settings.max_inflight
        ):
            self._send_status("online", now)

    def _send_status(self, state: GatewayState, now: float) -> Future[PublishOutcome]:
        # Status shares the connection's publish budget; it may overdraw it to go out now.
        self._bucket.take()
        self._status_at = now + self._settings.status_interval_s
        payload = self._status_payload(state)
        return self._publish(
            next(self._status_tokens),
            None,
            topic=self._status_topic,
            kind="status",
            payload=payload,
            now=now,
        )

    def _status_payload(self, state: GatewayState) -> bytes:
        sent_ms = time.time_ns() // 1_000_000
        try:
            current = replace(
                self._status(), gateway_id=self._gateway_id, state=state, sent_ms=sent_ms
            )
        except (AgentError, ValueError, OSError) as exc:
            # Health figures are a nicety; online/offline must still be announced.
            log.error("status_unavailable error=%s", exc)
            current = GatewayStatus(self._gateway_id, state, sent_ms, version="unknown")
        return encode_status(current)

    # ---------------------------------------------------------------------------------------
    # Rotation and shutdown
    # ---------------------------------------------------------------------------------------

    def _rotate_now(self) -> None:
        request, self._rotation = self._rotation, None
        if request is None or not request.result.set_running_or_notify_cancel():
            return  # the caller gave up waiting before we began
        old = self._transport
        try:
            transport, number = self._open(request.credentials)
        except PublishError as exc:
            log.error(
                "rotation_failed reason=%s cert=%s: keeping %s",
                exc.reason,
                request.credentials.cert_file,
                self._credentials.cert_file,
            )
            request.result.set_result(self._rotation_result(ok=False, reason=exc.reason))
            return
        # The broker handed our client id to the new connection and closed the old one.
        proof = self._adopt(transport, number)
        if old is not None:
            old.disconnect()
        try:
            outcome = proof.result(timeout=self._settings.connect_timeout_s)
            reason = outcome.reason if not outcome.ok else ""
        except PublishError as exc:
            reason = exc.reason
        except FutureTimeoutError:
            reason = "ack_timeout"
        if reason:
            log.error(
                "rotation_failed reason=%s cert=%s: the broker refused the status publish; "
                "reconnecting with %s",
                reason,
                request.credentials.cert_file,
                self._credentials.cert_file,
            )
            self._lose(f"rotation_{reason}", None, time.monotonic())
            request.result.set_result(self._rotation_result(ok=False, reason=reason))
            return
        self._credentials = request.credentials
        log.info(
            "certificate_rotated cert=%s key=%s",
            request.credentials.cert_file,
            request.credentials.key_file,
        )
        request.result.set_result(self._rotation_result(ok=True, reason="rotated"))

    def _rotation_result(self, *, ok: bool, reason: str) -> RotationResult:
        return RotationResult(ok, reason, self._credentials.cert_file, self._credentials.key_file)

    def _rotation_failed(self, cert_file: Path, reason: str) -> RotationResult:
        log.error(
            "rotation_failed reason=%s cert=%s: keeping the certificate read from %s",
            reason,
            cert_file,
            self._credentials.cert_file,
        )
        return self._rotation_result(ok=False, reason=reason)

    def _answer(self, request: _Rotate, result: RotationResult) -> None:
        if request.result.set_running_or_notify_cancel():
            request.result.set_result(result)

    def _shutdown(self) -> None:
        """Announce ``offline`` (a clean DISCONNECT discards the will), then disconnect."""
        self._stopping = True
        if self._rotation is not None:
            self._answer(self._rotation, self._rotation_result(ok=False, reason="stopped"))
            self._rotation = None
        transport = self._transport
        if transport is not None:
            offline = self._send_status("offline", time.monotonic())
            try:
                offline.result(timeout=_STOP_STATUS_WAIT_S)
            except (PublishError, FutureTimeoutError):
                log.warning("offline_status_not_acked client_id=%s", self._gateway_id)
            self._process_events(0.0)  # delete what was acknowledged meanwhile
            self._transport = None
            transport.disconnect()
        self._process_events(0.0)
        self._metrics.connected.set(0)
        self._idle.set()
        log.info(
            "stopped client_id=%s published=%d acked=%d unacked=%d",
            self._gateway_id,
            self._published,
            self._acked,
            len(self._flights),
        )
