"""The Kinesis sink: PutRecords with retry of exactly the entries that failed.

A partial failure is a normal result (throttling on one shard, an internal failure), so only the
failed entries are sent again, with capped jittered backoff, until every record is accepted or the
bridge is asked to stop. Nothing is reported delivered before Kinesis has accepted it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from rule_bridge.errors import KinesisError

log = logging.getLogger("rule_bridge.kinesis")

#: Request-level errors that no retry fixes; everything else (throttling, 5xx, network) is retried.
_FATAL_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "ValidationException",
        "InvalidArgumentException",
        "UnrecognizedClientException",
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSNotFoundException",
    }
)


@dataclass(frozen=True)
class Record:
    """One Kinesis record: the MQTT payload, unchanged, keyed by the gateway id."""

    partition_key: str
    data: bytes


@dataclass(frozen=True)
class PutOutcome:
    """What one `put` took: calls made and entries that had to be sent again."""

    calls: int
    retried_entries: int
    shards: frozenset[str]


class KinesisSink:
    """Delivers record batches to one stream; blocks until all are accepted or `stop` is set."""

    def __init__(
        self,
        client: Any,
        stream: str,
        *,
        max_backoff_s: float = 5.0,
        base_backoff_s: float = 0.05,
    ) -> None:
        self._client = client
        self._stream = stream
        self._max_backoff_s = max_backoff_s
        self._base_backoff_s = base_backoff_s

    def put(self, records: Sequence[Record], stop: threading.Event) -> PutOutcome | None:
        """Put every record; return None if `stop` was set before all were accepted."""
        pending = list(records)
        calls = retried = attempt = 0
        shards: set[str] = set()
        while pending:
            if attempt and stop.wait(self._backoff(attempt)):
                return None
            attempt += 1
            calls += 1
            try:
                failed = self._put_once(pending, shards)
            except KinesisError as exc:
                # The bridge cannot drop data, so even a "fatal" error is retried: an operator
                # can fix a deleted stream or a missing permission and the bridge resumes.
                level = logging.WARNING if exc.retriable else logging.ERROR
                log.log(
                    level, "put_failed attempt=%d records=%d error=%s", attempt, len(pending), exc
                )
                continue
            if failed:
                retried += len(failed)
                log.info(
                    "put_partial attempt=%d failed=%d of=%d", attempt, len(failed), len(pending)
                )
            pending = failed
        return PutOutcome(calls=calls, retried_entries=retried, shards=frozenset(shards))

    def _put_once(self, records: list[Record], shards: set[str]) -> list[Record]:
        try:
            response = self._client.put_records(
                StreamName=self._stream,
                Records=[{"Data": r.data, "PartitionKey": r.partition_key} for r in records],
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            raise KinesisError(code, str(exc), retriable=code not in _FATAL_CODES) from exc
        except BotoCoreError as exc:
            raise KinesisError(type(exc).__name__, str(exc), retriable=True) from exc
        entries = response.get("Records", [])
        if len(entries) != len(records):
            raise KinesisError(
                "BadResponse", f"{len(entries)} results for {len(records)} records", retriable=True
            )
        failed: list[Record] = []
        for record, entry in zip(records, entries, strict=True):
            if entry.get("ErrorCode"):
                failed.append(record)
            else:
                shards.add(str(entry.get("ShardId", "")))
        return failed

    def _backoff(self, attempt: int) -> float:
        """Full jitter, capped: spreads retries of many bridges instead of synchronising them."""
        ceiling = min(self._max_backoff_s, self._base_backoff_s * 2 ** min(attempt, 16))
        return random.uniform(self._base_backoff_s, max(self._base_backoff_s, ceiling))  # noqa: S311
