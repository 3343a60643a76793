"""The agent service: wires sources, pipeline, durable buffer and publisher, and runs them.

Threads: each source has its own; the publisher has its own; the pipeline runs on the main
thread, which is also the one the systemd watchdog watches. Signals only set flags.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from edge_agent.aggregate import WindowAggregator
from edge_agent.buffer import DurableBuffer
from edge_agent.config import AgentConfig
from edge_agent.metrics import AgentMetrics
from edge_agent.pipeline import Pipeline
from edge_agent.priority import PriorityLane
from edge_agent.publish.publisher import Publisher
from edge_agent.sources.base import Source
from edge_agent.sources.modbus import ModbusSource
from edge_agent.sources.mqtt import LocalMqttSource
from edge_agent.sources.socket import UnixSocketSource
from edge_agent.sources.stdin import StdinSource
from edge_agent.systemd import Notifier, Watchdog
from meterlink_wire import GatewayStatus

log = logging.getLogger("edge_agent")

VERSION = version("meterlink")


class Agent:
    """One gateway's agent. `run()` blocks until SIGTERM/SIGINT (or stdin EOF) and returns 0."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        environ: Mapping[str, str],
        stdin: BinaryIO | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or AgentMetrics()
        self._notifier = Notifier.from_env(environ)
        self._stdin = stdin
        self._stop = threading.Event()
        self._rotate = threading.Event()
        self._cert_mtimes = self._mtimes()
        self._next_cert_check = 0.0
        self.buffer = DurableBuffer(
            config.buffer.path,
            max_bytes=config.buffer.max_bytes,
            when_full=config.buffer.when_full,  # type: ignore[arg-type]
            synchronous=config.buffer.synchronous,  # type: ignore[arg-type]
        )
        self.pipeline = Pipeline(
            gateway_id=config.gateway_id,
            buffer=self.buffer,
            aggregator=WindowAggregator(
                config.windows.size_s,
                config.windows.allowed_lateness_s,
                closed_until_ms=self.buffer.closed_until_ms,
                registers=self.buffer.registers(),
            ),
            lane=PriorityLane(config.thresholds),
            metrics=self.metrics,
            max_message_bytes=config.max_message_bytes,
            buffer_max_bytes=config.buffer.max_bytes,
            compress=config.compress,
        )
        self.publisher = Publisher(
            config.publish,
            self.buffer,
            self.metrics,
            gateway_id=config.gateway_id,
            status=self.status,
        )
        self.sources = self._sources()

    def status(self, state: str = "online") -> GatewayStatus:
        """The gateway's health as the retained status message reports it."""
        stats = self.buffer.stats()
        return GatewayStatus(
            gateway_id=self.config.gateway_id,
            state=state,  # type: ignore[arg-type]
            sent_ms=int(time.time() * 1000),
            version=VERSION,
            buffer_rows=stats.messages,
            buffer_bytes=stats.payload_bytes,
            dropped_readings=stats.dropped_readings + stats.refused_readings + self.pipeline.late,
        )

    def request_stop(self) -> None:
        """Ask `run()` to shut down cleanly (what SIGTERM does)."""
        self._stop.set()

    def request_rotation(self) -> None:
        """Ask `run()` to load the certificate files again (what SIGHUP does)."""
        self._rotate.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP rotates the certificate; handlers only set flags."""

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self.request_stop()

        def _hup(_signum: int, _frame: FrameType | None) -> None:
            log.info("signal SIGHUP: reloading certificate")
            self.request_rotation()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGHUP, _hup)

    def run(self) -> int:
        """Run until stopped; close windows, flush, wait for acks, exit 0."""
        restored = self.pipeline.recover()
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
        # The publisher outlives SIGTERM: it delivers the flushed windows before it stops.
        publisher_stop = threading.Event()
        publisher = threading.Thread(
            target=self.publisher.run, args=(publisher_stop,), name="publisher", daemon=True
        )
        publisher.start()
        for source in self.sources:
            source.start(self.pipeline)
        watchdog = Watchdog(self._notifier)
        watchdog.start()
        self._notifier.ready(
            f"gateway {self.config.gateway_id}: {len(self.sources)} sources, "
            f"{restored} readings recovered"
        )
        log.info(
            "started gateway=%s sources=%s window_s=%d buffer=%s",
            self.config.gateway_id,
            ",".join(s.name for s in self.sources),
            self.config.windows.size_s,
            self.config.buffer.path,
        )
        next_status = 0.0
        try:
            while not self._stop.is_set():
                self.pipeline.step()
                watchdog.heartbeat()
                self._maybe_rotate()
                if self._stdin_done():
                    log.info("stdin closed: stopping")
                    break
                now = time.monotonic()
                if now >= next_status:
                    next_status = now + 1.0
                    self._update_gauges()
        finally:
            self._shutdown(watchdog, publisher, publisher_stop)
        return 0

    def _shutdown(
        self, watchdog: Watchdog, publisher: threading.Thread, publisher_stop: threading.Event
    ) -> None:
        self._notifier.stopping()
        self.pipeline.stop_accepting()
        # Journal what is queued first, so sources can acknowledge it before they stop.
        self.pipeline.drain()
        for source in self.sources:
            source.stop()
        self.pipeline.flush()
        drained = self.publisher.drain(self.config.drain_timeout_s)
        publisher_stop.set()
        publisher.join(timeout=self.config.drain_timeout_s + 5)
        watchdog.stop()
        self._update_gauges()
        stats = self.buffer.stats()
        log.info(
            "stopped drained=%s buffered_messages=%d delivered_readings=%d dropped_readings=%d",
            drained,
            stats.messages,
            stats.delivered_readings,
            stats.dropped_readings,
        )
        self.buffer.close()

    def _sources(self) -> list[Source]:
        cfg = self.config
        sources: list[Source] = []
        if cfg.socket is not None:
            sources.append(UnixSocketSource(cfg.socket.path, self.metrics, mode=cfg.socket.mode))
        if cfg.local_mqtt is not None:
            sources.append(LocalMqttSource(cfg.local_mqtt, self.metrics))
        if cfg.modbus is not None:
            sources.append(ModbusSource(cfg.modbus, self.metrics))
        if self._stdin is not None:
            sources.append(StdinSource(self._stdin, self.metrics))
        return sources

    def _stdin_done(self) -> bool:
        return any(isinstance(s, StdinSource) and s.done.is_set() for s in self.sources)

    def _mtimes(self) -> tuple[float, float]:
        return _mtime(self.config.publish.cert_file), _mtime(self.config.publish.key_file)

    def _maybe_rotate(self) -> None:
        now = time.monotonic()
        if now >= self._next_cert_check:
            self._next_cert_check = now + self.config.cert_check_interval_s
            mtimes = self._mtimes()
            if mtimes != self._cert_mtimes:
                self._cert_mtimes = mtimes
                log.info("certificate files changed: reloading")
                self._rotate.set()
        if not self._rotate.is_set():
            return
        self._rotate.clear()
        # Proving the new certificate takes a connection round trip; keep the pipeline going.
        threading.Thread(target=self._rotate_now, name="rotate", daemon=True).start()

    def _rotate_now(self) -> None:
        result = self.publisher.rotate(self.config.publish.cert_file, self.config.publish.key_file)
        if result.ok:
            log.info("certificate rotated")
            self._notifier.status("certificate rotated")
        else:
            log.error("certificate rotation refused, keeping the old one: %s", result.reason)
            self._notifier.status(f"certificate rotation failed: {result.reason}")

    def _update_gauges(self) -> None:
        stats = self.buffer.stats()
        self.metrics.buffer_messages.set(stats.messages)
        self.metrics.buffer_bytes.set(stats.payload_bytes)


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
