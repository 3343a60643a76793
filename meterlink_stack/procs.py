"""Start, find and stop the stack's server processes by pid.

The stack runs plain processes (no Docker engine here), detached into their own session so
they outlive the `meterlink stack up` command; `stack down` finds them again by the pid and the
command-line marker recorded in the state file, so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ManagedProcess:
    """A server process the stack started: its pid and a string its command line contains."""

    name: str
    pid: int
    marker: str
    log: str

    def is_running(self) -> bool:
        """Whether the pid is alive and still the process we started (not a recycled pid)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        # The command line is briefly empty while a just-spawned child is inside execve.
        ours = not cmdline or self.marker.encode() in cmdline.replace(b"\0", b" ")
        return ours and self.is_alive()

    def is_alive(self) -> bool:
        """Whether the pid exists and has not exited (a zombie, state Z, has exited)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"

    def stop(self, timeout: float = 10.0) -> bool:
        """Send SIGTERM, wait up to `timeout`, then SIGKILL; return whether it had to be killed."""
        if not self.is_running():
            return False
        _signal(self.pid, signal.SIGTERM)
        if _wait_gone(self, timeout):
            return False
        _signal(self.pid, signal.SIGKILL)
        _wait_gone(self, 5.0)
        return True

    def kill(self) -> None:
        """SIGKILL at once: what a crash or a power cut looks like to the rest of the stack."""
        if self.is_running():
            _signal(self.pid, signal.SIGKILL)
            _wait_gone(self, 5.0)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    marker: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start `argv` detached (own session, stdin closed, output appended to `log`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    return ManagedProcess(name=name, pid=proc.pid, marker=marker, log=str(log))


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind `host:port` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, *, host: str = "127.0.0.1", timeout: float = 20.0, proc: ManagedProcess | None = None
) -> bool:
    """Wait until something accepts TCP connections on `host:port`; stop early if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if proc is not None and not proc.is_running():
                return False
            time.sleep(0.05)
    return False


def tail(path: str | Path, lines: int = 5) -> str:
    """The last lines of a log file, for error messages that point at the cause."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(proc: ManagedProcess, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_running():
            return True
        time.sleep(0.05)
    return not proc.is_running()
