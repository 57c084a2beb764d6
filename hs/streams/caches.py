"""Cache invalidation across processes.

Every process caches some things (access tokens, ...). When one process changes the underlying rows it
invalidates its own cache and publishes `{cache, key}` on the `caches` channel; every process drops
the entry. Invalidations carry no position: a process that was disconnected from Redis (and may have
missed some) flushes these caches entirely when it reconnects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)
CHANNEL = "caches"


class CacheInvalidator:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._handlers: dict[str, Callable[[Any], None]] = {}

    def register(self, cache: str, handler: Callable[[Any], None]) -> None:
        """`handler(key)` drops `key` (None: everything) from this process's cache."""
        self._handlers[cache] = handler

    def subscribe(self) -> None:
        self.hs.replication.subscribe(CHANNEL, self._on_message)

    async def invalidate(self, cache: str, key: Any) -> None:
        """Drop `key` here and in every other process."""
        self._apply(cache, key)
        await self.publish_only(cache, key)

    async def publish_only(self, cache: str, key: Any) -> None:
        """Tell the other processes (this one has already dropped the entry)."""
        if self.hs.config.redis.enabled:
            await self.hs.replication.publish(CHANNEL, self.hs.instance_name, 0, {"cache": cache, "key": key})

    def flush_all(self) -> None:
        for cache in self._handlers:
            self._apply(cache, None)

    def _on_message(self, msg: dict[str, Any]) -> None:
        if msg.get("instance") != self.hs.instance_name:
            self._apply(str(msg.get("cache")), msg.get("key"))

    def _apply(self, cache: str, key: Any) -> None:
        handler = self._handlers.get(cache)
        if handler is None:
            return
        try:
            handler(key)
        except Exception:
            logger.exception("invalidating %s %r failed", cache, key)
