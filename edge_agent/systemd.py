"""The agent's side of systemd's service protocol: sd_notify messages and the watchdog.

`Notifier` speaks the notify protocol (one datagram of `KEY=value` lines to `$NOTIFY_SOCKET`)
without libsystemd. It is built once from the environment the agent starts with and does nothing
when systemd did not ask for notifications, so the same agent runs under a terminal, a test or
systemd. A failed send never reaches the caller: losing a status line must not stop the pipeline.

`Watchdog` pings systemd from a background thread, but only while the main loop proves it is
alive by calling `heartbeat()`. A hung main loop therefore stops the pings, and systemd kills and
restarts the service after `WatchdogSec=`; that is the whole point of the watchdog.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# How long one send may block when systemd's receive queue is full; the watchdog thread and the
# main loop must never hang on the notify socket itself.
_SEND_TIMEOUT_S = 2.0


def _parse_address(value: str) -> bytes | None:
    """The `AF_UNIX` address for a `$NOTIFY_SOCKET` value, or None when it is not usable."""
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        # Abstract namespace: a leading NUL byte instead of the '@'.
        return b"\0" + os.fsencode(value[1:])
    return None


def _parse_usec(value: str | None) -> int | None:
    """A positive microsecond count from the environment, or None."""
    if value is None:
        return None
    try:
        usec = int(value)
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    """Sends sd_notify messages to systemd; every method is a no-op without `$NOTIFY_SOCKET`.

    Each method returns True when the datagram was sent, False when notifications are off or the
    send failed (logged once, at warning level; later failures at debug level).
    """

    def __init__(self, address: bytes | None, *, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec if address is not None else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed_once = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, pid: int | None = None) -> Notifier:
        """Build a notifier from the service's environment (the agent passes `os.environ`).

        `NOTIFY_SOCKET` is a filesystem path or an abstract name written `@name`. The watchdog is
        honoured only when `WATCHDOG_USEC` is a positive number and `WATCHDOG_PID`, if present,
        is this process (`pid`, default `os.getpid()`): a child that inherited the variables
        must not ping on its parent's behalf.
        """
        raw = environ.get("NOTIFY_SOCKET", "")
        if not raw:
            return cls(None)
        address = _parse_address(raw)
        if address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; not notifying", raw)
            return cls(None)
        usec = _parse_usec(environ.get("WATCHDOG_USEC"))
        if usec is None and "WATCHDOG_USEC" in environ:
            log.warning(
                "WATCHDOG_USEC=%r is not a positive integer; watchdog off", environ["WATCHDOG_USEC"]
            )
        watchdog_pid = environ.get("WATCHDOG_PID")
        if usec is not None and watchdog_pid is not None:
            own_pid = os.getpid() if pid is None else pid
            if watchdog_pid.strip() != str(own_pid):
                log.info(
                    "WATCHDOG_PID=%s is not this process (%d); watchdog off", watchdog_pid, own_pid
                )
                usec = None
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """True when systemd asked for notifications."""
        return self._address is not None

    @property
    def watchdog_usec(self) -> int | None:
        """The watchdog timeout systemd enforces (`WatchdogSec=`), or None when it is off."""
        return self._watchdog_usec

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half the timeout, as sd_watchdog_enabled(3) recommends."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self, status: str) -> bool:
        """Start-up (or a reload) is complete; `Type=notify` units become active on this."""
        return self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        """A one-line, human-readable state shown by `systemctl status`."""
        return self._send(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        """Shutdown has begun; systemd stops expecting watchdog pings soon."""
        return self._send("STOPPING=1")

    def reloading(self) -> bool:
        """A reload has begun; send `ready()` when it is done.

        `MONOTONIC_USEC` lets systemd >= 253 (`Type=notify-reload`) match this message with the
        reload it asked for; older versions ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")

    def watchdog(self) -> bool:
        """One keep-alive ping; a no-op unless systemd set a watchdog for this process."""
        if self._watchdog_usec is None:
            return False
        return self._send("WATCHDOG=1")

    def extend_timeout(self, usec: int) -> bool:
        """Ask for `usec` more microseconds to finish starting, reloading or stopping."""
        if usec <= 0:
            raise ValueError(f"extend_timeout needs a positive number of microseconds, got {usec}")
        return self._send(f"EXTEND_TIMEOUT_USEC={usec}")

    def close(self) -> None:
        """Close the socket; later messages open a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, message: str) -> bool:
        if self._address is None:
            return False
        data = message.encode()
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(data, self._address)
            except OSError as exc:
                level = logging.DEBUG if self._failed_once else logging.WARNING
                self._failed_once = True
                log.log(level, "sd_notify to %r failed: %s", self._address, exc)
                return False
        return True


def _one_line(text: str) -> str:
    """The notify protocol is line based: a newline would start a new (bogus) assignment."""
    return " ".join(text.splitlines())


class Watchdog:
    """Pings systemd every interval, but only while the main loop keeps calling `heartbeat()`.

    A ping is sent only if the last heartbeat is younger than `max_heartbeat_age_s` (default: one
    interval, i.e. half of `WatchdogSec=`). With that default a main loop that stalls for less
    than `WatchdogSec=` is not killed, and one that hangs is killed between 1 and 1.5 times
    `WatchdogSec=` after its last heartbeat. `start()` counts as a heartbeat.

    Without a watchdog from systemd (`notifier.watchdog_usec` is None) `start()` starts no
    thread and every method is cheap.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        interval_s: float | None = None,
        max_heartbeat_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self.interval_s = interval_s if interval_s is not None else notifier.watchdog_interval_s
        if max_heartbeat_age_s is None:
            max_heartbeat_age_s = self.interval_s
        self.max_heartbeat_age_s = max_heartbeat_age_s
        self._clock = clock
        self._last_heartbeat = clock()
        self._stalled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """True when systemd watches this process, so pings are worth sending."""
        return self.interval_s is not None and self._notifier.watchdog_usec is not None

    def heartbeat(self) -> None:
        """The main loop is alive; call it once per iteration (a float store, no lock)."""
        self._last_heartbeat = self._clock()

    def tick(self) -> bool:
        """One check of the watchdog thread: ping if the main loop is alive; True if pinged."""
        if not self.active or self.max_heartbeat_age_s is None:
            return False
        age = self._clock() - self._last_heartbeat
        if age >= self.max_heartbeat_age_s:
            if not self._stalled:
                self._stalled = True
                log.warning(
                    "main loop silent for %.1f s; withholding WATCHDOG=1 so systemd can restart us",
                    age,
                )
            return False
        if self._stalled:
            self._stalled = False
            log.warning("main loop alive again; resuming WATCHDOG=1")
        return self._notifier.watchdog()

    def start(self) -> None:
        """Count a heartbeat and start the pinging thread (only if systemd set a watchdog)."""
        self.heartbeat()
        interval = self.interval_s
        if interval is None or not self.active or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="systemd-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it; pings end here."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self, interval: float) -> None:
        # The first ping comes one interval after start(): systemd arms the watchdog only when
        # start-up completes (READY=1), so a ping before that would be wasted.
        while not self._stop.wait(interval):
            self.tick()
