"""Bridge config: the example loads, and every mistake names the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rule_bridge.__main__ import main
from rule_bridge.config import load_config
from rule_bridge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "rule-bridge.toml"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The shipped example, placed so its relative certificate paths resolve."""
    (tmp_path / "config").mkdir()
    clients = tmp_path / "certs" / "dev" / "clients"
    clients.mkdir(parents=True)
    for name in ("ca.crt", "clients/meterlink-bridge.crt", "clients/meterlink-bridge.key"):
        (tmp_path / "certs" / "dev" / name).write_text("x")
    return Path(shutil.copy(EXAMPLE, tmp_path / "config" / "rule-bridge.toml"))


def test_shipped_example_loads(example: Path) -> None:
    config = load_config(example)
    assert config.mqtt.port == 8883
    assert config.mqtt.topics == ("dt/meterlink/+/telemetry", "dt/meterlink/+/events")
    assert config.mqtt.ca_file == (example.parent.parent / "certs/dev/ca.crt").resolve()
    assert config.kinesis.max_records == 500
    assert config.kinesis.endpoint_url == "http://127.0.0.1:4566"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("port = 8883", 'port = "8883"', "mqtt.port: expected int, got '8883'"),
        ("port = 8883", "port = 70000", "mqtt.port: not a TCP port: 70000"),
        ("max_records = 500", "max_records = 501", "kinesis.max_records: must be 1..500"),
        ('stream = "meterlink-telemetry"\n', "", "kinesis.stream: missing"),
        ('log_level = "info"', 'log_level = "loud"', "bridge.log_level: must be one of"),
        (
            'ca_file = "../certs/dev/ca.crt"',
            'ca_file = "../nope.crt"',
            "mqtt.ca_file: no such file",
        ),
        ("[kinesis]", "[kinesis", "not valid TOML"),
    ],
)
def test_mistakes_name_file_and_key(example: Path, old: str, new: str, message: str) -> None:
    example.write_text(example.read_text().replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(example)
    assert str(err.value).startswith(f"{example}: ")
    assert message in str(err.value)


def test_check_config_cli(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(example), "--check-config"]) == 0
    assert capsys.readouterr().out == f"rule-bridge: {example}: ok\n"
    example.write_text(example.read_text().replace("port = 8883", "port = -1"))
    assert main(["--config", str(example), "--check-config"]) == 2
    assert capsys.readouterr().err == f"rule-bridge: {example}: mqtt.port: not a TCP port: -1\n"
