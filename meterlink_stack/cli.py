"""`meterlink`: developer tooling — the local stack and the device PKI.

Every user mistake ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from meterlink_stack import broker, pki, stack
from meterlink_stack.aws_local import AwsLocalError
from meterlink_stack.provision import ProvisionError
from meterlink_wire import (
    Channel,
    ReadingBatch,
    Unit,
    WindowRow,
    WireError,
    billing_units,
    decode,
    encode,
)

_REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = _REPO_ROOT / "deploy" / "cloudformation" / "meterlink.yaml"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `meterlink` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (
        stack.StackError,
        pki.PkiError,
        broker.BrokerError,
        AwsLocalError,
        ProvisionError,
        WireError,
        ValueError,
        OSError,
    ) as exc:
        print(f"meterlink {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"meterlink {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterlink", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".meterlink"),
        help="where the local stack keeps pids, logs and endpoints (default: .meterlink)",
    )
    parser.add_argument(
        "--pki-dir",
        type=Path,
        default=Path("certs/dev"),
        help="the dev PKI folder, git-ignored (default: certs/dev)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    stack_cmd = commands.add_parser("stack", help="run the local stand-in for AWS")
    stack_verbs = stack_cmd.add_subparsers(dest="verb", required=True)
    up = stack_verbs.add_parser("up", help="start mosquitto, local AWS and the rule bridge")
    up.add_argument(
        "--mqtt-port",
        type=int,
        default=stack.DEFAULT_MQTT_PORT,
        help=f"MQTT/TLS port (default {stack.DEFAULT_MQTT_PORT}; 0 picks a free one)",
    )
    up.add_argument(
        "--aws-port",
        type=int,
        default=stack.DEFAULT_AWS_PORT,
        help=f"local AWS port (default {stack.DEFAULT_AWS_PORT}; 0 picks a free one)",
    )
    up.add_argument("--prefix", default="meterlink", help="resource name prefix (template Prefix)")
    up.add_argument(
        "--template",
        type=Path,
        default=DEFAULT_TEMPLATE,
        help="CloudFormation template the resources are provisioned from",
    )
    up.set_defaults(handler=_stack_up)
    stack_verbs.add_parser("down", help="stop what `up` started").set_defaults(handler=_stack_down)
    agent = stack_verbs.add_parser(
        "agent-config", help="write an edge-agent config that talks to this stack"
    )
    agent.add_argument("gateway_id")
    agent.set_defaults(handler=_stack_agent_config)
    stack_verbs.add_parser("status", help="health of each part").set_defaults(handler=_stack_status)

    certs = commands.add_parser("certs", help="the dev CA and gateway certificates")
    verbs = certs.add_subparsers(dest="verb", required=True)
    verbs.add_parser("init", help="create the dev root CA, server cert and CRL").set_defaults(
        handler=_certs_init
    )
    issue = verbs.add_parser("issue", help="issue a client certificate whose CN is the gateway id")
    issue.add_argument("gateway_id")
    issue.add_argument("--days", type=int, default=365)
    issue.set_defaults(handler=_certs_issue)
    verbs.add_parser("list", help="certificates, expiry dates and revocations").set_defaults(
        handler=_certs_list
    )
    revoke = verbs.add_parser("revoke", help="revoke a gateway certificate (the broker reloads)")
    revoke.add_argument("gateway_id")
    revoke.set_defaults(handler=_certs_revoke)

    wire = commands.add_parser("wire", help="make and inspect wire-format payloads")
    wire_verbs = wire.add_subparsers(dest="verb", required=True)
    sample = wire_verbs.add_parser("sample", help="write a valid sample batch to stdout")
    sample.add_argument("--gateway", required=True, help="gateway id (the topic's third level)")
    sample.add_argument("--sequence", type=int, default=1)
    sample.add_argument("--meters", type=int, default=3, help="meters in the batch")
    sample.add_argument("--compress", action="store_true", help="zlib-compress the payload")
    sample.set_defaults(handler=_wire_sample)
    inspect = wire_verbs.add_parser("decode", help="validate a payload file and summarise it")
    inspect.add_argument("file", type=Path, help="payload file, or - for stdin")
    inspect.set_defaults(handler=_wire_decode)

    demo = commands.add_parser("demo", help="the end-to-end demo")
    demo.set_defaults(handler=_demo)
    return parser


def _paths(args: argparse.Namespace) -> stack.StackPaths:
    template = getattr(args, "template", DEFAULT_TEMPLATE)
    return stack.StackPaths(state_dir=args.state_dir, pki_dir=args.pki_dir, template=template)


def _stack_up(args: argparse.Namespace) -> int:
    if not args.template.is_file():
        raise stack.StackError(f"template not found: {args.template} (pass --template)")
    try:
        info = stack.up(
            _paths(args),
            mqtt_port=args.mqtt_port,
            aws_port=args.aws_port,
            prefix=args.prefix,
            say=lambda line: print(f"  started {line}"),
        )
    except stack.StackAlreadyRunningError as exc:
        print(f"meterlink stack: {exc}")
        _print_endpoints(_paths(args), exc.info)
        return 0
    print("meterlink stack: up")
    _print_endpoints(_paths(args), info)
    return 0


def _print_endpoints(paths: stack.StackPaths, info: stack.StackInfo) -> None:
    res = info.resources
    print(f"  mqtt        {info.mqtt_host}:{info.mqtt_port}  (TLS; CA {info.ca_file})")
    print(
        f"  aws         {info.aws_endpoint_url}  region {info.aws_region}  "
        f"key {info.aws_access_key_id}/{info.aws_secret_access_key}"
    )
    print(f"  stream      {res.get('stream_name')}  ({res.get('shard_count')} shards)")
    print(
        f"  tables      {res.get('alerts_table')}, {res.get('device_status_table')}, "
        f"{res.get('leases_table')}"
    )
    print(f"  bucket      {res.get('archive_bucket')}")
    print(f"  written to  {paths.state_file}")


def _stack_down(args: argparse.Namespace) -> int:
    stopped = stack.down(_paths(args))
    print(
        f"meterlink stack: stopped {', '.join(stopped)}"
        if stopped
        else "meterlink stack: not running"
    )
    return 0


def _stack_agent_config(args: argparse.Namespace) -> int:
    _refuse_reserved(args.gateway_id)
    path = stack.agent_config(_paths(args), args.gateway_id)
    print(path)
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    parts = stack.status(_paths(args))
    if not parts:
        print("meterlink stack: not running")
        return 3
    for part in parts:
        print(f"  {part.name:<12} {'ok  ' if part.healthy else 'FAIL'}  {part.detail}")
    return 0 if all(p.healthy for p in parts) else 1


def _refuse_reserved(gateway_id: str) -> None:
    """Gateway ids under `meterlink-` would share an identity with a service (the bridge)."""
    if gateway_id.startswith("meterlink-"):
        raise pki.PkiError(
            f"{gateway_id}: names starting with 'meterlink-' are reserved "
            "for MeterLink's own services"
        )


def _certs_init(args: argparse.Namespace) -> int:
    layout = pki.init_pki(args.pki_dir)
    print(f"meterlink certs: dev CA ready in {layout.root} (ca.crt, server.crt, ca.crl)")
    return 0


def _certs_issue(args: argparse.Namespace) -> int:
    _refuse_reserved(args.gateway_id)
    pki.init_pki(args.pki_dir)
    cert, key = pki.issue_client(args.pki_dir, args.gateway_id, days=args.days)
    print(f"meterlink certs: issued {args.gateway_id}\n  cert {cert}\n  key  {key} (0600)")
    return 0


def _certs_list(args: argparse.Namespace) -> int:
    if not pki.PkiLayout(args.pki_dir).ca_cert.exists():
        raise pki.PkiError(f"no dev CA in {args.pki_dir}; run `meterlink certs init`")
    print(f"{'NAME':<32} {'KIND':<7} {'EXPIRES (UTC)':<17} {'STATUS':<8} SERIAL")
    for cert in pki.list_certs(args.pki_dir):
        state = "revoked" if cert.revoked else "valid"
        print(
            f"{cert.name:<32} {cert.kind:<7} {cert.not_after:%Y-%m-%d %H:%M} "
            f"{state:<8} {cert.serial:x}"
        )
    return 0


def _certs_revoke(args: argparse.Namespace) -> int:
    info = pki.revoke(args.pki_dir, args.gateway_id)
    reloaded = stack.reload_broker_tls(_paths(args))
    note = "; the running broker reloaded its CRL" if reloaded else ""
    print(f"meterlink certs: revoked {info.name} (serial {info.serial:x}){note}")
    return 0


def _wire_sample(args: argparse.Namespace) -> int:
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - now_ms % 60_000 - 60_000
    rows = [
        WindowRow(
            f"elec-{i:06d}",
            Channel.POWER,
            Unit.KW,
            start_ms,
            60,
            0.2 + i % 5,
            3.1 + i % 5,
            1.4 + i % 5,
            1.9 + i % 5,
        )
        for i in range(args.meters)
    ]
    batch = ReadingBatch.from_rows(
        gateway_id=args.gateway, sequence=args.sequence, sent_ms=now_ms, window_s=60, rows=rows
    )
    sys.stdout.buffer.write(encode(batch, compress=args.compress))
    sys.stdout.buffer.flush()
    return 0


def _wire_decode(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if str(args.file) == "-" else args.file.read_bytes()
    batch = decode(data)
    print(
        f"{batch.kind} gateway={batch.gateway_id} seq={batch.sequence} "
        f"window_s={batch.window_s} rows={len(batch)} meters={len(batch.meters)} "
        f"bytes={len(data)} billing_units={billing_units(len(data))}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    print(
        "meterlink demo: the end-to-end demo arrives with the edge agent, consumer and simulator "
        "issues; today `meterlink stack up` runs the local stack (see README).",
        file=sys.stderr,
    )
    return 2
