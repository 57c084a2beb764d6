"""Token-bucket rate limiting per key (user, IP), configured by `rc_*` keys.

A request authenticated by an application service registered with `rate_limited: false` is never
limited, whichever user it acts as (Synapse's rule): `RATELIMIT_EXEMPT` says so for the request's task
(set where the request is authenticated, hs/services/auth.py `enter_request`), so the services that
apply limits by user or address need not know about application services.
"""

from __future__ import annotations

import math
import time
from contextvars import ContextVar

from hs.errors import limit_exceeded
from hs.util import LruCache

RATELIMIT_EXEMPT: ContextVar[bool] = ContextVar("ratelimit_exempt", default=False)


class Ratelimiter:
    def __init__(self, per_second: float, burst_count: float) -> None:
        self.per_second = per_second
        self.burst_count = burst_count
        # key -> (tokens used, time of last update)
        self._buckets: LruCache[str, tuple[float, float]] = LruCache(100_000, name="services.ratelimit.self._buckets")

    def check(self, key: str, update: bool = True) -> None:
        """Raise M_LIMIT_EXCEEDED (with retry_after_ms) if `key` has no capacity left."""
        if (self.per_second <= 0 and self.burst_count <= 0) or RATELIMIT_EXEMPT.get():
            return
        now = time.monotonic()
        used, last = self._buckets.get(key) or (0.0, now)
        used = max(0.0, used - (now - last) * self.per_second)
        if used + 1 > self.burst_count:
            wait = (used + 1 - self.burst_count) / self.per_second if self.per_second > 0 else 3600
            raise limit_exceeded(int(math.ceil(wait * 1000)))
        if update:
            self._buckets.set(key, (used + 1, now))
