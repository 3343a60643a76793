"""`meterlink stack up | down | status`: the local stand-in for AWS on one machine.

Three real servers on loopback: Mosquitto (mTLS, per-gateway ACL, CRL) for IoT Core, a moto
server for Kinesis, DynamoDB and S3 (provisioned from the CloudFormation template), and the rule
bridge for the IoT topic rule. Their pids and endpoints are kept in `.meterlink/stack.json`.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from meterlink_stack import aws_local, broker, pki, procs
from meterlink_stack.provision import Provisioned, provision

DEFAULT_MQTT_PORT = 8883
DEFAULT_AWS_PORT = 4566
STATE_VERSION = 1
_BRIDGE_READY_TIMEOUT_S = 30.0
_BRIDGE_STALE_S = 10.0


class StackError(Exception):
    """A stack command could not do its job; the message is one line for the user."""


class StackAlreadyRunningError(StackError):
    """`up` found every part of a stack already running; `info` describes it."""

    def __init__(self, info: StackInfo) -> None:
        pids = ", ".join(f"{p.name} pid {p.pid}" for p in info.processes.values())
        super().__init__(f"already running ({pids}); `meterlink stack down` stops it")
        self.info = info


@dataclass(frozen=True)
class StackPaths:
    """Where one stack keeps its state; tests point these at temporary folders."""

    state_dir: Path
    pki_dir: Path
    template: Path

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def broker(self) -> broker.BrokerFiles:
        return broker.BrokerFiles(self.state_dir / "broker")

    @property
    def bridge_config(self) -> Path:
        return self.state_dir / "rule-bridge.toml"

    @property
    def bridge_status(self) -> Path:
        return self.state_dir / "rule-bridge.status.json"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"


@dataclass(frozen=True)
class StackInfo:
    """Everything a client needs to use the stack; written to the state file as JSON."""

    mqtt_host: str
    mqtt_port: int
    ca_file: str
    aws_endpoint_url: str
    aws_region: str
    aws_access_key_id: str
    aws_secret_access_key: str
    resources: dict[str, Any]
    processes: dict[str, procs.ManagedProcess] = field(default_factory=dict)
    version: int = STATE_VERSION

    @property
    def stream(self) -> str:
        return str(self.resources["stream_name"])

    def to_json(self) -> bytes:
        """The state file's bytes: stable keys, indented for people who `cat` it."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> StackInfo:
        doc = orjson.loads(data)
        processes = {k: procs.ManagedProcess(**v) for k, v in doc.pop("processes", {}).items()}
        return cls(processes=processes, **doc)


@dataclass(frozen=True)
class PartHealth:
    """One line of `stack status`."""

    name: str
    healthy: bool
    detail: str


