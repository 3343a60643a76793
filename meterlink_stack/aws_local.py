"""The local AWS endpoint: one moto server answering Kinesis, DynamoDB and S3 on loopback."""

from __future__ import annotations

import importlib.util
import sys
import urllib.error
import urllib.request
from pathlib import Path

from meterlink_stack import procs

#: moto accepts any credentials; these make the intent obvious in the state file and the README.
LOCAL_ACCESS_KEY_ID = "testing"
LOCAL_SECRET_ACCESS_KEY = "testing"  # noqa: S105 - moto's documented dummy credential
LOCAL_REGION = "us-east-1"


class AwsLocalError(Exception):
    """The local AWS endpoint could not be started; the message says why in one line."""


def start(log: Path, *, port: int, host: str = "127.0.0.1") -> procs.ManagedProcess:
    """Start `moto_server` on `host:port` and wait until it answers HTTP."""
    if importlib.util.find_spec("moto") is None:
        raise AwsLocalError("moto is not installed; install the dev tools: pip install -e '.[dev]'")
    argv = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]
    proc = procs.spawn("moto", argv, log=log, marker=" ".join(argv[1:]))
    url = endpoint_url(port, host)
    if not procs.wait_for_port(port, host=host, timeout=30.0, proc=proc) or not is_healthy(url):
        proc.stop()
        raise AwsLocalError(f"moto server did not start on port {port}: {procs.tail(log)}")
    return proc


def endpoint_url(port: int, host: str = "127.0.0.1") -> str:
    """The single endpoint URL every boto3 client of the local stack uses."""
    return f"http://{host}:{port}"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether moto's management API answers."""
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=timeout) as response:  # noqa: S310
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False
