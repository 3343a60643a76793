"""Agent config: the shipped example loads, and every mistake names the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_agent.__main__ import main
from edge_agent.config import load_config
from meterlink_config import ConfigError
from meterlink_wire import Channel

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "edge-agent.toml"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The shipped example, placed so its relative certificate paths resolve."""
    (tmp_path / "config").mkdir()
    clients = tmp_path / "certs" / "dev" / "clients"
    clients.mkdir(parents=True)
    for name in ("ca.crt", "clients/gw-0001.crt", "clients/gw-0001.key"):
        (tmp_path / "certs" / "dev" / name).write_text("x")
    return Path(shutil.copy(EXAMPLE, tmp_path / "config" / "edge-agent.toml"))


def test_shipped_example_loads(example: Path) -> None:
    config = load_config(example)
    assert config.gateway_id == "gw-0001"
    assert config.windows.size_s == 60 and config.windows.allowed_lateness_s == 10.0
    assert config.buffer.when_full == "drop_oldest" and config.buffer.synchronous == "full"
    assert config.publish.max_inflight == 100 and config.publish.max_publish_per_s == 100
    assert config.publish.cert_file == (example.parent.parent / "certs/dev/clients/gw-0001.crt")
    assert config.socket is not None and config.socket.path == Path("/run/meterlink/readings.sock")
    assert config.local_mqtt is None and config.modbus is None  # enabled = false
    assert [t.reason for t in config.thresholds] == ["overload", "reverse_flow", "tamper"]
    assert config.thresholds[0].channel is Channel.POWER and config.thresholds[0].above == 20.0
    assert config.metrics_port is None


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ('id = "gw-0001"', 'id = "gw/1"', "gateway.id", "gateway id"),
        ("port = 8883", 'port = "8883"', "publish.port", "expected int, got '8883'"),
        ("max_inflight = 100", "max_inflight = 101", "publish.max_inflight", "must be <= 100"),
        (
            "max_message_bytes = 128000",
            "max_message_bytes = 200000",
            "publish.max_message_bytes",
            "must be <= 131072",
        ),
        ('when_full = "drop_oldest"', 'when_full = "panic"', "buffer.when_full", "must be one of"),
        ("size_s = 60", "size_s = -1", "windows.size_s", "must be >= 0"),
        (
            'ca_file = "../certs/dev/ca.crt"',
            'ca_file = "nope.crt"',
            "publish.ca_file",
            "no such file",
        ),
        ('channel = "flow"', 'channel = "flux"', "priority.thresholds[1]", "unknown_channel"),
    ],
)
def test_mistakes_name_file_and_key(
    example: Path, old: str, new: str, key: str, message: str
) -> None:
    example.write_text(example.read_text().replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(example)
    assert str(err.value).startswith(f"{example}: {key}: ")
    assert message in str(err.value)


def test_check_config_cli(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(example), "--check-config"]) == 0
    assert capsys.readouterr().out == f"edge-agent: {example}: ok (gateway gw-0001)\n"
    example.write_text(example.read_text().replace("size_s = 60", "size_s = 1.5"))
    assert main(["--config", str(example), "--check-config"]) == 2
    assert capsys.readouterr().err == (
        f"edge-agent: {example}: windows.size_s: expected int, got 1.5\n"
    )
    assert main(["--config", str(example.parent / "missing.toml"), "--check-config"]) == 2
    assert "cannot read" in capsys.readouterr().err
