"""The edge agent's exceptions. Each carries data, and whether a retry can succeed."""

from __future__ import annotations

from enum import StrEnum

from meterlink_config import ConfigError

__all__ = [
    "AgentError",
    "ConfigError",
    "DurableBufferError",
    "PublishError",
    "RejectReason",
    "RejectedReadingError",
]


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""

    retriable: bool = False


class RejectReason(StrEnum):
    """Why a reading was refused at the door; the same words appear in metrics and logs."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    BAD_METER_ID = "bad_meter_id"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNKNOWN_UNIT = "unknown_unit"
    BAD_VALUE = "bad_value"
    NON_FINITE = "non_finite"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_LONG = "too_long"


class RejectedReadingError(AgentError):
    """One input reading that failed validation; it is counted and logged, never fatal."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DurableBufferError(AgentError):
    """The durable buffer could not do what was asked (disk full, I/O error)."""

    def __init__(self, reason: str, *, retriable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable


class PublishError(AgentError):
    """The broker refused something in a way that needs an operator (0x87, session taken over)."""

    def __init__(self, reason: str, *, code: int | None = None, retriable: bool = True) -> None:
        super().__init__(reason if code is None else f"{reason} (reason code 0x{code:02x})")
        self.reason = reason
        self.code = code
        self.retriable = retriable
