"""Gateway status messages: online/offline plus buffer health, published retained.

The agent publishes ``online`` on connect and registers an ``offline`` status as its MQTT will,
so a broker announces a dead connection. The will is built at connect time, so its ``sent_ms``
is when the will was registered, not when the broker published it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

import orjson

from meterlink_wire.batch import MAX_SEQUENCE, MAX_TIMESTAMP_MS, check_int
from meterlink_wire.codec import (
    IOT_CORE_MAX_BYTES,
    WIRE_VERSION,
    check_envelope,
    field,
    load_document,
)
from meterlink_wire.errors import Reason, WireError, show
from meterlink_wire.vocab import validate_gateway_id

GatewayState = Literal["online", "offline"]
STATUS_TYPE = "status"
_STATES: tuple[str, ...] = get_args(GatewayState)
_VERSION = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces
_COUNTERS = ("buffer_rows", "buffer_bytes", "dropped_readings")


@dataclass(frozen=True)
class GatewayStatus:
    """A gateway's connection state and the health of its durable buffer.

    ``version`` is the agent's software version (1-64 printable ASCII characters, no spaces);
    the counters are non-negative. Invalid values raise WireError on construction.
    """

    gateway_id: str
    state: GatewayState
    sent_ms: int
    version: str
    buffer_rows: int = 0
    buffer_bytes: int = 0
    dropped_readings: int = 0

    def __post_init__(self) -> None:
        validate_gateway_id(self.gateway_id)
        if self.state not in _STATES:
            raise WireError(Reason.BAD_VALUE, f"state {show(self.state)}, expected {_STATES}")
        check_int(self.sent_ms, "sent_ms", MAX_TIMESTAMP_MS, Reason.BAD_TIMESTAMP)
        if not isinstance(self.version, str):
            raise WireError(Reason.BAD_TYPE, f"version must be a string, got {show(self.version)}")
        if _VERSION.fullmatch(self.version) is None:
            raise WireError(Reason.BAD_VALUE, f"version {show(self.version)}")
        for name in _COUNTERS:
            check_int(getattr(self, name), name, MAX_SEQUENCE, Reason.BAD_VALUE)


def encode_status(status: GatewayStatus) -> bytes:
    """Encode a status message (plain JSON; it is small)."""
    return orjson.dumps(
        {
            "v": WIRE_VERSION,
            "type": STATUS_TYPE,
            "gateway": status.gateway_id,
            "state": status.state,
            "sent_ms": status.sent_ms,
            "version": status.version,
            "buffer_rows": status.buffer_rows,
            "buffer_bytes": status.buffer_bytes,
            "dropped_readings": status.dropped_readings,
        }
    )


def decode_status(data: bytes, *, max_bytes: int = IOT_CORE_MAX_BYTES) -> GatewayStatus:
    """Decode a status message from untrusted bytes; raises only WireError.

    zlib-compressed input is accepted like for telemetry. Unknown keys are ignored.
    """
    _, document = load_document(data, max_bytes=max_bytes)
    check_envelope(document, (STATUS_TYPE,))
    state = field(document, "state")
    if not isinstance(state, str):
        raise WireError(Reason.BAD_TYPE, f"state must be a string, got {show(state)}")
    return GatewayStatus(
        gateway_id=field(document, "gateway"),  # type: ignore[arg-type]  # checked on construction
        state=state,  # type: ignore[arg-type]
        sent_ms=field(document, "sent_ms"),  # type: ignore[arg-type]
        version=field(document, "version"),  # type: ignore[arg-type]
        **{name: document.get(name, 0) for name in _COUNTERS},
    )
