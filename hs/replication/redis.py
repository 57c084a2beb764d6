"""Stream positions over Redis pub/sub (`redis.asyncio`), for worker clusters.

One channel per stream (`hs.<server_name>.stream.<name>`), so a process subscribes only to the streams
it consumes. Messages are JSON objects with named fields and a version. Pub/sub loses what is sent
while a subscriber is disconnected, so after every (re)connect `on_reconnect` handlers run: each
stream catches up from the database before serving from newer positions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hs.replication.transport import MESSAGE_VERSION, Handler, ReplicationTransport
from hs.util import cancel_and_wait

logger = logging.getLogger(__name__)
# Messages kept while Redis is unreachable; past this the oldest go (readers catch up from the database).
MAX_PENDING = 10000
# Pause between attempts to reach Redis again (a refused connection on the local network costs nothing).
RECONNECT_PAUSE_SECONDS = 0.1
FLUSH_PAUSE_SECONDS = 0.1


def _client(url: str) -> aioredis.Redis:
    """A client that fails at once instead of retrying inside redis-py: its default (10 tries with
    growing pauses) held a writer's publish for seconds while Redis restarted, and delayed the
    first publish after Redis returned. This transport queues and retries itself."""
    return aioredis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1.0,
                             socket_timeout=None, socket_keepalive=True)


class RedisTransport(ReplicationTransport):
    def __init__(self, url: str, server_name: str) -> None:
        self.url = url
        self.prefix = f"hs.{server_name}.stream."
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._reconnect_handlers: list[Callable[[], Awaitable[None]]] = []
        self._pub: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._pending: list[dict[str, Any]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._connected = False

    def subscribe(self, stream: str, handler: Handler) -> None:
        self._handlers[stream].append(handler)

    def on_reconnect(self, handler: Callable[[], Awaitable[None]]) -> None:
        self._reconnect_handlers.append(handler)

    async def start(self) -> None:
        self._pub = _client(self.url)
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._subscribed.wait(), 30)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await cancel_and_wait(self._task)
        if self._pub is not None:
            await self._pub.aclose()

    async def publish(self, stream: str, instance: str, position: int, data: dict[str, Any]) -> None:
        """Publish now; if Redis is unreachable, queue the message (in order) and keep retrying in the
        background, so a writer never blocks on Redis and no position is silently dropped."""
        msg = {"v": MESSAGE_VERSION, "stream": stream, "instance": instance, "position": position, **data}
        if not self._pending:
            try:
                await self._send(msg)
                return
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as e:
                logger.warning("redis publish failed (%s); queueing and retrying in the background", e)
        self._pending.append(msg)
        if len(self._pending) > MAX_PENDING:
            del self._pending[: len(self._pending) - MAX_PENDING]  # readers catch up from the database
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self._pub is not None
        await self._pub.publish(self.prefix + msg["stream"], orjson.dumps(msg))

    async def _flush(self) -> None:
        while self._pending:
            try:
                await self._send(self._pending[0])
                self._pending.pop(0)
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                await asyncio.sleep(FLUSH_PAUSE_SECONDS)

    async def _listen(self) -> None:
        channels = [self.prefix + s for s in self._handlers]
        first = True
        first_failure = True
        while True:
            client = _client(self.url)
            pubsub = client.pubsub()
            try:
                if channels:
                    await pubsub.subscribe(*channels)
                if not first:
                    for handler in self._reconnect_handlers:
                        await handler()
                if not self._connected and not first_failure:
                    logger.info("redis subscription restored")
                first = False
                first_failure = True
                self._connected = True
                self._subscribed.set()
                async for raw in pubsub.listen():
                    if raw.get("type") != "message":
                        continue
                    await self._dispatch(raw["channel"], raw["data"])
                if not channels:
                    await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection lost: back off, reconnect, catch up
                if self._connected or first_failure:
                    logger.warning("redis subscription lost (%s); reconnecting every %.1fs", e,
                                   RECONNECT_PAUSE_SECONDS)
                first_failure = False
                self._connected = False
                self._subscribed.set()
                await asyncio.sleep(RECONNECT_PAUSE_SECONDS)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass

    async def _dispatch(self, channel: bytes | str, data: bytes) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        stream = name.removeprefix(self.prefix)
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("ignoring malformed replication message on %s", name)
            return
        if not isinstance(msg, dict) or msg.get("v", 0) > MESSAGE_VERSION and "position" not in msg:
            return
        for handler in self._handlers.get(stream, ()):
            try:
                result = handler(msg)
                if result is not None:
                    await result
            except Exception:
                logger.exception("replication handler for %s failed", stream)
