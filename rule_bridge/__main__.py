"""`rule-bridge --config FILE`: run the MQTT → Kinesis bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import boto3

from rule_bridge.bridge import Bridge
from rule_bridge.config import load_config
from rule_bridge.errors import ConfigError
from rule_bridge.kinesis import KinesisSink
from rule_bridge.mqtt import MqttSource

log = logging.getLogger("rule_bridge")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rule-bridge` console script."""
    parser = argparse.ArgumentParser(
        prog="rule-bridge",
        description="Forward gateway telemetry from an MQTT broker to Kinesis, "
        "acknowledging each message only after Kinesis accepted it.",
    )
    parser.add_argument("--config", type=Path, required=True, help="bridge TOML config")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"rule-bridge: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"rule-bridge: {args.config}: ok")
        return 0
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    client = boto3.client(
        "kinesis", region_name=config.kinesis.region, endpoint_url=config.kinesis.endpoint_url
    )
    sink = KinesisSink(client, config.kinesis.stream, max_backoff_s=config.kinesis.max_backoff_s)
    source = MqttSource(config.mqtt)
    bridge = Bridge(source, sink, config.kinesis, status_file=config.status_file)
    log.info(
        "starting broker=%s:%d stream=%s topics=%s",
        config.mqtt.host,
        config.mqtt.port,
        config.kinesis.stream,
        ",".join(config.mqtt.topics),
    )
    source.start()
    try:
        bridge.run(stop)
    finally:
        source.close()
        log.info("stopped %s", " ".join(f"{k}={v}" for k, v in vars(bridge.stats).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
