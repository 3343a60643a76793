"""`meterlink stack up | down | status` and `meterlink certs` as a user runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.stackclient import TEMPLATE

pytestmark = pytest.mark.integration


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "meterlink_stack",
            "--state-dir",
            str(root / "state"),
            "--pki-dir",
            str(root / "pki"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_up_twice_and_down_twice(stack_root: Path) -> None:
    up = run(
        stack_root,
        "stack",
        "up",
        "--mqtt-port",
        "0",
        "--aws-port",
        "0",
        "--template",
        str(TEMPLATE),
    )
    try:
        assert up.returncode == 0, up.stderr
        assert "meterlink stack: up" in up.stdout
        assert "meterlink-telemetry  (4 shards)" in up.stdout
        assert (stack_root / "state" / "stack.json").is_file()

        again = run(
            stack_root,
            "stack",
            "up",
            "--mqtt-port",
            "0",
            "--aws-port",
            "0",
            "--template",
            str(TEMPLATE),
        )
        assert again.returncode == 0
        assert "already running" in again.stdout
        assert again.stderr == ""

        status = run(stack_root, "stack", "status")
        assert status.returncode == 0, status.stdout
        lines = status.stdout.strip().splitlines()
        assert [line.split()[0] for line in lines] == ["mosquitto", "moto", "rule-bridge"]
        assert all(line.split()[1] == "ok" for line in lines)
    finally:
        down = run(stack_root, "stack", "down")
    assert down.returncode == 0
    assert down.stdout.strip() == "meterlink stack: stopped rule-bridge, mosquitto, moto"
    down_again = run(stack_root, "stack", "down")
    assert down_again.returncode == 0
    assert down_again.stdout.strip() == "meterlink stack: not running"
    status = run(stack_root, "stack", "status")
    assert status.returncode == 3
    assert status.stdout.strip() == "meterlink stack: not running"


def test_port_taken_is_one_clear_line(stack_root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(
            stack_root,
            "stack",
            "up",
            "--mqtt-port",
            str(port),
            "--aws-port",
            "0",
            "--template",
            str(TEMPLATE),
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"meterlink stack: port {port} on 127.0.0.1 is already in use; "
        "choose another with --mqtt-port\n"
    )
    assert not (stack_root / "state" / "stack.json").exists()


def test_mosquitto_missing_says_how_to_install(stack_root: Path) -> None:
    env = dict(os.environ, PATH=str(stack_root / "empty-bin"))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from meterlink_stack import broker;"
            "broker.shutil.which = lambda *a, **k: None;"
            "from meterlink_stack.cli import main; sys.exit(main(sys.argv[1:]))",
            "--state-dir",
            str(stack_root / "s"),
            "--pki-dir",
            str(stack_root / "p"),
            "stack",
            "up",
            "--mqtt-port",
            "0",
            "--aws-port",
            "0",
            "--template",
            str(TEMPLATE),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "meterlink stack: mosquitto is not installed; "
        "install it with: apt-get install -y mosquitto mosquitto-clients\n"
    )


def test_certs_commands_and_user_mistakes(stack_root: Path) -> None:
    assert run(stack_root, "certs", "list").stderr.startswith("meterlink certs: no dev CA in")
    assert run(stack_root, "certs", "init").returncode == 0
    issued = run(stack_root, "certs", "issue", "gw-0001")
    assert issued.returncode == 0
    assert "issued gw-0001" in issued.stdout
    key = stack_root / "pki" / "clients" / "gw-0001.key"
    assert key.stat().st_mode & 0o777 == 0o600

    for bad in ("gw/../x", "meterlink-bridge", "gw+1"):
        result = run(stack_root, "certs", "issue", bad)
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    twice = run(stack_root, "certs", "issue", "gw-0001")
    assert twice.returncode == 1 and "already issued" in twice.stderr

    assert run(stack_root, "certs", "revoke", "gw-0001").returncode == 0
    listing = run(stack_root, "certs", "list").stdout.splitlines()
    row = next(line for line in listing if line.startswith("gw-0001"))
    assert row.split()[1:2] == ["client"] and "revoked" in row.split()
    unknown = run(stack_root, "certs", "revoke", "gw-nope")
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