def load(paths: StackPaths) -> StackInfo | None:
    """The recorded stack, or None when there is none (or the file is unreadable)."""
    try:
        return StackInfo.from_json(paths.state_file.read_bytes())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def up(
    paths: StackPaths,
    *,
    mqtt_port: int = DEFAULT_MQTT_PORT,
    aws_port: int = DEFAULT_AWS_PORT,
    prefix: str = "meterlink",
    say: Callable[[str], None] = lambda _msg: None,
) -> StackInfo:
    """Start broker, local AWS and bridge; provision resources; return what was started."""
    existing = load(paths)
    if existing is not None:
        running = [p for p in existing.processes.values() if p.is_running()]
        if running and len(running) == len(existing.processes):
            raise StackAlreadyRunningError(existing)
        if running:
            names = ", ".join(p.name for p in running)
            raise StackError(
                f"partly running ({names} up, others dead); run `meterlink stack down` first"
            )
        paths.state_file.unlink(missing_ok=True)

    broker.find_mosquitto()
    mqtt_port = _claim_port(mqtt_port, "--mqtt-port")
    aws_port = _claim_port(aws_port, "--aws-port")
    if mqtt_port == aws_port:
        raise StackError("--mqtt-port and --aws-port must differ")
    paths.state_dir.mkdir(parents=True, exist_ok=True)

    layout = pki.init_pki(paths.pki_dir)
    pki.refresh_crl(paths.pki_dir)
    _ensure_bridge_identity(layout)

    endpoint = aws_local.endpoint_url(aws_port)
    info = StackInfo(
        mqtt_host="localhost",
        mqtt_port=mqtt_port,
        ca_file=str(layout.ca_cert.resolve()),
        aws_endpoint_url=endpoint,
        aws_region=aws_local.LOCAL_REGION,
        aws_access_key_id=aws_local.LOCAL_ACCESS_KEY_ID,
        aws_secret_access_key=aws_local.LOCAL_SECRET_ACCESS_KEY,
        resources={},
    )
    try:
        broker.prepare(paths.broker, layout, port=mqtt_port)
        info = _record(paths, info, broker.start(paths.broker, port=mqtt_port))
        say(f"mosquitto  mqtts://localhost:{mqtt_port}  (mTLS, per-gateway ACL, CRL)")

        info = _record(paths, info, aws_local.start(paths.logs / "moto.log", port=aws_port))
        provisioned = provision(
            paths.template,
            endpoint_url=endpoint,
            region=info.aws_region,
            parameters={"Prefix": prefix},
            session=_session(info),
        )
        info = replace(info, resources=asdict(provisioned))
        _save(paths, info)
        say(
            f"local AWS  {endpoint}  (Kinesis {provisioned.stream_name}: "
            f"{provisioned.shard_count} shards; DynamoDB; S3 {provisioned.archive_bucket})"
        )

        _write_bridge_config(paths, info, layout, provisioned)
        info = _record(paths, info, _start_bridge(paths, info))
        say(f"rule bridge  dt/meterlink/+/telemetry|events -> kinesis:{provisioned.stream_name}")
    except BaseException:
        _stop_all(info)
        paths.state_file.unlink(missing_ok=True)
        raise
    return info


def down(paths: StackPaths) -> list[str]:
    """Stop every recorded process (bridge first, so it finishes its batch); return their names."""
    info = load(paths)
    if info is None:
        return []
    stopped = _stop_all(info)
    paths.state_file.unlink(missing_ok=True)
    return stopped


def status(paths: StackPaths) -> list[PartHealth]:
    """Health of each part: process alive, and the server answering like a client expects."""
    info = load(paths)
    if info is None:
        return []
    parts = []
    for name, proc in info.processes.items():
        if not proc.is_running():
            parts.append(PartHealth(name, False, f"not running (pid {proc.pid}); see {proc.log}"))
            continue
        healthy, detail = _PROBES[name](paths, info)
        parts.append(PartHealth(name, healthy, f"pid {proc.pid}; {detail}"))
    return parts


def restart_bridge(paths: StackPaths) -> procs.ManagedProcess:
    """Stop the recorded bridge if it still runs and start a new one (after a crash, say)."""
    info = load(paths)
    if info is None:
        raise StackError("not running; start it with `meterlink stack up`")
    old = info.processes.get("rule-bridge")
    if old is not None:
        old.stop()
    proc = _start_bridge(paths, info)
    _record(paths, info, proc)
    return proc


