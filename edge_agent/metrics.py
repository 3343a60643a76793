"""The agent's counters and gauges, named once here so metrics, logs and tests agree.

One `AgentMetrics` per agent, on its own registry (tests run several agents in one process).
The optional Prometheus endpoint serves this registry; the status topic reports from it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_NS = "meterlink_agent"


@dataclass
class AgentMetrics:
    """Every metric the agent exports. Label values come from fixed vocabularies."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.readings_in = Counter(
            "readings_in",
            "Readings received, valid or not, by source.",
            ["source"],
            namespace=_NS,
            registry=r,
        )
        self.readings_rejected = Counter(
            "readings_rejected",
            "Readings refused at the door, by source and reason.",
            ["source", "reason"],
            namespace=_NS,
            registry=r,
        )
        self.readings_late = Counter(
            "readings_late",
            "Valid readings for a window that had already closed (dropped).",
            namespace=_NS,
            registry=r,
        )
        self.readings_dropped = Counter(
            "readings_dropped",
            "Readings dropped on purpose, by policy: late, rejected, buffer_full_oldest, "
            "buffer_full_newest.",
            ["policy"],
            namespace=_NS,
            registry=r,
        )
        self.readings_delivered = Counter(
            "readings_delivered",
            "Readings whose message the broker acknowledged.",
            namespace=_NS,
            registry=r,
        )
        self.readings_ahead = Counter(
            "readings_ahead",
            "Readings stamped too far ahead of the gateway clock, sent at once as raw rows.",
            namespace=_NS,
            registry=r,
        )
        self.clock_rewinds = Counter(
            "clock_rewinds",
            "Times the gateway clock was found set back past the watermark, which moved back.",
            namespace=_NS,
            registry=r,
        )
        self.windows_closed = Counter(
            "windows_closed",
            "Window rows closed and made durable.",
            namespace=_NS,
            registry=r,
        )
        self.events = Counter(
            "events",
            "Priority events raised at the edge, by reason.",
            ["reason"],
            namespace=_NS,
            registry=r,
        )
        self.buffer_messages = Gauge(
            "buffer_messages",
            "Messages waiting in the durable buffer.",
            namespace=_NS,
            registry=r,
        )
        self.buffer_bytes = Gauge(
            "buffer_bytes",
            "Bytes held by the durable buffer.",
            namespace=_NS,
            registry=r,
        )
        self.messages_published = Counter(
            "messages_published",
            "MQTT messages sent (QoS 1), by kind.",
            ["kind"],
            namespace=_NS,
            registry=r,
        )
        self.messages_acked = Counter(
            "messages_acked",
            "MQTT messages acknowledged by the broker, by kind.",
            ["kind"],
            namespace=_NS,
            registry=r,
        )
        self.publish_errors = Counter(
            "publish_errors",
            "Publishes the broker refused, by reason.",
            ["reason"],
            namespace=_NS,
            registry=r,
        )
        self.reconnects = Counter(
            "reconnects",
            "Connections to the broker after the first.",
            namespace=_NS,
            registry=r,
        )
        self.connected = Gauge(
            "connected",
            "1 while connected to the broker.",
            namespace=_NS,
            registry=r,
        )
        self.publish_latency = Histogram(
            "publish_latency_seconds",
            "From PUBLISH sent to PUBACK received.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            namespace=_NS,
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve /metrics on `host:port` from a daemon thread (loopback by default)."""
        start_http_server(port, addr=host, registry=self.registry)


def value(counter: Counter | Gauge, **labels: str) -> float:
    """Current value of a metric, summed over the label sets that match `labels`."""
    total = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
