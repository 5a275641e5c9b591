"""A client-side token bucket, for vendors that limit request rates without saying how long to wait.

HitKeep limits each client IP (10 requests/s, burst 20 by default) and its 429 carries no
Retry-After, so the client keeps under the limit itself. One bucket per vendor instance is shared
by every thread of the process (`limiter_for`). A bucket starts empty: a new task must not burst
into a limit an earlier task has just used up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second up to `burst`; `acquire` reserves one and sleeps until it is due."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = float(rate), int(burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = 0.0
        self._last = clock()
        self._lock = threading.Lock()

    def configure(self, rate: float, burst: int) -> None:
        """Destinations on one instance share its bucket; the settings of the latest one apply."""
        with self._lock:
            self.rate, self.burst = float(rate), int(burst)

    def acquire(self) -> float:
        """Take one token, waiting for it if needed; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0  # a reservation: callers queue in order even while one sleeps
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


_BUCKETS: dict[str, TokenBucket] = {}
_REGISTRY_LOCK = threading.Lock()


def limiter_for(instance: str, rate: float, burst: int) -> TokenBucket:
    """The process-wide bucket of one vendor instance (its base URL)."""
    with _REGISTRY_LOCK:
        bucket = _BUCKETS.get(instance)
        if bucket is None:
            bucket = _BUCKETS[instance] = TokenBucket(rate, burst)
        else:
            bucket.configure(rate, burst)
        return bucket
