"""Edge agent benchmark: prints figures beside a naive agent measured in the same run.

    .venv/bin/python bench/edge_agent_bench.py [--readings 300000] [--repeats 3]

Figures (medians of --repeats on this shared, noisy machine; ratios matter more than absolutes):
1. ingest: readings/s through socket source → validation → windows → durable buffer
   (SQLite WAL, synchronous=FULL) with the agent pinned to ONE core and the feeder on another.
2. messages and bytes per reading for 100 meters x 1 reading/s with 60 s windows (one hour).
3. publishing: readings/s through the MQTT publisher to the local mTLS broker, at IoT Core's
   limits (100 publishes/s, 100 in flight), and peak RSS of a real `edge-agent` process.
The naive agent publishes one paho QoS 1 message per reading to the same broker.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import paho.mqtt.client as paho

from edge_agent.aggregate import WindowAggregator
from edge_agent.buffer import DurableBuffer
from edge_agent.metrics import AgentMetrics
from edge_agent.pipeline import Pipeline
from edge_agent.priority import DEFAULT_THRESHOLDS, PriorityLane
from edge_agent.sources.socket import UnixSocketSource
from meterlink_stack import pki, procs, stack
from meterlink_wire import Channel, ReadingBatch, Unit, encode_split

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "cloudformation" / "meterlink.yaml"
METERS = 100
T0 = 1_764_201_600  # a whole hour, so windows line up


def lines(n: int, *, t0: int = T0) -> bytes:
    """`n` JSON lines: METERS meters reading once a second each, in time order."""
    out = []
    for i in range(n):
        meter, tick = i % METERS, i // METERS
        out.append(
            orjson.dumps(
                {
                    "meter": f"elec-{meter:06d}",
                    "channel": "power",
                    "unit": "kW",
                    "value": 1.0 + (tick % 17) * 0.1,
                    "ts": t0 + tick,
                }
            )
        )
    return b"\n".join(out) + b"\n"


def _feed(path: str, payload: bytes, n: int, done: mp.Queue) -> None:  # type: ignore[type-arg]
    """Feeder process (pinned to the other core): write everything, wait for the last ok."""
    os.sched_setaffinity(0, {1})
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    start = time.perf_counter()
    reader_done = threading.Event()
    acked = [0]

    def read() -> None:
        pending = b""
        while acked[0] < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            pending += chunk
            *got, pending = pending.split(b"\n")
            for line in got:
                if line.startswith(b"ok "):
                    acked[0] = max(acked[0], int(line.split()[1]))
        reader_done.set()

    threading.Thread(target=read, daemon=True).start()
    sock.sendall(payload)
    reader_done.wait(300)
    done.put((time.perf_counter() - start, acked[0]))


def bench_ingest(n: int) -> float:
    """Readings/s from socket to durable buffer, agent on core 0, feeder on core 1."""
    os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as tmp:
        metrics = AgentMetrics()
        buffer = DurableBuffer(Path(tmp) / "buffer.db", max_bytes=1 << 30)
        ingested = [0]
        pipeline = Pipeline(
            gateway_id="gw-bench",
            buffer=buffer,
            aggregator=WindowAggregator(60, 10.0),
            lane=PriorityLane(DEFAULT_THRESHOLDS),
            metrics=metrics,
            max_message_bytes=128_000,
            buffer_max_bytes=1 << 30,
            # Event time: the clock follows the data, so windows close as a live agent's would.
            clock=lambda: T0 + ingested[0] / METERS,
        )
        source = UnixSocketSource(Path(tmp) / "readings.sock", metrics)
        source.start(pipeline)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                ingested[0] += pipeline.step(0.05)

        payload = lines(n)
        done: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        feeder = mp.Process(target=_feed, args=(str(Path(tmp) / "readings.sock"), payload, n, done))
        runner = threading.Thread(target=loop)
        runner.start()
        feeder.start()
        elapsed, acked = done.get(timeout=600)
        feeder.join()
        stop.set()
        runner.join()
        source.stop()
        buffer.close()
        assert acked == n, f"only {acked} of {n} acknowledged"
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return n / elapsed


def bench_message_efficiency() -> tuple[float, float, float, float]:
    """(messages/reading, bytes/reading) for windows vs one message per reading."""
    aggregator = WindowAggregator(60, 10.0)
    from edge_agent.reading import Reading  # noqa: PLC0415

    messages = payload_bytes = readings = 0
    seq = 0
    for second in range(3600):
        batch = [
            Reading(f"elec-{m:06d}", Channel.POWER, Unit.KW, (T0 + second) * 1000, 1.0 + m % 7)
            for m in range(METERS)
        ]
        readings += len(batch)
        aggregator.add(batch)
        closed = aggregator.close_due((T0 + second + 1) * 1000)
        if closed.rows:
            rb = ReadingBatch.from_rows(
                gateway_id="gw-bench",
                sequence=seq,
                sent_ms=(T0 + second) * 1000,
                window_s=60,
                rows=closed.rows,
            )
            parts = encode_split(rb)
            seq += len(parts)
            messages += len(parts)
            payload_bytes += sum(len(p) for _b, p in parts)
    naive_bytes = len(
        orjson.dumps(
            {
                "meter": "elec-000001",
                "channel": "power",
                "unit": "kW",
                "value": 1.23,
                "ts": T0 + 0.5,
            }
        )
    )
    return messages / readings, payload_bytes / readings, 1.0, float(naive_bytes)


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def bench_agent_process(
    paths: stack.StackPaths, n: int, gateway: str
) -> tuple[float, float, float]:
    """A real `edge-agent` process: (readings/s fed → acknowledged by the broker, peak RSS MB,
    MQTT messages per reading). 1 s windows, so the figure includes waiting for them to close."""
    port = procs.pick_free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = stack.agent_config(
            paths,
            gateway,
            folder=Path(tmp),
            settings={
                "windows": {"size_s": 1, "allowed_lateness_s": 0.2},
                "metrics": {"port": port},
                "priority": {"enabled": False},
            },
        )
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.sched_setaffinity(agent.pid, {0})
        sock_path = Path(tmp) / "readings.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while sock.connect_ex(str(sock_path)) != 0:  # the file appears at bind(), before listen()
            time.sleep(0.05)
        now = time.time()
        ticks = n // METERS
        payload = b"".join(
            orjson.dumps(
                {
                    "meter": f"elec-{i % METERS:06d}",
                    "channel": "power",
                    "unit": "kW",
                    "value": 1.0,
                    "ts": now + 1 + (i // METERS) * 2.0 / ticks,
                }
            )
            + b"\n"
            for i in range(n)
        )
        start = time.perf_counter()
        threading.Thread(target=_discard_replies, args=(sock,), daemon=True).start()
        sock.sendall(payload)
        while _scrape(port).get("meterlink_agent_readings_delivered_total", 0) < n:
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        metrics = _scrape(port)
        rss = _peak_rss_mb(agent.pid)
        sock.close()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
    messages = metrics.get("meterlink_agent_messages_published_total", 0.0)
    return n / elapsed, rss, messages / n


def _discard_replies(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_naive(paths: stack.StackPaths, n: int, gateway: str) -> float:
    """The naive agent: one paho QoS 1 message per reading (100 in flight), one core."""
    os.sched_setaffinity(0, {0})
    info = stack.load(paths)
    assert info is not None
    layout = pki.PkiLayout(paths.pki_dir)
    if not layout.client_cert(gateway).exists():
        pki.issue_client(paths.pki_dir, gateway)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=gateway, protocol=paho.MQTTv5)
    context = ssl.create_default_context(cafile=info.ca_file)
    context.load_cert_chain(layout.client_cert(gateway), layout.client_key(gateway))
    client.tls_set_context(context)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    acked = [0]
    client.on_publish = lambda *_args: acked.__setitem__(0, acked[0] + 1)
    client.connect(info.mqtt_host, info.mqtt_port)
    client.loop_start()
    topic = f"dt/meterlink/{gateway}/telemetry"
    start = time.perf_counter()
    for line in lines(n).splitlines():
        reading = orjson.loads(line)  # what a naive agent does per reading
        client.publish(topic, orjson.dumps(reading), qos=1)
    while acked[0] < n:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return n / elapsed


def median(fn: Callable[[], float], repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"edge agent benchmark: {args.readings:,} readings, median of {args.repeats}")
    ingest = median(lambda: bench_ingest(args.readings), args.repeats)
    print(
        f"  ingest, socket → windows → durable (FULL), one core: {ingest:,.0f} readings/s"
        f"   target >= 100,000"
    )
    mpr, bpr, naive_mpr, naive_bpr = bench_message_efficiency()
    print(
        f"  MQTT messages per reading (100 meters, 1/s, 60 s windows): {mpr:.5f}"
        f"   naive {naive_mpr:.0f}   target <= 0.01"
    )
    print(f"  payload bytes per reading: {bpr:.2f}   naive {naive_bpr:.0f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o711)
        paths = stack.StackPaths(root / "state", root / "pki", TEMPLATE)
        stack.up(paths, mqtt_port=0, aws_port=0)
        try:
            runs = [
                bench_agent_process(paths, args.readings, f"gw-bench-{i}")
                for i in range(args.repeats)
            ]
            naive_n = min(args.readings, 50_000)
            naive = median(lambda: bench_naive(paths, naive_n, "gw-bench-naive"), args.repeats)
        finally:
            stack.down(paths)
    e2e = statistics.median(r[0] for r in runs)
    rss = max(r[1] for r in runs)
    mpr_live = statistics.median(r[2] for r in runs)
    print(
        f"  end to end, socket → broker PUBACK, real edge-agent process (1 s windows): "
        f"{e2e:,.0f} readings/s   naive agent {naive:,.0f} readings/s ({e2e / naive:.1f}x)"
    )
    print(
        f"  naive agent under IoT Core's 100 publishes/s per connection: 100 readings/s "
        f"({e2e / 100:,.0f}x)"
    )
    print(f"  MQTT messages per reading in that run: {mpr_live:.5f}")
    print(f"  peak RSS of the edge-agent process: {rss:.1f} MB   target <= 60 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
