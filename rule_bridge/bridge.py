"""The bridge loop: MQTT messages in, Kinesis records out, acknowledgements only after delivery.

This is the stand-in for the IoT Core topic rule `SELECT * FROM 'dt/meterlink/+/telemetry'`
with a Kinesis action and partition key `${topic(3)}`, and the supported way to run MeterLink
behind a self-hosted broker. Payloads are forwarded byte for byte: decoding is the consumer's job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from meterlink_wire import WireError, parse_topic
from rule_bridge.config import KinesisConfig
from rule_bridge.kinesis import KinesisSink, Record
from rule_bridge.mqtt import InboundMessage, MqttSource

log = logging.getLogger("rule_bridge")

_STATUS_INTERVAL_S = 2.0


@dataclass
class BridgeStats:
    """The bridge's counters; the same names appear in logs, the status file and the tests."""

    received: int = 0
    forwarded: int = 0
    acked: int = 0
    dropped_bad_topic: int = 0
    put_calls: int = 0
    retried_entries: int = 0
    redelivery_skipped: int = 0


class Bridge:
    """Moves batches from an MqttSource to a KinesisSink until stopped."""

    def __init__(
        self,
        source: MqttSource,
        sink: KinesisSink,
        config: KinesisConfig,
        *,
        status_file: Path | None = None,
    ) -> None:
        self._source = source
        self._sink = sink
        self._config = config
        self._status_file = status_file
        self.stats = BridgeStats()
        self._last_status = 0.0

    def run(self, stop: threading.Event) -> None:
        """Forward until `stop` is set; an unfinished batch stays unacknowledged in the broker."""
        linger = self._config.linger_ms / 1000
        while not stop.is_set():
            batch = self._source.take(self._config.max_records, self._config.max_bytes, linger)
            if batch and not self._forward(batch, stop):
                break
            self._write_status()
        self._write_status(force=True)

    def _forward(self, batch: list[InboundMessage], stop: threading.Event) -> bool:
        self.stats.received += len(batch)
        records: list[Record] = []
        deliverable: list[InboundMessage] = []
        for message in batch:
            try:
                gateway_id, _kind = parse_topic(message.topic)
            except WireError as exc:
                # Cannot happen with the ACL in place; if it does, the message has no partition
                # key, so it is counted, logged and acknowledged rather than blocking the stream.
                self.stats.dropped_bad_topic += 1
                log.error("dropped_bad_topic topic=%r reason=%s", message.topic, exc)
                continue
            records.append(Record(partition_key=gateway_id, data=message.payload))
            deliverable.append(message)
        if records:
            outcome = self._sink.put(records, stop)
            if outcome is None:
                log.info("stopped_mid_batch unacked=%d", len(batch))
                return False
            self.stats.put_calls += outcome.calls
            self.stats.retried_entries += outcome.retried_entries
            self.stats.forwarded += len(records)
        acked = self._source.ack(batch)
        self.stats.acked += acked
        self.stats.redelivery_skipped += len(batch) - acked
        log.debug("forwarded records=%d acked=%d", len(records), acked)
        return True

    def _write_status(self, *, force: bool = False) -> None:
        """Publish counters to the status file `meterlink stack status` reads (atomically)."""
        now = time.monotonic()
        if self._status_file is None or (
            not force and now - self._last_status < _STATUS_INTERVAL_S
        ):
            return
        self._last_status = now
        body = {
            "pid": os.getpid(),
            "connected": self._source.connected.is_set(),
            "reconnects": self._source.reconnects,
            "updated_ms": int(time.time() * 1000),
            **asdict(self.stats),
        }
        tmp = self._status_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(body))
        os.replace(tmp, self._status_file)
