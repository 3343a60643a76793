"""The sd_notify client and the watchdog, against a real NOTIFY_SOCKET played by the test.

`NotifyHarness` is systemd's side of the protocol: an AF_UNIX datagram socket (a file in a temp
folder, or an abstract name) that records every datagram with its arrival time and the sender's
pid from SCM_CREDENTIALS, the check systemd makes for `NotifyAccess=main`.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest

from edge_agent.systemd import Notifier, Watchdog

REPO_ROOT = Path(__file__).resolve().parents[2]
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Message(NamedTuple):
    data: str
    pid: int
    at: float  # time.monotonic() on arrival


class NotifyHarness:
    """Receives sd_notify datagrams the way systemd does, on a background thread."""

    def __init__(self, address: str | bytes, env_value: str) -> None:
        self.env_value = env_value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: queue.Queue[Message] = queue.Queue()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="notify-harness", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(_CREDS.size)
                )
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDS.unpack(payload[: _CREDS.size])[0]
            self.messages.put(Message(data.decode(), pid, at))

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.env_value, **extra}

    def recv(self, timeout: float = 2.0) -> Message:
        return self.messages.get(timeout=timeout)

    def collect(self, duration: float) -> list[Message]:
        """Every message that arrives within `duration` seconds from now."""
        deadline = time.monotonic() + duration
        got: list[Message] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return got

    def pending(self) -> list[Message]:
        """What has already arrived, without waiting."""
        got: list[Message] = []
        while True:
            try:
                got.append(self.messages.get_nowait())
            except queue.Empty:
                return got

    def close(self) -> None:
        self._closed.set()
        self._reader.join()
        self.sock.close()


@pytest.fixture
def path_harness() -> Iterator[NotifyHarness]:
    """NOTIFY_SOCKET as a socket file (a short temp folder: AF_UNIX paths max out at 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="sdnotify-")
    path = os.path.join(folder, "notify")
    harness = NotifyHarness(path, path)
    yield harness
    harness.close()
    shutil.rmtree(folder)


@pytest.fixture
def abstract_harness() -> Iterator[NotifyHarness]:
    """NOTIFY_SOCKET in the abstract namespace, written '@name' as systemd does."""
    name = f"meterlink-test-{uuid.uuid4().hex}"
    harness = NotifyHarness("\0" + name, "@" + name)
    yield harness
    harness.close()


@pytest.fixture(params=["path", "abstract"])
def harness(request: pytest.FixtureRequest) -> NotifyHarness:
    return request.getfixturevalue(f"{request.param}_harness")  # type: ignore[no-any-return]


# --- Notifier -------------------------------------------------------------------------------


def test_ready_sends_ready_and_status_from_this_process(harness: NotifyHarness) -> None:
    notifier = Notifier.from_env(harness.env())
    assert notifier.enabled is True
    assert notifier.ready("gateway gw-0001: 2 sources, 0 readings recovered") is True
    message = harness.recv()
    assert message.data == "READY=1\nSTATUS=gateway gw-0001: 2 sources, 0 readings recovered"
    assert message.pid == os.getpid()
    notifier.close()


def test_status_stopping_and_extend_timeout_exact_datagrams(harness: NotifyHarness) -> None:
    notifier = Notifier.from_env(harness.env())
    assert notifier.status("certificate rotated") is True
    assert notifier.status("line one\nline two") is True
    assert notifier.extend_timeout(5_000_000) is True
    assert notifier.stopping() is True
    assert [harness.recv().data for _ in range(4)] == [
        "STATUS=certificate rotated",
        "STATUS=line one line two",
        "EXTEND_TIMEOUT_USEC=5000000",
        "STOPPING=1",
    ]
    assert harness.collect(0.2) == []
    notifier.close()


def test_reloading_carries_the_monotonic_clock(harness: NotifyHarness) -> None:
    notifier = Notifier.from_env(harness.env())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", harness.recv().data)
    assert match is not None
    assert before <= int(match.group(1)) <= after
    notifier.close()


def test_extend_timeout_refuses_a_non_positive_duration(harness: NotifyHarness) -> None:
    notifier = Notifier.from_env(harness.env())
    with pytest.raises(ValueError, match="positive"):
        notifier.extend_timeout(0)
    assert harness.collect(0.1) == []


