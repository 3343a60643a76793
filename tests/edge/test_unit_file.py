"""The shipped systemd unit: it verifies cleanly, scores as hardened, and says what we rely on.

`systemd-analyze verify` reports parse errors only as warnings on stderr with exit code 0, so
any output at all is a failure. It also checks that ExecStart=/ExecReload= binaries exist; the
shipped file is verified unchanged inside a temporary root laid out like an installed gateway
(the host's unit files, `/usr/bin/edge-agent`, `/bin/kill`), and a copy whose ExecStart points at
this checkout's `edge-agent` is verified against the host itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "deploy" / "systemd" / "edge-agent.service"
README = REPO_ROOT / "deploy" / "systemd" / "README.md"
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
MAX_EXPOSURE = 2.0
# What `systemd-analyze security` still marks as exposed, each for a reason given in the README.
ACCEPTED_EXPOSURES = {
    "RootDirectory=/RootImage=",
    "RestrictAddressFamilies=~AF_UNIX",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "PrivateNetwork=",
    "DeviceAllow=",
    "IPAddressDeny=",
}

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


def analyze(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    # A UTF-8 locale makes the security table mark exposures with '✗' whatever the caller's locale.
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [SYSTEMD_ANALYZE, *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) pairs; keys may repeat, as in systemd."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"assignment outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}= appears {len(found)} times"
    return found[0]


def gateway_root(tmp_path: Path, *, with_agent: bool = True) -> Path:
    """A filesystem root shaped like a gateway with the agent installed (merged /usr)."""
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    for name in ("bin", "lib", "sbin"):
        (root / name).symlink_to(f"usr/{name}")
    host_units = next(d for d in HOST_UNIT_DIRS if d.is_dir())
    shutil.copytree(host_units, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    executables = ["kill", "edge-agent"] if with_agent else ["kill"]
    for name in executables:
        stub = root / "usr" / "bin" / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    shutil.copyfile(UNIT, root / "etc" / "systemd" / "system" / "edge-agent.service")
    return root


@needs_systemd_analyze
def test_shipped_unit_verifies_unchanged_on_a_gateway_root(tmp_path: Path) -> None:
    root = gateway_root(tmp_path)
    installed = root / "etc" / "systemd" / "system" / "edge-agent.service"
    assert installed.read_bytes() == UNIT.read_bytes()
    result = analyze("verify", f"--root={root}", "edge-agent.service", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd_analyze
def test_verify_on_the_gateway_root_does_check_the_binary(tmp_path: Path) -> None:
    # The control for the test above: without the agent installed, verify says exactly that.
    root = gateway_root(tmp_path, with_agent=False)
    result = analyze("verify", f"--root={root}", "edge-agent.service", cwd=tmp_path)
    assert result.stdout == ""
    assert result.stderr == (
        "edge-agent.service: Command /usr/bin/edge-agent is not executable: "
        "No such file or directory\n"
    )


@needs_systemd_analyze
def test_unit_verifies_against_the_host_with_this_checkouts_agent(tmp_path: Path) -> None:
    agent = Path(sys.executable).with_name("edge-agent")
    target = agent if agent.is_file() else Path(sys.executable)
    text = UNIT.read_text()
    shipped = "ExecStart=/usr/bin/edge-agent "
    assert text.count(shipped) == 1
    copy = tmp_path / "edge-agent.service"
    copy.write_text(text.replace(shipped, f"ExecStart={target} "))
    result = analyze("verify", copy, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd_analyze
def test_verify_warnings_go_to_stderr_with_exit_code_zero(tmp_path: Path) -> None:
    # Why the tests above demand empty stderr: a typo is only a warning.
    root = gateway_root(tmp_path)
    installed = root / "etc" / "systemd" / "system" / "edge-agent.service"
    installed.write_text(UNIT.read_text().replace("WatchdogSec=30", "WatchdogSecs=30"))
    result = analyze("verify", f"--root={root}", "edge-agent.service", cwd=tmp_path)
    assert result.returncode == 0
    assert "Unknown key 'WatchdogSecs' in section [Service], ignoring." in result.stderr


def _security() -> tuple[float, set[str]]:
    result = analyze("security", "--offline=true", UNIT)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout
    exposed = {m.group(1) for m in re.finditer(r"^✗ (\S+)", result.stdout, flags=re.MULTILINE)}
    return float(match.group(1)), exposed


@needs_systemd_analyze
def test_security_exposure_is_at_most_two() -> None:
    score, exposed = _security()
    assert score <= MAX_EXPOSURE
    assert exposed == ACCEPTED_EXPOSURES


@needs_systemd_analyze
def test_readme_quotes_the_measured_exposure() -> None:
    score, _exposed = _security()
    assert f"Overall exposure level for edge-agent.service: {score:.1f}" in README.read_text(
        encoding="utf-8"
    )


def test_unit_declares_what_the_agent_relies_on() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert (
        one(service, "ExecStart") == "/usr/bin/edge-agent --config /etc/meterlink/edge-agent.toml"
    )
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(service, "WatchdogSec") == "30"
    assert one(service, "Restart") == "on-failure"
    assert one(service, "RestartSec") == "5"
    # Drain on SIGTERM: publish.drain_timeout_s (default 10) + the publisher join (5) fit.
    assert int(one(service, "TimeoutStopSec")) >= 30
    # Not the manager's 90 s default between the watchdog's SIGABRT and SIGKILL.
    assert one(service, "TimeoutAbortSec") == "20"
    assert one(service, "StateDirectory") == "meterlink"
    assert one(service, "RuntimeDirectory") == "meterlink"
    assert one(service, "ConfigurationDirectory") == "meterlink"
    assert one(service, "User") == "meterlink"
    assert values(service, "DynamicUser") == []
    assert one(service, "UMask") == "0077"
    assert one(service, "MemoryMax") == "96M"
    assert one(service, "MemoryHigh") == "80M"
    assert one(service, "CapabilityBoundingSet") == ""
    assert one(service, "AmbientCapabilities") == ""
    assert one(service, "RestrictAddressFamilies") == "AF_UNIX AF_INET AF_INET6"
    assert values(service, "SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateUsers",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert one(service, key) == "yes", key
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "ProtectProc") == "invisible"
    assert one(service, "ProcSubset") == "pid"
    # Retries never stop for good: no start rate limit, RestartSec= paces them.
    assert one(unit["Unit"], "StartLimitIntervalSec") == "0"
    assert one(unit["Install"], "WantedBy") == "multi-user.target"
