"""The one exception the wire package raises for bad data, with a machine-readable reason."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a payload, topic or id was rejected; stable names, used as metric and log labels."""

    EMPTY = "empty"
    TRUNCATED = "truncated"
    NOT_JSON = "not_json"
    BAD_COMPRESSION = "bad_compression"
    OVERSIZE = "oversize"
    NOT_OBJECT = "not_object"
    UNKNOWN_VERSION = "unknown_version"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_ID = "bad_id"
    BAD_SEQUENCE = "bad_sequence"
    BAD_TIMESTAMP = "bad_timestamp"
    COLUMN_LENGTH = "column_length"
    NON_FINITE = "non_finite"
    UNKNOWN_UNIT = "unknown_unit"
    UNKNOWN_CHANNEL = "unknown_channel"
    BAD_INDEX = "bad_index"
    BAD_VALUE = "bad_value"
    BAD_TOPIC = "bad_topic"


class WireError(ValueError):
    """Bad wire data: a payload, topic, id or batch that breaks the v1 contract.

    Decoding untrusted bytes raises only this. It is never retriable: the same bytes fail the same
    way, so callers quarantine them instead of retrying. ``gateway_id`` and ``sequence`` are filled
    in when the decoder got far enough to read them, so a quarantine record can name its source.
    """

    retriable = False

    def __init__(
        self,
        reason: Reason,
        detail: str,
        *,
        gateway_id: str | None = None,
        sequence: int | None = None,
    ) -> None:
        # Details quote untrusted input; keep the message on one line whatever it contains.
        detail = " ".join(detail.split())
        super().__init__(f"wire: {reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.gateway_id = gateway_id
        self.sequence = sequence

    def __str__(self) -> str:
        return f"wire: {self.reason}: {self.detail}"

    def __reduce__(self) -> tuple[object, ...]:
        # Exceptions with keyword-only arguments need help to survive pickling (multiprocessing).
        return (_rebuild, (self.reason, self.detail, self.gateway_id, self.sequence))


def _rebuild(
    reason: Reason, detail: str, gateway_id: str | None, sequence: int | None
) -> WireError:
    return WireError(reason, detail, gateway_id=gateway_id, sequence=sequence)


def show(value: object, limit: int = 40) -> str:
    """Return a short one-line repr of an untrusted value for an error detail."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
