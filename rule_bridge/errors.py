"""The rule bridge's exceptions: configuration mistakes and delivery failures."""

from __future__ import annotations

from meterlink_config import ConfigError

__all__ = ["BridgeError", "ConfigError", "KinesisError"]


class BridgeError(Exception):
    """Base class; `retriable` says whether trying the same thing again can succeed."""

    retriable: bool = False


class KinesisError(BridgeError):
    """A PutRecords call failed as a whole; `retriable` is False for errors a retry cannot fix."""

    def __init__(self, code: str, message: str, *, retriable: bool) -> None:
        super().__init__(f"kinesis {code}: {message}")
        self.code = code
        self.retriable = retriable