def agent_config(
    paths: StackPaths,
    gateway_id: str,
    *,
    folder: Path | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write an edge-agent config for `gateway_id` that talks to the running stack.

    The gateway's certificate is issued if it has none; buffer and socket live in `folder`
    (default `<state dir>/agents/<gateway id>`). `settings` overrides keys per table.
    """
    info = load(paths)
    if info is None:
        raise StackError("not running; start it with `meterlink stack up`")
    layout = pki.PkiLayout(paths.pki_dir)
    if not layout.client_cert(gateway_id).exists():
        pki.issue_client(paths.pki_dir, gateway_id)
    folder = (folder or paths.state_dir / "agents" / gateway_id).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    tables: dict[str, dict[str, Any]] = {
        "gateway": {"id": gateway_id},
        "sources.socket": {"path": str(folder / "readings.sock")},
        "windows": {"size_s": 60, "allowed_lateness_s": 10},
        "buffer": {"path": str(folder / "buffer.db"), "max_bytes": 64 * 1024 * 1024},
        "publish": {
            "endpoint": info.mqtt_host,
            "port": info.mqtt_port,
            "ca_file": info.ca_file,
            "cert_file": str(layout.client_cert(gateway_id).resolve()),
            "key_file": str(layout.client_key(gateway_id).resolve()),
        },
    }
    for table, values in (settings or {}).items():
        tables.setdefault(table, {}).update(values)
    lines = [
        f"# Generated by `meterlink stack agent-config {gateway_id}`; see config/edge-agent.toml."
    ]
    for table, values in tables.items():
        lines.append(f"\n[{table}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    path = folder / "edge-agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def stop_broker(paths: StackPaths) -> None:
    """Stop the recorded broker (an outage, for chaos tests and maintenance)."""
    info = load(paths)
    proc = info.processes.get("mosquitto") if info else None
    if proc is not None:
        proc.stop()


def start_broker(paths: StackPaths) -> procs.ManagedProcess:
    """Start the broker again on its recorded port, with its persisted sessions and queues."""
    info = load(paths)
    if info is None:
        raise StackError("not running; start it with `meterlink stack up`")
    old = info.processes.get("mosquitto")
    if old is not None and old.is_running():
        return old
    broker.sync_tls(paths.broker, pki.PkiLayout(paths.pki_dir))
    proc = broker.start(paths.broker, port=info.mqtt_port)
    _record(paths, info, proc)
    return proc


def reload_broker_tls(paths: StackPaths) -> bool:
    """Copy fresh CRL and certificates to a running broker and make it re-read them."""
    info = load(paths)
    proc = info.processes.get("mosquitto") if info else None
    if proc is None or not proc.is_running():
        return False
    broker.sync_tls(paths.broker, pki.PkiLayout(paths.pki_dir))
    if not broker.reload(proc, paths.broker):
        raise StackError(f"the broker did not confirm the reload; see {paths.broker.log}")
    return True


def _probe_mosquitto(paths: StackPaths, info: StackInfo) -> tuple[bool, str]:
    layout = pki.PkiLayout(paths.pki_dir)
    context = ssl.create_default_context(cafile=info.ca_file)
    context.load_cert_chain(
        layout.client_cert(broker.BRIDGE_IDENTITY), layout.client_key(broker.BRIDGE_IDENTITY)
    )
    try:
        with (
            socket.create_connection((info.mqtt_host, info.mqtt_port), timeout=3) as raw,
            context.wrap_socket(raw, server_hostname=info.mqtt_host) as tls,
        ):
            version = tls.version()
    except (OSError, ssl.SSLError) as exc:
        return False, f"TLS handshake failed: {exc}"
    return True, f"mqtts://{info.mqtt_host}:{info.mqtt_port} ({version} handshake ok)"


def _probe_moto(paths: StackPaths, info: StackInfo) -> tuple[bool, str]:
    if not aws_local.is_healthy(info.aws_endpoint_url):
        return False, f"{info.aws_endpoint_url} does not answer"
    try:
        client = _session(info).client("kinesis", endpoint_url=info.aws_endpoint_url)
        summary = client.describe_stream_summary(StreamName=info.stream)
        state = summary["StreamDescriptionSummary"]["StreamStatus"]
    except Exception as exc:
        return False, f"stream {info.stream}: {exc}"
    return state == "ACTIVE", f"{info.aws_endpoint_url} (stream {info.stream} {state})"


def _probe_bridge(paths: StackPaths, info: StackInfo) -> tuple[bool, str]:
    try:
        doc = orjson.loads(paths.bridge_status.read_bytes())
    except (OSError, ValueError):
        return False, "no status file yet"
    age = time.time() - doc["updated_ms"] / 1000
    counts = f"forwarded {doc['forwarded']}, acked {doc['acked']}, reconnects {doc['reconnects']}"
    if not doc["connected"]:
        return False, f"not connected to the broker; {counts}"
    if age > _BRIDGE_STALE_S:
        return False, f"status {age:.0f}s old (loop stuck?); {counts}"
    return True, f"connected; {counts}"


_PROBES: dict[str, Callable[[StackPaths, StackInfo], tuple[bool, str]]] = {
    "mosquitto": _probe_mosquitto,
    "moto": _probe_moto,
    "rule-bridge": _probe_bridge,
}


def _ensure_bridge_identity(layout: pki.PkiLayout) -> None:
    """Issue the bridge's certificate when it is missing, revoked or its files are lost."""
    name = broker.BRIDGE_IDENTITY
    current = [c for c in pki.list_certs(layout.root) if c.kind == "client" and c.name == name]
    usable = current and not current[0].revoked
    files = layout.client_cert(name).exists() and layout.client_key(name).exists()
    if not (usable and files):
        pki.issue_client(layout.root, name, overwrite=bool(usable))


def _claim_port(port: int, flag: str) -> int:
    if port == 0:
        return procs.pick_free_port()
    if not procs.port_is_free(port):
        raise StackError(f"port {port} on 127.0.0.1 is already in use; choose another with {flag}")
    return port


def _session(info: StackInfo) -> Any:
    import boto3  # noqa: PLC0415 - only the stack commands need boto3

    return boto3.Session(
        aws_access_key_id=info.aws_access_key_id,
        aws_secret_access_key=info.aws_secret_access_key,
        region_name=info.aws_region,
    )


def _write_bridge_config(
    paths: StackPaths, info: StackInfo, layout: pki.PkiLayout, provisioned: Provisioned
) -> None:
    text = "\n".join(
        [
            "# Generated by `meterlink stack up`; config/rule-bridge.toml is the annotated form.",
            "[mqtt]",
            f'host = "{info.mqtt_host}"',
            f"port = {info.mqtt_port}",
            f'ca_file = "{layout.ca_cert.resolve()}"',
            f'cert_file = "{layout.client_cert(broker.BRIDGE_IDENTITY).resolve()}"',
            f'key_file = "{layout.client_key(broker.BRIDGE_IDENTITY).resolve()}"',
            f'client_id = "{broker.BRIDGE_IDENTITY}"',
            "",
            "[kinesis]",
            f'stream = "{provisioned.stream_name}"',
            f'region = "{info.aws_region}"',
            f'endpoint_url = "{info.aws_endpoint_url}"',
            "",
            "[bridge]",
            f'status_file = "{paths.bridge_status.resolve()}"',
            "",
        ]
    )
    paths.bridge_config.write_text(text)


def _start_bridge(paths: StackPaths, info: StackInfo) -> procs.ManagedProcess:
    paths.bridge_status.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=info.aws_access_key_id,
        AWS_SECRET_ACCESS_KEY=info.aws_secret_access_key,
        AWS_DEFAULT_REGION=info.aws_region,
    )
    config = str(paths.bridge_config.resolve())
    proc = procs.spawn(
        "rule-bridge",
        [sys.executable, "-m", "rule_bridge", "--config", config],
        log=paths.logs / "rule-bridge.log",
        marker=config,
        env=env,
    )
    deadline = time.monotonic() + _BRIDGE_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not proc.is_running():
            raise StackError(f"rule bridge exited at start: {procs.tail(proc.log)}")
        healthy, _detail = _probe_bridge(paths, info)
        if healthy:
            return proc
        time.sleep(0.1)
    proc.stop()
    raise StackError(
        f"rule bridge did not connect within {_BRIDGE_READY_TIMEOUT_S:.0f}s: {procs.tail(proc.log)}"
    )


def _record(paths: StackPaths, info: StackInfo, proc: procs.ManagedProcess) -> StackInfo:
    info = replace(info, processes={**info.processes, proc.name: proc})
    _save(paths, info)
    return info


def _save(paths: StackPaths, info: StackInfo) -> None:
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_bytes(info.to_json())
    os.replace(tmp, paths.state_file)


def _stop_all(info: StackInfo) -> list[str]:
    order = ["rule-bridge", "mosquitto", "moto"]
    stopped = []
    for name in sorted(info.processes, key=lambda n: order.index(n) if n in order else 99):
        proc = info.processes[name]
        if proc.is_running():
            proc.stop()
            stopped.append(name)
    return stopped
