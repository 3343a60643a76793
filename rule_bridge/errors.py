"""The rule bridge's exceptions: configuration mistakes and delivery failures."""

from __future__ import annotations


class BridgeError(Exception):
    """Base class; `retriable` says whether trying the same thing again can succeed."""

    retriable: bool = False


class ConfigError(BridgeError):
    """A config file is missing, unreadable or has a bad value; names the file and the key."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason


class KinesisError(BridgeError):
    """A PutRecords call failed as a whole; `retriable` is False for errors a retry cannot fix."""

    def __init__(self, code: str, message: str, *, retriable: bool) -> None:
        super().__init__(f"kinesis {code}: {message}")
        self.code = code
        self.retriable = retriable