def test_watchdog_interval_is_half_of_watchdog_usec(harness: NotifyHarness) -> None:
    # WatchdogSec=30 in the unit file arrives as WATCHDOG_USEC=30000000.
    notifier = Notifier.from_env(harness.env(WATCHDOG_USEC="30000000"))
    assert notifier.watchdog_usec == 30_000_000
    assert notifier.watchdog_interval_s == 15.0
    assert notifier.watchdog() is True
    assert harness.recv().data == "WATCHDOG=1"
    notifier.close()


def test_everything_is_a_no_op_without_notify_socket(path_harness: NotifyHarness) -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.enabled is False
    assert notifier.watchdog_usec is None
    assert notifier.watchdog_interval_s is None
    assert notifier.ready("up") is False
    assert notifier.status("x") is False
    assert notifier.reloading() is False
    assert notifier.extend_timeout(1_000_000) is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    watchdog = Watchdog(notifier)
    watchdog.start()
    assert watchdog.active is False
    assert watchdog.tick() is False
    watchdog.stop()
    assert path_harness.collect(0.2) == []


@pytest.mark.parametrize(
    ("watchdog_pid", "expected_usec"),
    [(None, 2_000_000), ("own", 2_000_000), ("other", None)],
    ids=["pid-absent", "pid-matches", "pid-mismatch"],
)
def test_watchdog_pid_decides_whose_watchdog_it_is(
    harness: NotifyHarness, watchdog_pid: str | None, expected_usec: int | None
) -> None:
    env = harness.env(WATCHDOG_USEC="2000000")
    if watchdog_pid == "own":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif watchdog_pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    notifier = Notifier.from_env(env)
    assert notifier.watchdog_usec == expected_usec
    assert notifier.watchdog() is (expected_usec is not None)
    watchdog = Watchdog(notifier)
    assert watchdog.active is (expected_usec is not None)
    # Notifications other than the watchdog still work for a process that is not WATCHDOG_PID.
    assert notifier.status("still here") is True
    expected = ["WATCHDOG=1", "STATUS=still here"] if expected_usec else ["STATUS=still here"]
    assert [m.data for m in harness.collect(0.3)] == expected
    notifier.close()


def test_watchdog_pid_is_compared_with_the_pid_given() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "42"}
    assert Notifier.from_env(env, pid=42).watchdog_usec == 1000
    assert Notifier.from_env(env, pid=43).watchdog_usec is None


@pytest.mark.parametrize(
    ("env", "enabled", "usec"),
    [
        ({"NOTIFY_SOCKET": ""}, False, None),
        ({"NOTIFY_SOCKET": "@"}, False, None),
        ({"NOTIFY_SOCKET": "vsock:2:1234"}, False, None),
        ({"NOTIFY_SOCKET": "relative/notify"}, False, None),
        ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "0"}, True, None),
        ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "-5"}, True, None),
        ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "soon"}, True, None),
        ({"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "1"}, True, 1),
    ],
)
def test_unusable_values_turn_features_off(
    env: dict[str, str], enabled: bool, usec: int | None
) -> None:
    notifier = Notifier.from_env(env)
    assert notifier.enabled is enabled
    assert notifier.watchdog_usec == usec


def test_send_errors_never_raise_and_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nobody listens at this path: every send fails with ENOENT (or ECONNREFUSED).
    notifier = Notifier.from_env(
        {"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000000"}
    )
    with caplog.at_level(logging.DEBUG, logger="edge_agent.systemd"):
        assert notifier.ready("up") is False
        assert notifier.watchdog() is False
        assert notifier.status("x") is False
        assert notifier.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(warnings) == 1
    assert "sd_notify" in warnings[0].getMessage()
    assert len(debugs) == 3
    notifier.close()


# --- Watchdog, step by step on a fake clock -----------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tick_pings_only_while_the_main_loop_heartbeats(
    harness: NotifyHarness, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    notifier = Notifier.from_env(harness.env(WATCHDOG_USEC="1000000"))
    watchdog = Watchdog(notifier, clock=clock)
    assert watchdog.interval_s == 0.5
    assert watchdog.max_heartbeat_age_s == 0.5
    results = []
    with caplog.at_level(logging.WARNING, logger="edge_agent.systemd"):
        watchdog.heartbeat()  # t = 100.0
        clock.now = 100.4
        results.append(watchdog.tick())  # heartbeat 0.4 s old: ping
        clock.now = 100.5
        results.append(watchdog.tick())  # 0.5 s old: the main loop is stuck, no ping
        clock.now = 101.0
        results.append(watchdog.tick())  # still stuck: still no ping
        clock.now = 101.2
        watchdog.heartbeat()  # the main loop comes back
        clock.now = 101.3
        results.append(watchdog.tick())  # ping again
    assert results == [True, False, False, True]
    assert [m.data for m in harness.collect(0.3)] == ["WATCHDOG=1", "WATCHDOG=1"]
    assert [r.getMessage() for r in caplog.records] == [
        "main loop silent for 0.5 s; withholding WATCHDOG=1 so systemd can restart us",
        "main loop alive again; resuming WATCHDOG=1",
    ]
    notifier.close()


