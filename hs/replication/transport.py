"""How stream positions travel between processes.

Writers call `publish` after their rows are committed; readers `subscribe` per stream. The monolith uses
`InProcessTransport` (a direct call); the cluster uses Redis pub/sub (hs/replication/redis.py). Messages
are dicts with named fields and a version, never positional arrays, so a field can be added without
breaking a running cluster.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[None] | None]
MESSAGE_VERSION = 1


class ReplicationTransport:
    # Whether every subscriber is in this process (the monolith), so that a writer may tell its readers
    # things it has not yet written to the database.
    single_process = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(self, stream: str, instance: str, position: int, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def subscribe(self, stream: str, handler: Handler) -> None:
        raise NotImplementedError


class InProcessTransport(ReplicationTransport):
    single_process = True

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    async def publish(self, stream: str, instance: str, position: int, data: dict[str, Any]) -> None:
        msg = {"v": MESSAGE_VERSION, "stream": stream, "instance": instance, "position": position, **data}
        for handler in self._handlers.get(stream, ()):
            result = handler(msg)
            if result is not None:
                await result

    def subscribe(self, stream: str, handler: Handler) -> None:
        self._handlers[stream].append(handler)
