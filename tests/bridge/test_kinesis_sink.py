"""The sink's retry logic: only failed entries are resent, nothing is reported before success.

moto never throttles, so partial failures are injected with a scripted client here; the real
PutRecords path is covered by the integration tests against the moto server.
"""

from __future__ import annotations

import threading
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError

from rule_bridge.kinesis import KinesisSink, Record


class ScriptedKinesis:
    """Fails the entries whose data is in `fail_once` on their first attempt."""

    def __init__(self, fail_once: set[bytes], errors: list[Exception] | None = None) -> None:
        self.fail_once = set(fail_once)
        self.errors = list(errors or [])
        self.calls: list[list[bytes]] = []
        self.accepted: list[bytes] = []

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append([r["Data"] for r in Records])
        if self.errors:
            raise self.errors.pop(0)
        out = []
        for r in Records:
            if r["Data"] in self.fail_once:
                self.fail_once.discard(r["Data"])
                out.append(
                    {
                        "ErrorCode": "ProvisionedThroughputExceededException",
                        "ErrorMessage": "slow down",
                    }
                )
            else:
                self.accepted.append(r["Data"])
                out.append({"ShardId": "shardId-000000000001", "SequenceNumber": "1"})
        return {"FailedRecordCount": sum(1 for o in out if "ErrorCode" in o), "Records": out}


def records(n: int) -> list[Record]:
    return [Record("gw-1", f"m{i}".encode()) for i in range(n)]


def test_partial_failure_resends_exactly_the_failed_entries() -> None:
    client = ScriptedKinesis(fail_once={b"m1", b"m3"})
    sink = KinesisSink(client, "s", base_backoff_s=0.001, max_backoff_s=0.002)
    outcome = sink.put(records(5), threading.Event())
    assert outcome is not None
    assert outcome.calls == 2 and outcome.retried_entries == 2
    assert client.calls == [[b"m0", b"m1", b"m2", b"m3", b"m4"], [b"m1", b"m3"]]
    assert sorted(client.accepted) == [b"m0", b"m1", b"m2", b"m3", b"m4"]


def test_request_errors_are_retried_until_accepted() -> None:
    throttled = ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "x"}}, "PutRecords"
    )
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    client = ScriptedKinesis(set(), errors=[down, throttled])
    sink = KinesisSink(client, "s", base_backoff_s=0.001, max_backoff_s=0.002)
    outcome = sink.put(records(3), threading.Event())
    assert outcome is not None and outcome.calls == 3
    assert client.accepted == [b"m0", b"m1", b"m2"]


def test_stop_during_retries_reports_nothing_delivered() -> None:
    gone = ClientError(
        {"Error": {"Code": "ResourceNotFoundException", "Message": "x"}}, "PutRecords"
    )
    client = ScriptedKinesis(set(), errors=[gone] * 1000)
    stop = threading.Event()
    sink = KinesisSink(client, "s", base_backoff_s=0.01, max_backoff_s=0.01)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    assert sink.put(records(2), stop) is None
    assert client.accepted == []