def test_max_heartbeat_age_can_be_the_whole_timeout(harness: NotifyHarness) -> None:
    clock = FakeClock()
    notifier = Notifier.from_env(harness.env(WATCHDOG_USEC="1000000"))
    watchdog = Watchdog(notifier, max_heartbeat_age_s=1.0, clock=clock)
    watchdog.heartbeat()
    ticks = []
    for now in (100.5, 100.99, 101.0):
        clock.now = now
        ticks.append(watchdog.tick())
    assert ticks == [True, True, False]
    assert [m.data for m in harness.collect(0.3)] == ["WATCHDOG=1", "WATCHDOG=1"]
    notifier.close()


# --- Watchdog thread, in real time ------------------------------------------------------------


def _heartbeat_for(watchdog: Watchdog, seconds: float) -> float:
    """Play a healthy main loop for `seconds`; returns the time of its last heartbeat."""
    deadline = time.monotonic() + seconds
    last = time.monotonic()
    while time.monotonic() < deadline:
        watchdog.heartbeat()
        last = time.monotonic()
        time.sleep(0.01)
    return last


def test_watchdog_thread_pings_every_interval(harness: NotifyHarness) -> None:
    notifier = Notifier.from_env(harness.env(WATCHDOG_USEC="400000"))  # interval 0.2 s
    watchdog = Watchdog(notifier)
    watchdog.start()
    _heartbeat_for(watchdog, 2.1)
    watchdog.stop()
    pings = harness.collect(0.3)
    assert {m.data for m in pings} == {"WATCHDOG=1"}
    assert all(m.pid == os.getpid() for m in pings)
    # One ping per 0.2 s, the first one interval after start(): 10 in 2.1 s at most.
    assert 7 <= len(pings) <= 10
    gaps = sorted(b.at - a.at for a, b in itertools.pairwise(pings))
    assert gaps[len(gaps) // 2] == pytest.approx(0.2, abs=0.04)
    assert gaps[0] >= 0.15
    notifier.close()


def test_watchdog_goes_silent_when_the_main_loop_hangs_and_resumes_after(
    harness: NotifyHarness,
) -> None:
    notifier = Notifier.from_env(harness.env(WATCHDOG_USEC="400000"))  # timeout 0.4, ping 0.2
    watchdog = Watchdog(notifier)
    watchdog.start()
    last_heartbeat = _heartbeat_for(watchdog, 1.0)
    time.sleep(1.2)  # the main loop hangs: three times systemd's timeout without a heartbeat
    resumed_at = time.monotonic()
    _heartbeat_for(watchdog, 0.6)
    watchdog.stop()
    pings = harness.collect(0.3)
    assert {m.data for m in pings} == {"WATCHDOG=1"}

    healthy = [m for m in pings if m.at <= last_heartbeat]
    hung = [m for m in pings if last_heartbeat < m.at < resumed_at]
    back = [m for m in pings if m.at >= resumed_at]
    assert len(healthy) >= 3
    # At most the one tick that still saw a fresh heartbeat, and it comes within one interval.
    assert len(hung) <= 1
    assert all(m.at - last_heartbeat < 0.2 + 0.1 for m in hung)
    # The silence outlasts WATCHDOG_USEC (0.4 s): systemd would have fired.
    last_ping = max(m.at for m in healthy + hung)
    assert resumed_at - last_ping > 0.4 + 0.3
    # Once the main loop is back, the pings are back within one interval.
    assert len(back) >= 2
    assert back[0].at - resumed_at < 0.2 + 0.1
    notifier.close()


# --- A real child process whose main loop hangs, supervised like systemd would ---------------

_CHILD = textwrap.dedent(
    """
    import faulthandler, os, resource, sys, threading, time
    from edge_agent.systemd import Notifier, Watchdog

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGABRT below must not leave a core file
    faulthandler.enable()  # on SIGABRT, every thread's stack goes to stderr (the journal)
    notifier = Notifier.from_env(os.environ)
    watchdog = Watchdog(notifier)
    watchdog.start()
    notifier.ready("main loop running")
    iterations = int(sys.argv[1])  # -1: forever
    while iterations != 0:
        watchdog.heartbeat()
        time.sleep(0.05)
        iterations -= 1
    notifier.status("main loop hung")
    threading.Event().wait()  # the hang: the main thread blocks, the watchdog thread lives on
    """
)


@dataclass
class Supervision:
    """What the supervising harness saw, in systemd's terms."""

    ready: Message
    pings: list[Message] = field(default_factory=list)
    statuses: list[Message] = field(default_factory=list)
    fired_at: float | None = None


def _spawn(
    harness: NotifyHarness, iterations: int, cwd: Path, watchdog_usec: int
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "NOTIFY_SOCKET": harness.env_value,
        "WATCHDOG_USEC": str(watchdog_usec),
    }
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(iterations)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _supervise(
    harness: NotifyHarness, proc: subprocess.Popen[str], timeout_s: float, watch_for: float
) -> Supervision:
    """Act as systemd: wait for READY=1, then fire SIGABRT when no WATCHDOG=1 came for timeout_s.

    Stops after `watch_for` seconds without firing. Every datagram must come from the main pid
    (`NotifyAccess=main`).
    """
    # READY=1 comes first: the first WATCHDOG=1 follows one interval after Watchdog.start().
    ready = harness.recv(timeout=30)
    assert ready.data == "READY=1\nSTATUS=main loop running"
    assert ready.pid == proc.pid
    seen = Supervision(ready=ready)
    last_ping = ready.at
    stop_at = ready.at + watch_for
    while (now := time.monotonic()) < stop_at:
        try:
            message = harness.recv(timeout=min(last_ping + timeout_s, stop_at) - now)
        except queue.Empty:
            if time.monotonic() >= last_ping + timeout_s:
                seen.fired_at = time.monotonic()
                proc.send_signal(signal.SIGABRT)  # systemd's default WatchdogSignal=
                return seen
            continue
        assert message.pid == proc.pid
        if message.data == "WATCHDOG=1":
            seen.pings.append(message)
            last_ping = message.at
        else:
            seen.statuses.append(message)
    return seen


def _reap(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait like systemd's TimeoutAbortSec=, then SIGKILL; returns (returncode, stderr)."""
    try:
        _out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


def test_hung_main_loop_stops_the_pings_and_the_watchdog_fires(
    path_harness: NotifyHarness, tmp_path: Path
) -> None:
    timeout_s = 1.0  # WATCHDOG_USEC=1000000: pings every 0.5 s while the loop is alive
    proc = _spawn(path_harness, iterations=30, cwd=tmp_path, watchdog_usec=1_000_000)
    try:
        seen = _supervise(path_harness, proc, timeout_s, watch_for=20.0)
    finally:
        returncode, stderr = _reap(proc)

    assert [m.data for m in seen.statuses] == ["STATUS=main loop hung"]
    hung_at = seen.statuses[0].at
    before = [m for m in seen.pings if m.at <= hung_at]
    after = [m for m in seen.pings if m.at > hung_at]
    assert len(before) >= 2  # 30 iterations of 0.05 s: pings at 0.5, 1.0, (1.5) s
    assert len(after) <= 1  # at most one tick still saw the last heartbeat as fresh
    assert all(m.at - hung_at < 0.5 + 0.25 for m in after)
    # The harness fires once the last ping is older than the timeout: within 1.5 timeouts of
    # the hang (the last tick may still have seen a heartbeat up to one interval old).
    assert seen.fired_at is not None
    assert seen.fired_at - hung_at < 1.5 * timeout_s + 0.5
    # SIGABRT kills it; faulthandler left the hung main thread's stack for the journal.
    assert returncode == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in stderr
    hang_line = next(
        n for n, line in enumerate(_CHILD.splitlines(), 1) if line.startswith("threading.Event")
    )
    main_thread = stderr.split("Current thread")[1]
    assert f'File "<string>", line {hang_line} in <module>' in main_thread


def test_healthy_main_loop_is_never_fired_on(path_harness: NotifyHarness, tmp_path: Path) -> None:
    proc = _spawn(path_harness, iterations=-1, cwd=tmp_path, watchdog_usec=1_000_000)
    try:
        seen = _supervise(path_harness, proc, timeout_s=1.0, watch_for=3.0)
    finally:
        proc.terminate()
        returncode, _stderr = _reap(proc)
    assert seen.fired_at is None
    assert seen.statuses == []
    assert len(seen.pings) >= 4  # ~7 in 3 s at one per 0.5 s
    assert returncode == -signal.SIGTERM
