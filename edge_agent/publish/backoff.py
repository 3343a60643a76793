"""Pacing for the publisher: when to CONNECT again, and how fast to publish.

Both follow AWS IoT Core's limits: one CONNECT per second per client id, 100 publishes per second
per connection. A fleet that lost its broker must come back spread out, not all at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

# 2**30 seconds is far beyond any sensible cap; bounding the exponent keeps the float finite.
_MAX_EXPONENT = 30
# Refills accumulate float error; a token this close to whole counts as whole.
_WHOLE = 1.0 - 1e-9


class Backoff:
    """Delays between CONNECT attempts: exponential with full jitter, and a CONNECT rate floor.

    After the n-th consecutive failure the delay is uniform in ``[min_s, cap_n]`` with
    ``cap_n = min(max_s, min_s * 2**n)``: the first retry waits 1-2 s (with ``min_s = 1``),
    then 1-4 s, 1-8 s and so on up to ``max_s``. Spreading over the whole range (full jitter)
    is what keeps a fleet from reconnecting in waves after a broker restart.

    A session takeover draws from the upper half, ``[cap_n / 2, cap_n]``, so two clients that
    share a client id slow down on a schedule instead of by luck. Whatever the draw, no CONNECT
    starts less than ``min_interval_s`` after the previous one.
    """

    def __init__(
        self,
        min_s: float,
        max_s: float,
        *,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"need 0 < min_s <= max_s, got {min_s} and {max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._rand = rand
        self._failures = 0
        self._last_connect: float | None = None

    @property
    def failures(self) -> int:
        """Consecutive failures since the last `reset()`."""
        return self._failures

    def connecting(self) -> None:
        """Record that a CONNECT starts now (for the one-per-interval floor)."""
        self._last_connect = self._clock()

    def slot_wait(self) -> float:
        """Seconds until a CONNECT is allowed by the rate floor (0 if now)."""
        if self._last_connect is None:
            return 0.0
        return max(0.0, self._last_connect + self.min_interval_s - self._clock())

    def next_delay(self, *, takeover: bool = False) -> float:
        """Count one more failure and return how long to wait before the next CONNECT."""
        self._failures += 1
        cap = min(self.max_s, self.min_s * 2.0 ** min(self._failures, _MAX_EXPONENT))
        low = max(self.min_s, cap / 2) if takeover else self.min_s
        delay = low + self._rand() * (cap - low)
        return max(delay, self.slot_wait())

    def reset(self) -> None:
        """Forget past failures: the connection proved stable."""
        self._failures = 0


class TokenBucket:
    """Paces publishes to ``rate`` per second, with at most ``burst`` sent back to back.

    With the default burst of 1 the publishes are evenly spaced, so any one-second window
    holds at most ``rate + 1`` of them. `take` may overdraw (a status message that must go out
    now); the debt delays the publishes after it.
    """

    def __init__(
        self, rate: float, *, burst: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate} and {burst}")
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (tokens earned so far are kept)."""
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self._refill()
        self._rate = rate

    def wait_time(self) -> float:
        """Seconds until one token is available (0 if now)."""
        self._refill()
        if self._tokens >= _WHOLE:
            return 0.0
        return (1.0 - self._tokens) / self._rate

    def take(self) -> None:
        """Spend one token, overdrawing if there is none."""
        self._refill()
        self._tokens -= 1.0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
