"""`edge-agent`: the MeterLink gateway agent (sources → windows → durable buffer → MQTT)."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import logging
import os
import sys
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from meterlink_config import ConfigError

# journald reads a "<N>" prefix as the syslog priority of the line (SyslogLevelPrefix=).
_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JournalFormatter(logging.Formatter):
    """Lines for journald: priority prefix, no timestamp (journald adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        return (
            f"<{_JOURNAL_PRIORITY.get(record.levelname, 6)}>{record.name}: {super().format(record)}"
        )


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the `edge-agent` console script."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('meterlink')}")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/meterlink/edge-agent.toml"),
        help="agent TOML config (default /etc/meterlink/edge-agent.toml)",
    )
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument(
        "--stdin", action="store_true", help="also read JSON-line readings from stdin"
    )
    args = parser.parse_args(argv)

    # Imported here so `--version` and `--help` work without the agent's optional packages.
    from edge_agent.agent import Agent  # noqa: PLC0415
    from edge_agent.config import load_config  # noqa: PLC0415

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"edge-agent: {args.config}: ok (gateway {config.gateway_id})")
        return 0
    _setup_logging(config.log_level, under_journald="JOURNAL_STREAM" in env)
    # A watchdog kill (SIGABRT) then leaves every thread's stack in the journal.
    with contextlib.suppress(io.UnsupportedOperation, ValueError):
        faulthandler.enable()
    agent = Agent(config, environ=env, stdin=sys.stdin.buffer if args.stdin else None)
    agent.install_signal_handlers()
    return agent.run()


def _setup_logging(level: str, *, under_journald: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if under_journald:
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # pymodbus logs every failed poll at ERROR with a frame dump; the Modbus source logs
    # reachability changes itself, once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
