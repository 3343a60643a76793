"""Local MQTT source: readings that devices publish to the gateway's own broker.

Subscribes with QoS 1, a persistent session (a stable client id, clean session off) and manual
acknowledgement: a message's PUBACK is sent only from `on_durable`, once the pipeline has
journaled its readings. If the agent dies first, the broker redelivers the message to the next
session, so nothing is lost between broker and buffer (at-least-once; the cloud dedupes).

Where each part of a reading comes from is configured per field by a `FieldMapping`:
``topic:N`` (topic level N, from 0), ``json:a.b`` (dotted path into the JSON payload; ``json:``
alone is the whole payload or array item), ``const:VALUE``, and for ``ts`` also ``now`` (receive
time). A payload may hold one reading or a JSON array of them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import RejectedReadingError, RejectReason
from edge_agent.metrics import AgentMetrics
from edge_agent.reading import Reading, make_reading
from edge_agent.sources.base import Door, Intake

log = logging.getLogger("edge_agent.sources.mqtt")

_FIELDS = ("meter", "channel", "unit", "value", "ts")
_NUMERIC_FIELDS = ("value", "ts")
_PROTOCOLS = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}
#: Retry of a refused batch: first delay and cap (doubling in between).
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
#: How long the worker waits for a message before it looks at the stop flag again.
_POLL_S = 0.2

_MISSING = object()
Getter = Callable[[Sequence[str], Any, float], Any]


@dataclass(frozen=True)
class FieldMapping:
    """Where meter, channel, unit, value and ts come from (see the module docstring).

    Raises ValueError naming the field for a spec it does not understand.
    """

    meter: str = "json:meter"
    channel: str = "json:channel"
    unit: str = "json:unit"
    value: str = "json:value"
    ts: str = "json:ts"
    _getters: tuple[Getter, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        getters = tuple(_compile(name, getattr(self, name)) for name in _FIELDS)
        object.__setattr__(self, "_getters", getters)

    @property
    def uses_payload(self) -> bool:
        """Whether any field is read from the JSON payload (else the payload is ignored)."""
        return any(getattr(self, name).startswith("json:") for name in _FIELDS)

    def reading(self, levels: Sequence[str], item: Any, received_s: float) -> Reading:
        """Build one reading from topic levels and one payload item; RejectedReadingError if bad."""
        meter, channel, unit, value, ts = (get(levels, item, received_s) for get in self._getters)
        return make_reading(meter, channel, value, unit, ts)


def _compile(name: str, spec: str) -> Getter:
    kind, sep, arg = spec.partition(":")
    numeric = name in _NUMERIC_FIELDS
    if kind == "now" and not sep and name == "ts":
        return lambda _levels, _item, received_s: received_s
    if kind == "topic" and sep:
        try:
            level = int(arg)
        except ValueError:
            level = -1
        if level < 0:
            raise ValueError(f"mapping.{name}: topic level must be an integer >= 0, got {spec!r}")
        return partial(_from_topic, level, numeric)
    if kind == "json" and sep:
        path = tuple(arg.split(".")) if arg else ()
        if any(not part for part in path):
            raise ValueError(f"mapping.{name}: empty step in JSON path {spec!r}")
        return partial(_from_json, path)
    if kind == "const" and sep:
        constant = _number(arg) if numeric else arg
        return lambda _levels, _item, _received_s: constant
    hint = ", or 'now'" if name == "ts" else ""
    raise ValueError(
        f"mapping.{name}: expected 'topic:N', 'json:path' or 'const:VALUE'{hint}, got {spec!r}"
    )


def _from_topic(level: int, numeric: bool, levels: Sequence[str], _item: Any, _now: float) -> Any:
    if level >= len(levels):
        raise RejectedReadingError(
            RejectReason.MISSING_FIELD, f"topic has no level {level} ({len(levels)} levels)"
        )
    text = levels[level]
    return _number(text) if numeric else text


def _from_json(path: tuple[str, ...], _levels: Sequence[str], item: Any, _now: float) -> Any:
    if path and not isinstance(item, dict):
        raise RejectedReadingError(
            RejectReason.NOT_OBJECT, f"expected an object, got {type(item).__name__}"
        )
    node = item
    for step in path:
        node = node.get(step, _MISSING) if isinstance(node, dict) else _MISSING
        if node is _MISSING:
            raise RejectedReadingError(RejectReason.MISSING_FIELD, f"missing {'.'.join(path)!r}")
    return node


def _number(text: str) -> Any:
    """A topic level or constant as a number if it is one; else the text (rejected later)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class LocalMqttSettings:
    """How to reach the gateway's local broker and what to subscribe to."""

    host: str
    port: int
    topic: str
    client_id: str
    mapping: FieldMapping = field(default_factory=FieldMapping)
    qos: int = 1
    username: str | None = None
    password: str | None = None
    #: TLS: the CA that signed the broker's certificate; client cert and key for mutual TLS.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: "3.1.1" or "5". With MQTT 5 the session outlives a disconnect for `session_expiry_s`.
    protocol: str = "3.1.1"
    session_expiry_s: int = 7 * 24 * 3600
    #: MQTT 5 Receive Maximum: unacknowledged messages the broker may have in flight to us.
    receive_maximum: int = 1000
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    #: Larger payloads are rejected as too_long without being parsed.
    max_payload_bytes: int = 1024 * 1024
    #: Readings per submit at most (messages are batched while the pipeline is busy).
    max_batch: int = 10_000

    def __post_init__(self) -> None:
        if self.qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {self.qos}")
        if self.protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(_PROTOCOLS)}, got {self.protocol!r}")
        if not self.client_id:
            raise ValueError("client_id must not be empty (a persistent session needs it)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError(f"receive_maximum must be 1..65535, got {self.receive_maximum}")


class _Message(NamedTuple):
    generation: int
    mid: int
    qos: int
    readings: list[Reading]
    rejected: int


class LocalMqttSource:
    """Subscribes on the local broker; acknowledges each message only once it is durable."""

    def __init__(
        self, settings: LocalMqttSettings, metrics: AgentMetrics, *, name: str = "mqtt"
    ) -> None:
        self.name = name
        self.settings = settings
        self._door = Door(name, metrics)
        self._mapping = settings.mapping
        self._intake: Intake | None = None
        self._queue: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._outstanding = 0  # messages submitted whose on_durable has not run yet
        #: Bumped on every CONNACK; an ack is sent only on the connection its message came on.
        self._generation = 0
        self.messages = 0
        self.acked = 0
        self._client = self._make_client()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, intake: Intake) -> None:
        """Connect in the background (paho's network thread retries) and start the worker."""
        if self._worker is not None:
            raise RuntimeError(f"source {self.name} already started")
        self._intake = intake
        s = self.settings
        properties = None
        if s.protocol == "5":
            # paho's Properties.__init__ is unannotated.
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry_s
            properties.ReceiveMaximum = s.receive_maximum
        self._worker = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._worker.start()
        self._client.connect_async(
            s.host,
            s.port,
            keepalive=s.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking messages, wait up to half the timeout for pending acks, then disconnect.

        The subscription stays in the broker's session, so messages published while the agent is
        down are queued for it; unacknowledged ones are redelivered on the next start.
        """
        if self._worker is None:
            return
        self._stopping.set()
        self._worker.join(timeout_s / 2)
        # Readings already handed over are usually durable within a group commit; acking them
        # now spares the broker a redelivery (and the cloud a duplicate).
        ack_deadline = time.monotonic() + timeout_s / 2
        while time.monotonic() < ack_deadline:
            with self._lock:
                if self._outstanding == 0:
                    break
            time.sleep(0.01)
        self._generation = -1  # late on_durable calls must not ack on a dead connection
        self._client.disconnect()
        self._client.loop_stop()
        log.info(
            "source_stopped source=%s messages=%d acked=%d", self.name, self.messages, self.acked
        )

    @property
    def connected(self) -> threading.Event:
        """Set while connected to the broker."""
        return self._connected

    @property
    def subscribed(self) -> threading.Event:
        """Set once the broker granted the subscription on the current connection."""
        return self._subscribed

    # -- paho's network thread ---------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        s = self.settings
        protocol = _PROTOCOLS[s.protocol]
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=protocol,
            # MQTT 5 has no clean_session; its clean_start goes with connect.
            clean_session=False if protocol == MQTTProtocolVersion.MQTTv311 else None,
            manual_ack=True,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.ca_file is not None or s.cert_file is not None:
            client.tls_set(
                ca_certs=None if s.ca_file is None else str(s.ca_file),
                certfile=None if s.cert_file is None else str(s.cert_file),
                keyfile=None if s.key_file is None else str(s.key_file),
            )
        client.reconnect_delay_set(
            min_delay=max(1, round(s.reconnect_min_s)), max_delay=max(1, round(s.reconnect_max_s))
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("mqtt_connect_refused source=%s reason=%s", self.name, reason_code)
            return
        self._generation += 1
        self._connected.set()
        log.info(
            "mqtt_connected source=%s host=%s port=%d session_present=%s",
            self.name,
            self.settings.host,
            self.settings.port,
            flags.session_present,
        )
        # Subscribing again on a resumed session is harmless and covers a lost session.
        client.subscribe(self.settings.topic, qos=self.settings.qos)

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error(
                "mqtt_subscribe_refused source=%s topic=%s reason=%s",
                self.name,
                self.settings.topic,
                failed[0],
            )
            return
        self._subscribed.set()

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._stopping.is_set():
            log.warning("mqtt_disconnected source=%s reason=%s", self.name, reason_code)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages += 1
        readings, rejected = self.decode(message.topic, message.payload, time.time())
        self._queue.put(_Message(self._generation, message.mid, message.qos, readings, rejected))

    def decode(
        self, topic: str, payload: bytes | bytearray, received_s: float
    ) -> tuple[list[Reading], int]:
        """Map one message to readings; bad items are counted and logged, not raised."""
        mapping = self._mapping
        levels = topic.split("/")
        items: list[Any]
        if not mapping.uses_payload:
            items = [None]
        elif len(payload) > self.settings.max_payload_bytes:
            self._door.received(1)
            detail = f"payload of {len(payload)} bytes, limit {self.settings.max_payload_bytes}"
            self._door.reject(RejectedReadingError(RejectReason.TOO_LONG, detail), f"topic {topic}")
            return [], 1
        else:
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                self._door.received(1)
                err = RejectedReadingError(RejectReason.NOT_JSON, str(exc))
                self._door.reject(err, f"topic {topic}")
                return [], 1
            items = doc if isinstance(doc, list) else [doc]
        readings: list[Reading] = []
        rejected = 0
        for index, item in enumerate(items):
            try:
                readings.append(mapping.reading(levels, item, received_s))
            except RejectedReadingError as err:
                rejected += 1
                self._door.reject(err, f"topic {topic} item {index}")
        self._door.received(len(items))
        return readings, rejected

    # -- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                self._door.tick()
                continue
            batch = [first]
            count = len(first.readings)
            while count < self.settings.max_batch:
                try:
                    message = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(message)
                count += len(message.readings)
            self._submit(batch)

    def _submit(self, batch: list[_Message]) -> None:
        assert self._intake is not None
        readings = [r for m in batch for r in m.readings] if len(batch) > 1 else batch[0].readings
        rejected = sum(m.rejected for m in batch)
        acks = [(m.generation, m.mid) for m in batch if m.qos > 0]
        on_durable = partial(self._ack, acks) if acks else None
        delay = RETRY_FIRST_S
        with self._lock:
            self._outstanding += len(acks)
        while not self._stopping.is_set():
            if self._intake.submit(
                readings, source=self.name, rejected=rejected, on_durable=on_durable
            ):
                return
            # Not acknowledged, so the broker holds them; `rejected` is reported only once.
            rejected = 0
            self._stopping.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        with self._lock:
            self._outstanding -= len(acks)

    # -- the pipeline thread -----------------------------------------------------------------

    def _ack(self, acks: list[tuple[int, int]]) -> None:
        generation = self._generation
        for message_generation, mid in acks:
            # A message from an earlier connection is redelivered by the broker; acking its old
            # packet id on the new connection could ack a different message.
            if message_generation == generation:
                self._client.ack(mid, 1)
                self.acked += 1
        with self._lock:
            self._outstanding -= len(acks)
